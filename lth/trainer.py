"""Training one (possibly masked) model for a stage, with evaluation, checkpoints and logs.

A stage is counted in epochs (evaluated after each) or in iterations (``TrainConfig.total_itrs``,
evaluated every ``val_interval``); either resumes exactly from its last evaluation. What a task
brings (docs/CORE.md): a ``step`` (batch -> ``StepResult``), an ``evaluator`` (model, loader, desc ->
dict of metrics), an ``Objective`` (the primary metric and its direction) and ``Loaders``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
import time
import sys
from dataclasses import dataclass, field
from typing import Callable, Iterator, Mapping, Sequence

import torch
import torch.nn as nn

from lth import distributed, pruning
from lth.checkpoint import atomic_save, load_file
from lth.distributed import Context
from lth.errors import TrainingDiverged, UserError
from lth.engine import (LR_POLICIES, Precision, StepResult, make_optimizer, make_scheduler, param_groups,
                        train_one_epoch)
from lth.hparams import resume_mismatch
from lth.loaders import Loaders  # noqa: F401  (scripts and tasks used to import it from here)
from lth.optim import masks_in_place_exact
from lth.runs import RunDir


@dataclass(frozen=True)
class Objective:
    """The metric a task is judged by: the key of its evaluator's dict, its direction and its label.

    The best model, ``reported`` (at the best evaluation) and ``final`` (at the last) of every
    summary row are this metric's. ``lists`` names list-valued metrics that are logged too (e.g.
    per-class IoU); scalar float metrics always are. ``val_prefix`` starts the validation columns of
    metrics.jsonl (``val_acc``; ``""`` gives ``miou``); test columns start with ``test_``. ``label``
    is the axis label of its plots, ``plot_name`` the stem of ``{plot_name}_vs_remaining.png`` and
    ``shown`` the word printed after "val" on the console (each defaults to ``name``).
    A task whose summary rows keep other keys overrides ``summary_fields`` (classification's
    ``lth.classification.Accuracy``).
    """
    name: str = "acc"
    higher_is_better: bool = True
    lists: tuple[str, ...] = ()
    val_prefix: str = "val_"
    # True where the validation split is the test split (VOC detection: VOC07 test is the only
    # evaluation set): choosing the best of several evaluations would select on the test set, so
    # the last evaluation is the one reported and no best-model copy is kept.
    select_last: bool = False
    label: str | None = None
    plot_name: str | None = None
    shown: str | None = None

    def improves(self, value: float, best: float) -> bool:
        """True when ``value`` beats ``best`` (``-inf``: nothing measured yet)."""
        if self.higher_is_better:
            return value > best
        return best == -math.inf or value < best

    @property
    def axis_label(self) -> str:
        return self.label or self.name

    @property
    def file_stem(self) -> str:
        return self.plot_name or self.name

    @property
    def console_name(self) -> str:
        return self.name if self.shown is None else self.shown

    def summary_fields(self, progress: "StageProgress") -> dict:
        """This metric's columns of a summary row: ``best_val_{name}``, ``test_{name}_at_best_val``
        and every scalar figure of the reported split at the best evaluation under its own name."""
        name = self.name
        split = "val" if math.isnan(progress.test_at_best) else "test"
        row = {f"best_val_{name}": progress.best_val, f"test_{name}_at_best_val": progress.test_at_best}
        row.update({key[len(split) + 1:]: value for key, value in progress.at_best.items()
                    if key.startswith(split + "_")})
        return row


# TrainConfig field -> hparams field (the flag's dest).
_HPARAM_NAMES = {"epochs": "epochs", "lr": "lr", "momentum": "momentum", "weight_decay": "weight_decay",
                 "warmup": "warmup", "milestones": "decreasing_lr", "print_freq": "print_freq", "compile": "compile"}


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
    objective: Objective = field(default_factory=Objective)  # a task sets its own
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
    def from_hparams(cls, hparams, **overrides) -> "TrainConfig":
        """The config of a task's hparams (``lth.hparams``; anything with the attributes does): its
        optimisation fields, and ``overrides`` for what the task fixes otherwise (SimCLR's momentum,
        segmentation's epochs). A field neither has is a programming error, not a default."""
        values = {}
        for key, name in _HPARAM_NAMES.items():
            if key in overrides:
                continue
            if not hasattr(hparams, name):
                raise TypeError(f"{type(hparams).__name__} has no '{name}': pass {key}= to TrainConfig.from_hparams")
            values[key] = getattr(hparams, name)
        values["milestones"] = list(values.get("milestones") or [])
        for name in ("total_itrs", "val_interval", "lr_policy"):  # tasks counted in iterations (lth.hparams.Iterations)
            if name not in overrides and hasattr(hparams, name):
                values[name] = getattr(hparams, name)
        values.update(overrides)
        return cls(**values)

    from_args = from_hparams  # the name scripts used while they passed argparse Namespaces

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
    """File names of a stage's resumable checkpoint, best model and training curves (None: not
    drawn); the original scripts differ."""
    checkpoint: str = "{stage}checkpoint.pth.tar"
    best: str = "{stage}model_SA_best.pth.tar"
    curves: str | None = "{stage}net_train.png"

    def checkpoint_of(self, stage: int) -> str:
        return self.checkpoint.format(stage=stage)

    def best_of(self, stage: int) -> str:
        return self.best.format(stage=stage)

    def curves_of(self, stage: int) -> str:
        return self.curves.format(stage=stage)


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
    # Where the optimizer and the schedule stood at the checkpoint resumed (the stage loads them;
    # checkpoints save the live ones).
    optimizer_state: dict | None = None
    scheduler_state: dict | None = None
    # The stage's cost so far (lth.cost, counted by CountCost): training samples seen and wall seconds
    # of its trained and evaluated chunks; only chunks that reached a checkpoint count, so a resume
    # counts each once.
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
                   optimizer_state=checkpoint.get("optimizer"), scheduler_state=checkpoint.get("scheduler"),
                   images=int(checkpoint.get("images", 0)), seconds=float(checkpoint.get("seconds", 0.0)),
                   stopped=bool(checkpoint.get("stopped", False)))

    def record(self, epoch: int, train_acc: float, val_acc: float, test_acc: float,
               figures: dict | None, objective: Objective) -> bool:
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

    def summary_row(self, stage: int, remaining: float, objective: Objective) -> dict:
        """The line a finished round (or one-off training) adds to ``summary.jsonl``.

        Every row names its ``primary_metric`` and direction and gives it ``reported`` (at the best
        validation evaluation) and ``final`` (at the last); the objective adds its own columns
        (``Objective.summary_fields``).
        """
        row = {"round": stage, "remaining": round(remaining, 4)}
        if self.next_itr is None:
            row.update(trained_epochs=self.next_epoch, best_epoch=self.best_epoch)
        else:
            row.update(trained_itrs=self.next_itr, best_itr=self.best_epoch)
        row.update(objective.summary_fields(self))
        row.update({"primary_metric": objective.name, "higher_is_better": objective.higher_is_better,
                    "reported": self.reported, "final": self.final})
        if objective.select_last:  # best_* then hold the last evaluation's figures
            row["reported_at"] = "last evaluation (the validation split is the test split)"
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


