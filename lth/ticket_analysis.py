"""What tickets look like: per-layer shares, fully pruned kernels per block, mask overlap, FLOPs and parameters."""

from __future__ import annotations

import csv
import glob
import os
import re
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
import torch.nn as nn

from lth import plots, pruning
from lth.errors import UserError
from lth.models import ARCHS, build_model
from lth.runs import TICKET_GLOB
from lth.tickets import read_masks

MASK_SUFFIX = pruning.MASK_SUFFIX
# Input sizes and stems by data set (the CIFAR stem for the small data sets, as the scripts build them).
_INPUTS = {"cifar10": (3, 32, 10, "cifar"), "cifar100": (3, 32, 100, "cifar"), "svhn": (3, 32, 10, "cifar"),
           "fmnist": (1, 28, 10, "cifar"), "digits": (1, 8, 10, "cifar")}
_IMAGENET_INPUT = (3, 224, 1000, "imagenet")


@dataclass
class Ticket:
    label: str
    path: str
    masks: dict[str, torch.Tensor]
    meta: dict

    @property
    def remaining(self) -> float:
        return pruning.mask_remaining(self.masks)


def find_tickets(specs: Sequence[str]) -> list[tuple[str | None, str]]:
    """``(label, path)`` of the tickets named by ``specs``: files, globs, run folders (all their
    ``ticket_XX.pt``), each optionally written ``LABEL=PATH``."""
    found = []
    for spec in specs:
        label, _, path = spec.partition("=") if "=" in spec and not os.path.exists(spec) else (None, "", spec)
        label = label or None
        paths = sorted(glob.glob(path)) if glob.has_magic(path) else [path]
        if not paths:
            raise UserError(f"--tickets '{path}' matches no file")
        for item in paths:
            if os.path.isdir(item):
                inside = sorted(glob.glob(os.path.join(item, TICKET_GLOB)))
                if not inside:
                    raise UserError(f"--tickets folder '{item}' holds no ticket_XX.pt")
                found.extend((f"{label} r{_round_of(p)}" if label else None, p) for p in inside)
            elif not os.path.isfile(item):
                raise UserError(f"--tickets: '{item}' does not exist")
            else:
                found.append((label, item))
    return found


def _round_of(path: str) -> str:
    match = re.search(r"(\d+)", os.path.basename(path))
    return str(int(match.group(1))) if match else "?"


def load_tickets(specs: Sequence[str]) -> list[Ticket]:
    tickets = []
    for label, path in find_tickets(specs):
        masks, meta = read_masks(path, "ticket")
        if label is None:
            run = os.path.basename(os.path.dirname(os.path.abspath(path)))
            label = f"{run}/{os.path.splitext(os.path.basename(path))[0]}"
        tickets.append(Ticket(label, path, masks, meta))
    labels = [t.label for t in tickets]
    if len(set(labels)) != len(labels):
        raise UserError("two tickets have the same label: name them with LABEL=PATH")
    return tickets


# --------------------------------------------------------------------------------------------
# Measures of one mask, of two masks
# --------------------------------------------------------------------------------------------

def layer_name(key: str) -> str:
    return key[: -len(MASK_SUFFIX)] if key.endswith(MASK_SUFFIX) else key


