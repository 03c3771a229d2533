"""What the demos share: running an entry script as a user would (one thread, its CPU time measured), the digits
as an ImageFolder, and the closing line with wall and CPU time and the CPU's instruction-set level."""

import os
import resource
import subprocess
import sys
import tempfile
import threading
import time

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
