"""The pre-training demo: SimCLR and MoCo on the embedded digits, their tickets, and their transfer, 3 seeds.

For a user without released weights, as the paper's pipeline end to end, on a CPU in minutes, with the
real entry scripts, two at a time (one thread each):
  1. writes the digits as an ImageFolder of 32x32 PNGs (the layout SimCLR/ and MoCo/ read);
  2. pre-trains SimCLR and MoCo v2 densely from scratch (--prun_percent 0 / --retrain_epoch 0), one run
     each (they stand in for the released pre-trained weights), the two side by side;
  3. finds tickets on each pre-training task (IMP on the contrastive loss, rewinding to the pre-trained
     weights);
  4. transfers to digits classification (main_eval_downstream.py), for each seed: the dense pre-trained
     network and its sparsest ticket (pre-trained weights + mask), the same epochs for both;
then writes results/demo/pretrain/pretrain_report.md (mean ± std over the seeds, the convergence table)
with main_report.py's report of the transfer runs in results/demo/pretrain/report/, and adds its table to
results/demo/report/report.md (the report of `make demo`, when there is one).

The network is resnet18_w16 (ResNet-18 at a quarter of the width), as in `make demo`.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

from lth.runs import METRICS, ONE_OFF_SUMMARY

from common import ROOT, Clock, convergence_table, mean_std, run, write_digits_image_folder

METHODS = ("simclr", "moco")
METHOD_NAMES = {"simclr": "SimCLR", "moco": "MoCo v2"}


def get_args_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", default=os.path.join(ROOT, "results", "demo", "pretrain"),
                        help="output folder (replaced if it holds an earlier pre-training demo)")
    parser.add_argument("--arch", default="resnet18_w16",
                        help="the ResNet to pre-train and prune (resnet18_w16: ResNet-18 at a quarter of the "
                             "width; resnet18, resnet50, ...)")
    parser.add_argument("--pretrain_epochs", type=int, default=6, help="dense pre-training epochs")
    parser.add_argument("--imp_rounds", type=int, default=3,
                        help="IMP rounds on the pre-training task (one epoch of retraining between prunes)")
    parser.add_argument("--rate", type=float, default=0.5,
                        help="fraction of remaining conv weights pruned per round (paper: 0.2; 0.5 reaches "
                             "12.5 %% in 3 rounds)")
    parser.add_argument("--transfer_epochs", type=int, default=8,
                        help="downstream training epochs (as `make demo`'s rounds: validation plateaus)")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds of the transfer runs")
    parser.add_argument("--seed", type=int, default=0, help="seed of the pre-training and IMP runs")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (one thread each)")
    return parser


class Method:
    """One pre-training method's dense run and IMP run; ``dense_ready`` / ``imp_done`` are set when each ends."""

    def __init__(self, name: str, args, images: str):
        self.name, self.args, self.images = name, args, images
        self.folder = os.path.join(args.out, name)
        self.dense_ready, self.imp_done = threading.Event(), threading.Event()
        if name == "simclr":
            self.weights = os.path.join(self.folder, "dense", "simclr_weight.pt")
            self.imp_dir = os.path.join(self.folder, "imp")
        else:
            self.weights = os.path.join(self.folder, "dense", "moco_pretrain.pth.tar")
            self.imp_dir = os.path.join(self.folder, "imp")
        self.ticket = os.path.join(self.imp_dir, f"ticket_{args.imp_rounds:02d}.pt")

    def common(self) -> list[str]:
        return ["--arch", self.args.arch, "--image_size", "32", "--seed", str(self.args.seed), "--cpu", "-j", "0",
                "--print_freq", "0"]

    def pretrain(self) -> None:
        args, imp_epochs = self.args, self.args.imp_rounds - 1  # round 0 prunes one-shot, then one epoch per round
        log = os.path.join(args.out, "logs", f"{self.name}_%s.log")
        try:
            if self.name == "simclr":
                run("SimCLR/main.py", "dense", "--data", self.images, "--save_dir", self.folder, "--sim_model", "",
                    "--prun_percent", "0", "--epochs", str(args.pretrain_epochs), "--batch_size", "128",
                    "--optimizer", "sgd", "--lr", "0.1", *self.common(), log=log % "dense")
            else:
                run("MoCo/main_moco_imp.py", self.images, "--save_dir", os.path.join(self.folder, "dense"),
                    "--pretrained_path", "none", "--retrain_epoch", "0", "--epochs", str(args.pretrain_epochs),
                    "--lr", "0.03", *self.moco_flags(), log=log % "dense")
        finally:
            self.dense_ready.set()
        try:
            if self.name == "simclr":
                run("SimCLR/main.py", "imp", "--data", self.images, "--save_dir", self.folder, "--sim_model",
                    self.weights, "--prun_percent", str(args.rate), "--epochs", str(imp_epochs), "--prun_epoch", "1",
                    "--batch_size", "128", "--optimizer", "sgd", "--lr", "0.01", *self.common(), log=log % "imp")
            else:
                run("MoCo/main_moco_imp.py", self.images, "--save_dir", self.imp_dir, "--pretrained_path",
                    self.weights, "--retrain_epoch", "1", "--epochs", str(imp_epochs), "--prune_percent",
                    str(args.rate), "--lr", "0.003", *self.moco_flags(), log=log % "imp")
        finally:
            self.imp_done.set()

    def moco_flags(self) -> list[str]:
        return ["--mlp", "--aug-plus", "--moco-k", "1024", "--moco-dim", "64", "--moco-t", "0.2", "-b", "128",
                *self.common()]


