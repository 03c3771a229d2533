"""Tests for lth.models (the ResNets and pre-trained weight loading) and lth.checkpoint (atomic saves,
loading files with clear errors).

Every pre-trained file is made here, in the key layout of the released files, from a torchvision
``resnet50(weights=None)`` whose tensors are all replaced by random values (BN statistics and
``num_batches_tracked`` included, so that a tensor left at init can never pass for a loaded one).
Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import copy
import os

import pytest
import torch
import torch.nn as nn
import torchvision

import pruning_utils as pu
from lth.checkpoint import atomic_save, load_file
from lth.errors import UserError
from lth.models import LoadReport, build_model, load_pretrained

AT_INIT = ["conv1.weight", "fc.bias", "fc.weight"]  # sorted
RESNET50_KEYS = 320  # torchvision resnet50 state_dict entries, num_batches_tracked included


# ---------------------------------------------------------------------------------------------
# Fixtures and helpers
# ---------------------------------------------------------------------------------------------


pytestmark = pytest.mark.usefixtures("one_thread")


def randomized(state: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """Same keys, shapes and dtypes, new values everywhere."""
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for key, value in state.items():
        if value.is_floating_point():
            new = torch.randn(value.shape, generator=generator)
            out[key] = new.abs() + 0.5 if key.endswith("running_var") else new
        else:
            out[key] = torch.full_like(value, 4321 + seed)
    return out


def clone_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.detach().clone() for key, value in model.state_dict().items()}


def backbone(state) -> list[str]:
    return [key for key in state if key != "conv1.weight" and not key.startswith("fc.")]


@pytest.fixture(scope="module")
def tv_state() -> dict[str, torch.Tensor]:
    """A torchvision resnet50 state_dict (7x7 conv1, 1000-way fc) with random values."""
    state = randomized(torchvision.models.resnet50(weights=None).state_dict(), seed=1)
    assert len(state) == RESNET50_KEYS and state["fc.weight"].shape == (1000, 2048)
    return state


@pytest.fixture(scope="module")
def cifar50() -> nn.Module:
    """The model every file is loaded into; tests load into copies (``copy.deepcopy``)."""
    torch.manual_seed(11)
    return build_model("resnet50", 10, 3, "cifar")


@pytest.fixture(scope="module")
def init50(cifar50) -> dict[str, torch.Tensor]:
    return clone_state(cifar50)


@pytest.fixture(scope="module")
def imagenet_file(module_tmp, tv_state) -> str:
    path = module_tmp("weights") / "imagenet_weight.pt"
    torch.save(tv_state, path)
    return str(path)


def mlp_head(seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    shapes = {"fc.0.weight": (2048, 2048), "fc.0.bias": (2048,), "fc.2.weight": (128, 2048), "fc.2.bias": (128,)}
    return {key: torch.randn(shape, generator=generator) for key, shape in shapes.items()}


def load_quietly(model: nn.Module, path, **kwargs) -> LoadReport:
    return load_pretrained(model, str(path), quiet=True, **kwargs)


def assert_loaded(model: nn.Module, init: dict, report: LoadReport, expected: dict, path) -> None:
    """Every backbone tensor holds the file's value; conv1 and fc kept their init values."""
    state = pu.dense_state_dict(model) if any(k.endswith(pu.ORIG_SUFFIX) for k in model.state_dict()) \
        else model.state_dict()
    keys = backbone(init)
    assert len(keys) == RESNET50_KEYS - 3
    for key in keys:
        assert not torch.equal(init[key], expected[key]), f"{key}: file value equals init, test is vacuous"
        assert state[key].dtype == init[key].dtype, key
        assert torch.equal(state[key], expected[key]), key
    for key in AT_INIT:
        assert torch.equal(state[key], init[key]), key
    assert sorted(report.left_at_init) == AT_INIT
    assert report.loaded == sorted(keys)
    assert len(report.loaded) == RESNET50_KEYS - 3
    assert report.path == str(path)


