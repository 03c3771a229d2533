"""The original's "Resnet50-YOLOv4": a torchvision ResNet feeding SPP, PANet and three YOLO heads.

Module names mirror the original's ``model/YOLOv4.py`` (``spp.head_conv.0.conv.0.weight``,
``panet.downstream_conv5...``, ``predict_net.predict_conv.{i}...``) so that its checkpoints load
after stripping its ``_Build_Model__yolov4.`` prefix, and the backbone keeps torchvision's
parameter names (``conv1.weight``, ``layer1.0.conv1.weight``...) so that every classification
ticket and every released ImageNet/MoCo/SimCLR file fits ``model.backbone`` as it is. The
original's per-round checkpoint (``backbone_imp{k}.pth``) and its rewind rule are in
``Detection/imp_files.py``.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from lth.errors import UserError
from lth.models import build_model

# The original's VOC anchors (config/yolov4_config.py MODEL["ANCHORS"]), in grid cells of each
# stride: (12,16),(19,36),(40,28) px at stride 8; (36,75),(76,55),(72,146) at 16;
# (116,90),(156,198),(373,326) at 32.
VOC_ANCHORS = (
    ((1.25, 1.625), (2.0, 3.75), (4.125, 2.875)),
    ((1.875, 3.8125), (3.875, 2.8125), (3.6875, 7.4375)),
    ((3.625, 2.8125), (4.875, 6.1875), (11.65625, 10.1875)),
)
STRIDES = (8, 16, 32)
ANCHORS_PER_SCALE = 3
CONV_TYPES = ("general", "do_conv")
BACKBONE_CHANNELS = {"resnet18": (128, 256, 512), "resnet18_w16": (32, 64, 128), "resnet50": (512, 1024, 2048),
                     "resnet152": (512, 1024, 2048)}


# ---------------------------------------------------------------------------------------------
# DO-Conv (Cao et al., "DO-Conv: Depthwise Over-parameterized Convolutional Layer")
# ---------------------------------------------------------------------------------------------

class DOConv2d(nn.Module):
    """A k x k convolution over-parameterised as a depthwise kernel ``D`` composed with ``W``.

    ``W`` has shape (out, in, k*k) and ``D`` (in, k*k, k*k), trained from zero on top of a fixed
    identity ``D_diag``; the convolution applied is the folded kernel
    ``K[o, i, m] = sum_s (D + D_diag)[i, m, s] * W[o, i, s]`` (depth multiplier k*k, groups 1, the
    original's defaults). A 1x1 DO-Conv is a plain conv with ``W`` reshaped. ``to_conv2d`` returns
    the folded ``nn.Conv2d`` for inference: the same function, one conv.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int = 0, bias: bool = False):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        taps = kernel_size * kernel_size
        self.W = nn.Parameter(torch.empty(out_channels, in_channels, taps))
        nn.init.kaiming_uniform_(self.W, a=math.sqrt(5))
        if taps > 1:
            self.D = nn.Parameter(torch.zeros(in_channels, taps, taps))
            self.register_buffer("D_diag", torch.eye(taps).unsqueeze(0).repeat(in_channels, 1, 1))
        else:
            self.register_parameter("D", None)
            self.register_buffer("D_diag", None)
        if bias:
            self.bias = nn.Parameter(torch.empty(out_channels))
            bound = 1 / math.sqrt(in_channels * taps)
            nn.init.uniform_(self.bias, -bound, bound)
        else:
            self.register_parameter("bias", None)

    def folded_weight(self) -> torch.Tensor:
        shape = (self.out_channels, self.in_channels, self.kernel_size, self.kernel_size)
        if self.D is None:
            return self.W.reshape(shape)
        return torch.einsum("ims,ois->oim", self.D + self.D_diag, self.W).reshape(shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.folded_weight(), self.bias, self.stride, self.padding)

    @torch.no_grad()
    def to_conv2d(self) -> nn.Conv2d:
        conv = nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size, self.stride,
                         self.padding, bias=self.bias is not None).to(self.W.device, self.W.dtype)
        conv.weight.copy_(self.folded_weight())
        if self.bias is not None:
            conv.bias.copy_(self.bias)
        return conv

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, bias={self.bias is not None}")


def fold_do_convs(model: nn.Module) -> nn.Module:
    """Replace every ``DOConv2d`` of ``model`` by its folded ``nn.Conv2d`` (in place, for inference)."""
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, DOConv2d):
                setattr(module, child_name, child.to_conv2d())
    return model


# ---------------------------------------------------------------------------------------------
# Neck and heads, as the original's model/YOLOv4.py
# ---------------------------------------------------------------------------------------------

def _make_conv(conv_type: str, in_channels: int, out_channels: int, kernel_size: int, stride: int) -> nn.Module:
    if conv_type == "do_conv":
        return DOConv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, bias=False)
    return nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, bias=False)


