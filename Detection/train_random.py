"""Random-pruning control for detection: the backbone pruned at random, one shot, to (1 - rate)^k.

The pre-trained backbone's convs (conv1, BN, neck and heads never) are pruned globally at random
to 0.8^k of their weights (the mask written as ticket_{k:02d}.pt in --save_dir), YOLOv4 trains with
that mask in --save_dir/model{k}, and the trained model is written as backbone_random{k}.pth (the
original's keys) in --save_dir.
Example (the original's random/01_random_moco0102.sh, run from Detection/):

    for i in 1 2; do python -u train_random.py --imp_type moco --imp_num $i --seed 10; done
"""

import os

from Detection import runner
from Detection.hparams import DetectionImp, DetectionRandom
from Detection.imp_files import save_backbone_imp
from Detection.task import DetectionPruning
from lth import cli, distributed, pruning, tickets
from lth.errors import UserError
from lth.hparams import controls_record, twin_id
from lth.once import train_once
from lth.runs import ticket_name
from lth.session import check_save_dir, open_session


def get_args_parser():
    return DetectionRandom.parser(description=__doc__.split("\n\n")[0])


def main(args) -> dict:
    runner.check_args(args)
    pruning.check_rate(args.rate)
    if args.imp_num < 0:
        raise UserError(f"--imp_num must be 0 or more, got {args.imp_num}")
    hparams = DetectionRandom.from_args(args)
    sweep = args.save_dir or runner.default_save_dir(args.seed, args.imp_type, "random")
    args.save_dir = os.path.join(sweep, f"model{args.imp_num}")
    run, resume_file = check_save_dir(args.save_dir, args.resume)
    session = open_session(args, run, resume_file, default_seed=runner.config.DEFAULTS["seed"], hparams=hparams)
    k = args.imp_num
    task = runner.DetectionTask(args, args.imp_type, run.path, sweep_dir=sweep, label=f"random {k}",
                                row_extra={"imp_num": k, "random_prune": True})
    task.build(session)
    # The control of train_imp.py's IMP run with the same settings (its level-k ticket).
    session.record(args, controls=controls_record("random_prune", None,
                                                  ticket_experiment=twin_id(hparams, DetectionImp)))
    if not args.resume:  # on --resume the checkpoint brings the mask
        prune_at_random(task, sweep, k)
    progress = train_once(task, args, session, stage=k)
    if session.ctx.is_main:
        # The trained model, written after training as the original's train_random.py did (its file,
        # named backbone_random{k+1}.pth, also carried an IMP-style 20 % L1 prune copied from
        # train_imp.py: here the file holds the trained model with the random mask of level k).
        save_backbone_imp(os.path.join(sweep, f"backbone_random{k}.pth"), task.model, k)
        if not args.keep_checkpoints:
            checkpoint = run.file(task.files.checkpoint_of(k))
            if os.path.isfile(checkpoint):
                os.remove(checkpoint)
    distributed.teardown()
    return task.summary_row(progress, k, task.strategy.remaining(task.model))


def prune_at_random(task: runner.DetectionTask, sweep: str, k: int) -> None:
    """(1 - rate)^k of the backbone's conv weights kept at random; the mask written as ticket_{k:02d}.pt
    in the sweep folder."""
    args, model = task.hparams, task.model
    if k > 0:
        DetectionPruning(1 - (1 - args.rate) ** k, random=True).prune(model, seed=args.seed * 7919 + k)
    if task.session.ctx.is_main:
        os.makedirs(sweep, exist_ok=True)
        tickets.save_ticket(os.path.join(sweep, ticket_name(k)), task.strategy.masks(model), round=k,
                            random_prune=True, seed=args.seed, arch=args.arch, dataset=args.dataset,
                            task="detection", imp_type=args.imp_type,
                            experiment=task.session.run.experiment["id"])


if __name__ == "__main__":
    cli.run_main(main, get_args_parser())
