"""DeepLabV3(+) model: shapes, the original's layout, backbone/head split, tickets and weights on the backbone,
and the original's per-round IMP files."""

import pytest
import torch
import torch.nn as nn
import torchvision

import pruning_utils
from lth import tickets
from lth.errors import UserError
from lth.models import build_model, load_pretrained
from Segmentation import imp_files
from Segmentation.model import (SeparableConv2d, build_segmentation_model, dilate_resnet, module_names,
                                param_groups, prune_target, stride_settings)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("name", ["deeplabv3plus_resnet18", "deeplabv3_resnet18"])
@pytest.mark.parametrize("output_stride", [16, 8])
def test_output_has_input_size_and_features_have_the_output_stride(name, output_stride):
    torch.manual_seed(0)
    model = build_segmentation_model(name, num_classes=5, output_stride=output_stride).eval()
    x = torch.randn(2, 3, 33, 47)
    with torch.no_grad():
        features = model.backbone(x)
        out = model(x)
    assert out.shape == (2, 5, 33, 47)
    # 33x47 -> stem /4 (9x12) -> /output_stride overall
    expected = {16: (3, 3), 8: (5, 6)}[output_stride]
    assert tuple(features["out"].shape[-2:]) == expected
    assert ("low_level" in features) == name.startswith("deeplabv3plus")


@pytest.mark.parametrize("output_stride", [16, 8])
def test_dilation_matches_torchvision_replace_stride_with_dilation(output_stride):
    flags, rates = stride_settings(output_stride)
    assert rates == ([6, 12, 18] if output_stride == 16 else [12, 24, 36])
    reference = torchvision.models.resnet50(weights=None, replace_stride_with_dilation=flags).eval()
    ours = dilate_resnet(build_model("resnet50", 1000, stem="imagenet"), flags).eval()
    ours.load_state_dict(reference.state_dict())
    x = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        assert torch.equal(reference(x), ours(x))


def test_layout_is_the_originals():
    model = build_segmentation_model("deeplabv3plus_resnet50", num_classes=21)
    head = model.classifier
    assert sum(p.numel() for p in model.parameters()) == 39_761_845
    assert [m.dilation[0] for m in head.aspp.convs[1:4].modules() if isinstance(m, nn.Conv2d)] == [6, 12, 18]
    assert head.aspp.project[3].p == 0.1
    assert head.project[0].in_channels == 256 and head.project[0].out_channels == 48
    assert head.classifier[0].in_channels == 304 and head.classifier[0].out_channels == 256
    assert head.classifier[3].out_channels == 21
    assert all(m.momentum == 0.01 for m in model.backbone.modules() if isinstance(m, nn.BatchNorm2d))
    assert all(m.momentum == 0.1 for m in head.modules() if isinstance(m, nn.BatchNorm2d))
    assert not any(key.startswith("fc.") for key in model.backbone.state_dict())
    # the original's head init: kaiming normal, fan_in, gain sqrt(2): std sqrt(2 / (304 * 9))
    std = head.classifier[0].weight.std().item()
    assert abs(std - (2 / (304 * 9)) ** 0.5) < 0.002
    bn = head.classifier[1]
    assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0)
    small = build_segmentation_model("deeplabv3plus_resnet18", num_classes=3)
    assert small.classifier.project[0].in_channels == 64


def test_separable_conv_replaces_the_heads_3x3_convs_with_the_originals_names():
    model = build_segmentation_model("deeplabv3plus_resnet18", num_classes=3, separable_conv=True)
    separable = [name for name, m in model.classifier.named_modules() if isinstance(m, SeparableConv2d)]
    assert separable == ["aspp.convs.1.0", "aspp.convs.2.0", "aspp.convs.3.0", "classifier.0"]
    keys = model.classifier.state_dict()
    assert "classifier.0.body.0.weight" in keys and "classifier.0.body.1.weight" in keys
    assert model.classifier.aspp.convs[2][0].body[0].dilation == (12, 12)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 3, 32, 32)


def test_unknown_model_and_output_stride_are_user_errors():
    with pytest.raises(UserError, match="unknown model"):
        build_segmentation_model("deeplabv3plus_vgg16")
    with pytest.raises(UserError, match="output_stride"):
        build_segmentation_model("deeplabv3plus_resnet18", output_stride=32)


def test_param_groups_put_the_backbone_at_a_tenth_of_the_lr():
    model = build_segmentation_model("deeplabv3plus_resnet18", num_classes=3)
    groups = param_groups(model, lr=0.01)
    assert [g["name"] for g in groups] == ["backbone", "head"]
    assert groups[0]["lr"] == pytest.approx(0.001) and groups[1]["lr"] == 0.01
    ids = [{id(p) for p in g["params"]} for g in groups]
    assert not ids[0] & ids[1] and ids[0] | ids[1] == {id(p) for p in model.parameters()}
    names = module_names(model)
    assert "backbone.conv1" in names["backbone"] and "backbone.layer4.1.conv2" in names["backbone"]
    assert "classifier.aspp.convs.0.0" in names["head"] and "classifier.classifier.3" in names["head"]
    wrapped = torch.compile(nn.DataParallel(model))  # DDP and DataParallel wrap alike (DataParallel runs on a CPU)
    assert prune_target(wrapped) is model.backbone


