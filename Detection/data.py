"""Detection data: Pascal VOC from its XML (or the original's annotation lists), the original's
augmentation and targets, and an embedded digits detection set that needs no files.

Box convention inside this package: ``x1, y1, x2, y2`` as 0-based pixel indices of the first and
last pixel (VOC's 1-based XML values minus 1). The evaluator adds the 1 back when it writes the
devkit's result files, so a perfect prediction reproduces the XML numbers exactly.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from lth.data import digits_pixels, digits_split, read_digits
from lth.errors import IMAGE_READ_ERRORS, UserError
from Detection.model import STRIDES, VOC_ANCHORS
from Detection.targets import MAX_BOXES_PER_SCALE, build_targets

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)
DIGIT_CLASSES = tuple(str(d) for d in range(10))
# The original's sets: train on VOC2007 trainval + VOC2012 trainval, evaluate on VOC2007 test.
VOC_TRAIN_SETS = (("VOC2007", "trainval"), ("VOC2012", "trainval"))
VOC_TEST_SET = ("VOC2007", "test")
PAD_VALUE = 128


@dataclass
class DetectionRecord:
    """One image and its boxes (0-based pixel indices), from a file or held in memory."""
    image_id: str
    boxes: np.ndarray                      # (N, 4) float32 x1, y1, x2, y2
    labels: np.ndarray                     # (N,) int64 class indices
    difficult: np.ndarray                  # (N,) bool
    image_path: str | None = None
    image: np.ndarray | None = field(default=None, repr=False)   # (H, W, 3) uint8 RGB
    source: str = ""                       # the annotation file, named in error messages

    def load_image(self) -> np.ndarray:
        if self.image is not None:
            image = self.image
        else:
            try:
                with Image.open(self.image_path) as handle:
                    image = np.asarray(handle.convert("RGB"))
            except IMAGE_READ_ERRORS as error:
                reason = (str(error).splitlines() or [type(error).__name__])[0]
                raise UserError(f"cannot read image '{self.image_path}': {reason}") from None
        height, width = image.shape[:2]
        if len(self.boxes) and (self.boxes[:, 2].max() > width - 1 or self.boxes[:, 3].max() > height - 1):
            raise UserError(f"{self.source or self.image_path}: a box of image '{self.image_id}' lies outside "
                            f"the image ({width}x{height})")
        return image


# ---------------------------------------------------------------------------------------------
# Reading VOC
# ---------------------------------------------------------------------------------------------

def _text(node, tag: str, path: str, default: str | None = None) -> str:
    child = node.find(tag)
    if child is None or child.text is None:
        if default is not None:
            return default
        raise UserError(f"{path}: an object has no <{tag}>")
    return child.text.strip()


def parse_voc_xml(path: str, class_names: Sequence[str] = VOC_CLASSES) -> DetectionRecord:
    """A VOC annotation file as a record holding every object, difficult ones flagged.

    A class name outside ``class_names``, a box with x2 < x1 or y2 < y1, or a box outside the
    image size the file declares is a ``UserError`` naming the file.
    """
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as error:
        raise UserError(f"cannot read VOC annotation '{path}': {error}") from None
    index = {name: i for i, name in enumerate(class_names)}
    size = root.find("size")
    width = height = None
    if size is not None and size.find("width") is not None and size.find("height") is not None:
        width, height = float(_text(size, "width", path)), float(_text(size, "height", path))
    boxes, labels, difficult = [], [], []
    for number, obj in enumerate(root.findall("object"), start=1):
        name = _text(obj, "name", path).lower()
        if name not in index:
            raise UserError(f"{path}: object {number} has unknown class name '{name}' "
                            f"(known: {', '.join(class_names)})")
        box = obj.find("bndbox")
        if box is None:
            raise UserError(f"{path}: object {number} ('{name}') has no <bndbox>")
        try:
            x1, y1, x2, y2 = (float(_text(box, tag, path)) for tag in ("xmin", "ymin", "xmax", "ymax"))
        except ValueError:
            raise UserError(f"{path}: object {number} ('{name}') has a non-numeric box coordinate") from None
        if x2 < x1 or y2 < y1:
            raise UserError(f"{path}: object {number} ('{name}') has x2 < x1 or y2 < y1: "
                            f"({x1:g}, {y1:g}, {x2:g}, {y2:g})")
        if x1 < 0 or y1 < 0 or (width is not None and (x2 > width or y2 > height)):
            raise UserError(f"{path}: object {number} ('{name}') box ({x1:g}, {y1:g}, {x2:g}, {y2:g}) lies "
                            f"outside the {width:g}x{height:g} image" if width is not None else
                            f"{path}: object {number} ('{name}') has a negative coordinate")
        boxes.append([max(x1 - 1, 0.0), max(y1 - 1, 0.0), max(x2 - 1, 0.0), max(y2 - 1, 0.0)])
        labels.append(index[name])
        difficult.append(int(float(_text(obj, "difficult", path, default="0"))) == 1)
    image_id = os.path.splitext(os.path.basename(path))[0]
    return DetectionRecord(image_id=image_id, boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
                           labels=np.asarray(labels, dtype=np.int64), difficult=np.asarray(difficult, dtype=bool),
                           source=path)


def read_voc_set(voc_dir: str, image_set: str, class_names: Sequence[str] = VOC_CLASSES) -> list[DetectionRecord]:
    """Every image of ``voc_dir/ImageSets/Main/{image_set}.txt`` with all its objects."""
    if not os.path.isdir(voc_dir):
        raise UserError(f"VOC folder '{voc_dir}' does not exist")
    list_file = os.path.join(voc_dir, "ImageSets", "Main", f"{image_set}.txt")
    if not os.path.isfile(list_file):
        raise UserError(f"VOC image list '{list_file}' does not exist")
    with open(list_file) as handle:
        image_ids = [line.split()[0] for line in handle if line.strip()]
    if not image_ids:
        raise UserError(f"VOC image list '{list_file}' names no image")
    records = []
    for image_id in image_ids:
        xml = os.path.join(voc_dir, "Annotations", f"{image_id}.xml")
        jpg = os.path.join(voc_dir, "JPEGImages", f"{image_id}.jpg")
        if not os.path.isfile(xml):
            raise UserError(f"{list_file} names '{image_id}' but its annotation '{xml}' does not exist")
        if not os.path.isfile(jpg):
            raise UserError(f"{list_file} names '{image_id}' but its image '{jpg}' does not exist")
        record = parse_voc_xml(xml, class_names)
        record.image_id, record.image_path = image_id, jpg
        records.append(record)
    return records


def for_training(records: Sequence[DetectionRecord]) -> list[DetectionRecord]:
    """Difficult objects dropped and images left without boxes skipped (the original's voc.py)."""
    kept = []
    for record in records:
        keep = ~record.difficult
        if keep.any():
            kept.append(DetectionRecord(record.image_id, record.boxes[keep], record.labels[keep],
                                        record.difficult[keep], record.image_path, record.image, record.source))
    return kept


def voc_records(data_root: str, split: str, train_sets: Sequence[tuple[str, str]] = VOC_TRAIN_SETS,
                test_set: tuple[str, str] = VOC_TEST_SET) -> list[DetectionRecord]:
    """``split="train"``: the training images (difficult dropped, empty images skipped);
    ``split="test"``: every test image with difficult objects flagged."""
    if not os.path.isdir(data_root):
        raise UserError(f"data folder '{data_root}' does not exist")
    devkit = os.path.join(data_root, "VOCdevkit")
    if not os.path.isdir(devkit):
        raise UserError(f"'{data_root}' has no VOCdevkit folder (expected VOCdevkit/VOC2007 and VOCdevkit/VOC2012)")
    if split == "train":
        records = []
        for year, image_set in train_sets:
            records += for_training(read_voc_set(os.path.join(devkit, year), image_set))
        return records
    if split == "test":
        return read_voc_set(os.path.join(devkit, test_set[0]), test_set[1])
    raise ValueError(f"unknown split '{split}'")


def read_annotation_list(path: str, num_classes: int = len(VOC_CLASSES)) -> list[DetectionRecord]:
    """The original's ``train_annotation.txt``/``test_annotation.txt``: one line per image,
    ``image_path x1,y1,x2,y2,class ...`` with VOC's 1-based coordinates and class indices. A
    relative image path is taken from the list's folder. Difficult objects are not in these
    files (the original wrote them without), so none is flagged."""
    if not os.path.isfile(path):
        raise UserError(f"annotation list '{path}' does not exist")
    base = os.path.dirname(os.path.abspath(path))
    records = []
    with open(path) as handle:
        for line_number, line in enumerate(handle, start=1):
            fields = line.split()
            if not fields:
                continue
            image_path = fields[0] if os.path.isabs(fields[0]) else os.path.join(base, fields[0])
            if not os.path.isfile(image_path):
                raise UserError(f"{path} line {line_number}: image '{image_path}' does not exist")
            boxes, labels = [], []
            for item in fields[1:]:
                try:
                    x1, y1, x2, y2, cls = (float(v) for v in item.split(","))
                except ValueError:
                    raise UserError(f"{path} line {line_number}: '{item}' is not x1,y1,x2,y2,class") from None
                if not (0 <= cls < num_classes and cls == int(cls)):
                    raise UserError(f"{path} line {line_number}: unknown class index {cls:g} "
                                    f"(expected 0..{num_classes - 1})")
                if x2 < x1 or y2 < y1 or x1 < 0 or y1 < 0:
                    raise UserError(f"{path} line {line_number}: invalid box ({x1:g}, {y1:g}, {x2:g}, {y2:g}) "
                                    f"(x2 < x1, y2 < y1 or negative)")
                boxes.append([max(x1 - 1, 0.0), max(y1 - 1, 0.0), max(x2 - 1, 0.0), max(y2 - 1, 0.0)])
                labels.append(int(cls))
            image_id = os.path.splitext(os.path.basename(image_path))[0]
            records.append(DetectionRecord(image_id, np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
                                           np.asarray(labels, dtype=np.int64), np.zeros(len(labels), dtype=bool),
                                           image_path=image_path, source=f"{path} line {line_number}"))
    if not records:
        raise UserError(f"annotation list '{path}' names no image")
    return records


def with_voc_ground_truth(records: Sequence[DetectionRecord], list_path: str,
                          class_names: Sequence[str] = VOC_CLASSES) -> tuple[list[DetectionRecord], str | None]:
    """The test records of an annotation list scored as the original scored them: against the VOC
    XML (``../Annotations/{id}.xml`` beside each ``JPEGImages/{id}.jpg``), difficult objects
    flagged (the evaluator ignores them). The original's ``test_annotation.txt`` was written without
    difficult objects, so scoring against it counts a detection of one as a false positive.

    Returns the records and None when every image has its XML; the list's own records and a
    one-line notice of what is scored when none has; a ``UserError`` when only some have.
    """
    found, missing = [], []
    for record in records:
        folder = os.path.dirname(os.path.dirname(os.path.abspath(record.image_path or "")))
        xml = os.path.join(folder, "Annotations", f"{record.image_id}.xml")
        (found if os.path.isfile(xml) else missing).append((record, xml))
    if not found:
        return list(records), (f"notice: no VOC XML beside the images of '{list_path}': scoring against the list's "
                               f"own boxes (the original's test_annotation.txt lacks difficult objects, so "
                               f"detections of them count as false positives and AP is lower than VOC's)")
    if missing:
        raise UserError(f"'{list_path}': {len(found)} images have a VOC XML under ../Annotations and "
                        f"{len(missing)} do not (e.g. '{missing[0][1]}'): give the complete devkit, or none")
    out = []
    for record, xml in found:
        parsed = parse_voc_xml(xml, class_names)
        parsed.image_id, parsed.image_path = record.image_id, record.image_path
        out.append(parsed)
    return out, None


# ---------------------------------------------------------------------------------------------
# Augmentation (utils/data_augment.py of the original), on uint8 RGB arrays
# ---------------------------------------------------------------------------------------------

def _uniform(rng: np.random.Generator, low: float, high: float) -> float:
    """``random.uniform(low, high)``, which also accepts ``low > high``."""
    return low + (high - low) * rng.random()


def random_flip(image: np.ndarray, boxes: np.ndarray, rng: np.random.Generator, p: float = 0.5):
    if rng.random() < p:
        width = image.shape[1]
        image = image[:, ::-1]
        boxes = boxes.copy()
        boxes[:, [0, 2]] = width - 1 - boxes[:, [2, 0]]
    return image, boxes


def random_crop(image: np.ndarray, boxes: np.ndarray, rng: np.random.Generator, p: float = 0.5):
    """Crop keeping every box. As in the original, the far edges are ``max(w, ...)``, i.e. only
    the left and top are ever cut."""
    if rng.random() < p:
        height, width = image.shape[:2]
        low, high = boxes[:, 0:2].min(axis=0), boxes[:, 2:4].max(axis=0)
        x_min = max(0, int(low[0] - _uniform(rng, 0, low[0])))
        y_min = max(0, int(low[1] - _uniform(rng, 0, low[1])))
        x_max = max(width, int(high[0] + _uniform(rng, 0, width - high[0])))
        y_max = max(height, int(high[1] + _uniform(rng, 0, height - high[1])))
        image = image[y_min:y_max, x_min:x_max]
        boxes = boxes.copy()
        boxes[:, [0, 2]] -= x_min
        boxes[:, [1, 3]] -= y_min
    return image, boxes


def random_translate(image: np.ndarray, boxes: np.ndarray, rng: np.random.Generator, p: float = 0.5):
    """Shift the image (bilinear, black fill, same size) so that every box stays inside."""
    if rng.random() < p:
        height, width = image.shape[:2]
        low, high = boxes[:, 0:2].min(axis=0), boxes[:, 2:4].max(axis=0)
        tx = _uniform(rng, -(low[0] - 1), width - high[0] - 1)
        ty = _uniform(rng, -(low[1] - 1), height - high[1] - 1)
        shifted = Image.fromarray(np.ascontiguousarray(image)).transform(
            (width, height), Image.Transform.AFFINE, (1, 0, -tx, 0, 1, -ty),
            resample=Image.Resampling.BILINEAR, fillcolor=(0, 0, 0))
        image = np.asarray(shifted)
        boxes = boxes.copy()
        boxes[:, [0, 2]] += tx
        boxes[:, [1, 3]] += ty
    return image, boxes


def letterbox_geometry(height: int, width: int, size: int) -> tuple[float, int, int, int, int]:
    """``(ratio, new_w, new_h, dw, dh)`` of the original's Resize: aspect kept, centred."""
    ratio = min(size / width, size / height)
    new_w, new_h = int(ratio * width), int(ratio * height)
    return ratio, new_w, new_h, int((size - new_w) / 2), int((size - new_h) / 2)


def resize_linear(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """``image`` (H, W, 3) resized to ``height`` x ``width`` as float32 pixel values, the way the
    original's ``cv2.resize(float32 image, (w, h))`` (INTER_LINEAR) does it: bilinear weights at
    half-pixel centres, sources clamped to the border, no antialiasing (Pillow's bilinear resize
    averages over the footprint when shrinking, which softens edges: tests/test_detection_data.py)."""
    tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).permute(2, 0, 1)[None]
    if tensor.shape[-2:] == (height, width):
        return np.ascontiguousarray(image, dtype=np.float32)
    out = torch.nn.functional.interpolate(tensor, size=(height, width), mode="bilinear", align_corners=False,
                                          antialias=False)
    return out[0].permute(1, 2, 0).numpy()


def letterbox(image: np.ndarray, boxes: np.ndarray | None, size: int):
    """Resize into a ``size`` square with grey (128) padding and scale to [0, 1] (no mean/std).

    Returns a float32 (3, size, size) array and the boxes moved with the image.
    """
    height, width = image.shape[:2]
    ratio, new_w, new_h, dw, dh = letterbox_geometry(height, width, size)
    canvas = np.full((size, size, 3), PAD_VALUE, dtype=np.float32)
    canvas[dh:dh + new_h, dw:dw + new_w] = resize_linear(image, new_h, new_w)
    out = (canvas / 255.0).transpose(2, 0, 1)
    if boxes is not None:
        boxes = boxes.copy()
        boxes[:, [0, 2]] = boxes[:, [0, 2]] * ratio + dw
        boxes[:, [1, 3]] = boxes[:, [1, 3]] * ratio + dh
    return np.ascontiguousarray(out), boxes


def mixup(image: np.ndarray, boxes: np.ndarray, other: np.ndarray, other_boxes: np.ndarray,
          rng: np.random.Generator, p: float = 0.5, alpha: float = 1.5):
    """With probability ``p`` blend with another image, lam ~ Beta(alpha, alpha); boxes of both
    images are kept with weight lam and 1 - lam (a sixth column); otherwise weight 1."""
    if rng.random() > p:
        lam = rng.beta(alpha, alpha)
        mixed = lam * image + (1 - lam) * other
        boxes = np.concatenate([np.hstack([boxes, np.full((len(boxes), 1), lam)]),
                                np.hstack([other_boxes, np.full((len(other_boxes), 1), 1 - lam)])])
        return mixed.astype(np.float32), boxes
    return image, np.hstack([boxes, np.ones((len(boxes), 1))])


# ---------------------------------------------------------------------------------------------
# Data sets and collation
# ---------------------------------------------------------------------------------------------

class DetectionTrainSet(torch.utils.data.Dataset):
    """Augmented training images with YOLO targets, deterministic given (seed, epoch, index).

    The original's augmentation: horizontal flip (``flip``), crop, translation, then mixup with
    another image with probability ``1 - mixup_p`` (its quirk, see ``mixup``); ``mixup_p=0`` never mixes."""

    def __init__(self, records: Sequence[DetectionRecord], num_classes: int, img_size: int = 416, seed: int = 0,
                 anchors: Sequence = VOC_ANCHORS, strides: Sequence[int] = STRIDES, augment: bool = True,
                 mixup_p: float = 0.5, max_boxes: int = MAX_BOXES_PER_SCALE, flip: bool = True):
        if not records:
            raise UserError("the training set holds no image with a (non-difficult) box")
        if img_size % max(strides) != 0:
            raise UserError(f"--img_size {img_size} must be a multiple of {max(strides)}")
        self.records, self.num_classes, self.img_size = list(records), num_classes, img_size
        self.seed, self.anchors, self.strides, self.augment = seed, anchors, strides, augment
        self.mixup_p, self.max_boxes, self.flip, self.epoch = mixup_p, max_boxes, flip, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.records)

    def _one(self, index: int, rng: np.random.Generator):
        record = self.records[index]
        image = record.load_image()
        boxes = np.hstack([record.boxes.astype(np.float64), record.labels[:, None].astype(np.float64)])
        if self.augment:
            if self.flip:
                image, boxes = random_flip(image, boxes, rng)
            image, boxes = random_crop(image, boxes, rng)
            image, boxes = random_translate(image, boxes, rng)
        return letterbox(image, boxes, self.img_size)

    def __getitem__(self, index: int) -> dict:
        rng = np.random.default_rng([self.seed, self.epoch, index])
        image, boxes = self._one(index, rng)
        if self.augment and self.mixup_p > 0:
            other_image, other_boxes = self._one(int(rng.integers(len(self.records))), rng)
            image, boxes = mixup(image, boxes, other_image, other_boxes, rng, p=self.mixup_p)
        else:
            boxes = np.hstack([boxes, np.ones((len(boxes), 1))])
        labels, box_lists = build_targets(boxes, self.img_size, self.num_classes, self.anchors, self.strides,
                                          max_boxes=self.max_boxes)
        return {"image": torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)),
                "labels": [torch.from_numpy(label) for label in labels],
                "boxes": [torch.from_numpy(box) for box in box_lists]}


