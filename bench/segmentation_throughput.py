"""Training iterations/s of DeepLabV3+ ResNet-50 with a pruned backbone: the original's method against
this toolkit's engine, measured in one run on the same data.

Both train the same model (backbone pruned to 80 % by global magnitude, as after IMP round 0) on the
same synthetic VOC-like images (uint8 RGB, 21 classes, 255 borders) through the original's joint
transforms (random scale 0.5-2.0, crop with padding, flip), batch --batch_size, SGD momentum 0.9 with
the backbone at 0.1x, poly schedule. The reference is the original's training loop written here:
fp32, eager, ``torch.nn.utils.prune`` forward pre-hooks, the for-loop SGD, ``loss.cpu().numpy()``
every step, a torchvision DataLoader (shuffle, 2 workers, default collate). The engine is
``lth.engine.train_one_epoch`` with ``Segmentation.task.make_step``: masks multiplied in place after
each step instead of hooks, the multi-tensor (CPU) or fused (CUDA) SGD, no host sync per step,
``lth.loaders.DeviceLoader`` (2 workers, pad collate), and on CUDA bf16 autocast + channels_last.

    python bench/segmentation_throughput.py --device cpu --crop 97 --batch_size 2
    python bench/segmentation_throughput.py --device cuda --crop 513 --batch_size 16 --steps 10 --warmup 5 --workers 8
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import platform
import statistics
import time
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from lth import pruning
from lth.checkpoint import write_json
from lth.distributed import Context
from lth.engine import Precision, make_optimizer, make_scheduler, param_groups, train_one_epoch
from lth.loaders import DeviceLoader
from Segmentation.data import ArraySegmentation, pad_collate, train_transform
from Segmentation.loss import build_loss
from Segmentation.model import build_segmentation_model
from Segmentation.task import make_step

CLASSES = 21


def synthetic_voc(count: int, size: int, seed: int) -> ArraySegmentation:
    """Images of ``size`` x ``size * 4 / 3`` px with rectangles of random classes and 255 borders."""
    rng = np.random.default_rng(seed)
    height, width = size, size * 4 // 3
    images = rng.integers(0, 256, (count, height, width, 3), dtype=np.uint8)
    masks = np.zeros((count, height, width), dtype=np.uint8)
    for mask in masks:
        top, left = rng.integers(0, height // 2), rng.integers(0, width // 2)
        mask[top: top + height // 2, left: left + width // 2] = rng.integers(1, CLASSES)
        mask[top, left: left + width // 2] = 255
    return ArraySegmentation(images, masks, [f"img{i}" for i in range(count)], CLASSES,
                             train_transform("voc", size))


def pruned_model(device: torch.device, channels_last: bool) -> nn.Module:
    torch.manual_seed(0)
    model = build_segmentation_model("deeplabv3plus_resnet50", CLASSES).to(device)
    pruning.global_prune(model.backbone, 0.2)  # prune hooks on the backbone's 52 convs
    return model.to(memory_format=torch.channels_last) if channels_last else model


def reference_runner(dataset, args, device) -> Callable[[int], None]:
    """The original's loop: hooks, for-loop SGD, a host sync per step, a plain DataLoader."""
    model = pruned_model(device, channels_last=False)
    optimizer = torch.optim.SGD([{"params": model.backbone.parameters(), "lr": 0.1 * 0.01},
                                 {"params": model.classifier.parameters(), "lr": 0.01}],
                                lr=0.01, momentum=0.9, weight_decay=1e-4, foreach=False)
    scheduler = make_scheduler(optimizer, 1, 0, [], policy="poly", total_steps=30000)
    criterion = build_loss("cross_entropy")
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=True, num_workers=args.workers,
                        drop_last=True, persistent_workers=args.workers > 0)
    stream = itertools.chain.from_iterable(iter(loader) for _ in itertools.count())  # epoch after epoch
    model.train()

    def run(steps: int) -> None:
        for images, target in itertools.islice(stream, steps):
            images = images.to(device, dtype=torch.float32)
            labels = target["mask"].to(device, dtype=torch.long)
            optimizer.zero_grad()
            loss = criterion(model(images), labels)
            loss.backward()
            optimizer.step()
            loss.detach().cpu().numpy()  # the original's running loss: a host sync every step
            scheduler.step()
    return run


