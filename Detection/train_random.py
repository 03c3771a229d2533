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
from Detection.imp_files import save_backbone_imp
from Detection.task import DetectionPruning
from lth import cli, distributed, pruning, tickets
from lth.errors import UserError
from lth.runs import ticket_name
from lth.session import check_save_dir, open_session


def get_args_parser():
    parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
    group = parser.add_argument_group("random pruning (the original's flags)")
    group.add_argument("--imp_type", default="imagenet", choices=runner.PRETRAINED_TYPES,
                       help="which pre-trained backbone is pruned and trained")
    group.add_argument("--imp_num", type=int, default=1,
                       help="sparsity level k: (1 - --rate)^k of the backbone conv weights remain (0: dense)")
    group.add_argument("--rate", type=float, default=runner.config.DEFAULTS["prune_rate"],
                       help="the IMP rate whose k-th level is matched (0.2: 0.8^k remain)")
    runner.add_common_args(parser, mask_dir=True)
    return parser


def main(args) -> dict:
    runner.check_args(args)
    pruning.check_rate(args.rate)
    if args.imp_num < 0:
        raise UserError(f"--imp_num must be 0 or more, got {args.imp_num}")
    sweep = args.save_dir or runner.default_save_dir(args.seed, args.imp_type, "random")
    args.save_dir = os.path.join(sweep, f"model{args.imp_num}")
    run, resume_file = check_save_dir(args.save_dir, args.resume)
    session = open_session(args, run, resume_file, default_seed=runner.config.DEFAULTS["seed"])
    ctx = session.ctx
    setup = runner.build(args, ctx, session.precision, args.imp_type, run.path)
    session.record(args)
    k = args.imp_num

    def prune_at_random() -> None:
        if k > 0:
            DetectionPruning(1 - (1 - args.rate) ** k, random=True).prune(setup.model, seed=args.seed * 7919 + k)
        if ctx.is_main:
            os.makedirs(sweep, exist_ok=True)
            tickets.save_ticket(os.path.join(sweep, ticket_name(k)),
                                      DetectionPruning(args.rate).masks(setup.model), round=k, random_prune=True,
                                      seed=args.seed, arch=args.arch, dataset=args.dataset, task="detection",
                                      imp_type=args.imp_type)

    row = runner.train_single(args, session, setup, k, prune_at_random, sweep, f"random {k}",
                              {"imp_num": k, "random_prune": True})
    if ctx.is_main:
        # The trained model, written after training as the original's train_random.py did (its file,
        # named backbone_random{k+1}.pth, also carried an IMP-style 20 % L1 prune copied from
        # train_imp.py: here the file holds the trained model with the random mask of level k).
        save_backbone_imp(os.path.join(sweep, f"backbone_random{k}.pth"), setup.model, k)
        if not args.keep_checkpoints:
            checkpoint = run.file(f"{k}checkpoint.pth.tar")
            if os.path.isfile(checkpoint):
                os.remove(checkpoint)
    distributed.teardown()
    return row


if __name__ == "__main__":
    cli.run_main(main, get_args_parser())
