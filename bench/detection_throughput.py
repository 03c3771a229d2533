"""Training throughput of YOLOv4-ResNet-50 (a pruned backbone): the original's method against this
toolkit's engine, measured in one run on the same data.

Both variants train the same model (backbone pruned to 0.8^5 by global magnitude, as in IMP round 5)
on the same synthetic VOC-like records (random images of 500x375 px with 1-4 boxes) through the
same augmentation and targets (Detection/data.py), with the original's accumulation (step when
batch index %% 2 == 0). The reference is the original's method written out here: fp32, eager,
``torch.nn.utils.prune`` forward pre-hooks, a torch DataLoader with workers, the scheduler's LR set
per batch and a host sync every step (its running loss means read ``.item()`` of each part). The
engine is ``lth.engine.train_one_epoch`` as the detection scripts run it: masks multiplied in place
after each step, ``DeviceLoader``, bf16 autocast and channels_last on CUDA (fp32 on CPU).

    python bench/detection_throughput.py --device cpu                # small: 256 px, batch 2
    python bench/detection_throughput.py --device cuda --markdown docs/PERFORMANCE.md   # 416 px, batch 8
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import time

import numpy as np
import torch
from torch.utils.data import DataLoader

from Detection import config, task
from Detection.data import VOC_CLASSES, DetectionRecord, DetectionTrainSet, train_collate
from Detection.model import YOLOv4
from Detection.runner import detection_step
from lth import pruning
from lth.checkpoint import write_json
from lth.distributed import Context
from lth.engine import Precision, make_optimizer, train_one_epoch
from lth.loaders import DeviceLoader, to_device


def synthetic_records(count: int, seed: int) -> list[DetectionRecord]:
    rng = np.random.default_rng(seed)
    records = []
    for index in range(count):
        image = rng.integers(0, 256, size=(375, 500, 3), dtype=np.uint8)
        n = int(rng.integers(1, 5))
        x1, y1 = rng.uniform(0, 300, n), rng.uniform(0, 200, n)
        boxes = np.stack([x1, y1, x1 + rng.uniform(20, 190, n), y1 + rng.uniform(20, 170, n)], 1).astype(np.float32)
        records.append(DetectionRecord(f"{index:06d}", boxes, rng.integers(0, 20, n).astype(np.int64),
                                       np.zeros(n, dtype=bool), image=image))
    return records


def pruned_model(arch: str, device: torch.device, channels_last: bool) -> YOLOv4:
    torch.manual_seed(0)
    model = YOLOv4(len(VOC_CLASSES), arch)
    pruning.global_prune(task.prune_target(model), 1 - 0.8 ** 5)
    model = model.to(device)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def reference_run(args, device, records, steps: int) -> float:
    """The original's loop: fp32, prune hooks, DataLoader, per-batch LR, a host sync per step."""
    model = pruned_model(args.arch, device, False)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9, weight_decay=5e-4)
    loader = DataLoader(DetectionTrainSet(records, 20, args.img_size, seed=0), batch_size=args.batch_size,
                        shuffle=True, num_workers=args.workers, pin_memory=device.type == "cuda",
                        collate_fn=train_collate)
    model.train()
    mloss = torch.zeros(4)
    seen, start = 0, None
    batches = len(loader)
    for i, batch in enumerate(_repeat(loader, args.warmup + steps)):
        if i == args.warmup:
            _sync(device)
            start, seen = time.perf_counter(), 0
        for group in optimizer.param_groups:
            group["lr"] = config.learning_rate(0, i, batches, epochs=120)
        batch = to_device(batch, device)
        out = task.loss_step(model, batch)
        out["loss"].backward()
        if i % args.accumulate == 0:
            optimizer.step()
            optimizer.zero_grad()
        items = torch.tensor([out["ciou"].item(), out["conf"].item(), out["cls"].item(), out["loss"].item()])
        mloss = (mloss * i + items) / (i + 1)
        seen += batch["image"].shape[0]
    _sync(device)
    return seen / (time.perf_counter() - start)


