"""Fidelity to the original code: each test writes out the original's own rule and compares.

Optimizer steps under a mask against ``torch.nn.utils.prune``'s hooks (LARS by the original's
formula), MoCo's momentum update on ``weight_orig``, the IMP sparsity grid, global L1 pruning from
plain tensors, the rewind point of every ``--prune_type`` with and without ``--pretrained``,
``--conv1`` in the eval script, the MoCo blur and the original's loaders.
"""

import copy
import json
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.nn.utils.prune as prune
from PIL import Image, ImageFilter

import main_eval_downstream
import main_imp_downstream
import pruning_utils
from lth import classification, cli
from lth.checkpoint import load_file
from lth.distributed import Context
from lth.engine import Precision
from lth.models import build_model
from lth.runs import RunDir
from lth.trainer import Loaders, StageProgress, TrainConfig, Work, stage_hooks, train_stage
from MoCo import main_moco_imp
from MoCo import task as moco_task
from MoCo.builder import MoCo

CPU = Context(device=torch.device("cpu"))
FP32 = Precision(dtype=None, channels_last=False)
REMAINING = [0.8, 0.33, 0.018]  # of the paper's grid: round 1, round 5, round 18


# --------------------------------------------------------------------------------------------
# Optimizers under a mask: the trainer's step against the original's (prune hooks)
# --------------------------------------------------------------------------------------------

class ListLoader(list):
    """Fixed batches with the loader interface ``train_stage`` uses."""

    def set_epoch(self, epoch: int) -> None:
        pass


def small_convnet() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5))


def masked_model(keep: float, seed: int = 0) -> nn.Module:
    """A conv net whose convs keep ``keep`` of their weights, pruned through prune's hooks; the
    pruned entries of ``weight_orig`` keep their values (as after the original's rewind)."""
    torch.manual_seed(seed)
    model = small_convnet()
    generator = torch.Generator().manual_seed(seed + 1)
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            mask = (torch.rand(module.weight.shape, generator=generator) < keep).float()
            mask.view(-1)[0] = 1.0  # never an all-zero tensor at 1.8 %
            prune.custom_from_mask(module, "weight", mask)
    return model


def batches(count: int = 3, seed: int = 5) -> ListLoader:
    generator = torch.Generator().manual_seed(seed)
    return ListLoader((torch.randn(6, 3, 8, 8, generator=generator),
                       torch.randint(0, 5, (6,), generator=generator)) for _ in range(count))


def original_lars_step(params, buffers, lr, momentum, weight_decay, eta=1e-3):
    """The original SimCLR code's LARS (optimizer/lars.py), on every parameter with a gradient."""
    with torch.no_grad():
        for param in params:
            if param.grad is None:
                continue
            weight_norm, grad_norm = torch.norm(param), torch.norm(param.grad)
            local_lr = eta * weight_norm / (grad_norm + weight_decay * weight_norm)
            if weight_norm < 1e-15 or grad_norm < 1e-15:
                local_lr = torch.ones(())
            buffer = buffers.setdefault(param, torch.zeros_like(param))
            buffer.mul_(momentum).add_(param.grad + weight_decay * param, alpha=float(local_lr * lr))
            param.sub_(buffer)


def reference_training(model, loader, name, lr, momentum, weight_decay):
    """The original's training: prune's hooks in the forward, the optimizer on weight_orig."""
    if name == "sgd":
        optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    elif name == "adam":
        optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    buffers = {}
    model.train()
    for inputs, labels in loader:
        loss = F.cross_entropy(model(inputs), labels)
        model.zero_grad(set_to_none=True)
        loss.backward()
        if name == "lars":
            original_lars_step(list(model.parameters()), buffers, lr, momentum, weight_decay)
        else:
            optimizer.step()
    return model


def trainer_training(model, loader, name, lr, momentum, weight_decay, tmp_path):
    """This toolkit's training: ``train_stage`` with its default (in-place masks where exact)."""
    cfg = TrainConfig(epochs=1, lr=lr, momentum=momentum, weight_decay=weight_decay, warmup=0,
                      milestones=[], print_freq=0, optimizer=name)
    loaders = Loaders(train=loader, val=[], test=None, num_classes=5)
    train_stage(model, Work(loaders, classification.step, lambda *_: {"acc": 0.0}), cfg, CPU, FP32, stage=0,
                progress=StageProgress(), hooks=stage_hooks(RunDir(str(tmp_path)), 100.0, save_best=False))
    return model


