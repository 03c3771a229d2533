"""What the detection entry scripts plug into the shared core: data sets by name, pre-trained
backbone loading, the training step, the evaluation, the primary metric and the prune target."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
import torch.nn as nn
from tqdm import tqdm

from Detection.data import (DIGIT_CLASSES, VOC_CLASSES, DetectionRecord, digit_detection_records,
                            read_annotation_list, voc_records, with_voc_ground_truth)
from Detection.evaluate import DetectionEvaluator
from Detection.imp_files import BACKBONE_IMP_KEYS, read_backbone_imp, rewind_pruned_convs
from Detection.loss import yolo_loss
from Detection.model import YOLOv4
from lth import tickets
from lth.checkpoint import load_file
from lth.engine import unwrap
from lth.errors import UserError
from lth.imp import BackbonePruning
from lth.models import LoadReport, load_pretrained

PRIMARY_METRIC = "ap"
DATASETS = ("voc", "digits", "lists")
# Sizes of the embedded digits set (canvases); small enough for a CPU demo.
DIGITS_COUNTS = {"train": 600, "val": 100, "test": 200}
DIGITS_SCALES = (2, 3)   # the 8x8 digits enlarged to 16 or 24 px


@dataclass
class DetectionData:
    train: list[DetectionRecord]
    test: list[DetectionRecord]
    class_names: tuple[str, ...]
    val: list[DetectionRecord] | None = None     # only the digits set has one (VOC: the original had none)
    note: str | None = None                      # a line saying what is scored, where it is not VOC's XML
    # The original's training augmentation, except on the digits set: a mirrored digit is another
    # glyph (or none) that its test canvases never show, and mixing two canvases overlays their
    # large digits into unreadable ones (docs/FIDELITY.md D27: with both, the demo's dense model
    # reached 14 validation AP where it reached 25 without them).
    flip: bool = True
    mixup: bool = True


def load_detection_data(dataset: str, data_root: str | None = None, seed: int = 0, canvas: int = 64,
                        train_list: str | None = None, test_list: str | None = None,
                        digits_counts: Mapping[str, int] = DIGITS_COUNTS,
                        digits_scales: Sequence[int] = DIGITS_SCALES) -> DetectionData:
    """``voc``: VOC07+12 trainval / VOC07 test under ``data_root``; ``lists``: the original's
    ``train_annotation.txt``/``test_annotation.txt`` (VOC classes; the test images scored against
    their VOC XML where the devkit is there, as the original's evaluator did); ``digits``: the embedded set
    (its validation and test canvases are fixed, whatever ``seed``; each digit enlarged by one of
    ``digits_scales``), trained without flip and mixup."""
    if dataset == "voc":
        if not data_root:
            raise UserError("--data_root is required for the VOC data set")
        return DetectionData(voc_records(data_root, "train"), voc_records(data_root, "test"), VOC_CLASSES)
    if dataset == "lists":
        if not (train_list and test_list):
            raise UserError("the annotation-list data set needs both a train and a test list")
        test, note = with_voc_ground_truth(read_annotation_list(test_list), test_list)
        return DetectionData([r for r in read_annotation_list(train_list) if len(r.boxes)], test, VOC_CLASSES,
                             note=note)
    if dataset == "digits":
        def split(name: str, split_seed: int) -> list[DetectionRecord]:
            return digit_detection_records(name, digits_counts[name], split_seed, canvas, scales=tuple(digits_scales))

        return DetectionData(split("train", seed), split("test", 0), DIGIT_CLASSES, val=split("val", 0),
                             flip=False, mixup=False)
    raise UserError(f"unknown detection data set '{dataset}': choose one of {', '.join(DATASETS)}")


def load_backbone_weights(model: YOLOv4, path: str, quiet: bool = False, moco_encoder: str = "k") -> LoadReport:
    """Released ImageNet / MoCo v2 / SimCLR weights (any format the core reads) into the backbone,
    conv1 included and fc left out, as the original's overlap loading did (of a MoCo v2 checkpoint,
    the key encoder by default: what its loader ended with, see ``lth.models.select_moco_encoder``)."""
    return load_pretrained(model.backbone, path, conv1=True, fc=False, quiet=quiet, moco_encoder=moco_encoder)


def prune_target(model: nn.Module) -> nn.Module:
    """The module IMP prunes: the backbone (its conv1 excluded by lth.pruning's default)."""
    return unwrap(model).backbone


def loss_step(model: nn.Module, batch: Mapping, iou_threshold: float = 0.5) -> dict[str, torch.Tensor]:
    """Forward one training batch (already on the model's device) and return the original's loss:
    ``{"loss", "ciou", "conf", "cls"}``; the caller backpropagates ``loss``."""
    raw, decoded = model(batch["image"])
    return yolo_loss(raw, decoded, batch["labels"], batch["boxes"], unwrap(model).strides, iou_threshold)


@torch.no_grad()
def run_evaluation(model: nn.Module, loader: Sequence[Mapping], evaluator: DetectionEvaluator, result_dir: str,
                   progress: bool = True) -> dict:
    """Detect on every batch of ``loader`` (this rank's shard), then gather, write the comp4 files
    to ``result_dir`` and return ``{"ap", "ap50", "ap75", "class_ap50", ...}`` on every rank."""
    was_training = model.training
    model.eval()
    evaluator.reset()
    for batch in tqdm(loader, desc="detect", disable=not progress, file=sys.stderr, leave=False):
        evaluator.add(batch, model)
    model.train(was_training)
    return evaluator.finish(result_dir)


class DetectionPruning(BackbonePruning):
    """The original's detection IMP: global L1 pruning of the backbone's convs (conv1, BN, neck and
    heads never); between rounds only the pruned backbone convs go back to their pre-trained
    weights, everything else keeps its trained value (its train_imp.py's overlap load).

    The rewind point is ``pretrained``, the pre-trained backbone's state_dict (torchvision names)
    taken before any training.
    """

    def __init__(self, rate: float, random: bool = False, pretrained: dict | None = None, prune_type: str = "pt_trans"):
        super().__init__(rate, random=random, prune_type=prune_type)
        self.pretrained = pretrained

    def rewind_point(self, imp, moment) -> dict | None:
        return self.pretrained if moment.kind == "start" else None

    def rewind(self, model: nn.Module, weights: dict) -> None:
        rewind_pruned_convs(unwrap(model), weights)


def read_backbone_masks(path: str) -> tuple[dict[str, torch.Tensor], dict]:
    """The backbone masks of any mask file this toolkit reads (tickets of every script, the
    original's ``mask-{i}.pt``, checkpoints of classification or detection runs) and of the
    original's ``backbone_imp{n}.pth``, named as in a classification ticket."""
    obj = load_file(path, "mask")
    if isinstance(obj, Mapping) and all(key in obj for key in BACKBONE_IMP_KEYS):
        return read_backbone_imp(obj)["masks"], {"source": path, "imp": obj.get("imp")}
    try:
        masks, meta = tickets.read_masks(obj)
    except UserError as error:
        raise UserError(str(error).replace("the given object", f"'{path}'")) from None
    meta["source"] = path
    prefix = "backbone."
    if masks and all(key.startswith(prefix) for key in masks):  # a detection checkpoint's state_dict
        masks = {key[len(prefix):]: value for key, value in masks.items()}
    return masks, meta
