"""The pre-training demo: SimCLR and MoCo on the embedded digits, their tickets, and their transfer.

For a user without released weights, as the paper's pipeline end to end, on a CPU in minutes:
  1. writes the digits as an ImageFolder of 32x32 PNGs (the layout SimCLR/ and MoCo/ read);
  2. pre-trains SimCLR and MoCo v2 densely from scratch (--prun_percent 0 / --retrain_epoch 0);
  3. finds tickets on each pre-training task (IMP on the contrastive loss, rewinding to the
     pre-trained weights);
  4. transfers each ticket (pre-trained weights + mask) to digits classification with
     main_eval_downstream.py, beside the dense pre-trained network;
then writes results/demo/pretrain/pretrain_report.md and adds its table to results/demo/report/report.md
(the report of `make demo`, when there is one).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
from PIL import Image

from lth import data
from lth.checkpoint import code_version
from lth.runs import ONE_OFF_SUMMARY

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def get_args_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", default=os.path.join(ROOT, "results", "demo", "pretrain"),
                        help="output folder (replaced if it holds an earlier pre-training demo)")
    parser.add_argument("--arch", default="resnet18", help="the ResNet to pre-train and prune (resnet18, resnet50, ...)")
    parser.add_argument("--pretrain_epochs", type=int, default=4, help="dense pre-training epochs")
    parser.add_argument("--imp_rounds", type=int, default=3, help="IMP rounds on the pre-training task")
    parser.add_argument("--rate", type=float, default=0.5,
                        help="fraction of remaining conv weights pruned per round (paper: 0.2)")
    parser.add_argument("--transfer_epochs", type=int, default=4, help="downstream training epochs")
    parser.add_argument("--seed", type=int, default=0, help="seed of every run")
    return parser


def run(script: str, *flags: str) -> None:
    command = [sys.executable, "-u", os.path.join(ROOT, script), *flags]
    print("$ " + " ".join(command[1:]), flush=True)
    subprocess.run(command, check=True, cwd=ROOT)


def write_digits_image_folder(folder: str) -> None:
    """The digits training split as train/ and its validation split as val/, 32x32 RGB PNGs."""
    splits = data.load_splits("digits", None)
    for split, images, labels in (("train", splits.train_x, splits.train_y), ("val", splits.val_x, splits.val_y)):
        for index, (image, label) in enumerate(zip(images, labels.tolist())):
            target = os.path.join(folder, split, str(label))
            os.makedirs(target, exist_ok=True)
            grey = Image.fromarray(image[0].numpy()).resize((32, 32), Image.NEAREST)
            grey.convert("RGB").save(os.path.join(target, f"{index:05d}.png"))


def transfer(args, name: str, weights: str, mask: str | None) -> dict:
    out = os.path.join(args.out, "transfer", name)
    flags = ["--dataset", "digits", "--arch", args.arch, "--epochs", str(args.transfer_epochs),
             "--batch_size", "128", "--lr", "0.1", "--decreasing_lr",
             f"{args.transfer_epochs // 2},{args.transfer_epochs * 3 // 4}", "--seed", str(args.seed),
             "--save_dir", out, "--pretrained", weights]
    run("main_eval_downstream.py", *flags, *(["--mask_dir", mask] if mask else []))
    with open(os.path.join(out, ONE_OFF_SUMMARY)) as handle:
        return json.load(handle)


def main(args) -> None:
    start = time.time()
    if os.path.exists(args.out):
        print(f"replacing the earlier pre-training demo in {args.out}")
        shutil.rmtree(args.out)
    images = os.path.join(args.out, "digits_imagefolder")
    write_digits_image_folder(images)
    common = ["--arch", args.arch, "--image_size", "32", "--seed", str(args.seed), "--cpu", "-j", "2",
              "--print_freq", "0"]
    imp_epochs = args.imp_rounds - 1  # round 0 only evaluates, then one epoch per round
    simclr_dir, moco_dir = os.path.join(args.out, "simclr"), os.path.join(args.out, "moco")

    run("SimCLR/main.py", "dense", "--data", images, "--save_dir", simclr_dir, "--sim_model", "",
        "--prun_percent", "0", "--epochs", str(args.pretrain_epochs), "--batch_size", "128",
        "--optimizer", "sgd", "--lr", "0.1", *common)
    simclr_weights = os.path.join(simclr_dir, "dense", "simclr_weight.pt")
    run("SimCLR/main.py", "imp", "--data", images, "--save_dir", simclr_dir, "--sim_model", simclr_weights,
        "--prun_percent", str(args.rate), "--epochs", str(imp_epochs), "--prun_epoch", "1",
        "--batch_size", "128", "--optimizer", "sgd", "--lr", "0.01", *common)

    moco_flags = ["--mlp", "--aug-plus", "--moco-k", "1024", "--moco-dim", "64", "--moco-t", "0.2",
                  "-b", "128", *common]
    run("MoCo/main_moco_imp.py", images, "--save_dir", os.path.join(moco_dir, "dense"),
        "--pretrained_path", "none", "--retrain_epoch", "0", "--epochs", str(args.pretrain_epochs),
        "--lr", "0.03", *moco_flags)
    moco_weights = os.path.join(moco_dir, "dense", "moco_pretrain.pth.tar")
    run("MoCo/main_moco_imp.py", images, "--save_dir", os.path.join(moco_dir, "imp"),
        "--pretrained_path", moco_weights, "--retrain_epoch", "1", "--epochs", str(imp_epochs),
        "--prune_percent", str(args.rate), "--lr", "0.003", *moco_flags)

    rows = []
    for method, weights, imp_dir in (("SimCLR", simclr_weights, os.path.join(simclr_dir, "imp")),
                                     ("MoCo v2", moco_weights, os.path.join(moco_dir, "imp"))):
        for k in range(args.imp_rounds + 1):
            mask = os.path.join(imp_dir, f"ticket_{k:02d}.pt") if k else None
            summary = transfer(args, f"{method.split()[0].lower()}_{k:02d}", weights, mask)
            rows.append((method, k, summary["remaining"], summary["test_acc_at_best_val"]))
    write_report(args, rows, time.time() - start)


def write_report(args, rows, seconds: float) -> None:
    lines = [
        "## Pre-training tickets (SimCLR, MoCo v2) transferred to digits",
        "",
        f"{args.arch} pre-trained densely from scratch for {args.pretrain_epochs} epochs on the digits "
        f"training images (32x32, no labels), then {args.imp_rounds} IMP rounds on the contrastive task "
        f"pruning {args.rate:g} of the remaining conv weights each and rewinding to the pre-trained "
        f"weights. Each ticket (pre-trained weights + its mask) then trains {args.transfer_epochs} "
        f"epochs on digits classification; test accuracy (%) at the best validation epoch, seed "
        f"{args.seed}. Round 0 is the dense pre-trained network.",
        "",
        "| pre-training | ticket round | remaining (%) | downstream test accuracy |",
        "|---|---:|---:|---:|",
    ]
    lines += [f"| {method} | {k} | {remaining:.2f} | {'-' if accuracy is None else f'{accuracy:.2f}'} |"
              for method, k, remaining, accuracy in rows]  # None: null (NaN) in summary.json
    lines += ["", f"Wall time {seconds / 60:.1f} min; code {code_version()}. Runs: `{args.out}`.", ""]
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
    np.seterr(all="ignore")
    main(get_args_parser().parse_args())
