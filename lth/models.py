"""ResNets (torchvision's definitions) with the stems the paper uses, and pre-trained weight loading."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Mapping

import torch
import torch.nn as nn
import torchvision

from lth import pruning
from lth.checkpoint import load_file
from lth.errors import UserError

# resnet18_w16: ResNet-18 with 16/32/64/128 channels per stage (torchvision's has 64/128/256/512), 16x fewer
# conv weights (0.7M parameters): the architecture of the CPU demos, whose runs must fit in minutes.
NARROW = {"resnet18_w16": ([2, 2, 2, 2], 16)}
ARCHS = ("resnet18", "resnet50", "resnet101", "resnet152", *NARROW)


def build_model(arch: str, num_classes: int, in_channels: int = 3, stem: str = "cifar") -> nn.Module:
    """A torchvision ResNet; ``stem="cifar"`` swaps in a 3x3 stride-1 conv1 and drops the max-pool.

    Parameter names stay torchvision's, so ImageNet, SimCLR and MoCo weights load by name and
    masks move between the CIFAR and ImageNet variants (only conv1 and fc differ in shape).
    """
    if arch not in ARCHS:
        raise UserError(f"unknown architecture '{arch}': choose one of {', '.join(ARCHS)}")
    model = _NarrowResNet(*NARROW[arch], num_classes) if arch in NARROW else \
        getattr(torchvision.models, arch)(weights=None, num_classes=num_classes)
    width = model.conv1.out_channels
    if stem == "cifar":
        model.conv1 = nn.Conv2d(in_channels, width, kernel_size=3, stride=1, padding=1, bias=False)
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
        model.maxpool = nn.Identity()
    elif stem == "imagenet":
        if in_channels != 3:
            model.conv1 = nn.Conv2d(in_channels, width, kernel_size=7, stride=2, padding=3, bias=False)
            nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    else:
        raise UserError(f"unknown stem '{stem}': choose 'cifar' or 'imagenet'")
    return model


class _NarrowResNet(torchvision.models.ResNet):
    """torchvision's BasicBlock ResNet with ``width`` channels in the first stage instead of 64.

    Built by torchvision's own ``_make_layer`` and initialised by its rule (kaiming fan_out for convs,
    BN weight 1 and bias 0), so parameter names and the forward pass are torchvision's."""

    def __init__(self, layers: list[int], width: int, num_classes: int):
        nn.Module.__init__(self)
        block = torchvision.models.resnet.BasicBlock
        self._norm_layer, self.inplanes, self.dilation, self.groups, self.base_width = nn.BatchNorm2d, width, 1, 1, 64
        self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, width, layers[0])
        self.layer2 = self._make_layer(block, width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(block, width * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(block, width * 8, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(width * 8, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.constant_(module.weight, 1)
                nn.init.constant_(module.bias, 0)


@dataclass
class LoadReport:
    """What a weight file contributed to a model."""
    path: str
    loaded: list[str] = field(default_factory=list)
    left_at_init: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # the file's tensors outside the model (a projection head)

    def summary(self) -> str:
        kept = ", ".join(self.left_at_init[:6]) + (" ..." if len(self.left_at_init) > 6 else "")
        skipped = ", ".join(self.skipped[:4]) + (" ..." if len(self.skipped) > 4 else "")
        return (f"loaded {len(self.loaded)} tensors from {self.path}; "
                f"{len(self.left_at_init)} model tensors left at init" + (f" ({kept})" if kept else "")
                + (f"; {len(self.skipped)} tensors outside the ResNet skipped ({skipped})" if skipped else ""))


def select_state_dict(obj, path: str, dict_key: str | None) -> Mapping[str, torch.Tensor]:
    """The state_dict inside a loaded file.

    ``dict_key`` picks an entry (the original's ``--dict_key state_dict``); ``None``/``"None"``
    uses the whole file, except that a file with a ``state_dict`` entry is unwrapped so that both
    ``imagenet_weight.pt`` (plain) and ``simclr_weight.pt`` (wrapped) load without flags.
    """
    if not isinstance(obj, Mapping):
        raise UserError(f"'{path}' holds a {type(obj).__name__}, not a dict of weights")
    if dict_key not in (None, "", "None"):
        if dict_key not in obj:
            keys = ", ".join(list(obj)[:8])
            raise UserError(f"'{path}' has no entry '{dict_key}' (its top-level keys: {keys}); "
                            f"pass --dict_key None to use the whole file")
        obj = obj[dict_key]
    elif "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not any(isinstance(value, torch.Tensor) for value in obj.values()):
        raise UserError(f"'{path}' holds no weight tensors under the chosen key")
    return obj


MOCO_ENCODERS = ("q", "k")
MOCO_ENCODER_HELP = (
    "which encoder of a MoCo v2 checkpoint (module.encoder_q.* / module.encoder_k.*) the backbone takes. "
    "k: the key (momentum) encoder, what the original's detection and segmentation loaders ended with "
    "(they stripped 17 characters from every key, so encoder_k's tensors, stored after encoder_q's, "
    "overwrote them): the paper's dense runs used it. q: the query encoder, what MoCo's own linear "
    "evaluation and our classification scripts use. Files without encoder_k take encoder_q either way")


def select_moco_encoder(state: Mapping[str, torch.Tensor], encoder: str = "q") -> Mapping[str, torch.Tensor]:
    """A MoCo v2 checkpoint's state_dict with encoder ``k``'s tensors under encoder_q's names.

    ``encoder="k"`` is what the original's dense loaders computed, ``{key[17:]: value for key in
    state}`` over the checkpoint's order (``module.encoder_q.`` and ``module.encoder_k.`` are both
    17 characters and encoder_k comes last, so its tensors win). ``q``, or a file without
    encoder_k, is returned unchanged (``strip_prefixes`` then keeps encoder_q and drops the rest).
    """
    if encoder not in MOCO_ENCODERS:
        raise UserError(f"unknown MoCo encoder '{encoder}': choose one of {', '.join(MOCO_ENCODERS)}")
    if encoder == "q":
        return state
    renamed = {}
    for key, value in state.items():
        for prefix in ("module.encoder_k.", "encoder_k."):
            if key.startswith(prefix):
                renamed[prefix.replace("encoder_k.", "encoder_q.") + key[len(prefix):]] = value
                break
    if not renamed:
        return state
    kept = {key: value for key, value in state.items()
            if not key.startswith(("module.encoder_q.", "encoder_q.", "module.encoder_k.", "encoder_k."))}
    return {**kept, **renamed}


def load_pretrained(model: nn.Module, path: str, dict_key: str | None = None, fc: bool = False,
                    conv1: bool = False, quiet: bool = False, moco_encoder: str = "q") -> LoadReport:
    """Load the transferable weights of any released format into ``model`` (in place).

    Accepts torchvision state_dicts (``imagenet_weight.pt``, ``moco.pt``), ``simclr_weight.pt``
    (``state_dict``), MoCo v2 checkpoints (``module.encoder_q.*``, or ``encoder_k`` with
    ``moco_encoder="k"``; the other encoder and the queue ignored) and IMP checkpoints
    (``*.weight_orig``). fc and conv1 are skipped unless asked for, and so is every tensor outside
    the model's own top-level modules (a SimCLR or BYOL ``projector.*``/``head.*``: the original's
    loaders kept only the keys the ResNet has), said in the report. Every remaining key must exist
    in the model with the same shape, otherwise a ``UserError`` names the first key that does not fit.
    """
    state = select_state_dict(load_file(path, "pre-trained weight"), path, dict_key)
    state = select_moco_encoder(state, moco_encoder)
    weights = pruning.transferable_weights(state, fc=fc, conv1=conv1)
    target = pruning.dense_state_dict(model)
    modules = {key.split(".")[0] for key in target} | {"conv1", "bn1", "layer1", "layer2", "layer3", "layer4", "fc"}
    outside = sorted(key for key in weights if key.split(".")[0] not in modules)
    weights = {key: value for key, value in weights.items() if key not in outside}
    for key, value in weights.items():
        if key not in target:
            raise UserError(f"'{path}' has weight '{key}' that this {type(model).__name__} does not "
                            f"have; is it for another architecture? (e.g. a MoCo MLP head needs fc "
                            f"dropped: leave --fc off)")
        if not isinstance(value, torch.Tensor) or value.shape != target[key].shape:
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise UserError(f"'{path}' weight '{key}' has shape {shape} but the model expects "
                            f"{tuple(target[key].shape)}")
    if not weights:
        raise UserError(f"'{path}' holds no weights that fit a {type(model).__name__}")
    _copy_into(model, weights)
    report = LoadReport(path=path, loaded=sorted(weights),
                        left_at_init=[key for key in target if key not in weights], skipped=outside)
    if not quiet:
        print(report.summary(), file=sys.stderr)
    return report


def _copy_into(model: nn.Module, weights: Mapping[str, torch.Tensor]) -> None:
    """Copy dense weights into a model that may already be pruned (then into ``weight_orig``)."""
    own = model.state_dict()
    with torch.no_grad():
        for key, value in weights.items():
            if key not in own and key.endswith(".weight") and key[:-7] + ".weight_orig" in own:
                key = key[:-7] + ".weight_orig"
            own[key].copy_(value.to(own[key].dtype))
