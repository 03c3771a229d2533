"""Tests for pruning_utils: which convs are pruned, global L1/random pruning, masks, rewinding,
tickets and every mask source a user can hand to ``read_masks``.

The expensive step is ``global_prune`` (1-3 s per round on 2 CPU cores), so the pruned models are
module-scoped fixtures that no test mutates; a test that needs to change a model works on a copy.
ResNet-50 is built only where the test is about it (the 52 convs, the ticket file size).
"""

from __future__ import annotations

import copy
import math
import os
from types import SimpleNamespace

import pytest
import torch

import pruning_utils as pu
from lth.errors import UserError
from lth.models import build_model

RATE = 0.2
ROUNDS = 3
MASK = pu.MASK_SUFFIX


# ---------------------------------------------------------------------------------------------
# Helpers and shared pruned models
# ---------------------------------------------------------------------------------------------


def resnet18(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model("resnet18", 10, 3, "cifar")


def clone_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.detach().clone() for key, value in model.state_dict().items()}


def kept(masks: dict[str, torch.Tensor]) -> int:
    return int(sum(mask.sum().item() for mask in masks.values()))


def assert_masks_equal(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert list(sorted(actual)) == list(sorted(expected))
    for key in expected:
        assert actual[key].shape == expected[key].shape, key
        assert torch.equal(actual[key].float(), expected[key].float()), key


def pruned_modules(model: torch.nn.Module) -> list[str]:
    return [name for name, module in model.named_modules() if pu.is_pruned(module)]


def random_masks(model: torch.nn.Module, seed: int, keep: float = 0.6) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {name + MASK: (torch.rand(module.weight.shape, generator=generator) < keep).float()
            for name, module in pu.prunable_convs(model)}


def one_line_user_error(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def l1_run():
    """A CIFAR resnet18 pruned ``ROUNDS`` times by global L1; masks and sparsity after every round."""
    model = resnet18(seed=0)
    init = clone_state(model)
    masks = [pu.current_masks(model)]  # round 0: all ones
    reports = [pu.sparsity(model)]
    for _ in range(ROUNDS):
        pu.global_prune(model, RATE)
        masks.append(pu.extract_mask(model))
        reports.append(pu.sparsity(model))
    return SimpleNamespace(model=model, init=init, masks=masks, reports=reports)


@pytest.fixture(scope="module")
def dense18():
    """An unpruned resnet18 that tests only read; ``fresh(dense18)`` gives a copy to prune."""
    return resnet18(seed=9)


def fresh(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of an unpruned model (``copy.deepcopy`` refuses pruned ones)."""
    return copy.deepcopy(model)


def copy_pruned(model: torch.nn.Module, dense: torch.nn.Module) -> torch.nn.Module:
    """A pruned copy of ``model``: same ``weight_orig`` values, masks and buffers."""
    weights = {}
    for key, value in model.state_dict().items():
        if key.endswith(MASK):
            continue
        if key.endswith(pu.ORIG_SUFFIX):
            key = key[: -len(pu.ORIG_SUFFIX)] + ".weight"
        weights[key] = value.detach().clone()
    target = fresh(dense)
    target.load_state_dict(weights, strict=True)
    masks = pu.extract_mask(model)
    pu.apply_mask(target, masks, conv1="conv1.weight_mask" in masks)
    assert_masks_equal(pu.extract_mask(target), masks)
    return target


def perturb(model: torch.nn.Module, generator: torch.Generator) -> None:
    """What training does: every parameter (``weight_orig`` included) and BN statistic moves."""
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=generator))
        for name, buffer in model.named_buffers():
            if name.endswith("num_batches_tracked"):
                buffer.add_(17)
            elif buffer.is_floating_point() and not name.endswith(MASK):
                buffer.mul_(1.5).add_(0.25)


@pytest.fixture(scope="module")
def conv1_run():
    """A resnet18 trained (perturbed), pruned once with ``conv1=True``, then trained again."""
    model = resnet18(seed=7)
    init = clone_state(model)
    generator = torch.Generator().manual_seed(0)
    perturb(model, generator)
    before_prune = clone_state(model)
    pu.global_prune(model, RATE, conv1=True)
    after_prune = clone_state(model)
    perturb(model, generator)
    return SimpleNamespace(model=model, init=init, before_prune=before_prune, after_prune=after_prune)


@pytest.fixture(scope="module")
def random_run():
    """The same initial resnet18 as ``l1_run``, pruned twice at random with fixed generator seeds."""
    model = resnet18(seed=0)
    init = clone_state(model)
    masks = [pu.current_masks(model)]
    rng_untouched = []
    for round_index in range(2):
        torch.manual_seed(1000 + round_index)
        before = torch.get_rng_state()
        pu.global_prune(model, RATE, random=True, generator_seed=100 + round_index)
        rng_untouched.append(torch.equal(torch.get_rng_state(), before))
        masks.append(pu.extract_mask(model))
    return SimpleNamespace(model=model, init=init, masks=masks, rng_untouched=rng_untouched)


# ---------------------------------------------------------------------------------------------
# Which convs are prunable
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stem", ["cifar", "imagenet"])
def test_resnet50_has_52_prunable_convs_and_53_with_conv1(stem):
    model = build_model("resnet50", 10, 3, stem)
    names = [name for name, _ in pu.prunable_convs(model)]
    assert len(names) == 52
    assert "conv1" not in names
    assert sum(name.endswith("downsample.0") for name in names) == 4
    assert sum(name.split(".")[-1] in ("conv1", "conv2", "conv3") for name in names) == 48
    assert all(name.startswith("layer") for name in names)
    assert pu.stem_conv_name(model) == "conv1"

    with_stem = [name for name, _ in pu.prunable_convs(model, conv1=True)]
    assert len(with_stem) == 53
    assert with_stem[0] == "conv1" and with_stem[1:] == names


def test_check_rate_accepts_open_interval():
    assert pu.check_rate(0.2) == 0.2


@pytest.mark.parametrize("rate", [0, 1, -0.1, 1.5, 0.0, 1.0, math.nan])
def test_check_rate_rejects_rates_outside_open_unit_interval(rate):
    with pytest.raises(UserError, match="pruning rate"):
        pu.check_rate(rate)


def test_global_prune_rejects_bad_rate_before_touching_the_model(dense18):
    model = fresh(dense18)
    with pytest.raises(UserError):
        pu.global_prune(model, 1.0)
    assert pruned_modules(model) == []


# ---------------------------------------------------------------------------------------------
# Global L1 pruning
# ---------------------------------------------------------------------------------------------


def test_each_round_keeps_exactly_prev_minus_rounded_rate(l1_run):
    total = sum(module.weight.numel() for _, module in pu.prunable_convs(l1_run.model))
    assert kept(l1_run.masks[0]) == total
    for k in range(1, ROUNDS + 1):
        prev = kept(l1_run.masks[k - 1])
        assert kept(l1_run.masks[k]) == prev - round(RATE * prev), f"round {k}"
        report = l1_run.reports[k]
        assert report["kept"] == kept(l1_run.masks[k])
        assert report["total"] == total
        assert abs(report["remaining"] - 100.0 * 0.8 ** k) <= 1e-3, f"round {k}"
    assert l1_run.reports[0]["remaining"] == 100.0


def test_masks_are_binary_and_cover_every_prunable_conv(l1_run):
    names = [name + MASK for name, _ in pu.prunable_convs(l1_run.model)]
    for masks in (l1_run.masks[1], l1_run.masks[ROUNDS]):
        assert sorted(masks) == sorted(names)
        for key, mask in masks.items():
            assert bool(((mask == 0) | (mask == 1)).all()), key


def test_masks_are_nested_across_rounds(l1_run):
    for k in range(1, ROUNDS):
        for key, mask in l1_run.masks[k].items():
            newer = l1_run.masks[k + 1][key]
            assert not bool((newer > mask).any()), f"{key} revived a weight in round {k + 1}"
        assert kept(l1_run.masks[k + 1]) < kept(l1_run.masks[k])


def test_l1_prunes_the_globally_smallest_magnitudes(l1_run):
    modules = dict(l1_run.model.named_modules())
    for k in range(1, ROUNDS + 1):
        largest_pruned, smallest_kept = -1.0, math.inf
        for key, mask in l1_run.masks[k].items():
            magnitude = modules[key[: -len(MASK)]].weight_orig.detach().abs()
            largest_pruned = max(largest_pruned, magnitude.masked_fill(mask.bool(), -1.0).max().item())
            smallest_kept = min(smallest_kept, magnitude.masked_fill(~mask.bool(), math.inf).min().item())
        assert 0.0 <= largest_pruned <= smallest_kept, f"round {k}"
    # global, not layer-wise: the layers end up at different sparsities
    layers = l1_run.reports[ROUNDS]["layers"].values()
    assert max(layers) - min(layers) > 5.0


def test_pruning_leaves_conv1_fc_bn_and_values_untouched(l1_run):
    model, init = l1_run.model, l1_run.init
    assert not hasattr(model.conv1, "weight_mask") and not hasattr(model.fc, "weight_mask")
    state = model.state_dict()
    assert "conv1.weight_mask" not in state and "fc.weight_mask" not in state
    assert not any(key.startswith(("fc.", "bn1.")) and key.endswith(("_mask", "_orig")) for key in state)
    for key, value in state.items():
        if key.endswith(MASK):
            continue
        if key.endswith(pu.ORIG_SUFFIX):
            assert torch.equal(value, init[key[: -len(pu.ORIG_SUFFIX)] + ".weight"]), key
        else:
            assert torch.equal(value, init[key]), key  # conv1, fc, every BN parameter and buffer
    assert sorted(pruned_modules(model)) == sorted(name for name, _ in pu.prunable_convs(model))


def test_conv1_true_prunes_the_stem_too(conv1_run):
    model, before, after = conv1_run.model, conv1_run.before_prune, conv1_run.after_prune
    assert hasattr(model.conv1, "weight_mask")
    assert not hasattr(model.fc, "weight_mask") and "fc.weight_mask" not in after
    assert torch.equal(after["fc.weight"], before["fc.weight"])
    assert torch.equal(after["conv1.weight_orig"], before["conv1.weight"])
    masks = pu.extract_mask(after)
    assert "conv1.weight_mask" in masks and len(masks) == 20
    assert 0 < int(masks["conv1.weight_mask"].sum()) < masks["conv1.weight_mask"].numel()
    total = sum(module.weight.numel() for _, module in pu.prunable_convs(model, conv1=True))
    assert kept(masks) == total - round(RATE * total)
    report = pu.sparsity(model)  # a pruned stem is counted without being asked
    assert report["total"] == total and report["kept"] == kept(masks)


# ---------------------------------------------------------------------------------------------
# Random pruning
# ---------------------------------------------------------------------------------------------


def test_random_pruning_removes_the_same_count_as_l1(l1_run, random_run):
    for k in range(1, len(random_run.masks)):
        assert kept(random_run.masks[k]) == kept(l1_run.masks[k]), f"round {k}"
        for key, mask in random_run.masks[k - 1].items():
            assert not bool((random_run.masks[k][key] > mask).any()), key
    # same initial weights, so a magnitude criterion would have produced the L1 mask
    assert all(torch.equal(random_run.init[key], l1_run.init[key]) for key in l1_run.init)
    assert any(not torch.equal(random_run.masks[1][key], l1_run.masks[1][key]) for key in l1_run.masks[1])


def test_random_pruning_leaves_global_rng_state_alone(random_run):
    assert random_run.rng_untouched == [True, True]


def test_same_generator_seed_gives_identical_mask_on_another_model(random_run, dense18):
    other = fresh(dense18)  # different weights: random pruning must not look at them
    torch.manual_seed(12345)  # and a different global RNG state
    pu.global_prune(other, RATE, random=True, generator_seed=100)
    assert_masks_equal(pu.extract_mask(other), random_run.masks[1])


def test_different_generator_seeds_give_different_masks(random_run, dense18):
    other = fresh(dense18)
    pu.global_prune(other, RATE, random=True, generator_seed=555)
    masks = pu.extract_mask(other)
    assert kept(masks) == kept(random_run.masks[1])
    assert any(not torch.equal(masks[key], random_run.masks[1][key]) for key in masks)


# ---------------------------------------------------------------------------------------------
# Reverse mask, dense weights, rewind
# ---------------------------------------------------------------------------------------------


def test_reverse_mask_is_the_exact_complement(l1_run):
    masks = l1_run.masks[ROUNDS]
    reverse = pu.reverse_mask(masks)
    assert sorted(reverse) == sorted(masks)
    for key, mask in masks.items():
        assert torch.equal(mask + reverse[key], torch.ones_like(mask)), key
        assert not bool((mask * reverse[key]).any()), key
    assert kept(reverse) == sum(m.numel() for m in masks.values()) - kept(masks)


def test_dense_state_dict_is_weight_orig_times_mask(l1_run, dense18):
    model = l1_run.model
    dense = pu.dense_state_dict(model)
    assert not any(key.endswith((MASK, pu.ORIG_SUFFIX)) for key in dense)
    assert sorted(dense) == sorted(l1_run.init)
    for name, module in pu.prunable_convs(model):
        expected = module.weight_orig * module.weight_mask
        assert torch.equal(dense[name + ".weight"], expected), name
        assert torch.equal(dense[name + ".weight"], module.weight), name
    assert torch.equal(dense["fc.weight"], model.fc.weight)
    # copies, and the same result from a state_dict
    dense["layer1.0.conv1.weight"].add_(1.0)
    assert torch.equal(pu.dense_state_dict(model.state_dict())["layer1.0.conv1.weight"],
                       model.layer1[0].conv1.weight)
    fresh(dense18).load_state_dict(pu.dense_state_dict(model), strict=True)


def assert_rewound(model: torch.nn.Module, init: dict, masks: dict) -> None:
    assert_masks_equal(pu.extract_mask(model), masks)
    state = model.state_dict()
    pruned = {name for name, module in model.named_modules() if pu.is_pruned(module)}
    assert pruned == {key[: -len(MASK)] for key in masks}
    for name in pruned:
        module = model.get_submodule(name)
        original = init[name + ".weight"]
        assert torch.equal(module.weight_orig, original), name
        mask = module.weight_mask.bool()
        assert torch.equal(module.weight[mask], original[mask]), name
        assert not bool(module.weight[~mask].any()), name
    for key, value in init.items():
        if key.endswith(".weight") and key[: -len(".weight")] in pruned:
            continue
        assert torch.equal(state[key], value), key  # fc, BN parameters and buffers (conv1 if dense)


def test_rewind_restores_init_bit_for_bit_and_keeps_masks(l1_run, dense18):
    model = copy_pruned(l1_run.model, dense18)  # pruned 3 times
    generator = torch.Generator().manual_seed(1)
    perturb(model, generator)  # train round 3
    assert not torch.equal(model.fc.weight, l1_run.init["fc.weight"])
    masks = pu.extract_mask(model)
    assert_masks_equal(masks, l1_run.masks[ROUNDS])

    pu.rewind(model, l1_run.init)

    assert_rewound(model, l1_run.init, masks)
    assert not hasattr(model.conv1, "weight_mask")


def test_rewind_after_training_and_pruning_keeps_a_stem_mask(conv1_run, dense18):
    model = copy_pruned(conv1_run.model, dense18)  # trained, pruned with conv1=True, trained again
    assert torch.equal(model.fc.weight, conv1_run.model.fc.weight)
    masks = pu.extract_mask(model)
    assert "conv1.weight_mask" in masks

    pu.rewind(model, conv1_run.init)  # conv1 not passed: the stem mask must survive anyway

    assert_rewound(model, conv1_run.init, masks)


# ---------------------------------------------------------------------------------------------
# apply_mask / fit_masks
# ---------------------------------------------------------------------------------------------


def test_apply_mask_from_another_model_reproduces_it(l1_run, dense18):
    masks = pu.extract_mask(l1_run.model)
    target = fresh(dense18)
    before = clone_state(target)
    pu.apply_mask(target, masks)
    assert_masks_equal(pu.extract_mask(target), masks)
    assert pu.sparsity(target) == pu.sparsity(l1_run.model)
    for name, module in pu.prunable_convs(target):
        assert torch.equal(module.weight_orig, before[name + ".weight"]), name
        assert torch.equal(module.weight, before[name + ".weight"] * masks[name + MASK]), name


def test_apply_mask_replaces_an_existing_mask(l1_run, dense18):
    target = fresh(dense18)
    first = l1_run.masks[ROUNDS]
    second = pu.reverse_mask(l1_run.masks[1])  # keeps only weights that `first` removed
    pu.apply_mask(target, first)
    pu.apply_mask(target, second)
    assert_masks_equal(pu.extract_mask(target), second)  # not the (empty) intersection
    for name, module in pu.prunable_convs(target):
        hooks = [hook for hook in module._forward_pre_hooks.values()
                 if isinstance(hook, torch.nn.utils.prune.BasePruningMethod)]
        assert len(hooks) == 1 and not isinstance(hooks[0], torch.nn.utils.prune.PruningContainer), name


def test_apply_mask_accepts_prefixed_keys(l1_run, dense18):
    masks = {"module." + key: value for key, value in l1_run.masks[2].items()}
    target = fresh(dense18)
    pu.apply_mask(target, masks)
    assert_masks_equal(pu.extract_mask(target), l1_run.masks[2])


def test_resnet18_mask_on_resnet50_is_a_user_error(l1_run):
    model = build_model("resnet50", 10, 3, "cifar")
    with pytest.raises(UserError) as excinfo:
        pu.apply_mask(model, l1_run.masks[1])
    message = one_line_user_error(excinfo)
    assert "'layer1.0.conv1.weight_mask'" in message
    assert "(64, 64, 3, 3)" in message and "(64, 64, 1, 1)" in message
    assert pruned_modules(model) == []


def test_mask_with_one_wrong_shape_is_a_user_error_and_prunes_nothing(l1_run, dense18):
    masks = dict(l1_run.masks[1])
    masks["layer3.0.conv2.weight_mask"] = torch.ones(256, 256, 1, 1)
    model = fresh(dense18)
    with pytest.raises(UserError) as excinfo:
        pu.apply_mask(model, masks)
    message = one_line_user_error(excinfo)
    assert "'layer3.0.conv2.weight_mask'" in message
    assert "(256, 256, 1, 1)" in message and "(256, 256, 3, 3)" in message
    assert pruned_modules(model) == []  # checked before any layer was pruned


def test_mask_with_a_missing_layer_is_a_user_error(l1_run, dense18):
    masks = dict(l1_run.masks[1])
    del masks["layer2.1.conv1.weight_mask"]
    model = fresh(dense18)
    with pytest.raises(UserError) as excinfo:
        pu.fit_masks(model, masks)
    message = one_line_user_error(excinfo)
    assert "'layer2.1.conv1.weight_mask'" in message and "(128, 128, 3, 3)" in message
    with pytest.raises(UserError):
        pu.apply_mask(model, masks)
    assert pruned_modules(model) == []


def test_mask_for_a_layer_that_is_not_a_prunable_conv_is_a_user_error(l1_run, dense18):
    masks = dict(l1_run.masks[1])
    masks["fc.weight_mask"] = torch.ones(10, 512)
    with pytest.raises(UserError, match="'fc.weight_mask'"):
        pu.fit_masks(dense18, masks)


def test_stem_mask_is_dropped_unless_conv1(l1_run, dense18):
    stem_mask = (torch.rand(64, 3, 3, 3, generator=torch.Generator().manual_seed(1)) < 0.5).float()
    masks = {"conv1.weight_mask": stem_mask, **l1_run.masks[1]}

    fitted = pu.fit_masks(dense18, masks)
    assert "conv1.weight_mask" not in fitted and len(fitted) == len(l1_run.masks[1])
    model = fresh(dense18)
    pu.apply_mask(model, masks)
    assert not hasattr(model.conv1, "weight_mask")
    assert_masks_equal(pu.extract_mask(model), l1_run.masks[1])

    model = fresh(dense18)
    pu.apply_mask(model, masks, conv1=True)
    assert torch.equal(model.conv1.weight_mask, stem_mask)
    assert_masks_equal(pu.extract_mask(model), masks)

    # an ImageNet-stem (7x7) mask moves to a CIFAR model when the stem is not asked for ...
    imagenet_masks = {"conv1.weight_mask": torch.ones(64, 3, 7, 7), **l1_run.masks[1]}
    assert "conv1.weight_mask" not in pu.fit_masks(dense18, imagenet_masks)
    # ... but not when it is
    with pytest.raises(UserError) as excinfo:
        pu.fit_masks(dense18, imagenet_masks, conv1=True)
    message = one_line_user_error(excinfo)
    assert "conv1.weight_mask" in message and "(64, 3, 7, 7)" in message and "(64, 3, 3, 3)" in message
    # and conv1=True with no stem mask at all names the missing stem
    with pytest.raises(UserError, match="conv1.weight_mask"):
        pu.fit_masks(dense18, l1_run.masks[1], conv1=True)


# ---------------------------------------------------------------------------------------------
# Mask sources: tickets, checkpoints, plain dicts, MoCo
# ---------------------------------------------------------------------------------------------


def test_ticket_round_trip_is_exact_and_much_smaller_than_float_masks(tmp_path):
    model = build_model("resnet50", 10, 3, "cifar")
    masks = random_masks(model, seed=3)
    ticket = tmp_path / "ticket_04.pt"
    floats = tmp_path / "mask-4.pt"
    pu.save_ticket(str(ticket), masks, arch="resnet50", round=4, dataset="cifar10")
    torch.save(masks, floats)

    read, meta = pu.read_masks(str(ticket))
    assert_masks_equal(read, masks)
    assert all(mask.dtype == torch.float32 for mask in read.values())
    assert meta["arch"] == "resnet50" and meta["round"] == 4 and meta["dataset"] == "cifar10"
    assert meta["remaining"] == pytest.approx(pu.mask_remaining(masks), abs=1e-12)
    assert meta["remaining"] == pytest.approx(100.0 * kept(masks) / sum(m.numel() for m in masks.values()))
    assert 55.0 < meta["remaining"] < 65.0
    assert os.path.getsize(ticket) * 30 <= os.path.getsize(floats), \
        (os.path.getsize(ticket), os.path.getsize(floats))
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp")] == []


def test_ticket_of_a_pruned_model_applies_back(tmp_path, l1_run, dense18):
    path = tmp_path / "ticket_03.pt"
    pu.save_ticket(str(path), pu.current_masks(l1_run.model), arch="resnet18", round=ROUNDS)
    masks, meta = pu.read_masks(str(path))
    assert_masks_equal(masks, l1_run.masks[ROUNDS])
    assert meta["remaining"] == pytest.approx(l1_run.reports[ROUNDS]["remaining"], abs=1e-9)
    model = fresh(dense18)
    pu.apply_mask(model, masks)
    assert_masks_equal(pu.extract_mask(model), l1_run.masks[ROUNDS])


def test_read_masks_from_original_checkpoint(tmp_path, l1_run):
    path = tmp_path / "3model_SA_best.pth.tar"
    state = l1_run.model.state_dict()
    assert any(key.endswith(pu.ORIG_SUFFIX) for key in state)
    torch.save({"state": 3, "state_dict": state, "best_sa": 91.5}, path)
    masks, meta = pu.read_masks(str(path))
    assert_masks_equal(masks, l1_run.masks[ROUNDS])
    assert meta["state"] == 3 and meta["source"] == str(path)


def test_read_masks_from_plain_mask_dict(tmp_path, l1_run):
    path = tmp_path / "mask-2.pt"
    torch.save(l1_run.masks[2], path)
    masks, _ = pu.read_masks(str(path))
    assert_masks_equal(masks, l1_run.masks[2])
    # an already loaded object works too
    assert_masks_equal(pu.read_masks(dict(l1_run.masks[2]))[0], l1_run.masks[2])


def test_read_masks_strips_module_prefix(tmp_path, l1_run):
    path = tmp_path / "mask-ddp.pt"
    torch.save({"module." + key: value for key, value in l1_run.masks[2].items()}, path)
    masks, _ = pu.read_masks(str(path))
    assert_masks_equal(masks, l1_run.masks[2])


def test_read_masks_from_moco_checkpoint_ignores_encoder_k_and_queue(tmp_path, l1_run):
    query = l1_run.masks[2]
    momentum = pu.reverse_mask(query)  # any merge with these would change the result
    state = {"module.encoder_q." + key: value for key, value in query.items()}
    state.update({"module.encoder_k." + key: value for key, value in momentum.items()})
    state["module.queue"] = torch.randn(128, 16)
    state["module.queue_ptr"] = torch.zeros(1, dtype=torch.long)
    path = tmp_path / "moco_ticket.pth.tar"
    torch.save({"epoch": 200, "arch": "resnet50", "state_dict": state}, path)
    masks, _ = pu.read_masks(str(path))
    assert_masks_equal(masks, query)


def test_extract_mask_strips_prefixes_and_ignores_other_keys(l1_run):
    state = {"module.encoder_q." + key: value for key, value in l1_run.model.state_dict().items()}
    state["module.encoder_k.layer1.0.conv1.weight_mask"] = torch.zeros(64, 64, 3, 3)
    masks = pu.extract_mask(state)
    assert_masks_equal(masks, l1_run.masks[ROUNDS])
    assert_masks_equal(pu.extract_mask(l1_run.model), l1_run.masks[ROUNDS])


def test_read_masks_of_a_file_without_masks_is_a_user_error(tmp_path, l1_run):
    path = tmp_path / "dense.pth.tar"
    torch.save({"state_dict": l1_run.init}, path)
    with pytest.raises(UserError) as excinfo:
        pu.read_masks(str(path))
    assert str(path) in one_line_user_error(excinfo)

    path = tmp_path / "tensor.pt"
    torch.save(torch.ones(3), path)
    with pytest.raises(UserError):
        pu.read_masks(str(path))


def test_read_masks_of_a_truncated_file_is_a_user_error(tmp_path, l1_run):
    path = tmp_path / "3model_SA_best.pth.tar"
    torch.save({"state": 3, "state_dict": l1_run.model.state_dict()}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError) as excinfo:
        pu.read_masks(str(path))
    assert str(path) in one_line_user_error(excinfo)


def test_read_masks_of_an_empty_file_is_a_user_error(tmp_path):
    path = tmp_path / "empty.pt"
    path.write_bytes(b"")
    with pytest.raises(UserError) as excinfo:
        pu.read_masks(str(path))
    assert str(path) in one_line_user_error(excinfo)


# ---------------------------------------------------------------------------------------------
# Transferable weights
# ---------------------------------------------------------------------------------------------


def test_transferable_weights_default_drops_fc_conv1_masks_and_normalize(l1_run):
    state = {"module." + key: value for key, value in l1_run.model.state_dict().items()}
    state["module.normalize.mean"] = torch.zeros(3)
    state["normalize.std"] = torch.ones(3)
    out = pu.transferable_weights(state)
    expected_keys = sorted(key for key in l1_run.init if key not in ("conv1.weight", "fc.weight", "fc.bias"))
    assert sorted(out) == expected_keys
    modules = dict(l1_run.model.named_modules())
    for key, value in out.items():
        module = modules[key.rsplit(".", 1)[0]]
        if key.endswith(".weight") and pu.is_pruned(module):
            assert torch.equal(value, module.weight_orig), key
        else:
            assert torch.equal(value, l1_run.model.state_dict()[key]), key


def test_transferable_weights_keeps_fc_and_conv1_when_asked(l1_run):
    state = {"module.encoder_q." + key: value for key, value in l1_run.model.state_dict().items()}
    state["module.encoder_k.fc.weight"] = torch.zeros(10, 512)
    state["module.queue"] = torch.zeros(128, 16)
    out = pu.transferable_weights(state, fc=True, conv1=True)
    assert sorted(out) == sorted(l1_run.init)
    assert torch.equal(out["fc.weight"], l1_run.model.fc.weight)
    assert torch.equal(out["conv1.weight"], l1_run.model.conv1.weight)
    only_fc = pu.transferable_weights(state, fc=True)
    assert "fc.weight" in only_fc and "fc.bias" in only_fc and "conv1.weight" not in only_fc
    only_conv1 = pu.transferable_weights(state, conv1=True)
    assert "conv1.weight" in only_conv1 and "fc.weight" not in only_conv1


def test_global_prune_chooses_exactly_what_torch_global_unstructured_chooses():
    import torch.nn.utils.prune as prune
    torch.manual_seed(3)
    ours = build_model("resnet18", 10, 3, "cifar")
    reference = build_model("resnet18", 10, 3, "cifar")
    reference.load_state_dict(ours.state_dict())
    for _ in range(3):
        pu.global_prune(ours, 0.2)
        prune.global_unstructured([(m, "weight") for _, m in pu.prunable_convs(reference)],
                                  pruning_method=prune.L1Unstructured, amount=0.2)
        expected = pu.extract_mask(reference)
        got = pu.extract_mask(ours)
        assert all(torch.equal(got[key], expected[key]) for key in expected)


def test_global_prune_removes_the_exact_count_when_all_weights_tie():
    model = build_model("resnet18", 10, 3, "cifar")
    with torch.no_grad():
        for _, module in pu.prunable_convs(model):
            module.weight.fill_(0.5)
    total = sum(module.weight.numel() for _, module in pu.prunable_convs(model))
    pu.global_prune(model, 0.2)
    assert pu.sparsity(model)["kept"] == total - round(0.2 * total)
    pu.global_prune(model, 0.2)
    kept = total - round(0.2 * total)
    assert pu.sparsity(model)["kept"] == kept - round(0.2 * kept)
