"""The one training loop every task uses: optimizer and parameter groups, LR schedules, precision,
and the training pass over batches of any structure (the task's ``step`` computes the loss)."""

from __future__ import annotations

import bisect
import contextlib
import math
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, NamedTuple, Sequence

import torch
import torch.nn as nn
from tqdm import tqdm

from lth.distributed import Context, all_reduce_sum
from lth.errors import UserError
from lth.optim import LARS


@dataclass(frozen=True)
class Precision:
    """How math runs: training in ``bf16`` autocast (CUDA default) or plain ``fp32``, evaluation in
    ``fp32`` unless asked otherwise (``eval_dtype``); optional channels_last.

    Evaluation defaults to fp32 in every task: the original ran fp32, and bf16 moves scores (on an
    untrained YOLOv4 decoded box sizes by 0.4 % median, 1.8 % p99: matches at IoU 0.90/0.95 and so
    AP change), while evaluating is a small share of a run's cost.
    """
    dtype: torch.dtype | None
    channels_last: bool
    eval_dtype: torch.dtype | None = None

    @classmethod
    def choose(cls, name: str, device: torch.device, channels_last: str = "auto",
               eval_name: str = "fp32") -> "Precision":
        on_cuda = device.type == "cuda"
        if name == "auto":
            name = "bf16" if on_cuda else "fp32"
        dtypes = {"fp32": None, "bf16": torch.bfloat16}
        use_cl = on_cuda if channels_last == "auto" else channels_last == "on"
        return cls(dtype=dtypes[name], channels_last=use_cl, eval_dtype=dtypes[eval_name])

    def autocast(self, device: torch.device):
        """Training's math (the forward of a training step)."""
        return _autocast(self.dtype, device)

    def eval_autocast(self, device: torch.device):
        """Evaluation's math."""
        return _autocast(self.eval_dtype, device)

    def describe(self) -> dict:
        """What run.json and summary rows record: the precision that trained the model and the one that scored it."""
        def name(dtype):
            return "fp32" if dtype is None else str(dtype).replace("torch.bfloat16", "bf16")
        return {"train_precision": name(self.dtype), "eval_precision": name(self.eval_dtype)}


