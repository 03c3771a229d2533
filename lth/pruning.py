"""Global magnitude pruning, masks and rewinding, on top of ``torch.nn.utils.prune``.

Vocabulary used throughout:

* *prunable convs*: every ``nn.Conv2d`` of a model except the stem (the first ``nn.Conv2d`` in
  ``model.modules()``, ``conv1`` in a ResNet), which is pruned only when ``conv1=True``.
  Linear layers, batch norms and biases are never pruned.
* *mask dict*: ``{"layer1.0.conv1.weight_mask": 0/1 float tensor}``, keyed like the buffers that
  ``torch.nn.utils.prune`` registers, with no ``module.``/``encoder_q.`` prefix.
* *ticket file*: a small stand-alone file holding a mask dict packed as bits plus metadata
  (architecture, data set, prune type, round, remaining %); ``--mask_dir`` reads it directly.
  Ticket file I/O (``save_ticket``, ``read_masks``, ...) lives in ``lth.tickets``, which builds on
  this module; the top-level ``pruning_utils`` re-exports both under the original's module name.
"""

from __future__ import annotations

import contextlib
import math
from typing import Mapping

import torch
import torch.nn as nn
import torch.nn.utils.prune as prune

from lth.errors import UserError

MASK_SUFFIX = ".weight_mask"
ORIG_SUFFIX = ".weight_orig"

# Prefixes that wrap a backbone in the checkpoints users have: DataParallel/DDP (``module.``) and
# MoCo's query encoder. The momentum encoder and the queue are not part of a ticket.
_WRAPPER_PREFIXES = ("module.encoder_q.", "encoder_q.", "module.")
_FOREIGN_PREFIXES = ("module.encoder_k.", "encoder_k.", "module.queue", "queue")


# --------------------------------------------------------------------------------------------
# Which layers are pruned
# --------------------------------------------------------------------------------------------

def stem_conv_name(model: nn.Module) -> str | None:
    """Name of the first ``nn.Conv2d`` in ``model.modules()`` order: the stem that is kept dense."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            return name
    return None


def prunable_convs(model: nn.Module, conv1: bool = False) -> list[tuple[str, nn.Conv2d]]:
    """``(name, module)`` of every conv that IMP prunes, in ``named_modules`` order."""
    stem = stem_conv_name(model)
    return [(name, module) for name, module in model.named_modules()
            if isinstance(module, nn.Conv2d) and (conv1 or name != stem)]


def is_pruned(module: nn.Module) -> bool:
    """True when the module's weight carries prune's reparametrisation (``weight_orig`` and
    ``weight_mask``), also while ``masks_in_place`` has detached its forward pre-hook."""
    return "weight_orig" in module._parameters and isinstance(module._buffers.get("weight_mask"), torch.Tensor)


def effective_weight(module: nn.Module) -> torch.Tensor:
    """The weight a forward pass would use, computed from ``weight_orig`` and ``weight_mask`` when pruned."""
    if is_pruned(module):
        return (module.weight_orig * module.weight_mask).detach()
    return module.weight.detach()


# --------------------------------------------------------------------------------------------
# Pruning, masks, rewinding
# --------------------------------------------------------------------------------------------

def check_rate(rate: float) -> float:
    if not 0.0 < rate < 1.0:
        raise UserError(f"pruning rate must lie strictly between 0 and 1, got {rate}")
    return rate


def global_prune(model: nn.Module, rate: float, random: bool = False, conv1: bool = False,
                 generator_seed: int | None = None) -> None:
    """Remove ``rate`` of the conv weights that still remain, ranked globally across layers.

    The ``round(rate * remaining)`` surviving weights of smallest magnitude (or, with
    ``random=True``, of smallest uniform random score) are pruned, exactly as
    ``prune.global_unstructured`` with ``L1Unstructured``/``RandomUnstructured`` chooses them, so
    after k calls ``0.8^k`` of the prunable weights remain. The masks are then applied with
    ``prune.CustomFromMask`` (``weight_orig``/``weight_mask``). The ranking is computed here with
    one ``kthvalue`` instead of PyTorch's full ``topk`` because that takes ~1.4 s on a
    ResNet-50 (23.5M weights) on a CPU, every round. ``generator_seed`` makes random pruning
    reproducible without touching torch's global generator.
    """
    check_rate(rate)
    convs = prunable_convs(model, conv1)
    if not convs:
        raise UserError(f"{type(model).__name__} has no conv layer to prune")
    with torch.no_grad():
        old_masks = [(module.weight_mask if is_pruned(module) else torch.ones_like(module.weight)).bool()
                     for _, module in convs]
        if random:
            generator = None
            if generator_seed is not None:
                generator = torch.Generator(device=convs[0][1].weight.device).manual_seed(generator_seed)
            scores = [torch.rand(mask.shape, generator=generator, device=mask.device) for mask in old_masks]
        else:
            # weight_orig * weight_mask, not module.weight: that attribute is refreshed only by a
            # forward pass, so it is stale after a checkpoint is loaded (resume at a round's end).
            scores = [effective_weight(module).abs() for _, module in convs]
        new_masks = _prune_lowest(scores, old_masks, rate)
    apply_mask(model, {name + MASK_SUFFIX: mask for (name, _), mask in zip(convs, new_masks)}, conv1=conv1)


def _prune_lowest(scores: list[torch.Tensor], masks: list[torch.Tensor], rate: float) -> list[torch.Tensor]:
    """New masks without the ``round(rate * surviving)`` surviving entries of lowest score.

    Ties at the threshold are broken by position (layer order, then flat index), so exactly that
    many are removed whatever the scores.
    """
    # Pruned entries score +inf, so they rank after every survivor and are never chosen again.
    flat = torch.cat([score.float().masked_fill(~mask, math.inf).flatten() for score, mask in zip(scores, masks)])
    surviving = int(sum(int(mask.sum()) for mask in masks))
    count = round(rate * surviving)  # the rounding of prune._compute_nparams_toprune
    if count == 0:
        return [mask.float() for mask in masks]
    threshold = _kth_smallest_nonnegative(flat, count)
    below = [(score < threshold) & mask for score, mask in zip(scores, masks)]
    ties_to_prune = count - int(sum(int(b.sum()) for b in below))
    new_masks = []
    for score, mask, low in zip(scores, masks, below):
        prune_here = low
        if ties_to_prune > 0:
            tie = (score == threshold) & mask
            tie_positions = tie.flatten().nonzero().flatten()[:ties_to_prune]
            if tie_positions.numel():
                prune_here = low.flatten().clone()
                prune_here[tie_positions] = True
                prune_here = prune_here.view_as(low)
                ties_to_prune -= tie_positions.numel()
        new_masks.append((mask & ~prune_here).float())
    return new_masks


def extract_mask(source: nn.Module | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The mask dict of a pruned model or of a state_dict (prefixes stripped, other keys dropped)."""
    state = source.state_dict() if isinstance(source, nn.Module) else source
    masks = {}
    for key, value in strip_prefixes(state).items():
        if key.endswith(MASK_SUFFIX):
            masks[key] = value.detach().clone()
    return masks