Step = Callable[[nn.Module, object], StepResult]
Evaluator = Callable[[nn.Module, object, str], dict]


@dataclass(frozen=True)
class Work:
    """What a stage trains on and how: the task's loaders, its loss ``step`` and ``evaluator``, and
    ``after_step(train_model)``, a callable run after every optimizer step (MoCo's momentum
    update) or None."""
    loaders: Loaders
    step: Step
    evaluator: Evaluator
    after_step: Callable[[nn.Module], Callable[[], None] | None] | None = None


def train_stage(model: nn.Module, work: Work, cfg: TrainConfig, ctx: Context, precision: Precision, *,
                stage: int, progress: StageProgress, hooks: Sequence[Hook] = ()) -> StageProgress:
    """Train ``model`` from where ``progress`` stands to the end of the stage, calling the hooks
    after every chunk of it.

    Counted in epochs (``cfg.epochs``), a chunk is an epoch; counted in iterations
    (``cfg.total_itrs``), ``cfg.val_interval`` iterations (and the last ones). The schedule
    (``cfg.eval_every``, ``cfg.eval_from``) says which chunks end with an evaluation; the
    evaluation (val, and test where the task has one, recorded in ``progress``) is the first hook,
    then come ``hooks`` in their order (``stage_hooks``: best model, metrics line, checkpoint,
    console line). A stage of 0 epochs (or iterations) only evaluates (round 0 of the ImageNet and
    pre-training IMPs): one chunk without training. ``stage`` is the IMP round (0 for one-off
    training); it numbers data epochs globally so data order and augmentation never repeat. A
    chunk whose loss or weights are not finite ends the run before any hook sees it.
    """
    hooks = [Evaluation(work, cfg.objective), *hooks]
    if not cfg.trains:
        where = {"itr": 0} if progress.next_itr is not None else {"epoch": -1}
        _call(hooks, ChunkEnd(stage, cfg, model, progress, ctx.is_main, where, time.perf_counter()))
        return progress
    loop = _StageLoop(model, work, cfg, ctx, precision, stage, progress)
    # Masks multiplied into the weights after each step instead of prune's forward pre-hooks:
    # the same numbers for element-wise optimizers, a little faster (docs/PERFORMANCE.md); the
    # hooks are back afterwards. LARS's whole-tensor norms need the hooks' dense weight_orig.
    in_place = (pruning.masks_in_place(model) if cfg.inplace_masks and masks_in_place_exact(cfg.optimizer)
                else contextlib.nullcontext(None))
    with in_place as reapply_masks:
        loop.start(reapply_masks)
        while not progress.finished(cfg):
            _call(hooks, loop.chunk())
    return progress


