"""VOC detection evaluation as the original: boxes from the decoded outputs, per-class GIoU NMS, the
devkit's comp4 result files, and VOC07 11-point AP at IoU 0.50:0.05:0.95 computed from those files."""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import torch
import torch.distributed as dist

from Detection.data import DetectionRecord, letterbox_geometry
from Detection.model import flatten_decoded
from lth.loaders import to_device

IOU_THRESHOLDS = tuple(range(50, 100, 5))   # percent: 0.50, 0.55, ..., 0.95
RESULT_PATTERN = "comp4_det_test_{}.txt"


# ---------------------------------------------------------------------------------------------
# From network outputs to boxes
# ---------------------------------------------------------------------------------------------

def predictions_to_boxes(decoded: np.ndarray, input_size: int, orig_hw: Sequence[int], conf_thresh: float
                         ) -> np.ndarray:
    """(N, 5 + C) decoded outputs of one letterboxed image -> (M, 6) ``x1, y1, x2, y2, score, class``
    in the original image's 0-based pixels (the original's Evaluator.__convert_pred).

    Boxes are mapped back through the letterbox, clipped to the image, zeroed when inverted and
    dropped when of zero area; class = argmax of the class probabilities; score = confidence x
    that probability; only scores above ``conf_thresh`` are kept.
    """
    height, width = int(orig_hw[0]), int(orig_hw[1])
    ratio, _, _, dw, dh = letterbox_geometry(height, width, input_size)
    xy, wh = decoded[:, 0:2], decoded[:, 2:4]
    coords = np.concatenate([xy - wh * 0.5, xy + wh * 0.5], axis=-1).astype(np.float64)
    coords[:, 0::2] = (coords[:, 0::2] - dw) / ratio
    coords[:, 1::2] = (coords[:, 1::2] - dh) / ratio
    coords = np.concatenate([np.maximum(coords[:, :2], [0, 0]),
                             np.minimum(coords[:, 2:], [width - 1, height - 1])], axis=-1)
    coords[(coords[:, 0] > coords[:, 2]) | (coords[:, 1] > coords[:, 3])] = 0
    scale = np.sqrt(np.prod(coords[:, 2:4] - coords[:, 0:2], axis=-1))
    probs = decoded[:, 5:]
    classes = np.argmax(probs, axis=-1)
    scores = decoded[:, 4] * probs[np.arange(len(probs)), classes]
    keep = (scale > 0) & (scores > conf_thresh)
    return np.concatenate([coords[keep], scores[keep, None], classes[keep, None]], axis=-1)