@pytest.mark.parametrize("keep", REMAINING)
@pytest.mark.parametrize("name, lr, weight_decay", [("lars", 0.5, 1e-3), ("sgd", 0.1, 1e-3), ("adam", 1e-2, 0.0)])
def test_every_optimizer_steps_a_masked_model_as_the_original(tmp_path, one_thread, name, lr, weight_decay, keep):
    loader = batches()
    ours = trainer_training(masked_model(keep), loader, name, lr, 0.9, weight_decay, tmp_path)
    reference = reference_training(masked_model(keep), loader, name, lr, 0.9, weight_decay)
    start = pruning_utils.dense_state_dict(masked_model(keep))
    ours, reference = pruning_utils.dense_state_dict(ours), pruning_utils.dense_state_dict(reference)
    for key, value in reference.items():
        if key.endswith("num_batches_tracked"):
            continue
        moved = (value - start[key]).norm()
        # The update itself must agree (not only the weights, which barely move at 1.8 %). Both
        # updates are differences of float32 weights, so they cannot agree closer than a few ulps of
        # the weights (CPUs with other vector widths sum the norms in another order).
        ulps = 4 * torch.finfo(torch.float32).eps * float(start[key].abs().max()) if start[key].is_floating_point() else 0.0
        assert torch.allclose(ours[key] - start[key], value - start[key], rtol=1e-4,
                              atol=1e-6 * float(moved) + 1e-9 + ulps), (name, keep, key)


# --------------------------------------------------------------------------------------------
# MoCo: the key encoder follows weight_orig by momentum, as in the original
# --------------------------------------------------------------------------------------------

def masked_moco(keep: float) -> MoCo:
    torch.manual_seed(0)
    model = MoCo("resnet18", 8, 8, momentum=0.9, temperature=0.2, mlp=True)
    generator = torch.Generator().manual_seed(1)
    masks = {f"{name}.weight_mask": (torch.rand(module.weight.shape, generator=generator) < keep).float()
             for name, module in pruning_utils.prunable_convs(model.encoder_q)}
    for encoder in (model.encoder_q, model.encoder_k):
        pruning_utils.apply_mask(encoder, masks)
        with torch.no_grad():  # pruned entries of weight_orig differ between the encoders
            for module in encoder.modules():
                if pruning_utils.is_pruned(module):
                    module.weight_orig.add_(0.01 * torch.randn(module.weight_orig.shape, generator=generator))
    model.freeze_key_encoder()
    return model


@pytest.mark.parametrize("keep", [0.33])
def test_moco_momentum_update_under_a_mask_is_the_originals(tmp_path, one_thread, keep):
    generator = torch.Generator().manual_seed(3)
    loader = ListLoader((torch.rand(4, 2, 3, 32, 32, generator=generator), torch.zeros(4, dtype=torch.long))
                        for _ in range(2))
    ours = masked_moco(keep)
    cfg = TrainConfig(epochs=1, lr=0.05, momentum=0.9, weight_decay=1e-4, warmup=0, milestones=[], print_freq=0)
    work = Work(Loaders(train=loader, val=[], test=None, num_classes=2), moco_task.moco_step(False),
                lambda *_: {"acc": 0.0}, after_step=lambda _: ours.momentum_update)
    train_stage(ours, work, cfg, CPU, FP32, stage=0, progress=StageProgress(),
                hooks=stage_hooks(RunDir(str(tmp_path)), 100.0, save_best=False))
    # The original: hooks, SGD, then key = m * key + (1 - m) * query over zip(parameters()).
    reference = masked_moco(keep)
    optimizer = torch.optim.SGD(reference.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    reference.train()
    for images, _ in loader:
        logits, targets = reference(images[:, 0], images[:, 1])
        loss = F.cross_entropy(logits, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            for param_q, param_k in zip(reference.encoder_q.parameters(), reference.encoder_k.parameters()):
                param_k.data = param_k.data * 0.9 + param_q.data * (1.0 - 0.9)
    ours_state, reference_state = pruning_utils.dense_state_dict(ours), pruning_utils.dense_state_dict(reference)
    for key, value in reference_state.items():
        if value.is_floating_point():  # the queue holds keys, computed through both encoders: float noise
            assert torch.allclose(ours_state[key], value, rtol=1e-5, atol=1e-5 if key == "queue" else 1e-6), key


# --------------------------------------------------------------------------------------------
# IMP: the paper's sparsity grid and global L1 pruning, from plain tensors
# --------------------------------------------------------------------------------------------

def test_twenty_percent_per_round_gives_the_papers_grid_to_round_18():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 32, 3), nn.Conv2d(32, 64, 3), nn.Conv2d(64, 128, 3), nn.Conv2d(128, 256, 3))
    total = sum(module.weight.numel() for _, module in pruning_utils.prunable_convs(model))
    kept = total
    grid = []
    for round_index in range(1, 19):
        pruning_utils.global_prune(model, 0.2)
        kept -= round(0.2 * kept)  # torch's global_unstructured: round(amount * remaining)
        remaining = pruning_utils.sparsity(model)["remaining"]
        assert remaining == pytest.approx(100 * kept / total, abs=1e-9)
        grid.append(remaining)
    # The paper's x axis: 0.8^k of the weights, k = 1 .. 18 (rounding moves it by < 0.005 points).
    assert grid == pytest.approx([100 * 0.8 ** k for k in range(1, 19)], abs=0.005)
    assert grid[-1] == pytest.approx(1.80, abs=0.005)


