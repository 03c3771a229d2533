"""The core carries a task that is not classification: a tiny per-pixel task on a ResNet-18 backbone.

The worked example of docs/CORE.md: ``PixelTask`` is everything a new task brings (data, model,
training config, step, evaluator, objective, pruning strategy, IMP config) and ``ImpRun`` drives it.
Dict targets through a collate, a stage counted in iterations with val_interval, the poly schedule,
two parameter groups (backbone at 0.1x), a lower-is-better primary metric with a list metric,
backbone-scoped IMP over two rounds, and a kill mid-round resumed to the same numbers.
"""

import argparse
import json
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from torch.utils.data import Dataset
from torchvision.models._utils import IntermediateLayerGetter

import pruning_utils
from lth import engine, session, trainer
from lth.distributed import Context
from lth.engine import Precision, StepResult, make_scheduler
from lth.errors import UserError
from lth.imp import REWIND_FILE, BackbonePruning, ImpConfig, ImpRun
from lth.loaders import DeviceLoader, Loaders
from lth.models import build_model
from lth.runs import RunDir
from lth.session import Session
from lth.task import Task
from lth.trainer import Objective, TrainConfig

CPU = Context(device=torch.device("cpu"))
SIZE = 16
CLASSES = 3


class Blobs(Dataset):
    """Images whose pixels belong to one of 3 classes by brightness; target: {"mask": H x W labels}."""

    def __init__(self, count: int, seed: int):
        generator = torch.Generator().manual_seed(seed)
        self.images = torch.rand(count, 3, SIZE, SIZE, generator=generator)
        self.masks = (self.images.mean(1) * CLASSES).long().clamp(max=CLASSES - 1)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        image, mask = self.images[index], self.masks[index]
        if torch.rand(()) < 0.5:  # augmentation from torch's RNG, seeded per batch by DeviceLoader
            image, mask = image.flip(-1), mask.flip(-1)
        return image, {"mask": mask, "index": index}


def collate(samples):
    images = torch.stack([image for image, _ in samples])
    return images, {"mask": torch.stack([target["mask"] for _, target in samples]),
                    "index": torch.tensor([target["index"] for _, target in samples])}


class PixelNet(nn.Module):
    """ResNet-18 features (torchvision names under ``backbone``) and a small conv head with dropout."""

    def __init__(self):
        super().__init__()
        resnet = build_model("resnet18", 10, 3, stem="cifar")
        self.backbone = IntermediateLayerGetter(resnet, return_layers={"layer4": "out"})
        self.head = nn.Sequential(nn.Conv2d(512, 32, 3, padding=1), nn.ReLU(), nn.Dropout(0.2),
                                  nn.Conv2d(32, CLASSES, 1))

    def forward(self, x):
        out = self.head(self.backbone(x)["out"])
        return F.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)


def pixel_step(model, batch) -> StepResult:
    images, target = batch
    loss = F.cross_entropy(model(images), target["mask"])
    return StepResult(loss, None, images.size(0), parts={"ce": loss})


@torch.inference_mode()
def pixel_evaluator(model, loader, desc):
    """Pixel error (%) as the primary, lower-is-better metric; IoU per class as a list."""
    model.eval()
    confusion = torch.zeros(CLASSES, CLASSES)
    for images, target in loader:
        predicted = model(images).argmax(1)
        confusion += torch.bincount(target["mask"].flatten() * CLASSES + predicted.flatten(),
                                    minlength=CLASSES ** 2).reshape(CLASSES, CLASSES).float()
    model.train()
    iou = confusion.diag() / (confusion.sum(0) + confusion.sum(1) - confusion.diag()).clamp(min=1)
    return {"error": 100.0 * (1 - confusion.diag().sum().item() / confusion.sum().item()),
            "miou": 100.0 * iou.mean().item(), "class_iou": [round(100.0 * v, 4) for v in iou.tolist()]}


OBJECTIVE = Objective("error", higher_is_better=False, lists=("class_iou",), val_prefix="")
TOTAL_ITRS, VAL_INTERVAL, BATCH = 5, 3, 8


