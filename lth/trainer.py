"""Training one (possibly masked) model for a stage of epochs, with evaluation, checkpoints and logs."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
import sys
from typing import Callable, Mapping

import torch
import torch.nn as nn

import pruning_utils
from lth.checkpoint import atomic_save, load_file
from lth.distributed import Context
from lth.errors import UserError
from lth.engine import Precision, evaluate, make_optimizer, make_scheduler, train_one_epoch
from lth.runs import RunDir


@dataclass
class TrainConfig:
    epochs: int
    lr: float
    momentum: float
    weight_decay: float
    warmup: int
    milestones: list[int]
    print_freq: int = 50
    compile: bool = False


@dataclass
class Loaders:
    train: object
    val: object
    test: object
    num_classes: int


@dataclass
class StageProgress:
    """Where a stage stands; saved in every checkpoint so that a run resumes exactly."""
    next_epoch: int = 0
    best_val: float = -math.inf
    best_epoch: int = -1
    test_at_best: float = math.nan
    # The original's result lists: train accuracy, validation accuracy, test accuracy per epoch.
    history: dict = field(default_factory=lambda: {"train": [], "ta": [], "test_ta": []})

    def to_checkpoint(self) -> dict:
        return {"epoch": self.next_epoch, "best_sa": self.best_val, "best_epoch": self.best_epoch,
                "test_at_best": self.test_at_best, "result": self.history}

    @classmethod
    def from_checkpoint(cls, checkpoint: dict) -> "StageProgress":
        return cls(next_epoch=int(checkpoint["epoch"]), best_val=float(checkpoint["best_sa"]),
                   best_epoch=int(checkpoint.get("best_epoch", -1)),
                   test_at_best=float(checkpoint.get("test_at_best", math.nan)),
                   history={key: list(value) for key, value in checkpoint["result"].items()})


def wrap_for_training(model: nn.Module, ctx: Context, compile_model: bool) -> nn.Module:
    """DDP under torchrun, then optionally torch.compile; rebuilt after every re-pruning."""
    wrapped = model
    if ctx.distributed:
        device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        wrapped = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    if compile_model:
        wrapped = torch.compile(wrapped)
    return wrapped


def train_stage(model: nn.Module, loaders: Loaders, cfg: TrainConfig, precision: Precision,
                ctx: Context, run: RunDir, *, stage: int, prefix: str, progress: StageProgress,
                optimizer_state: dict | None = None, scheduler_state: dict | None = None,
                checkpoint_extra: Callable[[], dict] = dict,
                on_epoch_end: Callable[[int], None] | None = None,
                save_best: bool = True, conv1: bool = False) -> StageProgress:
    """Train ``model`` from ``progress.next_epoch`` to ``cfg.epochs``.

    Every epoch: train, evaluate on val and test, keep the best-validation model in
    ``{prefix}model_SA_best.pth.tar``, append a line to ``metrics.jsonl`` and then write the
    resumable ``{prefix}checkpoint.pth.tar`` (the log comes first: resuming drops log lines newer
    than the checkpoint, so the two always agree). ``stage`` is the IMP round (0 for one-off
    training); it numbers epochs globally so data order and augmentation never repeat a round's.
    """
    optimizer = make_optimizer(model.parameters(), cfg.lr, cfg.momentum, cfg.weight_decay, ctx.device)
    scheduler = make_scheduler(optimizer, len(loaders.train), cfg.warmup, cfg.milestones)
    if optimizer_state:
        optimizer.load_state_dict(optimizer_state)
    if scheduler_state:
        scheduler.load_state_dict(scheduler_state)
    train_model = wrap_for_training(model, ctx, cfg.compile)
    remaining = pruning_utils.sparsity(model, conv1)["remaining"]
    for epoch in range(progress.next_epoch, cfg.epochs):
        start = time.perf_counter()
        loaders.train.set_epoch(stage * cfg.epochs + epoch)
        lr = optimizer.param_groups[0]["lr"]
        desc = f"round {stage} epoch {epoch + 1}/{cfg.epochs}"
        train = train_one_epoch(train_model, loaders.train, optimizer, scheduler, ctx, precision,
                                desc=desc, print_freq=cfg.print_freq)
        val = evaluate(model, loaders.val, ctx, precision, loaders.num_classes, desc="val")
        test = evaluate(model, loaders.test, ctx, precision, loaders.num_classes, desc="test")
        progress.history["train"].append(train["acc"])
        progress.history["ta"].append(val["acc"])
        progress.history["test_ta"].append(test["acc"])
        improved = val["acc"] > progress.best_val
        if improved:
            progress.best_val, progress.best_epoch, progress.test_at_best = val["acc"], epoch, test["acc"]
        progress.next_epoch = epoch + 1
        if on_epoch_end is not None:
            on_epoch_end(epoch)
        if ctx.is_main:
            if improved and save_best:
                atomic_save({"state": stage, "epoch": epoch, "state_dict": model.state_dict(),
                             "best_sa": val["acc"], "test_ta": test["acc"], **_meta(checkpoint_extra())},
                            run.file(f"{prefix}model_SA_best.pth.tar"))
            row = {"round": stage, "epoch": epoch, "lr": lr, "remaining": round(remaining, 4),
                   "train_loss": round(train["loss"], 5), "train_acc": round(train["acc"], 4),
                   "val_acc": round(val["acc"], 4), "test_acc": round(test["acc"], 4),
                   "test_mean_class_acc": round(test["mean_class_acc"], 4),
                   "train_images_per_s": round(train["images_per_s"], 1),
                   "seconds": round(time.perf_counter() - start, 3)}
            if "top5" in test:
                row["test_top5"] = round(test["top5"], 4)
            run.log_epoch(row)
            atomic_save({"state": stage, "state_dict": model.state_dict(),
                         "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                         **progress.to_checkpoint(), **checkpoint_extra()},
                        run.file(f"{prefix}checkpoint.pth.tar"))
            print(f"round {stage} epoch {epoch}: lr {lr:.4g} train {train['acc']:.2f} "
                  f"val {val['acc']:.2f} test {test['acc']:.2f} remaining {remaining:.2f}% "
                  f"({row['seconds']:.1f}s)", flush=True)
    return progress


def _meta(extra: dict) -> dict:
    """Small descriptive entries of a checkpoint (the best-model file skips the big rewind weights)."""
    return {key: value for key, value in extra.items() if key != "init_weight"}


# Flags whose change would make a resumed run a different experiment.
IDENTITY_FLAGS = ("dataset", "arch", "prune_type", "rate", "random_prune", "conv1", "fc", "seed",
                  "epochs", "batch_size", "lr", "momentum", "weight_decay", "warmup",
                  "decreasing_lr", "rewind_epoch", "pretrained", "mask_dir", "reverse_mask", "load_all")


def restore_stage(model: nn.Module, run: RunDir, fmt: str, args: dict, conv1: bool,
                  path: str | None = None) -> tuple[dict, StageProgress]:
    """Load the latest (or the given) checkpoint of ``run`` into ``model``, masks included.

    Checks that the checkpoint was written by the same kind of run with the same identity flags,
    and drops log lines newer than it. Returns the raw checkpoint and the stage progress.
    """
    checkpoints = run.checkpoints()
    path = path or checkpoints[max(checkpoints)]
    checkpoint = load_file(path, "checkpoint")
    check_resumable(checkpoint, path, fmt, args)
    masks = pruning_utils.extract_mask(checkpoint["state_dict"])
    if masks:
        pruning_utils.apply_mask(model, masks, conv1=conv1)
    try:
        model.load_state_dict(checkpoint["state_dict"], strict=True)
    except RuntimeError as error:
        raise UserError(f"checkpoint '{path}' does not fit this model: "
                        f"{str(error).splitlines()[0]}") from None
    progress = StageProgress.from_checkpoint(checkpoint)
    run.rewind_logs(int(checkpoint["state"]), progress.next_epoch)
    print(f"resuming round {checkpoint['state']} at epoch {progress.next_epoch} from {path}", file=sys.stderr)
    return checkpoint, progress


def check_resumable(checkpoint: Mapping, path: str, fmt: str, args: dict) -> None:
    """The checkpoint must be of kind ``fmt`` and belong to the same experiment as the flags given."""
    if not isinstance(checkpoint, Mapping) or checkpoint.get("format") != fmt:
        raise UserError(f"'{path}' is not a '{fmt}' checkpoint written by this toolkit; cannot resume it")
    saved = checkpoint.get("args", {})
    for flag in IDENTITY_FLAGS:
        if flag in saved and flag in args and saved[flag] != args[flag]:
            raise UserError(f"--{flag} is {args[flag]!r} but the run being resumed used {saved[flag]!r}")
