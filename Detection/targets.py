"""YOLO training targets: each ground-truth box assigned to anchors by IoU, as the original's datasets.py."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from Detection.model import ANCHORS_PER_SCALE, STRIDES, VOC_ANCHORS

MAX_BOXES_PER_SCALE = 150


def iou_xywh(boxes1: np.ndarray, boxes2: np.ndarray) -> np.ndarray:
    """Plain IoU of (x, y, w, h) boxes, broadcast."""
    area1 = boxes1[..., 2] * boxes1[..., 3]
    area2 = boxes2[..., 2] * boxes2[..., 3]
    low = np.maximum(boxes1[..., :2] - boxes1[..., 2:] * 0.5, boxes2[..., :2] - boxes2[..., 2:] * 0.5)
    high = np.minimum(boxes1[..., :2] + boxes1[..., 2:] * 0.5, boxes2[..., :2] + boxes2[..., 2:] * 0.5)
    inter = np.maximum(high - low, 0.0)
    inter_area = inter[..., 0] * inter[..., 1]
    return inter_area / (area1 + area2 - inter_area)


def smooth_one_hot(class_index: int, num_classes: int, delta: float = 0.01) -> np.ndarray:
    one_hot = np.zeros(num_classes, dtype=np.float32)
    one_hot[class_index] = 1.0
    return one_hot * (1 - delta) + delta / num_classes


def build_targets(boxes: np.ndarray, img_size: int, num_classes: int, anchors: Sequence = VOC_ANCHORS,
                  strides: Sequence[int] = STRIDES, iou_threshold: float = 0.3,
                  max_boxes: int = MAX_BOXES_PER_SCALE, smoothing: float = 0.01
                  ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per-stride label grids and box lists for one image.

    ``boxes``: (N, 6) rows ``x1, y1, x2, y2, class, mixup weight`` in input pixels. For each box
    (in order) and each stride, the anchors centred in the box's cell whose IoU with the box
    (both in grid units) exceeds ``iou_threshold`` predict it; a box that no anchor of any stride
    reaches goes to the single best anchor. A later box overwrites an earlier one in the same
    anchor (as the original). Every assignment also appends the box to that stride's list of at
    most ``max_boxes`` boxes (the original's ring buffer: the 151st overwrites the first).

    Returns ``labels`` [(G, G, A, 6 + C)] with x, y, w, h, object, mixup weight, smoothed one-hot
    (mixup weight 1 where empty) and ``box_lists`` [(max_boxes, 4)] of x, y, w, h.
    """
    anchors = np.asarray(anchors, dtype=np.float64)
    strides_arr = np.asarray(strides, dtype=np.float64)
    sizes = [int(img_size / stride) for stride in strides]
    labels = [np.zeros((size, size, ANCHORS_PER_SCALE, 6 + num_classes), dtype=np.float32) for size in sizes]
    for label in labels:
        label[..., 5] = 1.0
    box_lists = [np.zeros((max_boxes, 4), dtype=np.float32) for _ in strides]
    counts = [0] * len(strides)

    def assign(scale: int, cell: np.ndarray, anchor_mask, xywh, mix, one_hot) -> None:
        x_index = min(max(int(cell[0]), 0), sizes[scale] - 1)
        y_index = min(max(int(cell[1]), 0), sizes[scale] - 1)
        labels[scale][y_index, x_index, anchor_mask, 0:4] = xywh
        labels[scale][y_index, x_index, anchor_mask, 4] = 1.0
        labels[scale][y_index, x_index, anchor_mask, 5] = mix
        labels[scale][y_index, x_index, anchor_mask, 6:] = one_hot
        box_lists[scale][counts[scale] % max_boxes] = xywh
        counts[scale] += 1

    rows = np.asarray(boxes, dtype=np.float64)
    rows = rows.reshape(len(rows), -1) if len(rows) else np.zeros((0, 6))
    for box in rows:
        one_hot = smooth_one_hot(int(box[4]), num_classes, smoothing)
        mix = box[5] if len(box) > 5 else 1.0
        xywh = np.concatenate([(box[2:4] + box[0:2]) * 0.5, box[2:4] - box[0:2]])
        scaled = xywh[np.newaxis, :] / strides_arr[:, np.newaxis]
        ious, positive = [], False
        for scale in range(len(strides)):
            cell = np.floor(scaled[scale, 0:2])
            candidates = np.zeros((ANCHORS_PER_SCALE, 4))
            candidates[:, 0:2] = cell + 0.5
            candidates[:, 2:4] = anchors[scale]
            iou = iou_xywh(scaled[scale][np.newaxis, :], candidates)
            ious.append(iou)
            mask = iou > iou_threshold
            if mask.any():
                assign(scale, cell, mask, xywh, mix, one_hot)
                positive = True
        if not positive:
            best = int(np.argmax(np.concatenate(ious)))
            scale, anchor = best // ANCHORS_PER_SCALE, best % ANCHORS_PER_SCALE
            mask = np.zeros(ANCHORS_PER_SCALE, dtype=bool)
            mask[anchor] = True
            assign(scale, np.floor(scaled[scale, 0:2]), mask, xywh, mix, one_hot)
    return labels, box_lists