def test_classification_ticket_applies_to_the_backbone(tmp_path):
    classifier = build_model("resnet18", num_classes=10, stem="cifar")
    pruning_utils.global_prune(classifier, 0.2)
    pruning_utils.global_prune(classifier, 0.2)
    masks = pruning_utils.extract_mask(classifier)
    ticket = tmp_path / "ticket_02.pt"
    tickets.save_ticket(str(ticket), masks, arch="resnet18", dataset="cifar10")
    read, meta = tickets.read_masks(str(ticket))
    # the segmentation reader takes the same files, and the original's plain mask-{i}.pt dicts
    for source in (str(ticket), _saved(tmp_path / "mask-2.pt", {"module." + k: v for k, v in masks.items()})):
        masks_read, _ = imp_files.backbone_masks(source)
        assert masks_read.keys() == masks.keys() and all(torch.equal(masks_read[k], masks[k]) for k in masks)
    model = build_segmentation_model("deeplabv3plus_resnet18", num_classes=3)
    pruning_utils.apply_mask(model.backbone, read)
    assert pruning_utils.sparsity(model.backbone)["remaining"] == pytest.approx(64.0, abs=0.01)
    for key, mask in masks.items():
        assert torch.equal(model.backbone.get_submodule(key[: -len(".weight_mask")]).weight_mask, mask)
    assert not any(pruning_utils.is_pruned(m) for m in model.classifier.modules())
    model(torch.randn(2, 3, 32, 32)).sum().backward()


def _saved(path, obj):
    torch.save(obj, path)
    return str(path)


def test_global_pruning_of_the_backbone_leaves_conv1_and_the_head_dense():
    model = build_segmentation_model("deeplabv3plus_resnet50", num_classes=21)
    head_before = {k: v.clone() for k, v in model.classifier.state_dict().items()}
    target = prune_target(model)
    pruning_utils.global_prune(target, 0.2)
    pruned = [name for name, m in target.named_modules() if pruning_utils.is_pruned(m)]
    assert len(pruned) == 52 and "conv1" not in pruned
    assert pruning_utils.sparsity(target)["remaining"] == pytest.approx(80.0, abs=0.001)
    head_after = model.classifier.state_dict()
    assert head_after.keys() == head_before.keys()
    assert all(torch.equal(head_before[k], head_after[k]) for k in head_before)
    assert not any(pruning_utils.is_pruned(m) for m in model.classifier.modules())


def test_pretrained_weights_load_into_the_backbone_by_torchvision_names(tmp_path):
    source = torchvision.models.resnet18(weights=None)
    path = tmp_path / "imagenet_weight.pt"
    torch.save(source.state_dict(), path)  # with fc, as the released files
    model = build_segmentation_model("deeplabv3plus_resnet18", num_classes=3, output_stride=8)
    report = load_pretrained(model.backbone, str(path), conv1=True, quiet=True)
    assert "conv1.weight" in report.loaded and not report.left_at_init
    for key, value in model.backbone.state_dict().items():
        assert torch.equal(value, source.state_dict()[key]), key


def test_imp_file_has_the_originals_keys_and_round_trips(tmp_path):
    torch.manual_seed(0)
    model = build_segmentation_model("deeplabv3plus_resnet18", num_classes=3)
    round0 = tmp_path / imp_files.imp_file_name(0)
    imp_files.save_imp_file(str(round0), model)
    saved = torch.load(round0, weights_only=True)
    assert set(saved) == {"first_conv", "backbone", "classifier"}
    assert set(saved["first_conv"]) == {"weight"}
    assert saved["backbone"].keys() == model.backbone.state_dict().keys()
    assert saved["classifier"].keys() == model.classifier.state_dict().keys()
    with pytest.raises(UserError, match="dense backbone"):
        imp_files.backbone_masks(str(round0))

    # train a little (changes conv1, backbone and head), prune, write round 1
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    pruning_utils.global_prune(model.backbone, 0.2)
    round1 = tmp_path / imp_files.imp_file_name(1)
    imp_files.save_imp_file(str(round1), model)
    saved1 = torch.load(round1, weights_only=True)
    assert "layer1.0.conv1.weight_orig" in saved1["backbone"] and "layer1.0.conv1.weight_mask" in saved1["backbone"]
    masks, meta = imp_files.backbone_masks(str(round1))
    assert len(masks) == 19 and meta["remaining"] == pytest.approx(80.0, abs=0.01)

    # round 1 as the original: a fresh model, the round-1 masks, round-0 conv1 and classifier
    fresh = build_segmentation_model("deeplabv3plus_resnet18", num_classes=3)
    pruning_utils.apply_mask(fresh.backbone, masks)
    imp_files.restore_parts(fresh, str(round0), backbone=True)
    for key, value in fresh.classifier.state_dict().items():
        assert torch.equal(value, saved["classifier"][key])
    assert torch.equal(fresh.backbone.conv1.weight, saved["first_conv"]["weight"])
    dense = pruning_utils.dense_state_dict(fresh.backbone)
    mask = masks["layer2.0.conv1.weight_mask"]
    assert torch.equal(dense["layer2.0.conv1.weight"], saved["backbone"]["layer2.0.conv1.weight"] * mask)


def test_imp_file_of_another_model_is_a_user_error(tmp_path):
    path = tmp_path / "seg_backbone_imp0.pth"
    imp_files.save_imp_file(str(path), build_segmentation_model("deeplabv3plus_resnet18", num_classes=3))
    other = build_segmentation_model("deeplabv3plus_resnet18", num_classes=21)
    with pytest.raises(UserError, match="classifier.*shape"):
        imp_files.restore_parts(other, str(path))
    separable = build_segmentation_model("deeplabv3plus_resnet18", num_classes=3, separable_conv=True)
    with pytest.raises(UserError, match="another model"):
        imp_files.restore_parts(separable, str(path))
    torch.save({"state_dict": {}}, tmp_path / "other.pth")
    with pytest.raises(UserError, match="not a segmentation IMP file"):
        imp_files.read_imp_file(str(tmp_path / "other.pth"))
