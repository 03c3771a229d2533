"""Loaders of any task: the train/val/test bundle a trainer takes, and a DataLoader whose batches
(images with targets of any structure: labels, masks, dicts of tensors, lists of boxes) arrive on
the training device, reproducibly per (seed, epoch)."""

from __future__ import annotations

import itertools
import sys
from dataclasses import dataclass
from typing import Callable, Mapping

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, Sampler, SequentialSampler

from lth.distributed import Context


@dataclass
class Loaders:
    """What a task trains and evaluates on. Each loader is iterable, has ``len`` (batches per
    epoch) and ``set_epoch(e)`` (order and augmentation of epoch e)."""
    train: object
    val: object
    test: object | None = None  # None where the task has no separate test split (ImageNet, VisDA, VOC)
    num_classes: int | None = None  # the classification evaluator's; other tasks may leave it out


class EvalShardSampler(Sampler[int]):
    """Indices ``rank, rank + world, ...``: the ranks' shards cover a data set once, without padding."""

    def __init__(self, size: int, rank: int, world_size: int):
        self.size, self.rank, self.world_size = size, rank, world_size

    def __iter__(self):
        return iter(range(self.rank, self.size, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.size, self.world_size))


class DeviceLoader:
    """A DataLoader whose batches arrive on the training device, reproducible per (seed, epoch).

    Order and augmentation come from generators seeded with ``(seed, epoch)`` (a
    ``DistributedSampler`` under DDP), so a run resumed at epoch e sees the batches it would have.
    ``collate_fn`` builds a batch from samples (torch's default stacks tensors and numbers); the
    batch may be any nesting of tuples, lists and dicts of tensors, and every tensor in it is moved
    to the device (4-D float tensors, the images, in channels_last when asked). A data set with
    its own ``set_epoch`` (augmentation drawn from its seed and the epoch) is told the epoch too.
    """

    def __init__(self, dataset: Dataset, batch_size: int, *, train: bool, seed: int, ctx: Context,
                 workers: int = 4, channels_last: bool = False, drop_last: bool | None = None,
                 collate_fn: Callable | None = None):
        self.train, self.seed, self.ctx, self.channels_last = train, seed, ctx, channels_last
        self.generator = torch.Generator()
        drop_last = train if drop_last is None else drop_last
        if ctx.distributed and train:
            self.sampler = DistributedSampler(dataset, num_replicas=ctx.world_size, rank=ctx.rank,
                                              shuffle=True, seed=seed, drop_last=False)
        elif ctx.distributed:
            # DistributedSampler pads the shards with repeated samples, which would count twice in a
            # confusion matrix or a detection list: evaluation takes every sample exactly once.
            self.sampler = EvalShardSampler(len(dataset), ctx.rank, ctx.world_size)
        elif train:
            self.sampler = RandomSampler(dataset, generator=self.generator)
        else:
            self.sampler = SequentialSampler(dataset)
        if train and not drop_last and batch_size > 1 and len(self.sampler) % batch_size == 1:
            # A last training batch of one image: BatchNorm cannot train on it (the original crashed
            # there). Dropping it changes nothing else: every other batch is as it was.
            drop_last = True
            if ctx.is_main:
                print(f"notice: the last training batch would hold 1 image ({len(self.sampler)} per process, "
                      f"batches of {batch_size}); it is left out of every epoch, as BatchNorm cannot "
                      f"train on one image", file=sys.stderr)
        self.loader = DataLoader(dataset, batch_size=batch_size, sampler=self.sampler, num_workers=workers,
                                 pin_memory=ctx.device.type == "cuda", drop_last=drop_last,
                                 generator=self.generator, persistent_workers=False, collate_fn=collate_fn)
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self._epoch_seed = self.seed * 1_000_003 + epoch
        self.generator.manual_seed(self._epoch_seed)
        if isinstance(self.sampler, DistributedSampler):
            self.sampler.set_epoch(epoch)
        if callable(getattr(self.loader.dataset, "set_epoch", None)):
            self.loader.dataset.set_epoch(epoch)  # a data set drawing its augmentation per (seed, epoch)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        if self.loader.num_workers > 0:
            # Worker processes seed their RNGs from self.generator: augmentation is reproducible.
            for batch in self.loader:
                yield to_device(batch, self.ctx.device, self.channels_last)
            return
        # In this process the transforms draw from torch's global RNG, whose state a resumed run
        # cannot restore; seeding each batch from (seed, epoch, index) makes it reproducible.
        iterator = iter(self.loader)
        for index in itertools.count():
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed((self._epoch_seed * 1_000_033 + index) % 2**63)
                batch = next(iterator, None)
            if batch is None:
                return
            yield to_device(batch, self.ctx.device, self.channels_last)


def to_device(batch, device: torch.device, channels_last: bool = False):
    """``batch`` with every tensor in it (through tuples, lists and dicts) on ``device``."""
    if isinstance(batch, torch.Tensor):
        batch = batch.to(device, non_blocking=True)
        if channels_last and batch.dim() == 4 and batch.is_floating_point():
            batch = batch.contiguous(memory_format=torch.channels_last)
        return batch
    if isinstance(batch, Mapping):
        return {key: to_device(value, device, channels_last) for key, value in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # a NamedTuple keeps its type
        return type(batch)(*(to_device(item, device, channels_last) for item in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(item, device, channels_last) for item in batch)
    return batch