class _StageLoop:
    """The optimizer, schedule and data of one stage, trained one chunk at a time."""

    def __init__(self, model: nn.Module, work: Work, cfg: TrainConfig, ctx: Context, precision: Precision,
                 stage: int, progress: StageProgress):
        self.model, self.work, self.cfg, self.ctx, self.precision = model, work, cfg, ctx, precision
        self.stage, self.progress = stage, progress
        if cfg.by_iterations and progress.next_itr is None:
            progress.next_itr = 0
        self.optimizer = make_optimizer(param_groups(model, cfg.lr, cfg.lr_scales), cfg.lr, cfg.momentum,
                                        cfg.weight_decay, ctx.device, name=cfg.optimizer)
        steps_per_unit = 1 if cfg.by_iterations else len(work.loaders.train)
        self.scheduler = make_scheduler(
            self.optimizer, steps_per_unit, cfg.warmup, cfg.milestones, policy=cfg.lr_policy,
            total_steps=cfg.total_itrs if cfg.by_iterations else cfg.epochs * steps_per_unit,
            power=cfg.power, factor=cfg.lr_factor)
        if progress.optimizer_state:  # a resume: where the optimizer and the schedule stood
            self.optimizer.load_state_dict(progress.optimizer_state)
        if progress.scheduler_state:
            self.scheduler.load_state_dict(progress.scheduler_state)
        progress.optimizer_state = progress.scheduler_state = None
        if progress.rng_state:
            _rng_restore(progress.rng_state, ctx.device)
            progress.rng_state = None

    def start(self, reapply_masks: Callable[[], None] | None) -> None:
        self.train_model = wrap_for_training(self.model, self.ctx, self.cfg.compile)
        after_step = self.work.after_step(self.train_model) if self.work.after_step else None
        self.after_step = _chain(after_step, reapply_masks)
        if self.cfg.by_iterations:
            self.stream = _BatchStream(self.work.loaders.train, self.stage, self.cfg.total_itrs, self.progress.next_itr)

    def chunk(self) -> ChunkEnd:
        """Train the next chunk; what the hooks are told about it."""
        cfg, progress, stage = self.cfg, self.progress, self.stage
        started, lr = time.perf_counter(), self.optimizer.param_groups[0]["lr"]
        if cfg.by_iterations:
            count = min(cfg.val_interval or cfg.total_itrs, cfg.total_itrs - progress.next_itr)
            position = progress.next_itr + count
            train = self._train(self.stream.take(count), f"round {stage} itr {position}/{cfg.total_itrs}", count)
            stop_if_diverged(train, self.model, f"round {stage} iterations {progress.next_itr + 1}-{position}")
            progress.next_itr = position
            where = {"itr": position}
            # The original MoCo/SimCLR segmentation IMP scripts validate only in a round's second half.
            evaluate = position >= cfg.eval_from or progress.finished(cfg)
        else:
            position = progress.next_epoch
            self.work.loaders.train.set_epoch(stage * cfg.epochs + position)
            train = self._train(self.work.loaders.train, f"round {stage} epoch {position + 1}/{cfg.epochs}")
            stop_if_diverged(train, self.model, f"round {stage} epoch {position}")
            where = {"epoch": position}
            evaluate = not ((position + 1) % cfg.eval_every and position + 1 < cfg.epochs)
            if not evaluate:
                progress.next_epoch = position + 1  # trained, not evaluated (an evaluation records it)
        return ChunkEnd(stage, cfg, self.model, progress, self.ctx.is_main, where, started, train=train, lr=lr,
                        evaluate=evaluate, optimizer=self.optimizer, scheduler=self.scheduler)

    def _train(self, batches, desc: str, total: int | None = None) -> dict:
        return train_one_epoch(self.train_model, batches, self.optimizer, self.scheduler, self.ctx, self.precision,
                               desc=desc, print_freq=self.cfg.print_freq, after_step=self.after_step,
                               step=self.work.step, total=total, step_after=self.cfg.step_after)