class PixelTask(Task):
    """Everything the drivers need from a task; the rest (files, summary rows, plots) keeps its defaults."""

    def make_loaders(self) -> Loaders:
        ctx = self.session.ctx
        return Loaders(train=DeviceLoader(Blobs(44, 1), BATCH, train=True, seed=0, ctx=ctx, workers=0, collate_fn=collate),
                       val=DeviceLoader(Blobs(12, 2), 6, train=False, seed=0, ctx=ctx, workers=0, collate_fn=collate))

    def make_model(self) -> nn.Module:
        torch.manual_seed(self.hparams.seed)
        return PixelNet()

    def train_config(self) -> TrainConfig:
        return TrainConfig(epochs=0, lr=0.05, momentum=0.9, weight_decay=1e-4, warmup=0, milestones=[],
                           print_freq=0, total_itrs=TOTAL_ITRS, val_interval=VAL_INTERVAL, lr_policy="poly",
                           lr_scales={"backbone.": 0.1}, objective=OBJECTIVE)

    def make_strategy(self) -> BackbonePruning:
        return BackbonePruning(0.2, prune_type="lt")  # lt: every round rewinds to the initial weights

    def step(self, model, batch) -> StepResult:
        return pixel_step(model, batch)

    def evaluate(self, model, loader, desc: str) -> dict:
        return pixel_evaluator(model, loader, desc)

    def imp_config(self) -> ImpConfig:
        return ImpConfig(rounds=2, seed=self.hparams.seed, meta={"arch": "resnet18", "dataset": "blobs"})


def run_imp(path, resume=False):
    hparams = argparse.Namespace(seed=0, resume=resume)
    session = Session(run=RunDir(str(path)), ctx=CPU, precision=Precision.choose("fp32", CPU.device),
                      resume_file=None, seed=0)
    task = PixelTask(hparams)
    task.build(session)
    session.record(hparams)
    imp = ImpRun(task, hparams, session)
    imp.resume() if resume else imp.start()
    return imp


def rows(path, name):
    return [json.loads(line) for line in open(path / name)]


def numbers(row):
    return {key: value for key, value in row.items() if "seconds" not in key and key != "train_images_per_s"}


@pytest.fixture(scope="module")
def whole(module_tmp, one_thread):
    path = module_tmp("whole")
    return path, run_imp(path)


def test_metrics_are_logged_per_evaluation_under_their_names(whole):
    path, _ = whole
    metrics = rows(path, "metrics.jsonl")
    assert [(row["round"], row["itr"]) for row in metrics] == [(0, 3), (0, 5), (1, 3), (1, 5)]
    first = metrics[0]
    assert {"error", "miou", "class_iou", "train_loss", "train_ce", "lr"} <= set(first)
    assert "train_acc" not in first and "val_error" not in first
    assert len(first["class_iou"]) == CLASSES
    # poly: the rate at the start of each chunk is lr * (1 - itr / total) ** 0.9
    assert [row["lr"] for row in metrics[:2]] == pytest.approx(
        [0.05 * (1 - itr / TOTAL_ITRS) ** 0.9 for itr in (0, 3)])


def test_summary_names_the_primary_metric_and_keeps_the_lowest(whole):
    path, _ = whole
    metrics, summary = rows(path, "metrics.jsonl"), rows(path, "summary.jsonl")
    assert len(summary) == 2
    for round_index, row in enumerate(summary):
        errors = [m["error"] for m in metrics if m["round"] == round_index]
        best = min(range(len(errors)), key=errors.__getitem__)
        assert row["primary_metric"] == "error" and row["higher_is_better"] is False
        assert row["reported"] == pytest.approx(errors[best], abs=1e-4)
        assert row["final"] == pytest.approx(errors[-1], abs=1e-4)
        assert row["best_itr"] == (3, 5)[best] and row["trained_itrs"] == TOTAL_ITRS
        assert row["miou"] == pytest.approx(metrics[[m["round"] for m in metrics].index(round_index) + best]["miou"])
    assert (path / "error_vs_remaining.png").exists() and (path / "0net_train.png").exists()


def test_backbone_lr_is_a_tenth_of_the_head_lr(whole):
    path, imp = whole
    groups = torch.load(path / "1checkpoint.pth.tar", weights_only=False)["optimizer"]["param_groups"]
    assert len(groups) == 2
    assert groups[1]["lr"] == pytest.approx(0.1 * groups[0]["lr"])
    head = {id(p) for p in imp.model.head.parameters()}
    first_group = engine.param_groups(imp.model, 0.05, {"backbone.": 0.1})[0]["params"]
    assert {id(p) for p in first_group} == head


