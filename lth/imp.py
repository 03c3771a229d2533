"""Iterative magnitude pruning: train, prune 20 % of what remains, rewind, repeat; resumable.

Any task runs through ``ImpRun``: its model, ``Loaders``, a ``TrainConfig`` (with the task's
``Objective``), the ``step``/``evaluator`` in ``stage_kwargs`` and a ``PruneStrategy`` saying what is
pruned (``BackbonePruning`` for a task whose network holds a ResNet under ``model.backbone``).
See docs/CORE.md.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from typing import Callable

import torch.nn as nn

from lth import cost, pruning, tickets
from lth import distributed
from lth.checkpoint import atomic_save, load_file
from lth.distributed import Context
from lth.earlybird import EarlyBird, EarlyBirdConfig, draw_mask, rate_to
from lth.engine import Precision
from lth.errors import UserError
from lth.plots import plot_accuracy_vs_remaining, plot_training_curves
from lth.runs import RunDir, ticket_name
from lth.loaders import Loaders
from lth.trainer import (StageFiles, StageProgress, TrainConfig, apply_checkpoint_masks, restore_stage,
                         train_stage)

PRUNE_TYPES = ("lt", "pt", "rewind_lt", "pt_trans", "lrr")
REWIND_TARGETS = {
    "lt": "the weights the run started from (random init)",
    "rewind_lt": "the weights after the first --rewind_epoch epochs of round 0",
    "pt": "the best-validation dense model of round 0",
    "pt_trans": "the pre-trained weights (--pretrained)",
    "lrr": "none: learning-rate rewinding (Renda et al. 2020) keeps the trained weights after each prune and "
           "replays the learning-rate schedule from its start",
}
LRR = "lrr"  # the prune type that keeps the trained weights (no rewind point)
CHECKPOINT_FORMAT = "lth-imp"
REWIND_FILE = "rewind_point.pth.tar"  # the rewind weights, written once (see ImpConfig.rewind_in_checkpoint)
REWIND_FORMAT = "lth-rewind-point"


@dataclass
class ImpConfig:
    rounds: int
    rate: float
    prune_type: str
    random_prune: bool
    conv1: bool
    seed: int
    meta: dict  # copied into every ticket: arch, dataset, ...
    rewind_epoch: int = 9
    train_round0: bool = True  # False: round 0 only evaluates, then prunes one-shot (ImageNet, SimCLR, MoCo)
    files: StageFiles = field(default_factory=StageFiles)
    # True: every checkpoint carries the rewind weights as ``init_weight`` (the original's layout,
    # kept by the classification scripts, whose files are read with --dict_key init_weight).
    # False: they are written once to REWIND_FILE (under the same key) when they are set, and
    # checkpoints name that file as ``rewind_point``: large models write no unchanged copy per epoch.
    rewind_in_checkpoint: bool = False
    # False: once a round is finished (its pruned successor's files written), its resumable
    # checkpoint and best-model copy are deleted; a round's lasting record is then its ticket and
    # the task's own files (detection's backbone_imp{k+1}.pth). True keeps every file.
    keep_finished: bool = True
    # Early-bird stopping (lth.earlybird): None trains every round to the end of its schedule.
    early_bird: EarlyBirdConfig | None = None


class PruneStrategy:
    """How a model is pruned, rewound and described by a mask; the default acts on the whole model.

    Scripts whose model wraps the pruned network (MoCo's two encoders) subclass it.
    """

    def __init__(self, rate: float, random: bool, conv1: bool):
        self.rate, self.random, self.conv1 = rate, random, conv1

    def target(self, model: nn.Module) -> nn.Module:
        """The network whose convs are pruned and whose masks make the ticket."""
        return model

    def prune(self, model: nn.Module, seed: int) -> None:
        target = self.target(model)
        pruning.global_prune(target, self.rate, random=self.random, conv1=self.conv1,
                                   generator_seed=seed)
        pruning.sync_masks(target)

    def rewind(self, model: nn.Module, weights: dict) -> None:
        pruning.rewind(model, weights, conv1=self.conv1)

    def masks(self, model: nn.Module) -> dict:
        return pruning.current_masks(self.target(model), self.conv1)

    def remaining(self, model: nn.Module) -> float:
        return pruning.sparsity(self.target(model), self.conv1)["remaining"]

    def restore(self, model: nn.Module, state_dict: dict) -> None:
        """Re-create a checkpoint's masks on ``model`` (on resume, before its strict load)."""
        apply_checkpoint_masks(model, state_dict, self.conv1)

    def apply_ticket(self, model: nn.Module, masks: dict) -> None:
        """Put a ticket's masks (``layer1.0.conv1.weight_mask``...) on the pruned network."""
        pruning.apply_mask(self.target(model), masks, conv1=self.conv1)


class BackbonePruning(PruneStrategy):
    """Global magnitude (or random) pruning of the backbone's convs only, conv1 excluded.

    The backbone is ``model.<attribute>`` (``backbone`` by default), a module whose parameter
    names are torchvision ResNet's (``conv1``, ``layer1.0.conv1``...: a ResNet, or torchvision's
    ``IntermediateLayerGetter`` over one), so its 52 prunable convs on ResNet-50 are named as in a
    classification ticket and any ticket of this toolkit fits it. Heads, necks, decoders and batch
    norms are never pruned. Rewinding loads the whole model's rewind point and puts the backbone's
    masks back; a task that rewinds less (only the backbone convs) overrides ``rewind``.
    """

    def __init__(self, rate: float, random: bool = False, conv1: bool = False, attribute: str = "backbone"):
        super().__init__(rate, random, conv1)
        self.attribute = attribute

    def target(self, model: nn.Module) -> nn.Module:
        return model.get_submodule(self.attribute)

    def rewind(self, model: nn.Module, weights: dict) -> None:
        masks = pruning.extract_mask(self.target(model))
        pruning.remove_prune(model)
        model.load_state_dict(pruning.dense_state_dict(weights), strict=True)
        if masks:
            self.apply_ticket(model, masks)

    def restore(self, model: nn.Module, state_dict: dict) -> None:
        prefix = self.attribute + "."
        masks = {key[len(prefix):]: value for key, value in pruning.strip_prefixes(state_dict).items()
                 if key.startswith(prefix) and key.endswith(pruning.MASK_SUFFIX)}
        if masks:
            self.apply_ticket(model, masks)


def examples_checkpoint_keys(imp: ImpRun) -> dict:
    """Keys the original ImageNet/VisDA scripts (pytorch/examples style) keep in every checkpoint.

    Pass ``lambda: examples_checkpoint_keys(imp)`` as ``extra_state``; ``arch`` and ``init_weight``
    are already there. ``mask`` is None before the first prune, as in the original.
    """
    pruned = any(pruning.is_pruned(module) for module in imp.strategy.target(imp.model).modules())
    return {"best_acc1": max(imp.progress.best_val, 0.0), "if_pruned": pruned,
            "mask": pruning.extract_mask(imp.strategy.target(imp.model)) if pruned else None}


class ImpRun:
    """One IMP experiment in one ``--save_dir``.

    Round r trains with the mask of ``ticket_{r:02d}.pt``; after training, ``rate`` of the
    remaining conv weights are pruned globally, every weight is rewound to the target of the
    prune type, and the next round's ticket and checkpoint are written. The ticket made after
    the last round is written too (never trained, as in the original).

    ``start(first_round=k)`` continues rounds an earlier process ran (the originals' one process
    per round): the model must already hold round k's masks and weights.

    ``stage_kwargs`` go to every ``train_stage`` call (a contrastive ``step`` and ``evaluator``,
    ``after_step_factory``); ``extra_state`` adds entries to every checkpoint.
    """

    def __init__(self, model: nn.Module, loaders: Loaders, train_cfg: TrainConfig, imp_cfg: ImpConfig,
                 precision: Precision, ctx: Context, run: RunDir, args: dict,
                 strategy: PruneStrategy | None = None, stage_kwargs: dict | None = None,
                 extra_state: Callable[[], dict] = dict,
                 on_pruned: Callable[[nn.Module, int], None] | None = None):
        self.model, self.loaders, self.train_cfg, self.cfg = model, loaders, train_cfg, imp_cfg
        self.precision, self.ctx, self.run, self.args = precision, ctx, run, args
        self.strategy = strategy or PruneStrategy(imp_cfg.rate, imp_cfg.random_prune, imp_cfg.conv1)
        self.stage_kwargs = stage_kwargs or {}
        self.extra_state = extra_state
        # Runs on every rank after each round's prune, before the rewind, with the next round's
        # index (files of the pruned, trained model: detection's backbone_imp{k+1}.pth).
        self.on_pruned = on_pruned
        self.rewind_weights: dict | None = None
        # The progress of the round the model is in (read by extra_state, e.g. for best_acc1).
        self.progress = StageProgress()
        # The training cost of the rounds before the current one (lth.cost), and the early-bird
        # search of the current round when one applies (lth.earlybird); both in every checkpoint.
        self.spent = cost.Cost()
        self.early_bird: EarlyBird | None = None
        if imp_cfg.early_bird is not None and imp_cfg.random_prune:
            raise UserError("early-bird stopping waits for the magnitude mask to settle; random pruning draws "
                            "masks that do not depend on training: drop one of the two")

    # -- checkpoint payload ------------------------------------------------------------------
    def _extra(self) -> dict:
        if self.cfg.rewind_in_checkpoint:
            rewind = {"init_weight": self.rewind_weights}
        else:
            rewind = {"rewind_point": REWIND_FILE if self.rewind_weights is not None else None}
        return {"format": CHECKPOINT_FORMAT, **rewind, "args": self.args,
                "seed": self.cfg.seed, "prune_type": self.cfg.prune_type, **self.cfg.meta,
                "cost": self.spent.to_dict(),
                "early_bird": self.early_bird.state_dict() if self.early_bird is not None else None,
                **self.extra_state()}

    def set_rewind_point(self, weights: dict | None) -> None:
        """The weights every later round rewinds to; written once to REWIND_FILE unless checkpoints carry them."""
        self.rewind_weights = weights
        if weights is not None and not self.cfg.rewind_in_checkpoint and self.ctx.is_main:
            atomic_save({"format": REWIND_FORMAT, "init_weight": weights}, self.run.file(REWIND_FILE))

    def _read_rewind_point(self, checkpoint: dict, checkpoint_path: str) -> dict | None:
        if "init_weight" in checkpoint:
            return checkpoint["init_weight"]
        name = checkpoint.get("rewind_point")
        if not name:
            return None
        path = os.path.join(os.path.dirname(os.path.abspath(checkpoint_path)), name)
        if not os.path.isfile(path):
            raise UserError(f"checkpoint '{checkpoint_path}' rewinds to '{path}', which is missing; "
                            f"the run cannot be resumed without it")
        saved = load_file(path, "rewind point")
        if not isinstance(saved, dict) or saved.get("format") != REWIND_FORMAT:
            raise UserError(f"'{path}' is not a rewind point written by this toolkit")
        return saved["init_weight"]

    def _on_epoch_end(self, stage: int, cfg: TrainConfig):
        def capture(epoch: int) -> None:
            # As the original: after k = rewind_epoch epochs (0-based epoch k - 1), file epoch_{k}_...
            trained = epoch + 1
            if self.cfg.prune_type == "rewind_lt" and stage == 0 and trained == self.cfg.rewind_epoch:
                self.set_rewind_point(pruning.dense_state_dict(self.model))
                if self.ctx.is_main:
                    atomic_save(self.rewind_weights, self.run.file(f"epoch_{trained}_rewind_weight.pt"))
            if self.early_bird is not None:
                self._early_bird_draw(stage, epoch if cfg.by_iterations else trained, cfg)
        return capture

    # -- early-bird stopping and the rate of each prune -----------------------------------------
    def _prune_rate(self, stage: int) -> float:
        """The share of the surviving weights the prune after round ``stage`` removes: ``rate``, or
        for round 0 of a one-shot early-bird search what reaches its sparsity."""
        eb = self.cfg.early_bird
        if stage == 0 and eb is not None and eb.sparsity is not None:
            return rate_to(eb.sparsity, self.strategy.remaining(self.model))
        return self.cfg.rate

    def _early_bird_start(self, stage: int, cfg: TrainConfig, progress: StageProgress) -> None:
        """Before round ``stage`` trains: its search starts with the mask of its starting weights
        (the original draws one before the first epoch); a resumed round keeps its checkpointed search."""
        eb = self.cfg.early_bird
        if eb is None or not eb.applies_to(stage) or not cfg.trains:
            self.early_bird = None
            return
        if self.early_bird is None or not self.early_bird.started:
            self.early_bird = EarlyBird(eb.threshold, eb.window)
            self._early_bird_draw(stage, (progress.next_itr or 0) if cfg.by_iterations else progress.next_epoch, cfg)

    def _early_bird_draw(self, stage: int, position: int, cfg: TrainConfig) -> None:
        mask = draw_mask(self.strategy.target(self.model), self._prune_rate(stage), self.strategy.conv1)
        emerged = self.early_bird.observe(mask, position)
        # rewind_lt's rewind point is taken after --rewind_epoch epochs of round 0: not stopped before it.
        waiting = self.cfg.prune_type == "rewind_lt" and self.rewind_weights is None
        if emerged and not waiting and not self.progress.finished(cfg):
            self.progress.stopped = True
            if self.ctx.is_main:
                unit = "iterations" if cfg.by_iterations else "epochs"
                print(f"round {stage}: early-bird ticket emerged after {position} {unit} (mask distances "
                      f"<= {self.early_bird.threshold:g} over {self.early_bird.window} draws): the round stops "
                      f"here", flush=True)

    def _stage_config(self, stage: int) -> TrainConfig:
        if stage == 0 and not self.cfg.train_round0:
            return self.train_cfg.evaluating_only()
        return self.train_cfg

    # -- driving -----------------------------------------------------------------------------
    def start(self, first_round: int = 0) -> None:
        """Fresh run: the starting weights are the rewind point for lt and pt_trans.

        A rewind point the caller set before ``start`` is kept (SimCLR rewinds only the tensors
        its pre-trained checkpoint provided).
        """
        if self.rewind_weights is None and self.cfg.prune_type in ("lt", "pt_trans"):
            self.rewind_weights = pruning.dense_state_dict(self.model)
        self.set_rewind_point(self.rewind_weights)
        if first_round:  # lines a killed earlier attempt at this round left before its first checkpoint
            self.run.rewind_logs(first_round, 0)
            self.run.rewind_logs(first_round, 1, key="itr")
            # The earlier rounds ran in earlier processes: their cost is in their summary rows.
            earlier = [row for row in self.run.summary() if row.get("round", 0) < first_round]
            self.spent = cost.Cost.from_row(earlier[-1]) if earlier else cost.Cost()
        self._write_ticket(first_round)
        self._train_from(first_round, StageProgress(), None, None)

    def resume(self, checkpoint_path: str | None = None) -> None:
        if checkpoint_path is None:
            checkpoints = self.run.checkpoints()
            checkpoint_path = checkpoints[max(checkpoints)]
        checkpoint, progress = restore_stage(self.model, self.run, CHECKPOINT_FORMAT, self.args,
                                             self.cfg.conv1, checkpoint_path, apply_masks=self.strategy.restore)
        self.rewind_weights = self._read_rewind_point(checkpoint, checkpoint_path)
        self.spent = cost.Cost.from_dict(checkpoint.get("cost"))
        searched = checkpoint.get("early_bird")
        self.early_bird = EarlyBird.from_state_dict(searched) if searched else None
        self._train_from(int(checkpoint["state"]), progress, checkpoint.get("optimizer"),
                         checkpoint.get("scheduler"))

    def _train_from(self, first_round: int, progress: StageProgress, optimizer_state, scheduler_state) -> None:
        for stage in range(first_round, self.cfg.rounds):
            self.progress = progress
            cfg = self._stage_config(stage)
            if not cfg.trains or not progress.finished(cfg):
                self._early_bird_start(stage, cfg, progress)
                progress = train_stage(
                    self.model, self.loaders, cfg, self.precision, self.ctx, self.run, stage=stage,
                    progress=progress, files=self.cfg.files, optimizer_state=optimizer_state,
                    scheduler_state=scheduler_state, checkpoint_extra=self._extra,
                    on_epoch_end=self._on_epoch_end(stage, cfg), conv1=self.cfg.conv1,
                    remaining=self.strategy.remaining(self.model), **self.stage_kwargs)
            self._finish_round(stage, progress)
            progress, optimizer_state, scheduler_state = StageProgress(), None, None

    def _finish_round(self, stage: int, progress: StageProgress) -> None:
        """Summarise the round, prune, rewind, and write the next round's ticket and checkpoint."""
        remaining = self.strategy.remaining(self.model)
        if self.ctx.is_main:
            history = progress.history
            row = progress.summary_row(stage, remaining, self.train_cfg.objective, spent_before=self.spent)
            if self.early_bird is not None:
                row["early_bird"] = self.early_bird.summary("itrs" if self.train_cfg.by_iterations else "epochs")
            self.run.log_round(row)
            if history["train"]:
                plot_training_curves(history, self.run.file(f"{stage}net_train.png"),
                                     title=f"round {stage}: {remaining:.2f}% of conv weights remain",
                                     **training_curve_labels(self.train_cfg))
            self._plot_summary()
        if stage == 0 and self.cfg.prune_type == "pt":
            distributed.barrier()
            best = load_file(self.run.file(self.cfg.files.best_of(0)), "best round-0 model")
            self.set_rewind_point(pruning.dense_state_dict(best["state_dict"]))
        if self.rewind_weights is None and self.cfg.prune_type != LRR:
            raise UserError("no rewind point was recorded (for rewind_lt, --rewind_epoch must lie "
                            "in [1, --epochs])")
        self.spent = self.spent + cost.of_stage(progress)
        self.early_bird = None
        self._prune(stage)
        if self.on_pruned is not None:
            self.on_pruned(self.model, stage + 1)
        if self.cfg.prune_type != LRR:  # learning-rate rewinding keeps the trained weights
            self.strategy.rewind(self.model, self.rewind_weights)
        self._write_ticket(stage + 1)
        self.progress = StageProgress()
        if stage + 1 < self.cfg.rounds and self.ctx.is_main:
            atomic_save({"state": stage + 1, "state_dict": self.model.state_dict(),
                         **self.progress.to_checkpoint(), **self._extra()},
                        self.run.file(self.cfg.files.checkpoint_of(stage + 1)))
        if not self.cfg.keep_finished and self.ctx.is_main:
            # Only now: a kill before the next round's checkpoint still resumes from this one.
            for name in (self.cfg.files.checkpoint_of(stage), self.cfg.files.best_of(stage)):
                if os.path.isfile(self.run.file(name)):
                    os.remove(self.run.file(name))

    def _prune(self, stage: int) -> None:
        rate = self._prune_rate(stage)
        strategy = self.strategy
        if rate != strategy.rate:  # the one-shot early-bird prune: the same strategy at another rate
            strategy = copy.copy(strategy)
            strategy.rate = rate
        strategy.prune(self.model, seed=self.cfg.seed * 7919 + stage)

    def _write_ticket(self, stage: int) -> None:
        if not self.ctx.is_main:
            return
        tickets.save_ticket(self.run.file(ticket_name(stage)), self.strategy.masks(self.model),
                                  round=stage, prune_type=self.cfg.prune_type,
                                  random_prune=self.cfg.random_prune, conv1=self.cfg.conv1,
                                  seed=self.cfg.seed, source=os.path.abspath(self.run.path), **self.cfg.meta)

    def _plot_summary(self) -> None:
        rows = self.run.summary()
        objective = self.train_cfg.objective
        label = ("random pruning" if self.cfg.random_prune else "IMP") + f" ({self.cfg.prune_type})"
        name = "accuracy" if objective.is_accuracy else objective.name
        plot_accuracy_vs_remaining({label: [(row["remaining"], row.get("reported", row.get("reported_acc"))) for row in rows]},
                                   self.run.file(f"{name}_vs_remaining.png"),
                                   title=f"{self.cfg.meta.get('arch')} on {self.cfg.meta.get('dataset')}",
                                   ylabel="accuracy (%)" if objective.is_accuracy else name)


def training_curve_labels(cfg: TrainConfig) -> dict:
    """Axis labels of a round's training curves: the objective's name, and epochs or iterations."""
    objective = cfg.objective
    return {"ylabel": "accuracy (%)" if objective.is_accuracy else objective.name,
            "xlabel": f"evaluation (every {cfg.val_interval} iterations)" if cfg.by_iterations else "epoch"}
