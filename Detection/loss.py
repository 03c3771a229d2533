"""The original's YOLOv4 loss: CIoU boxes, focal confidence, smoothed BCE classes, mixup-weighted."""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F


def xywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    return torch.cat([boxes[..., :2] - boxes[..., 2:] * 0.5, boxes[..., :2] + boxes[..., 2:] * 0.5], dim=-1)


def ciou_xywh(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """Complete IoU of (x, y, w, h) boxes, broadcast over leading dimensions.

    ``CIoU = IoU - (centre distance^2 / enclosing diagonal^2 + alpha * v)`` with
    ``v = 4/pi^2 (atan(w1/h1) - atan(w2/h2))^2`` and ``alpha = v / (1 - IoU + v)``. As in the
    original (utils/tools.py CIOU_xywh_torch) alpha is not detached, so the gradient also flows
    through it (torchvision's ``complete_box_iou_loss`` computes alpha without gradient), heights
    are clamped at 1e-6 inside the atan, and corners are re-ordered with min/max.
    """
    b1, b2 = xywh_to_xyxy(boxes1), xywh_to_xyxy(boxes2)
    b1 = torch.cat([torch.minimum(b1[..., :2], b1[..., 2:]), torch.maximum(b1[..., :2], b1[..., 2:])], dim=-1)
    b2 = torch.cat([torch.minimum(b2[..., :2], b2[..., 2:]), torch.maximum(b2[..., :2], b2[..., 2:])], dim=-1)
    size1 = (b1[..., 2:] - b1[..., :2]).clamp(min=0)
    size2 = (b2[..., 2:] - b2[..., :2]).clamp(min=0)
    inter = (torch.minimum(b1[..., 2:], b2[..., 2:]) - torch.maximum(b1[..., :2], b2[..., :2])).clamp(min=0)
    inter_area = inter[..., 0] * inter[..., 1]
    union = size1[..., 0] * size1[..., 1] + size2[..., 0] * size2[..., 1] - inter_area
    iou = inter_area / union
    outer = (torch.maximum(b1[..., 2:], b2[..., 2:]) - torch.minimum(b1[..., :2], b2[..., :2])).clamp(min=0)
    diagonal = outer[..., 0] ** 2 + outer[..., 1] ** 2
    centre = ((b1[..., :2] + b1[..., 2:]) * 0.5 - (b2[..., :2] + b2[..., 2:]) * 0.5).pow(2).sum(-1)
    v = (4 / math.pi ** 2) * (torch.atan(size1[..., 0] / size1[..., 1].clamp(min=1e-6))
                              - torch.atan(size2[..., 0] / size2[..., 1].clamp(min=1e-6))) ** 2
    alpha = v / (1 - iou + v)
    return iou - (centre / diagonal + alpha * v)


def focal_bce(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0, alpha: float = 1.0) -> torch.Tensor:
    """Element-wise ``BCE(logits, target) * alpha * |target - sigmoid(logits)|^gamma`` (no reduction);
    the modulating factor is not detached, as in the original's FocalLoss."""
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return bce * alpha * torch.abs(target - torch.sigmoid(logits)).pow(gamma)


def _at_least_fp32(tensor: torch.Tensor) -> torch.Tensor:
    """bf16/fp16 activations (autocast) are promoted: the loss is always computed in fp32 or wider."""
    return tensor.float() if tensor.dtype in (torch.float16, torch.bfloat16) else tensor


def layer_loss(raw: torch.Tensor, decoded: torch.Tensor, label: torch.Tensor, boxes: torch.Tensor,
               stride: int, iou_threshold: float = 0.5) -> dict[str, torch.Tensor]:
    """The loss of one stride, each term summed over cells and divided by the batch size.

    ``raw``/``decoded``: (B, G, G, A, 5+C) logits and decoded boxes; ``label``: (B, G, G, A, 6+C)
    = x, y, w, h (input pixels), object flag, mixup weight, smoothed one-hot classes; ``boxes``:
    (B, 150, 4) the image's ground-truth boxes assigned to this stride (zeros pad).

    A cell without an object counts as background only when the largest CIoU (the same CIoU
    as the box loss, as in the original) of its predicted box with any box in ``boxes`` is below
    ``iou_threshold``.
    """
    raw, decoded, label, boxes = (_at_least_fp32(t) for t in (raw, decoded, label, boxes))
    batch_size, grid = raw.shape[:2]
    img_size = stride * grid
    obj = label[..., 4:5]
    mix = label[..., 5:6]
    pred_xywh, label_xywh = decoded[..., :4], label[..., :4]

    # Only the cells holding an object contribute (the original multiplies every cell by the
    # object flag): computing CIoU there alone gives the same sum, and a degenerate prediction in
    # an empty cell (zero or infinite size against the all-zero label) cannot turn it into NaN.
    cells = obj[..., 0] > 0
    ciou = ciou_xywh(pred_xywh[cells], label_xywh[cells])
    box_scale = 2.0 - label_xywh[cells][:, 2] * label_xywh[cells][:, 3] / (img_size ** 2)
    loss_ciou = obj[cells][:, 0] * box_scale * (1.0 - ciou) * mix[cells][:, 0]

    with torch.no_grad():  # only compared with a threshold: no gradient in the original either
        # The boxes fill each list from its first row and zeros pad the rest, so every padding row
        # gives the same CIoU: the max over the filled rows and one padding row is the original's max
        # over all of them, at a fraction of the cost (1-3 boxes of 150 rows on the digits set). Only
        # on a CPU, where that cost is a fifth of a step: on a GPU, reading the count would stall it.
        used = boxes.shape[1]
        if boxes.device.type == "cpu":
            used = min(used, int((boxes != 0).any(-1).sum(-1).max()) + 1)
        best = ciou_xywh(pred_xywh.unsqueeze(4), boxes[:, None, None, None, :used]).max(-1, keepdim=True).values
    noobj = (1.0 - obj) * (best < iou_threshold).float()
    focal = focal_bce(raw[..., 4:5], obj)
    loss_conf = (obj * focal + noobj * focal) * mix
    loss_cls = obj * F.binary_cross_entropy_with_logits(raw[..., 5:], label[..., 6:], reduction="none") * mix

    out = {"ciou": loss_ciou.sum() / batch_size, "conf": loss_conf.sum() / batch_size,
           "cls": loss_cls.sum() / batch_size}
    out["loss"] = out["ciou"] + out["conf"] + out["cls"]
    return out


def yolo_loss(raw: Sequence[torch.Tensor], decoded: Sequence[torch.Tensor], labels: Sequence[torch.Tensor],
              boxes: Sequence[torch.Tensor], strides: Sequence[int], iou_threshold: float = 0.5
              ) -> dict[str, torch.Tensor]:
    """The sum over strides of ``layer_loss``: ``{"loss", "ciou", "conf", "cls"}`` (scalars)."""
    total = None
    for r, d, lab, box, stride in zip(raw, decoded, labels, boxes, strides):
        part = layer_loss(r, d, lab, box, stride, iou_threshold)
        total = part if total is None else {key: total[key] + part[key] for key in part}
    return total