class DetectionEvalSet(torch.utils.data.Dataset):
    """Letterboxed evaluation images (no augmentation) with what is needed to map boxes back.

    ``sizes`` are the input sizes each image is letterboxed to: one for the usual evaluation,
    several for the original's multi-scale test (``MULTI_SCALE_VAL_SIZES``).
    """

    def __init__(self, records: Sequence[DetectionRecord], img_size: int = 416, sizes: Sequence[int] | None = None):
        if not records:
            raise UserError("the evaluation set holds no image")
        self.records = list(records)
        self.sizes = tuple(sizes) if sizes else (img_size,)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        image = self.records[index].load_image()
        images = [torch.from_numpy(letterbox(image, None, size)[0]) for size in self.sizes]
        return {"image": images[0], "images": images, "index": index,
                "orig_size": torch.tensor(image.shape[:2], dtype=torch.int64)}


def train_collate(batch: Sequence[dict]) -> dict:
    """``{"image": (B, 3, S, S), "labels": [(B, G, G, 3, 6 + C)] x 3, "boxes": [(B, 150, 4)] x 3}``."""
    scales = range(len(batch[0]["labels"]))
    return {"image": torch.stack([item["image"] for item in batch]),
            "labels": [torch.stack([item["labels"][s] for item in batch]) for s in scales],
            "boxes": [torch.stack([item["boxes"][s] for item in batch]) for s in scales]}


