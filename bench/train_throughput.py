"""Training throughput of the original code's method against this toolkit's engine, in one run.

Every variant trains the same pruned ResNet on the same synthetic CIFAR-format data (uint8 images,
10 classes) with the same batch size, after warm-up steps, and reports images/s, peak memory and
the ratio to the reference. The reference is the original's method written here: fp32, eager,
``torch.nn.utils.prune`` forward pre-hooks, the for-loop SGD, a host sync every step (``.item()``
of loss and accuracy, as its running averages did) and a torchvision DataLoader with PIL
transforms and 2 workers. Then: a whole small epoch (train + val + test), one prune + rewind of a
ResNet-50, the size of a ticket file, and the projected wall time of the paper's CIFAR-10 IMP.

    python bench/train_throughput.py --device cpu --arch resnet50 --size 32
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import os
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.nn.utils.prune as prune
import torchvision.transforms as T
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from lth import pruning, tickets
from lth import data as lth_data
from lth.checkpoint import write_json
from lth.distributed import Context
from lth.engine import Precision, classification_step, evaluate, make_optimizer, train_one_epoch
from lth.models import build_model

MEAN, STD = lth_data.DATASETS["cifar10"].mean, lth_data.DATASETS["cifar10"].std
PAPER_ROUNDS, PAPER_EPOCHS, PAPER_TRAIN, PAPER_EVAL = 19, 182, 45_000, 15_000  # CIFAR-10 val 5k + test 10k


# --------------------------------------------------------------------------------------------
# Data: the same uint8 images behind both data paths
# --------------------------------------------------------------------------------------------

def synthetic_images(count: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (count, 3, size, size), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, 10, (count,), generator=generator)
    return images, labels


class PilImages(Dataset):
    """The original's data path: one PIL image at a time through torchvision transforms."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, train: bool):
        self.images = images.permute(0, 2, 3, 1).numpy()  # HWC for PIL, as CIFAR10.data is stored
        self.labels = labels.tolist()
        size = images.shape[-1]
        steps = [T.RandomCrop(size, padding=4), T.RandomHorizontalFlip()] if train else []
        self.transform = T.Compose(steps + [T.ToTensor(), T.Normalize(MEAN, STD)])

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return self.transform(Image.fromarray(self.images[index])), self.labels[index]


def reference_loader(images, labels, batch_size: int, train: bool) -> DataLoader:
    return DataLoader(PilImages(images, labels, train), batch_size=batch_size, shuffle=train,
                      num_workers=2, drop_last=train, persistent_workers=True,
                      pin_memory=torch.cuda.is_available())


def device_loader(images, labels, batch_size: int, train: bool, device, channels_last: bool):
    spec = lth_data.DATASETS["cifar10"]
    return lth_data.TensorLoader(images, labels, spec, batch_size, train=train, seed=0, device=device,
                                 channels_last=channels_last)


def cycle(loader, device, channels_last: bool):
    """Endless batches on the device (a DataLoader restarts each epoch, as in training)."""
    epoch = 0
    while True:
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        for inputs, labels in loader:
            inputs = inputs.to(device, non_blocking=True)
            if channels_last:
                inputs = inputs.contiguous(memory_format=torch.channels_last)
            yield inputs, labels.to(device, non_blocking=True)
        epoch += 1


# --------------------------------------------------------------------------------------------
# Variants
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Variant:
    name: str
    device_data: bool = False
    no_sync: bool = False
    fast_sgd: bool = False
    channels_last: bool = False
    bf16: bool = False
    inplace_masks: bool = False
    compile: bool = False
    engine: bool = False


