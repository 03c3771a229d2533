"""What the demos share: running an entry script as a user would (one thread, its CPU time measured), the digits
as an ImageFolder, and the closing line with wall and CPU time and the CPU's instruction-set level."""

import os
import resource
import subprocess
import sys
import tempfile
import threading
import time

from lth.runs import METRICS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_print_lock = threading.Lock()


def run(script: str, *flags: str, log: str | None = None) -> float:
    """Run ``script`` (relative to the repository root) with one thread; print its command line, wall and
    CPU seconds (user + sys, this child's own); on failure print its output's tail and exit. Its output
    goes to ``log`` (kept) or a temporary file. Returns the CPU seconds.

    One thread per run and two runs side by side, not two threads per run: on a 2-core machine shared
    with other work, a run with two threads spends much of its CPU time waiting for the second one."""
    command = [sys.executable, "-u", os.path.join(ROOT, script), *flags]
    env = dict(os.environ, TQDM_DISABLE="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    start = time.time()
    with (open(log, "w+") if log else tempfile.TemporaryFile("w+")) as output:
        process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=output, stderr=subprocess.STDOUT, text=True)
        _, status, usage = os.wait4(process.pid, 0)  # wait4: this child's own CPU time
        process.returncode = returncode = os.waitstatus_to_exitcode(status)
        output.seek(0)
        tail = output.read()[-4000:] if returncode else ""
    cpu = usage.ru_utime + usage.ru_stime
    with _print_lock:
        print(f"$ {' '.join(command[1:])}  ({time.time() - start:.0f} s, CPU {cpu:.0f} s)", flush=True)
        if returncode != 0:
            print(tail, flush=True)
    if returncode != 0:
        raise SystemExit(f"error: {script} failed (exit {returncode})" + (f"; its output is in {log}" if log else ""))
    return cpu


def int_list(text: str) -> list[int]:
    """argparse type of a comma-separated list of integers (seeds, rounds); a bad one is a one-line error."""
    import argparse

    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got '{text}'") from None


def seed_list(text: str) -> list[int]:
    """argparse type of the seeds: at least one integer."""
    import argparse

    seeds = int_list(text)
    if not seeds:
        raise argparse.ArgumentTypeError("give at least one seed")
    return seeds


def mean_std(values: list[float]) -> str:
    """``mean ± sample std`` (n - 1), two decimals; the std is left out for one value."""
    mean = sum(values) / len(values)
    if len(values) < 2:
        return f"{mean:.2f}"
    std = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
    return f"{mean:.2f} ± {std:.2f}"


def write_digits_image_folder(folder: str) -> None:
    """The digits training split as train/ and its validation split as val/, 32x32 RGB PNGs (each 8x8 digit
    enlarged 4x, nearest neighbour): the ImageFolder layout that main_imp_imagenet.py, SimCLR/ and MoCo/ read."""
    from PIL import Image

    from lth import data

    splits = data.load_splits("digits", None)
    for split, images, labels in (("train", splits.train_x, splits.train_y), ("val", splits.val_x, splits.val_y)):
        for index, (image, label) in enumerate(zip(images, labels.tolist())):
            target = os.path.join(folder, split, str(label))
            os.makedirs(target, exist_ok=True)
            grey = Image.fromarray(image[0].numpy()).resize((32, 32), Image.NEAREST)
            grey.convert("RGB").save(os.path.join(target, f"{index:05d}.png"))


def instruction_set() -> str:
    """PyTorch's CPU kernel level (e.g. AVX2, AVX512) and whether the CPU itself has AVX-512.

    The two differ when ATEN_CPU_CAPABILITY caps PyTorch below what the CPU offers; oneDNN's convolutions
    follow ONEDNN_MAX_CPU_ISA instead, shown when it is set."""
    import torch

    flags = set()
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
        has = "yes" if "avx512f" in flags else "no"
    except OSError:
        has = "unknown (no /proc/cpuinfo)"
    text = f"PyTorch CPU capability {torch.backends.cpu.get_cpu_capability()}, AVX-512 in the CPU: {has}"
    if "avx512_bf16" in flags:
        text += " (with bf16)"
    for name in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA"):
        if os.environ.get(name):
            text += f", {name}={os.environ[name]}"
    return text


class Clock:
    """Wall time since construction and CPU time (user + sys) of this process and its finished children."""

    def __init__(self):
        self.start, self.cpu_start = time.time(), self._cpu()

    @staticmethod
    def _cpu() -> float:
        own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime

    def wall(self) -> float:
        return time.time() - self.start

    def cpu(self) -> float:
        return self._cpu() - self.cpu_start

    def summary(self, name: str) -> str:
        """One line: wall minutes, CPU minutes of all its processes, cores, load, instruction set."""
        load = " ".join(f"{value:.1f}" for value in os.getloadavg())
        return (f"{name} finished in {self.wall() / 60:.1f} min (CPU time of all its processes "
                f"{self.cpu() / 60:.1f} min; {os.cpu_count()} CPUs, load average {load}; {instruction_set()})")