def transfer(args, method: Method, arm: str, seed: int) -> str:
    (method.dense_ready if arm == "dense" else method.imp_done).wait()
    name = f"{method.name}_{arm}_s{seed}"
    out = os.path.join(args.out, "runs", name)
    # make demo's schedule: lr 0.05 after a one-epoch warm-up, x0.1 for the last 2 epochs
    run("main_eval_downstream.py", "--dataset", "digits", "--arch", args.arch, "--epochs", str(args.transfer_epochs),
        "--batch_size", "64", "--lr", "0.05", "--warmup", "1", "--decreasing_lr", str(max(1, args.transfer_epochs - 2)),
        "--print_freq", "0", "--seed", str(seed), "--save_dir", out, "--pretrained", method.weights,
        *(["--mask_dir", method.ticket] if arm == "ticket" else []),
        log=os.path.join(args.out, "logs", f"{name}.log"))
    return out


def main(args) -> None:
    clock = Clock()
    seeds = [int(part) for part in args.seeds.split(",") if part.strip()]
    if args.imp_rounds < 1:
        sys.exit(f"error: --imp_rounds must be at least 1, got {args.imp_rounds}")
    if os.path.exists(args.out):
        if os.listdir(args.out) and not os.path.exists(os.path.join(args.out, "pretrain_report.md")) and \
                not os.path.isdir(os.path.join(args.out, "digits_imagefolder")):
            sys.exit(f"error: {args.out} exists and does not hold a pre-training demo; move it away or pass --out")
        print(f"replacing the earlier pre-training demo in {args.out}")
        shutil.rmtree(args.out)
    os.makedirs(os.path.join(args.out, "logs"))
    images = os.path.join(args.out, "digits_imagefolder")
    write_digits_image_folder(images)
    methods = {name: Method(name, args, images) for name in METHODS}
    # The two pre-trainings run side by side; each transfer starts as soon as the weights it needs exist.
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        jobs = [pool.submit(method.pretrain) for method in methods.values()]
        transfers = {(name, arm, seed): pool.submit(transfer, args, methods[name], arm, seed)
                     for arm in ("dense", "ticket") for name in METHODS for seed in seeds}
        for job in jobs:
            job.result()
        folders = {key: job.result() for key, job in transfers.items()}
    report_status = main_report(args, sorted(folders.values()))
    write_report(args, methods, folders, seeds, report_status, clock)


