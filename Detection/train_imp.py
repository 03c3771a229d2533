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

from Detection import runner
from Detection.hparams import DetectionImp
from lth import cli, distributed, pruning
from lth.errors import UserError
from lth.imp import ImpRun
from lth.runs import RunDir
from lth.session import open_session


def get_args_parser():
    return DetectionImp.parser(description=__doc__.split("\n\n")[0])


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
    hparams = DetectionImp.from_args(args)
    args.save_dir = args.save_dir or runner.default_save_dir(args.seed, args.imp_type, "imp")
    run = RunDir(args.save_dir)
    first, last = args.imp_num, args.imp_num + args.rounds - 1
    start_round, resume_file = check_round_files(run, first, last, bool(args.resume))
    continuing = bool(args.resume) or first > 0
    # A later round (--imp_num k, or --resume) continues the IMP run recorded in --save_dir.
    session = open_session(args, run, None, default_seed=runner.config.DEFAULTS["seed"], hparams=hparams,
                           continuing=continuing)
    task = runner.DetectionTask(args, args.imp_type, run.file(f"model{start_round}"), imp=True)
    task.build(session)
    session.record(args, resumed=continuing)
    imp = ImpRun(task, args, session)
    imp.resume(resume_file) if resume_file else imp.start(first_round=first)
    if session.ctx.is_main:
        print(f"done: backbone_imp*.pth, tickets, metrics.jsonl, summary.jsonl and ap_vs_remaining.png are in "
              f"{args.save_dir}")
    distributed.teardown()
    return imp


if __name__ == "__main__":
    cli.run_main(main, get_args_parser())