def check_mask_values(masks: Mapping[str, torch.Tensor], source: str = "the mask") -> None:
    """Every mask is a non-empty dense tensor of numbers holding only 0 and 1; otherwise a one-line
    ``UserError`` naming ``source`` (the file) and the layer. A mask of 2, -1, 0.5 or NaN would
    train silently on a scaled or negated network and report a wrong remaining share."""
    for key, mask in masks.items():
        if not isinstance(mask, torch.Tensor):
            raise UserError(f"{source}: mask '{key}' is a {type(mask).__name__}, not a tensor")
        if mask.layout != torch.strided or mask.device.type == "meta" or mask.is_complex() or mask.is_quantized:
            raise UserError(f"{source}: mask '{key}' is a {mask.layout} {mask.dtype} tensor on {mask.device}; "
                            f"expected a plain tensor of 0s and 1s")
        if mask.numel() == 0:
            raise UserError(f"{source}: mask '{key}' is empty (shape {tuple(mask.shape)})")
        if mask.dtype == torch.bool:
            continue
        bad = ~((mask == 0) | (mask == 1))
        if bool(bad.any()):
            value = mask[bad].flatten()[0].item()
            raise UserError(f"{source}: mask '{key}' holds the value {value} ({int(bad.sum())} of "
                            f"{mask.numel()} entries are neither 0 nor 1); a mask holds only 0 and 1")


