"""The segmentation demo (`make demo-seg`): a ticket found on a pre-training task, transferred to segmentation.

The paper's Fig. 4 claim in small: tickets that IMP finds on the pre-training task transfer to a dense
task. Runs the real entry scripts, two at a time (one thread each), into results/demo/segmentation/:
  1. pre-training (demo/common.py, Pretraining): resnet18_w16 (ResNet-18 at a quarter of the width) trained
     on digits classification with main_imp_imagenet.py (the weights that stand in for the released
     pre-trained ones), then IMP on that classification task from them: ticket_02.pt;
  2. for each seed, three Segmentation/main_transfer_imagenet.py runs of DeepLabV3+ on the digits
     segmentation set, all from the same pre-trained weights, with the same steps, batch and learning rate:
     the dense pre-trained backbone; the IMP ticket (its mask on the pre-trained weights); random pruning
     at the ticket's sparsity (--random_prune, a new random mask per seed);
  3. main_report.py over the nine runs (mean +- std per arm, matching verdicts against the dense arm), and
     report.md: the same numbers as a table, and whether each training's validation mIoU had plateaued.
"""

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

from lth.runs import METRICS, SUMMARY

from common import ROOT, Clock, convergence_table, mean_std, Pretraining, run, seed_list

MARKER = "report.md"
ARMS = ("dense", "ticket", "random")
ARM_NAMES = {"dense": "dense pre-trained backbone", "ticket": "IMP ticket of the pre-training task",
             "random": "random pruning at the ticket's sparsity"}


def get_args_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", default=os.path.join(ROOT, "results", "demo", "segmentation"),
                        help="output folder (replaced if it holds an earlier segmentation demo)")
    parser.add_argument("--seeds", type=seed_list, default="0,1,2", help="comma-separated seeds of the segmentation runs")
    parser.add_argument("--arch", default="resnet18_w16",
                        help="backbone (resnet18_w16: ResNet-18 at a quarter of the width, its DeepLabV3+ head "
                             "a quarter as wide too; resnet18 is the full-width one)")
    parser.add_argument("--pretrain_epochs", type=int, default=10, help="epochs of the dense pre-training")
    parser.add_argument("--imp_epochs", type=int, default=3,
                        help="epochs of the IMP round that retrains on the pre-training task")
    parser.add_argument("--rate", type=float, default=0.8,
                        help="share of the remaining backbone conv weights pruned at each of the two prunes of "
                             "the pre-training IMP (0.8: the ticket keeps 4 %%)")
    parser.add_argument("--itrs", type=int, default=2000,
                        help="training steps of every segmentation run (2,000: the dense arm's validation mIoU "
                             "gains under a point in the last 250, where the poly schedule ends; 800 left it "
                             "at half its value and rising)")
    parser.add_argument("--evaluations", type=int, default=8,
                        help="validation (and test) evaluations per run, evenly spaced; the last after the "
                             "last step")
    parser.add_argument("--batch_size", type=int, default=8,
                        help="training batch size (the original's is 16; 8 reached a higher validation mIoU for "
                             "the same CPU time in a probe: 29.4 after 1,000 steps of 8 against 28.2 after 800 of 16)")
    parser.add_argument("--lr", type=float, default=0.05, help="head learning rate (backbone 0.1x), poly schedule")
    parser.add_argument("--pretrain_seed", type=int, default=0, help="seed of the pre-training and its IMP")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (one thread each)")
    parser.add_argument("--keep_models", action="store_true",
                        help="keep the segmentation runs' model files (by default only logs, summaries, tickets "
                             "and the pre-trained weights stay)")
    return parser


def model_name(arch: str) -> str:
    return f"deeplabv3plus_{arch}"


def main(args) -> None:
    clock = Clock()
    seeds = args.seeds
    if args.itrs < args.evaluations or args.evaluations < 1:
        sys.exit(f"error: --evaluations must lie in 1..--itrs ({args.itrs}), got {args.evaluations}")
    if os.path.exists(os.path.join(args.out, MARKER)) or os.path.isdir(os.path.join(args.out, "runs")):
        print(f"replacing the earlier segmentation demo in {args.out}")
        shutil.rmtree(args.out)
    elif os.path.exists(args.out) and os.listdir(args.out):
        sys.exit(f"error: {args.out} exists and does not hold a demo; move it away or pass --out")
    os.makedirs(os.path.join(args.out, "logs"))
    pre = Pretraining(args.out, args.arch, args.pretrain_seed, args.pretrain_epochs, args.imp_epochs, args.rate)
    runs = os.path.join(args.out, "runs")
    interval = args.itrs // args.evaluations
    common = ["--dataset", "digits", "--model", model_name(args.arch), "--batch_size", str(args.batch_size),
              "--val_batch_size", "135", "--lr", str(args.lr), "--cpu", "--print_interval", "0",
              "--pretrained", pre.weights, "--total_itrs", str(args.itrs), "--val_interval", str(interval)]

    def transfer(arm: str, seed: int) -> None:
        (pre.dense_ready if arm == "dense" else imp_done).wait()
        mask = {"dense": [], "ticket": ["--mask_dir", pre.ticket],
                "random": ["--mask_dir", pre.ticket, "--random_prune"]}[arm]
        name = f"{arm}_s{seed}"
        run("Segmentation/main_transfer_imagenet.py", name, "--save_dir", os.path.join(runs, name),
            "--random_seed", str(seed), *mask, *common, log=os.path.join(args.out, "logs", f"{name}.log"))

    imp_done = threading.Event()

    def pretrain() -> None:
        try:
            pre.run()
        finally:
            imp_done.set()

    # The pre-training holds one worker; the dense arm needs only its dense weights, so it starts beside
    # the pre-training's IMP run; the ticket and random arms wait for the ticket.
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        jobs = [pool.submit(pretrain)]
        jobs += [pool.submit(transfer, arm, seed) for arm in ARMS for seed in seeds]
        for job in jobs:
            job.result()
    results = read_results(runs, seeds)
    report_status = main_report(runs, os.path.join(args.out, "main_report"), args)
    write_report(args, pre, results, report_status, clock)
    if not args.keep_models:
        for path in glob.glob(os.path.join(runs, "*", "*", "*.pth")):
            os.remove(path)


