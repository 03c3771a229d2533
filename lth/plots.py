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


def _remaining_ticks(values: Sequence[float], min_gap: float = 0.0) -> list[float]:
    """Tick positions at the measured levels (rounded for the label), densest first: every level
    whose distance on the log axis to the previous labelled one is at least ``min_gap`` decades
    (the width a label needs), the densest and the sparsest level always."""
    levels = sorted({_tick_value(v) for v in values if v > 0}, reverse=True) or [100.0]
    if len(levels) <= 2:
        return levels
    ticks = [levels[0]]
    last = math.log10(levels[-1])
    for level in levels[1:-1]:
        here = math.log10(level)
        if math.log10(ticks[-1]) - here >= min_gap and here - last >= min_gap:
            ticks.append(level)
    ticks.append(levels[-1])
    return ticks


def _tick_value(value: float) -> float:
    return float(f"{value:.3g}")


def _tick_label(value: float) -> str:
    return f"{value:.3g}"


def _remaining_axis(ax, values: Sequence[float]) -> None:
    """Log x-axis of remaining weights, dense on the left; a labelled tick at each measured level
    where the labels fit (vertical when there are many), an unlabelled tick at the others, and no
    labels of matplotlib's own (its minor log labels overlap ours, e.g. '1.074x10^1' over '13.4')."""
    from matplotlib.ticker import FixedLocator, NullFormatter

    positive = [v for v in values if v > 0] or [100.0]
    ax.set_xscale("log")
    lo, hi = min(positive), max(positive)
    pad = max(math.log10(hi / lo) * 0.04, 0.02)
    ax.set_xlim(hi * 10 ** pad, lo / 10 ** pad)  # inverted: dense on the left
    width = ax.get_figure().get_size_inches()[0] * ax.get_position().width
    span = math.log10(hi / lo) + 2 * pad
    levels = {_tick_value(v) for v in positive}
    vertical = len(levels) > 8
    label_width = 0.16 if vertical else 0.45  # inches a label needs along the axis
    ticks = _remaining_ticks(positive, min_gap=label_width * span / max(width, 1e-6))
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.set_xticklabels([_tick_label(t) for t in ticks], rotation=90 if vertical else 0,
                       fontsize=7 if vertical else 8)
    ax.xaxis.set_minor_locator(FixedLocator(sorted(levels - set(ticks))))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.tick_params(axis="x", which="minor", length=3)
    ax.set_xlabel("remaining weights (%)")


def zoom_band(dense: Sequence[tuple[float, float]]) -> tuple[float, float] | None:
    """The y range where verdicts are decided: from below the lowest (dense mean - std) to above
    the highest dense mean, two band widths below and 1.5 above (at least 0.5 points wide)."""
    if not dense:
        return None
    low = min(m - s for m, s in dense)
    high = max(m for m, _ in dense)
    span = max(high - low, 0.5)
    return low - 2 * span, high + 1.5 * span


