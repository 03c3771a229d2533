"""The original's segmentation losses: cross-entropy ignoring 255, and its focal loss."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from lth.errors import UserError

IGNORE_INDEX = 255
LOSS_TYPES = ("cross_entropy", "focal_loss")


class FocalLoss(nn.Module):
    """``alpha * (1 - p_t)^gamma * CE`` per pixel, with ``p_t = exp(-CE)``, then mean or sum.

    As the original (utils/loss.py): ignored pixels have CE 0, hence loss 0, and still count in
    the mean's denominator; the scripts use the defaults ``alpha=1, gamma=0`` (plain CE averaged
    over all pixels, ignored ones included).
    """

    def __init__(self, alpha: float = 1.0, gamma: float = 0.0, size_average: bool = True,
                 ignore_index: int = IGNORE_INDEX):
        super().__init__()
        self.alpha, self.gamma, self.size_average, self.ignore_index = alpha, gamma, size_average, ignore_index

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        ce = F.cross_entropy(logits, labels, reduction="none", ignore_index=self.ignore_index)
        pt = torch.exp(-ce)
        focal = self.alpha * (1 - pt) ** self.gamma * ce
        return focal.mean() if self.size_average else focal.sum()


def build_loss(loss_type: str = "cross_entropy") -> nn.Module:
    """``--loss_type``: ``cross_entropy`` (mean over labelled pixels) or ``focal_loss`` (the original's)."""
    if loss_type == "cross_entropy":
        return nn.CrossEntropyLoss(ignore_index=IGNORE_INDEX, reduction="mean")
    if loss_type == "focal_loss":
        return FocalLoss(ignore_index=IGNORE_INDEX, size_average=True)
    raise UserError(f"--loss_type must be one of {', '.join(LOSS_TYPES)}, got '{loss_type}'")