def engine_run(args, device, records, steps: int) -> float:
    """The detection scripts' path through lth.engine.train_one_epoch."""
    ctx = Context(device=device)
    precision = Precision.choose("auto", device)
    model = pruned_model(args.arch, device, precision.channels_last)
    optimizer = make_optimizer(model.parameters(), 1e-4, 0.9, 5e-4, device)
    loader = DeviceLoader(DetectionTrainSet(records, 20, args.img_size, seed=0), args.batch_size, train=True, seed=0,
                          ctx=ctx, workers=args.workers, channels_last=precision.channels_last,
                          collate_fn=train_collate, drop_last=False)
    step_after = (lambda i: config.accumulation_steps_here(i, args.accumulate))
    batches = _repeat(loader, args.warmup + steps)  # one stream: the loader's workers stay up, as in the reference
    with pruning.masks_in_place(model) as reapply:
        train_one_epoch(model, itertools.islice(batches, args.warmup), optimizer, None, ctx, precision,
                        print_freq=0, after_step=reapply, step=detection_step, step_after=step_after,
                        total=args.warmup)
        _sync(device)
        result = train_one_epoch(model, batches, optimizer, None, ctx, precision, print_freq=0,
                                 after_step=reapply, step=detection_step, step_after=step_after, total=steps)
    return result["images_per_s"]


def _repeat(loader, count: int):
    done = 0
    while done < count:
        for batch in loader:
            if done == count:
                return
            yield batch
            done += 1


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def machine_name(device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} threads"


def main(args) -> None:
    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
                          else "cpu")
    on_cuda = device.type == "cuda"
    args.img_size = args.img_size or (416 if on_cuda else 256)
    args.batch_size = args.batch_size or (8 if on_cuda else 2)
    steps = args.steps or (20 if on_cuda else 6)
    args.warmup = args.warmup if args.warmup is not None else (5 if on_cuda else 1)
    records = synthetic_records(max(4 * args.batch_size, 16), seed=0)
    rows = []
    for name, fn in (("original's method (fp32, prune hooks, DataLoader, sync per step)", reference_run),
                     ("this toolkit's engine", engine_run)):
        ips = fn(args, device, records, steps)
        rows.append({"variant": name, "images_per_s": round(ips, 3)})
        print(f"{name}: {ips:.3f} images/s", flush=True)
    for row in rows:
        row["ratio"] = round(row["images_per_s"] / rows[0]["images_per_s"], 3)
    precision = "bf16 autocast + channels_last" if on_cuda else "fp32"
    lines = [f"YOLOv4-{args.arch} training, backbone at 0.8^5, {args.img_size} px, batch {args.batch_size}, "
             f"accumulate {args.accumulate}, {args.workers} loader workers, {args.warmup} warm-up + {steps} timed "
             f"steps each; engine in {precision}; {machine_name(device)}; torch {torch.__version__}.", "",
             "| variant | images/s | ratio |", "|---|---:|---:|"]
    lines += [f"| {row['variant']} | {row['images_per_s']:.3f} | {row['ratio']:.2f} |" for row in rows]
    print("\n".join(lines))
    if args.json:
        write_json({"args": vars(args), "device": machine_name(device), "rows": rows}, args.json)
    if args.markdown:
        with open(args.markdown, "a") as handle:
            handle.write("\n" + "\n".join(lines) + "\n")


def get_args_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where to measure")
    parser.add_argument("--arch", default="resnet50", choices=["resnet18", "resnet50"], help="the YOLOv4 backbone whose train step is measured")
    parser.add_argument("--img_size", type=int, default=None, help="input side (default 416 on CUDA, 256 on CPU)")
    parser.add_argument("--batch_size", type=int, default=None, help="batch size (default 8 on CUDA, 2 on CPU)")
    parser.add_argument("--accumulate", type=int, default=2, help="the original's accumulation")
    parser.add_argument("--workers", type=int, default=2, help="data loader workers of both variants")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per variant (default 20 CUDA / 6 CPU)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 5 CUDA / 1 CPU)")
    parser.add_argument("--json", default="", help="also write the figures to this JSON file")
    parser.add_argument("--markdown", default="", help="append the table to this file")
    return parser


if __name__ == "__main__":
    main(get_args_parser().parse_args())