def one_line(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


def assert_untouched(model: nn.Module, init: dict) -> None:
    state = model.state_dict()
    assert sorted(state) == sorted(init)
    for key, value in init.items():
        assert torch.equal(state[key], value), key


# ---------------------------------------------------------------------------------------------
# build_model
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_cifar_stem_is_3x3_stride_1_without_maxpool(arch):
    torch.manual_seed(0)
    model = build_model(arch, 10, 3, "cifar")
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert model.conv1.padding == (1, 1)
    assert model.conv1.in_channels == 3 and model.conv1.out_channels == 64 and model.conv1.bias is None
    assert isinstance(model.maxpool, nn.Identity)
    assert model.fc.out_features == 10
    seen = {}

    def record(module, inputs, output):
        seen["layer1"] = output.shape

    model.layer1.register_forward_hook(record)
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)
    assert seen["layer1"][-2:] == (32, 32)  # no downsampling before layer1


def test_parameter_names_are_torchvision_names():
    model = build_model("resnet50", 10, 3, "cifar")
    reference = torchvision.models.resnet50(weights=None, num_classes=10).state_dict()
    state = model.state_dict()
    assert list(state) == list(reference)
    assert {key: tuple(v.shape) for key, v in state.items() if key != "conv1.weight"} == \
        {key: tuple(v.shape) for key, v in reference.items() if key != "conv1.weight"}


@pytest.mark.parametrize("size", [28, 8])
def test_one_channel_cifar_stem(size):
    torch.manual_seed(0)
    model = build_model("resnet50", 10, 1, "cifar")
    assert model.conv1.weight.shape == (64, 1, 3, 3)
    with torch.no_grad():
        assert model(torch.randn(2, 1, size, size)).shape == (2, 10)


def test_resnet152_cifar_is_built_with_torchvision_names():
    model = build_model("resnet152", 10, 3, "cifar")  # no forward: ~5 s on 2 CPU cores
    assert model.conv1.weight.shape == (64, 3, 3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, nn.Identity)
    assert [len(getattr(model, f"layer{i}")) for i in range(1, 5)] == [3, 8, 36, 3]
    assert model.fc.weight.shape == (10, 2048)
    state = model.state_dict()
    assert "layer3.35.conv3.weight" in state and "layer3.36.conv1.weight" not in state
    assert sum(isinstance(m, nn.Conv2d) for m in model.modules()) == 155
    assert len(pu.prunable_convs(model)) == 154


def test_imagenet_stem_keeps_7x7_and_maxpool():
    model = build_model("resnet18", 10, 3, "imagenet")
    assert model.conv1.kernel_size == (7, 7) and model.conv1.stride == (2, 2)
    assert isinstance(model.maxpool, nn.MaxPool2d)
    gray = build_model("resnet18", 10, 1, "imagenet")
    assert gray.conv1.weight.shape == (64, 1, 7, 7) and gray.conv1.stride == (2, 2)


def test_unknown_arch_or_stem_is_a_user_error():
    with pytest.raises(UserError) as excinfo:
        build_model("resnet34", 10)
    assert "resnet34" in one_line(excinfo) and "resnet50" in str(excinfo.value)
    with pytest.raises(UserError, match="stem"):
        build_model("resnet18", 10, 3, "tiny")


# ---------------------------------------------------------------------------------------------
# load_pretrained: every released format
# ---------------------------------------------------------------------------------------------


def test_load_imagenet_weight_pt(cifar50, init50, imagenet_file, tv_state, capsys):
    model = copy.deepcopy(cifar50)
    report = load_pretrained(model, imagenet_file)
    assert_loaded(model, init50, report, tv_state, imagenet_file)
    err = capsys.readouterr().err
    assert f"loaded {RESNET50_KEYS - 3} tensors from {imagenet_file}" in err
    assert "3 model tensors left at init" in err