def eval_collate(batch: Sequence[dict]) -> dict:
    """``{"image": (B, 3, S, S), "images": [one such batch per size], "index": (B,), "orig_size": (B, 2)}``."""
    sizes = range(len(batch[0]["images"]))
    return {"image": torch.stack([item["image"] for item in batch]),
            "images": [torch.stack([item["images"][s] for item in batch]) for s in sizes],
            "index": torch.tensor([item["index"] for item in batch], dtype=torch.int64),
            "orig_size": torch.stack([item["orig_size"] for item in batch])}


# ---------------------------------------------------------------------------------------------
# Embedded default: digits on a canvas
# ---------------------------------------------------------------------------------------------

DIGIT_SPLITS = ("train", "val", "test")
_DIGIT_TEST_COUNT, _DIGIT_VAL_COUNT = 360, 144


def digit_pool(split: str) -> tuple[np.ndarray, np.ndarray]:
    """The digit images of one split: the 1,797 digits permuted once with a fixed seed, the first
    360 for test, the next 144 for validation, the rest for training (never shared)."""
    ink, labels = read_digits()
    chosen = digits_split([("test", _DIGIT_TEST_COUNT), ("val", _DIGIT_VAL_COUNT), ("train", None)],
                          seed=0, count=len(ink))[split]
    return digits_pixels(ink[chosen]), labels[chosen]