def reverse_mask(masks: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The complement of each layer's mask (1 - mask): keeps exactly what the ticket removed."""
    return {key: 1 - mask for key, mask in masks.items()}


def _kth_smallest_nonnegative(values: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th smallest (1-based) of non-negative float32 values, 4x faster than ``kthvalue``.

    Non-negative floats sort like their bit patterns, so one 32768-bin histogram of the top 16
    bits finds the bin holding the answer; ``kthvalue`` then runs on that bin's few entries.
    """
    keys = values.view(torch.int32) >> 16
    cumulative = torch.bincount(keys, minlength=1 << 15).cumsum(0)
    bin_index = int(torch.searchsorted(cumulative, torch.tensor(k, dtype=cumulative.dtype, device=cumulative.device)))
    below = int(cumulative[bin_index - 1]) if bin_index > 0 else 0
    return torch.kthvalue(values[keys == bin_index].cpu(), k - below).values.to(values.device)


def remove_prune(model: nn.Module) -> None:
    """Bake every mask into its weight and drop the reparametrisation (``prune.remove``)."""
    for module in model.modules():
        if is_pruned(module):
            prune.remove(module, "weight")


def apply_mask(model: nn.Module, masks: Mapping[str, torch.Tensor], conv1: bool = False) -> None:
    """Prune ``model`` with exactly ``masks`` (``prune.CustomFromMask``), replacing any old mask.

    The masks are first checked against the model's prunable convs: a key or a shape that does
    not fit raises a ``UserError`` naming the first offending key and both shapes.
    """
    masks = fit_masks(model, masks, conv1)
    modules = dict(model.named_modules())
    for key, mask in masks.items():
        module = modules[key[: -len(MASK_SUFFIX)]]
        if is_pruned(module):
            # Replace the mask, not the weights: bring back the values the old mask hid.
            orig = module.weight_orig.detach().clone()
            prune.remove(module, "weight")
            with torch.no_grad():
                module.weight.copy_(orig)
        mask = mask.to(device=module.weight.device, dtype=module.weight.dtype)
        prune.custom_from_mask(module, "weight", mask)


def fit_masks(model: nn.Module, masks: Mapping[str, torch.Tensor], conv1: bool = False
              ) -> dict[str, torch.Tensor]:
    """The subset of ``masks`` meant for ``model``'s prunable convs, after checking it fits.

    A stem mask is dropped unless ``conv1`` (the original never masks the stem downstream, and
    CIFAR and ImageNet stems differ in shape); every other key must name a prunable conv of the
    model with the same shape, and every prunable conv must have a mask.
    """
    masks = strip_prefixes(masks)
    check_mask_values({key: mask for key, mask in masks.items() if key.endswith(MASK_SUFFIX)})
    expected = {name + MASK_SUFFIX: module.weight.shape for name, module in prunable_convs(model, conv1)}
    stem = stem_conv_name(model)
    fitted = {}
    for key, mask in masks.items():
        if not key.endswith(MASK_SUFFIX):
            continue
        if not conv1 and key == f"{stem}{MASK_SUFFIX}":
            continue
        if key not in expected:
            raise UserError(f"mask key '{key}' (shape {tuple(mask.shape)}) matches no prunable conv "
                            f"of this model; is the mask for another architecture?")
        if tuple(mask.shape) != tuple(expected[key]):
            raise UserError(f"mask '{key}' has shape {tuple(mask.shape)} but the model's weight has "
                            f"shape {tuple(expected[key])}; is the mask for another architecture?")
        fitted[key] = mask
    missing = [key for key in expected if key not in fitted]
    if missing:
        raise UserError(f"the mask has no entry for '{missing[0]}' (shape {tuple(expected[missing[0]])})"
                        f" nor for {len(missing) - 1} more prunable layers; is it for another architecture?")
    return fitted


def rewind(model: nn.Module, weights: Mapping[str, torch.Tensor], conv1: bool = False) -> None:
    """Reset every weight to ``weights`` while keeping the current masks.

    Follows the original's order: take the masks, remove the reparametrisation, load the dense
    rewind weights (strictly: a rewind point must describe the whole model), re-apply the masks.
    Unmasked positions therefore hold the rewind values bit for bit.
    """
    masks = extract_mask(model)
    remove_prune(model)
    model.load_state_dict(dense_state_dict(weights), strict=True)
    if masks:
        apply_mask(model, masks, conv1=conv1 or _has_stem_mask(model, masks))


def _has_stem_mask(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> bool:
    return f"{stem_conv_name(model)}{MASK_SUFFIX}" in masks


def dense_state_dict(source: nn.Module | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Effective weights under plain names (``weight = weight_orig * weight_mask``), as copies.

    Accepts a model or a state_dict; the result loads into an unpruned model of the same shape.
    """
    state = source.state_dict() if isinstance(source, nn.Module) else source
    dense = {}
    for key, value in state.items():
        if key.endswith(MASK_SUFFIX):
            continue
        if key.endswith(ORIG_SUFFIX):
            prefix = key[: -len(ORIG_SUFFIX)]
            dense[prefix + ".weight"] = value * state[prefix + MASK_SUFFIX]
        else:
            dense[key] = value
    return {key: value.detach().clone() for key, value in dense.items()}


@contextlib.contextmanager
def masks_in_place(model: nn.Module):
    """Train without ``torch.nn.utils.prune``'s forward pre-hooks, with the same results.

    Inside the block each pruned conv computes with ``weight_orig`` directly, after the mask has
    been multiplied into it once; the block yields a function that re-applies every mask and must
    run after each optimizer step. The effective weights, hence the training, are bit for bit
    those of the hooks (``orig * 1 == orig``); only ``weight_orig`` at pruned positions reads 0
    instead of a stale value nobody uses. ``weight_orig``/``weight_mask`` stay registered, so
    checkpoints keep their format. On exit the hooks are back.
    """
    entries = []
    for module in model.modules():
        if not is_pruned(module):
            continue
        hooks = {key: hook for key, hook in module._forward_pre_hooks.items()
                 if isinstance(hook, prune.BasePruningMethod)}
        for key in hooks:
            del module._forward_pre_hooks[key]
        with torch.no_grad():
            module.weight_orig.mul_(module.weight_mask)
        module.__dict__["weight"] = module.weight_orig  # a plain attribute, as prune leaves it
        entries.append((module, hooks))
    weights = [module.weight_orig for module, _ in entries]
    masks = [module.weight_mask for module, _ in entries]

    @torch.no_grad()
    def reapply() -> None:
        if weights:
            torch._foreach_mul_(weights, masks)

    try:
        yield reapply
    finally:
        for module, hooks in entries:
            module._forward_pre_hooks.update(hooks)
            module.__dict__["weight"] = module.weight_orig.detach() * module.weight_mask


def sync_masks(model: nn.Module, src: int = 0) -> None:
    """Broadcast every mask from rank ``src`` so all DDP ranks prune identically (random too)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    for module in model.modules():
        if is_pruned(module):
            torch.distributed.broadcast(module.weight_mask, src)


# --------------------------------------------------------------------------------------------
# Sparsity, from the masks
# --------------------------------------------------------------------------------------------

def sparsity(model: nn.Module, conv1: bool = False) -> dict:
    """Remaining weights of the prunable convs, computed from the masks (a dense layer counts 100 %).

    Returns ``{"remaining": percent, "kept": int, "total": int, "layers": {name: percent}}``.
    Counting masks rather than zeros keeps the figure honest when a trained weight is exactly 0.
    """
    kept = total = 0
    layers = {}
    for name, module in prunable_convs(model, conv1 or _stem_is_pruned(model)):
        numel = module.weight.numel()
        layer_kept = int(module.weight_mask.sum().item()) if is_pruned(module) else numel
        layers[name] = 100.0 * layer_kept / numel
        kept += layer_kept
        total += numel
    return {"remaining": 100.0 * kept / max(total, 1), "kept": kept, "total": total, "layers": layers}


def _stem_is_pruned(model: nn.Module) -> bool:
    stem = stem_conv_name(model)
    return stem is not None and is_pruned(model.get_submodule(stem))


def mask_remaining(masks: Mapping[str, torch.Tensor]) -> float:
    """Remaining percent over the layers of a mask dict."""
    kept = sum(int(mask.sum().item()) for mask in masks.values())
    total = sum(mask.numel() for mask in masks.values())
    return 100.0 * kept / max(total, 1)


# --------------------------------------------------------------------------------------------
# Checkpoint keys: prefixes, transferable weights
# --------------------------------------------------------------------------------------------

def strip_prefixes(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop MoCo's momentum encoder and queue, and strip ``module.``/``encoder_q.`` prefixes."""
    out = {}
    for key, value in state.items():
        if not isinstance(key, str) or key.startswith(_FOREIGN_PREFIXES):
            continue  # a non-string key names no weight (a damaged file)
        for prefix in _WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix):]
                break
        out[key] = value
    return out


