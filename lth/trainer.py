"""Training one (possibly masked) model for a stage, with evaluation, checkpoints and logs.

A stage is counted in epochs (evaluated after each) or in iterations (``TrainConfig.total_itrs``,
evaluated every ``val_interval``); either resumes exactly from its last evaluation. What a task
brings (docs/CORE.md): a ``step`` (batch -> ``StepResult``), an ``evaluator`` (model, loader, desc ->
dict of metrics), an ``Objective`` (the primary metric and its direction) and ``Loaders``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import math
import time
import sys
from dataclasses import dataclass, field
from typing import Callable, Iterator, Mapping

import torch
import torch.nn as nn

from lth import cost, pruning
from lth.checkpoint import atomic_save, load_file
from lth.distributed import Context
from lth.errors import TrainingDiverged, UserError
from lth.engine import (LR_POLICIES, Precision, classification_step, evaluate, make_optimizer, make_scheduler,
                        param_groups, train_one_epoch)
from lth.loaders import Loaders  # noqa: F401  (scripts and tasks used to import it from here)
from lth.optim import masks_in_place_exact
from lth.runs import RunDir


@dataclass(frozen=True)
class Objective:
    """The metric a task is judged by: the key of its evaluator's dict and its direction.

    The best model, ``reported`` (at the best evaluation) and ``final`` (at the last) of every
    summary row are this metric's. ``lists`` names list-valued metrics that are logged too (e.g.
    per-class IoU); scalar float metrics always are. ``val_prefix`` starts the validation columns of
    metrics.jsonl (``val_acc``; ``""`` gives ``miou``); test columns start with ``test_``.
    """
    name: str = "acc"
    higher_is_better: bool = True
    lists: tuple[str, ...] = ()
    val_prefix: str = "val_"
    # True where the validation split is the test split (VOC detection: VOC07 test is the only
    # evaluation set): choosing the best of several evaluations would select on the test set, so
    # the last evaluation is the one reported and no best-model copy is kept.
    select_last: bool = False

    def improves(self, value: float, best: float) -> bool:
        """True when ``value`` beats ``best`` (``-inf``: nothing measured yet)."""
        if self.higher_is_better:
            return value > best
        return best == -math.inf or value < best

    @property
    def is_accuracy(self) -> bool:
        """Classification (and contrastive) accuracy: summaries keep their historical ``*_acc`` keys."""
        return self.name == "acc" and self.higher_is_better


ACCURACY = Objective()


@dataclass
class TrainConfig:
    epochs: int
    lr: float
    momentum: float
    weight_decay: float
    warmup: int  # epochs (iterations when counted in iterations) of linear warm-up
    milestones: list[int]  # multistep: epochs (iterations) at which the LR is multiplied by 0.1
    print_freq: int = 50
    compile: bool = False
    optimizer: str = "sgd"
    inplace_masks: bool = True  # False: train through prune's forward pre-hooks (the reference way)
    # Counted in iterations instead of epochs when set: evaluate every val_interval iterations.
    total_itrs: int | None = None
    val_interval: int | None = None
    # Counted in iterations: no evaluation before this iteration (the last one is always evaluated);
    # the chunks before it still end in a checkpoint, so a kill there resumes exactly.
    # The original MoCo/SimCLR segmentation IMP scripts validate only in a round's second half.
    eval_from: int = 0
    lr_policy: str = "multistep"  # or poly (power ``power``) or cosine, see lth.engine.make_scheduler
    power: float = 0.9
    lr_scales: Mapping[str, float] | None = None  # {"backbone.": 0.1}: per-prefix LR factors
    objective: Objective = ACCURACY
    # Gradient accumulation: whether the optimizer steps after batch i of an epoch (None: always).
    step_after: Callable[[int], bool] | None = None
    # A task's own schedule: the LR factor at training batch s of the stage (replaces lr_policy).
    lr_factor: Callable[[int], float] | None = None
    # Counted in epochs: evaluate every this many epochs and after the last; every epoch still
    # ends with a checkpoint (and a metrics.jsonl line of its training figures).
    eval_every: int = 1

    def __post_init__(self) -> None:
        if self.lr_policy not in LR_POLICIES:
            raise UserError(f"unknown learning-rate policy '{self.lr_policy}': choose one of {', '.join(LR_POLICIES)}")
        if self.total_itrs is not None and self.total_itrs < 0:
            raise UserError(f"--total_itrs must be 0 or more, got {self.total_itrs}")
        if self.val_interval is not None and self.val_interval < 1:
            raise UserError(f"--val_interval must be at least 1, got {self.val_interval}")
        if self.eval_every < 1:
            raise UserError(f"the evaluation interval must be at least 1 epoch, got {self.eval_every}")

    @classmethod
    def from_args(cls, args: argparse.Namespace, **overrides) -> "TrainConfig":
        """The config of the shared optimisation and run flags (``lth.cli``); ``overrides`` win."""
        values = dict(epochs=getattr(args, "epochs", 0), lr=args.lr, momentum=getattr(args, "momentum", 0.9),
                      weight_decay=args.weight_decay, warmup=getattr(args, "warmup", 0),
                      milestones=list(getattr(args, "decreasing_lr", None) or []),
                      print_freq=getattr(args, "print_freq", 50), compile=getattr(args, "compile", False))
        for name in ("total_itrs", "val_interval", "lr_policy"):  # lth.cli.add_iteration_args
            if getattr(args, name, None) is not None:
                values[name] = getattr(args, name)
        values.update(overrides)
        return cls(**values)

    @property
    def by_iterations(self) -> bool:
        return self.total_itrs is not None

    @property
    def trains(self) -> bool:
        """False for a stage that only evaluates (0 epochs or 0 iterations)."""
        return (self.total_itrs or 0) > 0 if self.by_iterations else self.epochs > 0

    def evaluating_only(self) -> "TrainConfig":
        return dataclasses.replace(self, epochs=0, total_itrs=0 if self.by_iterations else None)


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
    """Where a stage stands; saved in every checkpoint so that a run resumes exactly.

    ``best_val`` is the best validation value of the objective so far (``-inf``: none yet) and
    ``best_epoch`` where it was measured: an epoch index, or an iteration count when the stage is
    counted in iterations (``next_itr`` is then set).
    """
    next_epoch: int = 0
    best_val: float = -math.inf
    best_epoch: int = -1
    test_at_best: float = math.nan
    # The original's result lists: train accuracy, validation and test value of the objective per
    # evaluation (NaN where a split or the train accuracy does not exist).
    history: dict = field(default_factory=lambda: {"train": [], "ta": [], "test_ta": []})
    # Every figure of the best-validation evaluation ("val_top5", "val_mean_class_acc",
    # "val_per_class", "test_..."), so that summaries can quote them beside the objective.
    at_best: dict = field(default_factory=dict)
    next_itr: int | None = None  # iterations done, for a stage counted in iterations
    rng_state: dict | None = None  # torch's RNG at the checkpoint (dropout), restored on resume
    # The stage's cost so far (lth.cost): training samples seen and wall seconds of its trained and
    # evaluated chunks; only chunks that reached a checkpoint count, so a resume counts each once.
    images: int = 0
    seconds: float = 0.0
    # Ended before its schedule's end by the IMP driver (an early-bird ticket emerged, lth.earlybird).
    stopped: bool = False

    def to_checkpoint(self) -> dict:
        state = {"epoch": self.next_epoch, "best_sa": self.best_val, "best_epoch": self.best_epoch,
                 "test_at_best": self.test_at_best, "result": self.history, "at_best": self.at_best,
                 "rng_state": _rng_snapshot(), "images": self.images, "seconds": self.seconds,
                 "stopped": self.stopped}
        if self.next_itr is not None:
            state["itr"] = self.next_itr
        return state

    @classmethod
    def from_checkpoint(cls, checkpoint: dict) -> "StageProgress":
        itr = checkpoint.get("itr")
        return cls(next_epoch=int(checkpoint["epoch"]), best_val=float(checkpoint["best_sa"]),
                   best_epoch=int(checkpoint.get("best_epoch", -1)),
                   test_at_best=float(checkpoint.get("test_at_best", math.nan)),
                   history={key: list(value) for key, value in checkpoint["result"].items()},
                   at_best=dict(checkpoint.get("at_best") or {}),
                   next_itr=None if itr is None else int(itr), rng_state=checkpoint.get("rng_state"),
                   images=int(checkpoint.get("images", 0)), seconds=float(checkpoint.get("seconds", 0.0)),
                   stopped=bool(checkpoint.get("stopped", False)))

    def record(self, epoch: int, train_acc: float, val_acc: float, test_acc: float,
               figures: dict | None = None, objective: Objective = ACCURACY) -> bool:
        """Add one evaluation (at ``epoch``: epoch index or iteration count); True when its
        validation value of ``objective`` is the best so far.

        ``figures`` (other metrics of the evaluation, see ``at_best``) are kept when it is the best.
        """
        self.history["train"].append(train_acc)
        self.history["ta"].append(val_acc)
        self.history["test_ta"].append(test_acc)
        if self.next_itr is None:
            self.next_epoch = epoch + 1
        else:
            self.next_epoch += 1  # evaluations done
        improved = objective.select_last or objective.improves(val_acc, self.best_val)
        if improved:
            self.best_val, self.best_epoch, self.test_at_best = val_acc, epoch, test_acc
            self.at_best = dict(figures or {})
        return improved

    def finished(self, cfg: TrainConfig) -> bool:
        if self.stopped:
            return True
        if cfg.by_iterations:
            return (self.next_itr or 0) >= (cfg.total_itrs or 0)
        return self.next_epoch >= cfg.epochs

    @property
    def reported(self) -> float:
        """The figure a round is judged by: the test value at the best validation evaluation, or the
        best validation value where there is no test split."""
        return self.best_val if math.isnan(self.test_at_best) else self.test_at_best

    @property
    def final(self) -> float:
        """The objective at the last evaluation: on test, or on validation without a test split."""
        tests, vals = self.history["test_ta"], self.history["ta"]
        if tests and not math.isnan(tests[-1]):
            return tests[-1]
        return vals[-1] if vals else math.nan

    @property
    def reported_figures(self) -> dict:
        """Top-5 and mean class accuracy of the split and epoch that ``reported`` comes from."""
        split = "val" if math.isnan(self.test_at_best) else "test"
        return {key: self.at_best[f"{split}_{key}"] for key in ("top5", "mean_class_acc")
                if f"{split}_{key}" in self.at_best}

    def summary_row(self, stage: int, remaining: float, objective: Objective = ACCURACY,
                    spent_before: cost.Cost = cost.Cost()) -> dict:
        """The line a finished round (or one-off training) adds to ``summary.jsonl``.

        Every row names its ``primary_metric`` and direction and gives it ``reported`` (at the best
        validation evaluation) and ``final`` (at the last); classification rows keep their
        ``*_acc`` keys, other tasks get ``best_val_{metric}`` and every scalar figure of the
        reported split at the best evaluation under its own name. Every row carries the training
        cost (``lth.cost.columns``): cumulative with ``spent_before``, the cost of earlier rounds.
        """
        history, name = self.history, objective.name
        row = {"round": stage, "remaining": round(remaining, 4)}
        if self.next_itr is None:
            row.update(trained_epochs=self.next_epoch, best_epoch=self.best_epoch)
        else:
            row.update(trained_itrs=self.next_itr, best_itr=self.best_epoch)
        if objective.is_accuracy:
            row.update({"best_val_acc": self.best_val, "test_acc_at_best_val": self.test_at_best,
                        "reported_acc": self.reported, **self.reported_figures,
                        "final_test_acc": history["test_ta"][-1] if history["test_ta"] else math.nan})
        else:
            split = "val" if math.isnan(self.test_at_best) else "test"
            row.update({f"best_val_{name}": self.best_val, f"test_{name}_at_best_val": self.test_at_best})
            row.update({key[len(split) + 1:]: value for key, value in self.at_best.items()
                        if key.startswith(split + "_")})
        row.update({"primary_metric": name, "higher_is_better": objective.higher_is_better,
                    "reported": self.reported, "final": self.final})
        if objective.select_last:  # best_* then hold the last evaluation's figures
            row["reported_at"] = "last evaluation (the validation split is the test split)"
        row.update(cost.columns(spent_before, cost.of_stage(self), self.next_itr is not None))
        if self.stopped:
            row["early_stopped"] = True
        return row


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
    """Train ``model`` from where ``progress`` stands to the end of the stage.

    Counted in epochs (``cfg.epochs``), every epoch is trained then evaluated; counted in
    iterations (``cfg.total_itrs``), every ``cfg.val_interval`` iterations are (and the last ones).
    After each evaluation on val (and test, where the task has one) the best-validation model of
    ``cfg.objective`` is kept in ``files.best_of(stage)``, a line goes to ``metrics.jsonl`` and
    then the resumable ``files.checkpoint_of(stage)`` is written (the log comes first: resuming
    drops log lines newer than the checkpoint, so the two always agree). A stage of 0 epochs (or
    iterations) only evaluates (round 0 of the ImageNet and pre-training IMPs). ``stage`` is the
    IMP round (0 for one-off training); it numbers data epochs globally so data order and
    augmentation never repeat. ``remaining`` (%) is computed from the model's masks unless the
    caller knows better. ``on_epoch_end(position)`` runs after each evaluation (epoch index, or
    iterations done). Counted in epochs with ``cfg.eval_every`` > 1, the epochs in between only
    log their training figures and write the checkpoint (a kill resumes at the next epoch).
    """
    evaluator = evaluator or classification_evaluator(ctx, precision, loaders.num_classes)
    objective = cfg.objective
    run.flush_record()  # every check has passed: a resumed run's run.json entry is written now
    if remaining is None:
        remaining = pruning.sparsity(model, conv1)["remaining"]
    if not cfg.trains:
        return _evaluate_only(model, loaders, evaluator, ctx, run, stage, progress, remaining, objective)
    if cfg.by_iterations and progress.next_itr is None:
        progress.next_itr = 0
    optimizer = make_optimizer(param_groups(model, cfg.lr, cfg.lr_scales), cfg.lr, cfg.momentum,
                               cfg.weight_decay, ctx.device, name=cfg.optimizer)
    steps_per_unit = 1 if cfg.by_iterations else len(loaders.train)
    scheduler = make_scheduler(optimizer, steps_per_unit, cfg.warmup, cfg.milestones, policy=cfg.lr_policy,
                               total_steps=cfg.total_itrs if cfg.by_iterations else cfg.epochs * steps_per_unit,
                               power=cfg.power, factor=cfg.lr_factor)
    if optimizer_state:
        optimizer.load_state_dict(optimizer_state)
    if scheduler_state:
        scheduler.load_state_dict(scheduler_state)

    if progress.rng_state:
        _rng_restore(progress.rng_state, ctx.device)
        progress.rng_state = None

    def save_checkpoint() -> None:
        atomic_save({"state": stage, "state_dict": model.state_dict(),
                     "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                     **progress.to_checkpoint(), **checkpoint_extra()}, run.file(files.checkpoint_of(stage)))

    # Masks multiplied into the weights after each step instead of prune's forward pre-hooks:
    # the same numbers for element-wise optimizers, a little faster (docs/PERFORMANCE.md); the
    # hooks are back afterwards. LARS's whole-tensor norms need the hooks' dense weight_orig.
    in_place = (pruning.masks_in_place(model) if cfg.inplace_masks and masks_in_place_exact(cfg.optimizer)
                else contextlib.nullcontext(None))
    with in_place as reapply_masks:
        train_model = wrap_for_training(model, ctx, cfg.compile)
        after_step = _chain(after_step_factory(train_model) if after_step_factory else None, reapply_masks)
        common = dict(print_freq=cfg.print_freq, after_step=after_step, step=step, step_after=cfg.step_after)
        if cfg.by_iterations:
            stream = _BatchStream(loaders.train, stage, cfg.total_itrs, progress.next_itr)
        while not progress.finished(cfg):
            start = time.perf_counter()
            lr = optimizer.param_groups[0]["lr"]
            if cfg.by_iterations:
                count = min(cfg.val_interval or cfg.total_itrs, cfg.total_itrs - progress.next_itr)
                position = progress.next_itr + count
                train = train_one_epoch(train_model, stream.take(count), optimizer, scheduler, ctx, precision,
                                        desc=f"round {stage} itr {position}/{cfg.total_itrs}", total=count,
                                        **common)
                stop_if_diverged(train, model, f"round {stage} iterations {progress.next_itr + 1}-{position}")
                progress.next_itr = position
                progress.images += train["images"]
                where = {"itr": position}
            else:
                position = progress.next_epoch
                loaders.train.set_epoch(stage * cfg.epochs + position)
                train = train_one_epoch(train_model, loaders.train, optimizer, scheduler, ctx, precision,
                                        desc=f"round {stage} epoch {position + 1}/{cfg.epochs}", **common)
                stop_if_diverged(train, model, f"round {stage} epoch {position}")
                progress.images += train["images"]
                where = {"epoch": position}
                if (position + 1) % cfg.eval_every and position + 1 < cfg.epochs:
                    progress.next_epoch = position + 1  # trained, not evaluated: log and checkpoint only
                    seconds = time.perf_counter() - start
                    progress.seconds += seconds
                    if ctx.is_main:
                        run.log_epoch({"round": stage, **where, "lr": lr, "remaining": round(remaining, 4),
                                       "train_loss": round(train["loss"], 5), **_train_figures(train),
                                       "evaluated": False, "train_images_per_s": round(train["images_per_s"], 1),
                                       "seconds": round(seconds, 3)})
                        save_checkpoint()
                    continue
            if cfg.by_iterations and position < cfg.eval_from and not progress.finished(cfg):
                progress.seconds += time.perf_counter() - start
                if ctx.is_main:  # no evaluation yet: only the resumable checkpoint
                    save_checkpoint()
                    print(f"round {stage} itr {position}: train loss {train['loss']:.4f} (evaluations "
                          f"start at itr {cfg.eval_from})", flush=True)
                continue
            val, test = _evaluate_splits(model, loaders, evaluator)
            name = objective.name
            improved = progress.record(position, train["acc"], _metric(val, name, "val"),
                                       _metric(test, name, "test") if test else math.nan,
                                       figures={**_figures("val", val, objective), **_figures("test", test, objective)},
                                       objective=objective)
            if on_epoch_end is not None:
                on_epoch_end(position)
            seconds = time.perf_counter() - start
            progress.seconds += seconds
            if ctx.is_main:
                if improved and save_best and not objective.select_last:
                    atomic_save({"state": stage, **where, "state_dict": model.state_dict(),
                                 "best_sa": val[name], "test_ta": test[name] if test else None,
                                 **_meta(checkpoint_extra())}, run.file(files.best_of(stage)))
                row = {"round": stage, **where, "lr": lr, "remaining": round(remaining, 4),
                       "train_loss": round(train["loss"], 5),
                       **_train_figures(train),
                       **_split_row(objective.val_prefix, val, objective), **_split_row("test_", test, objective),
                       "train_images_per_s": round(train["images_per_s"], 1),
                       "seconds": round(seconds, 3)}
                run.log_epoch(row)
                save_checkpoint()
                shown = f" test {test[name]:.2f}" if test else ""
                trained = f" train {train['acc']:.2f}" if not math.isnan(train["acc"]) else ""
                at = f"itr {position}" if cfg.by_iterations else f"epoch {position}"
                metric = "" if objective.is_accuracy else f" {name}"
                print(f"round {stage} {at}: lr {lr:.4g}{trained} val{metric} {val[name]:.2f}{shown} "
                      f"remaining {remaining:.2f}% ({row['seconds']:.1f}s)", flush=True)
    return progress


def stop_if_diverged(train: dict, model: nn.Module, where: str) -> None:
    """Stop the run when the stretch just trained (``where``) ended with a non-finite mean loss, or
    with non-finite weights (a last step can blow them up after a finite loss).

    Runs before anything of the stretch is logged or saved, so the run's files keep its last finite
    state: no checkpoint, best model, ticket or plot is written from what diverged. The loss is
    summed over ranks and the weights are equal on every rank, so all ranks stop together.
    """
    loss = train["loss"]
    if math.isfinite(loss) and finite_weights(model):
        return
    what = (f"the mean training loss is {loss}" if not math.isfinite(loss)
            else f"its weights hold NaN or infinite values (mean training loss {loss:.4g})")
    raise TrainingDiverged(f"training diverged in {where}: {what}; nothing of it was saved, the run's files "
                           f"hold its last finite state. Lower the learning rate and start a new run in another "
                           f"folder (a resume keeps this run's learning rate)")


@torch.no_grad()
def finite_weights(model: nn.Module) -> bool:
    """True when every parameter of ``model`` is finite: the largest magnitude of each tensor (NaN or
    inf where one entry is) in one multi-tensor pass, read once on the host."""
    parameters = [parameter.detach() for parameter in model.parameters()]
    if not parameters:
        return True
    return bool(torch.stack(torch._foreach_norm(parameters, math.inf)).isfinite().all())


class _BatchStream:
    """The training batches of a stage counted in iterations: epoch after epoch of the loader,
    kept open between evaluations. Started at iteration ``start`` (a resume), it replays the
    current epoch's first batches without training on them, so the data are those an
    uninterrupted run sees."""

    def __init__(self, loader, stage: int, total_itrs: int, start: int):
        self.loader, self.per_epoch = loader, len(loader)
        if self.per_epoch == 0:
            raise UserError("the training loader yields no batch: lower the batch size")
        # Data epochs of round ``stage`` are numbered after those of earlier rounds.
        self.first_epoch = stage * -(-total_itrs // self.per_epoch)
        self.itr = start
        self._iterator: Iterator | None = None

    def _open(self) -> None:
        epoch, offset = divmod(self.itr, self.per_epoch)
        self.loader.set_epoch(self.first_epoch + epoch)
        self._iterator = itertools.islice(iter(self.loader), offset, None)

    def take(self, count: int):
        for _ in range(count):
            if self._iterator is None or self.itr % self.per_epoch == 0:
                self._open()
            batch = next(self._iterator, None)
            if batch is None:  # a loader shorter than its len (should not happen): next epoch
                self.itr += self.per_epoch - self.itr % self.per_epoch
                self._open()
                batch = next(self._iterator)
            self.itr += 1
            yield batch


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
    remaining = pruning.sparsity(model, conv1)["remaining"]
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


def _metric(result: dict, name: str, split: str) -> float:
    if name not in result:
        raise UserError(f"the {split} evaluator returned no '{name}', the task's primary metric "
                        f"(it returned {', '.join(result) or 'nothing'})")
    return float(result[name])


def _evaluate_only(model, loaders, evaluator, ctx, run, stage, progress, remaining,
                   objective: Objective = ACCURACY) -> StageProgress:
    start = time.perf_counter()
    val, test = _evaluate_splits(model, loaders, evaluator)
    name = objective.name
    progress.best_val, progress.best_epoch = _metric(val, name, "val"), -1
    progress.test_at_best = _metric(test, name, "test") if test else math.nan
    progress.at_best = {**_figures("val", val, objective), **_figures("test", test, objective)}
    seconds = time.perf_counter() - start
    progress.seconds += seconds
    if ctx.is_main:
        where = {"itr": 0} if progress.next_itr is not None else {"epoch": -1}
        run.log_epoch({"round": stage, **where, "trained": False, "remaining": round(remaining, 4),
                       **_split_row(objective.val_prefix, val, objective), **_split_row("test_", test, objective),
                       "seconds": round(seconds, 3)})
        metric = "" if objective.is_accuracy else f" {name}"
        print(f"round {stage} (evaluation only): val{metric} {val[name]:.2f} remaining {remaining:.2f}%", flush=True)
    return progress


def _split_row(prefix: str, result: dict | None, objective: Objective = ACCURACY) -> dict:
    """The metrics.jsonl columns of one split: the objective first, then every other float metric
    (NaN ones left out) and the list metrics the objective names, each as ``{prefix}{key}``."""
    if result is None:
        return {}
    row = {f"{prefix}{objective.name}": round(float(result[objective.name]), 4)}
    for key, value in result.items():
        if key == objective.name:
            continue
        if isinstance(value, float) and not math.isnan(value):
            row[f"{prefix}{key}"] = round(value, 4)
        elif key in objective.lists and isinstance(value, (list, tuple)):
            row[f"{prefix}{key}"] = [_rounded(item) for item in value]
        elif key in objective.lists and isinstance(value, Mapping):  # per-class figures by name
            row[f"{prefix}{key}"] = {str(name): _rounded(item) for name, item in value.items()}
    return row


def _rounded(value):
    return round(float(value), 4) if isinstance(value, (int, float)) and not isinstance(value, bool) else value


def _train_figures(train: dict) -> dict:
    """Train accuracy (where the step counts it) and the step's loss parts, for metrics.jsonl."""
    row = {} if math.isnan(train["acc"]) else {"train_acc": round(train["acc"], 4)}
    for key, value in train.items():
        if key not in ("loss", "acc", "images_per_s", "images"):
            row[f"train_{key}"] = round(value, 5)
    return row


