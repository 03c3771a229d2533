"""The embedded demo: IMP tickets against random pruning and other controls on scikit-learn's digits, 3 seeds.

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
import os
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def get_args_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", default=os.path.join(ROOT, "results", "demo"),
                        help="output folder (replaced if it holds an earlier demo)")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds; every experiment runs once per seed")
    parser.add_argument("--arch", default="resnet18", help="the ResNet to prune (resnet18, resnet50, ...)")
    parser.add_argument("--rounds", type=int, default=5, help="IMP rounds (round k keeps (1 - rate)^k)")
    parser.add_argument("--rate", type=float, default=0.8,
                        help="fraction of remaining conv weights pruned per round (the paper uses 0.2; 0.8 "
                             "reaches 0.16 %% remaining in 5 rounds, so 3 seeds fit in minutes)")
    parser.add_argument("--epochs", type=int, default=3, help="training epochs per round")
    parser.add_argument("--batch_size", type=int, default=64, help="training batch size")
    parser.add_argument("--lr", type=float, default=0.05, help="SGD learning rate (x0.1 at the last epoch)")
    parser.add_argument("--reinit_rounds", default="3,4",
                        help="tickets (rounds) trained from a new random init: the random re-init control")
    parser.add_argument("--reversed_rounds", default="2",
                        help="tickets (rounds) whose reversed mask is trained from the ticket's init")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (one thread each)")
    parser.add_argument("--keep_checkpoints", action="store_true",
                        help="keep every run's model checkpoints (about 8 GB in all); by default a run's "
                             "are removed as soon as no other run needs them, keeping tickets, logs and "
                             "summaries (all that the report reads)")
    return parser


_print_lock = threading.Lock()
REVERSED_INIT = "0checkpoint.pth.tar"  # holds the IMP run's init_weight, where its reversed masks start


def run(script: str, *flags: str) -> None:
    command = [sys.executable, "-u", os.path.join(ROOT, script), *flags]
    env = dict(os.environ, TQDM_DISABLE="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    start = time.time()
    result = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True)
    with _print_lock:
        print(f"$ {' '.join(command[1:])}  ({time.time() - start:.0f} s)", flush=True)
        if result.returncode != 0:
            print(result.stdout[-2000:] + result.stderr[-2000:], flush=True)
    if result.returncode != 0:
        raise SystemExit(f"error: {script} failed (exit {result.returncode})")


def remove_checkpoints(save_dir: str, keep: str = "") -> None:
    """The report reads summaries and tickets only; checkpoints are resumable states and best models."""
    for path in glob.glob(os.path.join(save_dir, "*.pth.tar")):
        if os.path.basename(path) != keep:
            os.remove(path)


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def main(args) -> None:
    start = time.time()
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
    last = args.epochs - 1
    common = ["--dataset", "digits", "--arch", args.arch, "--epochs", str(args.epochs),
              "--batch_size", str(args.batch_size), "--lr", str(args.lr),
              "--decreasing_lr", str(last if last > 0 else 1), "--warmup", "1", "--print_freq", "0"]
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
    # the demo holds about two runs' worth of them at a time instead of all 8 GB.
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
    env = dict(os.environ, OMP_NUM_THREADS="2")
    subprocess.run([sys.executable, os.path.join(ROOT, "main_report.py"), runs, "--out", report,
                    "--title", f"{args.arch} on digits, {len(seeds)} seeds", "--tickets", *tickets],
                   check=True, cwd=ROOT, env=env)
    minutes = (time.time() - start) / 60
    with open(os.path.join(report, "report.md"), "a") as handle:
        handle.write(f"\nDemo wall time {minutes:.1f} min ({os.cpu_count()} CPUs, {args.jobs} runs at a time).\n")
    print(f"demo finished in {minutes:.1f} min")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
