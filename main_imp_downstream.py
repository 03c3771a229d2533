"""Find lottery tickets on a small data set (CIFAR-10/100, SVHN, Fashion-MNIST, digits) with IMP.

Each round trains the network, prunes --rate of the remaining conv weights by global magnitude,
rewinds to the --prune_type's target and repeats, --pruning_times rounds in all. Example:

    python -u main_imp_downstream.py --data ../data --dataset cifar10 --arch resnet50 \\
        --pruning_times 19 --prune_type lt --save_dir imp_downstream
"""

from lth import cli, distributed, pruning
from lth.classification import SmallImageTask
from lth.classification_hparams import DownstreamImp
from lth.errors import UserError
from lth.hparams import controls_record, twin_id
from lth.imp import ImpRun
from lth.session import check_save_dir, open_session


def get_args_parser():
    return DownstreamImp.parser(description=__doc__.split("\n\n")[0])


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
    if args.checkpoint and not args.resume:
        raise UserError("--checkpoint picks the file to resume from: use it with --resume")


def main(args) -> ImpRun:
    check_args(args)
    hparams = DownstreamImp.from_args(args)
    session = open_session(args, *check_save_dir(args.save_dir, args.resume), hparams=hparams)
    task = SmallImageTask(args)
    task.build(session)
    # Random pruning controls the magnitude-pruning experiment of the same hparams.
    session.record(args, controls=controls_record("random_prune", None, ticket_experiment=twin_id(
        hparams, random_prune=False)) if args.random_prune else None)
    imp = ImpRun(task, args, session)
    if args.resume:
        imp.resume(args.checkpoint)
    else:
        imp.start()
    if session.ctx.is_main:
        print(f"done: tickets, checkpoints, metrics.jsonl, summary.jsonl and "
              f"accuracy_vs_remaining.png are in {args.save_dir}")
    distributed.teardown()
    return imp


if __name__ == "__main__":
    cli.run_main(main, get_args_parser())
