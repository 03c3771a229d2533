"""The cost demo: what share of IMP's training cost early-bird tickets, learning-rate rewinding and random pruning need.

Runs the real entry scripts on scikit-learn's digits, 3 seeds, two at a time (one thread each), into
results/demo/cost/runs/:
  1. main_imp_downstream.py --prune_type lt: IMP, --rounds rounds pruning --rate of what remains;
  2. the same with --prune_type lrr: learning-rate rewinding (Renda et al. 2020);
  3. the same with --random_prune: random masks at the same sparsities;
  4. main_imp_downstream.py --early_bird_sparsity S --pruning_times 2, one run per sparsity IMP reaches:
     the early-bird search (You et al. 2020; the paper's threshold 0.1 and window 5) stops the dense
     training once the mask at S has settled, prunes to S in one step, then trains that ticket.
Then main_report.py writes results/demo/cost/report/ (report.md with its cost section, cost.csv,
metric_vs_cost.png), and this script adds the demo's answer to report.md: at each sparsity, the share of
IMP's training cost (samples seen) each method needed to reach a ticket that matches the dense model,
or that it did not. The numbers are whatever the runs give; nothing is tuned for a method to win.
"""

import argparse
import csv
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

from common import ROOT, Clock, run

METHODS = ("imp", "lrr", "random", "eb")


def get_args_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", default=os.path.join(ROOT, "results", "demo", "cost"),
                        help="output folder (its runs/ and report/ are replaced if they hold an earlier cost demo)")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds; every method runs once per seed")
    parser.add_argument("--arch", default="resnet18_w16", help="the ResNet to prune")
    parser.add_argument("--rounds", type=int, default=4,
                        help="IMP rounds: sparsities 1 - (1 - rate)^k for k = 1 .. rounds - 1 are compared")
    parser.add_argument("--rate", type=float, default=0.8, help="share of the remaining conv weights pruned per round")
    parser.add_argument("--epochs", type=int, default=6, help="training epochs per round (x0.1 learning rate "
                                                               "for the last two)")
    parser.add_argument("--batch_size", type=int, default=64, help="training batch size")
    parser.add_argument("--lr", type=float, default=0.05, help="SGD learning rate")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (one thread each)")
    return parser


def run_then_tidy(script: str, *flags: str) -> float:
    """One run (``common.run``: one thread, its CPU time); then its checkpoints go: the report reads
    summaries, tickets and logs only."""
    cpu = run(script, *flags)
    save_dir = flags[flags.index("--save_dir") + 1]
    for name in os.listdir(save_dir):
        if name.endswith(".pth.tar"):
            os.remove(os.path.join(save_dir, name))
    return cpu


def sparsities(rounds: int, rate: float) -> list[float]:
    return [round(1 - (1 - rate) ** k, 6) for k in range(1, rounds)]