def _figures(name: str, result: dict | None, objective: Objective = ACCURACY) -> dict:
    """A split's metric columns (always ``{split}_{key}``) plus its per-class figures (plain
    numbers: checkpoint-safe), for ``StageProgress.at_best``."""
    figures = _split_row(f"{name}_", result, objective)
    per_class = (result or {}).get("per_class")
    if isinstance(per_class, list) and all(isinstance(value, (int, float)) for value in per_class):
        figures[f"{name}_per_class"] = [float(value) for value in per_class]
    return figures


def _meta(extra: dict) -> dict:
    """Small descriptive entries of a checkpoint (the best-model file skips the big rewind weights)."""
    return {key: value for key, value in extra.items() if key != "init_weight"}


def _rng_snapshot() -> dict:
    """torch's global RNG state (CPU, and the current CUDA device's): dropout draws from it."""
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _rng_restore(state: Mapping, device: torch.device) -> None:
    torch.set_rng_state(state["cpu"].cpu())
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)


# Flags whose change would make a resumed run a different experiment.
IDENTITY_FLAGS = ("dataset", "arch", "prune_type", "rate", "random_prune", "conv1", "fc", "seed",
                  "epochs", "batch_size", "lr", "momentum", "weight_decay", "warmup",
                  "decreasing_lr", "rewind_epoch", "pretrained", "mask_dir", "reverse_mask", "load_all",
                  "percent", "pre_weight", "image_size", "random", "early_bird", "early_bird_sparsity",
                  "eb_threshold", "eb_window")


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
    run.accept_resume()
    progress = StageProgress.from_checkpoint(checkpoint)
    if progress.next_itr is None:
        run.rewind_logs(int(checkpoint["state"]), progress.next_epoch)
        if progress.next_epoch == 0:  # a round's start: also lines of a stage counted in iterations
            run.rewind_logs(int(checkpoint["state"]), 1, key="itr")
        at = f"epoch {progress.next_epoch}"
    else:
        run.rewind_logs(int(checkpoint["state"]), progress.next_itr + 1, key="itr")
        at = f"iteration {progress.next_itr}"
    print(f"resuming round {checkpoint['state']} at {at} from {path}", file=sys.stderr)
    return checkpoint, progress


# Re-creates on a model the masks a checkpoint's state_dict holds, before the strict load.
MaskRestorer = Callable[[nn.Module, Mapping], None]


def apply_checkpoint_masks(model: nn.Module, state_dict: Mapping, conv1: bool = False) -> None:
    """Prune ``model`` with the masks of ``state_dict`` (prefixes stripped), so that it loads strictly."""
    masks = pruning.extract_mask(state_dict)
    if masks:
        pruning.apply_mask(model, masks, conv1=conv1)


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
            raise UserError(f"--{flag} is {args[flag]!r} but the run being resumed used {saved[flag]!r}; "
                            f"a resume keeps the run's flags: to change it, start a new run in another folder")