def test_only_backbone_convs_without_conv1_are_pruned_and_named_as_classification(whole):
    path, imp = whole
    one, _ = pruning_utils.read_masks(str(path / "ticket_01.pt"))
    two, meta = pruning_utils.read_masks(str(path / "ticket_02.pt"))
    classifier = build_model("resnet18", 10, 3, stem="cifar")
    expected = {name + ".weight_mask" for name, _ in pruning_utils.prunable_convs(classifier)}
    assert set(one) == set(two) == expected and len(expected) == 19
    assert pruning_utils.mask_remaining(one) == pytest.approx(80, abs=0.01)
    assert meta["remaining"] == pytest.approx(64, abs=0.01)
    assert all(torch.all(two[key] <= one[key]) for key in one)  # nested
    assert not any(pruning_utils.is_pruned(module) for module in imp.model.head.modules())
    assert not pruning_utils.is_pruned(imp.model.backbone.conv1)


def test_the_rewind_point_is_written_once_and_not_carried_by_checkpoints(whole):
    path, _ = whole
    checkpoint = torch.load(path / "1checkpoint.pth.tar", weights_only=False)
    assert "init_weight" not in checkpoint and checkpoint["rewind_point"] == REWIND_FILE
    rewind = torch.load(path / REWIND_FILE, weights_only=False)["init_weight"]
    assert {key for key in rewind if key.startswith("head.")} and "backbone.conv1.weight" in rewind


class Interrupted(Exception):
    pass


def test_a_kill_mid_round_resumes_to_the_same_numbers(whole, tmp_path, monkeypatch, one_thread):
    path, _ = whole
    real, calls = trainer.train_one_epoch, {"n": 0}

    def dies_in_round_one_mid_epoch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:  # round 1, iterations 3-5: after the checkpoint at itr 3 (mid-epoch: 5 batches/epoch)
            raise Interrupted()
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer, "train_one_epoch", dies_in_round_one_mid_epoch)
    with pytest.raises(Interrupted):
        run_imp(tmp_path / "cut")
    monkeypatch.setattr(trainer, "train_one_epoch", real)
    run_imp(tmp_path / "cut", resume=True)
    assert [numbers(row) for row in rows(tmp_path / "cut", "metrics.jsonl")] == \
        [numbers(row) for row in rows(path, "metrics.jsonl")]
    assert [numbers(row) for row in rows(tmp_path / "cut", "summary.jsonl")] == [numbers(row) for row in rows(path, "summary.jsonl")]
    whole_masks, _ = pruning_utils.read_masks(str(path / "ticket_02.pt"))
    cut_masks, _ = pruning_utils.read_masks(str(tmp_path / "cut" / "ticket_02.pt"))
    assert all(torch.equal(whole_masks[key], cut_masks[key]) for key in whole_masks)


def test_a_classification_ticket_fits_the_backbone():
    torch.manual_seed(0)
    classifier = build_model("resnet18", 10, 3, stem="cifar")
    pruning_utils.global_prune(classifier, 0.5)
    model = PixelNet()
    BackbonePruning(0.2).apply_ticket(model, pruning_utils.current_masks(classifier))
    assert BackbonePruning(0.2).remaining(model) == pytest.approx(50, abs=0.01)
    assert pruning_utils.stem_conv_name(model.backbone) == "conv1"


def test_resnet50_backbone_has_52_prunable_convs():
    backbone = IntermediateLayerGetter(torchvision.models.resnet50(weights=None), return_layers={"layer4": "out"})
    convs = pruning_utils.prunable_convs(backbone)
    assert len(convs) == 52 and convs[0][0] == "layer1.0.conv1"