def digit_detection_records(split: str, count: int, seed: int = 0, canvas: int = 64,
                            digits_per_image: tuple[int, int] = (1, 3), scales: Sequence[int] = (2, 3)
                            ) -> list[DetectionRecord]:
    """``count`` canvases of ``canvas`` px, each with 1-3 non-overlapping digits of ``split``
    enlarged 2x or 3x; each box is the tight box of its digit's non-zero pixels and its class the
    digit. Deterministic given (split, count, seed, canvas)."""
    if split not in DIGIT_SPLITS:
        raise UserError(f"unknown digits split '{split}': choose one of {', '.join(DIGIT_SPLITS)}")
    if canvas < 8 * max(scales):
        raise UserError(f"a digits canvas must be at least {8 * max(scales)} px, got {canvas}")
    pixels, targets = digit_pool(split)
    rng = np.random.default_rng([seed, DIGIT_SPLITS.index(split), canvas])
    records = []
    for number in range(count):
        image = np.zeros((canvas, canvas), dtype=np.uint8)
        boxes, labels = [], []
        for _ in range(int(rng.integers(digits_per_image[0], digits_per_image[1] + 1))):
            pick = int(rng.integers(len(pixels)))
            scale = int(rng.choice(scales))
            digit = np.kron(pixels[pick], np.ones((scale, scale), dtype=np.uint8))
            size = digit.shape[0]
            for _attempt in range(20):
                top, left = (int(v) for v in rng.integers(0, canvas - size + 1, size=2))
                if all(left > b[2] or left + size - 1 < b[0] or top > b[3] or top + size - 1 < b[1] for b in boxes):
                    break
            else:
                continue
            ys, xs = np.nonzero(digit)
            if len(xs) == 0:
                continue
            image[top:top + size, left:left + size] = np.maximum(image[top:top + size, left:left + size], digit)
            boxes.append([left + xs.min(), top + ys.min(), left + xs.max(), top + ys.max()])
            labels.append(int(targets[pick]))
        records.append(DetectionRecord(f"{split}_{number:05d}", np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
                                       np.asarray(labels, dtype=np.int64), np.zeros(len(labels), dtype=bool),
                                       image=np.repeat(image[:, :, None], 3, axis=2), source=f"digits {split}"))
    return records