def read_results(runs: str, seeds: list[int]) -> dict:
    """Per arm and seed: the summary row and the validation/test mIoU at each evaluation."""
    results = {}
    for arm in ARMS:
        for seed in seeds:
            name = f"{arm}_s{seed}"
            with open(os.path.join(runs, name, SUMMARY)) as handle:
                rows = [json.loads(line) for line in handle if line.strip()]
            with open(os.path.join(runs, name, name, METRICS)) as handle:
                evaluations = [json.loads(line) for line in handle if line.strip()]
            results[arm, seed] = {"row": rows[-1], "val": [e["miou"] for e in evaluations if "miou" in e],
                                  "test": [e["test_miou"] for e in evaluations if "test_miou" in e],
                                  "itrs": [e["itr"] for e in evaluations if "miou" in e]}
    return results


def main_report(runs: str, out: str, args) -> str:
    """main_report.py over the nine runs; its summary lines, or the one line saying why it could not."""
    command = [sys.executable, os.path.join(ROOT, "main_report.py"), *sorted(glob.glob(os.path.join(runs, "*"))),
               "--out", out, "--title", f"DeepLabV3+ {args.arch} on digits segmentation, ticket transfer"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    if result.returncode != 0:
        error = (result.stderr.strip().splitlines() or ["(no message)"])[-1]
        return f"main_report.py could not report these runs (exit {result.returncode}): {error}"
    return f"main_report.py: `{os.path.relpath(out, args.out)}/report.md` (levels, verdicts, figures)."


def write_report(args, pre: Pretraining, results: dict, report_status: str, clock: Clock) -> None:
    seeds = sorted({seed for _, seed in results})
    remaining = {arm: results[arm, seeds[0]]["row"]["remaining"] for arm in ARMS}
    curve = pre.validation_curve()
    lines = [
        "# Segmentation demo: a pre-training ticket transferred to DeepLabV3+ (digits)", "",
        f"Pre-training: {pre.describe()}; validation top-1 by epoch "
        f"{' '.join(f'{value:.1f}' for value in curve)} %.", "",
        f"Segmentation: `Segmentation/main_transfer_imagenet.py`, {model_name(args.arch)} on the digits segmentation "
        f"set (digits pasted on 32x32 canvases, 11 classes), {args.itrs} steps of {args.batch_size}, lr {args.lr:g} "
        f"(backbone 0.1x), poly schedule, seeds {', '.join(map(str, seeds))}; every arm starts from the same "
        f"pre-trained weights. mIoU (%) on the test canvases at the best of {args.evaluations} validation "
        f"evaluations.", "",
        "| arm | backbone conv weights remaining (%) | test mIoU, mean ± std | per seed |",
        "|---|---:|---:|---|"]
    for arm in ARMS:
        values = [results[arm, seed]["row"]["reported"] for seed in seeds]
        lines.append(f"| {ARM_NAMES[arm]} | {remaining[arm]:.2f} | {mean_std(values)} | "
                     f"{', '.join(f'{v:.2f}' for v in values)} |")
    lines += ["", "(std: sample standard deviation over the seeds.) " + report_status, ""]
    lines.append(convergence_table("mIoU (%)", "step", results[ARMS[0], seeds[0]]["itrs"],
                                   {ARM_NAMES[arm]: [results[arm, seed]["val"] for seed in seeds] for arm in ARMS},
                                   longer="--itrs"))
    lines += [clock.summary("demo-seg") + f"; {args.jobs} runs at a time, one thread each.",
              "Files: runs/<arm>_s<seed>/ (run.json, metrics.jsonl, summary.jsonl), pretrain_dense/, pretrain_imp/ "
              "(ticket_02.pt), logs/, main_report/.", ""]
    text = "\n".join(lines)
    with open(os.path.join(args.out, MARKER), "w") as handle:
        handle.write(text)
    print(text)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