class Pretraining:
    """The dense demos' pre-training task, as the paper's supervised ImageNet pipeline in small.

    On the digits as an ImageFolder of 32x32 images (main_imp_imagenet.py, ImageNet stem):
      1. dense pre-training from random init (--states 0): ``weights``, which stand in for the released
         pre-trained ImageNet weights;
      2. IMP on the pre-training task from them (--states 2: round 0 prunes the pre-trained network
         one-shot, round 1 retrains it with that mask, rewinds to the pre-trained weights and prunes
         again): ``ticket`` (ticket_02.pt) keeps (1 - rate)^2 of the backbone's conv weights (conv1 never
         pruned), the mask that the dense task receives on the pre-trained weights.
    The dense pre-trained weights are ready before the IMP run starts: ``dense_ready`` is set then,
    so that runs needing only them can start beside it."""

    def __init__(self, out: str, arch: str, seed: int, epochs: int, imp_epochs: int, rate: float):
        self.out, self.arch, self.seed = out, arch, seed
        self.epochs, self.imp_epochs, self.rate = epochs, imp_epochs, rate
        self.images = os.path.join(out, "digits_imagefolder")
        self.dense_dir, self.imp_dir = os.path.join(out, "pretrain_dense"), os.path.join(out, "pretrain_imp")
        self.weights = os.path.join(self.dense_dir, "model_best.pth.tar")
        self.ticket = os.path.join(self.imp_dir, "ticket_02.pt")
        self.dense_ready = threading.Event()

    def common(self) -> list[str]:
        return [self.images, "-a", self.arch, "--image_size", "32", "-b", "64", "--weight_decay", "5e-4",
                "-j", "0", "-p", "0", "--seed", str(self.seed)]

    def run(self) -> None:
        try:
            write_digits_image_folder(self.images)
            # lr 0.05 after a one-epoch warm-up, x0.1 for the last 2 epochs (as `make demo`'s rounds)
            run("main_imp_imagenet.py", *self.common(), "--states", "0", "--random", "--epochs", str(self.epochs),
                "--lr", "0.05", "--warmup", "1", "--decreasing_lr", str(max(1, self.epochs - 2)),
                "--save_dir", self.dense_dir, log=os.path.join(self.out, "logs", "pretrain_dense.log"))
        finally:
            self.dense_ready.set()  # also on failure: waiting runs then fail on the missing file
        # IMP retrains at the dense run's last (decayed) rate, constant, as the original's ImageNet IMP
        run("main_imp_imagenet.py", *self.common(), "--states", "2", "--percent", str(self.rate),
            "--pretrained", self.weights, "--epochs", str(self.imp_epochs), "--lr", "0.005",
            "--save_dir", self.imp_dir, log=os.path.join(self.out, "logs", "pretrain_imp.log"))

    def describe(self) -> str:
        return (f"{self.arch} (ImageNet stem) pre-trained on digits classification (the digits as 32x32 images, "
                f"main_imp_imagenet.py: ImageNet augmentation, {self.epochs} epochs from random init, seed "
                f"{self.seed}); IMP on that task from the pre-trained weights (round 0 prunes one-shot, round 1 "
                f"retrains {self.imp_epochs} epochs, rewinds to the pre-trained weights and prunes again, "
                f"{self.rate:g} of the remaining backbone conv weights per prune): the ticket keeps "
                f"{100 * (1 - self.rate) ** 2:.2f} % of them")

    def validation_curve(self) -> list[float]:
        """Validation top-1 (%) per epoch of the dense pre-training (its metrics.jsonl)."""
        import json

        with open(os.path.join(self.dense_dir, METRICS)) as handle:
            return [json.loads(line)["val_acc"] for line in handle if line.strip()]


def convergence_table(metric: str, x_name: str, xs: list, trainings: dict[str, list[list[float]]],
                      longer: str = "") -> str:
    """The validation curve of each kind of training, mean over its trainings, and how many of them had
    their best evaluation at their end. A training whose best evaluation is its last stopped while still
    improving. Where every training of a row did (a noisy validation set makes one or two such trainings
    common even on a plateau), the budget is too short for claims about trained networks, and the table
    ends with a sentence saying so (``longer``: the flag that trains longer)."""
    lines = [f"## Convergence: validation {metric} at each evaluation (mean over the trainings of a row)", "",
             f"| trainings | n | " + " | ".join(f"{x_name} {x}" for x in xs) +
             " | gain over the last interval | best evaluation is the last |",
             "|---|---:|" + "---:|" * (len(xs) + 2)]
    still_rising = []
    for label, curves in trainings.items():
        curves = [curve for curve in curves if len(curve) == len(xs)]
        if not curves:
            continue
        means = [sum(values) / len(values) for values in zip(*curves)]
        last_best = sum(curve.index(max(curve)) == len(curve) - 1 for curve in curves)
        gain = f"{means[-1] - means[-2]:+.2f}" if len(means) > 1 else "-"
        lines.append(f"| {label} | {len(curves)} | " + " | ".join(f"{m:.2f}" for m in means) +
                     f" | {gain} | {last_best} of {len(curves)} |")
        if last_best == len(curves):
            still_rising.append(label)
    if still_rising:
        lines += ["", f"Every training of {'; '.join(still_rising)} was still improving at its last evaluation: "
                      f"their figures are of networks trained for this budget, not of converged ones"
                      + (f" (a longer budget: {longer})." if longer else ".")]
    return "\n".join(lines + [""])
