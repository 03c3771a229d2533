"""The segmentation step and evaluator: padded batches, DDP shards and the prediction writer give the
scores of one confusion matrix over all pixels."""

import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
from PIL import Image
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from lth.distributed import Context
from lth.engine import Precision
from Segmentation.data import digits_segmentation, pad_collate
from Segmentation.loss import build_loss
from Segmentation.metrics import ConfusionMatrix
from Segmentation.model import build_segmentation_model, param_groups
from Segmentation.task import evaluate, make_step
from Segmentation.visual import PredictionWriter, voc_palette

pytestmark = pytest.mark.usefixtures("one_thread")
CLASSES = 4


class Shapes(Dataset):
    """Images of different sizes whose channel 0 holds a noisy copy of the label (an oracle can read it)."""

    def __init__(self, count=7, seed=0):
        rng = np.random.default_rng(seed)
        self.items = []
        for index in range(count):
            height, width = int(rng.integers(5, 12)), int(rng.integers(5, 12))
            label = rng.integers(0, CLASSES, (height, width))
            label[rng.random((height, width)) < 0.1] = 255
            seen = np.where(rng.random((height, width)) < 0.8, label, rng.integers(0, CLASSES, (height, width)))
            seen[label == 255] = 0
            image = torch.zeros(3, height, width)
            image[0] = torch.from_numpy(seen).float()
            self.items.append((image, {"mask": torch.from_numpy(label).long(), "index": torch.tensor(index),
                                       "size": torch.tensor([height, width])}))
        self.ids = [f"img{index}" for index in range(count)]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        return self.items[index]


class Oracle(nn.Module):
    """Predicts the class written in channel 0 (0 outside, as for padding)."""

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        return nn.functional.one_hot(x[:, 0].round().long().clamp(0, CLASSES - 1), CLASSES).permute(0, 3, 1, 2).float()


def _expected(dataset):
    metric = ConfusionMatrix(CLASSES)
    for image, target in dataset:
        metric.update(image[0].round().long(), target["mask"])
    return metric.results()


CPU = Context(torch.device("cpu"))
FP32 = Precision(None, False)


@pytest.mark.parametrize("batch_size", [1, 3])
def test_evaluate_on_padded_batches_is_one_confusion_matrix(batch_size, tmp_path):
    dataset = Shapes()
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=pad_collate)
    writer = PredictionWriter(str(tmp_path), dataset.ids, voc_palette())
    result = evaluate(Oracle(), loader, CPU, FP32, CLASSES, writer=writer)
    expected = _expected(dataset)
    for key in ("miou", "overall_acc", "mean_acc", "fwiou"):
        assert result[key] == pytest.approx(expected[key], abs=1e-9)
    assert result["class_iou"] == pytest.approx(expected["class_iou"])
    assert 0 < result["loss"] < 10
    for index, (image, target) in enumerate(dataset):
        saved = np.array(Image.open(tmp_path / f"img{index}_pred.png"))
        assert np.array_equal(saved, image[0].round().numpy().astype(np.uint8))


class Sizes(Dataset):
    """Normalised photos of four sizes with labels: VOC's validation images without --crop_val."""

    def __init__(self):
        rng = np.random.default_rng(1)
        self.items = []
        for index, (height, width) in enumerate([(40, 56), (48, 32), (40, 56), (33, 47), (48, 32), (56, 40)]):
            image = torch.from_numpy(rng.normal(0, 1, (3, height, width)).astype(np.float32))
            label = torch.from_numpy(rng.integers(0, 21, (height, width))).long()
            self.items.append((image, {"mask": label, "index": torch.tensor(index),
                                       "size": torch.tensor([height, width])}))

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        return self.items[index]