def transferable_weights(state: Mapping[str, torch.Tensor], fc: bool = False, conv1: bool = False
                         ) -> dict[str, torch.Tensor]:
    """The weights of a checkpoint that move to a new task.

    Prefixes are stripped; masks and the original's ``normalize.*`` buffers are dropped;
    ``X.weight_orig`` becomes ``X.weight`` (so an IMP checkpoint is accepted); the classifier
    (``fc.*``) and the stem (``conv1.weight``) are dropped unless asked for, since their shapes
    depend on the task and the input resolution.
    """
    out = {}
    for key, value in strip_prefixes(state).items():
        if key.endswith(MASK_SUFFIX) or key.startswith("normalize."):
            continue
        if key.endswith(ORIG_SUFFIX):
            key = key[: -len(ORIG_SUFFIX)] + ".weight"
        if not fc and (key == "fc" or key.startswith("fc.")):
            continue
        if not conv1 and key.startswith("conv1."):
            continue
        out[key] = value
    return out


def masks_to(masks: Mapping[str, torch.Tensor], device) -> dict[str, torch.Tensor]:
    return {key: mask.to(device) for key, mask in masks.items()}


def current_masks(model: nn.Module, conv1: bool = False) -> dict[str, torch.Tensor]:
    """The mask dict in effect on ``model``'s prunable convs (all ones for a layer not pruned yet)."""
    return {name + MASK_SUFFIX: (module.weight_mask if is_pruned(module) else torch.ones_like(module.weight))
            .detach().to("cpu", copy=True) for name, module in prunable_convs(model, conv1)}
