"""The segmentation demo: a DeepLabV3+ ResNet-18 ticket on the embedded digits segmentation set, on a CPU.

Runs the real entry scripts, as a user would type them, into results/demo/segmentation/:
  1. a starting point: the backbone trained densely on the digits segmentation set for --pretrain_itrs
     steps (main_transfer_imagenet.py --pretrained none), saved as a plain backbone state_dict, which
     stands in for the released pre-trained weights;
  2. IMP from it (main_imp_imagenet.py --imp_num k, k = 0..rounds-1): every round rewinds to the
     pre-trained backbone with the round-0 head, trains --itrs steps, prunes --rate of the remaining
     backbone conv weights;
  3. the random-pruning control (main_transfer_imagenet.py --random_prune) at each ticket's sparsity,
     from the same starting point, run beside the next IMP round on the second core.
Then writes report.md (what was measured) and miou_vs_remaining.png.
"""

import argparse
import os
import shutil
import subprocess
import sys
import time

import torch

from lth.checkpoint import code_version, read_jsonl
from lth.plots import plot_accuracy_vs_remaining
from lth.runs import SUMMARY

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

MODEL = "deeplabv3plus_resnet18"
CHECKPOINT = f"best_{MODEL}_digits_os16.pth"


def get_args_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", default=os.path.join(ROOT, "results", "demo", "segmentation"),
                        help="output folder (replaced if it holds an earlier segmentation demo)")
    parser.add_argument("--pretrain_itrs", type=int, default=600, help="dense training steps of the starting point")
    parser.add_argument("--rounds", type=int, default=4, help="IMP rounds (round k keeps (1 - rate)^k)")
    parser.add_argument("--rate", type=float, default=0.5,
                        help="fraction of the remaining backbone conv weights pruned per round (the paper "
                             "uses 0.2; 0.5 reaches 12.5%% in 4 rounds, so the demo fits in minutes)")
    parser.add_argument("--itrs", type=int, default=100, help="training steps per IMP round and per control")
    parser.add_argument("--batch_size", type=int, default=16, help="training batch size")
    parser.add_argument("--lr", type=float, default=0.05, help="head learning rate (backbone 0.1x), poly schedule")
    parser.add_argument("--seed", type=int, default=0, help="seed of every run")
    return parser


def command(script: str, *flags: str) -> list[str]:
    return [sys.executable, "-u", os.path.join(ROOT, "Segmentation", script), *flags]


