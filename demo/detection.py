"""The detection demo (`make demo-det`): a YOLOv4 ticket on the embedded digits detection set, on a CPU.

  1. pre-trains a ResNet-18 (ImageNet stem, the detector's backbone) on digits classification for a
     few epochs with the core's training loop, on the training split's digits only (the detection
     validation/test canvases use other digits), and saves it as a weight file;
  2. Detection/train_imp.py: IMP from that backbone (round 0 trains densely; after each round a
     share of the remaining backbone conv weights is pruned and the pruned convs rewound);
  3. Detection/train_random.py at the same sparsities: the random-pruning control;
then writes results/demo/detection/report.md with test AP50 against remaining weights.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import torch

from Detection.data import digit_detection_records, digit_pool
from lth.checkpoint import code_version, library_versions
from lth.distributed import Context
from lth.engine import Precision, train_one_epoch
from lth.models import build_model
from lth.plots import plot_accuracy_vs_remaining
from lth.runs import SUMMARY

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

MARKER = "detection_report.md"


def get_args_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", default=os.path.join(ROOT, "results", "demo", "detection"),
                        help="output folder (replaced if it holds an earlier detection demo)")
    parser.add_argument("--pretrain_epochs", type=int, default=4, help="digits classification epochs")
    parser.add_argument("--rounds", type=int, default=3, help="IMP rounds (round k keeps (1-rate)^k)")
    parser.add_argument("--rate", type=float, default=0.5,
                        help="share of the remaining backbone conv weights pruned per round (paper: 0.2)")
    parser.add_argument("--epochs", type=int, default=8, help="detection epochs per round")
    parser.add_argument("--canvas", type=int, default=32, help="side of the digits canvases and detector input (px)")
    parser.add_argument("--train_canvases", type=int, default=384, help="training canvases of the digits set")
    parser.add_argument("--lr", type=float, default=0.02, help="detection learning rate (cosine, no warm-up)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every run")
    parser.add_argument("--keep_models", action="store_true",
                        help="keep every checkpoint and backbone_*.pth (about 2.7 GB); by default only tickets, "
                             "logs, plots and comp4 files stay")
    return parser


def run(script: str, *flags: str) -> None:
    command = [sys.executable, "-u", os.path.join(ROOT, script), *flags]
    print("$ " + " ".join(command[1:]), flush=True)
    subprocess.run(command, check=True, cwd=ROOT)


def pretrain_backbone(path: str, epochs: int, seed: int) -> float:
    """Digits classification on 32 px canvases (each training digit enlarged 3x at a random place),
    trained by the core's loop; returns the last epoch's training accuracy (%)."""
    pixels, labels = digit_pool("train")
    generator = np.random.default_rng(seed)
    torch.manual_seed(seed)
    model = build_model("resnet18", 10, stem="imagenet")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    ctx = Context(device=torch.device("cpu"))
    accuracy = 0.0
    for _ in range(epochs):
        canvases = np.zeros((len(pixels), 3, 32, 32), dtype=np.float32)
        for index, digit in enumerate(pixels):
            big = np.kron(digit, np.ones((3, 3))) / 255.0
            top, left = generator.integers(0, 32 - 24 + 1, size=2)
            canvases[index, :, top:top + 24, left:left + 24] = big
        order = generator.permutation(len(pixels))
        batches = [(torch.from_numpy(canvases[order[i:i + 64]]), torch.from_numpy(labels[order[i:i + 64]]))
                   for i in range(0, len(order), 64)]
        accuracy = train_one_epoch(model, batches, optimizer, None, ctx, Precision.choose("fp32", ctx.device),
                                   desc="pre-train", print_freq=0)["acc"]
    torch.save(model.state_dict(), path)
    return accuracy


def main(args) -> None:
    start, load_before = time.time(), os.getloadavg()[0]
    if os.path.exists(args.out):
        if not os.path.exists(os.path.join(args.out, MARKER)) and os.listdir(args.out):
            sys.exit(f"error: {args.out} exists and does not hold a detection demo; move it away or pass --out")
        shutil.rmtree(args.out)
    os.makedirs(args.out)
    weights = os.path.join(args.out, "digits_resnet18.pth")
    accuracy = pretrain_backbone(weights, args.pretrain_epochs, args.seed)
    phases = {"pre-training": time.time() - start}
    print(f"pre-trained backbone: digits train accuracy {accuracy:.1f}% -> {weights}", flush=True)
    common = ["--dataset", "digits", "--arch", "resnet18", "--img_size", str(args.canvas), "--digits_canvas", str(args.canvas), "--pretrained", weights,
              "--epochs", str(args.epochs), "--batch_size", "16", "--accumulate", "1", "--lr_init", str(args.lr),
              "--lr_schedule", "as_meant", "--warmup_epochs", "0", "--seed", str(args.seed), "--workers", "0",
              "--digits_counts", f"{args.train_canvases},100,200", "--rate", str(args.rate), "--cpu"]
    imp_dir, random_dir = os.path.join(args.out, "imp"), os.path.join(args.out, "random")
    run("Detection/train_imp.py", *common, "--imp_num", "0", "--rounds", str(args.rounds), "--save_dir", imp_dir)
    phases["IMP"] = time.time() - start - phases["pre-training"]
    for k in range(1, args.rounds):
        run("Detection/train_random.py", *common, "--imp_num", str(k), "--save_dir", random_dir)
    imp_rows = read_rows(os.path.join(imp_dir, SUMMARY))
    random_rows = read_rows(os.path.join(random_dir, SUMMARY))
    phases["random pruning"] = time.time() - start - sum(phases.values())
    conditions = f"load average {load_before:.1f} at the start and {os.getloadavg()[0]:.1f} at the end"
    write_report(args, accuracy, imp_rows, random_rows, time.time() - start, phases, conditions)
    if not args.keep_models:
        remove_model_files(args.out)


def remove_model_files(folder: str) -> None:
    """Checkpoints and backbone_*.pth of the demo's runs (tickets, logs and result files stay)."""
    freed = 0
    for path, _, names in os.walk(folder):
        for name in names:
            if name.endswith((".pth.tar", ".pth")) and name != "digits_resnet18.pth":
                freed += os.path.getsize(os.path.join(path, name))
                os.remove(os.path.join(path, name))
    print(f"removed the model files ({freed / 2**30:.1f} GiB; --keep_models keeps them)")