FAST = ["--dataset", "digits", "--arch", "resnet18", "--batch_size", "256", "--lr", "0.05",
        "--decreasing_lr", "1", "--seed", "0", "--print_freq", "0"]


def imp(save_dir, *flags):
    args = main_imp_downstream.get_args_parser().parse_args([*FAST, "--save_dir", str(save_dir), *flags])
    return main_imp_downstream.main(args)


def masks_of(path):
    return pruning_utils.read_masks(str(path))[0]


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


@pytest.fixture(scope="module")
def lt_run(module_tmp, one_thread):
    out = module_tmp("fidelity") / "lt"
    imp(out, "--epochs", "1", "--pruning_times", "2", "--prune_type", "lt")
    return out


def test_each_ticket_is_global_l1_over_the_end_of_round_weights(lt_run):
    for round_index in range(2):
        state = load_file(str(lt_run / f"{round_index}checkpoint.pth.tar"))["state_dict"]
        names = sorted(key[:-len(".weight_mask")] for key in state if key.endswith(".weight_mask"))
        names = names or sorted(key[:-len(".weight")] for key in state
                                if key.endswith(".weight") and state[key].dim() == 4 and key != "conv1.weight")
        weights, masks = [], []
        for name in names:
            if f"{name}.weight_mask" in state:
                mask = state[f"{name}.weight_mask"]
                weights.append((state[f"{name}.weight_orig"] * mask).flatten())
                masks.append(mask.flatten())
            else:
                weights.append(state[f"{name}.weight"].flatten())
                masks.append(torch.ones_like(weights[-1]))
        magnitude, alive = torch.cat(weights).abs(), torch.cat(masks).bool()
        count = round(0.2 * int(alive.sum()))
        order = torch.argsort(torch.where(alive, magnitude, torch.full_like(magnitude, math.inf)))
        expected = alive.clone()
        expected[order[:count]] = False
        ticket = masks_of(lt_run / f"ticket_{round_index + 1:02d}.pt")
        got = torch.cat([ticket[f"{name}.weight_mask"].flatten() for name in names]).bool()
        # Weights of exactly the threshold's magnitude may go either way (the original's
        # prune.global_unstructured takes torch.topk, whose order among equal values is unspecified:
        # a tie of two trained float32 weights among millions was met on an AVX2-only CPU); the
        # number pruned and every other weight's fate are the rule's.
        threshold = magnitude[order[count - 1]]
        differ = got != expected
        assert int(got.sum()) == int(expected.sum()), round_index
        assert bool((magnitude[differ] == threshold).all()), round_index


# --------------------------------------------------------------------------------------------
# Rewind points: rewind_lt after k epochs, --pretrained only for pt_trans
# --------------------------------------------------------------------------------------------

def pretrained_file(tmp_path):
    torch.manual_seed(123)
    path = tmp_path / "imagenet_weight.pt"
    torch.save(build_model("resnet18", 1000, 3, "imagenet").state_dict(), path)
    return str(path)


@pytest.mark.parametrize("prune_type", ["lt", "rewind_lt", "pt"])
def test_rewind_targets_and_masks_ignore_pretrained_outside_pt_trans(tmp_path, capsys, lt_run, prune_type):
    """lt_run is the same seed without --pretrained: its round 0 (1 epoch) is the training every
    prune type but pt_trans does in round 0, so the first mask must be its, and the rewind target:
    lt the seed's random init, rewind_lt (k = --epochs = 1) the weights after 1 epoch, pt the best
    round-0 model."""
    weights = pretrained_file(tmp_path)
    capsys.readouterr()
    run = imp(tmp_path / prune_type, "--epochs", "1", "--pruning_times", "1", "--prune_type", prune_type,
              "--rewind_epoch", "1", "--pretrained", weights)
    assert "--pretrained is ignored" in capsys.readouterr().err
    assert same(masks_of(tmp_path / prune_type / "ticket_01.pt"), masks_of(lt_run / "ticket_01.pt"))
    if prune_type == "lt":
        torch.manual_seed(0)
        expected = build_model("resnet18", 10, 1, "cifar").state_dict()
    elif prune_type == "pt":
        expected = pruning_utils.dense_state_dict(load_file(run.run.file("0model_SA_best.pth.tar"))["state_dict"])
    else:  # the original saves it as epoch_{k}_rewind_weight.pt after k epochs
        after_one_epoch = load_file(str(lt_run / "0checkpoint.pth.tar"))["state_dict"]
        expected = pruning_utils.dense_state_dict(after_one_epoch)
        saved = load_file(run.run.file("epoch_1_rewind_weight.pt"))
        assert all(torch.equal(saved[key], expected[key]) for key in expected)
    assert run.rewind_weights.keys() == expected.keys()
    assert all(torch.equal(run.rewind_weights[key], expected[key]) for key in expected)


