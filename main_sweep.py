"""Run a sweep's job list: all jobs in a loop on one machine, or one job per array task on a cluster.

The sweep scripts (sweeps/classification.sh, sweeps/digits.sh, Detection/sweep.sh and the scripts
calling it, Segmentation/sh/*.sh) write their job list with `make` and then run it with `run`;
SWEEP_MODE=list makes them stop after writing it. A finished job is skipped, a started one resumed,
each job's output is appended to JOBS.logs/NAME.log, and a lock (JOBS.locks/NAME.lock) keeps two
processes off one job. Examples:

    python main_sweep.py status sweep_cifar10/jobs.jsonl
    python main_sweep.py run sweep_cifar10/jobs.jsonl                # every job, then the reports
    python main_sweep.py run sweep_cifar10/jobs.jsonl --index 7      # job 7 only (an array task)
    python main_sweep.py slurm sweep_cifar10/jobs.jsonl --parallel 8 # the sbatch lines for SLURM
"""

import argparse
import os
import sys

from lth import cli, sweep
from lth.errors import UserError


def get_args_parser():
    parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run the jobs of a list (all, or one with --index)",
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    run.add_argument("jobs", help="the job list (JSON lines) a sweep script wrote")
    run.add_argument("--index", type=int, default=None,
                     help="run only this training job (0-based, the SLURM array task id); default: every "
                          "training job in order, then the reports")
    run.add_argument("--reports", action="store_true", help="run only the reports (after an array finished)")

    status = commands.add_parser("status", help="list the jobs with their state (done, started, todo)")
    status.add_argument("jobs", help="the job list")

    slurm = commands.add_parser("slurm", help="print the sbatch lines that run the list as a SLURM job array")
    slurm.add_argument("jobs", help="the job list")
    slurm.add_argument("--parallel", type=int, default=0, help="at most this many array tasks at once (0: no limit)")
    slurm.add_argument("--sbatch_options", default="", help="more sbatch options, e.g. '--gres=gpu:1 --time=48:00:00'")
    slurm.add_argument("--python", default=sys.executable, help="the Python that runs the reports")

    make = commands.add_parser("make", help="write a sweep's job list (the sweep scripts call this)")
    kinds = make.add_subparsers(dest="sweep", required=True, metavar="SWEEP")
    cls = kinds.add_parser("classification", help="the classification grid of sweeps/classification.sh")
    _common(cls)
    cls.add_argument("--out", required=True, help="folder of the runs and reports")
    cls.add_argument("--data", default="../data", help="data folder of the classification scripts")
    cls.add_argument("--dataset", default="cifar10", help="the downstream data set")
    cls.add_argument("--arch", default="resnet50", help="the network")
    cls.add_argument("--rounds", type=int, default=19, help="IMP rounds")
    cls.add_argument("--pretrained", default="", help="NAME=WEIGHTS items: the pre-trainings")
    cls.add_argument("--pt_tickets", default="", help="NAME=FOLDER items: ticket_XX.pt of each pre-training")
    cls.add_argument("--levels", default=None, help="ticket rounds to transfer (default: 0..rounds-1)")
    cls.add_argument("--rewind_epoch", type=int, default=9, help="rewind epoch of rewind_lt")
    cls.add_argument("--extra", default="", help="flags added to every training run")
    cls.add_argument("--imp_extra", default="", help="flags added to the IMP runs only")
    cls.add_argument("--title", default="", help="title of the reports' figures")
    cls.add_argument("--pending_tickets", action="store_true",
                     help="list transfer jobs for tickets that an earlier job list writes (they wait for them)")

    det = kinds.add_parser("detection", help="Detection/sweep.sh KIND TYPE FIRST LAST GPU [flags]")
    _common(det)
    _out(det)
    det.add_argument("kind", choices=sorted(sweep.DETECTION_KINDS), help="which script (eval.py evaluates IMP rounds)")
    det.add_argument("type", help="the pre-training: imagenet, moco or simclr")
    det.add_argument("first", type=int, help="first round or level")
    det.add_argument("last", type=int, help="last round or level")
    det.add_argument("--maskroot", default="", help="transfer/reversed: the mask folder")
    det.add_argument("flags", nargs=argparse.REMAINDER, help="flags passed to every run (after --)")

    one = kinds.add_parser("command", help="a list of one job: any IMP or one-shot command of this toolkit")
    _common(one)
    one.add_argument("--name", required=True, help="the job's name")
    one.add_argument("--type", default="rounds", choices=["rounds", "once"],
                     help="rounds: done with --rounds summary rows; once: done with its summary")
    one.add_argument("--save_dir", required=True, help="the run's --save_dir (where its summary is)")
    one.add_argument("--rounds", type=int, default=1, help="IMP rounds of the run")
    one.add_argument("flags", nargs=argparse.REMAINDER, help="the command line (after --)")

    seg_imp = kinds.add_parser("segmentation-imp", help="Segmentation/sh/imp_*.sh")
    _common(seg_imp)
    _out(seg_imp)
    seg_imp.add_argument("script", help="main_imp_imagenet.py, main_imp_moco.py or main_imp_simclr.py")
    seg_imp.add_argument("name", help="the run name, '{seed}' replaced (round k runs in NAME_k)")
    seg_imp.add_argument("--rounds", type=int, default=19, help="IMP rounds")
    seg_imp.add_argument("flags", nargs=argparse.REMAINDER, help="flags passed to every run (after --)")

    seg_tr = kinds.add_parser("segmentation-transfer", help="Segmentation/sh/transfer_*.sh")
    _common(seg_tr)
    _out(seg_tr)
    seg_tr.add_argument("script", help="main_transfer_imagenet.py, main_transfer_moco.py or main_transfer_simclr.py")
    seg_tr.add_argument("name", help="the run name, '{seed}' replaced")
    seg_tr.add_argument("masks", help="a mask file (one run) or a folder of IMP outputs (rounds 0..rounds-1)")
    seg_tr.add_argument("--rounds", type=int, default=19, help="rounds of the mask folder")
    seg_tr.add_argument("--kinds", default="ticket", help="some of: ticket reversed random")
    seg_tr.add_argument("flags", nargs=argparse.REMAINDER, help="flags passed to every run (after --)")
    return parser


