"""The embedded demo: IMP tickets against random pruning and other controls on scikit-learn's digits, 3 seeds.

The network is resnet18_w16 (ResNet-18 at a quarter of the width, 0.7M parameters): it trains to a
validation plateau in the epochs each round gets, so that the whole demo fits in minutes on 2 cores
without AVX-512 (the full-width ResNet-18 takes 12x the CPU time per epoch; --arch resnet18 runs it).

Runs the real entry scripts, as a user would type them, two at a time (one per core), into
results/demo/runs/:
  1. main_imp_downstream.py --prune_type lt, one run per seed: IMP; round k trains ticket k from the
     seed's original init;
  2. the same with --random_prune: random masks at the same sparsities (the random-pruning control);
  3. main_eval_downstream.py on tickets of step 1: their masks from a new random init (the random
     re-init control) and their reversed masks from the ticket's own init (the reversed-mask control).
Then main_report.py pools the seeds into results/demo/report/ (report.md, levels.csv, the figure with
mean and +-std bands, matching verdicts and Welch t-tests) and analyses the sparsest tickets.
"""

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

from lth.runs import METRICS

from common import ROOT, Clock, convergence_table, run


def get_args_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", default=os.path.join(ROOT, "results", "demo"),
                        help="output folder (replaced if it holds an earlier demo)")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds; every experiment runs once per seed")
    parser.add_argument("--arch", default="resnet18_w16",
                        help="the ResNet to prune (resnet18_w16: ResNet-18 at a quarter of the width; resnet18, "
                             "resnet50, ...)")
    parser.add_argument("--rounds", type=int, default=5, help="IMP rounds (round k keeps (1 - rate)^k)")
    parser.add_argument("--rate", type=float, default=0.8,
                        help="fraction of remaining conv weights pruned per round (the paper uses 0.2; 0.8 "
                             "reaches 0.16 %% remaining in 5 rounds, so 3 seeds fit in minutes)")
    parser.add_argument("--epochs", type=int, default=8,
                        help="training epochs per round (and per control run): the dense model's validation "
                             "accuracy plateaus within them (the report's convergence table shows it)")
    parser.add_argument("--batch_size", type=int, default=64, help="training batch size")
    parser.add_argument("--lr", type=float, default=0.05,
                        help="SGD learning rate after a one-epoch warm-up, x0.1 for the last --decay_epochs")
    parser.add_argument("--decay_epochs", type=int, default=2, help="last epochs trained at 0.1 x --lr")
    parser.add_argument("--reinit_rounds", default="3",
                        help="tickets (rounds) trained from a new random init: the random re-init control")
    parser.add_argument("--reversed_rounds", default="2",
                        help="tickets (rounds) whose reversed mask is trained from the ticket's init")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (one thread each)")
    parser.add_argument("--keep_checkpoints", action="store_true",
                        help="keep every run's model checkpoints (about 8 GB in all with --arch resnet18); by "
                             "default a run's "
                             "are removed as soon as no other run needs them, keeping tickets, logs and "
                             "summaries (all that the report reads)")
    return parser


REVERSED_INIT = "0checkpoint.pth.tar"  # holds the IMP run's init_weight, where its reversed masks start


