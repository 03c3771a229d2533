"""The original's per-round IMP files ``seg_backbone_imp{n}.pth`` = ``{first_conv, backbone, classifier}``.

``first_conv`` is ``backbone.conv1.state_dict()``, ``backbone`` the backbone's state_dict (pruned
convs as ``weight_orig``/``weight_mask``, no ``fc``), ``classifier`` the head's state_dict. Files written
here load in the original's scripts and theirs load here.
"""

from __future__ import annotations

import os
import re
from typing import Mapping

import torch
import torch.nn as nn

from lth import pruning, tickets
from lth.checkpoint import atomic_save, load_file
from lth.engine import unwrap
from lth.errors import UserError

PARTS = ("first_conv", "backbone", "classifier")


def imp_file_name(round_index: int) -> str:
    return f"seg_backbone_imp{round_index}.pth"


def imp_file_path(directory: str, round_index: int) -> str:
    return os.path.join(directory, imp_file_name(round_index))


def _cpu_copy(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key: value.detach().to("cpu", copy=True) for key, value in state.items()}


def imp_state(model: nn.Module) -> dict[str, dict[str, torch.Tensor]]:
    """The three pieces of the original's file, as CPU copies."""
    model = unwrap(model)
    return {"first_conv": _cpu_copy(model.backbone.conv1.state_dict()),
            "backbone": _cpu_copy(model.backbone.state_dict()),
            "classifier": _cpu_copy(model.classifier.state_dict())}


def save_imp_file(path: str, model: nn.Module) -> None:
    """Write ``model``'s pieces atomically (a kill mid-write leaves the previous file intact)."""
    atomic_save(imp_state(model), path)


def read_imp_file(source: str | Mapping, what: str = "segmentation IMP file") -> dict:
    """A loaded ``seg_backbone_imp{n}.pth``, checked to hold the original's three pieces."""
    obj = load_file(source, what) if isinstance(source, (str, os.PathLike)) else source
    name = source if isinstance(source, (str, os.PathLike)) else "the given object"
    if not is_imp_file(obj):
        keys = ", ".join(list(obj)[:8]) if isinstance(obj, Mapping) else type(obj).__name__
        raise UserError(f"{name} is not a segmentation IMP file: expected the entries "
                        f"{', '.join(PARTS)}, found {keys}")
    return obj


def is_imp_file(obj) -> bool:
    return isinstance(obj, Mapping) and all(isinstance(obj.get(part), Mapping) for part in PARTS)


def backbone_masks(source) -> tuple[dict[str, torch.Tensor], dict]:
    """Backbone masks and metadata from a ``seg_backbone_imp{n}.pth`` or from anything
    ``lth.tickets.read_masks`` reads (tickets, classification checkpoints, ``mask-{i}.pt``)."""
    name = str(source) if isinstance(source, (str, os.PathLike)) else "the given object"
    obj = load_file(source, "mask") if isinstance(source, (str, os.PathLike)) else source
    if not is_imp_file(obj):
        masks, meta = tickets.read_masks(obj, name=name)
        meta.setdefault("source", name)
        return masks, meta
    entries = {key: value for key, value in pruning.strip_prefixes(obj["backbone"]).items()
               if isinstance(key, str) and key.endswith(pruning.MASK_SUFFIX)}
    pruning.check_mask_values(entries, name)
    masks = {key: value.float() for key, value in entries.items()}
    if not masks:
        raise UserError(f"{name} holds a dense backbone (no '*.weight_mask'): round 0 is saved before any "
                        f"pruning; use the file of round 1 or later")
    return masks, {"source": name, "remaining": pruning.mask_remaining(masks), "round": round_of(name)}


def round_of(path: str) -> int | None:
    """The round n of a file named ``seg_backbone_imp{n}.pth`` (the file itself does not say it)."""
    match = re.fullmatch(r"seg_backbone_imp(\d+)\.pth", os.path.basename(str(path)))
    return int(match.group(1)) if match else None


def drop_resumable_checkpoint(path: str) -> None:
    """Delete a finished round's resumable checkpoint (model and optimizer): the round's lasting
    files are seg_backbone_imp{k+1}.pth (its trained weights, under the next masks), its ticket and
    its best-validation model."""
    if os.path.isfile(path):
        os.remove(path)


def restore_parts(model: nn.Module, source, first_conv: bool = True, classifier: bool = True,
                  backbone: bool = False) -> None:
    """Load pieces of an IMP file into ``model`` (the original's rewinding to round 0).

    The original rewinds round k to the pre-trained backbone with round 0's ``first_conv`` and
    ``classifier``; ``backbone=True`` also loads the saved backbone (its effective weights, keeping
    the model's current masks). A piece that does not fit (another architecture, class count or
    ``--separable_conv``) is a one-line error naming the first key that does not.
    """
    obj = read_imp_file(source)
    name = source if isinstance(source, (str, os.PathLike)) else "the given object"
    model = unwrap(model)
    if backbone:
        _check_fits(pruning.dense_state_dict(model.backbone),
                    pruning.dense_state_dict(obj["backbone"]), f"{name} 'backbone'")
        pruning.rewind(model.backbone, obj["backbone"])
    if first_conv:
        conv1 = pruning.dense_state_dict(obj["first_conv"])
        _check_fits(pruning.dense_state_dict(model.backbone.conv1), conv1, f"{name} 'first_conv'")
        with torch.no_grad():
            target = model.backbone.conv1
            (target.weight_orig if pruning.is_pruned(target) else target.weight).copy_(conv1["weight"])
    if classifier:
        _check_fits(model.classifier.state_dict(), obj["classifier"], f"{name} 'classifier'")
        model.classifier.load_state_dict(obj["classifier"], strict=True)


def _check_fits(own: Mapping[str, torch.Tensor], saved: Mapping[str, torch.Tensor], what: str) -> None:
    missing = [key for key in own if key not in saved]
    extra = [key for key in saved if key not in own]
    if missing or extra:
        key = (missing or extra)[0]
        side = "lacks" if missing else "has an unknown entry"
        raise UserError(f"{what} {side} '{key}': is it from another model (--model, --separable_conv)?")
    for key, value in own.items():
        if tuple(saved[key].shape) != tuple(value.shape):
            raise UserError(f"{what} entry '{key}' has shape {tuple(saved[key].shape)} but the model expects "
                            f"{tuple(value.shape)}: is it from another model or --num_classes?")
