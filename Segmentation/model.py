"""DeepLabV3 and DeepLabV3+ on a torchvision ResNet backbone, as the original's network/ package.

The backbone is ``lth.models.build_model(arch, stem="imagenet")`` wrapped in torchvision's
``IntermediateLayerGetter``, so ``model.backbone`` has torchvision's parameter names (``conv1.weight``,
``layer1.0.conv1.weight``, ...; no ``fc``): classification tickets apply to it with
``pruning.apply_mask(model.backbone, masks)`` and released weights load into it with
``lth.models.load_pretrained(model.backbone, path, conv1=True)``. The head is ``model.classifier``
with the original's module names, so its state_dict reads and writes the original's files.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.segmentation.deeplabv3 import ASPP

from lth.engine import unwrap
from lth.errors import UserError
from lth.models import build_model

HEADS = ("deeplabv3plus", "deeplabv3")
BACKBONES = ("resnet50", "resnet101", "resnet18", "resnet18_w16")  # resnet18(_w16): CPU demos and tests
MODELS = tuple(f"{head}_{arch}" for head in HEADS for arch in BACKBONES)
OUTPUT_STRIDES = (16, 8)

ASPP_CHANNELS = 256
ASPP_DROPOUT = 0.1  # the original's; torchvision's ASPP uses 0.5
LOW_LEVEL_CHANNELS = 48
BACKBONE_BN_MOMENTUM = 0.01
BACKBONE_LR_FACTOR = 0.1

# (channels of layer4, channels of layer1) per backbone
_FEATURE_CHANNELS = {"resnet18": (512, 64), "resnet18_w16": (128, 16), "resnet50": (2048, 256), "resnet101": (2048, 256)}
# (ASPP and decoder channels, low-level projection channels): the original's 256 and 48, except for the
# quarter-width demo backbone, whose head is a quarter as wide too (at 256 it took 3/4 of a step's time).
_HEAD_CHANNELS = {"resnet18_w16": (ASPP_CHANNELS // 4, LOW_LEVEL_CHANNELS // 4)}


def stride_settings(output_stride: int) -> tuple[list[bool], list[int]]:
    """torchvision's ``replace_stride_with_dilation`` for layer2..4 and the ASPP rates, as the original."""
    if output_stride == 8:
        return [False, True, True], [12, 24, 36]
    if output_stride == 16:
        return [False, False, True], [6, 12, 18]
    raise UserError(f"--output_stride must be 16 or 8, got {output_stride}")


