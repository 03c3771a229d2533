"""The detection IMP's files and rewind rule, as the original's: ``backbone_imp{k}.pth`` and the pre-trained rewind.

``backbone_imp{k}.pth`` is written after round k-1 and read to start round k; the original's
checkpoint keys are renamed to ``Detection.model``'s; between rounds the pruned backbone convs get
their pre-trained weights back.
"""

from __future__ import annotations

from typing import Mapping

import torch
import torch.nn as nn

from Detection.model import YOLOv4
from lth import pruning
from lth.checkpoint import atomic_save, load_file
from lth.errors import UserError

# The prefix of every key of the original's Build_Model state_dict (a name-mangled attribute).
ORIGINAL_PREFIX = "_Build_Model__yolov4."

BACKBONE_IMP_KEYS = ("imp", "all_state_dict", "first_conv1", "backbone")


def backbone_imp_state(model: YOLOv4, imp_num: int) -> dict:
    """The original's ``backbone_imp{k}.pth`` content (pruning.save_dicts_and_masks).

    ``imp`` is the round that just trained; ``all_state_dict`` the whole model (pruned backbone
    convs as ``weight_orig``/``weight_mask``); ``first_conv1`` the stem's state_dict;
    ``backbone`` the backbone's state_dict under torchvision names (its masks are the ticket).
    """
    # One CPU copy of each tensor, shared by the three dicts: torch.save writes a storage once, so
    # the backbone (and its masks) is not stored twice, as in the original's file (whose dicts
    # shared the model's own tensors). Copied: 0.92 GiB per ResNet-50 file; shared: 0.74 GiB.
    whole = {key: value.detach().to("cpu", copy=True) for key, value in model.state_dict().items()}
    backbone = {key[len("backbone."):]: value for key, value in whole.items() if key.startswith("backbone.")}
    first_conv1 = {key[len("conv1."):]: value for key, value in backbone.items() if key.startswith("conv1.")}
    return {"imp": int(imp_num), "all_state_dict": whole, "first_conv1": first_conv1, "backbone": backbone}


def save_backbone_imp(path: str, model: YOLOv4, imp_num: int) -> None:
    atomic_save(backbone_imp_state(model, imp_num), path)


def read_backbone_imp(source) -> dict:
    """A ``backbone_imp{k}.pth`` of this toolkit or of the original code, keys checked.

    The original's ``all_state_dict`` keys (``_Build_Model__yolov4.spp...``, ``module.`` too) are
    renamed to this model's (``spp...``). Returns the dict with ``masks`` (the backbone's mask
    dict) added.
    """
    name = source if isinstance(source, str) else "the given checkpoint"
    obj = load_file(source, "backbone_imp checkpoint") if isinstance(source, str) else source
    if not isinstance(obj, Mapping) or any(key not in obj for key in BACKBONE_IMP_KEYS):
        found = ", ".join(map(str, list(obj)[:6])) if isinstance(obj, Mapping) else type(obj).__name__
        raise UserError(f"{name} is not a backbone_imp checkpoint: it needs the keys "
                        f"{', '.join(BACKBONE_IMP_KEYS)} (found: {found})")
    for key in ("all_state_dict", "first_conv1", "backbone"):
        if not isinstance(obj[key], Mapping) or not all(isinstance(k, str) for k in obj[key]):
            raise UserError(f"{name} is a damaged backbone_imp checkpoint: its '{key}' is not a dict of "
                            f"named tensors")
    pruning.check_mask_values({key: value for key, value in pruning.strip_prefixes(obj["backbone"]).items()
                               if key.endswith(pruning.MASK_SUFFIX)}, name)
    out = dict(obj)
    out["all_state_dict"] = convert_original_state_dict(obj["all_state_dict"])
    out["masks"] = pruning.extract_mask(obj["backbone"])
    return out