# --------------------------------------------------------------------------------------------
# Hooks: what a stage does after each chunk (open_lth's callbacks)
# --------------------------------------------------------------------------------------------

@dataclass
class ChunkEnd:
    """What the hooks see after a chunk of a stage; ``train`` is None for the one chunk of a stage
    that only evaluates. ``evaluate``: the schedule evaluates this chunk (``Evaluation`` then fills
    ``val``, ``test`` and ``improved``); ``seconds`` is set by ``CountCost`` (else the metrics line)."""
    stage: int
    cfg: TrainConfig
    model: nn.Module
    progress: StageProgress
    is_main: bool
    where: dict  # {"epoch": epoch index} or {"itr": iterations done}
    started: float  # time.perf_counter() when the chunk began
    train: dict | None = None  # train_one_epoch's figures
    lr: float = math.nan
    evaluate: bool = True
    optimizer: torch.optim.Optimizer | None = None
    scheduler: object = None
    val: dict | None = None
    test: dict | None = None
    improved: bool = False
    seconds: float | None = None

    @property
    def position(self) -> int:
        return next(iter(self.where.values()))


Hook = Callable[[ChunkEnd], None]


def _call(hooks: Sequence[Hook], event: ChunkEnd) -> None:
    for hook in hooks:
        hook(event)


class Evaluation:
    """Evaluates val (and test, where the task has one) at the chunks the schedule evaluates and
    records the result in the stage's progress (the best evaluation by the objective)."""

    def __init__(self, work: Work, objective: Objective):
        self.work, self.objective = work, objective

    def __call__(self, event: ChunkEnd) -> None:
        if not event.evaluate:
            return
        objective, progress, loaders = self.objective, event.progress, self.work.loaders
        distributed.broadcast_buffers(event.model)
        val = self.work.evaluator(event.model, loaders.val, "val")
        test = self.work.evaluator(event.model, loaders.test, "test") if loaders.test is not None else None
        name = objective.name
        val_value, test_value = _metric(val, name, "val"), _metric(test, name, "test") if test else math.nan
        figures = {**_figures("val", val, objective), **_figures("test", test, objective)}
        if event.train is None:  # a stage that only evaluates
            progress.best_val, progress.best_epoch, progress.test_at_best = val_value, -1, test_value
            progress.at_best = figures
        else:
            event.improved = progress.record(event.position, event.train["acc"], val_value, test_value,
                                             figures=figures, objective=objective)
        event.val, event.test = val, test


class AfterEvaluation:
    """``fn(position)`` on every rank after each evaluation of a trained chunk (the IMP rewind
    rule's moment: ``position`` is the epoch index, or the iterations done)."""

    def __init__(self, fn: Callable[[int], None]):
        self.fn = fn

    def __call__(self, event: ChunkEnd) -> None:
        if event.evaluate and event.train is not None:
            self.fn(event.position)


