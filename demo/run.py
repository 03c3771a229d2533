"""The embedded demo: find a ticket on scikit-learn's digits with IMP on a CPU, then run the controls.

Runs the real entry scripts, as a user would type them, into results/demo/:
  1. main_imp_downstream.py --prune_type lt: IMP; round k trains ticket k from the original init;
  2. the same with --random_prune: random masks at the same sparsities (the random-pruning control);
  3. main_eval_downstream.py --reverse_mask on each ticket, from the same init (the reversed-mask control).
Then writes results/demo/report.md (a table of what was measured) and accuracy_vs_remaining.png.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from lth.checkpoint import code_version, library_versions  # noqa: E402
from lth.plots import plot_accuracy_vs_remaining  # noqa: E402


def get_args_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", default=os.path.join(ROOT, "results", "demo"),
                        help="output folder (replaced if it holds an earlier demo)")
    parser.add_argument("--arch", default="resnet18", help="ResNet depth")
    parser.add_argument("--rounds", type=int, default=8, help="IMP rounds")
    parser.add_argument("--rate", type=float, default=0.5,
                        help="fraction of remaining conv weights pruned per round (the paper uses 0.2; "
                             "0.5 reaches 0.8 %% remaining in 8 rounds, so the demo fits in minutes)")
    parser.add_argument("--epochs", type=int, default=4, help="training epochs per round")
    parser.add_argument("--batch_size", type=int, default=128, help="training batch size")
    parser.add_argument("--lr", type=float, default=0.1, help="SGD learning rate")
    parser.add_argument("--seed", type=int, default=0, help="seed of every run")
    return parser


def run(script: str, *flags: str) -> None:
    command = [sys.executable, "-u", os.path.join(ROOT, script), *flags]
    print("$ " + " ".join(command[1:]), flush=True)
    env = dict(os.environ, TQDM_DISABLE="1")
    subprocess.run(command, check=True, env=env, cwd=ROOT)


def read_jsonl(path: str) -> list[dict]:
    with open(path) as handle:
        return [json.loads(line) for line in handle if line.strip()]


def main(args) -> None:
    start = time.time()
    if os.path.exists(os.path.join(args.out, "report.md")):
        print(f"replacing the earlier demo in {args.out}")
        shutil.rmtree(args.out)
    elif os.path.exists(args.out) and os.listdir(args.out):
        sys.exit(f"error: {args.out} exists and does not hold a demo; move it away or pass --out")
    common = ["--dataset", "digits", "--arch", args.arch, "--epochs", str(args.epochs),
              "--batch_size", str(args.batch_size), "--lr", str(args.lr), "--seed", str(args.seed),
              "--decreasing_lr", f"{args.epochs // 2},{args.epochs * 3 // 4}", "--warmup", "1"]
    imp_dir, random_dir = os.path.join(args.out, "imp_lt"), os.path.join(args.out, "imp_random")
    imp_flags = ["--pruning_times", str(args.rounds), "--rate", str(args.rate), "--prune_type", "lt"]
    run("main_imp_downstream.py", *common, *imp_flags, "--save_dir", imp_dir)
    run("main_imp_downstream.py", *common, *imp_flags, "--random_prune", "--save_dir", random_dir)
    reversed_rows = []
    for k in range(1, args.rounds):
        out = os.path.join(args.out, f"reversed_{k:02d}")
        # The ticket's own init (the IMP run's rewind point) with the complement of its mask.
        run("main_eval_downstream.py", *common, "--save_dir", out, "--mask_dir",
            os.path.join(imp_dir, f"ticket_{k:02d}.pt"), "--reverse_mask",
            "--pretrained", os.path.join(imp_dir, "0checkpoint.pth.tar"), "--dict_key", "init_weight",
            "--load_all")
        with open(os.path.join(out, "summary.json")) as handle:
            reversed_rows.append(json.load(handle))
    write_report(args, read_jsonl(os.path.join(imp_dir, "summary.jsonl")),
                 read_jsonl(os.path.join(random_dir, "summary.jsonl")), reversed_rows, time.time() - start)


def _cell(row: dict | None, key: str = "test_acc_at_best_val") -> str:
    return f"{row[key]:.2f}" if row and row.get(key) is not None else "-"  # None: null (NaN) in JSON


def write_report(args, imp_rows, random_rows, reversed_rows, seconds: float) -> None:
    plot_accuracy_vs_remaining(
        {"IMP ticket (lt)": [(r["remaining"], r["test_acc_at_best_val"]) for r in imp_rows],
         "random pruning": [(r["remaining"], r["test_acc_at_best_val"]) for r in random_rows],
         "reversed ticket mask": [(r["remaining"], r["test_acc_at_best_val"]) for r in reversed_rows]},
        os.path.join(args.out, "accuracy_vs_remaining.png"),
        title=f"{args.arch} on digits (test accuracy at the best validation epoch)")
    lines = [
        "# Demo: lottery tickets on scikit-learn's digits",
        "",
        f"{args.arch} (CIFAR stem), {args.rounds} IMP rounds pruning {args.rate:g} of the remaining conv "
        f"weights each, {args.epochs} epochs per round, batch {args.batch_size}, lr {args.lr:g}, seed "
        f"{args.seed}. Test accuracy (%) on the 360 held-out digits at the epoch of best validation "
        f"accuracy. One seed: differences of a point or two are within run-to-run noise.",
        "",
        "| round | remaining (%) | IMP ticket | random pruning | reversed mask: remaining (%) | reversed mask |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for k, row in enumerate(imp_rows):
        rnd = random_rows[k] if k < len(random_rows) else None
        rev = reversed_rows[k - 1] if 0 < k <= len(reversed_rows) else None
        lines.append(f"| {k} | {row['remaining']:.2f} | {_cell(row)} | {_cell(rnd)} | "
                     f"{_cell(rev, 'remaining')} | {_cell(rev)} |")
    lines += [
        "",
        "The reversed mask keeps exactly the weights the ticket pruned, so its remaining share is "
        "100 % minus the ticket's.",
        "",
        "![accuracy against remaining weights](accuracy_vs_remaining.png)",
        "",
        f"Wall time {seconds / 60:.1f} min on this machine; code {code_version()}; "
        + ", ".join(f"{k} {v}" for k, v in library_versions().items()) + ".",
        "Per-epoch logs: `*/metrics.jsonl`; per-round summaries: `*/summary.jsonl`; tickets: `imp_lt/ticket_XX.pt`.",
        "",
    ]
    with open(os.path.join(args.out, "report.md"), "w") as handle:
        handle.write("\n".join(lines))
    print("\n".join(lines[6:6 + len(imp_rows)]))
    print(f"report: {os.path.join(args.out, 'report.md')}")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