def test_deeplab_scores_do_not_depend_on_the_validation_batch_size(monkeypatch):
    """A real DeepLabV3+ (ResNet-18): its ASPP image pooling averages over the whole input, so an
    image padded into a batch with a larger one is predicted differently on its own pixels. Each
    image is predicted at its own size: --val_batch_size 1 and 4 give the same confusion matrix."""
    torch.manual_seed(0)
    model = build_segmentation_model("deeplabv3plus_resnet18", 21, 16, False)
    for module in model.modules():  # trained-looking batch-norm statistics, so the pooling branch matters
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
    model.eval()
    dataset = Sizes()
    import Segmentation.task as segtask

    made = []

    class Recorded(ConfusionMatrix):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(segtask, "ConfusionMatrix", Recorded)
    results = [evaluate(model, DataLoader(dataset, batch_size=size, collate_fn=pad_collate), CPU, FP32, 21)
               for size in (1, 4)]
    assert torch.equal(made[0].matrix, made[1].matrix) and made[0].matrix.sum() == sum(
        h * w for h, w in [(40, 56), (48, 32), (40, 56), (33, 47), (48, 32), (56, 40)])
    assert results[0]["miou"] == results[1]["miou"]
    # what the padded batch used to give on the same images differs
    images, target = pad_collate([dataset[i] for i in range(4)])
    with torch.no_grad():
        padded = model(images).argmax(1)[1, :48, :32]
        alone = model(images[1:2, :, :48, :32]).argmax(1)[0]
    assert (padded != alone).float().mean() > 0.01


def _ddp_rank(rank, world_size, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    dataset = Shapes()
    sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=False, drop_last=True)
    loader = DataLoader(dataset, batch_size=2, sampler=sampler, collate_fn=pad_collate)
    result = evaluate(Oracle(), loader, Context(torch.device("cpu"), rank, world_size), FP32, CLASSES)
    torch.save(result, os.path.join(out, f"rank{rank}.pt"))
    dist.destroy_process_group()


def test_evaluate_sums_the_matrix_over_ddp_ranks(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_ddp_rank, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    rank0, rank1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    # 7 samples, drop_last: ranks see samples 0, 2, 4 and 1, 3, 5
    expected = _expected([Shapes()[i] for i in range(6)])
    assert rank0 == rank1
    assert rank0["miou"] == pytest.approx(expected["miou"], abs=1e-9)
    assert rank0["overall_acc"] == pytest.approx(expected["overall_acc"], abs=1e-9)


def test_step_trains_on_digits_and_counts_labelled_pixels():
    torch.manual_seed(0)
    digits = digits_segmentation(0)
    images, target = pad_collate([digits.train[i] for i in range(8)])
    model = build_segmentation_model("deeplabv3plus_resnet18", num_classes=digits.num_classes)
    optimizer = torch.optim.SGD(param_groups(model, 0.05), lr=0.05, momentum=0.9)
    step = make_step(build_loss("cross_entropy"))
    losses = []
    for _ in range(6):
        result = step(model, (images, target))
        optimizer.zero_grad()
        result.loss.backward()
        optimizer.step()
        losses.append(result.loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert int(result.count) == int((target["mask"] != 255).sum())
    assert 0 <= int(result.correct) <= int(result.count)
    assert result.images == 8


def test_training_throughput_counts_images_not_pixels(monkeypatch):
    """train_images_per_s: the segmentation step counts labelled pixels for its loss and accuracy,
    and its images for the throughput (2 batches of 4 in 2 s: 4 images/s)."""
    import lth.engine as engine
    from lth.engine import train_one_epoch

    digits = digits_segmentation(0)
    batches = [pad_collate([digits.train[i] for i in range(start, start + 4)]) for start in (0, 4)]
    model = build_segmentation_model("deeplabv3plus_resnet18", num_classes=digits.num_classes)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    clock = iter([100.0, 102.0])
    monkeypatch.setattr(engine.time, "perf_counter", lambda: next(clock))
    out = train_one_epoch(model, batches, optimizer, None, CPU, FP32, print_freq=0,
                          step=make_step(build_loss("cross_entropy")))
    assert out["images_per_s"] == pytest.approx(4.0)
    assert 0 <= out["acc"] <= 100