def pruned_model(arch: str, device, channels_last: bool, seed: int = 0) -> nn.Module:
    """A ResNet one IMP round in (80 % of conv weights remain), so every variant pays for masks."""
    torch.manual_seed(seed)
    model = build_model(arch, 10, 3, "cifar")
    pruning.global_prune(model, 0.2)
    model = model.to(device)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def make_step(variant: Variant, model: nn.Module, device, batch_size: int) -> Callable[[tuple], None]:
    """One training step of the variant; the reference reads loss and accuracy back every step."""
    precision = Precision(dtype=torch.bfloat16 if variant.bf16 else None, channels_last=variant.channels_last)
    # The model lives only for this variant, so the in-place block is never left.
    after_step = contextlib.ExitStack().enter_context(pruning.masks_in_place(model)) \
        if variant.inplace_masks else None
    if variant.engine or variant.fast_sgd:
        optimizer = make_optimizer(model.parameters(), 0.1, 0.9, 2e-4, device)
    else:
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=2e-4, foreach=False)
    train_model = torch.compile(model) if variant.compile else model
    sums = {"loss": torch.zeros((), device=device), "correct": torch.zeros((), device=device)}

    def step(batch) -> None:
        inputs, labels = batch
        with precision.autocast(device):
            logits = train_model(inputs)
            loss = F.cross_entropy(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if after_step is not None:
            after_step()
        if variant.no_sync or variant.engine:
            sums["loss"] += loss.detach()
            sums["correct"] += (logits.detach().argmax(1) == labels).sum()
        else:
            sums["loss"] += loss.item()
            sums["correct"] += (logits.argmax(1) == labels).sum().item()

    return step


def peak_memory_reset(device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        with contextlib.suppress(OSError):
            with open("/proc/self/clear_refs", "w") as handle:
                handle.write("5")  # resets VmHWM, the peak resident set size


def current_memory_mb(device) -> float:
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device) / 2**20
    with contextlib.suppress(OSError):
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    return math.nan


def peak_memory_mb(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    with contextlib.suppress(OSError):
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    return math.nan


def synchronize(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Prepared:
    """A variant ready to step: its model, batches and step, warmed up; timings accumulate here."""
    variant: Variant
    batches: object
    step: Callable[[tuple], None]
    first_step_s: float
    memory_mb: float
    step_times: list


def prepare_variant(variant: Variant, args, device, images, labels) -> Prepared:
    baseline = current_memory_mb(device)
    peak_memory_reset(device)
    model = pruned_model(args.arch, device, variant.channels_last)
    loader = (device_loader(images, labels, args.batch_size, True, device, variant.channels_last)
              if variant.device_data or variant.engine else reference_loader(images, labels, args.batch_size, True))
    batches = cycle(loader, device, variant.channels_last)
    step = make_step(variant, model, device, args.batch_size)
    start = time.perf_counter()
    step(next(batches))
    synchronize(device)
    first_step = time.perf_counter() - start
    for _ in range(args.warmup - 1):
        step(next(batches))
    synchronize(device)
    return Prepared(variant, batches, step, first_step, peak_memory_mb(device) - baseline, [])


def time_steps(prepared: Prepared, count: int, device) -> None:
    synchronize(device)
    start = time.perf_counter()
    for _ in range(count):
        prepared.step(next(prepared.batches))
    synchronize(device)
    prepared.step_times.append((time.perf_counter() - start) / count)


def measure_variants(chosen: list[Variant], args, device, images, labels) -> list[dict]:
    """Warm every variant up, then time them in turns (``--repeats`` rounds of ``--steps`` steps).

    Taking turns and reporting each variant's median round keeps a slow spell of a shared
    machine from landing on one variant only.
    """
    prepared = [prepare_variant(variant, args, device, images, labels) for variant in chosen]
    for _ in range(args.repeats):
        for item in prepared:
            time_steps(item, args.steps, device)
    results = []
    for item in prepared:
        step_s = statistics.median(item.step_times)
        results.append({"variant": item.variant.name, "images_per_s": args.batch_size / step_s,
                        "step_ms": 1000 * step_s, "peak_mb": item.memory_mb,
                        "first_step_s": item.first_step_s,
                        "spread_pct": 100 * (max(item.step_times) - min(item.step_times)) / step_s})
    return results


def variants(args) -> list[Variant]:
    chosen = [
        Variant("reference (original's method)"),
        Variant("+ device-resident data", device_data=True),
        Variant("+ no host sync per step", no_sync=True),
        Variant("+ foreach/fused SGD", fast_sgd=True),
        Variant("+ in-place masks instead of hooks", inplace_masks=True),
        Variant("+ channels_last", channels_last=True),
        Variant("+ bf16 autocast", bf16=True),
    ]
    if not args.skip_compile:
        chosen.append(Variant("+ torch.compile", compile=True))
    defaults = Precision.choose("auto", args.device)
    chosen.append(Variant("engine, defaults", engine=True, inplace_masks=True,
                          bf16=defaults.dtype is not None, channels_last=defaults.channels_last))
    chosen.append(Variant("engine, --precision bf16 --channels_last on", engine=True, inplace_masks=True,
                          bf16=True, channels_last=True))
    if not args.skip_compile:
        chosen.append(Variant("engine, bf16 + channels_last + --compile", engine=True, inplace_masks=True,
                              bf16=True, channels_last=True, compile=True))
    return chosen


# --------------------------------------------------------------------------------------------
# A whole small epoch: train + validation + test evaluation
# --------------------------------------------------------------------------------------------

def reference_epoch(args, device, splits) -> dict:
    model = pruned_model(args.arch, device, False)
    step = make_step(Variant("reference"), model, device, args.batch_size)
    (train_x, train_y), evals = splits[0], splits[1:]
    start = time.perf_counter()
    for batch in cycle_once(reference_loader(train_x, train_y, args.batch_size, True), device):
        step(batch)
    synchronize(device)
    train_s = time.perf_counter() - start
    start = time.perf_counter()
    model.eval()
    with torch.no_grad():
        for images, labels in evals:
            for inputs, targets in cycle_once(reference_loader(images, labels, args.batch_size, False), device):
                (model(inputs).argmax(1) == targets).sum().item()
    synchronize(device)
    return {"train_s": train_s, "eval_s": time.perf_counter() - start}


def cycle_once(loader, device):
    for inputs, labels in loader:
        yield inputs.to(device, non_blocking=True), labels.to(device, non_blocking=True)


def engine_epoch(args, device, splits, precision: Precision) -> dict:
    model = pruned_model(args.arch, device, precision.channels_last)
    ctx = Context(device=device)
    optimizer = make_optimizer(model.parameters(), 0.1, 0.9, 2e-4, device)
    (train_x, train_y), evals = splits[0], splits[1:]
    start = time.perf_counter()
    with pruning.masks_in_place(model) as reapply_masks:
        train_one_epoch(model, device_loader(train_x, train_y, args.batch_size, True, device, precision.channels_last),
                        optimizer, None, ctx, precision, print_freq=0, after_step=reapply_masks,
                        step=classification_step)
    synchronize(device)
    train_s = time.perf_counter() - start
    start = time.perf_counter()
    for images, labels in evals:
        evaluate(model, device_loader(images, labels, 4 * args.batch_size, False, device, precision.channels_last),
                 ctx, precision, 10)
    synchronize(device)
    return {"train_s": train_s, "eval_s": time.perf_counter() - start}


# --------------------------------------------------------------------------------------------
# Pruning cost and ticket size (always ResNet-50: the paper's network)
# --------------------------------------------------------------------------------------------

def prune_and_rewind_times(device) -> dict:
    torch.manual_seed(0)
    init = pruning.dense_state_dict(build_model("resnet50", 10, 3, "cifar"))
    times = {}
    for name in ("torch.nn.utils.prune.global_unstructured (reference)", "pruning.global_prune"):
        model = build_model("resnet50", 10, 3, "cifar").to(device)
        model.load_state_dict(init)
        pruning.global_prune(model, 0.2)  # a second round, as in IMP: masks already present
        synchronize(device)
        start = time.perf_counter()
        if name.startswith("torch"):
            params = [(module, "weight") for _, module in pruning.prunable_convs(model)]
            prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=0.2)
        else:
            pruning.global_prune(model, 0.2)
        synchronize(device)
        prune_s = time.perf_counter() - start
        start = time.perf_counter()
        pruning.rewind(model, init)
        synchronize(device)
        times[name] = {"prune_s": prune_s, "rewind_s": time.perf_counter() - start,
                       "remaining": pruning.sparsity(model)["remaining"]}
    return times


def ticket_sizes() -> dict:
    torch.manual_seed(0)
    model = build_model("resnet50", 10, 3, "cifar")
    for _ in range(3):
        pruning.global_prune(model, 0.2)
    masks = pruning.extract_mask(model)
    with tempfile.TemporaryDirectory() as folder:
        paths = {name: os.path.join(folder, name) for name in ("ticket.pt", "masks.pt", "state.pt")}
        tickets.save_ticket(paths["ticket.pt"], masks, arch="resnet50", round=3)
        torch.save(masks, paths["masks.pt"])
        torch.save({"state_dict": model.state_dict()}, paths["state.pt"])
        sizes = {name: os.path.getsize(path) for name, path in paths.items()}
    return {"ticket_bytes": sizes["ticket.pt"], "float_masks_bytes": sizes["masks.pt"],
            "pruned_state_dict_bytes": sizes["state.pt"]}


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------

def machine_name(device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    return f"{model}, {os.cpu_count()} logical cores, torch {torch.get_num_threads()} threads"


def projected_hours(train_ips: float, eval_ips: float) -> float:
    per_epoch = PAPER_TRAIN / train_ips + PAPER_EVAL / eval_ips
    return PAPER_ROUNDS * PAPER_EPOCHS * per_epoch / 3600


def main(args) -> None:
    args.device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
                               else "cpu")
    on_cuda = args.device.type == "cuda"
    args.batch_size = args.batch_size or (256 if on_cuda else 64)
    args.steps = args.steps or (30 if on_cuda else 3)
    args.repeats = args.repeats or (5 if on_cuda else 3)
    args.warmup = max(1, args.warmup or (10 if on_cuda else 2))
    args.epoch_images = args.epoch_images or (20_000 if on_cuda else 576)
    out = io.StringIO()

    def say(line: str = "") -> None:
        print(line, flush=True)
        out.write(line + "\n")

    say(f"## {args.arch}, {args.size}x{args.size} px, batch {args.batch_size}, on {machine_name(args.device)}")
    say(f"torch {torch.__version__}; {args.warmup} warm-up steps, then {args.repeats} turns of {args.steps} timed "
        f"steps per variant; "
        f"model pruned to 80 % (prune hooks active unless stated)")
    say()
    images, labels = synthetic_images(512, args.size, seed=1)
    chosen = [variant for variant in variants(args)
              if not args.only or any(word in variant.name for word in args.only.split(","))]
    results = measure_variants(chosen, args, args.device, images, labels)
    say("| variant | images/s | step (ms) | x reference | spread (%) | memory (MiB) | first step (s) |")
    say("|---|---:|---:|---:|---:|---:|---:|")
    for result in results:
        ratio = result["images_per_s"] / results[0]["images_per_s"]
        say(f"| {result['variant']} | {result['images_per_s']:.1f} | {result['step_ms']:.0f} | {ratio:.2f} | "
            f"{result['spread_pct']:.0f} | {result['peak_mb']:.0f} | {result['first_step_s']:.1f} |")
    hooks = next((r for r in results if "in-place" in r["variant"]), None)
    if hooks and results and results[0]["variant"].startswith("reference"):
        cost = 100 * (results[0]["step_ms"] - hooks["step_ms"]) / results[0]["step_ms"]
        say(f"\nPrune forward pre-hooks: {cost:+.1f} % of a reference step compared with in-place masking "
            f"(turn spreads {results[0]['spread_pct']:.0f} % and {hooks['spread_pct']:.0f} %).")
    say("(images/s from the median of the timed turns; spread: slowest minus fastest turn; memory: the "
        "peak the variant added, " + ("torch.cuda.max_memory_allocated)" if on_cuda else
                                      "resident set size of this process, DataLoader workers excluded)"))

    n = args.epoch_images
    splits = [synthetic_images(n, args.size, seed=2), synthetic_images(n // 9, args.size, seed=3),
              synthetic_images(2 * n // 9, args.size, seed=4)]
    say(f"\n### One epoch: {n} train + {n // 9} val + {2 * n // 9} test images (the CIFAR-10 proportions)\n")
    say("| path | train (s) | val+test (s) | epoch (s) | x reference | projected paper CIFAR-10 IMP (h) |")
    say("|---|---:|---:|---:|---:|---:|")
    epochs = {"reference (original's method)": reference_epoch(args, args.device, splits),
              "engine, defaults": engine_epoch(args, args.device, splits, Precision.choose("auto", args.device)),
              "engine, --precision bf16 --channels_last on": engine_epoch(
                  args, args.device, splits, Precision(dtype=torch.bfloat16, channels_last=True))}
    reference_total = sum(epochs["reference (original's method)"].values())
    epoch_rows = {}
    for name, timing in epochs.items():
        total = timing["train_s"] + timing["eval_s"]
        hours = projected_hours(n / timing["train_s"], (n // 9 + 2 * n // 9) / timing["eval_s"])
        epoch_rows[name] = {**timing, "projected_paper_hours": hours}
        say(f"| {name} | {timing['train_s']:.1f} | {timing['eval_s']:.1f} | {total:.1f} | "
            f"{reference_total / total:.2f} | {hours:,.0f} |")
    say(f"\nProjection: {PAPER_ROUNDS} rounds x {PAPER_EPOCHS} epochs x ({PAPER_TRAIN:,} train + "
        f"{PAPER_EVAL:,} val/test images) at the measured rates, {args.arch} at {args.size} px.")

    say("\n### One IMP prune + rewind of ResNet-50 (23.5M conv weights, second round)\n")
    say("| method | prune (s) | rewind (s) | total (s) |")
    say("|---|---:|---:|---:|")
    prune_rows = prune_and_rewind_times(args.device)
    for name, timing in prune_rows.items():
        say(f"| {name} | {timing['prune_s']:.3f} | {timing['rewind_s']:.3f} | "
            f"{timing['prune_s'] + timing['rewind_s']:.3f} |")
    sizes = ticket_sizes()
    say(f"\nTicket file of a ResNet-50 (51.2 % remaining): {sizes['ticket_bytes'] / 2**20:.2f} MiB; the "
        f"float mask dict: {sizes['float_masks_bytes'] / 2**20:.1f} MiB "
        f"({sizes['float_masks_bytes'] / sizes['ticket_bytes']:.1f}x larger); the original's pruned "
        f"state_dict (weight_orig + weight_mask): {sizes['pruned_state_dict_bytes'] / 2**20:.1f} MiB "
        f"({sizes['pruned_state_dict_bytes'] / sizes['ticket_bytes']:.1f}x).")
    if args.json:
        write_json({"machine": machine_name(args.device), "args": {k: str(v) for k, v in vars(args).items()},
                    "steps": results, "epoch": epoch_rows, "prune": prune_rows, "sizes": sizes}, args.json)
    if args.markdown:
        with open(args.markdown, "a") as handle:
            handle.write(out.getvalue() + "\n")


def get_args_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where to measure")
    parser.add_argument("--arch", default="resnet50", choices=["resnet18", "resnet50"], help="the ResNet whose train step is measured")
    parser.add_argument("--size", type=int, default=32, choices=[32, 224], help="image side in pixels")
    parser.add_argument("--batch_size", type=int, default=None, help="batch size (default 256 on CUDA, 64 on CPU)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per turn (default 30 CUDA / 3 CPU)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="turns in which every variant runs --steps timed steps (default 5 CUDA / 3 CPU)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 10 CUDA / 2 CPU)")
    parser.add_argument("--epoch_images", type=int, default=None,
                        help="training images of the one-epoch comparison (default 20000 CUDA / 576 CPU)")
    parser.add_argument("--skip_compile", action="store_true", help="leave out the torch.compile variants")
    parser.add_argument("--only", default="", help="comma-separated words: measure only variants whose name has one")
    parser.add_argument("--json", default="", help="also write every figure to this JSON file")
    parser.add_argument("--markdown", default="", help="append the printed tables to this file")
    return parser


if __name__ == "__main__":
    np.seterr(all="ignore")
    main(get_args_parser().parse_args())
