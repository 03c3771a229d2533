"""Iterative magnitude pruning: train, prune 20 % of what remains, rewind, repeat; resumable.

``ImpRun(task, hparams, session)`` runs the rounds of any ``lth.task.Task``. What is pruned and
the one rewind rule of the task are its ``PruneStrategy`` (``prune``/``rewind`` and
``rewind_point``; ``BackbonePruning`` for a network that holds a ResNet under ``model.backbone``).
Issue 17: a strategy of prune type ``lrr`` (learning-rate rewinding) is never rewound after a prune;
early-bird stopping (``lth.earlybird``) may end a round once its mask has settled; every summary row
carries the training cost (``lth.cost``), cumulative over the rounds.
See docs/CORE.md.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass

import torch.nn as nn

from lth import cost, pruning, tickets
from lth import distributed
from lth.checkpoint import atomic_save, load_file
from lth.earlybird import EarlyBird, EarlyBirdConfig, config_of, draw_mask, rate_to
from lth.errors import UserError
from lth.hparams import LRR_HELP
from lth.plots import plot_accuracy_vs_remaining
from lth.runs import ticket_name
from lth.session import Session, hparams_dict
from lth.trainer import StageProgress, TrainConfig, apply_checkpoint_masks, restore_stage, stage_hooks, train_stage

PRUNE_TYPES = ("lt", "pt", "rewind_lt", "pt_trans", "lrr")
LRR = "lrr"  # learning-rate rewinding: the prune type that keeps the trained weights (no rewind)
REWIND_TARGETS = {
    "lt": "the weights the run started from (random init)",
    "rewind_lt": "the weights after the first --rewind_epoch epochs of round 0",
    "pt": "the best-validation dense model of round 0",
    "pt_trans": "the pre-trained weights (--pretrained)",
    "lrr": "none: " + LRR_HELP.split(": ", 1)[1],
}
CHECKPOINT_FORMAT = "lth-imp"
REWIND_FILE = "rewind_point.pth.tar"  # the rewind weights, written once (ImpConfig.rewind_store "file")
REWIND_FORMAT = "lth-rewind-point"


REWIND_STORES = ("checkpoint", "file", "task")


@dataclass
class ImpConfig:
    """How a task's IMP runs: rounds, seed, ticket metadata, and where the rewind point is kept."""
    rounds: int
    seed: int
    meta: dict  # copied into every ticket and checkpoint: arch, dataset, ...
    train_round0: bool = True  # False: round 0 only evaluates, then prunes one-shot (ImageNet, SimCLR, MoCo)
    # "checkpoint": every checkpoint carries the rewind weights as ``init_weight`` (the original's
    # layout, kept by the classification scripts, whose files are read with --dict_key init_weight).
    # "file": they are written once to REWIND_FILE (same key) when they are set, and checkpoints
    # name that file as ``rewind_point``: large models write no unchanged copy per epoch.
    # "task": nothing is written; on resume the strategy's rule gives them again (segmentation's
    # seg_backbone_imp0.pth).
    rewind_store: str = "file"
    title: str | None = None  # of the metric-vs-remaining plot (default: "{arch} on {dataset}")
    # False: no ticket for the round a fresh run starts from (the dense ticket_00.pt; a later
    # round's was written by the round before). Segmentation's original layout has none.
    start_ticket: bool = True
    # False: once a round is finished (its pruned successor's files written), its resumable
    # checkpoint and best-model copy are deleted; a round's lasting record is then its ticket and
    # the task's own files (detection's backbone_imp{k+1}.pth). True keeps every file.
    keep_finished: bool = True
    # Early-bird stopping (lth.earlybird); None: ImpRun takes it from the hparams' early-bird fields
    # (lth.hparams.EarlyBird), and without them every round trains to the end of its schedule.
    early_bird: EarlyBirdConfig | None = None

    def __post_init__(self) -> None:
        if self.rewind_store not in REWIND_STORES:
            raise ValueError(f"rewind_store must be one of {REWIND_STORES}, got {self.rewind_store!r}")


@dataclass(frozen=True)
class Moment:
    """When ``ImpRun`` asks a strategy's rewind rule for the rewind point.

    ``kind``: ``start`` (a fresh start, before round ``round`` trains, the model as built),
    ``resume`` (a run resumed in round ``round``), ``evaluated`` (after an evaluation of round
    ``round``, ``trained`` epochs into it) or ``trained`` (the round's training is over, before its
    prune).
    """
    kind: str
    round: int
    trained: int = 0