def main(args) -> None:
    clock = Clock()
    runs, report = os.path.join(args.out, "runs"), os.path.join(args.out, "report")
    earlier = [path for path in (runs, report) if os.path.exists(path)]
    if earlier:
        ours = os.path.isdir(runs) and any(name.startswith(METHODS) for name in os.listdir(runs))
        if not (os.path.isfile(os.path.join(report, "report.md")) or ours):
            sys.exit(f"error: {args.out} holds runs/ or report/ that are not a cost demo's; move them away or pass --out")
        print(f"replacing the earlier cost demo in {args.out}")
        for path in earlier:
            shutil.rmtree(path)
    os.makedirs(runs)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    decay = max(args.epochs - 2, 1)
    common = ["--dataset", "digits", "--arch", args.arch, "--epochs", str(args.epochs), "--batch_size",
              str(args.batch_size), "--lr", str(args.lr), "--decreasing_lr", str(decay), "--warmup", "1",
              "--print_freq", "0", "--rate", str(args.rate)]
    imp = ["--pruning_times", str(args.rounds)]
    jobs = []
    for seed in seeds:
        s = ["--seed", str(seed)]
        jobs += [("main_imp_downstream.py", *common, *imp, "--prune_type", "lt", *s,
                  "--save_dir", os.path.join(runs, f"imp_s{seed}")),
                 ("main_imp_downstream.py", *common, *imp, "--prune_type", "lrr", *s,
                  "--save_dir", os.path.join(runs, f"lrr_s{seed}")),
                 ("main_imp_downstream.py", *common, *imp, "--prune_type", "lt", "--random_prune", *s,
                  "--save_dir", os.path.join(runs, f"random_s{seed}"))]
        for k, sparsity in enumerate(sparsities(args.rounds, args.rate), start=1):
            jobs.append(("main_imp_downstream.py", *common, "--pruning_times", "2", "--prune_type", "lt",
                         "--early_bird_sparsity", str(sparsity), *s,
                         "--save_dir", os.path.join(runs, f"eb{k}_s{seed}")))
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for job in [pool.submit(run_then_tidy, *job) for job in jobs]:
            job.result()
    env = dict(os.environ, OMP_NUM_THREADS="1")
    subprocess.run([sys.executable, os.path.join(ROOT, "main_report.py"), runs, "--out", report,
                    "--title", f"{args.arch} on digits, {len(seeds)} seeds"], check=True, cwd=ROOT, env=env)
    answer = demo_answer(os.path.join(report, "cost.csv"), args)
    closing = clock.summary("make demo-cost") + f"; {args.jobs} runs at a time, one thread each"
    with open(os.path.join(report, "report.md"), "a") as handle:
        handle.write("\n".join(answer + ["", closing + ".", ""]))
    print("\n".join(answer))
    print(f"{closing}; report: {os.path.join(report, 'report.md')}")


RULES = (("within_std", "1 std"), ("at_least", "≥ mean"), ("welch", "Welch"))


def demo_answer(table: str, args) -> list[str]:
    """At each sparsity, every method's share of IMP's cost to its ticket and the rules under which
    that ticket matches the dense model (or that it matches under none)."""
    with open(table) as handle:
        rows = list(csv.DictReader(handle))
    by_method: dict[str, dict[float, dict]] = {}
    for row in rows:
        by_method.setdefault(row["method"], {})[float(row["remaining"])] = row
    reference = next((m for m in by_method if m.startswith("IMP")), None)
    lines = ["## The demo's answer: share of IMP's cost to a matching ticket", "",
             f"{args.rounds} IMP rounds of {args.epochs} epochs at rate {args.rate} on digits ({args.arch}), "
             f"{len(args.seeds.split(','))} seeds. Each cell: the method's training cost for its ticket at that "
             f"sparsity as a share of IMP's (samples seen, cumulative over the rounds the ticket needed; random "
             f"masks need no training before their own), the rules under which the ticket matches the dense "
             f"model (1 std: mean within one dense std; ≥ mean: at least the dense mean; Welch: not significantly "
             f"worse, one-sided, α = 0.05), and its accuracy (mean ± std over seeds). Early-bird uses the paper's "
             f"threshold 0.1 and window 5, so its search cannot stop before 4 of the {args.epochs} epochs.", "",
             "| remaining (%) | " + " | ".join(by_method) + " |", "|---:|" + "---|" * len(by_method)]
    levels = sorted({level for found in by_method.values() for level in found}, reverse=True)
    for level in levels:
        cells = []
        for found in by_method.values():
            row = _near(found, level)
            if row is None:
                cells.append("-")
                continue
            share = row["fraction_of_reference_images"]
            cost = f"cost {float(share):.2f}" if share else "cost -"
            matched = [name for key, name in RULES if row.get(f"matches_{key}") == "true"]
            verdict = ("matches: " + ", ".join(matched)) if matched else (
                "**no match**" if any(row.get(f"matches_{key}") == "false" for key, _ in RULES) else "no dense model")
            cells.append(f"{cost}; {verdict}; {float(row['metric_mean']):.1f} ± {float(row['metric_std'] or 0):.1f}")
        lines.append(f"| {level:.3g} | " + " | ".join(cells) + " |")
    if reference is None:
        lines += ["", "No IMP run: no shares."]
    return lines


def _near(found: dict, level: float, tolerance: float = 0.01):
    for key, row in found.items():
        if abs(key - level) <= tolerance * level:
            return row
    return None


if __name__ == "__main__":
    main(get_args_parser().parse_args())
