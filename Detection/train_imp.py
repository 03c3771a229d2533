"""Detection tickets: IMP on YOLOv4 (ResNet-50 backbone), one round per command as the original.

Round 0 trains from the pre-trained backbone; at the end of round k, 20 % of the remaining backbone
conv weights are pruned globally (conv1, BN, neck and heads never) and backbone_imp{k+1}.pth and
ticket_{k+1:02d}.pt are written; round k+1 starts from that file, its pruned convs rewound to the
pre-trained weights while conv1, BN, neck and heads keep their trained values. Example (the
original's TicketSH/imp_imagenet.sh, run from Detection/):

    for i in $(seq 0 18); do python -u train_imp.py --imp_type imagenet --imp_num $i --seed 10; done

or all rounds in one resumable command: --imp_num 0 --rounds 19.
"""

import os
import sys

from Detection import runner
from Detection.imp_files import keep_trained_pruned_convs, read_backbone_imp, save_backbone_imp, start_round_from
from Detection.task import DetectionPruning
from lth import cli, distributed, pruning
from lth.errors import UserError
from lth.imp import ImpConfig, ImpRun
from lth.runs import RunDir
from lth.session import check_same_experiment, open_session


def get_args_parser():
    parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
    group = parser.add_argument_group("IMP (the original's flags)")
    group.add_argument("--imp_type", default="imagenet", choices=runner.PRETRAINED_TYPES,
                       help="which pre-trained backbone the tickets start from (and rewind to)")
    group.add_argument("--imp_num", type=int, default=0,
                       help="the round to train: 0 starts from the pre-trained backbone, k > 0 from "
                            "backbone_imp{k}.pth that round k-1 wrote in --save_dir")
    group.add_argument("--rounds", type=int, default=1,
                       help="rounds trained by this command, from --imp_num on (19 from 0: the whole IMP)")
    group.add_argument("--rate", type=float, default=runner.config.DEFAULTS["prune_rate"],
                       help="fraction of the remaining backbone conv weights pruned after each round")
    cli.add_lrr_arg(group, "the pre-trained backbone (its pruned convs; conv1, BN, neck and heads keep "
                           "their trained values)")
    cli.add_early_bird_args(group)
    runner.add_common_args(parser, mask_dir=True)
    return parser


def check_round_files(run: RunDir, first: int, last: int, resume: bool) -> tuple[int, str | None]:
    """The round to start or resume and, with ``--resume``, its checkpoint; a clear error where the
    folder does not fit the request (nothing is overwritten)."""
    run.check_location()
    if resume:
        mine = {r: path for r, path in run.checkpoints().items() if first <= r <= last}
        # A finished round keeps its checkpoint; resuming it would rewind the logs (summary.jsonl,
        # metrics.jsonl) to that round and train it again: only unfinished rounds are resumed.
        unfinished = {r: path for r, path in mine.items() if not os.path.exists(run.file(f"backbone_imp{r + 1}.pth"))}
        if not unfinished and os.path.exists(run.file(f"backbone_imp{last + 1}.pth")):
            raise UserError(f"--resume: round{'s' if last > first else ''} {first}"
                            + (f"..{last}" if last > first else "") + f" of '{run.path}' finished already "
                            f"(backbone_imp{last + 1}.pth exists); nothing was changed")
        if not unfinished:
            raise UserError(f"--resume: '{run.path}' holds no checkpoint of an unfinished round in {first}"
                            + (f"..{last}" if last > first else "") + "; start the round without --resume")
        return max(unfinished), unfinished[max(unfinished)]
    if first == 0:
        run.check(False)
    else:
        previous = run.file(f"backbone_imp{first}.pth")
        if not os.path.isfile(previous):
            raise UserError(f"round {first} starts from '{previous}', which round {first - 1} writes: it is "
                            f"missing (run --imp_num {first - 1} first, with the same --save_dir/--seed/--imp_type)")
        if os.path.exists(run.file(f"{first}checkpoint.pth.tar")):
            raise UserError(f"round {first} was started already in '{run.path}': pass --resume to continue it")
    done = run.file(f"backbone_imp{first + 1}.pth")
    if os.path.exists(done):
        raise UserError(f"round {first} is finished already ('{done}' exists); nothing is overwritten")
    return first, None


def main(args) -> ImpRun:
    runner.check_args(args)
    pruning.check_rate(args.rate)
    if args.imp_num < 0 or args.rounds < 1:
        raise UserError(f"--imp_num must be 0 or more and --rounds at least 1 (got {args.imp_num}, {args.rounds})")
    cli.early_bird_config(args)
    args.save_dir = args.save_dir or runner.default_save_dir(args.seed, args.imp_type, "imp")
    run = RunDir(args.save_dir)
    first, last = args.imp_num, args.imp_num + args.rounds - 1
    start_round, resume_file = check_round_files(run, first, last, bool(args.resume))
    continuing = bool(args.resume) or first > 0
    session = open_session(args, run, None, default_seed=runner.config.DEFAULTS["seed"])
    ctx, precision = session.ctx, session.precision
    setup = runner.build(args, ctx, precision, args.imp_type, run.file(f"model{start_round}"))
    if continuing:
        check_same_experiment(run, args, runner.IDENTITY + ("prune_type", "early_bird", "early_bird_sparsity",
                                                            "eb_threshold", "eb_window"))
    distributed.barrier()
    run.start(vars(args), continuing)

    def on_pruned(model, next_round: int) -> None:
        # The original's backbone_imp{k+1}.pth: the trained model with the new masks, before the rewind.
        if ctx.is_main:
            save_backbone_imp(run.file(f"backbone_imp{next_round}.pth"), model, next_round - 1)
        setup.evaluation.result_base = run.file(f"model{next_round}")

    imp_cfg = ImpConfig(rounds=last + 1, rate=args.rate, prune_type=args.prune_type or "pt_trans", random_prune=False,
                        conv1=False, seed=args.seed, early_bird=cli.early_bird_config(args),
                        meta={"arch": args.arch, "dataset": args.dataset, "task": "detection",
                              "imp_type": args.imp_type},
                        keep_finished=args.keep_checkpoints)
    imp = ImpRun(setup.model, setup.loaders, setup.train_cfg, imp_cfg, precision, ctx, run, vars(args),
                 strategy=DetectionPruning(args.rate), stage_kwargs=runner.stage_kwargs(setup),
                 on_pruned=on_pruned)
    if resume_file:
        imp.resume(resume_file)
    else:
        if first > 0:
            previous = read_backbone_imp(run.file(f"backbone_imp{first}.pth"))
            report = start_round_from(setup.model, previous)
            if args.prune_type == "lrr":  # the pruned convs too continue from their trained weights
                report["rewound"] = []
                keep_trained_pruned_convs(setup.model, previous)
            if ctx.is_main:
                print(f"round {first}: {report['loaded']} tensors continue from round {first - 1}; "
                      f"{len(report['rewound'])} pruned backbone convs rewound to the pre-trained weights",
                      file=sys.stderr)
        imp.rewind_weights = setup.pretrained_backbone
        imp.start(first_round=first)
    if ctx.is_main:
        print(f"done: backbone_imp*.pth, tickets, metrics.jsonl, summary.jsonl and ap_vs_remaining.png are in "
              f"{args.save_dir}")
    distributed.teardown()
    return imp


if __name__ == "__main__":
    cli.run_main(main, get_args_parser())
