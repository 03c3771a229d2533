"""Segmentation data: VOC2012 and Cityscapes in their on-disk layouts, the original's joint transforms,
a padding collate, and an embedded set built from scikit-learn's digits."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from PIL import Image
from torch.utils.data import Dataset

from lth.data import DIGITS_MAX_VALUE, digits_split, read_digits
from lth.distributed import Context, per_process_batch, per_process_eval_batch
from lth.errors import IMAGE_READ_ERRORS, UserError
from lth.imagedata import IMAGENET_MEAN, IMAGENET_STD

IGNORE = 255
DATASETS = ("voc", "cityscapes", "digits")
VOC_YEARS = ("2012", "2012_aug")
VOC_CLASSES = 21
CITYSCAPES_CLASSES = 19
DIGITS_CLASSES = 11  # background + the ten digits
SCALE_RANGE = (0.5, 2.0)

# Cityscapes labelIds 0..33 -> the 19 train ids (cityscapesScripts' table); every other id -> 255.
# 255 in a labelIds file is the license plate (id -1), also ignored.
_CITYSCAPES_TRAIN_IDS = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10,
                         24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
CITYSCAPES_LABEL_IDS = 34


def cityscapes_id_table() -> np.ndarray:
    """A 256-entry lookup table labelId -> train id (255 for ignored ids)."""
    table = np.full(256, IGNORE, dtype=np.uint8)
    for label_id, train_id in _CITYSCAPES_TRAIN_IDS.items():
        table[label_id] = train_id
    return table


# --------------------------------------------------------------------------------------------
# Joint transforms on (PIL image, PIL label) pairs
# --------------------------------------------------------------------------------------------
# Random draws come from torch's global generator, which DataLoader workers seed and which
# lth's DeviceLoader seeds per batch in the main process: augmentation is reproducible.

class JointCompose:
    def __init__(self, transforms: Sequence[Callable]):
        self.transforms = list(transforms)

    def __call__(self, image, label):
        for transform in self.transforms:
            image, label = transform(image, label)
        return image, label

    def __repr__(self) -> str:
        return f"JointCompose({self.transforms})"


def _uniform(low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand(()))


class RandomScale:
    """Resize both by one factor drawn from ``scale_range`` (image bilinear, label nearest)."""

    def __init__(self, scale_range: tuple[float, float] = SCALE_RANGE):
        self.scale_range = scale_range

    def __call__(self, image, label):
        scale = _uniform(*self.scale_range)
        size = [int(image.size[1] * scale), int(image.size[0] * scale)]
        return (TF.resize(image, size, T.InterpolationMode.BILINEAR),
                TF.resize(label, size, T.InterpolationMode.NEAREST))


# The label value of the pixels a training crop pads: the original's 0 (background: its pad_if_needed
# used F.pad's default fill), or 255 (ignored). On VOC-sized images at --crop_size 513, 23.5 % of all
# training label pixels are padding, so the choice changes what is trained (--label_pad).
LABEL_PADS = (0, IGNORE)
ORIGINAL_LABEL_PAD = 0


class RandomCrop:
    """A random ``size`` x ``size`` crop; smaller inputs are first padded as the original pads them
    (all four sides by ``(1 + size - width) // 2``, then likewise for the height), the image with 0
    and the label with ``label_fill`` (the original's 0, background, by default; 255 ignores them)."""

    def __init__(self, size: int, pad_if_needed: bool = True, label_fill: int = ORIGINAL_LABEL_PAD):
        self.size, self.pad_if_needed, self.label_fill = size, pad_if_needed, label_fill

    def __call__(self, image, label):
        if self.pad_if_needed and image.size[0] < self.size:
            pad = int((1 + self.size - image.size[0]) / 2)
            image, label = TF.pad(image, pad, fill=0), TF.pad(label, pad, fill=self.label_fill)
        if self.pad_if_needed and image.size[1] < self.size:
            pad = int((1 + self.size - image.size[1]) / 2)
            image, label = TF.pad(image, pad, fill=0), TF.pad(label, pad, fill=self.label_fill)
        width, height = image.size
        if width < self.size or height < self.size:
            raise UserError(f"a {width}x{height} image is smaller than --crop_size {self.size}")
        top = int(torch.randint(0, height - self.size + 1, ()))
        left = int(torch.randint(0, width - self.size + 1, ()))
        return (TF.crop(image, top, left, self.size, self.size),
                TF.crop(label, top, left, self.size, self.size))


class RandomHorizontalFlip:
    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, image, label):
        if float(torch.rand(())) < self.p:
            return TF.hflip(image), TF.hflip(label)
        return image, label


class Resize:
    """Shorter side to ``size`` (image bilinear, label nearest)."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, image, label):
        return (TF.resize(image, self.size, T.InterpolationMode.BILINEAR),
                TF.resize(label, self.size, T.InterpolationMode.NEAREST))


class CenterCrop:
    def __init__(self, size: int):
        self.size = size

    def __call__(self, image, label):
        return TF.center_crop(image, [self.size, self.size]), TF.center_crop(label, [self.size, self.size])


class ColorJitter:
    """torchvision's colour jitter on the image only (the original's Cityscapes training)."""

    def __init__(self, brightness: float = 0.5, contrast: float = 0.5, saturation: float = 0.5):
        self.jitter = T.ColorJitter(brightness=brightness, contrast=contrast, saturation=saturation)

    def __call__(self, image, label):
        return self.jitter(image), label


class ToTensorNormalize:
    """Image -> float tensor normalised with ImageNet's mean/std; label -> int64 tensor."""

    def __call__(self, image, label):
        tensor = TF.normalize(TF.to_tensor(image), IMAGENET_MEAN, IMAGENET_STD)
        return tensor, torch.from_numpy(np.array(label, dtype=np.int64))


