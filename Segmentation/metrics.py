"""Segmentation scores from one confusion matrix over all evaluated pixels, as the original's StreamSegMetrics."""

from __future__ import annotations

import numpy as np
import torch

from lth.distributed import all_reduce_sum

PRIMARY_METRIC = "miou"  # higher is better


class ConfusionMatrix:
    """A ``C x C`` matrix (rows: true class, columns: predicted class) accumulated on the device.

    Pixels whose label lies outside ``[0, C)`` (the 255 of boundaries and padding) are ignored, as
    the original ignores them. The matrix is read once, after ``reduce()`` has summed it over DDP
    ranks, so evaluation costs no host synchronisation per batch.
    """

    def __init__(self, num_classes: int, device: torch.device | str = "cpu"):
        self.num_classes = num_classes
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    def reset(self) -> None:
        self.matrix.zero_()

    @torch.no_grad()
    def update(self, predictions: torch.Tensor, labels: torch.Tensor) -> None:
        """Add a batch: ``predictions`` are class indices (e.g. ``logits.argmax(1)``) shaped like ``labels``."""
        if predictions.shape != labels.shape:
            raise ValueError(f"predictions {tuple(predictions.shape)} and labels {tuple(labels.shape)} differ in shape")
        labels = labels.to(device=self.matrix.device, dtype=torch.int64).reshape(-1)
        predictions = predictions.to(device=self.matrix.device, dtype=torch.int64).reshape(-1)
        keep = (labels >= 0) & (labels < self.num_classes)
        counts = torch.bincount(labels[keep] * self.num_classes + predictions[keep],
                                minlength=self.num_classes ** 2)
        self.matrix += counts[: self.num_classes ** 2].view(self.num_classes, self.num_classes)

    def reduce(self) -> "ConfusionMatrix":
        """Sum the matrix over DDP ranks (a no-op in one process)."""
        all_reduce_sum(self.matrix)
        return self

    def results(self) -> dict:
        return scores(self.matrix.cpu().numpy())


def scores(matrix: np.ndarray) -> dict:
    """Overall/mean pixel accuracy, per-class IoU, mIoU and frequency-weighted IoU, all in percent.

    The original's formulas: mIoU and mean accuracy are ``nanmean``s, so a class that neither
    occurs nor is predicted (0/0) does not count, while a class predicted but absent has IoU 0.
    ``class_iou`` holds ``None`` for a class that does not count (JSON has no NaN). The original
    printed fractions; these are percent, as every accuracy of this toolkit.
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    true_per_class = matrix.sum(axis=1)
    predicted_per_class = matrix.sum(axis=0)
    correct = np.diag(matrix)
    total = matrix.sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        overall = correct.sum() / total
        class_acc = correct / true_per_class
        iou = correct / (true_per_class + predicted_per_class - correct)
        frequency = true_per_class / total
    present = frequency > 0
    return {
        "miou": _percent(np.nanmean(iou) if np.any(~np.isnan(iou)) else np.nan),
        "overall_acc": _percent(overall),
        "mean_acc": _percent(np.nanmean(class_acc) if np.any(~np.isnan(class_acc)) else np.nan),
        "fwiou": _percent((frequency[present] * iou[present]).sum() if total > 0 else np.nan),
        "class_iou": [None if np.isnan(value) else 100.0 * float(value) for value in iou],
    }


def _percent(value) -> float:
    return 100.0 * float(value)
