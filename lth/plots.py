"""PNG plots of a run: the primary metric against remaining weights, and per-round training curves."""

from __future__ import annotations

import math
import os
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers, and no GUI backend import cost
import matplotlib.pyplot as plt  # noqa: E402


def plot_accuracy_vs_remaining(curves: Mapping[str, Sequence[tuple[float, float]]], path: str,
                               title: str = "", ylabel: str = "test accuracy (%)") -> None:
    """One line per curve of ``(remaining %, accuracy %)`` points, remaining weights on a log axis
    that runs from dense (left) to sparse (right), as in the paper's figures."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    # Figures read back from JSON are None where they were NaN: such points are left out.
    curves = {label: [(x, y) for x, y in points if _is_number(x) and _is_number(y)]
              for label, points in curves.items()}
    for label, points in curves.items():
        points = sorted(points, key=lambda point: -point[0])
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=3, label=label)
    ax.set_xscale("log")
    ax.invert_xaxis()
    ticks = _remaining_ticks([p[0] for points in curves.values() for p in points])
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"{t:g}" for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("remaining weights (%)")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title)
    if len(curves) > 1:
        ax.legend()
    _save(fig, path)


def _remaining_ticks(values: Sequence[float], most: int = 9) -> list[float]:
    """Tick positions at the measured sparsities (rounded), thinned to at most ``most`` labels."""
    levels = sorted({round(v, 2) for v in values if v > 0}, reverse=True) or [100.0]
    step = max(1, -(-len(levels) // most))
    ticks = levels[::step]
    if levels[-1] not in ticks:
        ticks.append(levels[-1])
    return ticks


def plot_training_curves(history: Mapping[str, Sequence[float]], path: str, title: str = "",
                         ylabel: str = "accuracy (%)", xlabel: str = "epoch") -> None:
    """Train, validation and test figures per evaluation of one round (the original's
    ``net_train.png``); ``ylabel`` names the metric shown (accuracy for classification)."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    names = {"train": "train", "ta": "validation", "test_ta": "test"}
    for key, values in history.items():
        values = [math.nan if value is None else value for value in values]  # None: null in JSON
        if any(value == value for value in values):  # a split without figures (all NaN) is left out
            ax.plot(range(len(values)), values, label=names.get(key, key))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title)
    _save(fig, path)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _save(fig, path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp.png"
    fig.tight_layout()
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)
