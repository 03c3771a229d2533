"""Image-file data sets (ImageFolder, VisDA-2017 image lists), their transforms, loaders and models."""

from __future__ import annotations

import os
from typing import Callable, Sequence

import torch
import torch.nn as nn
import torchvision.transforms as T
from PIL import Image
from torch.utils.data import Dataset
from torchvision.datasets import ImageFolder

from lth.distributed import Context, per_process_batch, per_process_eval_batch
from lth.engine import Precision
from lth.errors import IMAGE_READ_ERRORS, UserError
from lth.models import build_model
from lth.loaders import DeviceLoader, Loaders  # noqa: F401  (DeviceLoader: imported from here by older code)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
VISDA_CLASSES = 12
VISDA_TRAIN_SCALE = (0.75, 1.33)  # the original's RandomResizedCrop scale for VisDA-2017


def imagenet_train_transform(size: int = 224, scale: tuple[float, float] = (0.08, 1.0)) -> Callable:
    return T.Compose([T.RandomResizedCrop(size, scale=scale), T.RandomHorizontalFlip(), T.ToTensor(),
                      T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def imagenet_eval_transform(size: int = 224, resize: int | Sequence[int] | None = None) -> Callable:
    """Resize (shorter side to ``resize``, default size/0.875) then centre-crop ``size``."""
    resize = resize if resize is not None else int(round(size / 0.875))
    return T.Compose([T.Resize(resize), T.CenterCrop(size), T.ToTensor(),
                      T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def image_folder(root: str, split: str, transform: Callable | None) -> ImageFolder:
    """``root/split`` in torchvision's ImageFolder layout (one sub-folder of images per class)."""
    path = os.path.join(root, split)
    if not os.path.isdir(path):
        raise UserError(f"image folder '{path}' not found: expected {root}/{split}/<class>/<image files>")
    try:
        return ImageFolder(path, transform=transform, loader=read_rgb_image)
    except (FileNotFoundError, RuntimeError) as error:
        raise UserError(f"image folder '{path}' holds no usable images: expected "
                        f"{root}/{split}/<class>/<image files> ({str(error).splitlines()[0]})") from None


def image_folder_splits(root: str, size: int = 224) -> tuple[ImageFolder, ImageFolder]:
    """``root/train`` and ``root/val`` (ImageNet layout) with the ImageNet train/eval transforms.

    Both must name the same classes, since a label is a class's index in the sorted folder names.
    """
    train = image_folder(root, "train", imagenet_train_transform(size))
    val = image_folder(root, "val", imagenet_eval_transform(size))
    if train.classes != val.classes:
        only = sorted(set(train.classes) ^ set(val.classes))
        raise UserError(f"'{root}/train' and '{root}/val' hold different class folders "
                        f"({len(train.classes)} vs {len(val.classes)}; e.g. '{only[0] if only else '?'}' "
                        f"is only in one): labels would not match")
    return train, val


def visda_splits(root: str, size: int = 224) -> tuple["ImageList", "ImageList"]:
    """VisDA-2017's ``root/train`` and ``root/validation`` image lists with the original's transforms:
    RandomResizedCrop(scale 0.75-1.33) + flip for training, a plain resize to size x size for validation."""
    if not os.path.isdir(root):
        raise UserError(f"VisDA-2017 folder '{root}' not found: expected {root}/train/image_list.txt "
                        f"and {root}/validation/image_list.txt")
    train = ImageList(os.path.join(root, "train"), imagenet_train_transform(size, scale=VISDA_TRAIN_SCALE),
                      num_classes=VISDA_CLASSES)
    val = ImageList(os.path.join(root, "validation"), imagenet_eval_transform(size, resize=(size, size)),
                    num_classes=VISDA_CLASSES)
    return train, val


def image_loaders(train: Dataset, val: Dataset, num_classes: int, *, batch_size: int,
                  eval_batch_size: int | None, workers: int, seed: int, ctx: Context,
                  precision: Precision) -> Loaders:
    """Loaders of an image-file task (no test split: the original reports validation accuracy)."""
    common = dict(seed=seed, ctx=ctx, workers=workers, channels_last=precision.channels_last)
    eval_batch = per_process_eval_batch(eval_batch_size or 4 * batch_size, ctx)
    batch_size = per_process_batch(batch_size, ctx)
    # The last partial training batch is kept, as the original ImageNet and VisDA scripts kept it.
    loaders = Loaders(train=DeviceLoader(train, batch_size, train=True, drop_last=False, **common),
                      val=DeviceLoader(val, eval_batch, train=False, **common),
                      test=None, num_classes=num_classes)
    if len(loaders.train) == 0:
        raise UserError(f"the training split has {len(train)} images per process, fewer than one batch "
                        f"of {batch_size}: lower --batch_size")
    return loaders


def image_model(arch: str, num_classes: int, seed: int, ctx: Context, precision: Precision) -> nn.Module:
    """The torchvision ResNet (ImageNet stem) for an image-file task, initialised from ``seed``."""
    torch.manual_seed(seed)
    model = build_model(arch, num_classes, stem="imagenet").to(ctx.device)
    if precision.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


class ImageList(Dataset):
    """A VisDA-2017 split: ``root/image_list.txt`` with lines ``relative/path label``.

    Every listed file is checked when the list is read, so a missing image is an error that names
    its line before any training starts, not a crash hours later.
    """

    def __init__(self, root: str, transform: Callable | None = None, num_classes: int | None = None,
                 list_name: str = "image_list.txt"):
        self.root, self.transform = root, transform
        list_path = os.path.join(root, list_name)
        if not os.path.isfile(list_path):
            raise UserError(f"image list '{list_path}' not found: expected {root}/{list_name} with "
                            f"lines 'relative/path label'")
        self.samples: list[tuple[str, int]] = []
        with open(list_path) as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                parts = line.split()
                try:
                    relative, label = " ".join(parts[:-1]), int(parts[-1])
                except (ValueError, IndexError):
                    raise UserError(f"{list_path} line {number}: expected 'relative/path label', "
                                    f"got {line.strip()!r}") from None
                if num_classes is not None and not 0 <= label < num_classes:
                    raise UserError(f"{list_path} line {number}: label {label} is outside 0..{num_classes - 1}")
                path = os.path.join(root, relative)
                if not os.path.isfile(path):
                    raise UserError(f"{list_path} line {number}: image '{path}' does not exist")
                self.samples.append((path, label))
        if not self.samples:
            raise UserError(f"image list '{list_path}' lists no images")
        self.targets = [label for _, label in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        image = read_rgb_image(path)
        return (self.transform(image) if self.transform else image), label


def read_rgb_image(path: str) -> Image.Image:
    """An image file as RGB; an empty, truncated or corrupt file stops the run with one line naming
    it (every image reader of the toolkit does so; none skips files, which would change the data
    set a figure is computed on). The last checkpoint is intact: replace or remove the file and
    continue with --resume."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except IMAGE_READ_ERRORS as error:
        # PIL often names the file itself; once is enough
        reason = " ".join(str(error).replace(f" '{path}'", "").split()) or type(error).__name__
        raise UserError(f"cannot read image '{path}': {reason} (replace or remove the file and run again, "
                        f"with --resume once a checkpoint exists)") from None