def remove_checkpoints(save_dir: str, keep: str = "") -> None:
    """The report reads summaries and tickets only; checkpoints are resumable states and best models."""
    for path in glob.glob(os.path.join(save_dir, "*.pth.tar")):
        if os.path.basename(path) != keep:
            os.remove(path)


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def main(args) -> None:
    clock = Clock()
    runs, report = os.path.join(args.out, "runs"), os.path.join(args.out, "report")
    earlier = [path for path in (runs, report) if os.path.exists(path)]
    if earlier:
        # The demo owns runs/ and report/ (also after an interrupted demo); anything else in --out stays.
        demo_runs = os.path.isdir(runs) and any(name.startswith(("imp_lt_s", "random_s")) for name in os.listdir(runs))
        if not (os.path.isfile(os.path.join(report, "report.md")) or demo_runs):
            sys.exit(f"error: {args.out} holds runs/ or report/ that are not a demo's; move them away or pass --out")
        print(f"replacing the earlier demo in {args.out}")
        for path in earlier:
            shutil.rmtree(path)
    seeds = _ints(args.seeds)
    for k in _ints(args.reinit_rounds) + _ints(args.reversed_rounds):
        if not 0 < k < args.rounds:
            sys.exit(f"error: ticket rounds must lie in 1..{args.rounds - 1} (trained tickets), got {k}")
    if not 0 < args.decay_epochs < args.epochs:
        sys.exit(f"error: --decay_epochs must lie in 1..{args.epochs - 1} (--epochs {args.epochs}), got {args.decay_epochs}")
    common = ["--dataset", "digits", "--arch", args.arch, "--epochs", str(args.epochs),
              "--batch_size", str(args.batch_size), "--lr", str(args.lr),
              "--decreasing_lr", str(args.epochs - args.decay_epochs), "--warmup", "1", "--print_freq", "0"]
    imp_flags = ["--pruning_times", str(args.rounds), "--rate", str(args.rate), "--prune_type", "lt"]

    def run_then_tidy(script: str, *flags: str) -> None:
        run(script, *flags)
        if not args.keep_checkpoints:
            remove_checkpoints(flags[flags.index("--save_dir") + 1])

    def imp_then_controls(seed: int) -> tuple[str, list]:
        imp_dir = os.path.join(runs, f"imp_lt_s{seed}")
        run("main_imp_downstream.py", *common, *imp_flags, "--seed", str(seed), "--save_dir", imp_dir)
        if not args.keep_checkpoints:
            remove_checkpoints(imp_dir, keep=REVERSED_INIT)  # the init of the reversed-mask control
        jobs = []
        for k in _ints(args.reinit_rounds):
            # The ticket's mask from a new random init (seed + 100 draws another init, and another data order).
            jobs.append(pool.submit(run_then_tidy, "main_eval_downstream.py", *common, "--seed", str(seed + 100),
                                    "--mask_dir", os.path.join(imp_dir, f"ticket_{k:02d}.pt"),
                                    "--save_dir", os.path.join(runs, f"reinit_r{k:02d}_s{seed}")))
        for k in _ints(args.reversed_rounds):
            # The ticket's own init (the IMP run's rewind point) with the complement of its mask.
            jobs.append(pool.submit(run_then_tidy, "main_eval_downstream.py", *common, "--seed", str(seed),
                                    "--mask_dir", os.path.join(imp_dir, f"ticket_{k:02d}.pt"), "--reverse_mask",
                                    "--pretrained", os.path.join(imp_dir, REVERSED_INIT),
                                    "--dict_key", "init_weight", "--load_all",
                                    "--save_dir", os.path.join(runs, f"reversed_r{k:02d}_s{seed}")))
        return imp_dir, jobs

    # --jobs scripts at a time; an IMP job queues its seed's controls when it ends (without waiting for them).
    # Checkpoints go as soon as no run needs them (the reversed-mask control reads the IMP run's init), so
    # the demo holds about two runs' worth of them at a time instead of all of them.
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        imp_jobs = [pool.submit(imp_then_controls, seed) for seed in seeds]
        random_jobs = [pool.submit(run_then_tidy, "main_imp_downstream.py", *common, *imp_flags, "--random_prune",
                                   "--seed", str(seed), "--save_dir", os.path.join(runs, f"random_s{seed}"))
                       for seed in seeds]
        for job in imp_jobs:
            imp_dir, control_jobs = job.result()
            for control in control_jobs:
                control.result()
            if not args.keep_checkpoints:
                remove_checkpoints(imp_dir)
        for job in random_jobs:
            job.result()
    sparsest = args.rounds - 1
    tickets = [f"IMP s{seeds[0]}={os.path.join(runs, f'imp_lt_s{seeds[0]}', f'ticket_{sparsest:02d}.pt')}"]
    if len(seeds) > 1:
        tickets.append(f"IMP s{seeds[1]}={os.path.join(runs, f'imp_lt_s{seeds[1]}', f'ticket_{sparsest:02d}.pt')}")
    tickets.append(f"random s{seeds[0]}={os.path.join(runs, f'random_s{seeds[0]}', f'ticket_{sparsest:02d}.pt')}")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    subprocess.run([sys.executable, os.path.join(ROOT, "main_report.py"), runs, "--out", report,
                    "--title", f"{args.arch} on digits, {len(seeds)} seeds", "--tickets", *tickets],
                   check=True, cwd=ROOT, env=env)
    convergence = convergence_table("accuracy (%)", "epoch", *read_trainings(runs), longer="--epochs")
    line = clock.summary("demo")
    with open(os.path.join(report, "report.md"), "a") as handle:
        handle.write("\n" + convergence + f"\n{line}; {args.jobs} runs at a time, one thread each.\n")
    print(convergence)
    print(line)


CURVES = (("imp_lt_s", "IMP tickets"), ("random_s", "random pruning"), ("reinit_", "random re-init"),
          ("reversed_", "reversed mask"))
DENSE = "dense (round 0 of the IMP and random-pruning runs)"


def read_trainings(runs: str) -> tuple[list[int], dict[str, list[list[float]]]]:
    """Validation accuracy by epoch of every training (one round of an IMP or random-pruning run, or one
    control run), from the runs' metrics.jsonl, per kind; round 0 is the dense model."""
    trainings: dict[str, list[list[float]]] = {DENSE: [], **{label: [] for _, label in CURVES}}
    epochs: set[int] = set()
    for name in sorted(os.listdir(runs)):
        label = next((label for prefix, label in CURVES if name.startswith(prefix)), None)
        path = os.path.join(runs, name, METRICS)
        if label is None or not os.path.isfile(path):
            continue
        by_round: dict[int, list[float]] = {}
        with open(path) as handle:
            for text in handle:
                if text.strip():
                    row = json.loads(text)
                    by_round.setdefault(row.get("round", 0), []).append(row["val_acc"])
                    epochs.add(row["epoch"] + 1)
        for round_index, curve in sorted(by_round.items()):
            dense = round_index == 0 and label in ("IMP tickets", "random pruning")
            trainings[DENSE if dense else label].append(curve)
    return sorted(epochs), trainings


if __name__ == "__main__":
    main(get_args_parser().parse_args())