def read_rows(path: str) -> list[dict]:
    with open(path) as handle:
        return sorted((json.loads(line) for line in handle if line.strip()), key=lambda row: row["round"])


def digits_per_canvas(canvas: int) -> float:
    return float(np.mean([len(record.boxes) for record in digit_detection_records("test", 200, 0, canvas)]))


def write_report(args, accuracy: float, imp_rows, random_rows, seconds: float, phases: dict,
                 conditions: str) -> None:
    plot_accuracy_vs_remaining({"IMP ticket": [(r["remaining"], r["ap50"]) for r in imp_rows],
                                "random pruning": [(r["remaining"], r["ap50"]) for r in random_rows]},
                               os.path.join(args.out, "ap50_vs_remaining.png"), ylabel="test AP50 (%)",
                               title="YOLOv4-ResNet-18 on digits canvases")
    random_by_round = {row["round"]: row for row in random_rows}
    lines = [
        "# Demo: detection tickets (YOLOv4, ResNet-18 backbone) on digits canvases",
        "",
        f"Backbone pre-trained on digits classification ({args.pretrain_epochs} epochs, train accuracy "
        f"{accuracy:.1f}%); then {args.rounds} IMP rounds pruning {args.rate:g} of the remaining backbone conv "
        f"weights each (conv1, BN, neck and heads never), {args.epochs} epochs per round on "
        f"{args.train_canvases} canvases of {args.canvas} px (digits enlarged 2x or 3x, up to 3 per canvas where "
        f"they fit: {digits_per_canvas(args.canvas):.2f} per test canvas on average), batch 16, lr {args.lr:g} (cosine), "
        f"seed {args.seed}. Figures: AP50 and AP (IoU 0.50:0.95) in % on the 200 test canvases, at the "
        f"evaluation of best validation AP (one evaluation per round: after its last epoch). Random pruning: "
        f"the same sparsity reached in one shot at random, trained the same way. One seed, tiny data: "
        f"differences of a few points are within run-to-run noise.",
        "",
        "| round | remaining (%) | IMP AP50 | IMP AP | random AP50 | random AP |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for row in imp_rows:
        other = random_by_round.get(row["round"])
        cells = f"{other['ap50']:.2f} | {other['ap']:.2f}" if other else "- | -"
        lines.append(f"| {row['round']} | {row['remaining']:.2f} | {row['ap50']:.2f} | {row['ap']:.2f} | {cells} |")
    lines += [
        "",
        "Round 0 is the dense network (no random counterpart). As in the original, IMP round k starts with the "
        "neck, heads, batch norms and conv1 trained in the rounds before it, while a random-pruning run starts "
        "them from their initialisation: at round k the IMP network's neck and heads have trained k + 1 times "
        "as many epochs as the random-pruning network's, so the two columns do not isolate the mask.",
        "",
        "![AP50 against remaining weights](ap50_vs_remaining.png)",
        "",
        f"Wall time {seconds / 60:.1f} min on this machine ({os.cpu_count()} CPUs, {conditions}; "
        + ", ".join(f"{name} {value:.0f} s" for name, value in phases.items()) + f"); code {code_version()}; " + ", ".join(f"{k} {v}" for k, v in library_versions().items()) + ".",
        "Logs: `imp/metrics.jsonl`, `imp/summary.jsonl`, `random/model{k}/`; tickets: `imp/ticket_XX.pt`, "
        "`random/ticket_XX.pt`; comp4 files: `imp/model{k}/pred_result_test/`.",
        "",
    ]
    with open(os.path.join(args.out, MARKER), "w") as handle:
        handle.write("\n".join(lines))
    print("\n".join(lines[4:6 + len(imp_rows)]))
    print(f"report: {os.path.join(args.out, MARKER)}")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
