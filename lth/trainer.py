"""Training one (possibly masked) model for a stage of epochs, with evaluation, checkpoints and logs."""

from __future__ import annotations

import contextlib
import math
import time
import sys
from dataclasses import dataclass, field
from typing import Callable, Mapping

import torch
import torch.nn as nn

import pruning_utils
from lth.checkpoint import atomic_save, load_file
from lth.distributed import Context
from lth.errors import UserError
from lth.engine import (Precision, classification_step, evaluate, make_optimizer, make_scheduler,
                        train_one_epoch)
from lth.optim import masks_in_place_exact
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
    optimizer: str = "sgd"
    inplace_masks: bool = True  # False: train through prune's forward pre-hooks (the reference way)


@dataclass
class Loaders:
    train: object
    val: object
    test: object | None  # None where the task has no separate test split (ImageNet, VisDA)
    num_classes: int


@dataclass(frozen=True)
class StageFiles:
    """File names of a stage's resumable checkpoint and best model (the original scripts differ)."""
    checkpoint: str = "{stage}checkpoint.pth.tar"
    best: str = "{stage}model_SA_best.pth.tar"

    def checkpoint_of(self, stage: int) -> str:
        return self.checkpoint.format(stage=stage)

    def best_of(self, stage: int) -> str:
        return self.best.format(stage=stage)


@dataclass
class StageProgress:
    """Where a stage stands; saved in every checkpoint so that a run resumes exactly."""
    next_epoch: int = 0
    best_val: float = -math.inf
    best_epoch: int = -1
    test_at_best: float = math.nan
    # The original's result lists: train accuracy, validation accuracy, test accuracy per epoch.
    history: dict = field(default_factory=lambda: {"train": [], "ta": [], "test_ta": []})
    # Every figure of the best-validation epoch ("val_top5", "val_mean_class_acc", "val_per_class",
    # "test_..."), so that summaries can quote top-5 and the VisDA metric beside top-1.
    at_best: dict = field(default_factory=dict)

    def to_checkpoint(self) -> dict:
        return {"epoch": self.next_epoch, "best_sa": self.best_val, "best_epoch": self.best_epoch,
                "test_at_best": self.test_at_best, "result": self.history, "at_best": self.at_best}

    @classmethod
    def from_checkpoint(cls, checkpoint: dict) -> "StageProgress":
        return cls(next_epoch=int(checkpoint["epoch"]), best_val=float(checkpoint["best_sa"]),
                   best_epoch=int(checkpoint.get("best_epoch", -1)),
                   test_at_best=float(checkpoint.get("test_at_best", math.nan)),
                   history={key: list(value) for key, value in checkpoint["result"].items()},
                   at_best=dict(checkpoint.get("at_best") or {}))

    def record(self, epoch: int, train_acc: float, val_acc: float, test_acc: float,
               figures: dict | None = None) -> bool:
        """Add one epoch's accuracies; True when validation accuracy is the best so far.

        ``figures`` (other metrics of the epoch, see ``at_best``) are kept when the epoch is the best.
        """
        self.history["train"].append(train_acc)
        self.history["ta"].append(val_acc)
        self.history["test_ta"].append(test_acc)
        self.next_epoch = epoch + 1
        improved = val_acc > self.best_val
        if improved:
            self.best_val, self.best_epoch, self.test_at_best = val_acc, epoch, test_acc
            self.at_best = dict(figures or {})
        return improved

    @property
    def reported(self) -> float:
        """The figure a round is judged by: test accuracy at the best validation epoch, or the best
        validation accuracy where there is no test split."""
        return self.best_val if math.isnan(self.test_at_best) else self.test_at_best

    @property
    def reported_figures(self) -> dict:
        """Top-5 and mean class accuracy of the split and epoch that ``reported`` comes from."""
        split = "val" if math.isnan(self.test_at_best) else "test"
        return {key: self.at_best[f"{split}_{key}"] for key in ("top5", "mean_class_acc")
                if f"{split}_{key}" in self.at_best}

    def summary_row(self, stage: int, remaining: float) -> dict:
        """The line a finished round (or one-off training) adds to ``summary.jsonl``."""
        history = self.history
        return {"round": stage, "remaining": round(remaining, 4), "trained_epochs": len(history["train"]),
                "best_epoch": self.best_epoch, "best_val_acc": self.best_val,
                "test_acc_at_best_val": self.test_at_best, "reported_acc": self.reported,
                **self.reported_figures,
                "final_test_acc": history["test_ta"][-1] if history["test_ta"] else math.nan}


