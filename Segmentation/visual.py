"""Colour maps (VOC palette, Cityscapes train-id colours) and --save_val_results' writer: image, target,
prediction and overlay of each evaluated image."""

from __future__ import annotations

import os
import tempfile
from typing import Mapping, Sequence

import numpy as np
import torch
from PIL import Image

from lth.imagedata import IMAGENET_MEAN, IMAGENET_STD

# cityscapesScripts' colours of the 19 train ids
CITYSCAPES_COLORS = np.array([
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
    (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
    (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32)],
    dtype=np.uint8)


def voc_palette(entries: int = 256) -> np.ndarray:
    """The PASCAL VOC colour map: the bits of a class index spread over R, G, B from the top bit down."""
    palette = np.zeros((entries, 3), dtype=np.uint8)
    for index in range(entries):
        value, rgb = index, [0, 0, 0]
        for bit in range(8):
            for channel in range(3):
                rgb[channel] |= ((value >> channel) & 1) << (7 - bit)
            value >>= 3
        palette[index] = rgb
    return palette


def cityscapes_palette() -> np.ndarray:
    """256 entries: the 19 train-id colours, black elsewhere (255 = ignored)."""
    palette = np.zeros((256, 3), dtype=np.uint8)
    palette[: len(CITYSCAPES_COLORS)] = CITYSCAPES_COLORS
    return palette


def palette_for(dataset: str) -> np.ndarray:
    return cityscapes_palette() if dataset == "cityscapes" else voc_palette()


def colorize(labels: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """An (H, W, 3) RGB image of an (H, W) array of class indices."""
    return palette[np.asarray(labels, dtype=np.uint8)]


def save_label_png(path: str, labels: np.ndarray, palette: np.ndarray) -> None:
    """A palette ('P') PNG whose pixel values are the class indices, written atomically."""
    image = Image.fromarray(np.asarray(labels, dtype=np.uint8), mode="P")
    image.putpalette(palette.reshape(-1).tolist())
    _atomic_png(path, image)


def _atomic_png(path: str, image: Image.Image) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".png", dir=directory)
    os.close(fd)
    try:
        image.save(tmp, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


class PredictionWriter:
    """``--save_val_results``: for each evaluated image, as the original's validate() wrote them,
    ``{image_id}_image.png`` (the input, ImageNet normalisation undone, x255 truncated to uint8),
    ``{image_id}_target.png`` and ``{image_id}_pred.png`` (label PNGs in the data set's palette, at
    the target's size) and ``{image_id}_overlay.png`` (the prediction's colours over the image at
    alpha 0.7, as its matplotlib overlay, without the figure's margins).

    Each evaluation overwrites the previous one's files (same ids, same names). Ids containing
    ``/`` (Cityscapes' ``city/frame``) are written with ``_`` instead.
    """

    def __init__(self, directory: str, ids: Sequence[str], palette: np.ndarray,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        self.directory, self.ids, self.palette = directory, list(ids), palette
        self.mean, self.std = np.asarray(mean, np.float32), np.asarray(std, np.float32)

    def path_for(self, index: int, kind: str = "pred") -> str:
        return os.path.join(self.directory, self.ids[index].replace("/", "_") + f"_{kind}.png")

    def write(self, predictions: torch.Tensor, target: Mapping[str, torch.Tensor],
              images: torch.Tensor | None = None) -> None:
        """``predictions`` (B, H, W) class indices; ``target`` a batch's ``{"index", "size"}`` and
        ``mask``; ``images`` the normalised inputs (B, 3, H, W)."""
        predictions = predictions.detach().to("cpu", torch.uint8).numpy()
        indices = target["index"].reshape(-1).tolist()
        sizes = target["size"].reshape(-1, 2).tolist()
        masks = target["mask"].detach().to("cpu", torch.uint8).numpy() if "mask" in target else None
        pixels = images.detach().float().to("cpu").numpy() if images is not None else None
        for row, (prediction, index, (height, width)) in enumerate(zip(predictions, indices, sizes)):
            prediction = prediction[:height, :width]
            save_label_png(self.path_for(int(index)), prediction, self.palette)
            if masks is not None:
                save_label_png(self.path_for(int(index), "target"), masks[row][:height, :width], self.palette)
            if pixels is not None:
                image = self.denormalise(pixels[row][:, :height, :width])
                save_rgb_png(self.path_for(int(index), "image"), image)
                save_rgb_png(self.path_for(int(index), "overlay"), overlay(image, colorize(prediction, self.palette)))

    def denormalise(self, image: np.ndarray) -> np.ndarray:
        """(3, H, W) normalised -> (H, W, 3) uint8: ``(x * std + mean) * 255`` truncated, as the original."""
        value = (image * self.std[:, None, None] + self.mean[:, None, None]) * 255.0
        return np.clip(value, 0, 255).astype(np.uint8).transpose(1, 2, 0)


def overlay(image: np.ndarray, colours: np.ndarray, alpha: float = 0.7) -> np.ndarray:
    """``colours`` drawn over ``image`` with opacity ``alpha`` (matplotlib's imshow(..., alpha=0.7)
    over an opaque image: ``alpha * colour + (1 - alpha) * image``), rounded to uint8."""
    mixed = alpha * colours.astype(np.float32) + (1.0 - alpha) * image.astype(np.float32)
    return np.clip(np.round(mixed), 0, 255).astype(np.uint8)


def save_rgb_png(path: str, image: np.ndarray) -> None:
    """An RGB PNG, written atomically."""
    _atomic_png(path, Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8), mode="RGB"))