def giou_xyxy(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Generalised IoU of one (4,) box with (N, 4) boxes (no +1 pixel, as the original's NMS)."""
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    inter = np.maximum(np.minimum(box[2:], boxes[:, 2:]) - np.maximum(box[:2], boxes[:, :2]), 0.0)
    inter_area = inter[:, 0] * inter[:, 1]
    union = area + areas - inter_area
    enclose = np.maximum(np.maximum(box[2:], boxes[:, 2:]) - np.minimum(box[:2], boxes[:, :2]), 0.0)
    enclose_area = enclose[:, 0] * enclose[:, 1]
    with np.errstate(divide="ignore", invalid="ignore"):
        return inter_area / union - (enclose_area - union) / enclose_area


def nms(boxes: np.ndarray, score_threshold: float, iou_threshold: float) -> np.ndarray:
    """Per-class greedy NMS, the original's rule: repeatedly keep the highest score, then drop
    every other box of the class whose GIoU with it exceeds ``iou_threshold`` and those whose
    score is not above ``score_threshold``."""
    kept = []
    for cls in sorted(set(boxes[:, 5].astype(np.int64).tolist())):
        rest = boxes[boxes[:, 5].astype(np.int64) == cls]
        while len(rest):
            best = int(np.argmax(rest[:, 4]))
            kept.append(rest[best])
            rest = np.concatenate([rest[:best], rest[best + 1:]])
            suppressed = giou_xyxy(kept[-1][:4], rest[:, :4]) > iou_threshold
            rest = rest[~suppressed & (rest[:, 4] > score_threshold)]
    return np.asarray(kept, dtype=np.float64).reshape(-1, 6)


@torch.no_grad()
def detect(model: torch.nn.Module, images: torch.Tensor | Sequence[torch.Tensor], orig_sizes: torch.Tensor,
           conf_thresh: float, nms_thresh: float, flip: bool = False) -> list[np.ndarray]:
    """Boxes (0-based pixels of each original image, after NMS) for a batch of letterboxed images.

    ``images`` is one batch or a list of the same images letterboxed at several sizes (the
    original's multi-scale test): the candidates of every size join before NMS. With ``flip`` the
    horizontally flipped batches are predicted too and their boxes, mirrored back, join as well
    (the original's ``flip_test``).
    """
    batches = [images] if isinstance(images, torch.Tensor) else list(images)
    candidates = [[] for _ in range(len(batches[0]))]
    for batch in batches:
        size = batch.shape[-1]
        for flipped in ((False, True) if flip else (False,)):
            _, decoded = model(torch.flip(batch, dims=[-1]) if flipped else batch)
            flat = flatten_decoded(decoded).float().cpu().numpy()
            for index, (out, hw) in enumerate(zip(flat, orig_sizes.tolist())):
                if flipped:  # mirror the box centres back: pixel index x <-> size - 1 - x, as the data flip
                    out = out.copy()
                    out[:, 0] = size - 1 - out[:, 0]
                candidates[index].append(predictions_to_boxes(out, size, hw, conf_thresh))
    return [nms(np.concatenate(parts), conf_thresh, nms_thresh) for parts in candidates]


# ---------------------------------------------------------------------------------------------
# comp4 files and the devkit's AP
# ---------------------------------------------------------------------------------------------

def write_comp4(result_dir: str, detections: Mapping[str, np.ndarray], class_names: Sequence[str]) -> list[str]:
    """Write ``comp4_det_test_{class}.txt`` for every class (empty when none), replacing old ones.

    ``detections``: image_id -> (M, 6) boxes in 0-based pixels; lines are ``image_id score x1 y1
    x2 y2`` in VOC's 1-based pixels (the XML's convention), images in the given order.
    """
    os.makedirs(result_dir, exist_ok=True)
    for stale in glob.glob(os.path.join(result_dir, RESULT_PATTERN.format("*"))):
        os.remove(stale)
    lines = {name: [] for name in class_names}
    for image_id, boxes in detections.items():
        for x1, y1, x2, y2, score, cls in np.asarray(boxes).reshape(-1, 6):
            lines[class_names[int(cls)]].append(
                f"{image_id} {score:.6f} {x1 + 1:.2f} {y1 + 1:.2f} {x2 + 1:.2f} {y2 + 1:.2f}\n")
    paths = []
    for name in class_names:
        path = os.path.join(result_dir, RESULT_PATTERN.format(name))
        tmp = path + ".tmp"
        with open(tmp, "w") as handle:
            handle.writelines(lines[name])
        os.replace(tmp, path)
        paths.append(path)
    return paths


@dataclass
class GroundTruth:
    """One image's objects in VOC's 1-based pixels, as the devkit reads them from the XML."""
    boxes: np.ndarray          # (N, 4)
    labels: np.ndarray         # (N,)
    difficult: np.ndarray      # (N,) bool


def ground_truth(records: Sequence[DetectionRecord]) -> dict[str, GroundTruth]:
    return {r.image_id: GroundTruth(r.boxes.astype(np.float64) + 1, r.labels.copy(), r.difficult.copy())
            for r in records}


def read_comp4(path: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    image_ids, scores, boxes = [], [], []
    if os.path.isfile(path):
        with open(path) as handle:
            for line in handle:
                fields = line.split()
                if fields:
                    image_ids.append(fields[0])
                    scores.append(float(fields[1]))
                    boxes.append([float(v) for v in fields[2:6]])
    return image_ids, np.asarray(scores, dtype=np.float64), np.asarray(boxes, dtype=np.float64).reshape(-1, 4)


def voc07_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """VOC2007 11-point AP: mean over t in 0, 0.1, ..., 1 of the best precision at recall >= t."""
    ap = 0.0
    for t in np.arange(0.0, 1.1, 0.1):
        reached = recall >= t
        ap += (np.max(precision[reached]) if reached.any() else 0.0) / 11.0
    return float(ap)


def class_ap_from_file(path: str, gt: Mapping[str, GroundTruth], class_index: int, iou_threshold: float) -> float:
    """The devkit's AP of one class from its comp4 file (eval/voc_eval.py rules).

    Detections in decreasing score order each take the ground-truth box of this class, in their
    image, with the largest IoU (+1 pixel convention); above ``iou_threshold`` it is a true
    positive if that box is not difficult and not yet taken, a false positive if already taken,
    and ignored if difficult; otherwise a false positive. Difficult boxes do not count in recall.
    A class without a result file, or without any ground truth, scores 0.
    """
    image_ids, scores, boxes = read_comp4(path)
    per_image = {}
    positives = 0
    for image_id, item in gt.items():
        mine = item.labels == class_index
        per_image[image_id] = (item.boxes[mine], item.difficult[mine], np.zeros(int(mine.sum()), dtype=bool))
        positives += int((~item.difficult[mine]).sum())
    if not image_ids or positives == 0:
        return 0.0
    order = np.argsort(-scores)  # the devkit's call, so ties fall in the same order
    tp = np.zeros(len(order))
    fp = np.zeros(len(order))
    for rank, det in enumerate(order):
        if image_ids[det] not in per_image:
            raise ValueError(f"{path}: detection for image '{image_ids[det]}' that has no ground truth")
        gt_boxes, difficult, taken = per_image[image_ids[det]]
        box = boxes[det]
        best, best_index = -np.inf, -1
        if len(gt_boxes):
            iw = np.maximum(np.minimum(gt_boxes[:, 2], box[2]) - np.maximum(gt_boxes[:, 0], box[0]) + 1.0, 0.0)
            ih = np.maximum(np.minimum(gt_boxes[:, 3], box[3]) - np.maximum(gt_boxes[:, 1], box[1]) + 1.0, 0.0)
            inter = iw * ih
            union = ((box[2] - box[0] + 1.0) * (box[3] - box[1] + 1.0)
                     + (gt_boxes[:, 2] - gt_boxes[:, 0] + 1.0) * (gt_boxes[:, 3] - gt_boxes[:, 1] + 1.0) - inter)
            overlaps = inter / union
            best, best_index = float(overlaps.max()), int(overlaps.argmax())
        if best > iou_threshold:
            if not difficult[best_index]:
                if taken[best_index]:
                    fp[rank] = 1.0
                else:
                    tp[rank] = 1.0
                    taken[best_index] = True
        else:
            fp[rank] = 1.0
    tp, fp = np.cumsum(tp), np.cumsum(fp)
    recall = tp / float(positives)
    precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return voc07_ap(recall, precision)


def ap_from_files(result_dir: str, gt: Mapping[str, GroundTruth], class_names: Sequence[str]) -> dict:
    """AP of the comp4 files in ``result_dir``: for each IoU threshold 0.50:0.05:0.95 the mean over
    classes (every class counts, as the original's ap.py divides by the class count); ``ap`` is the
    mean over thresholds; also ``ap50``, ``ap75``, ``class_ap50`` and ``ap_by_threshold``."""
    table = {}
    for threshold in IOU_THRESHOLDS:
        table[threshold] = {name: class_ap_from_file(os.path.join(result_dir, RESULT_PATTERN.format(name)), gt,
                                                     index, threshold / 100)
                            for index, name in enumerate(class_names)}
    by_threshold = {t: float(np.mean(list(table[t].values()))) for t in IOU_THRESHOLDS}
    return {"ap": float(np.mean(list(by_threshold.values()))), "ap50": by_threshold[50], "ap75": by_threshold[75],
            "class_ap50": dict(table[50]), "ap_by_threshold": {str(t): v for t, v in by_threshold.items()}}


# ---------------------------------------------------------------------------------------------
# The evaluator: accumulate detections (all ranks), write files and score (rank 0)
# ---------------------------------------------------------------------------------------------

class DetectionEvaluator:
    """Collects boxes batch by batch; ``finish`` gathers them from every DDP rank, writes the
    comp4 files of this evaluation into ``result_dir`` and returns the AP those files give.

    Use: ``evaluator.add(batch, model)`` for each batch of a ``DetectionEvalSet`` loader (its
    ``index`` picks the record), then ``metrics = evaluator.finish(result_dir)``. The primary
    metric is ``metrics["ap"]``.
    """

    def __init__(self, records: Sequence[DetectionRecord], class_names: Sequence[str], conf_thresh: float = 0.005,
                 nms_thresh: float = 0.45, flip: bool = False):
        self.records, self.class_names = list(records), list(class_names)
        self.conf_thresh, self.nms_thresh, self.flip = conf_thresh, nms_thresh, flip
        self.detections: dict[str, np.ndarray] = {}

    def reset(self) -> None:
        self.detections = {}

    def add_boxes(self, indices: Sequence[int], boxes: Sequence[np.ndarray]) -> None:
        for index, found in zip(indices, boxes):
            self.detections[self.records[int(index)].image_id] = found

    def add(self, batch: Mapping, model: torch.nn.Module) -> None:
        device = next(model.parameters()).device
        images = to_device(batch.get("images", [batch["image"]]), device)
        boxes = detect(model, images, batch["orig_size"], self.conf_thresh, self.nms_thresh, self.flip)
        self.add_boxes(batch["index"].tolist(), boxes)

    def gathered(self) -> dict[str, np.ndarray]:
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return dict(self.detections)
        parts = [None] * dist.get_world_size()
        dist.all_gather_object(parts, self.detections)
        merged = {}
        for part in parts:
            merged.update(part)
        return merged

    def finish(self, result_dir: str) -> dict:
        detections = self.gathered()
        distributed = dist.is_available() and dist.is_initialized()
        metrics = None
        if not distributed or dist.get_rank() == 0:
            ordered = {r.image_id: detections.get(r.image_id, np.zeros((0, 6))) for r in self.records}
            write_comp4(result_dir, ordered, self.class_names)
            metrics = ap_from_files(result_dir, ground_truth(self.records), self.class_names)
            metrics["detections"] = int(sum(len(b) for b in ordered.values()))
        if distributed and dist.get_world_size() > 1:
            box = [metrics]
            dist.broadcast_object_list(box, src=0)
            metrics = box[0]
        return metrics
