"""Tests for Detection/model.py: shapes, the original's sizes, fp32 decoding, DO-Conv folding, tickets
on the backbone, backbone-only pruning, the backbone_imp checkpoint and the original's rewind rule."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.nn.utils.prune as prune

import pruning_utils as pu
from Detection.imp_files import (ORIGINAL_PREFIX, backbone_imp_state, read_backbone_imp, rewind_pruned_convs,
                                 save_backbone_imp, start_round_from)
from Detection.model import DOConv2d, YOLOv4, decode, flatten_decoded, fold_do_convs, parameter_counts
from lth.errors import UserError
from lth.models import build_model, load_pretrained

pytestmark = pytest.mark.usefixtures("one_thread")
IMG = 64


def tiny_model(seed: int = 0, **kwargs) -> YOLOv4:
    torch.manual_seed(seed)
    return YOLOv4(num_classes=4, arch="resnet18", **kwargs)


def test_output_shapes_and_decoding_at_small_size():
    model = tiny_model().eval()
    raw, decoded = model(torch.rand(2, 3, IMG, IMG))
    assert [tuple(r.shape) for r in raw] == [(2, 8, 8, 3, 9), (2, 4, 4, 3, 9), (2, 2, 2, 3, 9)]
    assert [tuple(d.shape) for d in decoded] == [tuple(r.shape) for r in raw]
    assert flatten_decoded(decoded).shape == (2, 3 * (64 + 16 + 4), 9)
    # Decoding, as the original's Yolo_head: cell (x=1, y=2) of stride 8, anchor 0 (1.25, 1.625).
    r, d = raw[0][0, 2, 1, 0], decoded[0][0, 2, 1, 0]
    assert torch.allclose(d[0], (torch.sigmoid(r[0]) + 1) * 8)
    assert torch.allclose(d[1], (torch.sigmoid(r[1]) + 2) * 8)
    assert torch.allclose(d[2], torch.exp(r[2]) * 1.25 * 8)
    assert torch.allclose(d[3], torch.exp(r[3]) * 1.625 * 8)
    assert torch.allclose(d[4:], torch.sigmoid(r[4:]))


def test_every_trainable_tensor_gets_a_gradient():
    # DDP without find_unused_parameters needs it; the backbone's unused fc is frozen.
    model = tiny_model()
    raw, decoded = model(torch.rand(2, 3, IMG, IMG))
    (sum(r.float().mean() for r in raw) + sum(d.mean() for d in decoded)).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == [] and not model.backbone.fc.weight.requires_grad


def test_resnet50_yolov4_has_the_original_parameter_counts():
    # The inventory's figures for the original: backbone 25.6M (with its unused fc), SPP 23.1M,
    # PANet 101.2M, heads 25.1M (built on the meta device: no memory, no init cost).
    with torch.device("meta"):
        model = YOLOv4(num_classes=20, arch="resnet50")
    counts = {k: round(v / 1e6, 1) for k, v in parameter_counts(model).items()}
    assert counts == {"backbone": 25.6, "spp": 23.1, "panet": 101.2, "predict_net": 25.0} or \
        counts == {"backbone": 25.6, "spp": 23.1, "panet": 101.2, "predict_net": 25.1}
    leaky = [m for m in model.modules() if isinstance(m, nn.LeakyReLU)]
    assert leaky and all(m.negative_slope == 0.01 for m in leaky)


def test_original_init_of_neck_and_head():
    model = tiny_model()
    head_convs = [m for m in model.panet.modules() if isinstance(m, nn.Conv2d)]
    weights = torch.cat([m.weight.flatten() for m in head_convs])
    assert abs(weights.std().item() - 0.01) < 1e-3 and abs(weights.mean().item()) < 1e-3
    final = model.predict_net.predict_conv[0][1]
    assert final.bias is not None and torch.all(final.bias == 0)


def test_decoding_stays_fp32_under_bf16_autocast():
    model = tiny_model().eval()
    x = torch.rand(1, 3, IMG, IMG)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        raw, decoded = model(x)
    assert raw[0].dtype == torch.bfloat16
    for index, (r, d) in enumerate(zip(raw, decoded)):
        assert d.dtype == torch.float32
        assert torch.equal(d, decode(r.float(), model.anchors[index], model.strides[index]))


def test_do_conv_folded_equals_its_unfolded_definition():
    torch.manual_seed(1)
    conv = DOConv2d(5, 7, 3, stride=2, padding=1, bias=True)
    with torch.no_grad():
        conv.D.normal_(0, 0.3)  # a trained D, not the zero it starts from
    x = torch.randn(2, 5, 9, 9)
    # Unfolded form from the definition: the depthwise D acts on every input patch, then W.
    patches = F.unfold(x, 3, padding=1, stride=2).view(2, 5, 9, -1)           # (B, in, k*k, L)
    d_full = conv.D + torch.eye(9).expand(5, 9, 9)                             # (in, k*k, D_mul)
    composed = torch.einsum("bimL,ims->bisL", patches, d_full)                 # (B, in, D_mul, L)
    out = torch.einsum("bisL,ois->boL", composed, conv.W) + conv.bias.view(1, -1, 1)
    reference = out.view(2, 7, 5, 5)
    assert torch.allclose(conv(x), reference, atol=1e-5)
    assert torch.allclose(conv.to_conv2d()(x), reference, atol=1e-5)


def test_do_conv_model_folds_to_plain_convs_with_the_same_function():
    model = tiny_model(conv_type="do_conv").eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, DOConv2d) and m.D is not None:
                m.D.normal_(0, 0.1)
    x = torch.rand(1, 3, IMG, IMG)
    _, before = model(x)
    folded = fold_do_convs(copy.deepcopy(model))
    assert not any(isinstance(m, DOConv2d) for m in folded.modules())
    _, after = folded(x)
    for a, b in zip(before, after):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5)


def test_classification_ticket_applies_to_the_backbone(tmp_path):
    torch.manual_seed(3)
    classifier = build_model("resnet18", 10, stem="cifar")
    pu.global_prune(classifier, 0.2)
    pu.global_prune(classifier, 0.2)
    pu.save_ticket(str(tmp_path / "ticket_02.pt"), pu.extract_mask(classifier), arch="resnet18")
    masks, _ = pu.read_masks(str(tmp_path / "ticket_02.pt"))
    model = tiny_model()
    pu.apply_mask(model.backbone, masks)
    assert pu.sparsity(model.backbone)["remaining"] == pytest.approx(64.0, abs=0.01)
    for key, mask in masks.items():
        assert torch.equal(model.backbone.get_submodule(key[: -len(pu.MASK_SUFFIX)]).weight_mask, mask)
    assert not pu.is_pruned(model.backbone.conv1)
    raw, _ = model.eval()(torch.rand(1, 3, IMG, IMG))
    assert torch.isfinite(raw[0]).all()


def test_released_weights_load_into_the_backbone(tmp_path):
    torch.manual_seed(4)
    source = build_model("resnet18", 1000, stem="imagenet")
    torch.save(source.state_dict(), tmp_path / "imagenet_weight.pt")
    model = tiny_model()
    load_pretrained(model.backbone, str(tmp_path / "imagenet_weight.pt"), conv1=True, quiet=True)
    assert torch.equal(model.backbone.layer3[1].conv2.weight, source.layer3[1].conv2.weight)
    assert torch.equal(model.backbone.conv1.weight, source.conv1.weight)


def test_backbone_pruning_leaves_neck_head_and_conv1_untouched():
    model = tiny_model()
    others = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("backbone.")}
    conv1 = model.backbone.conv1.weight.detach().clone()
    pu.global_prune(model.backbone, 0.2)
    first = pu.current_masks(model.backbone)
    pu.global_prune(model.backbone, 0.2)
    second = pu.current_masks(model.backbone)
    assert pu.sparsity(model.backbone)["remaining"] == pytest.approx(64.0, abs=0.01)
    assert all(torch.all(second[k] <= first[k]) for k in first)        # nested
    after = {k: v for k, v in model.state_dict().items() if not k.startswith("backbone.")}
    assert after.keys() == others.keys() and all(torch.equal(after[k], others[k]) for k in others)
    assert not any(pu.is_pruned(m) for part in model.neck_and_head().values() for m in part.modules())
    assert not pu.is_pruned(model.backbone.conv1) and torch.equal(model.backbone.conv1.weight, conv1)


def _trained_pruned_round(seed: int = 5):
    """A model as at the end of a round: pre-trained backbone, 'trained' everything, pruned."""
    model = tiny_model(seed)
    pretrained = copy.deepcopy(model.backbone.state_dict())
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point():
                tensor.add_(torch.randn_like(tensor) * 0.01)  # stands for a round of training
    pu.global_prune(model.backbone, 0.2)
    return model, pretrained


def test_backbone_imp_checkpoint_round_trip_and_original_keys(tmp_path):
    model, _ = _trained_pruned_round()
    path = str(tmp_path / "backbone_imp1.pth")
    save_backbone_imp(path, model, 0)
    read = read_backbone_imp(path)
    assert read["imp"] == 0 and set(read) >= {"all_state_dict", "first_conv1", "backbone", "masks"}
    assert "layer1.0.conv1.weight_orig" in read["backbone"] and "layer1.0.conv1.weight_mask" in read["backbone"]
    assert set(read["first_conv1"]) == {"weight"}
    assert all(torch.equal(read["masks"][k], v) for k, v in pu.extract_mask(model.backbone).items())
    # The original's all_state_dict keys carry Build_Model's mangled prefix; they are renamed.
    original = backbone_imp_state(model, 0)
    original["all_state_dict"] = {ORIGINAL_PREFIX + k: v for k, v in original["all_state_dict"].items()}
    converted = read_backbone_imp(original)["all_state_dict"]
    assert converted.keys() == model.state_dict().keys()
    # Keys as the original's Build_Model names them (read from its model/YOLOv4.py structure).
    original_names = ["_Build_Model__yolov4.backbone.layer1.0.conv1.weight_orig",
                      "_Build_Model__yolov4.spp.head_conv.1.conv.1.running_mean",
                      "_Build_Model__yolov4.panet.feature_transform3.conv.0.weight",
                      "_Build_Model__yolov4.panet.resample5_4.upsample.0.conv.1.weight",
                      "_Build_Model__yolov4.panet.resample4_5.downsample.conv.0.weight",
                      "_Build_Model__yolov4.panet.upstream_conv5.4.conv.0.weight",
                      "_Build_Model__yolov4.predict_net.predict_conv.2.0.conv.0.weight",
                      "_Build_Model__yolov4.predict_net.predict_conv.2.1.bias"]
    own = model.state_dict()
    assert all(name[len(ORIGINAL_PREFIX):] in own for name in original_names)
    with pytest.raises(UserError, match="not a backbone_imp checkpoint"):
        read_backbone_imp({"state_dict": {}})


def _original_rewind(fresh: YOLOv4, checkpoint: dict) -> YOLOv4:
    """The original train_imp.py for imp_num > 0, written out: load the overlapping keys of
    all_state_dict into the freshly built model, load first_conv1, apply each mask."""
    model_state_dict = fresh.state_dict()
    overlap_all = {k: v for k, v in checkpoint["all_state_dict"].items() if k in model_state_dict.keys()}
    model_state_dict.update(overlap_all)
    fresh.load_state_dict(model_state_dict)
    fresh.backbone.conv1.load_state_dict(checkpoint["first_conv1"])
    mask_dict = {k: v for k, v in checkpoint["backbone"].items() if "mask" in k}
    for key, mask in mask_dict.items():
        prune.CustomFromMask.apply(fresh.backbone.get_submodule(key[: -len("_mask") - len(".weight")]), "weight",
                                   mask=mask)
    return fresh


def test_rewind_between_rounds_follows_the_original():
    trained, pretrained = _trained_pruned_round()
    checkpoint = backbone_imp_state(trained, 0)

    def fresh():
        model = tiny_model(99)               # another init: every tensor must come from somewhere
        model.backbone.load_state_dict(pretrained)
        return model

    reference = _original_rewind(fresh(), checkpoint).state_dict()
    ours = fresh()
    report = start_round_from(ours, checkpoint)
    in_memory, _ = _trained_pruned_round()   # the same trained model again (same seeds)
    rewound = rewind_pruned_convs(in_memory, pretrained)
    assert sorted(report["rewound"]) == sorted(rewound) and len(rewound) == 19   # resnet18: 20 convs - conv1
    for state in (ours.state_dict(), in_memory.state_dict()):
        assert state.keys() == reference.keys()
        for key in reference:
            assert torch.equal(state[key], reference[key]), key
    # What the rule means: pruned convs back to pre-trained; BN, conv1, neck, head trained.
    assert torch.equal(reference["backbone.layer2.0.conv1.weight_orig"], pretrained["layer2.0.conv1.weight"])
    trained_state = trained.state_dict()
    for key in ("backbone.conv1.weight", "backbone.bn1.weight", "backbone.layer1.0.bn1.running_mean",
                "spp.head_conv.0.conv.0.weight", "predict_net.predict_conv.2.1.bias"):
        assert torch.equal(reference[key], trained_state[key]), key
    with pytest.raises(UserError, match="unpruned"):
        start_round_from(ours, checkpoint)


def test_bad_model_arguments_are_user_errors():
    with pytest.raises(UserError, match="conv type"):
        YOLOv4(arch="resnet18", conv_type="deformable")
    with pytest.raises(UserError, match="backbone"):
        YOLOv4(arch="vgg16")
