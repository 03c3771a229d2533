"""PNG plots: the primary metric against remaining weights (one run, or groups of seeds), training curves, ticket analysis."""

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
    _remaining_axis(ax, [p[0] for points in curves.values() for p in points] or [100.0])
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title)
    if len(curves) > 1:
        ax.legend()
    _save(fig, path)


def _remaining_ticks(values: Sequence[float], most: int = 9) -> list[float]:
    """Tick positions at the measured sparsities (rounded), at most ``most`` of them and spaced
    evenly on the log axis, so that labels never overlap (dense and the sparsest level always shown)."""
    levels = sorted({round(v, 2) if v >= 1 else float(f"{v:.2g}") for v in values if v > 0},
                    reverse=True) or [100.0]
    if len(levels) <= 2:
        return levels
    span = math.log10(levels[0]) - math.log10(levels[-1])
    gap = span / max(most - 1, 1)
    ticks = [levels[0]]
    for level in levels[1:-1]:
        if math.log10(ticks[-1]) - math.log10(level) >= gap and math.log10(level) - math.log10(levels[-1]) >= gap / 2:
            ticks.append(level)
    ticks.append(levels[-1])
    return ticks


def _tick_label(value: float) -> str:
    return f"{value:.3g}"


def _remaining_axis(ax, values: Sequence[float]) -> None:
    """Log x-axis of remaining weights, dense on the left; labelled ticks at measured levels."""
    ax.set_xscale("log")
    ax.invert_xaxis()
    ticks = _remaining_ticks(values)
    ax.minorticks_off()
    ax.set_xticks(ticks)
    ax.set_xticklabels([_tick_label(t) for t in ticks])
    unlabelled = sorted({v for v in values if v > 0} - set(ticks))
    ax.set_xticks(unlabelled, minor=True)
    ax.tick_params(axis="x", which="minor", length=3)
    ax.set_xlabel("remaining weights (%)")


def plot_groups(curves: Mapping[str, Sequence[tuple[float, float, float]]], path: str, *,
                baseline: tuple[str, float, float] | None = None, title: str = "",
                ylabel: str = "accuracy (%)") -> None:
    """The paper's figure: per group a mean line over seeds and a +-std band, points
    ``(remaining %, mean, std)``; the dense baseline ``(label, mean, std)`` as a horizontal band."""
    fig, ax = plt.subplots(figsize=(7.2, 4.6))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    values = []
    if baseline is not None:
        label, centre, spread = baseline
        ax.axhline(centre, color="black", linestyle="--", linewidth=1, label=f"dense: {label}")
        if spread > 0:
            ax.axhspan(centre - spread, centre + spread, color="black", alpha=0.08, linewidth=0)
    for index, (label, points) in enumerate(curves.items()):
        points = sorted((p for p in points if p[1] == p[1]), key=lambda p: -p[0])
        if not points:
            continue
        colour = colours[index % len(colours)]
        xs = [p[0] for p in points]
        means = [p[1] for p in points]
        stds = [p[2] for p in points]
        values.extend(xs)
        ax.plot(xs, means, marker="o", markersize=3, color=colour, label=label)
        if len(points) == 1 and stds[0] > 0:  # a band needs two levels: an error bar instead
            ax.errorbar(xs, means, yerr=stds, fmt="none", ecolor=colour, capsize=3)
        elif any(s > 0 for s in stds):
            ax.fill_between(xs, [m - s for m, s in zip(means, stds)], [m + s for m, s in zip(means, stds)],
                            color=colour, alpha=0.18, linewidth=0)
    _remaining_axis(ax, values or [100.0])
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="best")
    _save(fig, path)


def plot_layer_shares(shares: Mapping[str, Mapping[str, float]], path: str) -> None:
    """Remaining share (%) of every layer, one line per ticket, layers in network order."""
    layers = list(dict.fromkeys(layer for s in shares.values() for layer in s))
    fig, ax = plt.subplots(figsize=(max(6.4, 0.28 * len(layers) + 2), 4.4))
    for label, s in shares.items():
        ax.plot(range(len(layers)), [s.get(layer, float("nan")) for layer in layers], marker="o",
                markersize=3, label=label)
    ax.set_xticks(range(len(layers)))
    ax.set_xticklabels(layers, rotation=90, fontsize=6)
    ax.set_ylabel("remaining weights (%)")
    # Log scale for shares spanning orders of magnitude; linear below 0.01 % so a fully pruned layer shows as 0.
    ax.set_yscale("symlog", linthresh=0.01)
    ax.grid(alpha=0.3)
    if len(shares) > 1:
        ax.legend(fontsize=7)
    _save(fig, path)


def plot_block_bars(values: Mapping[str, Mapping[str, float]], path: str, ylabel: str) -> None:
    """Grouped bars: per block (x) one bar per ticket."""
    blocks = list(dict.fromkeys(b for s in values.values() for b in s))
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    width = 0.8 / max(len(values), 1)
    for index, (label, s) in enumerate(values.items()):
        ax.bar([i + index * width - 0.4 + width / 2 for i in range(len(blocks))],
               [s.get(b, 0.0) for b in blocks], width=width, label=label)
    ax.set_xticks(range(len(blocks)))
    ax.set_xticklabels(blocks)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7)
    _save(fig, path)


def plot_overlap(labels: Sequence[str], iou: Sequence[Sequence[float]], chance: Sequence[Sequence[float]],
                 path: str) -> None:
    """Heat map of the IoU of kept weights between tickets, each cell annotated with the IoU and,
    in brackets, that of random masks of the same per-layer shares."""
    size = len(labels)
    fig, ax = plt.subplots(figsize=(1.2 * size + 3, 1.0 * size + 2))
    image = ax.imshow(iou, vmin=0, vmax=1, cmap="viridis")
    for i in range(size):
        for j in range(size):
            ax.text(j, i, f"{iou[i][j]:.2f}\n({chance[i][j]:.2f})", ha="center", va="center", fontsize=7,
                    color="white" if iou[i][j] < 0.6 else "black")
    ax.set_xticks(range(size))
    ax.set_yticks(range(size))
    ax.set_xticklabels([str(i + 1) for i in range(size)])
    ax.set_yticklabels([f"{i + 1}. {label}" for i, label in enumerate(labels)], fontsize=7)
    ax.set_title("IoU of kept weights (random masks of the same layer shares)", fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.046)
    _save(fig, path)


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