def plot_groups(curves: Mapping[str, Sequence[tuple[float, float, float]]], path: str, *,
                dense: Sequence[tuple[str, float, float, int]] = (), dense_of: Mapping[str, str] | None = None,
                kinds: Mapping[str, str] | None = None, title: str = "", ylabel: str = "accuracy (%)") -> None:
    """The paper's figures (Fig. 3, Fig. 4): per group a mean line over seeds and a +-std band,
    points ``(remaining %, mean, std)``; each dense model ``(label, mean, std, n)`` as a horizontal
    line with its +-std band, in the colour of the curve it judges (``dense_of``: curve -> dense).
    With dense models, a second panel zooms on the band where the matching verdicts are decided;
    points below it are marked at its lower edge."""
    dense_of, kinds = dict(dense_of or {}), dict(kinds or {})
    band = zoom_band([(m, s) for _, m, s, _ in dense])
    plotted = [p[1] for points in curves.values() for p in points if _is_number(p[1])] + [m for _, m, _, _ in dense]
    if band and plotted and min(plotted) >= 0:  # a metric in % (all of ours): no zoom below 0 or above 100
        band = (max(band[0], 0.0), min(band[1], 100.0) if max(plotted) <= 100 else band[1])
    rows = 2 if band else 1
    fig, axes = plt.subplots(rows, 1, figsize=(7.6, 4.4 * rows), sharex=True, squeeze=False)
    axes = [a[0] for a in axes]
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    curve_colour = {label: colours[i % len(colours)] for i, label in enumerate(curves)}
    dense_colour = {}
    for label, _, _, _ in dense:
        owners = [c for c, d in dense_of.items() if d == label]
        dense_colour[label] = "black" if len(dense) == 1 else curve_colour.get(owners[0] if owners else "", "black")
    values = []
    for row, ax in enumerate(axes):
        for label, centre, spread, n in dense:
            colour = dense_colour[label]
            ax.axhline(centre, color=colour, linestyle="--", linewidth=1,
                       label=f"dense: {label} ({centre:.2f} ± {spread:.2f}, n={n})" if row == 0 else None)
            if spread > 0:
                ax.axhspan(centre - spread, centre + spread, color=colour, alpha=0.08, linewidth=0)
        for label, points in curves.items():
            points = sorted((p for p in points if _is_number(p[1])), key=lambda p: -p[0])
            if not points:
                continue
            colour = curve_colour[label]
            xs, means, stds = [p[0] for p in points], [p[1] for p in points], [p[2] or 0.0 for p in points]
            values.extend(xs)
            control = kinds.get(label) in ("random", "reversed", "reinit")
            ax.plot(xs, means, marker="s" if control else "o", markersize=4, color=colour,
                    linestyle=":" if control else "-", label=label if row == 0 else None)
            if len(points) == 1 and stds[0] > 0:  # a band needs two levels: an error bar instead
                ax.errorbar(xs, means, yerr=stds, fmt="none", ecolor=colour, capsize=3)
            elif any(s > 0 for s in stds):
                ax.fill_between(xs, [m - s for m, s in zip(means, stds)], [m + s for m, s in zip(means, stds)],
                                color=colour, alpha=0.15, linewidth=0)
            if row == 0 and kinds.get(label) == "reversed":  # far from its ticket's level: say where it is
                for x, m in zip(xs, means):
                    ax.annotate(f"keeps {_tick_label(x)} %", (x, m), textcoords="offset points", xytext=(6, -3),
                                fontsize=7, color=colour)
            if row == 1:  # points outside the zoom: a marker at the edge they left by
                for edge, marker, outside in ((band[0], "v", lambda m: m < band[0]),
                                              (band[1], "^", lambda m: m > band[1])):
                    off = [x for x, m in zip(xs, means) if outside(m)]
                    if off:
                        ax.plot(off, [edge] * len(off), marker=marker, linestyle="none", color=colour,
                                markersize=6, clip_on=False)
        ax.grid(alpha=0.3)
        ax.set_ylabel(ylabel)
    _remaining_axis(axes[-1], values or [100.0])  # the panels share the x axis (and its ticks)
    if band:
        axes[1].set_ylim(*band)
        axes[1].set_title("zoom: dense mean ± std (shaded); ▼ ▲ = a point below or above this panel", fontsize=8)
    if title:
        axes[0].set_title(title, fontsize=10)
    axes[0].legend(fontsize=7, loc="best")
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
    top = max((v for s in shares.values() for v in s.values() if _is_number(v)), default=100.0)
    ax.set_ylim(0, max(top, 1.0) * 1.5)  # a share is never below 0: neither is the axis
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
            ax.text(j, i, f"{share_text(iou[i][j])}\n({share_text(chance[i][j])})", ha="center", va="center", fontsize=7,
                    color="white" if iou[i][j] < 0.6 else "black")
    ax.set_xticks(range(size))
    ax.set_yticks(range(size))
    ax.set_xticklabels([str(i + 1) for i in range(size)])
    ax.set_yticklabels([f"{i + 1}. {label}" for i, label in enumerate(labels)], fontsize=7)
    ax.set_title("IoU of kept weights (random masks of the same layer shares)", fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.046)
    _save(fig, path)


def share_text(value: float) -> str:
    """A share in [0, 1] with the digits it needs: 0 and 1 exactly, 2 decimals down to 0.01, then two
    significant digits (0.0031, not 0.00)."""
    if value == 0 or value == 1:
        return f"{value:.0f}"
    if value >= 0.01:
        return f"{value:.2f}"
    return f"{value:.2g}"


def plot_kernel_maps(maps: Mapping[str, Mapping[str, "object"]], path: str, shares: Mapping[str, Mapping[str, float]]
                     ) -> None:
    """The paper's Fig. 7: per ticket (row) and layer (column) a map of the layer's kernels, output
    channels down and input channels across, each pixel the share of its kh x kw weights kept
    (white: the kernel is pruned entirely); ``shares`` gives each map's fully pruned share (%)."""
    from matplotlib.colors import LinearSegmentedColormap

    tickets = list(maps)
    layers = list(dict.fromkeys(layer for m in maps.values() for layer in m))
    cmap = LinearSegmentedColormap.from_list("kept", ["white", "#08306b"])
    fig, axes = plt.subplots(len(tickets), len(layers), figsize=(1.9 * len(layers) + 1.2, 2.0 * len(tickets) + 0.6),
                             squeeze=False)
    image = None
    for i, ticket in enumerate(tickets):
        for j, layer in enumerate(layers):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            grid = maps[ticket].get(layer)
            if grid is None:
                ax.axis("off")
                continue
            image = ax.imshow(grid, vmin=0, vmax=1, cmap=cmap, interpolation="nearest", aspect="auto")
            ax.set_title(f"{layer}\n{shares[ticket][layer]:.0f} % pruned", fontsize=6)
            if j == 0:
                ax.set_ylabel(ticket, fontsize=7)
    if image is not None:
        fig.colorbar(image, ax=[a for row in axes for a in row], fraction=0.02, pad=0.01,
                     label="share of the kernel's weights kept")
    fig.suptitle("Kernels kept (dark) and pruned (white) per layer: rows = output channels, "
                 "columns = input channels", fontsize=8)
    _save(fig, path, tight=False)  # tight_layout cannot fit the shared colour bar


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


def _save(fig, path: str, tight: bool = True) -> None:
    """Write the figure atomically; the temporary name is the process's own, as parallel jobs of a
    sweep redraw one sweep folder's figure."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp.png"
    if tight:
        fig.tight_layout()
    try:
        fig.savefig(tmp, dpi=120)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.remove(tmp)