def wrap_for_training(model: nn.Module, ctx: Context, compile_model: bool) -> nn.Module:
    """DDP under torchrun, then optionally torch.compile; rebuilt after every re-pruning."""
    wrapped = model
    if ctx.distributed:
        device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        wrapped = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    if compile_model:
        wrapped = torch.compile(wrapped)
    return wrapped


Evaluator = Callable[[nn.Module, object, str], dict]


def classification_evaluator(ctx: Context, precision: Precision, num_classes: int) -> Evaluator:
    def run(model: nn.Module, loader, desc: str) -> dict:
        return evaluate(model, loader, ctx, precision, num_classes, desc=desc)
    return run


def train_stage(model: nn.Module, loaders: Loaders, cfg: TrainConfig, precision: Precision,
                ctx: Context, run: RunDir, *, stage: int, progress: StageProgress,
                files: StageFiles = StageFiles(), optimizer_state: dict | None = None,
                scheduler_state: dict | None = None, checkpoint_extra: Callable[[], dict] = dict,
                on_epoch_end: Callable[[int], None] | None = None, save_best: bool = True,
                conv1: bool = False, step: Callable = classification_step,
                after_step_factory: Callable[[nn.Module], Callable[[], None]] | None = None,
                evaluator: Evaluator | None = None, remaining: float | None = None) -> StageProgress:
    """Train ``model`` from ``progress.next_epoch`` to ``cfg.epochs``.

    Every epoch: train, evaluate on val (and test, where the task has one), keep the
    best-validation model in ``files.best_of(stage)``, append a line to ``metrics.jsonl`` and then
    write the resumable ``files.checkpoint_of(stage)`` (the log comes first: resuming drops log
    lines newer than the checkpoint, so the two always agree). A stage of 0 epochs only
    evaluates (round 0 of the ImageNet and pre-training IMPs). ``stage`` is the IMP round (0 for
    one-off training); it numbers epochs globally so data order and augmentation never repeat.
    ``remaining`` (%) is computed from the model's masks unless the caller knows better.
    """
    evaluator = evaluator or classification_evaluator(ctx, precision, loaders.num_classes)
    if remaining is None:
        remaining = pruning_utils.sparsity(model, conv1)["remaining"]
    if cfg.epochs == 0:
        return _evaluate_only(model, loaders, evaluator, ctx, run, stage, progress, remaining)
    optimizer = make_optimizer(model.parameters(), cfg.lr, cfg.momentum, cfg.weight_decay, ctx.device,
                               name=cfg.optimizer)
    scheduler = make_scheduler(optimizer, len(loaders.train), cfg.warmup, cfg.milestones)
    if optimizer_state:
        optimizer.load_state_dict(optimizer_state)
    if scheduler_state:
        scheduler.load_state_dict(scheduler_state)
    # Masks multiplied into the weights after each step instead of prune's forward pre-hooks:
    # the same numbers for element-wise optimizers, a little faster (docs/PERFORMANCE.md); the
    # hooks are back afterwards. LARS's whole-tensor norms need the hooks' dense weight_orig.
    in_place = (pruning_utils.masks_in_place(model) if cfg.inplace_masks and masks_in_place_exact(cfg.optimizer)
                else contextlib.nullcontext(None))
    with in_place as reapply_masks:
        train_model = wrap_for_training(model, ctx, cfg.compile)
        after_step = _chain(after_step_factory(train_model) if after_step_factory else None, reapply_masks)
        for epoch in range(progress.next_epoch, cfg.epochs):
            start = time.perf_counter()
            loaders.train.set_epoch(stage * cfg.epochs + epoch)
            lr = optimizer.param_groups[0]["lr"]
            train = train_one_epoch(train_model, loaders.train, optimizer, scheduler, ctx, precision,
                                    desc=f"round {stage} epoch {epoch + 1}/{cfg.epochs}",
                                    print_freq=cfg.print_freq, after_step=after_step, step=step)
            val, test = _evaluate_splits(model, loaders, evaluator)
            improved = progress.record(epoch, train["acc"], val["acc"], test["acc"] if test else math.nan,
                                       figures={**_figures("val", val), **_figures("test", test)})
            if on_epoch_end is not None:
                on_epoch_end(epoch)
            if ctx.is_main:
                if improved and save_best:
                    atomic_save({"state": stage, "epoch": epoch, "state_dict": model.state_dict(),
                                 "best_sa": val["acc"], "test_ta": test["acc"] if test else None,
                                 **_meta(checkpoint_extra())}, run.file(files.best_of(stage)))
                row = {"round": stage, "epoch": epoch, "lr": lr, "remaining": round(remaining, 4),
                       "train_loss": round(train["loss"], 5), "train_acc": round(train["acc"], 4),
                       **_split_row("val", val), **_split_row("test", test),
                       "train_images_per_s": round(train["images_per_s"], 1),
                       "seconds": round(time.perf_counter() - start, 3)}
                run.log_epoch(row)
                atomic_save({"state": stage, "state_dict": model.state_dict(),
                             "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                             **progress.to_checkpoint(), **checkpoint_extra()},
                            run.file(files.checkpoint_of(stage)))
                shown = f" test {test['acc']:.2f}" if test else ""
                print(f"round {stage} epoch {epoch}: lr {lr:.4g} train {train['acc']:.2f} "
                      f"val {val['acc']:.2f}{shown} remaining {remaining:.2f}% ({row['seconds']:.1f}s)", flush=True)
    return progress


def evaluate_and_print(model: nn.Module, loaders: Loaders, precision: Precision, ctx: Context, *,
                       run: RunDir | None = None, checkpoint: str | None = None, fmt: str = "",
                       conv1: bool = False) -> dict:
    """The ``-e`` of the original scripts: print top-1/top-5/mean class accuracy on val, write nothing.

    With ``run`` (a bare ``--resume``) its latest checkpoint is loaded first, or ``checkpoint`` when given.
    """
    if checkpoint is None and run is not None:
        checkpoints = run.checkpoints()
        if not checkpoints:
            raise UserError(f"--resume given but '{run.path}' holds no checkpoint to evaluate")
        checkpoint = checkpoints[max(checkpoints)]
    if checkpoint is not None:
        load_checkpoint_into(model, checkpoint, fmt, {}, conv1)
    result = evaluate(model, loaders.val, ctx, precision, loaders.num_classes, desc="val")
    remaining = pruning_utils.sparsity(model, conv1)["remaining"]
    if ctx.is_main:
        top5 = f" top-5 {result['top5']:.2f}" if "top5" in result else ""
        print(f"val top-1 {result['acc']:.2f}{top5} mean class accuracy {result['mean_class_acc']:.2f} "
              f"loss {result['loss']:.4f} ({remaining:.2f}% of conv weights remain"
              f"{', ' + checkpoint if checkpoint else ''})", flush=True)
    return result


def _chain(*calls: Callable[[], None] | None) -> Callable[[], None] | None:
    """One callable running the given ones in order (None when there are none)."""
    calls = [call for call in calls if call is not None]
    if not calls:
        return None
    if len(calls) == 1:
        return calls[0]

    def run_all() -> None:
        for call in calls:
            call()
    return run_all


def _evaluate_splits(model, loaders: Loaders, evaluator: Evaluator) -> tuple[dict, dict | None]:
    val = evaluator(model, loaders.val, "val")
    test = evaluator(model, loaders.test, "test") if loaders.test is not None else None
    return val, test


def _evaluate_only(model, loaders, evaluator, ctx, run, stage, progress, remaining) -> StageProgress:
    start = time.perf_counter()
    val, test = _evaluate_splits(model, loaders, evaluator)
    progress.best_val, progress.best_epoch = val["acc"], -1
    progress.test_at_best = test["acc"] if test else math.nan
    progress.at_best = {**_figures("val", val), **_figures("test", test)}
    if ctx.is_main:
        run.log_epoch({"round": stage, "epoch": -1, "trained": False, "remaining": round(remaining, 4),
                       **_split_row("val", val), **_split_row("test", test),
                       "seconds": round(time.perf_counter() - start, 3)})
        print(f"round {stage} (evaluation only): val {val['acc']:.2f} remaining {remaining:.2f}%", flush=True)
    return progress


def _split_row(name: str, result: dict | None) -> dict:
    """Metric columns of one split: accuracy, plus top-5 and mean class accuracy where computed."""
    if result is None:
        return {}
    row = {f"{name}_acc": round(result["acc"], 4)}
    for key, value in result.items():
        wanted = key.startswith("top") or key in ("mean_class_acc", "loss")
        if wanted and isinstance(value, float) and not math.isnan(value):
            row[f"{name}_{key}"] = round(value, 4)
    return row


def _figures(name: str, result: dict | None) -> dict:
    """A split's metric columns plus its per-class accuracies (plain numbers: checkpoint-safe)."""
    figures = _split_row(name, result)
    per_class = (result or {}).get("per_class")
    if isinstance(per_class, list) and all(isinstance(value, (int, float)) for value in per_class):
        figures[f"{name}_per_class"] = [float(value) for value in per_class]
    return figures


def _meta(extra: dict) -> dict:
    """Small descriptive entries of a checkpoint (the best-model file skips the big rewind weights)."""
    return {key: value for key, value in extra.items() if key != "init_weight"}


# Flags whose change would make a resumed run a different experiment.
IDENTITY_FLAGS = ("dataset", "arch", "prune_type", "rate", "random_prune", "conv1", "fc", "seed",
                  "epochs", "batch_size", "lr", "momentum", "weight_decay", "warmup",
                  "decreasing_lr", "rewind_epoch", "pretrained", "mask_dir", "reverse_mask", "load_all",
                  "percent", "pre_weight", "image_size", "random")


def restore_stage(model: nn.Module, run: RunDir, fmt: str, args: dict, conv1: bool,
                  path: str | None = None, apply_masks: MaskRestorer | None = None
                  ) -> tuple[dict, StageProgress]:
    """Load the latest (or the given) checkpoint of ``run`` into ``model``, masks included.

    Checks that the checkpoint was written by the same kind of run with the same identity flags,
    and drops log lines newer than it. Returns the raw checkpoint and the stage progress.
    ``apply_masks`` is passed on to ``load_checkpoint_into``.
    """
    checkpoints = run.checkpoints()
    path = path or checkpoints[max(checkpoints)]
    checkpoint = load_checkpoint_into(model, path, fmt, args, conv1, apply_masks)
    progress = StageProgress.from_checkpoint(checkpoint)
    run.rewind_logs(int(checkpoint["state"]), progress.next_epoch)
    print(f"resuming round {checkpoint['state']} at epoch {progress.next_epoch} from {path}", file=sys.stderr)
    return checkpoint, progress


# Re-creates on a model the masks a checkpoint's state_dict holds, before the strict load.
MaskRestorer = Callable[[nn.Module, Mapping], None]


def apply_checkpoint_masks(model: nn.Module, state_dict: Mapping, conv1: bool = False) -> None:
    """Prune ``model`` with the masks of ``state_dict`` (prefixes stripped), so that it loads strictly."""
    masks = pruning_utils.extract_mask(state_dict)
    if masks:
        pruning_utils.apply_mask(model, masks, conv1=conv1)


def load_checkpoint_into(model: nn.Module, path: str, fmt: str, args: dict, conv1: bool,
                         apply_masks: MaskRestorer | None = None) -> dict:
    """Put the weights and masks of checkpoint ``path`` (of kind ``fmt``) into ``model``; returns it.

    Nothing else is touched, so ``-e`` can evaluate a checkpoint without changing its run.
    ``apply_masks(model, state_dict)`` re-creates the masks where the model is not one network
    (MoCo's two encoders); by default ``apply_checkpoint_masks``.
    """
    checkpoint = load_file(path, "checkpoint")
    check_resumable(checkpoint, path, fmt, args)
    if apply_masks is None:
        apply_checkpoint_masks(model, checkpoint["state_dict"], conv1)
    else:
        apply_masks(model, checkpoint["state_dict"])
    try:
        model.load_state_dict(checkpoint["state_dict"], strict=True)
    except RuntimeError as error:
        raise UserError(f"checkpoint '{path}' does not fit this model: "
                        f"{str(error).splitlines()[0]}") from None
    return checkpoint


def check_resumable(checkpoint: Mapping, path: str, fmt: str, args: dict) -> None:
    """The checkpoint must be of kind ``fmt`` and belong to the same experiment as the flags given."""
    if not isinstance(checkpoint, Mapping) or checkpoint.get("format") != fmt:
        raise UserError(f"'{path}' is not a '{fmt}' checkpoint written by this toolkit; cannot resume it")
    saved = checkpoint.get("args", {})
    for flag in IDENTITY_FLAGS:
        if flag in saved and flag in args and saved[flag] != args[flag]:
            raise UserError(f"--{flag} is {args[flag]!r} but the run being resumed used {saved[flag]!r}")
