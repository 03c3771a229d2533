"""Small-image classification set-up shared by the downstream scripts: data, model, loaders."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch
import torch.nn as nn

from lth import data
from lth.distributed import Context, per_process_batch, per_process_eval_batch
from lth.engine import Precision
from lth.errors import UserError
from lth.models import build_model
from lth.loaders import Loaders


@dataclass
class Task:
    spec: data.DatasetSpec
    loaders: Loaders


def load_task(args: argparse.Namespace, ctx: Context, precision: Precision, seed: int) -> Task:
    """Read the data set (the whole of it is kept on the training device as uint8) and make loaders."""
    splits = data.load_splits(args.dataset, args.data, download=args.download)
    batch = per_process_batch(args.batch_size, ctx)
    eval_batch = per_process_eval_batch(args.eval_batch_size or 4 * args.batch_size, ctx)
    common = dict(spec=splits.spec, seed=seed, device=ctx.device, rank=ctx.rank,
                  world_size=ctx.world_size, channels_last=precision.channels_last)
    loaders = Loaders(
        train=data.TensorLoader(splits.train_x, splits.train_y, batch_size=batch, train=True, **common),
        val=data.TensorLoader(splits.val_x, splits.val_y, batch_size=eval_batch, train=False, **common),
        test=data.TensorLoader(splits.test_x, splits.test_y, batch_size=eval_batch, train=False, **common),
        num_classes=splits.spec.num_classes)
    if len(loaders.train) == 0:
        raise UserError(f"{args.dataset} has {splits.train_x.shape[0]} training images per process, "
                        f"fewer than one batch of {batch}: lower --batch_size")
    return Task(spec=splits.spec, loaders=loaders)


def make_model(args: argparse.Namespace, spec: data.DatasetSpec, ctx: Context, precision: Precision,
               seed: int) -> nn.Module:
    """The ResNet for this data set, initialised from ``seed`` (identical on every rank)."""
    torch.manual_seed(seed)
    model = build_model(args.arch, spec.num_classes, spec.in_channels, stem="cifar")
    model = model.to(ctx.device)
    if precision.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model