def train_transform(dataset: str, crop_size: int, label_pad: int = ORIGINAL_LABEL_PAD) -> JointCompose:
    """The original's training transforms: VOC random scale 0.5-2.0, crop (labels padded with
    ``label_pad``), flip; Cityscapes crop, colour jitter, flip; digits none (a flipped digit is
    another glyph)."""
    if label_pad not in LABEL_PADS:
        raise UserError(f"--label_pad must be one of {', '.join(map(str, LABEL_PADS))}, got {label_pad}")
    if dataset == "voc":
        return JointCompose([RandomScale(SCALE_RANGE), RandomCrop(crop_size, label_fill=label_pad),
                             RandomHorizontalFlip(), ToTensorNormalize()])
    if dataset == "cityscapes":
        return JointCompose([RandomCrop(crop_size, label_fill=label_pad), ColorJitter(0.5, 0.5, 0.5),
                             RandomHorizontalFlip(), ToTensorNormalize()])
    return JointCompose([ToTensorNormalize()])


def val_transform(crop_size: int | None = None) -> JointCompose:
    """Full images, or with ``crop_size`` (``--crop_val``) shorter side resized then centre-cropped."""
    steps = [] if crop_size is None else [Resize(crop_size), CenterCrop(crop_size)]
    return JointCompose(steps + [ToTensorNormalize()])


# --------------------------------------------------------------------------------------------
# Data sets
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Sample:
    id: str
    image: str
    label: str


