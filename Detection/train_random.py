"""Random-pruning control for detection: the backbone pruned at random, one shot, to (1 - rate)^k.

The pre-trained backbone's convs (conv1, BN, neck and heads never) are pruned globally at random
to 0.8^k of their weights, written as backbone_random{k}.pth (the original's keys) and
ticket_{k:02d}.pt in --save_dir, then YOLOv4 trains with that mask in --save_dir/model{k}.
Example (the original's random/01_random_moco0102.sh, run from Detection/):

    for i in 1 2; do python -u train_random.py --imp_type moco --imp_num $i --seed 10; done
"""

import os

if __package__ in (None, ""):  # run as a script (python train_imp.py, the original's way)
    import _script_path  # noqa: F401  (the repository root on sys.path)
import pruning_utils  # noqa: E402
from Detection import runner  # noqa: E402
from Detection.hparams import DetectionImp, DetectionRandom  # noqa: E402
from Detection.model import save_backbone_imp  # noqa: E402
from Detection.task import DetectionPruning  # noqa: E402
from lth import cli, distributed  # noqa: E402
from lth.errors import UserError  # noqa: E402
from lth.hparams import controls_record, twin_id  # noqa: E402
from lth.session import check_save_dir, open_session  # noqa: E402


def get_args_parser():
    return DetectionRandom.parser(description=__doc__.split("\n\n")[0])


def main(args) -> dict:
    runner.check_args(args)
    pruning_utils.check_rate(args.rate)
    if args.imp_num < 0:
        raise UserError(f"--imp_num must be 0 or more, got {args.imp_num}")
    hparams = DetectionRandom.from_args(args)
    sweep = args.save_dir or runner.default_save_dir(args.seed, args.imp_type, "random")
    args.save_dir = os.path.join(sweep, f"model{args.imp_num}")
    run, resume_file = check_save_dir(args.save_dir, args.resume)
    session = open_session(args, run, resume_file, default_seed=runner.config.DEFAULTS["seed"], hparams=hparams)
    ctx = session.ctx
    setup = runner.build(args, ctx, session.precision, args.imp_type, run.path)
    # The control of train_imp.py's IMP run with the same settings (its level-k ticket).
    session.record(args, controls=controls_record("random_prune", None,
                                                  ticket_experiment=twin_id(hparams, DetectionImp)))
    k = args.imp_num

    def prune_at_random() -> None:
        if k > 0:
            DetectionPruning(1 - (1 - args.rate) ** k, random=True).prune(setup.model, seed=args.seed * 7919 + k)
        if ctx.is_main:
            os.makedirs(sweep, exist_ok=True)
            save_backbone_imp(os.path.join(sweep, f"backbone_random{k}.pth"), setup.model, k)
            pruning_utils.save_ticket(os.path.join(sweep, f"ticket_{k:02d}.pt"),
                                      DetectionPruning(args.rate).masks(setup.model), round=k, random_prune=True,
                                      seed=args.seed, arch=args.arch, dataset=args.dataset, task="detection",
                                      imp_type=args.imp_type, experiment=run.experiment["id"])

    row = runner.train_single(args, session, setup, k, prune_at_random, sweep, f"random {k}",
                              {"imp_num": k, "random_prune": True})
    distributed.teardown()
    return row


if __name__ == "__main__":
    cli.run_main(main, get_args_parser())
