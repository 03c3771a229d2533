"""Find lottery tickets in an ImageNet ResNet with IMP on ImageFolder data (supervised pre-training).

Round 0 only evaluates the starting model and prunes it one-shot; every later round trains --epochs
at a constant learning rate, prunes --percent of the remaining conv weights by global magnitude and
rewinds every weight (fc and batch norms included) to the starting weights. --states 0 trains the
dense model instead (to make a pre-trained start point). Example:

    python -u main_imp_imagenet.py /data/imagenet -a resnet50 --epochs 10 -b 256 --lr 1e-4 \\
        --states 19 --save_dir imagenet_imp --pretrained imagenet_weight.pt
"""

import sys

from lth import pruning
from lth import cli, distributed, imagedata
from lth.checkpoint import load_file
from lth.errors import UserError
from lth.imp import CHECKPOINT_FORMAT, ImpConfig, ImpRun, examples_checkpoint_keys
from lth.models import ARCHS, load_pretrained, select_state_dict
from lth.plots import plot_training_curves
from lth.session import check_save_dir, open_session
from lth.trainer import StageFiles, TrainConfig, evaluate_and_print, train_stage

IMP_FILES = StageFiles(checkpoint="checkpoint.pth.tar", best="{stage}model_best.pth.tar")
DENSE_FILES = StageFiles(checkpoint="checkpoint.pth.tar", best="model_best.pth.tar")
DENSE_FORMAT = "lth-dense"


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
    cli.add_lrr_arg(group, "the weights the run starts from (--pretrained, else the random init)")
    cli.add_early_bird_args(group)
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
    cli.early_bird_config(args)


def load_start_weights(model, args, ctx) -> None:
    """The pre-trained weights, fc included when it fits the number of classes; else random init."""
    if not args.pretrained:
        if not args.random and ctx.is_main:
            print("notice: no --pretrained weights given (they cannot be downloaded here): starting "
                  "from random init; pass --random to say that is intended", file=sys.stderr)
        return
    state = select_state_dict(load_file(args.pretrained, "pre-trained weight"), args.pretrained, args.dict_key)
    fc = pruning.transferable_weights(state, fc=True).get("fc.weight")
    load_fc = fc is not None and tuple(fc.shape) == tuple(model.fc.weight.shape)
    if fc is not None and not load_fc and ctx.is_main:
        print(f"notice: the fc of {args.pretrained} has {fc.shape[0]} outputs but {args.data}/train has "
              f"{model.fc.out_features} classes: fc is not loaded and keeps its random init", file=sys.stderr)
    load_pretrained(model, args.pretrained, args.dict_key, fc=load_fc, conv1=True, quiet=not ctx.is_main)


def train_dense(model, loaders, cfg, args, session) -> None:
    """--states 0: one dense training run, resumable, with the IMP scripts' files and logs."""
    ctx, precision, run = session.ctx, session.precision, session.run
    progress, optimizer_state, scheduler_state = session.restore(model, DENSE_FORMAT, args)
    extra = {"format": DENSE_FORMAT, "args": vars(args), "arch": args.arch, "dataset": "imagenet",
             "seed": args.seed, "if_pruned": False, "mask": None}
    progress = train_stage(model, loaders, cfg, precision, ctx, run, stage=0, files=DENSE_FILES,
                           progress=progress, optimizer_state=optimizer_state,
                           scheduler_state=scheduler_state,
                           checkpoint_extra=lambda: {**extra, "best_acc1": max(progress.best_val, 0.0)})
    if ctx.is_main:
        run.log_round(progress.summary_row(0, 100.0))
        plot_training_curves(progress.history, run.file("net_train.png"), title="dense training")
        print(f"done: best validation top-1 {progress.best_val:.2f}% (epoch {progress.best_epoch}); "
              f"{DENSE_FILES.best} in {args.save_dir} can be given as --pretrained")


def main(args) -> None:
    check_args(args)
    run, resume_file = check_save_dir(args.save_dir, args.resume, evaluate=args.evaluate)
    if args.evaluate and args.seed is None:
        args.seed = 0  # only the random init of a model without --pretrained depends on it
    session = open_session(args, run, resume_file)
    ctx, precision = session.ctx, session.precision
    if args.resume and args.start_state and ctx.is_main:
        print("notice: --start_state is ignored with --resume: the run continues at the round of its "
              "checkpoint", file=sys.stderr)
    train_set, val_set = imagedata.image_folder_splits(args.data, args.image_size)
    loaders = imagedata.image_loaders(train_set, val_set, len(train_set.classes), batch_size=args.batch_size,
                                      eval_batch_size=args.eval_batch_size, workers=args.workers,
                                      seed=args.seed, ctx=ctx, precision=precision)
    model = imagedata.image_model(args.arch, loaders.num_classes, args.seed, ctx, precision)
    if not args.resume:
        load_start_weights(model, args, ctx)
    if args.evaluate:
        evaluate_and_print(model, loaders, precision, ctx, run=run if args.resume else None,
                           checkpoint=args.resume if isinstance(args.resume, str) else None,
                           fmt=DENSE_FORMAT if args.states == 0 else CHECKPOINT_FORMAT)
        distributed.teardown()
        return
    session.record(args)
    train_cfg = TrainConfig.from_args(args)
    if args.states == 0:
        train_dense(model, loaders, train_cfg, args, session)
        distributed.teardown()
        return
    # Both rewind to the weights the run starts from: pre-trained (pt_trans) or random init (lt); lrr keeps
    # the trained weights.
    prune_type = args.prune_type or ("pt_trans" if args.pretrained else "lt")
    imp_cfg = ImpConfig(rounds=args.states, rate=args.percent, prune_type=prune_type, random_prune=False,
                        conv1=False, seed=args.seed, train_round0=False, files=IMP_FILES, rewind_in_checkpoint=True,
                        meta={"arch": args.arch, "dataset": "imagenet", "pretrained": args.pretrained,
                              "image_size": args.image_size, "num_classes": loaders.num_classes},
                        early_bird=cli.early_bird_config(args))
    imp = ImpRun(model, loaders, train_cfg, imp_cfg, precision, ctx, run, vars(args),
                 extra_state=lambda: examples_checkpoint_keys(imp))
    if args.resume:
        imp.resume(resume_file)
    else:
        imp.start()
    if ctx.is_main:
        print(f"done: tickets, checkpoints, metrics.jsonl, summary.jsonl and "
              f"accuracy_vs_remaining.png are in {args.save_dir}")
    distributed.teardown()


if __name__ == "__main__":
    cli.run_main(main, get_args_parser())