class SegmentationModel(nn.Module):
    """``backbone`` (a dict of feature maps) -> ``classifier`` -> bilinear upsampling to the input size."""

    def __init__(self, backbone: nn.Module, classifier: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        logits = self.classifier(self.backbone(x))
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


class DeepLabV3PlusHead(nn.Module):
    """ASPP on the last features, concatenated with a 48-channel projection of layer1, 3x3 conv, classifier."""

    def __init__(self, in_channels: int, low_level_channels: int, num_classes: int, atrous_rates: Sequence[int],
                 width: int = ASPP_CHANNELS, low_width: int = LOW_LEVEL_CHANNELS):
        super().__init__()
        self.project = nn.Sequential(
            nn.Conv2d(low_level_channels, low_width, 1, bias=False),
            nn.BatchNorm2d(low_width),
            nn.ReLU(inplace=True),
        )
        self.aspp = _aspp(in_channels, atrous_rates, width)
        self.classifier = nn.Sequential(
            nn.Conv2d(low_width + width, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, num_classes, 1),
        )
        init_head(self)

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        low_level = self.project(features["low_level"])
        context = self.aspp(features["out"])
        context = F.interpolate(context, size=low_level.shape[2:], mode="bilinear", align_corners=False)
        return self.classifier(torch.cat([low_level, context], dim=1))


class DeepLabV3Head(nn.Module):
    """ASPP, 3x3 conv, classifier (the module names are the original's: everything under ``classifier``)."""

    def __init__(self, in_channels: int, num_classes: int, atrous_rates: Sequence[int], width: int = ASPP_CHANNELS):
        super().__init__()
        self.classifier = nn.Sequential(
            _aspp(in_channels, atrous_rates, width),
            nn.Conv2d(width, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, num_classes, 1),
        )
        init_head(self)

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.classifier(features["out"])


def _aspp(in_channels: int, atrous_rates: Sequence[int], width: int = ASPP_CHANNELS) -> ASPP:
    """torchvision's ASPP (same layers and names as the original's) with the original's dropout."""
    aspp = ASPP(in_channels, list(atrous_rates), out_channels=width)
    aspp.project[3] = nn.Dropout(ASPP_DROPOUT)
    return aspp


def init_head(module: nn.Module) -> None:
    """The original's head initialisation: kaiming-normal convs (fan_in), BN weight 1 and bias 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0)


class SeparableConv2d(nn.Module):
    """A depthwise kxk conv followed by a pointwise 1x1 conv (the original's ``--separable_conv``)."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        bias = conv.bias is not None
        self.body = nn.Sequential(
            nn.Conv2d(conv.in_channels, conv.in_channels, conv.kernel_size, stride=conv.stride,
                      padding=conv.padding, dilation=conv.dilation, bias=bias, groups=conv.in_channels),
            nn.Conv2d(conv.in_channels, conv.out_channels, 1, bias=bias),
        )
        init_head(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def convert_to_separable(module: nn.Module) -> nn.Module:
    """Replace, in place, every conv with a kernel larger than 1x1 under ``module`` by a separable one."""
    for name, child in list(module.named_children()):
        if isinstance(child, nn.Conv2d) and child.kernel_size[0] > 1:
            setattr(module, name, SeparableConv2d(child))
        else:
            convert_to_separable(child)
    return module


def dilate_resnet(resnet: nn.Module, replace_stride_with_dilation: Sequence[bool]) -> nn.Module:
    """Turn the stride of layer2..4 into dilation, in place, as torchvision's ``replace_stride_with_dilation``.

    torchvision builds the same Bottleneck layers when asked at construction; doing it after
    ``build_model`` keeps the one model constructor and also covers BasicBlock (resnet18), which
    torchvision refuses to dilate. In a dilated stage the first block keeps the previous dilation
    and drops its stride (conv and shortcut); the later blocks use the new dilation.
    """
    dilation = 1
    for layer_name, dilate in zip(("layer2", "layer3", "layer4"), replace_stride_with_dilation):
        if not dilate:
            continue
        previous, dilation = dilation, dilation * 2
        for index, block in enumerate(getattr(resnet, layer_name)):
            rate = previous if index == 0 else dilation
            for conv in block.modules():
                if not isinstance(conv, nn.Conv2d):
                    continue
                if index == 0 and conv.stride != (1, 1):
                    conv.stride = (1, 1)
                if conv.kernel_size == (3, 3):
                    conv.dilation, conv.padding = (rate, rate), (rate, rate)
    return resnet


def set_bn_momentum(module: nn.Module, momentum: float) -> None:
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = momentum


def build_segmentation_model(name: str = "deeplabv3plus_resnet50", num_classes: int = 21, output_stride: int = 16,
                             separable_conv: bool = False) -> SegmentationModel:
    """A DeepLabV3(+) as the original's ``network.modeling`` builds it, with a randomly initialised backbone.

    Pre-trained weights are loaded afterwards into ``model.backbone`` (never downloaded).
    ``separable_conv`` applies to DeepLabV3+ only, as in the original's scripts.
    """
    if name not in MODELS:
        raise UserError(f"unknown model '{name}': choose one of {', '.join(MODELS)}")
    if num_classes < 1:
        raise UserError(f"the number of classes must be positive, got {num_classes}")
    head_name, arch = name.split("_", 1)
    dilation, rates = stride_settings(output_stride)
    resnet = dilate_resnet(build_model(arch, num_classes=1000, stem="imagenet"), dilation)
    high_channels, low_channels = _FEATURE_CHANNELS[arch]
    width, low_width = _HEAD_CHANNELS.get(arch, (ASPP_CHANNELS, LOW_LEVEL_CHANNELS))
    if head_name == "deeplabv3plus":
        backbone = IntermediateLayerGetter(resnet, return_layers={"layer4": "out", "layer1": "low_level"})
        classifier = DeepLabV3PlusHead(high_channels, low_channels, num_classes, rates, width, low_width)
        if separable_conv:
            convert_to_separable(classifier)
    else:
        backbone = IntermediateLayerGetter(resnet, return_layers={"layer4": "out"})
        classifier = DeepLabV3Head(high_channels, num_classes, rates, width)
    set_bn_momentum(backbone, BACKBONE_BN_MOMENTUM)
    return SegmentationModel(backbone, classifier)


def model_parts(model: nn.Module) -> dict[str, nn.Module]:
    """The backbone (pruned, lr x0.1) and the head (ASPP, decoder, classifier: never pruned)."""
    model = unwrap(model)
    return {"backbone": model.backbone, "head": model.classifier}


def module_names(model: nn.Module) -> dict[str, list[str]]:
    """Names (as in ``model.named_modules()``) of the modules with parameters, per part."""
    names = {}
    for part, module in model_parts(model).items():
        prefix = "backbone" if part == "backbone" else "classifier"
        names[part] = [f"{prefix}.{name}" if name else prefix for name, sub in module.named_modules()
                       if any(True for _ in sub.parameters(recurse=False))]
    return names


def param_groups(model: nn.Module, lr: float, backbone_lr_factor: float = BACKBONE_LR_FACTOR) -> list[dict]:
    """The original's SGD groups: the backbone at ``backbone_lr_factor * lr``, the head at ``lr``."""
    parts = model_parts(model)
    return [{"name": "backbone", "params": list(parts["backbone"].parameters()), "lr": backbone_lr_factor * lr},
            {"name": "head", "params": list(parts["head"].parameters()), "lr": lr}]


def prune_target(model: nn.Module) -> nn.Module:
    """The module IMP prunes: the backbone (its convs without conv1); ASPP and decoder are never pruned."""
    return unwrap(model).backbone