def test_load_moco_pt_encoder_q_only(tmp_path, cifar50, init50, tv_state):
    state = {key: value for key, value in tv_state.items() if not key.startswith("fc.")}
    state.update(mlp_head(seed=2))
    path = tmp_path / "moco.pt"
    torch.save(state, path)
    model = copy.deepcopy(cifar50)
    report = load_quietly(model, path)
    assert_loaded(model, init50, report, tv_state, path)


def test_load_moco_v2_checkpoint_uses_encoder_q_never_encoder_k(tmp_path, cifar50, init50, tv_state):
    query = {key: value for key, value in tv_state.items() if not key.startswith("fc.")}
    query.update(mlp_head(seed=2))
    momentum = {key: value + 1 for key, value in query.items()}  # different values everywhere
    state = {"module.encoder_q." + key: value for key, value in query.items()}
    state.update({"module.encoder_k." + key: value for key, value in momentum.items()})
    state["module.queue"] = torch.randn(128, 16)
    state["module.queue_ptr"] = torch.zeros(1, dtype=torch.long)
    optimizer = {"state": {}, "param_groups": [{"lr": 0.03, "momentum": 0.9, "weight_decay": 1e-4,
                                                "params": list(range(len(query)))}]}
    path = tmp_path / "moco_v2_800ep_pretrain.pth.tar"
    torch.save({"epoch": 800, "arch": "resnet50", "state_dict": state, "optimizer": optimizer}, path)

    model = copy.deepcopy(cifar50)
    report = load_quietly(model, path)
    assert_loaded(model, init50, report, tv_state, path)
    assert not any(torch.equal(model.state_dict()[key], momentum[key]) for key in backbone(init50))


def test_load_simclr_weight_pt(tmp_path, cifar50, init50, tv_state):
    path = tmp_path / "simclr_weight.pt"
    torch.save({"state_dict": tv_state}, path)
    model = copy.deepcopy(cifar50)
    report = load_quietly(model, path)
    assert_loaded(model, init50, report, tv_state, path)
    again = copy.deepcopy(cifar50)
    assert_loaded(again, init50, load_quietly(again, path, dict_key="state_dict"), tv_state, path)


def test_load_imp_checkpoint_of_this_toolkit(tmp_path, cifar50, init50):
    source = copy.deepcopy(cifar50)
    source.load_state_dict(randomized(init50, seed=3))
    dense = clone_state(source)
    generator = torch.Generator().manual_seed(4)
    masks = {name + pu.MASK_SUFFIX: (torch.rand(m.weight.shape, generator=generator) < 0.3).float()
             for name, m in pu.prunable_convs(source)}
    pu.apply_mask(source, masks)
    path = tmp_path / "2checkpoint.pth.tar"
    torch.save({"format": "lth-imp", "state": 2, "state_dict": source.state_dict(), "arch": "resnet50"}, path)

    model = copy.deepcopy(cifar50)
    report = load_quietly(model, path)
    # weight_orig (the dense values) moves to weight; the mask does not come along
    assert_loaded(model, init50, report, dense, path)
    assert not any(key.endswith((pu.MASK_SUFFIX, pu.ORIG_SUFFIX)) for key in model.state_dict())

    # same CIFAR stem and 10 classes: with both flags everything loads
    everything = copy.deepcopy(cifar50)
    report = load_quietly(everything, path, fc=True, conv1=True)
    assert report.left_at_init == [] and len(report.loaded) == RESNET50_KEYS
    for key, value in dense.items():
        assert torch.equal(everything.state_dict()[key], value), key


def test_load_into_a_pruned_model_writes_weight_orig(cifar50, init50, imagenet_file, tv_state):
    model = copy.deepcopy(cifar50)
    generator = torch.Generator().manual_seed(5)
    masks = {name + pu.MASK_SUFFIX: (torch.rand(m.weight.shape, generator=generator) < 0.5).float()
             for name, m in pu.prunable_convs(model)}
    pu.apply_mask(model, masks)
    report = load_quietly(model, imagenet_file)
    for name, module in pu.prunable_convs(model):
        assert torch.equal(module.weight_orig, tv_state[name + ".weight"]), name
        assert torch.equal(module.weight_mask, masks[name + pu.MASK_SUFFIX]), name
    effective = dict(tv_state)
    for name, _ in pu.prunable_convs(model):
        effective[name + ".weight"] = tv_state[name + ".weight"] * masks[name + pu.MASK_SUFFIX]
    assert_loaded(model, init50, report, effective, imagenet_file)