class PruneStrategy:
    """How a task prunes, rewinds and describes a model by its masks; by default the whole model.

    ``rewind_point`` is the task's one rewind rule (which weights later rounds go back to) and
    ``rewind`` applies it; scripts whose model wraps the pruned network (MoCo's two encoders) or
    that rewind only part of it (detection, SimCLR) subclass it.
    """

    def __init__(self, rate: float, random: bool = False, conv1: bool = False, prune_type: str = "lt",
                 rewind_epoch: int | None = None):
        self.rate, self.random, self.conv1 = rate, random, conv1
        self.prune_type, self.rewind_epoch = prune_type, rewind_epoch

    def target(self, model: nn.Module) -> nn.Module:
        """The network whose convs are pruned and whose masks make the ticket."""
        return model

    def prune(self, model: nn.Module, seed: int) -> None:
        target = self.target(model)
        pruning.global_prune(target, self.rate, random=self.random, conv1=self.conv1,
                                   generator_seed=seed)
        pruning.sync_masks(target)

    def rewind_point(self, imp: "ImpRun", moment: Moment) -> dict | None:
        """THE rewind rule: the weights every later round rewinds to, if ``moment`` is when they
        are taken; None otherwise (the run keeps the point it has; on resume, the one its
        checkpoint recorded).

        This default is the classification scripts' rule, by ``prune_type``: ``lt`` and
        ``pt_trans`` the weights the run starts from (random init, pre-trained weights); ``rewind_lt``
        the weights after ``rewind_epoch`` epochs of round 0 (also saved as the original's
        ``epoch_{k}_rewind_weight.pt``); ``pt`` the best-validation model of round 0.
        """
        kind = self.prune_type
        if moment.kind == "start" and kind in ("lt", "pt_trans"):
            return pruning.dense_state_dict(imp.model)
        if (moment.kind == "evaluated" and kind == "rewind_lt" and moment.round == 0
                and moment.trained == self.rewind_epoch):
            weights = pruning.dense_state_dict(imp.model)
            if imp.ctx.is_main:
                atomic_save(weights, imp.run.file(f"epoch_{moment.trained}_rewind_weight.pt"))
            return weights
        if moment.kind == "trained" and kind == "pt" and moment.round == 0:
            distributed.barrier()
            best = load_file(imp.run.file(imp.files.best_of(0)), "best round-0 model")
            return pruning.dense_state_dict(best["state_dict"])
        return None

    def rewind(self, model: nn.Module, weights: dict) -> None:
        """Put the rewind point's weights back, keeping the masks."""
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

    def __init__(self, rate: float, random: bool = False, conv1: bool = False, attribute: str = "backbone",
                 prune_type: str = "lt"):
        super().__init__(rate, random, conv1, prune_type=prune_type)
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


def examples_checkpoint_keys(strategy: PruneStrategy, model: nn.Module, progress: StageProgress) -> dict:
    """Keys the original ImageNet/VisDA scripts (pytorch/examples style) keep in every checkpoint.

    ``arch`` and ``init_weight`` are already there. ``mask`` is None before the first prune, as in
    the original.
    """
    pruned = any(pruning.is_pruned(module) for module in strategy.target(model).modules())
    return {"best_acc1": max(progress.best_val, 0.0), "if_pruned": pruned,
            "mask": pruning.extract_mask(strategy.target(model)) if pruned else None}


