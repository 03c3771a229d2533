"""Training cost of a run: epochs or iterations, samples seen and wall seconds, cumulative over IMP rounds.

A stage's own cost is kept in its ``StageProgress`` (``images``, ``seconds``, and the epochs or
iterations it trained), which every checkpoint carries, counted by ``lth.trainer.CountCost`` after each
chunk; the cost of the rounds before it is kept by the IMP driver (``ImpRun.spent``, in every
checkpoint under ``"cost"``). Only work that reached a
checkpoint counts: the chunk a kill interrupts is redone after ``--resume`` and counted once, so the
columns of a resumed run equal those of an uninterrupted one (wall seconds aside, which are measured).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Mapping

COLUMNS = ("cost_epochs", "cost_itrs", "cost_images", "cost_seconds", "round_images", "round_seconds")


@dataclass(frozen=True)
class Cost:
    """Training spent: epochs (stages counted in epochs), iterations (stages counted in optimizer
    steps), training samples (the ``count`` the task's step reports: images, image pairs for the
    contrastive steps) and wall seconds of training and evaluation (pruning and file writes left out)."""
    epochs: int = 0
    itrs: int = 0
    images: int = 0
    seconds: float = 0.0

    def __add__(self, other: "Cost") -> "Cost":
        return Cost(self.epochs + other.epochs, self.itrs + other.itrs, self.images + other.images,
                    self.seconds + other.seconds)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, value: Mapping | None) -> "Cost":
        """A checkpoint's ``"cost"`` entry; a checkpoint written before cost was recorded has none (zero)."""
        if not isinstance(value, Mapping):
            return cls()
        return cls(int(value.get("epochs", 0)), int(value.get("itrs", 0)), int(value.get("images", 0)),
                   float(value.get("seconds", 0.0)))

    @classmethod
    def from_row(cls, row: Mapping) -> "Cost":
        """The cumulative cost a summary row records (zero for a row written before cost was recorded)."""
        return cls(int(row.get("cost_epochs") or 0), int(row.get("cost_itrs") or 0),
                   int(row.get("cost_images") or 0), float(row.get("cost_seconds") or 0.0))


def of_stage(progress) -> Cost:
    """The cost of one stage so far, from its ``StageProgress`` (trained epochs, or iterations)."""
    if progress.next_itr is not None:
        return Cost(itrs=int(progress.next_itr), images=int(progress.images), seconds=float(progress.seconds))
    return Cost(epochs=int(progress.next_epoch), images=int(progress.images), seconds=float(progress.seconds))


def columns(before: Cost, progress) -> dict:
    """The cost columns of a summary row (added by both drivers): ``cost_*`` cumulative over the run's
    rounds up to and including this one (``before`` is the rounds before), ``round_*`` this round's
    alone, and ``early_stopped`` when an early-bird stop ended it before its schedule."""
    stage = of_stage(progress)
    total = before + stage
    unit = {"cost_itrs": total.itrs} if progress.next_itr is not None else {"cost_epochs": total.epochs}
    row = {**unit, "cost_images": total.images, "cost_seconds": round(total.seconds, 3),
           "round_images": stage.images, "round_seconds": round(stage.seconds, 3)}
    if progress.stopped:
        row["early_stopped"] = True
    return row