class CountCost:
    """Adds the chunk's training samples (the step's ``images``, summed over ranks) and wall seconds
    (training and evaluation, up to here: best-model, log and checkpoint writes are not counted) to
    the stage's progress, before the checkpoint saves it (``lth.cost``); the metrics line quotes the
    same seconds."""

    def __call__(self, event: ChunkEnd) -> None:
        if event.train is not None:
            event.progress.images += int(event.train["images"])
        event.seconds = time.perf_counter() - event.started
        event.progress.seconds += event.seconds


class SaveBest:
    """Keeps the best-validation model in ``files.best_of(stage)`` (rank 0), with the checkpoint's
    small entries (not the rewind weights); none where the objective selects the last evaluation."""

    def __init__(self, run: RunDir, files: StageFiles, checkpoint_extra: Callable[[], dict]):
        self.run, self.files, self.checkpoint_extra = run, files, checkpoint_extra

    def __call__(self, event: ChunkEnd) -> None:
        objective = event.cfg.objective
        if not (event.improved and event.is_main) or objective.select_last:
            return
        name = objective.name
        atomic_save({"state": event.stage, **event.where, "state_dict": event.model.state_dict(),
                     "best_sa": event.val[name], "test_ta": event.test[name] if event.test else None,
                     **_meta(self.checkpoint_extra())}, self.run.file(self.files.best_of(event.stage)))


class LogMetrics:
    """A metrics.jsonl line (rank 0) per evaluation, and per trained epoch that the schedule does
    not evaluate (its training figures, ``"evaluated": false``)."""

    def __init__(self, run: RunDir, remaining: float):
        self.run, self.remaining = run, remaining

    def __call__(self, event: ChunkEnd) -> None:
        if not event.is_main or not (event.evaluate or "epoch" in event.where):
            return
        row = {"round": event.stage, **event.where}
        train, objective = event.train, event.cfg.objective
        if train is None:
            row.update({"trained": False, "remaining": round(self.remaining, 4)})
        else:
            row.update({"lr": event.lr, "remaining": round(self.remaining, 4), "train_loss": round(train["loss"], 5),
                        **_train_figures(train)})
            if not event.evaluate:
                row["evaluated"] = False
        if event.evaluate:
            row.update({**_split_row(objective.val_prefix, event.val, objective),
                        **_split_row("test_", event.test, objective)})
        if train is not None:
            row["train_images_per_s"] = round(train["images_per_s"], 1)
        seconds = event.seconds if event.seconds is not None else time.perf_counter() - event.started
        event.seconds = row["seconds"] = round(seconds, 3)
        self.run.log_epoch(row)


class Checkpoint:
    """The resumable checkpoint after every trained chunk (rank 0): weights and masks, optimizer,
    schedule, progress and torch's RNG, plus ``checkpoint_extra()``. It comes after the metrics
    line: a resume drops log lines newer than its checkpoint, so the two always agree."""

    def __init__(self, run: RunDir, files: StageFiles, checkpoint_extra: Callable[[], dict]):
        self.run, self.files, self.checkpoint_extra = run, files, checkpoint_extra

    def __call__(self, event: ChunkEnd) -> None:
        if not event.is_main or event.train is None:
            return
        atomic_save({"state": event.stage, "state_dict": event.model.state_dict(),
                     "optimizer": event.optimizer.state_dict(), "scheduler": event.scheduler.state_dict(),
                     **event.progress.to_checkpoint(), **self.checkpoint_extra()},
                    self.run.file(self.files.checkpoint_of(event.stage)))


