"""Image-file data sets (ImageFolder, VisDA-2017 image lists) and a device-side DataLoader wrapper."""

from __future__ import annotations

import os
from typing import Callable, Sequence

import torch
import torchvision.transforms as T
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, SequentialSampler
from torchvision.datasets import ImageFolder

from lth.distributed import Context
from lth.errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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
        return ImageFolder(path, transform=transform)
    except (FileNotFoundError, RuntimeError) as error:
        raise UserError(f"image folder '{path}' holds no usable images: expected "
                        f"{root}/{split}/<class>/<image files> ({str(error).splitlines()[0]})") from None


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
        try:
            with Image.open(path) as image:
                image = image.convert("RGB")
        except (OSError, UnidentifiedImageError) as error:
            raise UserError(f"cannot read image '{path}': {error}") from None
        return (self.transform(image) if self.transform else image), label


class DeviceLoader:
    """A DataLoader whose batches arrive on the training device, reproducible per (seed, epoch).

    Order and augmentation come from generators seeded with ``(seed, epoch)`` (a
    ``DistributedSampler`` under DDP), so a run resumed at epoch e sees the batches it would have.
    """

    def __init__(self, dataset: Dataset, batch_size: int, *, train: bool, seed: int, ctx: Context,
                 workers: int = 4, channels_last: bool = False, drop_last: bool | None = None):
        self.train, self.seed, self.ctx, self.channels_last = train, seed, ctx, channels_last
        self.generator = torch.Generator()
        drop_last = train if drop_last is None else drop_last
        if ctx.distributed:
            self.sampler = DistributedSampler(dataset, num_replicas=ctx.world_size, rank=ctx.rank,
                                              shuffle=train, seed=seed, drop_last=False)
        elif train:
            self.sampler = RandomSampler(dataset, generator=self.generator)
        else:
            self.sampler = SequentialSampler(dataset)
        self.loader = DataLoader(dataset, batch_size=batch_size, sampler=self.sampler, num_workers=workers,
                                 pin_memory=ctx.device.type == "cuda", drop_last=drop_last,
                                 generator=self.generator, persistent_workers=False)
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.generator.manual_seed(self.seed * 1_000_003 + epoch)
        if isinstance(self.sampler, DistributedSampler):
            self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            yield _to_device(batch, self.ctx.device, self.channels_last)


def _to_device(batch, device: torch.device, channels_last: bool):
    if isinstance(batch, torch.Tensor):
        batch = batch.to(device, non_blocking=True)
        if channels_last and batch.dim() == 4 and batch.is_floating_point():
            batch = batch.contiguous(memory_format=torch.channels_last)
        return batch
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(item, device, channels_last) for item in batch)
    return batch
