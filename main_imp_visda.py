"""Find lottery tickets on VisDA-2017 (12 classes) with IMP from random init (lt) or pre-trained weights.

Every round trains --epochs (learning rate x0.1 from epoch 10), prunes --percent of the remaining
conv weights by global magnitude and rewinds every weight to the starting point: the random init
(lt, also saved as random_init.pt) or the --pre_weight weights with a new 12-way fc (pt_trans).
Validation reports top-1 and the VisDA metric, the mean of the per-class accuracies. Example:

    python -u main_imp_visda.py /data/visda17 -a resnet50 --epochs 20 -b 256 --lr 0.001 \\
        --prune_type pt_trans --pre_weight imagenet_weight.pt --states 19 --save_dir visda_imp
"""

import sys

from lth import pruning
from lth import cli, distributed, imagedata
from lth.checkpoint import atomic_save
from lth.errors import UserError
from lth.imp import CHECKPOINT_FORMAT, ImpConfig, ImpRun, examples_checkpoint_keys
from lth.models import ARCHS, load_pretrained
from lth.session import check_save_dir, open_session
from lth.trainer import StageFiles, TrainConfig, evaluate_and_print

IMP_FILES = StageFiles(checkpoint="checkpoint.pth.tar", best="{stage}model_best.pth.tar")
VISDA_REWIND = {"lt": "the random init (saved as random_init.pt)",
                "pt_trans": "the --pre_weight weights (fc dropped, conv1 loaded) with the new fc",
                "lrr": "none: " + cli.LRR_HELP.split(": ", 1)[1] + " (starting from --pre_weight when given)"}


def get_args_parser():
    parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", metavar="DIR",
                        help="VisDA-2017 root: DIR/train/image_list.txt and DIR/validation/image_list.txt, "
                             "lines 'relative/path label' (labels 0-11)")
    parser.add_argument("--dataset", default="visda17", choices=["visda17"],
                        help="the data set (the original's flag; VisDA-2017 is the only one)")
    group = parser.add_argument_group("model")
    group.add_argument("-a", "--arch", default="resnet50", choices=ARCHS,
                       help="torchvision ResNet (ImageNet stem) with a 12-way fc")
    group.add_argument("--pre_weight", default=None,
                       help="pre-trained weights for --prune_type pt_trans (torchvision state_dict, "
                            "simclr_weight.pt, moco.pt, MoCo v2 or IMP checkpoint; 'module.' prefixes "
                            "are stripped)")
    group.add_argument("--dict_key", default=None,
                       help="entry of the --pre_weight file that holds the weights (default: "
                            "'state_dict' when present, else the whole file)")
    group.add_argument("--pretrained", action="store_true",
                       help="accepted for compatibility and unused, as in the original: give weights "
                            "with --pre_weight and --prune_type pt_trans")
    group.add_argument("--image_size", type=int, default=224,
                       help="training crop size and validation resize (size x size)")
    cli.add_optim_args(parser, batch_size=128, names=cli.EXAMPLES_NAMES)
    parser.set_defaults(lr=1e-3, weight_decay=5e-4, epochs=20, warmup=0, decreasing_lr=[10])
    group = parser.add_argument_group("pruning")
    group.add_argument("--prune_type", default="lt", choices=sorted(VISDA_REWIND),
                       help="rewind target: " + "; ".join(f"{k}: {v}" for k, v in VISDA_REWIND.items()))
    group.add_argument("--states", type=int, default=19,
                       help="IMP rounds; round k trains with 0.8^k of the conv weights (at --percent 0.2)")
    group.add_argument("--percent", type=float, default=0.2,
                       help="fraction of the remaining conv weights pruned after each round, in (0, 1)")
    group.add_argument("--start_state", type=int, default=0,
                       help="accepted for compatibility: a fresh run starts at round 0 and --resume "
                            "continues at the round of its checkpoint (as the original, which took "
                            "it from the checkpoint); other values are refused without --resume")
    cli.add_early_bird_args(group)
    cli.add_runtime_args(parser, names=cli.EXAMPLES_NAMES, workers=4, save_dir="results/", resume_path=True)
    parser.add_argument("-e", "--evaluate", action="store_true",
                        help="evaluate the starting (or, with --resume, the resumed) model on "
                             "DIR/validation, print top-1 and mean class accuracy and exit; nothing is written")
    return parser