# ---------------------------------------------------------------------------------------------
# load_pretrained: errors
# ---------------------------------------------------------------------------------------------


def test_fc_true_with_1000_way_fc_is_a_user_error(cifar50, init50, imagenet_file):
    model = copy.deepcopy(cifar50)
    with pytest.raises(UserError) as excinfo:
        load_quietly(model, imagenet_file, fc=True)
    message = one_line(excinfo)
    assert "'fc.weight'" in message and "(1000, 2048)" in message and "(10, 2048)" in message
    assert_untouched(model, init50)  # checked before anything was copied


def test_resnet18_weights_into_resnet50_is_a_user_error(tmp_path, cifar50, init50):
    path = tmp_path / "resnet18.pt"
    torch.save(randomized(torchvision.models.resnet18(weights=None).state_dict(), seed=6), path)
    model = copy.deepcopy(cifar50)
    with pytest.raises(UserError) as excinfo:
        load_quietly(model, path)
    message = one_line(excinfo)
    assert "layer1.0.conv1.weight" in message and "(64, 64, 3, 3)" in message and "(64, 64, 1, 1)" in message
    assert_untouched(model, init50)


def test_moco_head_with_fc_true_is_a_user_error(tmp_path, cifar50, tv_state):
    state = {key: value for key, value in tv_state.items() if not key.startswith("fc.")}
    state.update(mlp_head(seed=2))
    path = tmp_path / "moco.pt"
    torch.save(state, path)
    with pytest.raises(UserError, match="fc.0.weight"):
        load_quietly(copy.deepcopy(cifar50), path, fc=True)


def test_unknown_dict_key_is_a_user_error_listing_the_keys(tmp_path, cifar50):
    path = tmp_path / "small.pth.tar"
    torch.save({"epoch": 3, "arch": "resnet50", "state_dict": {"bn1.weight": torch.ones(64)}}, path)
    with pytest.raises(UserError) as excinfo:
        load_quietly(copy.deepcopy(cifar50), path, dict_key="nope")
    message = one_line(excinfo)
    assert "'nope'" in message and "epoch" in message and "arch" in message and "state_dict" in message


def test_dict_key_naming_a_non_dict_entry_is_a_user_error(tmp_path, cifar50):
    path = tmp_path / "small.pth.tar"
    torch.save({"epoch": 3, "arch": "resnet50", "state_dict": {"bn1.weight": torch.ones(64)}}, path)
    with pytest.raises(UserError) as excinfo:
        load_quietly(copy.deepcopy(cifar50), path, dict_key="epoch")
    assert str(path) in one_line(excinfo)


def test_dict_key_none_string_uses_a_plain_state_dict(cifar50, init50, imagenet_file, tv_state):
    model = copy.deepcopy(cifar50)
    report = load_quietly(model, imagenet_file, dict_key="None")
    assert_loaded(model, init50, report, tv_state, imagenet_file)


@pytest.mark.parametrize("content", [torch.zeros(3), [torch.zeros(3)], 7])
def test_file_that_is_not_a_dict_is_a_user_error(tmp_path, cifar50, content):
    path = tmp_path / "weird.pt"
    torch.save(content, path)
    with pytest.raises(UserError) as excinfo:
        load_quietly(copy.deepcopy(cifar50), path)
    assert str(path) in one_line(excinfo)


def test_dict_without_tensors_is_a_user_error(tmp_path, cifar50):
    path = tmp_path / "meta.pt"
    torch.save({"epoch": 3, "arch": "resnet50"}, path)
    with pytest.raises(UserError, match="no weight tensors"):
        load_quietly(copy.deepcopy(cifar50), path)


