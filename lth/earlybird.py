"""Early-bird tickets (You et al., ICLR 2020): stop a round's training once the mask it would prune to has settled.

The rule is the authors' (``EarlyBird`` in GATECH-EIC/Early-Bird-Tickets, main.py): a mask is drawn
at the start of training and after every epoch and put into a first-in-first-out queue of ``window``
masks (their ``epoch_keep``, 5); once the queue is full, the normalised Hamming distance between the
newest mask and each older one in the queue is computed (``1 - mean(new == old)``), and the ticket
has emerged when none of them exceeds ``threshold`` (0.1). With a window of 5 the earliest stop is
after 4 trained epochs (masks after 0, 1, 2, 3 and 4 epochs).

What differs from the paper (docs/notes/costs.md): the mask is the toolkit's global magnitude mask
of the pruned convs at the target sparsity (what ``PruneStrategy.prune`` would keep if it pruned
now), not channels ranked by batch-norm scale; masks are drawn at each evaluation (every epoch by
default; every ``--val_interval`` iterations for a stage counted in iterations); and the distance is
normalised by the weights that survive at the round's start (all of them in a dense round, the
paper's case), so that a threshold means the same in every IMP round.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from lth import pruning
from lth.errors import UserError

THRESHOLD = 0.1  # the authors' distance threshold
WINDOW = 5  # the authors' queue length (epoch_keep)


@dataclass(frozen=True)
class EarlyBirdConfig:
    """When the IMP driver stops a round early.

    ``sparsity`` (share of the pruned convs' weights removed, e.g. 0.9) makes round 0 a one-shot
    search: it trains only until the mask at that sparsity has settled, and the first prune goes
    straight to it. ``every_round`` stops every round once the mask of its own prune (``--rate``
    of what remains; the one-shot sparsity in round 0) has settled.
    """
    threshold: float = THRESHOLD
    window: int = WINDOW
    sparsity: float | None = None
    every_round: bool = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold < 1.0:
            raise UserError(f"--eb_threshold must lie in [0, 1), got {self.threshold}")
        if self.window < 2:
            raise UserError(f"--eb_window must be at least 2 (masks compared), got {self.window}")
        if self.sparsity is not None and not 0.0 < self.sparsity < 1.0:
            raise UserError(f"--early_bird_sparsity must lie strictly between 0 and 1, got {self.sparsity}")

    def applies_to(self, stage: int) -> bool:
        """Whether round ``stage`` stops when its ticket emerges."""
        return self.every_round or (stage == 0 and self.sparsity is not None)


def config_of(hparams) -> EarlyBirdConfig | None:
    """The ``EarlyBirdConfig`` of a script's hparams (``lth.hparams.EarlyBird``'s fields), or None when
    neither mode is asked for (or the hparams have no such fields); a bad value is a ``UserError``."""
    every_round, sparsity = getattr(hparams, "early_bird", False), getattr(hparams, "early_bird_sparsity", None)
    if not every_round and sparsity is None:
        return None
    if getattr(hparams, "random_prune", False):
        raise UserError("--early_bird waits for the magnitude mask to settle, but --random_prune draws masks "
                        "that do not depend on training: drop one of the two")
    return EarlyBirdConfig(threshold=hparams.eb_threshold, window=hparams.eb_window, sparsity=sparsity,
                           every_round=bool(every_round))


def rate_to(sparsity: float, remaining_percent: float) -> float:
    """The share of the surviving weights to prune so that ``sparsity`` of all of them are pruned."""
    keep, remaining = 1.0 - sparsity, remaining_percent / 100.0
    if keep >= remaining:
        raise UserError(f"--early_bird_sparsity {sparsity:g} keeps {100 * keep:.4g} % of the weights, but only "
                        f"{remaining_percent:.4g} % remain: choose a higher sparsity")
    return 1.0 - keep / remaining


def draw_mask(network: nn.Module, rate: float, conv1: bool = False) -> torch.Tensor:
    """The keep-mask that a global magnitude prune of ``rate`` of the surviving conv weights of
    ``network`` would leave now (the rule and tie-breaking of ``pruning.global_prune``),
    flattened over the weights that survive now (bool, on the CPU); the network is not changed."""
    convs = pruning.prunable_convs(network, conv1)
    if not convs:
        raise UserError(f"{type(network).__name__} has no conv layer to prune")
    with torch.no_grad():
        old = [(module.weight_mask if pruning.is_pruned(module) else torch.ones_like(module.weight)).bool()
               for _, module in convs]
        scores = [pruning.effective_weight(module).abs() for _, module in convs]
        new = pruning._prune_lowest(scores, old, rate)
        return torch.cat([kept.bool()[alive] for kept, alive in zip(new, old)]).cpu()


def mask_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Normalised Hamming distance of two masks of equal length: the share of positions where they
    differ, computed as the authors do (``1 - sum(a == b) / len``, so that a distance at the
    threshold rounds as theirs)."""
    if a.shape != b.shape:
        raise ValueError(f"masks of different lengths: {tuple(a.shape)} and {tuple(b.shape)}")
    return 1 - float(torch.sum(a == b)) / max(a.numel(), 1)


class EarlyBird:
    """The stopping rule's state in one round: the queue of the last ``window`` masks, the largest
    distance of each draw once the queue is full, and where the ticket emerged (checkpointed)."""

    def __init__(self, threshold: float = THRESHOLD, window: int = WINDOW):
        self.threshold, self.window = threshold, window
        self.masks: list[torch.Tensor] = []  # newest last
        self.draws: list[list] = []  # [position, largest distance to the older masks, or None before the queue is full]
        self.emerged_at: int | None = None  # position of the draw at which the ticket emerged

    def observe(self, mask: torch.Tensor, position: int) -> bool:
        """Queue the mask drawn at ``position`` (trained epochs, or iterations); True when the
        ticket has emerged: the queue is full and no older mask is farther than ``threshold``."""
        self.masks.append(mask.bool().cpu())
        if len(self.masks) > self.window:
            self.masks.pop(0)
        if len(self.masks) < self.window:
            self.draws.append([position, None])
            return False
        largest = max(mask_distance(self.masks[-1], older) for older in self.masks[:-1])
        self.draws.append([position, round(largest, 6)])
        emerged = largest <= self.threshold
        if emerged and self.emerged_at is None:
            self.emerged_at = position
        return emerged

    @property
    def started(self) -> bool:
        return bool(self.draws)

    def summary(self, unit: str) -> dict:
        """What a summary row says about the round's search."""
        return {"emerged_at": self.emerged_at, "unit": unit, "threshold": self.threshold, "window": self.window,
                "draws": [list(draw) for draw in self.draws]}

    def state_dict(self) -> dict:
        """Plain tensors and numbers (the masks packed 8 per byte), for a checkpoint."""
        return {"threshold": self.threshold, "window": self.window, "draws": [list(d) for d in self.draws],
                "emerged_at": self.emerged_at, "length": int(self.masks[0].numel()) if self.masks else 0,
                "masks": [torch.from_numpy(np.packbits(mask.numpy())) for mask in self.masks]}

    @classmethod
    def from_state_dict(cls, state: dict) -> "EarlyBird":
        bird = cls(float(state["threshold"]), int(state["window"]))
        length = int(state["length"])
        bird.masks = [torch.from_numpy(np.unpackbits(packed.numpy(), count=length).astype(bool))
                      for packed in state["masks"]]
        bird.draws = [list(draw) for draw in state["draws"]]
        bird.emerged_at = state.get("emerged_at")
        return bird