def start(cmd: list[str], log: str) -> subprocess.Popen:
    """Start a run with one thread (two runs side by side take one core each), its output in ``log``.

    Two threads per run were slower on a loaded machine: each waits for the other to be scheduled."""
    print("$ " + " ".join(cmd[1:]), flush=True)
    env = dict(os.environ, TQDM_DISABLE="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT)


def finish(process: subprocess.Popen, log: str) -> None:
    if process.wait() != 0:
        with open(log) as handle:
            tail = handle.read()[-2000:]
        sys.exit(f"error: a demo run failed (log {log}):\n{tail}")


def main(args) -> None:
    begun = time.time()
    if os.path.exists(os.path.join(args.out, "report.md")):
        print(f"replacing the earlier segmentation demo in {args.out}")
        shutil.rmtree(args.out)
    elif os.path.exists(args.out) and os.listdir(args.out):
        sys.exit(f"error: {args.out} exists and does not hold a demo; move it away or pass --out")
    os.makedirs(args.out, exist_ok=True)
    logs = os.path.join(args.out, "logs")
    os.makedirs(logs, exist_ok=True)
    common = ["--dataset", "digits", "--model", MODEL, "--batch_size", str(args.batch_size), "--val_batch_size", "135",
              "--lr", str(args.lr), "--random_seed", str(args.seed), "--cpu", "--print_interval", "0"]

    # 1. the starting point
    pretrain_dir = os.path.join(args.out, "pretrain")
    log = os.path.join(logs, "pretrain.log")
    finish(start(command("main_transfer_imagenet.py", "dense", "--save_dir", pretrain_dir, "--pretrained", "none",
                         "--total_itrs", str(args.pretrain_itrs), "--val_interval", str(args.pretrain_itrs),
                         *common), log), log)
    state = torch.load(os.path.join(pretrain_dir, "dense", CHECKPOINT), map_location="cpu", weights_only=False)
    backbone = {key[len("backbone."):]: value for key, value in state["state_dict"].items()
                if key.startswith("backbone.")}
    weights = os.path.join(args.out, "digits_backbone.pt")
    torch.save(backbone, weights)
    pretrained_miou = read_jsonl(os.path.join(pretrain_dir, SUMMARY))[0]["reported"]
    seconds_pretrain = time.time() - begun

    # 2. IMP, with 3. the random control of round k's sparsity beside round k+1
    imp_dir, control_dir = os.path.join(args.out, "imp"), os.path.join(args.out, "random")
    per_run = ["--pretrained", weights, "--total_itrs", str(args.itrs), "--val_interval", str(args.itrs), *common]
    control = None
    for round_index in range(args.rounds):
        log = os.path.join(logs, f"imp_{round_index}.log")
        imp = start(command("main_imp_imagenet.py", f"round_{round_index}", "--imp_num", str(round_index),
                            "--rate", str(args.rate), "--save_dir", imp_dir, *per_run), log)
        if round_index > 0:  # the ticket of round k exists: its random control runs on the other core
            ticket = os.path.join(imp_dir, f"ticket_{round_index:02d}.pt")
            control_log = os.path.join(logs, f"random_{round_index}.log")
            control = start(command("main_transfer_imagenet.py", f"random_{round_index}", "--mask_dir", ticket,
                                    "--random_prune", "--save_dir", control_dir, *per_run), control_log)
        finish(imp, log)
        if control is not None:
            finish(control, control_log)
            control = None
    write_report(args, imp_dir, control_dir, pretrained_miou, seconds_pretrain, time.time() - begun)


def write_report(args, imp_dir: str, control_dir: str, pretrained_miou: float, seconds_pretrain: float,
                 seconds: float) -> None:
    imp_rows = read_jsonl(os.path.join(imp_dir, SUMMARY))
    random_rows = {round(row["remaining"], 2): row for row in read_jsonl(os.path.join(control_dir, SUMMARY))}
    curves = {"IMP ticket": [(row["remaining"], row["reported"]) for row in imp_rows],
              "random pruning": [(row["remaining"], row["reported"]) for row in random_rows.values()]}
    plot_accuracy_vs_remaining(curves, os.path.join(args.out, "miou_vs_remaining.png"),
                               title="DeepLabV3+ ResNet-18 on digits segmentation", ylabel="test mIoU (%)")
    lines = ["# Segmentation demo: a DeepLabV3+ ResNet-18 ticket on the digits segmentation set", "",
             f"Code {code_version()}; `make demo-seg`; {os.cpu_count()} CPU cores (load average "
             f"{' '.join(f'{v:.1f}' for v in os.getloadavg())} at the end), one thread per run.", "",
             f"Starting point: {args.pretrain_itrs} dense steps from random init, test mIoU {pretrained_miou:.2f} %. "
             f"Each IMP round and each control: {args.itrs} steps of {args.batch_size} from that backbone "
             f"(head at its round-0 init), lr {args.lr} (backbone 0.1x) poly; {args.rate:g} of the remaining "
             f"backbone conv weights pruned per round (paper: 0.2).", "",
             "mIoU: on the held-out test canvases, at the best validation evaluation (here the only one, "
             "after the last step).", "",
             "| round | remaining backbone conv weights (%) | IMP ticket mIoU (%) | random pruning mIoU (%) |",
             "|---|---|---|---|"]
    for row in imp_rows:
        control = random_rows.get(round(row["remaining"], 2))
        shown = f"{control['reported']:.2f}" if control else "(dense: same as IMP)"
        lines.append(f"| {row['round']} | {row['remaining']:.2f} | {row['reported']:.2f} | {shown} |")
    lines += ["", f"Time: {seconds:.0f} s in all, {seconds_pretrain:.0f} s of it for the starting point.",
              "Files: imp/ (seg_backbone_imp{k}.pth, ticket_XX.pt, summary.jsonl, one folder per round), "
              "random/, pretrain/, logs/, miou_vs_remaining.png.", ""]
    with open(os.path.join(args.out, "report.md"), "w") as handle:
        handle.write("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main(get_args_parser().parse_args())