class ConvBlock(nn.Module):
    """Conv (no bias) + BatchNorm + LeakyReLU, the original's ``Conv``; its slope is PyTorch's
    default 0.01 (the original writes ``nn.LeakyReLU()``)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 conv_type: str = "general"):
        super().__init__()
        self.conv = nn.Sequential(_make_conv(conv_type, in_channels, out_channels, kernel_size, stride),
                                  nn.BatchNorm2d(out_channels), nn.LeakyReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def _stack(channels: int, count: int, conv_type: str, first_in: int | None = None) -> nn.Sequential:
    """``count`` ConvBlocks alternating 1x1 (to channels/2) and 3x3 (back to channels)."""
    blocks, width = [], first_in or channels
    for index in range(count):
        if index % 2 == 0:
            blocks.append(ConvBlock(width, channels // 2, 1, conv_type=conv_type))
            width = channels // 2
        else:
            blocks.append(ConvBlock(width, channels, 3, conv_type=conv_type))
            width = channels
    return nn.Sequential(*blocks)


class SpatialPyramidPooling(nn.Module):
    def __init__(self, channels: int, conv_type: str, pool_sizes: Sequence[int] = (5, 9, 13)):
        super().__init__()
        self.head_conv = _stack(channels, 3, conv_type)
        self.maxpools = nn.ModuleList(nn.MaxPool2d(size, 1, size // 2) for size in pool_sizes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head_conv(x)
        return torch.cat([x] + [pool(x) for pool in self.maxpools], dim=1)


class Upsample(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, conv_type: str):
        super().__init__()
        self.upsample = nn.Sequential(ConvBlock(in_channels, out_channels, 1, conv_type=conv_type),
                                      nn.Upsample(scale_factor=2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.upsample(x)


class Downsample(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, conv_type: str):
        super().__init__()
        self.downsample = ConvBlock(in_channels, out_channels, 3, 2, conv_type=conv_type)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.downsample(x)


class PANet(nn.Module):
    def __init__(self, channels: Sequence[int], conv_type: str):
        super().__init__()
        c3, c4, c5 = channels
        self.feature_transform3 = ConvBlock(c3, c3 // 2, 1, conv_type=conv_type)
        self.feature_transform4 = ConvBlock(c4, c4 // 2, 1, conv_type=conv_type)
        self.resample5_4 = Upsample(c5 // 2, c4 // 2, conv_type)
        self.resample4_3 = Upsample(c4 // 2, c3 // 2, conv_type)
        self.resample3_4 = Downsample(c3 // 2, c4 // 2, conv_type)
        self.resample4_5 = Downsample(c4 // 2, c5 // 2, conv_type)
        self.downstream_conv5 = _stack(c5, 3, conv_type, first_in=c5 * 2)
        self.downstream_conv4 = _stack(c4, 5, conv_type)
        self.downstream_conv3 = _stack(c3, 5, conv_type)
        self.upstream_conv4 = _stack(c4, 5, conv_type)
        self.upstream_conv5 = _stack(c5, 5, conv_type)

    def forward(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        f3, f4, f5 = self.feature_transform3(features[0]), self.feature_transform4(features[1]), features[2]
        down5 = self.downstream_conv5(f5)
        down4 = self.downstream_conv4(torch.cat([f4, self.resample5_4(down5)], dim=1))
        down3 = self.downstream_conv3(torch.cat([f3, self.resample4_3(down4)], dim=1))
        up4 = self.upstream_conv4(torch.cat([self.resample3_4(down3), down4], dim=1))
        up5 = self.upstream_conv5(torch.cat([self.resample4_5(up4), down5], dim=1))
        return [down3, up4, up5]


class PredictNet(nn.Module):
    """Per stride a 3x3 ConvBlock and a 1x1 prediction conv (with bias) to anchors*(5+classes)."""

    def __init__(self, channels: Sequence[int], out_channels: int, conv_type: str):
        super().__init__()
        self.predict_conv = nn.ModuleList(
            nn.Sequential(ConvBlock(c // 2, c, 3, conv_type=conv_type), nn.Conv2d(c, out_channels, 1))
            for c in channels)

    def forward(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return [head(feature) for head, feature in zip(self.predict_conv, features)]


def _init_like_original(module: nn.Module) -> None:
    """Conv weights N(0, 0.01) and zero bias, BN weight 1 and bias 0 (SPP, PANet, PredictNet).

    A DO-Conv's ``W`` gets the same N(0, 0.01) (its ``D`` starts at zero, so its folded kernel is
    ``W``): with either conv type the model starts from the same distribution of functions.
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, 0.0, 0.01)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, DOConv2d):
            nn.init.normal_(m.W, 0.0, 0.01)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


# ---------------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------------