def main_report(args, runs: list[str]) -> str:
    """main_report.py over the transfer runs; where to read it, or the one line saying why it could not."""
    out = os.path.join(args.out, "report")
    command = [sys.executable, os.path.join(ROOT, "main_report.py"), *runs, "--out", out,
               "--title", f"{args.arch}: SimCLR and MoCo v2 tickets transferred to digits"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    if result.returncode != 0:
        error = (result.stderr.strip().splitlines() or ["(no message)"])[-1]
        return f"main_report.py could not report these runs (exit {result.returncode}): {error}"
    return "main_report.py: `report/report.md` (groups, verdicts against each pre-training's dense transfer)."


def write_report(args, methods: dict, folders: dict, seeds: list[int], report_status: str, clock: Clock) -> None:
    summaries, curves = {}, {}
    for key, folder in folders.items():
        with open(os.path.join(folder, ONE_OFF_SUMMARY)) as handle:
            summaries[key] = json.load(handle)
        with open(os.path.join(folder, METRICS)) as handle:
            curves[key] = [json.loads(line)["val_acc"] for line in handle if line.strip()]
    lines = [
        "## Pre-training tickets (SimCLR, MoCo v2) transferred to digits",
        "",
        f"{args.arch} pre-trained densely from scratch for {args.pretrain_epochs} epochs on the digits "
        f"training images (32x32, no labels), one run per method (seed {args.seed}), then {args.imp_rounds} IMP "
        f"rounds on the contrastive task pruning {args.rate:g} of the remaining conv weights each and rewinding "
        f"to the pre-trained weights. The dense pre-trained network and its round-{args.imp_rounds} ticket "
        f"(pre-trained weights + mask) then train {args.transfer_epochs} epochs on digits classification, seeds "
        f"{', '.join(map(str, seeds))}; test accuracy (%) at the best validation epoch, mean ± sample std over "
        f"the seeds.",
        "",
        "| pre-training | transferred | conv weights remaining (%) | downstream test accuracy | per seed |",
        "|---|---|---:|---:|---|",
    ]
    for name in METHODS:
        for arm in ("dense", "ticket"):
            rows = [summaries[name, arm, seed] for seed in seeds]
            # test_acc_at_best_val is null (NaN in summary.json) when validation never gave a number
            values = [row["test_acc_at_best_val"] for row in rows if row["test_acc_at_best_val"] is not None]
            shown = mean_std(values) if values else "-"
            label = "dense pre-trained network" if arm == "dense" else f"ticket of round {args.imp_rounds}"
            lines.append(f"| {METHOD_NAMES[name]} | {label} | {rows[0]['remaining']:.2f} | {shown} | "
                         f"{', '.join(f'{v:.2f}' for v in values)} |")
    lines += ["", report_status, ""]
    lines.append(convergence_table(
        "accuracy (%)", "epoch", list(range(1, args.transfer_epochs + 1)),
        {f"{METHOD_NAMES[name]}, {arm}": [curves[name, arm, seed] for seed in seeds]
         for name in METHODS for arm in ("dense", "ticket")}, longer="--transfer_epochs"))
    lines += [clock.summary("demo-pretrain") + f"; {args.jobs} runs at a time, one thread each.",
              f"Runs: `{args.out}`.", ""]
    text = "\n".join(lines)
    with open(os.path.join(args.out, "pretrain_report.md"), "w") as handle:
        handle.write(text)
    report = os.path.join(os.path.dirname(args.out), "report", "report.md")
    if os.path.exists(report):
        with open(report) as handle:
            existing = handle.read()
        marker = "\n## Pre-training tickets"
        existing = existing.split(marker)[0].rstrip("\n") + "\n\n"
        with open(report, "w") as handle:
            handle.write(existing + text)
    print(text)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