class Report:
    """A console line per evaluation (rank 0); before ``cfg.eval_from``, the chunk's training loss."""

    def __init__(self, remaining: float):
        self.remaining = remaining

    def __call__(self, event: ChunkEnd) -> None:
        if not event.is_main:
            return
        cfg, name = event.cfg, event.cfg.objective.name
        if not event.evaluate:
            if cfg.by_iterations:
                print(f"round {event.stage} itr {event.position}: train loss {event.train['loss']:.4f} "
                      f"(evaluations start at itr {cfg.eval_from})", flush=True)
            return
        metric = f" {cfg.objective.console_name}" if cfg.objective.console_name else ""
        if event.train is None:
            print(f"round {event.stage} (evaluation only): val{metric} {event.val[name]:.2f} "
                  f"remaining {self.remaining:.2f}%", flush=True)
            return
        shown = f" test {event.test[name]:.2f}" if event.test else ""
        trained = f" train {event.train['acc']:.2f}" if not math.isnan(event.train["acc"]) else ""
        at = f"itr {event.position}" if cfg.by_iterations else f"epoch {event.position}"
        print(f"round {event.stage} {at}: lr {event.lr:.4g}{trained} val{metric} {event.val[name]:.2f}{shown} "
              f"remaining {self.remaining:.2f}% ({event.seconds:.1f}s)", flush=True)


def stage_hooks(run: RunDir, remaining: float, files: StageFiles = StageFiles(), *,
                checkpoint_extra: Callable[[], dict] = dict, save_best: bool = True,
                after_evaluation: Callable[[int], None] | None = None) -> list[Hook]:
    """The hooks of a stage that writes into ``run``, after the evaluation: ``after_evaluation``
    (IMP's rewind rule and early-bird draws), the cost count, the best model (unless ``save_best`` is
    False), the metrics line, the resumable checkpoint and the console line. ``remaining`` (%) is
    quoted in the lines."""
    hooks: list[Hook] = [AfterEvaluation(after_evaluation)] if after_evaluation else []
    hooks.append(CountCost())
    if save_best:
        hooks.append(SaveBest(run, files, checkpoint_extra))
    return [*hooks, LogMetrics(run, remaining), Checkpoint(run, files, checkpoint_extra), Report(remaining)]


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


def _metric(result: dict, name: str, split: str) -> float:
    if name not in result:
        raise UserError(f"the {split} evaluator returned no '{name}', the task's primary metric "
                        f"(it returned {', '.join(result) or 'nothing'})")
    return float(result[name])


def _split_row(prefix: str, result: dict | None, objective: Objective) -> dict:
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


def _figures(name: str, result: dict | None, objective: Objective) -> dict:
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


def restore_stage(model: nn.Module, run: RunDir, fmt: str, args: dict, conv1: bool,
                  path: str | None = None, apply_masks: MaskRestorer | None = None
                  ) -> tuple[dict, StageProgress]:
    """Load the latest (or the given) checkpoint of ``run`` into ``model``, masks included.

    Checks that the checkpoint was written by the same kind of run of the same experiment (the
    run's hparams, see ``check_resumable``), and drops log lines newer than it. Returns the raw checkpoint and the stage progress.
    ``apply_masks`` is passed on to ``load_checkpoint_into``.
    """
    checkpoints = run.checkpoints()
    path = path or checkpoints[max(checkpoints)]
    checkpoint = load_checkpoint_into(model, path, fmt, args, conv1, apply_masks, hparams=run.hparams)
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
                         apply_masks: MaskRestorer | None = None, hparams=None) -> dict:
    """Put the weights and masks of checkpoint ``path`` (of kind ``fmt``) into ``model``; returns it.

    Nothing else is touched, so ``-e`` can evaluate a checkpoint without changing its run.
    ``apply_masks(model, state_dict)`` re-creates the masks where the model is not one network
    (MoCo's two encoders); by default ``apply_checkpoint_masks``.
    """
    checkpoint = load_file(path, "checkpoint")
    check_resumable(checkpoint, path, fmt, args, hparams)
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


def check_resumable(checkpoint: Mapping, path: str, fmt: str, args: dict, hparams=None) -> None:
    """The checkpoint must be of kind ``fmt`` and, given the run's ``hparams`` (``lth.hparams``), of the
    same experiment and seed: its recorded args are compared on the experiment fields (run.json's
    experiment id was compared when the session opened; this also covers a checkpoint moved away
    from its run.json)."""
    if not isinstance(checkpoint, Mapping) or checkpoint.get("format") != fmt:
        raise UserError(f"'{path}' is not a '{fmt}' checkpoint written by this toolkit; cannot resume it")
    if hparams is not None:
        reason = resume_mismatch(hparams, args.get("seed"), {"args": checkpoint.get("args") or {}}, f"'{path}'")
        if reason:
            raise UserError(reason)
