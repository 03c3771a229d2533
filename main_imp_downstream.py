"""Find lottery tickets on a small data set (CIFAR-10/100, SVHN, Fashion-MNIST, digits) with IMP.

Each round trains the network, prunes --rate of the remaining conv weights by global magnitude,
rewinds to the --prune_type's target and repeats, --pruning_times rounds in all. Example:

    python -u main_imp_downstream.py --data ../data --dataset cifar10 --arch resnet50 \\
        --pruning_times 19 --prune_type lt --save_dir imp_downstream
"""

import sys

from lth import pruning
from lth import cli, data, distributed
from lth.classification import load_task, make_model
from lth.errors import UserError
from lth.imp import PRUNE_TYPES, REWIND_TARGETS, ImpConfig, ImpRun
from lth.models import ARCHS, load_pretrained
from lth.session import check_save_dir, open_session
from lth.trainer import TrainConfig


def get_args_parser():
    parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
    cli.add_data_args(parser, list(data.DATASETS), default="cifar10")
    cli.add_model_args(parser, ARCHS)
    cli.add_optim_args(parser, batch_size=256)
    group = parser.add_argument_group("pruning")
    group.add_argument("--pruning_times", type=int, default=19,
                       help="IMP rounds; round k trains with 0.8^k of the conv weights (at --rate 0.2)")
    group.add_argument("--rate", type=float, default=0.2,
                       help="fraction of the remaining conv weights pruned after each round, in (0, 1)")
    group.add_argument("--prune_type", default="lt", choices=PRUNE_TYPES,
                       help="rewind target: " + "; ".join(f"{k}: {v}" for k, v in REWIND_TARGETS.items()))
    group.add_argument("--random_prune", action="store_true",
                       help="prune at random (the control) instead of by weight magnitude")
    group.add_argument("--rewind_epoch", type=int, default=9,
                       help="for rewind_lt: rewind to the weights after this many epochs of round 0 "
                            "(1 to --epochs; saved as epoch_{k}_rewind_weight.pt, as in the original)")
    cli.add_early_bird_args(group)
    group.add_argument("--pretrained", default=None,
                       help="pre-trained weights to start from and rewind to, for pt_trans (required there): "
                            "a torchvision state_dict, simclr_weight.pt, moco.pt, a MoCo v2 checkpoint or an "
                            "IMP checkpoint; ignored by lt, rewind_lt and pt, which start from a random "
                            "init (as in the original)")
    group.add_argument("--dict_key", default=None,
                       help="entry of the --pretrained file that holds the weights (default: "
                            "'state_dict' when present, else the whole file)")
    cli.add_runtime_args(parser)
    parser.add_argument("--checkpoint", default=None,
                        help="with --resume: the checkpoint file to continue from (default: the latest)")
    return parser


def check_args(args) -> None:
    cli.check_common(args)
    pruning.check_rate(args.rate)
    if args.pruning_times < 1:
        raise UserError(f"--pruning_times must be at least 1, got {args.pruning_times}")
    if args.prune_type == "pt_trans" and not args.pretrained:
        raise UserError("--prune_type pt_trans rewinds to pre-trained weights: give them with --pretrained")
    if args.prune_type == "rewind_lt" and not 1 <= args.rewind_epoch <= args.epochs:
        raise UserError(f"--rewind_epoch {args.rewind_epoch} must lie in [1, --epochs {args.epochs}] (the "
                        f"weights after that many epochs; --prune_type lt rewinds to the initial weights)")
    cli.early_bird_config(args)
    if args.checkpoint and not args.resume:
        raise UserError("--checkpoint picks the file to resume from: use it with --resume")


def main(args) -> ImpRun:
    check_args(args)
    session = open_session(args, *check_save_dir(args.save_dir, args.resume))
    run, ctx, precision = session.run, session.ctx, session.precision
    task = load_task(args, ctx, precision, args.seed)
    model = make_model(args, task.spec, ctx, precision, args.seed)
    if args.pretrained and args.prune_type != "pt_trans":
        if ctx.is_main:
            print(f"notice: --pretrained is ignored with --prune_type {args.prune_type} (as in the original): "
                  f"round 0 starts from a random init; use --prune_type pt_trans to start from and "
                  f"rewind to it", file=sys.stderr)
    elif args.pretrained:
        load_pretrained(model, args.pretrained, args.dict_key, fc=args.fc, conv1=args.conv1,
                        quiet=not ctx.is_main)
    session.record(args)
    train_cfg = TrainConfig.from_args(args)
    imp_cfg = ImpConfig(rounds=args.pruning_times, rate=args.rate, prune_type=args.prune_type,
                        random_prune=args.random_prune, conv1=args.conv1, rewind_epoch=args.rewind_epoch,
                        seed=args.seed, meta={"arch": args.arch, "dataset": args.dataset},
                        rewind_in_checkpoint=True, early_bird=cli.early_bird_config(args))
    imp = ImpRun(model, task.loaders, train_cfg, imp_cfg, precision, ctx, run, vars(args))
    if args.resume:
        imp.resume(args.checkpoint)
    else:
        imp.start()
    if ctx.is_main:
        print(f"done: tickets, checkpoints, metrics.jsonl, summary.jsonl and "
              f"accuracy_vs_remaining.png are in {args.save_dir}")
    distributed.teardown()
    return imp


if __name__ == "__main__":
    cli.run_main(main, get_args_parser())
