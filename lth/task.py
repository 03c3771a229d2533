"""A task: one experiment's hparams and the pieces it brings to the two drivers.

The drivers are ``lth.imp.ImpRun`` (iterative magnitude pruning, any number of rounds) and
``lth.once.train_once`` (one training, no pruning: transfer, controls, dense pre-training). Both
take ``(task, hparams, session)`` and ask the task, never the command line, for what they need:

* data and model: ``build(session)`` sets ``loaders``, ``model``, ``cfg`` (``TrainConfig``, its
  ``objective`` the metric with its own label) and ``strategy`` (``lth.imp.PruneStrategy``: what is
  pruned, and the task's one rewind rule, ``PruneStrategy.rewind_point``);
* the loss and the evaluation: ``step(model, batch) -> StepResult`` and
  ``evaluate(model, loader, desc) -> dict`` (the objective's key among its figures);
* what its run folder holds: ``files`` (checkpoint, best-model and curve names),
  ``checkpoint_format`` and ``checkpoint_extra(progress)`` (the original's keys), its summary row
  and the files it writes when a training ends.

Every method has a default but ``make_loaders``, ``make_model``, ``train_config``, ``step`` and
``evaluate``. docs/CORE.md shows a task plugged in; tests/test_core_task.py is the worked example.
The hparams are read by attribute (an ``argparse.Namespace`` or a dataclass), with the flags' names.
"""

from __future__ import annotations

from typing import Callable

import torch.nn as nn

from lth.engine import StepResult
from lth.errors import UserError
from lth.imp import ImpConfig, PruneStrategy
from lth.loaders import Loaders
from lth.plots import plot_training_curves
from lth.runs import RunDir
from lth.session import Session
from lth.trainer import Objective, StageFiles, StageProgress, TrainConfig, Work


class Task:
    """One experiment: its hparams and what it trains, evaluates, prunes and writes."""

    checkpoint_format = "lth-task"  # the "format" of its checkpoints; a resume checks it
    files = StageFiles()
    save_best = True  # keep the best-validation model (files.best)

    def __init__(self, hparams):
        self.hparams = hparams
        self.session: Session | None = None
        self.loaders: Loaders | None = None
        self.model: nn.Module | None = None
        self.cfg: TrainConfig | None = None
        self.strategy: PruneStrategy | None = None

    # -- built once the session (device, seed, run folder) is open ---------------------------------
    def build(self, session: Session) -> None:
        """Data, model, training config and pruning strategy, in that order."""
        self.session = session
        self.loaders = self.make_loaders()
        self.model = self.make_model()
        self.cfg = self.train_config()
        self.strategy = self.make_strategy()

    def make_loaders(self) -> Loaders:
        raise NotImplementedError

    def make_model(self) -> nn.Module:
        """The network on the session's device, initialised from the seed (start weights loaded)."""
        raise NotImplementedError

    def train_config(self) -> TrainConfig:
        raise NotImplementedError

    def make_strategy(self) -> PruneStrategy:
        """What is pruned and the rewind rule; by default the whole model, magnitude, lt."""
        return PruneStrategy(0.2)

    @property
    def objective(self) -> Objective:
        return self.cfg.objective

    @property
    def run(self) -> RunDir:
        return self.session.run

    # -- one training step and one evaluation ---------------------------------------------------------
    def step(self, model: nn.Module, batch) -> StepResult:
        raise NotImplementedError

    def evaluate(self, model: nn.Module, loader, desc: str) -> dict:
        raise NotImplementedError

    def after_step(self, train_model: nn.Module) -> Callable[[], None] | None:
        """Run after every optimizer step (MoCo's momentum update); None: nothing."""
        return None

    def work(self) -> Work:
        """The task's pieces as ``lth.trainer.train_stage`` takes them."""
        return Work(self.loaders, self.step, self.evaluate, self.after_step)

    # -- what its runs write -----------------------------------------------------------------------
    def checkpoint_extra(self, progress: StageProgress) -> dict:
        """Entries every checkpoint carries beside the weights (``format`` and ``args`` are added)."""
        return {}

    def summary_row(self, progress: StageProgress, stage: int, remaining: float) -> dict:
        """The summary line of a finished round or training."""
        return progress.summary_row(stage, remaining, self.objective)

    def record_summary(self, row: dict, progress: StageProgress) -> None:
        """Write the summary row of a finished round or training (rank 0 only): into ``outputs``'
        summary.jsonl by default, in place of an earlier row of the same round (a round done again)."""
        self.outputs.log_round(row, replace="round")

    def curves_title(self, stage: int, remaining: float) -> str:
        return f"{remaining:.2f}% of conv weights remain"

    def plot_curves(self, progress: StageProgress, stage: int, title: str) -> None:
        """The training curves of a round (``files.curves``), when it trained (rank 0 only)."""
        if self.files.curves and progress.history["train"]:
            plot_training_curves(progress.history, self.run.file(self.files.curves_of(stage)), title=title,
                                 **training_curve_labels(self.cfg))

    def finished(self, progress: StageProgress, row: dict) -> None:
        """After a one-off training on rank 0: the task's own outputs and last words."""

    # -- IMP (lth.imp.ImpRun) -------------------------------------------------------------------------
    def imp_config(self) -> ImpConfig:
        raise UserError(f"{type(self).__name__} is not an IMP task")

    @property
    def outputs(self) -> RunDir:
        """Where IMP writes tickets, summary.jsonl and the metric-vs-remaining plot (the run's folder)."""
        return self.run

    def begin_round(self, stage: int) -> None:
        """Called on every rank before round ``stage`` trains (or, resumed, continues)."""

    def save_round(self, model: nn.Module, next_round: int) -> None:
        """After round ``next_round - 1`` is pruned, before the rewind, on every rank: the task's
        own file of the pruned, trained model (detection's ``backbone_imp{k}.pth``)."""

    def load_round(self, model: nn.Module, round_index: int) -> bool:
        """Put round ``round_index``'s masks (and whatever it keeps of the previous round) on the
        freshly built model, from ``save_round``'s file; ImpRun then rewinds it. False: nothing
        to load (a task without such files starting at round 0)."""
        if round_index:
            raise UserError(f"{type(self).__name__} keeps no per-round files: it cannot start at round "
                            f"{round_index}")
        return False


def training_curve_labels(cfg: TrainConfig) -> dict:
    """Axis labels of a round's training curves: the objective's label, and epochs or iterations."""
    return {"ylabel": cfg.objective.axis_label,
            "xlabel": f"evaluation (every {cfg.val_interval} iterations)" if cfg.by_iterations else "epoch"}
