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
from lth.classification_hparams import ImagenetImp
from lth.errors import UserError
from lth.imp import ImpRun
from lth.once import train_once
from lth.session import check_save_dir, open_session


def get_args_parser():
    return ImagenetImp.parser(description=__doc__.split("\n\n")[0])


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
    hparams = ImagenetImp.from_args(args)
    run, resume_file = check_save_dir(args.save_dir, args.resume, evaluate=args.evaluate)
    if args.evaluate and args.seed is None:
        args.seed = 0  # only the random init of a model without --pretrained depends on it
    # -e writes nothing and may evaluate any checkpoint: no experiment to check against.
    session = open_session(args, run, resume_file, hparams=hparams, continuing=False if args.evaluate else None)
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
