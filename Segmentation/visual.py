"""Colour maps (VOC palette, Cityscapes train-id colours) and a writer of predictions as label PNGs."""

from __future__ import annotations

import os
import tempfile
from typing import Mapping, Sequence

import numpy as np
import torch
from PIL import Image

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
    """``--save_val_results``: ``{image_id}_pred.png`` per evaluated image, at the size of its target.

    Each evaluation overwrites the previous one's files (same ids, same names). Ids containing
    ``/`` (Cityscapes' ``city/frame``) are written with ``_`` instead.
    """

    def __init__(self, directory: str, ids: Sequence[str], palette: np.ndarray):
        self.directory, self.ids, self.palette = directory, list(ids), palette

    def path_for(self, index: int) -> str:
        return os.path.join(self.directory, self.ids[index].replace("/", "_") + "_pred.png")

    def write(self, predictions: torch.Tensor, target: Mapping[str, torch.Tensor]) -> None:
        """``predictions`` (B, H, W) class indices; ``target`` a batch's ``{"index", "size"}``."""
        predictions = predictions.detach().to("cpu", torch.uint8).numpy()
        indices = target["index"].reshape(-1).tolist()
        sizes = target["size"].reshape(-1, 2).tolist()
        for prediction, index, (height, width) in zip(predictions, indices, sizes):
            save_label_png(self.path_for(int(index)), prediction[:height, :width], self.palette)
