"""The detection demo (`make demo-det`): a ticket found on a pre-training task, transferred to YOLOv4 detection.

The paper's Fig. 4 claim in small: tickets that IMP finds on the pre-training task transfer to a dense
task. Runs the real entry scripts, two at a time (one thread each), into results/demo/detection/:
  1. pre-training (demo/common.py, Pretraining): resnet18_w16 (ResNet-18 at a quarter of the width) trained
     on digits classification with main_imp_imagenet.py (the weights that stand in for the released
     pre-trained ones), then IMP on that classification task from them: ticket_02.pt;
  2. for each seed, three YOLOv4 runs on the digits detection canvases, all from the same pre-trained
     backbone, with the same epochs, batch and learning rate: the dense pre-trained backbone
     (Detection/train_transfer.py with the IMP run's round-0 mask, ticket_00.pt, which keeps every weight);
     the IMP ticket (train_transfer.py, ticket_02.pt on the pre-trained weights); random pruning at the
     ticket's sparsity (Detection/train_random.py, a new random mask per seed; it needs only the dense
     pre-trained weights, so the first one starts beside the pre-training's IMP);
  3. main_report.py over the nine runs (mean +- std per arm, matching verdicts against the dense arm), and
     detection_report.md: the same numbers as a table, and whether each training's validation AP had
     plateaued.
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

MARKER = "detection_report.md"
ARMS = ("dense", "ticket", "random")
ARM_NAMES = {"dense": "dense pre-trained backbone", "ticket": "IMP ticket of the pre-training task",
             "random": "random pruning at the ticket's sparsity"}


def get_args_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", default=os.path.join(ROOT, "results", "demo", "detection"),
                        help="output folder (replaced if it holds an earlier detection demo)")
    parser.add_argument("--seeds", type=seed_list, default="0,1,2", help="comma-separated seeds of the detection runs")
    parser.add_argument("--arch", default="resnet18_w16",
                        help="backbone (resnet18_w16: ResNet-18 at a quarter of the width, YOLOv4's neck and heads "
                             "follow its channels; resnet18 is the full-width one)")
    parser.add_argument("--pretrain_epochs", type=int, default=10, help="epochs of the dense pre-training")
    parser.add_argument("--imp_epochs", type=int, default=3,
                        help="epochs of the IMP round that retrains on the pre-training task")
    parser.add_argument("--rate", type=float, default=0.8,
                        help="share of the remaining backbone conv weights pruned at each of the two prunes of "
                             "the pre-training IMP (0.8: the ticket keeps 4 %%)")
    parser.add_argument("--epochs", type=int, default=64,
                        help="detection epochs of every run (see docs/DEMOS.md for the convergence table that chose it)")
    parser.add_argument("--evaluations", type=int, default=4,
                        help="validation (and test) evaluations per run, evenly spaced; the last after the "
                             "last epoch (must divide --epochs)")
    parser.add_argument("--canvas", type=int, default=32, help="side of the digits canvases and detector input (px)")
    parser.add_argument("--scale", type=int, default=3,
                        help="each 8x8 digit enlarged this many times (3: one 24 px digit per 32 px canvas; 2: "
                             "16 px digits, 1-3 per canvas, which the dense model needs about twice the steps to learn)")
    parser.add_argument("--train_canvases", type=int, default=384, help="training canvases of the digits set")
    parser.add_argument("--batch_size", type=int, default=32,
                        help="training batch size (the original's config: 8; 32 trains 1.75x more canvases per CPU "
                             "second here)")
    parser.add_argument("--lr", type=float, default=0.025, help="detection learning rate (cosine, no warm-up)")
    parser.add_argument("--pretrain_seed", type=int, default=0, help="seed of the pre-training and its IMP")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (one thread each)")
    parser.add_argument("--keep_models", action="store_true",
                        help="keep every checkpoint and backbone_*.pth of the detection runs (by default only "
                             "tickets, logs, summaries and comp4 files stay)")
    return parser


def main(args) -> None:
    clock = Clock()
    seeds = args.seeds
    if args.evaluations < 1 or args.epochs % args.evaluations:
        sys.exit(f"error: --evaluations must divide --epochs ({args.epochs}), got {args.evaluations}")
    if os.path.exists(args.out):
        if not os.path.exists(os.path.join(args.out, MARKER)) and os.listdir(args.out):
            sys.exit(f"error: {args.out} exists and does not hold a detection demo; move it away or pass --out")
        print(f"replacing the earlier detection demo in {args.out}")
        shutil.rmtree(args.out)
    os.makedirs(os.path.join(args.out, "logs"))
    pre = Pretraining(args.out, args.arch, args.pretrain_seed, args.pretrain_epochs, args.imp_epochs, args.rate)
    dense_mask = os.path.join(pre.imp_dir, "ticket_00.pt")  # round 0 of the pre-training IMP: all weights kept
    runs = os.path.join(args.out, "runs")
    common = ["--dataset", "digits", "--arch", args.arch, "--img_size", str(args.canvas),
              "--digits_canvas", str(args.canvas), "--digits_counts", f"{args.train_canvases},100,200",
              "--digits_scales", str(args.scale),
              "--pretrained", pre.weights, "--epochs", str(args.epochs),
              "--eval_interval", str(args.epochs // args.evaluations), "--batch_size", str(args.batch_size),
              "--accumulate", "1", "--lr_init", str(args.lr), "--lr_schedule", "as_meant", "--warmup_epochs", "0",
              "--workers", "0", "--cpu"]
    imp_done = threading.Event()

    def pretrain() -> None:
        try:
            pre.run()
        finally:
            imp_done.set()

    def detect(arm: str, seed: int) -> None:
        # Random pruning needs only the dense pre-trained weights: it starts while the pre-training's IMP runs.
        (pre.dense_ready if arm == "random" else imp_done).wait()
        name = f"{arm}_s{seed}"
        flags = ["--seed", str(seed), "--save_dir", os.path.join(runs, name), *common]
        log = os.path.join(args.out, "logs", f"{name}.log")
        if arm == "random":
            run("Detection/train_random.py", "--imp_type", "imagenet", "--imp_num", "2", "--rate", str(args.rate),
                *flags, log=log)
        else:
            mask, number = (dense_mask, "0") if arm == "dense" else (pre.ticket, "2")
            run("Detection/train_transfer.py", "--transfer_type", "imagenet", "--mask_dir", mask,
                "--mask_num", number, *flags, log=log)

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        first = ("random", "dense", "ticket")  # the arm that can start early first
        jobs = [pool.submit(pretrain)] + [pool.submit(detect, arm, seed) for seed in seeds for arm in first]
        for job in jobs:
            job.result()
    results = read_results(runs, seeds)
    report_status = main_report(runs, os.path.join(args.out, "main_report"), args)
    write_report(args, pre, results, report_status, clock)
    if not args.keep_models:
        remove_model_files(runs)


def read_results(runs: str, seeds: list[int]) -> dict:
    """Per arm and seed: the summary row and the validation/test AP at each evaluation."""
    results = {}
    for arm in ARMS:
        for seed in seeds:
            folder = glob.glob(os.path.join(runs, f"{arm}_s{seed}", "model*"))[0]
            with open(os.path.join(folder, SUMMARY)) as handle:
                rows = [json.loads(line) for line in handle if line.strip()]
            with open(os.path.join(folder, METRICS)) as handle:
                evaluations = [row for row in (json.loads(line) for line in handle if line.strip()) if "ap" in row]
            results[arm, seed] = {"row": rows[-1], "val": [e["ap"] for e in evaluations],
                                  "epochs": [e["epoch"] + 1 for e in evaluations]}
    return results


def dense_arm_label(runs: str) -> str | None:
    """The report's label of the group that holds the dense arm (``dense_s*``), or None.

    train_random.py's control prunes at random to a round's sparsity without reading a ticket, so
    its run.json links it to no ticket experiment and the report cannot find its dense model by
    itself: the demo names it (``--baseline``), so every arm is judged against the dense arm."""
    from lth import report

    inputs = report.read_runs([os.path.join(runs, "*")])
    dense = os.path.realpath(os.path.join(runs, "dense_s0")) + os.sep
    for group in report.group_runs(inputs.runs):
        if any(os.path.realpath(run.path).startswith(dense) for run in group.runs):
            return group.label
    return None


def main_report(runs: str, out: str, args) -> str:
    """main_report.py over the nine runs; where to read it, or the one line saying why it could not."""
    baseline = dense_arm_label(runs)
    command = [sys.executable, os.path.join(ROOT, "main_report.py"), *sorted(glob.glob(os.path.join(runs, "*"))),
               "--out", out, "--title", f"YOLOv4-{args.arch} on digits canvases, ticket transfer",
               *(["--baseline", baseline] if baseline else [])]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    if result.returncode != 0:
        error = (result.stderr.strip().splitlines() or ["(no message)"])[-1]
        return f"main_report.py could not report these runs (exit {result.returncode}): {error}"
    return f"main_report.py: `{os.path.relpath(out, args.out)}/report.md` (levels, verdicts, figures)."


def remove_model_files(folder: str) -> None:
    """Checkpoints and backbone_*.pth of the detection runs (tickets, logs and result files stay)."""
    freed = 0
    for path in glob.glob(os.path.join(folder, "**", "*.pth*"), recursive=True):
        freed += os.path.getsize(path)
        os.remove(path)
    print(f"removed the detection runs' model files ({freed / 2**20:.0f} MiB; --keep_models keeps them)")


def digits_per_canvas(args) -> str:
    """What the training canvases hold, counted on the seed-0 set: "one 24 px digit per canvas"."""
    from Detection.data import digit_detection_records

    counts = sorted({len(r.boxes) for r in digit_detection_records("train", args.train_canvases, 0, args.canvas,
                                                                   scales=(args.scale,))})
    many = "one" if counts == [1] else f"{counts[0]}-{counts[-1]}"
    return f"{many} {8 * args.scale} px digit{'' if counts == [1] else 's'} per canvas"


def write_report(args, pre: Pretraining, results: dict, report_status: str, clock: Clock) -> None:
    seeds = sorted({seed for _, seed in results})
    curve = pre.validation_curve()
    lines = [
        "# Detection demo: a pre-training ticket transferred to YOLOv4 (digits canvases)", "",
        f"Pre-training: {pre.describe()}; validation top-1 by epoch "
        f"{' '.join(f'{value:.1f}' for value in curve)} %.", "",
        f"Detection: YOLOv4-{args.arch}, {args.epochs} epochs on {args.train_canvases} canvases of {args.canvas} px "
        f"({digits_per_canvas(args)}; no mirroring or mixup: a mirrored digit is another glyph), "
        f"batch {args.batch_size}, lr {args.lr:g} (cosine, no warm-up), seeds {', '.join(map(str, seeds))}; "
        f"every arm starts from the same pre-trained backbone "
        f"(neck and heads from their initialisation). AP (IoU 0.50:0.95) and AP50 in % on the 200 test canvases, "
        f"at the best of {args.evaluations} validation evaluations (on 100 validation canvases).", "",
        "| arm | backbone conv weights remaining (%) | test AP, mean ± std | test AP50, mean ± std | AP per seed |",
        "|---|---:|---:|---:|---|"]
    for arm in ARMS:
        rows = [results[arm, seed]["row"] for seed in seeds]
        per_seed = ", ".join(f"{row['reported']:.2f}" for row in rows)
        lines.append(f"| {ARM_NAMES[arm]} | {rows[0]['remaining']:.2f} | {mean_std([r['reported'] for r in rows])} | "
                     f"{mean_std([r['ap50'] for r in rows])} | {per_seed} |")
    lines += ["", "(std: sample standard deviation over the seeds.) " + report_status, ""]
    lines.append(convergence_table("AP (%)", "epoch", results[ARMS[0], seeds[0]]["epochs"],
                                   {ARM_NAMES[arm]: [results[arm, seed]["val"] for seed in seeds] for arm in ARMS},
                                   longer="--epochs"))
    lines += [clock.summary("demo-det") + f"; {args.jobs} runs at a time, one thread each.",
              "Files: runs/<arm>_s<seed>/model<k>/ (run.json, metrics.jsonl, summary.jsonl, comp4 files), "
              "pretrain_dense/, pretrain_imp/ (ticket_02.pt), logs/, main_report/.", ""]
    text = "\n".join(lines)
    with open(os.path.join(args.out, MARKER), "w") as handle:
        handle.write(text)
    print(text)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
