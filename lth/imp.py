"""Iterative magnitude pruning: train, prune 20 % of what remains, rewind, repeat; resumable."""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass

import torch
import torch.nn as nn

import pruning_utils
from lth import distributed
from lth.checkpoint import atomic_save, load_file
from lth.distributed import Context
from lth.engine import Precision
from lth.errors import UserError
from lth.plots import plot_accuracy_vs_remaining, plot_training_curves
from lth.runs import RunDir
from lth.trainer import Loaders, StageProgress, TrainConfig, restore_stage, train_stage

PRUNE_TYPES = ("lt", "pt", "rewind_lt", "pt_trans")
REWIND_TARGETS = {
    "lt": "the weights the run started from (random init)",
    "rewind_lt": "the weights after epoch --rewind_epoch of round 0",
    "pt": "the best-validation dense model of round 0",
    "pt_trans": "the pre-trained weights (--pretrained)",
}
CHECKPOINT_FORMAT = "lth-imp"


@dataclass
class ImpConfig:
    rounds: int
    rate: float
    prune_type: str
    random_prune: bool
    conv1: bool
    rewind_epoch: int
    seed: int
    meta: dict  # copied into every ticket: arch, dataset, ...


def ticket_name(round_index: int) -> str:
    return f"ticket_{round_index:02d}.pt"


class ImpRun:
    """One IMP experiment in one ``--save_dir``.

    Round r trains with the mask of ``ticket_{r:02d}.pt``; after training, ``rate`` of the
    remaining conv weights are pruned globally, every weight is rewound to the target of the
    prune type, and the next round's ticket and checkpoint are written. The ticket made after
    the last round is written too (never trained, as in the original).
    """

    def __init__(self, model: nn.Module, loaders: Loaders, train_cfg: TrainConfig, imp_cfg: ImpConfig,
                 precision: Precision, ctx: Context, run: RunDir, args: dict):
        self.model, self.loaders, self.train_cfg, self.cfg = model, loaders, train_cfg, imp_cfg
        self.precision, self.ctx, self.run, self.args = precision, ctx, run, args
        self.rewind_weights: dict | None = None

    # -- checkpoint payload ------------------------------------------------------------------
    def _extra(self) -> dict:
        return {"format": CHECKPOINT_FORMAT, "init_weight": self.rewind_weights, "args": self.args,
                "seed": self.cfg.seed, "prune_type": self.cfg.prune_type, "arch": self.cfg.meta.get("arch"),
                "dataset": self.cfg.meta.get("dataset")}

    def _on_epoch_end(self, stage: int):
        def capture(epoch: int) -> None:
            if self.cfg.prune_type == "rewind_lt" and stage == 0 and epoch == self.cfg.rewind_epoch:
                self.rewind_weights = pruning_utils.dense_state_dict(self.model)
                if self.ctx.is_main:
                    atomic_save(self.rewind_weights, self.run.file(f"epoch_{epoch}_rewind_weight.pt"))
        return capture

    # -- driving -----------------------------------------------------------------------------
    def start(self) -> None:
        """Fresh run: the starting weights are the rewind point for lt and pt_trans."""
        if self.cfg.prune_type in ("lt", "pt_trans"):
            self.rewind_weights = pruning_utils.dense_state_dict(self.model)
        self._write_ticket(0)
        self._train_from(0, StageProgress(), None, None)

    def resume(self, checkpoint_path: str | None = None) -> None:
        checkpoint, progress = restore_stage(self.model, self.run, CHECKPOINT_FORMAT, self.args,
                                             self.cfg.conv1, checkpoint_path)
        self.rewind_weights = checkpoint.get("init_weight")
        state = int(checkpoint["state"])
        self._train_from(state, progress, checkpoint.get("optimizer"), checkpoint.get("scheduler"))

    def _train_from(self, first_round: int, progress: StageProgress, optimizer_state, scheduler_state) -> None:
        for stage in range(first_round, self.cfg.rounds):
            progress = train_stage(
                self.model, self.loaders, self.train_cfg, self.precision, self.ctx, self.run,
                stage=stage, prefix=str(stage), progress=progress, optimizer_state=optimizer_state,
                scheduler_state=scheduler_state, checkpoint_extra=self._extra,
                on_epoch_end=self._on_epoch_end(stage), conv1=self.cfg.conv1)
            self._finish_round(stage, progress)
            progress, optimizer_state, scheduler_state = StageProgress(), None, None

    def _finish_round(self, stage: int, progress: StageProgress) -> None:
        """Summarise the round, prune, rewind, and write the next round's ticket and checkpoint."""
        remaining = pruning_utils.sparsity(self.model, self.cfg.conv1)["remaining"]
        if self.ctx.is_main:
            self.run.log_round({"round": stage, "remaining": round(remaining, 4),
                                "best_epoch": progress.best_epoch, "best_val_acc": progress.best_val,
                                "test_acc_at_best_val": progress.test_at_best,
                                "final_test_acc": progress.history["test_ta"][-1] if progress.history["test_ta"] else math.nan})
            plot_training_curves(progress.history, self.run.file(f"{stage}net_train.png"),
                                 title=f"round {stage}: {remaining:.2f}% of conv weights remain")
            self._plot_summary()
        if stage == 0 and self.cfg.prune_type == "pt":
            distributed.barrier()
            best = load_file(self.run.file("0model_SA_best.pth.tar"), "best round-0 model")
            self.rewind_weights = pruning_utils.dense_state_dict(best["state_dict"])
        if self.rewind_weights is None:
            raise UserError("no rewind point was recorded (for rewind_lt, --rewind_epoch must be "
                            "smaller than --epochs)")
        pruning_utils.global_prune(self.model, self.cfg.rate, random=self.cfg.random_prune,
                                   conv1=self.cfg.conv1, generator_seed=self.cfg.seed * 7919 + stage)
        pruning_utils.sync_masks(self.model)
        pruning_utils.rewind(self.model, self.rewind_weights, conv1=self.cfg.conv1)
        self._write_ticket(stage + 1)
        if stage + 1 < self.cfg.rounds and self.ctx.is_main:
            atomic_save({"state": stage + 1, "state_dict": self.model.state_dict(),
                         **StageProgress().to_checkpoint(), **self._extra()},
                        self.run.file(f"{stage + 1}checkpoint.pth.tar"))

    def _write_ticket(self, stage: int) -> None:
        if not self.ctx.is_main:
            return
        masks = pruning_utils.current_masks(self.model, self.cfg.conv1)
        pruning_utils.save_ticket(self.run.file(ticket_name(stage)), masks, round=stage,
                                  prune_type=self.cfg.prune_type, random_prune=self.cfg.random_prune,
                                  conv1=self.cfg.conv1, seed=self.cfg.seed,
                                  source=os.path.abspath(self.run.path), **self.cfg.meta)

    def _plot_summary(self) -> None:
        rows = self.run.summary()
        label = ("random pruning" if self.cfg.random_prune else "IMP") + f" ({self.cfg.prune_type})"
        plot_accuracy_vs_remaining({label: [(row["remaining"], row["test_acc_at_best_val"]) for row in rows]},
                                   self.run.file("accuracy_vs_remaining.png"),
                                   title=f"{self.cfg.meta.get('arch')} on {self.cfg.meta.get('dataset')}")