def engine_runner(dataset, args, device, stack: contextlib.ExitStack) -> Callable[[int], None]:
    """This toolkit's loop, as a segmentation run trains (without evaluation and checkpoints)."""
    precision = Precision.choose("auto", device)
    ctx = Context(device=device)
    model = pruned_model(device, precision.channels_last)
    optimizer = make_optimizer(param_groups(model, 0.01, {"backbone.": 0.1}), 0.01, 0.9, 1e-4, device)
    scheduler = make_scheduler(optimizer, 1, 0, [], policy="poly", total_steps=30000)
    loader = DeviceLoader(dataset, args.batch_size, train=True, seed=0, ctx=ctx, workers=args.workers,
                          channels_last=precision.channels_last, collate_fn=pad_collate)
    step = make_step(build_loss("cross_entropy"))

    def batches():
        for epoch in itertools.count():
            loader.set_epoch(epoch)
            yield from loader

    stream = batches()
    reapply_masks = stack.enter_context(pruning.masks_in_place(model))

    def run(steps: int) -> None:
        train_one_epoch(model, itertools.islice(stream, steps), optimizer, scheduler, ctx, precision,
                        desc="engine", print_freq=0, after_step=reapply_masks, step=step, total=steps)
    return run


def timed_turns(runners: dict[str, Callable[[int], None]], args, device) -> dict[str, list[float]]:
    """Warm each up, then let them take turns of ``--steps`` steps: a slow spell of a shared machine
    lands on both, not on one. Returns iterations/s per turn."""
    for run in runners.values():
        run(args.warmup)
    rates: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(args.turns):
        for name, run in runners.items():
            synchronize(device)
            start = time.perf_counter()
            run(args.steps)
            synchronize(device)
            rates[name].append(args.steps / (time.perf_counter() - start))
    return rates


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def machine_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    if os.path.isfile("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as handle:
            name = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), name)
    return f"{name}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def main(args) -> None:
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    dataset = synthetic_voc(args.images, args.crop, seed=0)
    load_before = os.getloadavg()
    with contextlib.ExitStack() as stack:
        rates = timed_turns({"reference": reference_runner(dataset, args, device),
                             "engine": engine_runner(dataset, args, device, stack)}, args, device)
    reference, engine = statistics.median(rates["reference"]), statistics.median(rates["engine"])
    result = {"model": "deeplabv3plus_resnet50 (backbone at 80 %)", "device": machine_name(device),
              "crop": args.crop, "batch_size": args.batch_size, "steps": args.steps, "turns": args.turns, "warmup": args.warmup,
              "workers": args.workers, "reference_itr_per_s": round(reference, 4),
              "engine_itr_per_s": round(engine, 4),
              "per_turn": {name: [round(rate, 4) for rate in values] for name, values in rates.items()}, "speedup": round(engine / reference, 3),
              "load_average_before_after": [round(v, 2) for v in (*load_before[:1], os.getloadavg()[0])],
              "torch": torch.__version__}
    print(f"{result['device']}: crop {args.crop}, batch {args.batch_size}: reference {reference:.3f} itr/s, "
          f"engine {engine:.3f} itr/s ({engine / reference:.2f}x; median of {args.turns} turns of "
          f"{args.steps} steps; per turn {result['per_turn']})")
    if args.json:
        write_json(result, args.json)


def get_args_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="where to measure (cuda when present)")
    parser.add_argument("--crop", type=int, default=97, help="training crop (the paper's 513; small on a CPU)")
    parser.add_argument("--batch_size", type=int, default=2, help="batch size (the paper's scripts use 4)")
    parser.add_argument("--steps", type=int, default=2, help="timed training steps per turn")
    parser.add_argument("--turns", type=int, default=3, help="turns per variant (the median is reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--images", type=int, default=32, help="synthetic images in the data set")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers (the original's 2)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads on a CPU; 1 because on a shared CPU a second thread mostly "
                             "waits for the first to be scheduled, and step times then vary 10-fold")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    return parser


if __name__ == "__main__":
    main(get_args_parser().parse_args())