class ImpRun:
    """One IMP experiment of ``task`` in the session's run folder.

    Round r trains with the mask of ``ticket_{r:02d}.pt``; after training, ``rate`` of the
    remaining conv weights are pruned globally, every weight is rewound as the task's strategy
    says, and the next round's ticket and checkpoint are written. The ticket made after the last
    round is written too (never trained, as in the original). Tickets, summary.jsonl and the
    metric-vs-remaining plot go to ``task.outputs`` (the run folder unless the task keeps each
    round in a folder of its own, as segmentation does).

    ``start(first_round=k)`` continues rounds an earlier process ran (the originals' one process
    per round): the task's ``load_round`` puts round k's masks on the model, which is then rewound.
    """

    def __init__(self, task, hparams, session: Session):
        self.task, self.hparams, self.session = task, hparams, session
        self.model, self.loaders, self.train_cfg = task.model, task.loaders, task.cfg
        self.strategy: PruneStrategy = task.strategy
        self.cfg: ImpConfig = task.imp_config()
        self.files = task.files
        self.precision, self.ctx, self.run = session.precision, session.ctx, session.run
        self.outputs = task.outputs
        self.args = hparams_dict(hparams)
        self.rewind_weights: dict | None = None
        # The progress of the round the model is in (what checkpoint_extra reads, e.g. for best_acc1).
        self.progress = StageProgress()
        if self.cfg.early_bird is None:
            self.cfg.early_bird = config_of(hparams)
        if self.cfg.early_bird is not None and self.strategy.random:
            raise UserError("early-bird stopping waits for the magnitude mask to settle; random pruning draws "
                            "masks that do not depend on training: drop one of the two")
        # The training cost of the rounds before the current one (lth.cost), and the early-bird
        # search of the current round when one applies (lth.earlybird); both in every checkpoint.
        self.spent = cost.Cost()
        self.early_bird: EarlyBird | None = None

    @property
    def lrr(self) -> bool:
        """Learning-rate rewinding (Renda et al. 2020): after a prune the trained weights stay (no
        rewind); every round builds a fresh optimizer and schedule, so the schedule replays."""
        return self.strategy.prune_type == LRR

    # -- the rewind point --------------------------------------------------------------------
    def _take_rewind_point(self, moment: Moment) -> None:
        weights = self.strategy.rewind_point(self, moment)
        if weights is not None:
            self.set_rewind_point(weights)

    def set_rewind_point(self, weights: dict | None) -> None:
        """The weights every later round rewinds to; written once to REWIND_FILE (``rewind_store="file"``)."""
        self.rewind_weights = weights
        if weights is not None and self.cfg.rewind_store == "file" and self.ctx.is_main:
            atomic_save({"format": REWIND_FORMAT, "init_weight": weights}, self.run.file(REWIND_FILE))

    def _require_rewind_point(self) -> None:
        if self.rewind_weights is None and not self.lrr:
            raise UserError("no rewind point was recorded (for rewind_lt, --rewind_epoch must lie "
                            "in [1, --epochs])")

    def _rewind(self) -> None:
        self._require_rewind_point()
        if self.rewind_weights is not None:  # under LRR only the start of round 0, where a strategy gives one
            self.strategy.rewind(self.model, self.rewind_weights)

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

    # -- checkpoint payload ------------------------------------------------------------------
    def _extra(self) -> dict:
        store = self.cfg.rewind_store
        if store == "checkpoint":
            rewind = {"init_weight": self.rewind_weights}
        elif store == "file":
            rewind = {"rewind_point": REWIND_FILE if self.rewind_weights is not None else None}
        else:
            rewind = {}
        return {"format": self.task.checkpoint_format, **rewind, "args": self.args,
                "seed": self.cfg.seed, "prune_type": self.strategy.prune_type, **self.cfg.meta,
                "cost": self.spent.to_dict(),
                "early_bird": self.early_bird.state_dict() if self.early_bird is not None else None,
                **self._experiment(), **self.task.checkpoint_extra(self.progress)}

    def _experiment(self) -> dict:
        """``{"experiment": id}`` of the run (see lth.hparams), for its tickets and checkpoints."""
        return {"experiment": self.run.experiment["id"]} if self.run.experiment else {}

    def _on_evaluated(self, stage: int, cfg: TrainConfig):
        def after_evaluation(position: int) -> None:
            self._take_rewind_point(Moment("evaluated", stage, position + 1))
            if self.early_bird is not None:  # position: epoch index, or iterations done
                self._early_bird_draw(stage, position if cfg.by_iterations else position + 1, cfg)
        return after_evaluation

    # -- early-bird stopping and the rate of each prune -----------------------------------------
    def _prune_rate(self, stage: int) -> float:
        """The share of the surviving weights the prune after round ``stage`` removes: the strategy's
        rate, or for round 0 of a one-shot early-bird search what reaches its sparsity."""
        eb = self.cfg.early_bird
        if stage == 0 and eb is not None and eb.sparsity is not None:
            return rate_to(eb.sparsity, self.strategy.remaining(self.model))
        return self.strategy.rate

    def _early_bird_start(self, stage: int, cfg: TrainConfig, progress: StageProgress) -> None:
        """Before round ``stage`` trains: its search starts with the mask of its starting weights
        (the authors draw one before the first epoch); a resumed round keeps its checkpointed search."""
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
        # rewind_lt's rewind point is taken after --rewind_epoch epochs of round 0: never stopped before it.
        waiting = self.strategy.prune_type == "rewind_lt" and self.rewind_weights is None
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
        """A fresh run from round ``first_round``: the rule's ``start`` point is taken; a later
        round first gets what the previous one left (``task.load_round``) and is rewound."""
        self._take_rewind_point(Moment("start", first_round))
        # Under LRR a later round continues from the weights its predecessor trained (load_round's).
        if self.task.load_round(self.model, first_round) and not (self.lrr and first_round):
            self._rewind()
        if first_round:  # lines a killed earlier attempt at this round left before its first checkpoint
            self.run.rewind_logs(first_round, 0)
            self.run.rewind_logs(first_round, 1, key="itr")
            # The earlier rounds ran in earlier processes: their cost is in their summary rows.
            earlier = [row for row in self.outputs.summary() if row.get("round", 0) < first_round]
            self.spent = cost.Cost.from_row(max(earlier, key=lambda row: row.get("round", 0))) if earlier else cost.Cost()
        if self.cfg.start_ticket:
            self._write_ticket(first_round)
        self._train_from(first_round, StageProgress())

    def resume(self, checkpoint_path: str | None = None) -> None:
        if checkpoint_path is None:
            checkpoints = self.run.checkpoints()
            checkpoint_path = checkpoints[max(checkpoints)]
        checkpoint, progress = restore_stage(self.model, self.run, self.task.checkpoint_format, self.args,
                                             self.strategy.conv1, checkpoint_path, apply_masks=self.strategy.restore)
        self.rewind_weights = self._read_rewind_point(checkpoint, checkpoint_path)
        self.spent = cost.Cost.from_dict(checkpoint.get("cost"))
        searched = checkpoint.get("early_bird")
        self.early_bird = EarlyBird.from_state_dict(searched) if searched else None
        self._take_rewind_point(Moment("resume", int(checkpoint["state"])))
        self._train_from(int(checkpoint["state"]), progress)

    def _train_from(self, first_round: int, progress: StageProgress) -> None:
        self.run.flush_record()  # every check has passed: a resumed run's run.json entry is written now
        for stage in range(first_round, self.cfg.rounds):
            self.progress = progress
            self.task.begin_round(stage)
            cfg = self._stage_config(stage)
            if not cfg.trains or not progress.finished(cfg):
                self._early_bird_start(stage, cfg, progress)
                hooks = stage_hooks(self.run, self.strategy.remaining(self.model), self.files,
                                    checkpoint_extra=self._extra, save_best=self.task.save_best,
                                    after_evaluation=self._on_evaluated(stage, cfg))
                progress = train_stage(self.model, self.task.work(), cfg, self.ctx, self.precision, stage=stage,
                                       progress=progress, hooks=hooks)
            self._finish_round(stage, progress)
            progress = StageProgress()

    def _finish_round(self, stage: int, progress: StageProgress) -> None:
        """Summarise the round, prune, write the next round's ticket, rewind, write its checkpoint."""
        remaining = self.strategy.remaining(self.model)
        if self.ctx.is_main:
            row = {**self.task.summary_row(progress, stage, remaining), **cost.columns(self.spent, progress)}
            if self.early_bird is not None:
                row["early_bird"] = self.early_bird.summary("itrs" if progress.next_itr is not None else "epochs")
            self.task.record_summary(row, progress)
            self.task.plot_curves(progress, stage, f"round {stage}: {self.task.curves_title(stage, remaining)}")
            self._plot_summary()
        self._take_rewind_point(Moment("trained", stage))
        self._require_rewind_point()
        self.spent = self.spent + cost.of_stage(progress)
        self.early_bird = None
        self._prune(stage)
        self._write_ticket(stage + 1)
        self.task.save_round(self.model, stage + 1)
        if not self.lrr:
            self._rewind()
        self.progress = StageProgress()
        if stage + 1 < self.cfg.rounds and self.ctx.is_main:
            atomic_save({"state": stage + 1, "state_dict": self.model.state_dict(),
                         **self.progress.to_checkpoint(), **self._extra()},
                        self.run.file(self.files.checkpoint_of(stage + 1)))
        if not self.cfg.keep_finished and self.ctx.is_main:
            # Only now: a kill before the next round's checkpoint still resumes from this one.
            for name in (self.files.checkpoint_of(stage), self.files.best_of(stage)):
                if os.path.isfile(self.run.file(name)):
                    os.remove(self.run.file(name))

    def _prune(self, stage: int) -> None:
        rate, strategy = self._prune_rate(stage), self.strategy
        if rate != strategy.rate:  # the one-shot early-bird prune: the same strategy at another rate
            strategy = copy.copy(strategy)
            strategy.rate = rate
        strategy.prune(self.model, seed=self.cfg.seed * 7919 + stage)

    def _write_ticket(self, stage: int) -> None:
        if not self.ctx.is_main:
            return
        strategy = self.strategy
        tickets.save_ticket(self.outputs.file(ticket_name(stage)), strategy.masks(self.model),
                            round=stage, prune_type=strategy.prune_type, random_prune=strategy.random,
                            conv1=strategy.conv1, seed=self.cfg.seed, source=os.path.abspath(self.outputs.path),
                            **self.cfg.meta, **self._experiment())

    def _plot_summary(self) -> None:
        rows = self.outputs.summary()
        objective = self.train_cfg.objective
        label = ("random pruning" if self.strategy.random else "IMP") + f" ({self.strategy.prune_type})"
        title = self.cfg.title or f"{self.cfg.meta.get('arch')} on {self.cfg.meta.get('dataset')}"
        plot_accuracy_vs_remaining({label: [(row["remaining"], row.get("reported", row.get("reported_acc")))
                                            for row in rows]},
                                   self.outputs.file(f"{objective.file_stem}_vs_remaining.png"),
                                   title=title, ylabel=objective.axis_label)
