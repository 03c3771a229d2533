"""The fast paths change speed, never results: same seed, same weights and masks as the reference way."""

import contextlib

import pytest
import torch
import torch.nn.functional as F

import pruning_utils
from lth.models import build_model


pytestmark = pytest.mark.usefixtures("one_thread")


def train_a_little(inplace_masks: bool, foreach: bool, steps: int = 4):
    torch.manual_seed(0)
    model = build_model("resnet18_w16", 10, 1, "cifar")
    pruning_utils.global_prune(model, 0.5)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, foreach=foreach)
    generator = torch.Generator().manual_seed(1)
    block = pruning_utils.masks_in_place(model) if inplace_masks else contextlib.nullcontext(lambda: None)
    with block as reapply:
        for _ in range(steps):
            inputs = torch.randn(8, 1, 8, 8, generator=generator)
            labels = torch.randint(0, 10, (8,), generator=generator)
            loss = F.cross_entropy(model(inputs), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            reapply()
    return model


def test_in_place_masks_and_foreach_sgd_train_exactly_like_the_hooks():
    reference = pruning_utils.dense_state_dict(train_a_little(inplace_masks=False, foreach=False))
    fast_model = train_a_little(inplace_masks=True, foreach=True)
    fast = pruning_utils.dense_state_dict(fast_model)
    assert reference.keys() == fast.keys()
    for key in reference:
        assert torch.equal(reference[key], fast[key]), key


def test_in_place_masks_restore_the_hooks_and_the_checkpoint_format():
    model = train_a_little(inplace_masks=True, foreach=True)
    keys = set(model.state_dict())
    assert "layer1.0.conv1.weight_orig" in keys and "layer1.0.conv1.weight_mask" in keys
    assert "layer1.0.conv1.weight" not in keys
    conv = model.layer1[0].conv1
    assert any(isinstance(hook, torch.nn.utils.prune.BasePruningMethod) for hook in conv._forward_pre_hooks.values())
    with torch.no_grad():
        conv.weight_orig.add_(1.0)  # the hook is live again: the mask still zeroes pruned weights
    model(torch.randn(2, 1, 8, 8))
    assert bool((conv.weight[conv.weight_mask == 0] == 0).all())
    assert bool((conv.weight[conv.weight_mask == 1] != 0).all())


def test_in_place_masks_keep_pruned_weights_at_zero_during_training():
    torch.manual_seed(0)
    model = build_model("resnet18_w16", 10, 1, "cifar")
    pruning_utils.global_prune(model, 0.5)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    with pruning_utils.masks_in_place(model) as reapply:
        for _ in range(2):
            loss = F.cross_entropy(model(torch.randn(4, 1, 8, 8)), torch.randint(0, 10, (4,)))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            reapply()
            for module in model.modules():
                if pruning_utils.is_pruned(module):
                    assert not bool((module.weight_orig[module.weight_mask == 0] != 0).any())


def test_imp_gives_the_same_masks_and_metrics_with_and_without_the_fast_paths(tmp_path, monkeypatch):
    """On CPU: in-place masks + foreach SGD (the defaults) against prune hooks + for-loop SGD."""
    import json

    import main_imp_downstream
    from lth import trainer

    flags = ["--dataset", "digits", "--arch", "resnet18_w16", "--epochs", "1", "--batch_size", "256",
             "--pruning_times", "2", "--seed", "0", "--print_freq", "0"]

    def run(name):
        args = main_imp_downstream.get_args_parser().parse_args([*flags, "--save_dir", str(tmp_path / name)])
        main_imp_downstream.main(args)
        masks, _ = pruning_utils.read_masks(str(tmp_path / name / "ticket_02.pt"))
        rows = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        return masks, [(row["train_loss"], row["val_acc"], row["test_acc"]) for row in rows]

    fast_masks, fast_metrics = run("fast")
    real_optimizer = trainer.make_optimizer

    def for_loop_sgd(params, lr, momentum, weight_decay, device, name="sgd"):
        return torch.optim.SGD(list(params), lr=lr, momentum=momentum, weight_decay=weight_decay, foreach=False)

    monkeypatch.setattr(trainer, "make_optimizer", for_loop_sgd)
    monkeypatch.setattr(trainer.pruning, "masks_in_place", lambda model: contextlib.nullcontext(None))
    reference_masks, reference_metrics = run("reference")
    monkeypatch.setattr(trainer, "make_optimizer", real_optimizer)
    assert fast_metrics == reference_metrics
    assert all(torch.equal(fast_masks[key], reference_masks[key]) for key in fast_masks)


def test_compile_happens_once_per_round_and_survives_re_pruning(tmp_path, monkeypatch):
    """--compile: one compiled wrapper per IMP round, no recompilation between the epochs of a round."""
    import torch._dynamo

    import main_imp_downstream
    from lth import trainer

    real_compile = torch.compile
    compiled_per_epoch = []

    def eager_compile(model, **kwargs):  # the eager backend traces like inductor, without C++ builds
        return real_compile(model, backend="eager")

    real_epoch = trainer.train_one_epoch

    def counting_epoch(*args, **kwargs):
        before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        result = real_epoch(*args, **kwargs)
        compiled_per_epoch.append(torch._dynamo.utils.counters["stats"]["unique_graphs"] - before)
        return result

    monkeypatch.setattr(trainer.torch, "compile", eager_compile)
    monkeypatch.setattr(trainer, "train_one_epoch", counting_epoch)
    torch._dynamo.reset()
    flags = ["--dataset", "digits", "--arch", "resnet18_w16", "--epochs", "2", "--batch_size", "256",
             "--pruning_times", "2", "--seed", "0", "--print_freq", "0", "--compile",
             "--save_dir", str(tmp_path / "run")]
    main_imp_downstream.main(main_imp_downstream.get_args_parser().parse_args(flags))
    first_round, second_round = compiled_per_epoch[:2], compiled_per_epoch[2:]
    assert first_round[0] >= 1 and first_round[1] == 0  # compiled once, then reused
    assert second_round[0] >= 1 and second_round[1] == 0  # re-pruned: one new compile, then reused
    masks, meta = pruning_utils.read_masks(str(tmp_path / "run" / "ticket_02.pt"))
    assert meta["remaining"] == pytest.approx(64, abs=1e-3)


def test_a_model_training_with_masks_in_place_still_reads_as_pruned():
    torch.manual_seed(0)
    model = build_model("resnet18_w16", 10, 1, "cifar")
    pruning_utils.global_prune(model, 0.5)
    before = pruning_utils.current_masks(model)
    with pruning_utils.masks_in_place(model):
        assert pruning_utils.is_pruned(model.layer1[0].conv1)
        assert pruning_utils.sparsity(model)["remaining"] == pytest.approx(50, abs=1e-3)
        during = pruning_utils.current_masks(model)
    assert all(torch.equal(before[key], during[key]) for key in before)