def test_schedules_follow_their_formulas():
    def rates(policy, **kwargs):
        optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
        scheduler = make_scheduler(optimizer, 1, kwargs.pop("warmup", 0), kwargs.pop("milestones", []),
                                   policy=policy, **kwargs)
        out = []
        for _ in range(10):
            out.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
        return out

    assert rates("poly", total_steps=10) == pytest.approx([(1 - s / 10) ** 0.9 for s in range(10)])
    cosine = [(s + 1) / 2 if s < 2 else 0.5 * (1 + math.cos(math.pi * (s - 2) / 8)) for s in range(10)]
    assert rates("cosine", total_steps=10, warmup=2) == pytest.approx(cosine)
    assert rates("multistep", milestones=[3, 6]) == pytest.approx([1] * 3 + [0.1] * 3 + [0.01] * 4)
    with pytest.raises(ValueError):
        rates("poly")


def test_the_seed_is_broadcast_exactly_once_under_torchrun(monkeypatch):
    calls = []

    def broadcast(obj, src=0):
        calls.append(obj)
        return (1234, True)  # rank 0's draw

    monkeypatch.setattr(session.distributed, "broadcast_object", broadcast)
    follower = Context(device=torch.device("cpu"), rank=1, world_size=2)
    assert session.resolve_seed(None, follower) == 1234 and len(calls) == 1
    assert session.resolve_seed(7, Context(device=torch.device("cpu"))) == 7 and len(calls) == 1


def test_an_evaluator_without_the_primary_metric_is_a_clear_error(tmp_path):
    model = PixelNet()
    loaders = Loaders(train=[], val=[(torch.zeros(1, 3, SIZE, SIZE), None)])
    cfg = TrainConfig(epochs=0, lr=0.1, momentum=0.9, weight_decay=0, warmup=0, milestones=[],
                      objective=Objective("ap50"))
    with pytest.raises(UserError, match="ap50"):
        trainer.train_stage(model, trainer.Work(loaders, pixel_step, lambda m, loader, d: {"miou": 1.0}), cfg, CPU,
                            Precision.choose("fp32", CPU.device), stage=0, progress=trainer.StageProgress(),
                            hooks=trainer.stage_hooks(RunDir(str(tmp_path)), 100.0))


def test_batches_of_any_structure_reach_the_device_whole():
    from lth.loaders import to_device

    boxes = [torch.zeros(2, 4), torch.zeros(0, 4)]  # a variable number of boxes per image
    batch = (torch.zeros(2, 3, 4, 4), {"boxes": boxes, "mask": torch.zeros(2, 4, 4, dtype=torch.long), "id": "x"})
    images, target = to_device(batch, torch.device("cpu"), channels_last=True)
    assert images.is_contiguous(memory_format=torch.channels_last)
    assert [tuple(b.shape) for b in target["boxes"]] == [(2, 4), (0, 4)] and target["id"] == "x"
    assert target["mask"].dtype == torch.long and target["mask"].is_contiguous()


def test_resuming_from_a_round_start_drops_that_rounds_iteration_lines(tmp_path):
    from lth.checkpoint import append_jsonl

    run = RunDir(str(tmp_path))
    for row in ({"round": 0, "itr": 3}, {"round": 0, "itr": 5}, {"round": 1, "itr": 3}):
        append_jsonl(row, run.file("metrics.jsonl"))
    run.rewind_logs(1, 0)
    run.rewind_logs(1, 1, key="itr")
    assert [(row["round"], row["itr"]) for row in run.metrics()] == [(0, 3), (0, 5)]


def test_evaluation_shards_cover_every_sample_exactly_once_under_ddp():
    # DistributedSampler pads shards with repeats (7 samples on 2 ranks: one counted twice); an
    # evaluation must see each sample once, or a confusion matrix or a detection list double-counts it.
    samples = torch.arange(7).float()
    seen = []
    for rank in range(2):
        ctx = Context(device=torch.device("cpu"), rank=rank, world_size=2)
        loader = DeviceLoader(samples, batch_size=3, train=False, seed=0, ctx=ctx, workers=0)
        seen += [int(value) for batch in loader for value in batch]
    assert sorted(seen) == list(range(7))
    train_seen = []
    for rank in range(2):
        ctx = Context(device=torch.device("cpu"), rank=rank, world_size=2)
        loader = DeviceLoader(samples, batch_size=4, train=True, seed=0, ctx=ctx, workers=0, drop_last=False)
        train_seen += [int(value) for batch in loader for value in batch]
    assert len(train_seen) == 8 and set(train_seen) == set(range(7))  # training keeps torch's padded shards