# ---------------------------------------------------------------------------------------------
# lth.checkpoint
# ---------------------------------------------------------------------------------------------


def test_atomic_save_writes_and_replaces(tmp_path):
    path = tmp_path / "sub" / "ckpt.pt"
    atomic_save({"a": torch.arange(4)}, str(path))
    assert torch.equal(torch.load(path)["a"], torch.arange(4))
    atomic_save({"a": torch.arange(6)}, str(path))
    assert torch.equal(torch.load(path)["a"], torch.arange(6))
    assert os.listdir(path.parent) == ["ckpt.pt"]


@pytest.mark.parametrize("error, raised", [(OSError(28, "No space left on device"), UserError),
                                           (KeyboardInterrupt(), KeyboardInterrupt)])
def test_atomic_save_keeps_the_old_file_when_the_save_fails(tmp_path, monkeypatch, error, raised):
    """A failed write leaves the old file; a full disk is one line (UserError), an interrupt stays one."""
    path = tmp_path / "ckpt.pt"
    atomic_save({"round": torch.tensor(1)}, str(path))
    before = path.read_bytes()
    real_save = torch.save

    def failing_save(obj, handle, *args, **kwargs):
        handle.write(b"PK\x03\x04 half a checkpoint")
        raise error

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(raised):
        atomic_save({"round": torch.tensor(2)}, str(path))
    monkeypatch.setattr(torch, "save", real_save)

    assert path.read_bytes() == before
    assert int(load_file(str(path))["round"]) == 1
    assert os.listdir(tmp_path) == ["ckpt.pt"]  # no temporary file left behind


def test_load_file_missing_path_is_a_user_error(tmp_path):
    path = tmp_path / "nope.pt"
    with pytest.raises(UserError) as excinfo:
        load_file(str(path), "pre-trained weight")
    message = one_line(excinfo)
    assert str(path) in message and "does not exist" in message and "pre-trained weight" in message
    with pytest.raises(UserError):
        load_file("")


def test_load_file_empty_file_is_a_user_error(tmp_path):
    path = tmp_path / "empty.pt"
    path.write_bytes(b"")
    with pytest.raises(UserError) as excinfo:
        load_file(str(path))
    assert str(path) in one_line(excinfo) and "empty" in str(excinfo.value)


@pytest.mark.parametrize("zipped", [True, False], ids=["zip", "legacy"])
def test_load_file_truncated_file_is_a_user_error(tmp_path, zipped):
    path = tmp_path / "ckpt.pth.tar"
    state = {"state": 3, "state_dict": randomized(torchvision.models.resnet18(weights=None).state_dict(), 7)}
    torch.save(state, path, _use_new_zipfile_serialization=zipped)
    assert load_file(str(path))["state"] == 3
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError) as excinfo:
        load_file(str(path))
    assert str(path) in one_line(excinfo)


@pytest.mark.parametrize("text", ["hello world\n", "epoch,acc\n1,0.5\n", "README\n", '{"a": 1}\n', "lr: 0.1\n"],
                         ids=["hello", "csv", "readme", "json", "yaml"])
def test_load_file_text_file_is_a_user_error(tmp_path, text):
    path = tmp_path / "notes.txt"
    path.write_text(text)
    with pytest.raises(UserError) as excinfo:
        load_file(str(path))
    assert str(path) in one_line(excinfo)


def test_load_file_reads_saved_args_namespace_safely(tmp_path, capsys):
    # argparse.Namespace is on the safe list (tests/test_hardening.py covers what is refused).
    path = tmp_path / "with_args.pth.tar"
    torch.save({"args": argparse.Namespace(lr=0.1), "state_dict": {"w": torch.ones(2)}}, path)
    obj = load_file(str(path))
    assert obj["args"].lr == 0.1 and torch.equal(obj["state_dict"]["w"], torch.ones(2))
    assert capsys.readouterr().err == ""
