"""What a segmentation run plugs into the shared loop: the training step and the evaluator (mIoU first)."""

from __future__ import annotations

from typing import Callable, Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from lth.distributed import Context, all_reduce_sum
from lth.engine import Precision, StepResult, unwrap
from Segmentation.loss import IGNORE_INDEX
from Segmentation.metrics import PRIMARY_METRIC, ConfusionMatrix
from Segmentation.visual import PredictionWriter

HIGHER_IS_BETTER = True  # for PRIMARY_METRIC ("miou")


def make_step(criterion: nn.Module) -> Callable[[nn.Module, tuple], StepResult]:
    """A training step on ``(images, {"mask": ...})`` batches: ``criterion(model(images), mask)``.

    ``correct``/``count`` are labelled pixels predicted right / labelled pixels, so the loop's
    running accuracy is the training pixel accuracy (255 excluded); ``images`` the batch's images
    (throughput). ``count`` is a tensor: reading it would synchronise the device every step.
    """
    def step(model: nn.Module, batch) -> StepResult:
        images, target = batch
        mask = target["mask"]
        logits = model(images)
        labelled = mask != IGNORE_INDEX
        correct = ((logits.detach().argmax(1) == mask) & labelled).sum()
        return StepResult(criterion(logits, mask), correct, labelled.sum(), images=int(images.shape[0]))

    return step


def same_size_groups(images: torch.Tensor, target: dict):
    """The images of a padded batch (``pad_collate``) regrouped by their own size, padding cut off.

    A network's output on real pixels depends on the padding around them (DeepLabV3+'s ASPP
    image pooling averages over the whole input), so predicting images of different sizes in one
    padded batch made the score depend on --val_batch_size; each group here holds images of one
    size, as they would be predicted one at a time. A batch of equal sizes is passed through as it is.
    """
    sizes = [tuple(size) for size in target["size"].reshape(-1, 2).tolist()]
    if all(size == tuple(images.shape[-2:]) for size in sizes):
        yield images, target
        return
    for size in dict.fromkeys(sizes):
        rows = torch.tensor([i for i, other in enumerate(sizes) if other == size], device=images.device)
        height, width = size
        yield images[rows, :, :height, :width], {
            "mask": target["mask"][rows, :height, :width], "index": target["index"].reshape(-1)[rows],
            "size": target["size"].reshape(-1, 2)[rows]}


@torch.inference_mode()
def evaluate(model: nn.Module, loader: Iterable, ctx: Context, precision: Precision, num_classes: int,
             writer: PredictionWriter | None = None, desc: str = "val") -> dict:
    """mIoU and the other StreamSegMetrics scores (percent) plus the mean cross-entropy per labelled pixel.

    One confusion matrix over all pixels of all ranks' shards (summed with ``all_reduce_sum``), so
    the result is the one of a single process; images of different sizes are predicted each at its
    own size (``same_size_groups``), so it does not depend on the batch size either. In fp32 unless
    ``precision`` says otherwise for evaluation. ``writer`` saves image, target, prediction and overlay.
    """
    inner = unwrap(model)
    was_training = inner.training
    inner.eval()
    metric = ConfusionMatrix(num_classes, ctx.device)
    loss_and_pixels = torch.zeros(2, dtype=torch.float64, device=ctx.device)
    for batch in tqdm(loader, desc=desc, leave=False, disable=None if ctx.is_main else True, dynamic_ncols=True):
        for images, target in same_size_groups(*batch):
            mask = target["mask"]
            with precision.eval_autocast(ctx.device):
                logits = inner(images)
            logits = logits.float()
            predictions = logits.argmax(1)
            metric.update(predictions, mask)
            loss_and_pixels[0] += F.cross_entropy(logits, mask, ignore_index=IGNORE_INDEX, reduction="sum")
            loss_and_pixels[1] += (mask != IGNORE_INDEX).sum()
            if writer is not None:
                writer.write(predictions, target, images)
    metric.reduce()
    all_reduce_sum(loss_and_pixels)
    inner.train(was_training)
    result = metric.results()
    result["loss"] = float(loss_and_pixels[0] / loss_and_pixels[1].clamp(min=1))
    return result


__all__ = ["PRIMARY_METRIC", "HIGHER_IS_BETTER", "make_step", "evaluate"]