def _out(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="", help="folder of the run folders and the report (default: the "
                                                  "script's folder, as the original)")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--jobs", required=True, help="where the job list is written (JSON lines)")
    parser.add_argument("--python", default="python", help="the Python that runs the jobs")
    parser.add_argument("--seeds", default="0", help="seeds, space-separated")
    parser.add_argument("--gpu", default="", help="CUDA device of every job (empty: the scheduler's choice)")



def make(args) -> list:
    flags = [f for f in getattr(args, "flags", []) or [] if f != "--"]
    notices: list[str] = []
    if args.sweep == "classification":
        levels = args.levels if args.levels is not None else " ".join(str(r) for r in range(args.rounds))
        jobs = sweep.classification_jobs(
            args.out, python=args.python, data=args.data, dataset=args.dataset, arch=args.arch, rounds=args.rounds,
            seeds=args.seeds, pretrained=args.pretrained, pt_tickets=args.pt_tickets, levels=levels,
            rewind_epoch=args.rewind_epoch, extra=args.extra, imp_extra=args.imp_extra,
            pending_tickets=args.pending_tickets, title=args.title, notices=notices)
    elif args.sweep == "command":
        if not flags:
            raise UserError("give the job's command line after --")
        jobs = [sweep.Job(args.name, args.type, flags, os.getcwd(), args.save_dir, rounds=args.rounds)]
    elif args.sweep == "detection":
        jobs = sweep.detection_jobs(args.kind, args.type, args.first, args.last, python=args.python,
                                    seeds=args.seeds, gpu=args.gpu, maskroot=args.maskroot, flags=flags,
                                    out=args.out)
    elif args.sweep == "segmentation-imp":
        from Segmentation.run import SOURCES

        jobs = sweep.segmentation_imp_jobs(args.script, args.name, python=args.python, seeds=args.seeds,
                                           rounds=args.rounds, imp_dirs={k: v.imp_dir for k, v in SOURCES.items()},
                                           gpu=args.gpu, flags=flags, out=args.out)
    else:
        from Segmentation.run import SOURCES

        jobs = sweep.segmentation_transfer_jobs(args.script, args.name, args.masks, python=args.python,
                                                seeds=args.seeds, rounds=args.rounds, sources=list(SOURCES),
                                                kinds=args.kinds,
                                                gpu=args.gpu, flags=flags, out=args.out)
    for notice in notices:
        print(f"notice: {notice}", file=sys.stderr)
    sweep.write_jobs(jobs, args.jobs)
    count = len(sweep.train_jobs(jobs))
    print(f"job list: {args.jobs} ({count} training jobs, {len(jobs) - count} reports)")
    return jobs


def main(args):
    if args.command == "make":
        return make(args)
    if args.command == "status":
        jobs = sweep.read_jobs(args.jobs)
        training = sweep.train_jobs(jobs)
        for index, job in enumerate(training):
            print(f"{index:4d}  {sweep.status(job):7s}  {job.name}")
        for job in jobs:
            if job.stage == sweep.REPORT:
                print(f"   -  report   {job.name}")
        return None
    if args.command == "slurm":
        for line in sweep.slurm_lines(args.jobs, args.python, args.parallel, args.sbatch_options):
            print(line)
        return None
    if args.index is not None and args.reports:
        raise UserError("--index runs one training job and --reports the reports: give one")
    code = sweep.run_jobs(args.jobs, args.index, args.reports)
    if code:
        sys.exit(code)
    return None


if __name__ == "__main__":
    cli.run_main(main, get_args_parser())