def round_state(next_imp: Mapping, masks: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The model round k trained, rebuilt from ``backbone_imp{k+1}.pth`` (read by ``read_backbone_imp``)
    and round k's backbone masks (``{}`` for round 0, dense): that file holds the trained weights
    (``weight_orig``, which pruning leaves as they are) under round k+1's masks, so putting round
    k's masks back gives round k's model exactly. A finished round keeps no checkpoint (eval.py)."""
    prefix, suffix = "backbone.", pruning.MASK_SUFFIX
    state = {}
    for key, value in next_imp["all_state_dict"].items():
        if key.startswith(prefix) and key.endswith(suffix):
            continue
        if key.startswith(prefix) and key.endswith("_orig"):
            name = key[len(prefix):-len("_orig")] + "_mask"
            if name in masks:
                state[key] = value
                state[prefix + name] = masks[name].to(value.dtype)
            else:
                state[key[:-len("_orig")]] = value
            continue
        state[key] = value
    unknown = sorted(set(masks) - {key[len(prefix):] for key in state if key.endswith(suffix)})
    if unknown:
        raise UserError(f"round masks name '{unknown[0]}', which the backbone_imp file's model does not prune")
    return state


def convert_original_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys of the original's Build_Model (or ours, unchanged) under this model's names."""
    out = {}
    for key, value in state.items():
        if key.startswith("module."):
            key = key[len("module."):]
        if key.startswith(ORIGINAL_PREFIX):
            key = key[len(ORIGINAL_PREFIX):]
        out[key] = value
    return out


def start_round_from(model: YOLOv4, checkpoint: Mapping) -> dict:
    """Set up round k+1 from ``backbone_imp{k+1}.pth`` exactly as the original's ``train_imp.py``.

    ``model`` must be freshly built with the pre-trained weights in its (unpruned) backbone. As
    the original does: every tensor of ``all_state_dict`` whose key the unpruned model has is
    loaded (neck, heads, backbone BN and running statistics, conv1, unused fc: they continue from
    their trained values), the pruned backbone convs' ``weight_orig`` has no such key and so keeps
    the pre-trained weight; then ``first_conv1`` is loaded and the masks are applied. Returns
    ``{"loaded": n, "rewound": [pruned conv names]}``.
    """
    checkpoint = read_backbone_imp(checkpoint) if "masks" not in checkpoint else checkpoint
    if any(pruning.is_pruned(m) for m in model.modules()):
        raise UserError("start_round_from needs a freshly built, unpruned model")
    own = model.state_dict()
    overlap = {key: value for key, value in checkpoint["all_state_dict"].items() if key in own}
    for key, value in overlap.items():
        if tuple(value.shape) != tuple(own[key].shape):
            raise UserError(f"checkpoint tensor '{key}' has shape {tuple(value.shape)} but the model's is "
                            f"{tuple(own[key].shape)}: is it for another backbone or class count?")
    own.update(overlap)
    model.load_state_dict(own)
    model.backbone.conv1.load_state_dict(checkpoint["first_conv1"])
    pruning.apply_mask(model.backbone, checkpoint["masks"])
    rewound = [key[: -len(pruning.MASK_SUFFIX)] for key in checkpoint["masks"]]
    return {"loaded": len(overlap), "rewound": rewound}


@torch.no_grad()
def keep_trained_pruned_convs(model: YOLOv4, checkpoint: Mapping) -> list[str]:
    """Learning-rate rewinding (``--prune_type lrr``) of round k+1 started from ``backbone_imp{k+1}.pth``:
    after ``start_round_from``, the pruned backbone convs take back their trained weights (the
    file's ``backbone`` ``weight_orig``) instead of the pre-trained ones. Returns their names."""
    checkpoint = read_backbone_imp(checkpoint) if "masks" not in checkpoint else checkpoint
    kept = []
    for key in checkpoint["masks"]:
        name = key[: -len(pruning.MASK_SUFFIX)]
        trained = checkpoint["backbone"].get(name + pruning.ORIG_SUFFIX)
        if trained is None:
            raise UserError(f"backbone_imp checkpoint has no trained weight '{name}{pruning.ORIG_SUFFIX}': "
                            f"it cannot continue with --prune_type lrr")
        module = model.backbone.get_submodule(name)
        module.weight_orig.copy_(trained)
        module.weight = module.weight_orig * module.weight_mask
        kept.append(name)
    return kept


@torch.no_grad()
def rewind_pruned_convs(model: YOLOv4, pretrained_backbone: Mapping[str, torch.Tensor]) -> list[str]:
    """The same rewind on a model kept in memory across rounds: every pruned backbone conv gets
    its pre-trained weight back (masks kept); all else keeps its trained value.

    ``pretrained_backbone`` is the backbone's state_dict before round 0 (torchvision names).
    Returns the names of the rewound convs.
    """
    dense = pruning.dense_state_dict(pretrained_backbone)
    rewound = []
    for name, module in model.backbone.named_modules():
        if isinstance(module, nn.Conv2d) and pruning.is_pruned(module):
            key = f"{name}.weight"
            if key not in dense:
                raise UserError(f"the pre-trained backbone has no '{key}' to rewind to")
            module.weight_orig.copy_(dense[key])
            module.weight = module.weight_orig * module.weight_mask
            rewound.append(name)
    return rewound