def decode(raw: torch.Tensor, anchors: torch.Tensor, stride: int) -> torch.Tensor:
    """Raw head output (B, H, W, A, 5+C) -> boxes in input pixels ``x, y, w, h, conf, probs``.

    ``xy = (sigmoid(t_xy) + cell) * stride``, ``wh = exp(t_wh) * anchor * stride``, conf and class
    probabilities through a sigmoid, as the original's ``Yolo_head``. Always computed in float32,
    with autocast off, so that exp/sigmoid never run in bf16.
    """
    with torch.autocast(device_type=raw.device.type, enabled=False):
        raw = raw.float()
        _, height, width = raw.shape[:3]
        ys, xs = torch.meshgrid(torch.arange(height, device=raw.device), torch.arange(width, device=raw.device),
                                indexing="ij")
        cells = torch.stack([xs, ys], dim=-1).float().view(1, height, width, 1, 2)
        anchors = anchors.to(raw.device, torch.float32).view(1, 1, 1, -1, 2)
        xy = (torch.sigmoid(raw[..., 0:2]) + cells) * stride
        wh = torch.exp(raw[..., 2:4]) * anchors * stride
        return torch.cat([xy, wh, torch.sigmoid(raw[..., 4:])], dim=-1)


# ---------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------

class YOLOv4(nn.Module):
    """ResNet backbone (``self.backbone``, a torchvision ResNet) -> SPP -> PANet -> 3 heads.

    ``forward`` returns ``(raw, decoded)``: two lists over strides 8/16/32 of tensors shaped
    (B, H/stride, W/stride, 3, 5 + num_classes); ``raw`` holds the logits the loss needs,
    ``decoded`` boxes in input pixels (x, y, w, h), confidence and class probabilities (float32).
    """

    def __init__(self, num_classes: int = 20, arch: str = "resnet50", conv_type: str = "general",
                 anchors: Sequence = VOC_ANCHORS, strides: Sequence[int] = STRIDES):
        super().__init__()
        if conv_type not in CONV_TYPES:
            raise UserError(f"unknown conv type '{conv_type}': choose one of {', '.join(CONV_TYPES)}")
        if arch not in BACKBONE_CHANNELS:
            raise UserError(f"unknown detection backbone '{arch}': choose one of {', '.join(BACKBONE_CHANNELS)}")
        if num_classes < 1:
            raise UserError(f"a detector needs at least one class, got {num_classes}")
        self.num_classes, self.arch, self.conv_type = num_classes, arch, conv_type
        self.strides = tuple(int(s) for s in strides)
        self.register_buffer("anchors", torch.tensor(anchors, dtype=torch.float32), persistent=False)
        # The whole torchvision ResNet, unused fc included (the original kept it too), so that
        # every tensor of a released ImageNet file has a place and tickets fit by name.
        self.backbone = build_model(arch, num_classes=1000, stem="imagenet")
        # fc never sees a gradient (the original's SGD skipped it too); frozen, DDP needs no
        # find_unused_parameters for it.
        self.backbone.fc.requires_grad_(False)
        channels = BACKBONE_CHANNELS[arch]
        out_channels = ANCHORS_PER_SCALE * (5 + num_classes)
        self.spp = SpatialPyramidPooling(channels[-1], conv_type)
        self.panet = PANet(channels, conv_type)
        self.predict_net = PredictNet(channels, out_channels, conv_type)
        for part in (self.spp, self.panet, self.predict_net):
            _init_like_original(part)

    def backbone_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        b = self.backbone
        x = b.maxpool(b.relu(b.bn1(b.conv1(x))))
        c3 = b.layer2(b.layer1(x))
        c4 = b.layer3(c3)
        return [c3, c4, b.layer4(c4)]

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        features = self.backbone_features(x)
        features[-1] = self.spp(features[-1])
        outputs = self.predict_net(self.panet(features))
        raw, decoded = [], []
        for index, out in enumerate(outputs):
            batch, _, height, width = out.shape
            out = out.view(batch, ANCHORS_PER_SCALE, 5 + self.num_classes, height, width).permute(0, 3, 4, 1, 2)
            raw.append(out)
            decoded.append(decode(out, self.anchors[index], self.strides[index]))
        return raw, decoded

    def neck_and_head(self) -> dict[str, nn.Module]:
        return {"spp": self.spp, "panet": self.panet, "predict_net": self.predict_net}


def flatten_decoded(decoded: Sequence[torch.Tensor]) -> torch.Tensor:
    """The decoded outputs of all strides as one (B, N, 5 + C) tensor per image batch."""
    return torch.cat([d.reshape(d.shape[0], -1, d.shape[-1]) for d in decoded], dim=1)


def parameter_counts(model: YOLOv4) -> dict[str, int]:
    parts = {"backbone": model.backbone, **model.neck_and_head()}
    return {name: sum(p.numel() for p in part.parameters()) for name, part in parts.items()}