def check_args(args) -> None:
    cli.check_common(args)
    pruning.check_rate(args.percent)
    if args.states < 1:
        raise UserError(f"--states must be at least 1, got {args.states}")
    if args.image_size < 1:
        raise UserError(f"--image_size must be positive, got {args.image_size}")
    if args.prune_type == "pt_trans" and not args.pre_weight:
        raise UserError("--prune_type pt_trans rewinds to pre-trained weights: give them with --pre_weight")
    if args.start_state and not args.resume:
        raise UserError("--start_state: a fresh run starts at round 0; to continue a run at its "
                        "current round, use --resume")
    cli.early_bird_config(args)


def main(args) -> None:
    check_args(args)
    run, resume_file = check_save_dir(args.save_dir, args.resume, evaluate=args.evaluate)
    if args.evaluate and args.seed is None:
        args.seed = 0  # only the random init depends on it
    session = open_session(args, run, resume_file)
    ctx, precision = session.ctx, session.precision
    if ctx.is_main:
        if args.resume and args.start_state:
            print("notice: --start_state is ignored with --resume: the run continues at the round of "
                  "its checkpoint", file=sys.stderr)
        if args.pre_weight and args.prune_type == "lt":
            print("notice: --pre_weight is ignored with --prune_type lt (as in the original), which "
                  "starts from and rewinds to random init", file=sys.stderr)
    train_set, val_set = imagedata.visda_splits(args.data, args.image_size)
    loaders = imagedata.image_loaders(train_set, val_set, imagedata.VISDA_CLASSES, batch_size=args.batch_size,
                                      eval_batch_size=args.eval_batch_size, workers=args.workers,
                                      seed=args.seed, ctx=ctx, precision=precision)
    model = imagedata.image_model(args.arch, imagedata.VISDA_CLASSES, args.seed, ctx, precision)
    if args.prune_type in ("pt_trans", "lrr") and args.pre_weight and not args.resume:
        load_pretrained(model, args.pre_weight, args.dict_key, fc=False, conv1=True, quiet=not ctx.is_main)
    if args.evaluate:
        evaluate_and_print(model, loaders, precision, ctx, run=run if args.resume else None,
                           checkpoint=args.resume if isinstance(args.resume, str) else None,
                           fmt=CHECKPOINT_FORMAT)
        distributed.teardown()
        return
    session.record(args)
    if args.prune_type == "lt" and not args.resume and ctx.is_main:
        atomic_save({"state_dict": pruning.dense_state_dict(model)}, run.file("random_init.pt"))
    train_cfg = TrainConfig.from_args(args)
    imp_cfg = ImpConfig(rounds=args.states, rate=args.percent, prune_type=args.prune_type, random_prune=False,
                        conv1=False, seed=args.seed, files=IMP_FILES, rewind_in_checkpoint=True,
                        meta={"arch": args.arch, "dataset": args.dataset, "pre_weight": args.pre_weight,
                              "image_size": args.image_size}, early_bird=cli.early_bird_config(args))
    imp = ImpRun(model, loaders, train_cfg, imp_cfg, precision, ctx, run, vars(args),
                 extra_state=lambda: examples_checkpoint_keys(imp))
    if args.resume:
        imp.resume(resume_file)
    else:
        imp.start()
    if ctx.is_main:
        rows = run.summary()
        if rows:
            last = rows[-1]
            mean_class = last.get("mean_class_acc")  # None (null) where it was not computed
            print(f"last round ({last['remaining']:.2f}% of conv weights): best val top-1 "
                  f"{last['best_val_acc']:.2f}%, mean class accuracy "
                  f"{'-' if mean_class is None else format(mean_class, '.2f')}%")
        print(f"done: tickets, checkpoints, metrics.jsonl, summary.jsonl and "
              f"accuracy_vs_remaining.png are in {args.save_dir}")
    distributed.teardown()


if __name__ == "__main__":
    cli.run_main(main, get_args_parser())