# --------------------------------------------------------------------------------------------
# main_eval_downstream.py: --conv1 masks conv1; only --load_all loads it (the original's load_ticket)
# --------------------------------------------------------------------------------------------

def test_eval_conv1_masks_conv1_but_loads_it_only_with_load_all(tmp_path, lt_run, one_thread):
    weights = pretrained_file(tmp_path)  # an ImageNet stem (7x7x3) that cannot fit the digits' conv1
    mask = masks_of(lt_run / "ticket_01.pt")
    torch.manual_seed(9)
    mask["conv1.weight_mask"] = (torch.rand(64, 1, 3, 3) < 0.5).float()
    torch.save(mask, tmp_path / "mask.pt")
    args = main_eval_downstream.get_args_parser().parse_args(
        [*FAST, "--epochs", "1", "--save_dir", str(tmp_path / "eval"), "--pretrained", weights,
         "--mask_dir", str(tmp_path / "mask.pt"), "--conv1", "--save_model"])
    main_eval_downstream.main(args)
    best = load_file(str(tmp_path / "eval" / "model_SA_best.pth.tar"))["state_dict"]
    assert torch.equal(best["conv1.weight_mask"], mask["conv1.weight_mask"])
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary["remaining"] < 100


# --------------------------------------------------------------------------------------------
# Small things: MoCo's blur, the loaders' last batches, --deterministic
# --------------------------------------------------------------------------------------------

def test_moco_blur_is_pils_gaussian_blur():
    image = Image.fromarray((torch.rand(24, 24, 3) * 255).to(torch.uint8).numpy())
    for sigma in (0.1, 1.3, 2.0):
        ours = moco_task.GaussianBlur((sigma, sigma))(image)
        assert ours.tobytes() == image.filter(ImageFilter.GaussianBlur(radius=sigma)).tobytes()
    augmentation = moco_task.moco_augmentation(32, plus=True)
    blurs = [t for t in augmentation.transforms if "GaussianBlur" in repr(t)]
    assert len(blurs) == 1 and isinstance(blurs[0].transforms[0], moco_task.GaussianBlur)
    assert blurs[0].p == 0.5 and blurs[0].transforms[0].sigma == (0.1, 2.0)


def test_loaders_keep_or_drop_the_last_batch_as_the_original(tmp_path):
    from lth import imagedata
    from SimCLR import main as simclr_main
    from SimCLR import task as simclr_task

    for label in ("a", "b"):
        for split, count in (("train", 5), ("val", 3)):
            (tmp_path / split / label).mkdir(parents=True, exist_ok=True)
            for index in range(count):
                Image.new("RGB", (8, 8)).save(tmp_path / split / label / f"{index}.png")
    train, val = imagedata.image_folder_splits(str(tmp_path), 8)
    common = dict(eval_batch_size=None, workers=0, seed=0, ctx=CPU, precision=FP32)
    # ImageNet and VisDA: the original kept the last partial training batch (10 images: 4 + 4 + 2).
    assert len(imagedata.image_loaders(train, val, 2, batch_size=4, **common).train) == 3
    simclr_args = simclr_main.get_args_parser().parse_args(["x", "--data", str(tmp_path), "--batch_size", "4",
                                                            "-j", "0", "--image_size", "8"])
    assert len(simclr_task.make_loaders(simclr_args, CPU).train) == 3  # 10 images: 4 + 4 + 2
    moco_args = main_moco_imp.get_args_parser().parse_args([str(tmp_path), "-b", "4", "-j", "0", "--cpu",
                                                            "--image_size", "32", "--save_dir", "unused"])
    moco_args.seed = 0
    launch = main_moco_imp.launch_plan(moco_args)
    loaders = moco_task.make_loaders(moco_args, CPU, launch)
    assert len(loaders.train) == 2 and len(loaders.val) == 1  # both drop the last partial batch


def test_deterministic_flag_sets_the_originals_cudnn_switches(monkeypatch):
    parser = main_imp_downstream.get_args_parser()
    assert parser.parse_args(["--save_dir", "x", "--deterministic"]).deterministic
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", False)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)
    previous = torch.are_deterministic_algorithms_enabled()
    try:
        cli.set_deterministic(True)
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(previous)
    help_text = parser.format_help()
    assert "--deterministic" in help_text and "slower" in help_text