def _autocast(dtype: torch.dtype | None, device: torch.device):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def make_optimizer(params, lr: float, momentum: float, weight_decay: float, device: torch.device,
                   name: str = "sgd") -> torch.optim.Optimizer:
    """SGD (the fused kernel on CUDA, the multi-tensor one on CPU), Adam or LARS (``lth.optim``).

    ``params`` is an iterable of tensors or of parameter groups (``param_groups`` makes them).
    """
    params = list(params)
    if name == "sgd":
        fast = {"fused": True} if device.type == "cuda" else {"foreach": True}
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, **fast)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "lars":
        return LARS(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer '{name}'")


def param_groups(model: nn.Module, lr: float, lr_scales: Mapping[str, float] | None = None):
    """The optimizer's parameters: one flat group, or one group per learning-rate scale.

    ``lr_scales`` maps a parameter-name prefix to a factor of ``lr`` (``{"backbone.": 0.1}``: the
    backbone at a tenth of the head's rate); the first matching prefix wins and unmatched
    parameters train at ``lr``. That group comes first, so ``param_groups[0]["lr"]`` is the base rate.
    """
    if not lr_scales:
        return model.parameters()
    by_scale: dict[float, list] = {1.0: []}
    for name, parameter in model.named_parameters():
        scale = next((factor for prefix, factor in lr_scales.items() if name.startswith(prefix)), 1.0)
        by_scale.setdefault(float(scale), []).append(parameter)
    return [{"params": params, "lr": lr * scale, "lr_scale": scale}
            for scale, params in by_scale.items() if params]


LR_POLICIES = ("multistep", "poly", "cosine")


def make_scheduler(optimizer: torch.optim.Optimizer, steps_per_epoch: int, warmup_epochs: int,
                   milestones: Sequence[int], gamma: float = 0.1, *, policy: str = "multistep",
                   total_steps: int | None = None, power: float = 0.9,
                   factor: Callable[[int], float] | None = None) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step LR factor after a linear warm-up over ``warmup_epochs``, by ``policy``:

    * ``multistep``: x``gamma`` at each milestone epoch (the classification scripts');
    * ``poly``: ``(1 - step / total_steps) ** power`` (DeepLab's, power 0.9);
    * ``cosine``: half a cosine from 1 to 0 over the steps after the warm-up.

    Epochs here are units of ``steps_per_epoch`` steps: a run counted in iterations passes 1, and
    its warm-up and milestones are then in iterations. Stepped once per training batch, so its
    state (``last_epoch``) resumes exactly mid-run; every parameter group keeps its own base rate.
    ``factor(step)``, when given, replaces ``policy``: a task's own schedule (detection's).
    """
    if factor is not None:
        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    warmup_steps = max(0, warmup_epochs) * steps_per_epoch
    milestones = sorted(milestones)
    if policy == "multistep":
        def factor(step: int) -> float:
            if step < warmup_steps:
                return (step + 1) / warmup_steps
            return gamma ** bisect.bisect_right(milestones, step // max(1, steps_per_epoch))
    elif policy in ("poly", "cosine"):
        if not total_steps or total_steps < 1:
            raise ValueError(f"the {policy} schedule needs the run's total number of steps")
        decay_steps = max(1, total_steps - warmup_steps)

        def factor(step: int) -> float:
            if step < warmup_steps:
                return (step + 1) / warmup_steps
            done = min(1.0, (step - warmup_steps) / decay_steps)
            if policy == "poly":
                return (1.0 - done) ** power
            return 0.5 * (1.0 + math.cos(math.pi * done))
    else:
        raise ValueError(f"unknown learning-rate policy '{policy}': choose one of {', '.join(LR_POLICIES)}")
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model inside DDP, DataParallel and/or torch.compile wrappers (the one place that knows them)."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


class StepResult(NamedTuple):
    """What one training step reports: the loss to minimise over ``count`` samples, how many of
    them it got right (None where the task has no accuracy: segmentation, detection), and
    optional named parts of the loss (scalar tensors, averaged over the chunk and logged as
    ``train_{name}``). ``images``: the batch's images where ``count`` counts something else
    (segmentation's labelled pixels), so that ``images_per_s`` counts images."""
    loss: torch.Tensor
    correct: torch.Tensor | None
    count: int
    parts: Mapping[str, torch.Tensor] | None = None
    images: int | None = None


@contextlib.contextmanager
def _batch_norm_refusal():
    """BatchNorm's refusal of a batch with one value per channel (one image reaching a 1x1 feature
    map, a last batch of one) as one line saying which flag to change."""
    try:
        yield
    except ValueError as error:
        if "Expected more than 1 value per channel" not in str(error):
            raise
        raise UserError("a training batch reached a BatchNorm layer with a single value per channel (a "
                        "batch of one image at a 1x1 feature map), which it cannot normalise: use a "
                        "larger --batch_size (or larger images)") from None


def train_one_epoch(model: nn.Module, loader: Iterable, optimizer: torch.optim.Optimizer,
                    scheduler, ctx: Context, precision: Precision, desc: str = "train",
                    print_freq: int = 50, after_step: Callable[[], None] | None = None,
                    step: Callable[[nn.Module, object], StepResult] | None = None,
                    total: int | None = None, step_after: Callable[[int], bool] | None = None) -> dict:
    """One pass over ``loader`` (an epoch, or ``total`` batches of a run counted in iterations);
    returns mean loss, accuracy (%, NaN where the step reports none), images/s, the samples seen
    (``images``, summed over ranks) and the means of the step's loss parts.

    ``step`` computes the loss of a batch (the task's: ``lth.classification.step``, SimCLR's and
    MoCo's contrastive steps, ...). ``after_step`` runs after each optimizer step (MoCo's
    momentum update, the masks). ``step_after(i)`` says whether the optimizer steps after batch
    ``i`` of this pass (gradient accumulation: the gradients of the batches in between are summed);
    None steps after every batch. The scheduler steps after every batch either way, so a schedule
    counts batches (what ``total_steps`` counts). Loss and accuracy are accumulated on the device and read once at
    the end (and every ``print_freq`` steps for the progress bar), so the step never waits on the host.
    """
    if step is None:
        raise TypeError("train_one_epoch needs the task's step (e.g. lth.classification.step)")
    model.train()
    device = ctx.device
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    parts_sum: dict[str, torch.Tensor] = {}
    counts_correct = False
    seen = 0
    images = 0
    start = time.perf_counter()
    bar = tqdm(loader, desc=desc, leave=False, disable=None if ctx.is_main else True, dynamic_ncols=True,
               total=total)
    optimizer.zero_grad(set_to_none=True)
    no_sync = getattr(model, "no_sync", None)  # DDP's
    for index, batch in enumerate(bar):
        steps = step_after is None or step_after(index)
        # Under DDP, a batch whose gradients are only summed locally skips the all-reduce: the
        # stepping batch's backward reduces the summed gradients once (the same mean).
        with contextlib.nullcontext() if steps or no_sync is None else no_sync():
            with precision.autocast(device), _batch_norm_refusal():
                result = step(model, batch)
            result.loss.backward()
        if steps:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if after_step is not None:
                after_step()
        if scheduler is not None:
            scheduler.step()
        loss_sum += result.loss.detach().float() * result.count
        if result.correct is not None:
            correct += result.correct
            counts_correct = True
        if result.parts:
            for name, value in result.parts.items():
                weighted = value.detach().float() * result.count
                parts_sum[name] = parts_sum[name] + weighted if name in parts_sum else weighted
        seen += result.count
        images += result.count if result.images is None else result.images
        if ctx.is_main and print_freq and (index + 1) % print_freq == 0:
            shown = {"loss": f"{loss_sum.item() / seen:.3f}"}
            if counts_correct:
                shown["acc"] = f"{100 * correct.item() / seen:.1f}"
            bar.set_postfix(**shown)
    names = sorted(parts_sum)
    totals = all_reduce_sum(torch.stack([loss_sum.float(), correct.float(),
                                         torch.tensor(float(seen), device=device),
                                         torch.tensor(float(images), device=device),
                                         *(parts_sum[name] for name in names)]))
    loss_total, correct_total, count, image_total, *part_totals = totals.tolist()
    elapsed = time.perf_counter() - start
    accuracy = 100.0 * correct_total / max(count, 1) if counts_correct else math.nan
    return {"loss": loss_total / max(count, 1), "acc": accuracy, "images_per_s": image_total / max(elapsed, 1e-9),
            "images": int(image_total), **{name: value / max(count, 1) for name, value in zip(names, part_totals)}}