def layer_shares(masks: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """Remaining share (%) of each layer's weights, in the mask's layer order."""
    return {layer_name(k): 100.0 * float(m.sum()) / m.numel() for k, m in masks.items()}


def block_of(layer: str) -> str:
    """The stage a ResNet layer belongs to: ``layer1`` ... ``layer4`` (the paper's B1-B4), else ``stem``."""
    head = layer.split(".")[0]
    return head if re.fullmatch(r"layer\d+", head) else "stem"


def pruned_kernel_share(masks: Mapping[str, torch.Tensor], spatial_only: bool = True) -> dict[str, float]:
    """Per block, the share (%) of kernels (one input-output channel pair of a conv, its kh x kw
    weights) that the mask removes entirely: the paper's Fig. 7. ``spatial_only`` counts only
    convs with kernels larger than 1x1 (the 3x3 kernels the figure shows)."""
    pruned: dict[str, int] = {}
    total: dict[str, int] = {}
    for key, mask in masks.items():
        if mask.dim() != 4 or (spatial_only and mask.shape[2] * mask.shape[3] == 1):
            continue
        block = block_of(layer_name(key))
        empty = int((mask.flatten(2).sum(dim=2) == 0).sum())
        pruned[block] = pruned.get(block, 0) + empty
        total[block] = total.get(block, 0) + mask.shape[0] * mask.shape[1]
    return {block: 100.0 * pruned[block] / total[block] for block in sorted(total, key=_block_order)}


def kernel_keep_maps(masks: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per kxk conv (k > 1), the share of each kernel's weights kept: an (out, in) map, 0 where the
    kernel is pruned entirely (the paper's Fig. 7 shows these maps)."""
    return {layer_name(key): mask.flatten(2).float().mean(dim=2) for key, mask in masks.items()
            if mask.dim() == 4 and mask.shape[2] * mask.shape[3] > 1}


def shown_layers(layers: Sequence[str]) -> list[str]:
    """The layers a kernel figure shows: the first and the last kxk conv of each block."""
    by_block: dict[str, list[str]] = {}
    for layer in layers:
        by_block.setdefault(block_of(layer), []).append(layer)
    shown = []
    for block in sorted(by_block, key=_block_order):
        members = by_block[block]
        shown += [members[0]] + ([members[-1]] if len(members) > 1 else [])
    return shown


def _block_order(block: str) -> tuple[int, int]:
    match = re.fullmatch(r"layer(\d+)", block)
    return (1, int(match.group(1))) if match else (0, 0)


def _common_layers(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> list[str]:
    common = [key for key in a if key in b]
    if not common:
        raise UserError("the two masks share no layer: are they for different architectures?")
    for key in common:
        if a[key].shape != b[key].shape:
            raise UserError(f"mask '{key}' has shape {tuple(a[key].shape)} in one ticket and "
                            f"{tuple(b[key].shape)} in the other: different architectures")
    return common


def mask_iou(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> float:
    """Intersection over union of the kept weights of two masks (over the layers both have)."""
    inter = union = 0
    for key in _common_layers(a, b):
        x, y = a[key].bool(), b[key].bool()
        inter += int((x & y).sum())
        union += int((x | y).sum())
    return inter / union if union else 1.0


def random_mask_iou(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> float:
    """The IoU two independent random masks with the per-layer shares of ``a`` and ``b`` would have
    (expected intersection over expected union: for layer l with n weights and shares p, q these
    are n p q and n (p + q - p q); the ratio of sums is exact as the layers grow large)."""
    inter = union = 0.0
    for key in _common_layers(a, b):
        n = a[key].numel()
        p, q = float(a[key].sum()) / n, float(b[key].sum()) / n
        inter += n * p * q
        union += n * (p + q - p * q)
    return inter / union if union else 1.0


# --------------------------------------------------------------------------------------------
# FLOPs and parameters
# --------------------------------------------------------------------------------------------

@dataclass
class LayerCost:
    layer: str
    kind: str
    dense_params: int
    nonzero_params: int
    dense_flops: int
    nonzero_flops: int


def layer_costs(model: nn.Module, masks: Mapping[str, torch.Tensor], input_shape: Sequence[int]
                ) -> list[LayerCost]:
    """Parameters and FLOPs of every conv and linear layer of ``model`` on one input of
    ``input_shape`` (C, H, W), dense and with ``masks`` applied.

    FLOPs are multiply-accumulates (the convention of the pruning literature): a conv costs
    out_h x out_w x (weights it keeps); a linear layer in x out. Biases count as parameters, not
    FLOPs; batch norms, activations, pooling and additions are not counted. A layer without a mask
    is dense.
    """
    masks = {layer_name(k): v for k, v in pruning.strip_prefixes(masks).items()}
    modules = dict(model.named_modules())
    unknown = [name for name in masks if name not in modules]
    if unknown:
        raise UserError(f"mask for '{unknown[0]}' matches no layer of the model: another architecture?")
    outputs: dict[str, torch.Size] = {}
    hooks = [module.register_forward_hook(lambda mod, inp, out, name=name: outputs.__setitem__(name, out.shape))
             for name, module in model.named_modules() if isinstance(module, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_shape))
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    costs = []
    for name, module in model.named_modules():
        if not isinstance(module, (nn.Conv2d, nn.Linear)) or name not in outputs:
            continue
        weight = module.weight_orig if pruning.is_pruned(module) else module.weight
        mask = masks.get(name)
        if mask is not None and tuple(mask.shape) != tuple(weight.shape):
            raise UserError(f"mask for '{name}' has shape {tuple(mask.shape)}, the layer {tuple(weight.shape)}")
        kept = int(mask.sum()) if mask is not None else weight.numel()
        bias = module.bias.numel() if module.bias is not None else 0
        if isinstance(module, nn.Conv2d):
            positions = outputs[name][2] * outputs[name][3]
            dense_flops, nonzero_flops = positions * weight.numel(), positions * kept
        else:
            dense_flops, nonzero_flops = weight.numel(), kept
        costs.append(LayerCost(name, type(module).__name__, weight.numel() + bias, kept + bias,
                               dense_flops, nonzero_flops))
    return costs


def other_params(model: nn.Module) -> int:
    """Parameters outside conv and linear layers (batch norms): never pruned."""
    return sum(p.numel() for m in model.modules() if not isinstance(m, (nn.Conv2d, nn.Linear))
               for p in m.parameters(recurse=False))


def model_for(ticket: Ticket, arch: str | None, input_size: int | None, stem: str | None,
              num_classes: int | None) -> tuple[nn.Module, tuple[int, int, int]]:
    """The network a ticket belongs to, from its metadata (arch, data set) or the given overrides;
    an unknown architecture is found by trying each one the toolkit builds."""
    dataset = str(ticket.meta.get("dataset", ""))
    channels, size, classes, default_stem = _INPUTS.get(dataset, _IMAGENET_INPUT)
    size, stem, classes = input_size or size, stem or default_stem, num_classes or classes
    candidates = [arch or ticket.meta.get("arch")] if (arch or ticket.meta.get("arch")) else list(ARCHS)
    for name in candidates:
        model = build_model(name, classes, channels, stem)
        try:
            pruning.fit_masks(model, ticket.masks, conv1="conv1" + MASK_SUFFIX in ticket.masks)
        except UserError:
            if len(candidates) == 1:
                raise
            continue
        return model, (channels, size, size)
    raise UserError(f"ticket '{ticket.path}' fits none of the architectures {', '.join(ARCHS)}; give --arch")


# --------------------------------------------------------------------------------------------
# The whole analysis
# --------------------------------------------------------------------------------------------

def analyse_tickets(tickets: Sequence[Ticket], out: str, arch: str | None = None, input_size: int | None = None,
                    stem: str | None = None, num_classes: int | None = None) -> list[str]:
    """Write the CSVs and plots of the ticket analysis into ``out``; returns report.md lines."""
    os.makedirs(out, exist_ok=True)
    rel = os.path.basename(os.path.normpath(out))
    lines = ["## Ticket analysis", "",
             f"{len(tickets)} tickets: " + "; ".join(f"{t.label} ({t.remaining:.3g} % remaining)" for t in tickets) + ".",
             ""]
    shares = {t.label: layer_shares(t.masks) for t in tickets}
    _write_table(os.path.join(out, "layer_remaining.csv"), ["ticket", "layer", "remaining"],
                 [[label, layer, f"{v:.4f}"] for label, s in shares.items() for layer, v in s.items()])
    plots.plot_layer_shares(shares, os.path.join(out, "layer_remaining.png"))
    lines += ["### Remaining weights per layer", "", f"![remaining per layer]({rel}/layer_remaining.png)",
              "", f"Values in `{rel}/layer_remaining.csv`.", ""]

    kernels = {t.label: pruned_kernel_share(t.masks) for t in tickets}
    _write_table(os.path.join(out, "pruned_kernels.csv"), ["ticket", "block", "fully_pruned_kernels_pct"],
                 [[label, b, f"{v:.4f}"] for label, s in kernels.items() for b, v in s.items()])
    plots.plot_block_bars(kernels, os.path.join(out, "pruned_kernels.png"),
                          ylabel="fully pruned 3x3 kernels (%)")
    blocks = sorted({b for s in kernels.values() for b in s}, key=_block_order)
    lines += ["### Fully pruned kernels per block", "",
              "Share of the kxk kernels (k > 1; one input-output channel pair of a conv) whose weights are "
              "all pruned, per stage (layer1-layer4 are the paper's B1-B4).", ""]
    spread = [t.remaining for t in tickets]
    if tickets and max(spread) - min(spread) > 0.01 * max(spread):
        lines += ["Note: the paper compares tickets at the same sparsity; these differ "
                  f"({min(spread):.3g}-{max(spread):.3g} % remaining), so part of any difference is the sparsity.", ""]
    lines += ["| ticket | " + " | ".join(blocks) + " |", "|---|" + "---:|" * len(blocks)]
    for label, s in kernels.items():
        lines.append(f"| {label} | " + " | ".join(f"{s[b]:.1f}" if b in s else "-" for b in blocks) + " |")
    lines += ["", f"![fully pruned kernels]({rel}/pruned_kernels.png)", ""]

    maps = {t.label: kernel_keep_maps(t.masks) for t in tickets}
    per_layer = {label: {layer: 100.0 * float((grid == 0).float().mean()) for layer, grid in m.items()}
                 for label, m in maps.items()}
    _write_table(os.path.join(out, "pruned_kernels_per_layer.csv"), ["ticket", "layer", "fully_pruned_kernels_pct"],
                 [[label, layer, f"{v:.4f}"] for label, s in per_layer.items() for layer, v in s.items()])
    layers = shown_layers(list(dict.fromkeys(layer for m in maps.values() for layer in m)))
    if layers:
        plots.plot_kernel_maps({label: {layer: m[layer].numpy() for layer in layers if layer in m}
                                for label, m in maps.items()}, os.path.join(out, "kernel_maps.png"), per_layer)
        lines += ["### Kernels kept and pruned per layer (the paper's Fig. 7)", "",
                  "Each map is one conv layer (the first and the last kxk conv of each block): output channels "
                  "down, input channels across, each pixel the share of that kernel's weights the ticket keeps; "
                  "white = the kernel is pruned entirely. Every layer's share of fully pruned kernels is in "
                  f"`{rel}/pruned_kernels_per_layer.csv`.", "",
                  f"![kernel maps]({rel}/kernel_maps.png)", ""]

    if len(tickets) > 1:
        labels = [t.label for t in tickets]
        iou = [[mask_iou(a.masks, b.masks) for b in tickets] for a in tickets]
        chance = [[random_mask_iou(a.masks, b.masks) for b in tickets] for a in tickets]
        rows = [[labels[i], labels[j], f"{iou[i][j]:.6f}", f"{chance[i][j]:.6f}"]
                for i in range(len(tickets)) for j in range(len(tickets))]
        _write_table(os.path.join(out, "overlap.csv"), ["ticket_a", "ticket_b", "iou", "random_iou"], rows)
        plots.plot_overlap(labels, iou, chance, os.path.join(out, "overlap.png"))
        lines += ["### Mask overlap", "",
                  "IoU of the kept weights of each pair of tickets; in brackets the IoU two random masks with "
                  "the same per-layer shares would have (expected intersection over expected union).", "",
                  "| | " + " | ".join(f"{i + 1}" for i in range(len(labels))) + " |",
                  "|---|" + "---:|" * len(labels)]
        for i, label in enumerate(labels):
            lines.append(f"| {i + 1}. {label} | " + " | ".join(
                f"{_share(iou[i][j])} ({_share(chance[i][j])})" for j in range(len(labels))) + " |")
        lines += ["", f"![mask overlap]({rel}/overlap.png)", ""]

    lines += ["### FLOPs and parameters", "",
              "Multiply-accumulates of conv and linear layers on one input (batch norms, activations and "
              "additions not counted), and parameters of conv and linear layers, dense and non-zero under the "
              f"mask; per layer in `{rel}/flops.csv`.", "",
              "| ticket | arch, input | params dense | params non-zero | FLOPs dense | FLOPs non-zero | FLOPs kept |",
              "|---|---|---:|---:|---:|---:|---:|"]
    table = []
    for t in tickets:
        model, shape = model_for(t, arch, input_size, stem, num_classes)
        costs = layer_costs(model, t.masks, shape)
        for c in costs:
            table.append([t.label, c.layer, c.kind, c.dense_params, c.nonzero_params, c.dense_flops, c.nonzero_flops])
        dp, nzp = sum(c.dense_params for c in costs), sum(c.nonzero_params for c in costs)
        df, nzf = sum(c.dense_flops for c in costs), sum(c.nonzero_flops for c in costs)
        name = arch or t.meta.get("arch") or type(model).__name__
        lines.append(f"| {t.label} | {name}, {'x'.join(map(str, shape))} | {_big(dp)} | {_big(nzp)} | {_big(df)} | "
                     f"{_big(nzf)} | {100.0 * nzf / df:.2f} % |")
    _write_table(os.path.join(out, "flops.csv"), ["ticket", "layer", "kind", "dense_params", "nonzero_params",
                                                  "dense_flops", "nonzero_flops"], table)
    lines += ["", "Batch-norm parameters (never pruned) are not in these sums.", ""]
    return lines


def _share(value: float) -> str:
    """An IoU with the digits it needs (0.0031, not 0.000)."""
    if value == 0 or value == 1:
        return f"{value:.0f}"
    return f"{value:.3f}" if value >= 0.01 else f"{value:.2g}"


def _big(value: int) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= size:
            return f"{value / size:.3g}{unit}"
    return str(value)


def _write_table(path: str, header: Sequence[str], rows: Sequence[Sequence]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
