"""Find lottery tickets on VisDA-2017 (12 classes) with IMP from random init (lt) or pre-trained weights.

Every round trains --epochs (learning rate x0.1 from epoch 10), prunes --percent of the remaining
conv weights by global magnitude and rewinds every weight to the starting point: the random init
(lt, also saved as random_init.pt) or the --pre_weight weights with a new 12-way fc (pt_trans).
Validation reports top-1 and the VisDA metric, the mean of the per-class accuracies. Example:

    python -u main_imp_visda.py /data/visda17 -a resnet50 --epochs 20 -b 256 --lr 0.001 \\
        --prune_type pt_trans --pre_weight imagenet_weight.pt --states 19 --save_dir visda_imp
"""

import sys

from lth import cli, distributed, pruning
from lth.classification import VisdaTask, evaluate_and_print
from lth.classification_hparams import VisdaImp
from lth.errors import UserError
from lth.imp import ImpRun
from lth.session import check_save_dir, open_session


def get_args_parser():
    return VisdaImp.parser(description=__doc__.split("\n\n")[0])


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


def main(args) -> None:
    check_args(args)
    hparams = VisdaImp.from_args(args)
    run, resume_file = check_save_dir(args.save_dir, args.resume, evaluate=args.evaluate)
    if args.evaluate and args.seed is None:
        args.seed = 0  # only the random init depends on it
    # -e writes nothing and may evaluate any checkpoint: no experiment to check against.
    session = open_session(args, run, resume_file, hparams=hparams, continuing=False if args.evaluate else None)
    ctx = session.ctx
    if ctx.is_main:
        if args.resume and args.start_state:
            print("notice: --start_state is ignored with --resume: the run continues at the round of "
                  "its checkpoint", file=sys.stderr)
        if args.pre_weight and args.prune_type == "lt":
            print("notice: --pre_weight is ignored with --prune_type lt (as in the original), which "
                  "starts from and rewinds to random init", file=sys.stderr)
    task = VisdaTask(args)
    task.build(session)
    if args.evaluate:
        evaluate_and_print(task.model, task.loaders, session.precision, ctx, run=run if args.resume else None,
                           checkpoint=args.resume if isinstance(args.resume, str) else None,
                           fmt=task.checkpoint_format)
        distributed.teardown()
        return
    session.record(args)
    task.save_random_init()
    imp = ImpRun(task, args, session)
    imp.resume(resume_file) if args.resume else imp.start()
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
