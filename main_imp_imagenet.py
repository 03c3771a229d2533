"""Find lottery tickets in an ImageNet ResNet with IMP on ImageFolder data (supervised pre-training).

Round 0 only evaluates the starting model and prunes it one-shot; every later round trains --epochs
at a constant learning rate, prunes --percent of the remaining conv weights by global magnitude and
rewinds every weight (fc and batch norms included) to the starting weights. --states 0 trains the
dense model instead (to make a pre-trained start point). Example:

    python -u main_imp_imagenet.py /data/imagenet -a resnet50 --epochs 10 -b 256 --lr 1e-4 \\
        --states 19 --save_dir imagenet_imp --pretrained imagenet_weight.pt
"""

import sys

from lth import cli, distributed, pruning
from lth.classification import ImageNetTask, evaluate_and_print
from lth.errors import UserError
from lth.imp import ImpRun
from lth.models import ARCHS
from lth.once import train_once
from lth.session import check_save_dir, open_session


def get_args_parser():
    parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", metavar="DIR",
                        help="ImageFolder root: DIR/train/<class>/<images> and DIR/val/<class>/<images>")
    group = parser.add_argument_group("model")
    group.add_argument("-a", "--arch", default="resnet50", choices=ARCHS,
                       help="torchvision ResNet (ImageNet stem), one output per class folder of DIR/train")
    group.add_argument("--pretrained", default=None, metavar="W",
                       help="weights to start from and rewind to, e.g. imagenet_weight.pt (a torchvision "
                            "state_dict; fc is loaded when DIR/train has as many classes); they cannot be "
                            "downloaded, so without it the run starts from random init")
    group.add_argument("--dict_key", default=None,
                       help="entry of the --pretrained file that holds the weights (default: "
                            "'state_dict' when present, else the whole file)")
    group.add_argument("--random", action="store_true",
                       help="start from random init on purpose (the original's pretrained=False)")
    group.add_argument("--image_size", type=int, default=224,
                       help="training crop size; validation resizes the shorter side to size/0.875 "
                            "and centre-crops size")
    cli.add_optim_args(parser, batch_size=256, names=cli.EXAMPLES_NAMES)
    parser.set_defaults(lr=1e-4, weight_decay=1e-4, epochs=10, warmup=0, decreasing_lr=[])
    group = parser.add_argument_group("pruning")
    group.add_argument("--states", type=int, default=19,
                       help="IMP rounds; round k holds 0.8^k of the conv weights (at --percent 0.2); "
                            "0 trains the dense model for --epochs without pruning")
    group.add_argument("--percent", type=float, default=0.2,
                       help="fraction of the remaining conv weights pruned after each round, in (0, 1)")
    group.add_argument("--start_state", type=int, default=0,
                       help="accepted for compatibility: a fresh run starts at round 0 and --resume "
                            "continues at the round of its checkpoint (as the original, which took "
                            "it from the checkpoint); other values are refused without --resume")
    cli.add_runtime_args(parser, names=cli.EXAMPLES_NAMES, workers=4, resume_path=True)
    parser.add_argument("-e", "--evaluate", action="store_true",
                        help="evaluate the starting (or, with --resume, the resumed) model on DIR/val, "
                             "print top-1/top-5 and exit; nothing is written")
    return parser


def check_args(args) -> None:
    cli.check_common(args)
    pruning.check_rate(args.percent)
    if args.states < 0:
        raise UserError(f"--states must be 0 (dense training) or more, got {args.states}")
    if args.image_size < 1:
        raise UserError(f"--image_size must be positive, got {args.image_size}")
    if args.random and args.pretrained:
        raise UserError("--random starts from random init on purpose: do not combine it with --pretrained")
    if args.start_state and not args.resume:
        raise UserError("--start_state: a fresh run starts at round 0; to continue a run at its "
                        "current round, use --resume")


def main(args) -> None:
    check_args(args)
    run, resume_file = check_save_dir(args.save_dir, args.resume, evaluate=args.evaluate)
    if args.evaluate and args.seed is None:
        args.seed = 0  # only the random init of a model without --pretrained depends on it
    session = open_session(args, run, resume_file)
    if args.resume and args.start_state and session.ctx.is_main:
        print("notice: --start_state is ignored with --resume: the run continues at the round of its "
              "checkpoint", file=sys.stderr)
    task = ImageNetTask(args)
    task.build(session)
    if args.evaluate:
        evaluate_and_print(task.model, task.loaders, session.precision, session.ctx,
                           run=run if args.resume else None,
                           checkpoint=args.resume if isinstance(args.resume, str) else None,
                           fmt=task.checkpoint_format)
    else:
        session.record(args)
        if args.states == 0:  # dense training, e.g. to make a pre-trained start point
            train_once(task, args, session)
        else:
            imp = ImpRun(task, args, session)
            imp.resume(resume_file) if args.resume else imp.start()
            if session.ctx.is_main:
                print(f"done: tickets, checkpoints, metrics.jsonl, summary.jsonl and "
                      f"accuracy_vs_remaining.png are in {args.save_dir}")
    distributed.teardown()


if __name__ == "__main__":
    cli.run_main(main, get_args_parser())