class SegmentationFiles(Dataset):
    """(image, label) file pairs read as ``(image tensor, {"mask", "index", "size"})``.

    ``mask`` is int64 with 255 = ignore, ``index`` the sample's position (its id is ``ids[index]``),
    ``size`` the mask's (height, width) before any batch padding. A label of another size than its
    image, or with a value >= ``num_classes`` other than 255, is a ``UserError`` naming the file.
    ``label_table`` maps raw label values first (Cityscapes labelIds -> train ids); values it marks
    ``invalid`` are errors.
    """

    def __init__(self, samples: Sequence[Sample], num_classes: int, transform: Callable | None = None,
                 label_table: np.ndarray | None = None, invalid: np.ndarray | None = None):
        self.samples = list(samples)
        self.num_classes, self.transform = num_classes, transform
        self.label_table, self.invalid = label_table, invalid
        self.ids = [sample.id for sample in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        sample = self.samples[index]
        image = _open(sample.image, "image").convert("RGB")
        label = _read_label(sample.label)
        if label.shape != (image.size[1], image.size[0]):
            raise UserError(f"label '{sample.label}' is {label.shape[1]}x{label.shape[0]} but its image "
                            f"'{sample.image}' is {image.size[0]}x{image.size[1]}")
        if self.label_table is not None:
            if self.invalid is not None and self.invalid[label].any():
                bad = int(label[self.invalid[label]][0])
                raise UserError(f"label '{sample.label}' holds value {bad}, which is not a valid label id")
            label = self.label_table[label]
        check_label_values(label, self.num_classes, sample.label)
        return finish(image, Image.fromarray(label), index, self.transform)


def finish(image: Image.Image, label: Image.Image, index: int, transform: Callable | None):
    image, mask = (transform or ToTensorNormalize())(image, label)
    return image, {"mask": mask, "index": torch.tensor(index), "size": torch.tensor(mask.shape[-2:])}


def check_label_values(label: np.ndarray, num_classes: int, path: str) -> None:
    bad = (label >= num_classes) & (label != IGNORE)
    if bad.any():
        raise UserError(f"label '{path}' holds value {int(label[bad][0])}; labels must lie in "
                        f"0..{num_classes - 1} or be 255 (ignore)")


def _open(path: str, what: str) -> Image.Image:
    try:
        with Image.open(path) as handle:
            handle.load()
            return handle.copy()
    except FileNotFoundError:
        raise UserError(f"{what} '{path}' does not exist") from None
    except IMAGE_READ_ERRORS as error:
        reason = (str(error).splitlines() or [type(error).__name__])[0]
        raise UserError(f"cannot read {what} '{path}': {reason}") from None


def _read_label(path: str) -> np.ndarray:
    """Class indices of a palette ('P') or grayscale ('L') PNG, as uint8 (never converted to RGB)."""
    label = _open(path, "label")
    if label.mode not in ("P", "L"):
        raise UserError(f"label '{path}' is a {label.mode} image; expected a palette or grayscale PNG of "
                        f"class indices")
    return np.array(label, dtype=np.uint8)


def _require_dir(path: str, what: str) -> None:
    if not os.path.isdir(path):
        raise UserError(f"{what} '{path}' not found")


def _read_list(path: str) -> list[str]:
    if not os.path.isfile(path):
        raise UserError(f"image list '{path}' not found")
    with open(path) as handle:
        ids = [line.strip().split()[0] for line in handle if line.strip()]
    if not ids:
        raise UserError(f"image list '{path}' lists no images")
    return ids


def _checked_samples(ids: Sequence[str], image_dir: str, label_dir: str, list_path: str,
                     image_ext: str = ".jpg", label_ext: str = ".png") -> list[Sample]:
    """Samples of a list, each image and label checked to exist (cheap, before any training)."""
    samples = []
    for sample_id in ids:
        image, label = os.path.join(image_dir, sample_id + image_ext), os.path.join(label_dir, sample_id + label_ext)
        if not os.path.isfile(image):
            raise UserError(f"'{list_path}' lists '{sample_id}' but its image '{image}' does not exist")
        if not os.path.isfile(label):
            raise UserError(f"'{list_path}' lists '{sample_id}' but its label '{label}' does not exist")
        samples.append(Sample(sample_id, image, label))
    return samples


def voc_segmentation(data_root: str, year: str = "2012", image_set: str = "train",
                     transform: Callable | None = None) -> SegmentationFiles:
    """PASCAL VOC2012 under ``data_root/VOCdevkit/VOC2012`` as the original reads it.

    ``year="2012"``: ``ImageSets/Segmentation/{image_set}.txt`` with ``SegmentationClass`` labels.
    ``year="2012_aug"``: training reads ``data_root/train_aug.txt`` (or
    ``ImageSets/Segmentation/train_aug.txt``) with ``SegmentationClassAug`` labels; validation is
    the same as for 2012.
    """
    if year not in VOC_YEARS:
        raise UserError(f"--year must be one of {', '.join(VOC_YEARS)}, got '{year}'")
    voc_root = os.path.join(data_root, "VOCdevkit", "VOC2012")
    _require_dir(voc_root, "VOC2012 folder (expected --data_root/VOCdevkit/VOC2012)")
    image_dir = os.path.join(voc_root, "JPEGImages")
    _require_dir(image_dir, "VOC image folder")
    lists_dir = os.path.join(voc_root, "ImageSets", "Segmentation")
    if year == "2012_aug" and image_set == "train":
        label_dir = os.path.join(voc_root, "SegmentationClassAug")
        _require_dir(label_dir, "SegmentationClassAug folder (needed by --year 2012_aug)")
        candidates = [os.path.join(data_root, "train_aug.txt"), os.path.join(lists_dir, "train_aug.txt")]
        list_path = next((path for path in candidates if os.path.isfile(path)), None)
        if list_path is None:
            raise UserError(f"image list 'train_aug.txt' not found in '{candidates[0]}' nor '{candidates[1]}'")
    else:
        label_dir = os.path.join(voc_root, "SegmentationClass")
        _require_dir(label_dir, "VOC label folder")
        list_path = os.path.join(lists_dir, f"{image_set}.txt")
    samples = _checked_samples(_read_list(list_path), image_dir, label_dir, list_path)
    return SegmentationFiles(samples, VOC_CLASSES, transform)


def cityscapes_segmentation(data_root: str, split: str = "train",
                            transform: Callable | None = None) -> SegmentationFiles:
    """Cityscapes ``leftImg8bit/{split}/{city}/*_leftImg8bit.png`` with
    ``gtFine/{split}/{city}/*_gtFine_labelIds.png``, labelIds mapped to the 19 train ids."""
    image_root = os.path.join(data_root, "leftImg8bit", split)
    label_root = os.path.join(data_root, "gtFine", split)
    _require_dir(image_root, "Cityscapes image folder")
    _require_dir(label_root, "Cityscapes label folder")
    samples = []
    for city in sorted(os.listdir(image_root)):
        city_dir = os.path.join(image_root, city)
        if not os.path.isdir(city_dir):
            continue
        for name in sorted(os.listdir(city_dir)):
            if not name.endswith("_leftImg8bit.png"):
                continue
            stem = name[: -len("_leftImg8bit.png")]
            label = os.path.join(label_root, city, stem + "_gtFine_labelIds.png")
            if not os.path.isfile(label):
                raise UserError(f"image '{os.path.join(city_dir, name)}' has no label '{label}'")
            samples.append(Sample(f"{city}/{stem}", os.path.join(city_dir, name), label))
    if not samples:
        raise UserError(f"Cityscapes folder '{image_root}' holds no '<city>/*_leftImg8bit.png' images")
    invalid = np.zeros(256, dtype=bool)
    invalid[CITYSCAPES_LABEL_IDS:IGNORE] = True
    return SegmentationFiles(samples, CITYSCAPES_CLASSES, transform, label_table=cityscapes_id_table(),
                             invalid=invalid)


# --------------------------------------------------------------------------------------------
# Batching
# --------------------------------------------------------------------------------------------

def process_batches(batch_size: int, val_batch_size: int, ctx: Context) -> tuple[int, int]:
    """This process's training and validation batch sizes from the global --batch_size and
    --val_batch_size. A training batch of one image per process is refused on one line: the batch
    norm after ASPP's image pooling sees one value per channel per image and cannot train on it
    (the original's DeepLabV3+ failed there with a traceback)."""
    train = per_process_batch(batch_size, ctx)
    if train < 2:
        raise UserError(f"--batch_size {batch_size} gives {train} image per process: DeepLabV3+ needs at least 2 "
                        f"(the batch norm after ASPP's image pooling sees one value per channel per image)")
    return train, per_process_eval_batch(val_batch_size, ctx)


def pad_collate(batch: Sequence[tuple[torch.Tensor, dict]]) -> tuple[torch.Tensor, dict]:
    """Stack samples of different sizes: images padded with 0 (the normalised mean colour) and
    masks with 255 (ignored) at the bottom and right; ``size`` keeps each mask's own size."""
    height = max(image.shape[-2] for image, _ in batch)
    width = max(image.shape[-1] for image, _ in batch)
    images = batch[0][0].new_zeros((len(batch), batch[0][0].shape[0], height, width))
    masks = torch.full((len(batch), height, width), IGNORE, dtype=torch.int64)
    for row, (image, target) in enumerate(batch):
        images[row, :, : image.shape[-2], : image.shape[-1]] = image
        mask = target["mask"]
        masks[row, : mask.shape[-2], : mask.shape[-1]] = mask
    return images, {"mask": masks,
                    "index": torch.stack([target["index"] for _, target in batch]),
                    "size": torch.stack([target["size"] for _, target in batch])}


# --------------------------------------------------------------------------------------------
# The embedded data set: digits pasted on small canvases
# --------------------------------------------------------------------------------------------

class ArraySegmentation(Dataset):
    """Images (N, H, W, 3) uint8 and masks (N, H, W) uint8 held in memory, read like the file sets."""

    def __init__(self, images: np.ndarray, masks: np.ndarray, ids: Sequence[str], num_classes: int,
                 transform: Callable | None = None):
        self.images, self.masks, self.ids = images, masks, list(ids)
        self.num_classes, self.transform = num_classes, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        return finish(Image.fromarray(self.images[index]), Image.fromarray(self.masks[index]), index,
                      self.transform)


@dataclass
class DigitsSplits:
    train: ArraySegmentation
    val: ArraySegmentation
    test: ArraySegmentation
    sources: dict  # split -> (canvases, per_canvas) indices into sklearn's digits
    num_classes: int = DIGITS_CLASSES


def digits_segmentation(seed: int = 0, canvas: int = 32, digit_size: int = 12, per_canvas: int = 2,
                        held_out: float = 0.15, train_copies: int = 3) -> DigitsSplits:
    """scikit-learn's 1,797 digits pasted on ``canvas`` x ``canvas`` images, deterministic in ``seed``.

    Each digit is scaled to ``digit_size`` px and pasted in a random colour on a noisy background
    of another colour; its mask is class + 1 where the scaled glyph is brighter than 30 % of full
    ink, with a one-pixel ring of 255 (ignored, like VOC's object boundaries) around it; the rest
    is background 0. The digit images are split before pasting (``held_out`` each for validation
    and test), so no digit image appears in two splits. Each training digit is pasted
    ``train_copies`` times (other partners, places and colours): a set that small is otherwise
    memorised within a few hundred steps.
    """
    ink, classes = read_digits()
    rng = np.random.default_rng(seed)
    held = int(round(held_out * len(ink)))
    parts = digits_split([("val", held), ("test", held), ("train", None)], seed=rng, count=len(ink))
    scaled = _scale_glyphs(ink / DIGITS_MAX_VALUE, digit_size)
    built, sources = {}, {}
    for name in ("train", "val", "test"):
        copies = train_copies if name == "train" else 1
        pool = np.concatenate([parts[name]] + [rng.permutation(parts[name]) for _ in range(copies - 1)])
        indices = pool[: len(pool) // per_canvas * per_canvas].reshape(-1, per_canvas)
        images, masks = _paste(scaled, classes, indices, canvas, rng)
        ids = [f"digits-{name}-{i:04d}" for i in range(len(images))]
        transform = train_transform("digits", canvas) if name == "train" else val_transform()
        built[name] = ArraySegmentation(images, masks, ids, DIGITS_CLASSES, transform)
        sources[name] = indices
    return DigitsSplits(**built, sources=sources)


def _scale_glyphs(glyphs: np.ndarray, size: int) -> np.ndarray:
    tensor = torch.from_numpy(glyphs).float().unsqueeze(1)
    scaled = torch.nn.functional.interpolate(tensor, size=(size, size), mode="bilinear", align_corners=False)
    return scaled.squeeze(1).clamp(0, 1).numpy()


def _paste(scaled: np.ndarray, classes: np.ndarray, groups: np.ndarray, canvas: int,
           rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    size = scaled.shape[-1]
    images = np.empty((len(groups), canvas, canvas, 3), dtype=np.uint8)
    masks = np.zeros((len(groups), canvas, canvas), dtype=np.uint8)
    for row, group in enumerate(groups):
        background = rng.uniform(0.0, 0.4, size=3)
        image = background + rng.normal(0.0, 0.05, size=(canvas, canvas, 3))
        mask = masks[row]
        for glyph_index, (top, left) in zip(group, _free_spots(len(group), canvas, size, rng)):
            ink = scaled[glyph_index]
            colour = rng.uniform(0.55, 1.0, size=3)
            window = image[top: top + size, left: left + size]
            window[:] = window * (1 - ink[..., None]) + colour * ink[..., None]
            digit = np.zeros((canvas, canvas), dtype=bool)
            digit[top: top + size, left: left + size] = ink > 0.3
            ring = _dilate(digit) & ~digit
            mask[ring & (mask == 0)] = IGNORE
            mask[digit] = classes[glyph_index] + 1
        images[row] = np.clip(image * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return images, masks


def _free_spots(count: int, canvas: int, size: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """Top-left corners of ``count`` boxes at least 2 px apart (room for both rings), drawn together."""
    if canvas < size:
        raise ValueError(f"a {size} px digit does not fit a {canvas} px canvas")
    for _ in range(1000):
        spots = [tuple(int(v) for v in rng.integers(0, canvas - size + 1, size=2)) for _ in range(count)]
        if all(abs(t1 - t2) >= size + 2 or abs(l1 - l2) >= size + 2
               for i, (t1, l1) in enumerate(spots) for (t2, l2) in spots[:i]):
            return spots
    raise ValueError(f"cannot place {count} digits of {size} px apart on a {canvas} px canvas")


def _dilate(region: np.ndarray) -> np.ndarray:
    """3x3 binary dilation."""
    padded = np.pad(region, 1)
    out = np.zeros_like(region)
    height, width = region.shape
    for dy in range(3):
        for dx in range(3):
            out |= padded[dy: dy + height, dx: dx + width]
    return out


# --------------------------------------------------------------------------------------------
# One call for the scripts
# --------------------------------------------------------------------------------------------

@dataclass
class SegmentationData:
    train: Dataset
    val: Dataset
    test: Dataset | None
    num_classes: int
    name: str


def load_segmentation(name: str, data_root: str | None = None, *, year: str = "2012", crop_size: int = 513,
                      crop_val: bool = False, seed: int = 0, label_pad: int = ORIGINAL_LABEL_PAD) -> SegmentationData:
    """``--dataset voc|cityscapes|digits`` with the original's transforms (``seed`` builds digits only).

    VOC and Cityscapes are evaluated on their validation split, as the original; digits also has a
    held-out test split.
    """
    if name not in DATASETS:
        raise UserError(f"--dataset must be one of {', '.join(DATASETS)}, got '{name}'")
    if name == "digits":
        digits = digits_segmentation(seed)
        return SegmentationData(digits.train, digits.val, digits.test, digits.num_classes, name)
    if not data_root:
        raise UserError(f"--dataset {name} needs --data_root")
    if crop_size < 1:
        raise UserError(f"--crop_size must be positive, got {crop_size}")
    evaluation = val_transform(crop_size if crop_val else None)
    if name == "voc":
        return SegmentationData(voc_segmentation(data_root, year, "train", train_transform("voc", crop_size, label_pad)),
                                voc_segmentation(data_root, year, "val", evaluation), None, VOC_CLASSES, name)
    return SegmentationData(cityscapes_segmentation(data_root, "train",
                                                    train_transform("cityscapes", crop_size, label_pad)),
                            cityscapes_segmentation(data_root, "val", evaluation), None, CITYSCAPES_CLASSES, name)
