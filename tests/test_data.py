"""Tests for lth.data: on-disk readers on tiny fixtures in the real formats, batch transforms, TensorLoader."""

from __future__ import annotations

import os
import pickle
import socket
import struct
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
import torchvision.datasets.cifar
import torchvision.datasets.mnist
import torchvision.datasets.svhn
import torchvision.datasets.utils
import torchvision.transforms.functional as TF
from PIL import Image
from torchvision import transforms

import lth.data as data
from lth.data import DATASETS, TensorLoader, augment_batch, crop_flip, load_splits, normalize_batch, validation_count
from lth.errors import UserError

CIFAR10_BATCH_SIZE = 12  # five batches -> 60 training images -> 54 train / 6 val
CIFAR_TEST_SIZE = 10
MARKED_PIXEL = (2, 5, 7)  # (c, h, w) set to a sentinel in the first training image


# ---------------------------------------------------------------------------------------------
# Guards and fixture writers
# ---------------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def download_attempts(monkeypatch) -> list[str]:
    """Makes every download entry point and socket connect fail loudly and records that it was tried."""
    attempts: list[str] = []

    def refuse(name: str):
        def fail(*args, **kwargs):
            attempts.append(name)
            raise OSError(f"network access attempted via {name}")

        return fail

    for module in (torchvision.datasets.utils, torchvision.datasets.cifar, torchvision.datasets.mnist):
        if hasattr(module, "download_and_extract_archive"):
            monkeypatch.setattr(module, "download_and_extract_archive", refuse("download_and_extract_archive"))
    for module in (torchvision.datasets.utils, torchvision.datasets.svhn):
        monkeypatch.setattr(module, "download_url", refuse("download_url"))
    monkeypatch.setattr(socket.socket, "connect", refuse("socket.connect"))
    yield attempts
    assert attempts == [], f"unexpected network access: {attempts}"


def images_nchw(count: int, channels: int, size: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(count, channels, size, size), dtype=np.uint8)


def write_pickle(path: Path, content: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        pickle.dump(content, handle, protocol=2)


def cifar_rows(images: np.ndarray) -> np.ndarray:
    """Rows of 3072 bytes, channel-major (1024 R, 1024 G, 1024 B), as in the real batches."""
    return images.reshape(len(images), -1)


def write_cifar10(root: Path) -> tuple[np.ndarray, list[int], np.ndarray, list[int]]:
    folder = root / "cifar-10-batches-py"
    train_images = images_nchw(5 * CIFAR10_BATCH_SIZE, 3, 32, seed=1)
    train_images[0] = 0
    train_images[0][MARKED_PIXEL] = 251
    train_labels = [(3 * i + 1) % 10 for i in range(len(train_images))]
    for batch in range(5):
        rows = slice(batch * CIFAR10_BATCH_SIZE, (batch + 1) * CIFAR10_BATCH_SIZE)
        write_pickle(
            folder / f"data_batch_{batch + 1}",
            {"batch_label": f"training batch {batch + 1} of 5", "data": cifar_rows(train_images[rows]),
             "labels": train_labels[rows], "filenames": []},
        )
    test_images = images_nchw(CIFAR_TEST_SIZE, 3, 32, seed=2)
    test_labels = [i % 10 for i in range(CIFAR_TEST_SIZE)]
    write_pickle(folder / "test_batch", {"data": cifar_rows(test_images), "labels": test_labels})
    write_pickle(folder / "batches.meta", {"label_names": [f"class{i}" for i in range(10)], "num_cases_per_batch": 12})
    return train_images, train_labels, test_images, test_labels


def write_cifar100(root: Path) -> tuple[np.ndarray, list[int]]:
    folder = root / "cifar-100-python"
    train_images = images_nchw(60, 3, 32, seed=3)
    train_labels = [(7 * i) % 100 for i in range(60)]
    write_pickle(folder / "train", {"data": cifar_rows(train_images), "fine_labels": train_labels,
                                    "coarse_labels": [label // 5 for label in train_labels]})
    test_images = images_nchw(CIFAR_TEST_SIZE, 3, 32, seed=4)
    write_pickle(folder / "test", {"data": cifar_rows(test_images), "fine_labels": list(range(90, 100)),
                                   "coarse_labels": [18] * 10})
    write_pickle(folder / "meta", {"fine_label_names": [f"f{i}" for i in range(100)],
                                   "coarse_label_names": [f"c{i}" for i in range(20)]})
    return train_images, train_labels


def write_svhn(root: Path, n_train: int = 30, n_test: int = 7) -> np.ndarray:
    root.mkdir(parents=True, exist_ok=True)
    train_hwcn = np.random.default_rng(5).integers(0, 256, size=(32, 32, 3, n_train), dtype=np.uint8)
    train_labels = (np.arange(n_train) % 10 + 1).reshape(-1, 1).astype(np.uint8)  # 1..10, 10 = digit 0
    scipy.io.savemat(root / "train_32x32.mat", {"X": train_hwcn, "y": train_labels})
    test_hwcn = np.random.default_rng(6).integers(0, 256, size=(32, 32, 3, n_test), dtype=np.uint8)
    scipy.io.savemat(root / "test_32x32.mat", {"X": test_hwcn, "y": np.full((n_test, 1), 10, np.uint8)})
    return train_hwcn


def write_idx(path: Path, magic: int, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(f">I{array.ndim}I", magic, *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_fmnist(root: Path, n_train: int = 20, n_test: int = 5) -> np.ndarray:
    raw = root / "FashionMNIST" / "raw"
    train_images = np.random.default_rng(7).integers(0, 256, size=(n_train, 28, 28), dtype=np.uint8)
    write_idx(raw / "train-images-idx3-ubyte", 2051, train_images)
    write_idx(raw / "train-labels-idx1-ubyte", 2049, np.arange(n_train) % 10)
    write_idx(raw / "t10k-images-idx3-ubyte", 2051, np.zeros((n_test, 28, 28), np.uint8))
    write_idx(raw / "t10k-labels-idx1-ubyte", 2049, np.arange(n_test) % 10)
    return train_images


def assert_split_types(splits: data.Splits) -> None:
    spec = splits.spec
    pairs = ((splits.train_x, splits.train_y), (splits.val_x, splits.val_y), (splits.test_x, splits.test_y))
    for images, labels in pairs:
        assert images.dtype == torch.uint8 and labels.dtype == torch.int64
        assert images.is_contiguous()
        assert images.shape[1:] == (spec.in_channels, spec.image_size, spec.image_size)
        assert images.shape[0] == labels.shape[0] and labels.dim() == 1


# ---------------------------------------------------------------------------------------------
# Reading data sets
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "n_train, expected",
    [(50000, 5000), (60000, 5000), (73257, 5000), (49999, 4999), (1437, 143), (60, 6), (9, 1), (2, 1)],
)
def test_validation_count_rule(n_train, expected):
    assert validation_count(n_train) == expected


def test_cifar10_fixture_layout_split_and_checksum_warning(tmp_path, capsys):
    train_images, train_labels, test_images, test_labels = write_cifar10(tmp_path)
    splits = load_splits("cifar10", str(tmp_path))
    assert_split_types(splits)
    assert (len(splits.train_x), len(splits.val_x), len(splits.test_x)) == (54, 6, CIFAR_TEST_SIZE)
    assert splits.train_x[0][MARKED_PIXEL] == 251
    assert int(splits.train_x[0].sum()) == 251  # nothing else of that image got the sentinel
    assert torch.equal(splits.train_x, torch.from_numpy(train_images[:54]))
    assert torch.equal(splits.val_x, torch.from_numpy(train_images[54:]))  # last 10% of batches 1..5 in order
    assert splits.train_y.tolist() == train_labels[:54] and splits.val_y.tolist() == train_labels[54:]
    assert torch.equal(splits.test_x, torch.from_numpy(test_images)) and splits.test_y.tolist() == test_labels
    warning_lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warning_lines) == 1
    assert "cifar10" in warning_lines[0] and str(tmp_path) in warning_lines[0]


def test_cifar10_tolerates_missing_meta_file(tmp_path):
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "batches.meta").unlink()
    assert len(load_splits("cifar10", tmp_path).train_x) == 54


def test_cifar100_fixture_uses_fine_labels(tmp_path, capsys):
    train_images, train_labels = write_cifar100(tmp_path)
    splits = load_splits("cifar100", str(tmp_path))
    assert_split_types(splits)
    assert (len(splits.train_x), len(splits.val_x), len(splits.test_x)) == (54, 6, 10)
    assert torch.equal(splits.train_x, torch.from_numpy(train_images[:54]))
    assert splits.train_y.tolist() + splits.val_y.tolist() == train_labels
    assert splits.test_y.tolist() == list(range(90, 100))
    assert "warning: cifar100" in capsys.readouterr().err


def test_svhn_fixture_layout_and_label_ten_is_zero(tmp_path, capsys):
    train_hwcn = write_svhn(tmp_path)
    splits = load_splits("svhn", str(tmp_path))
    assert_split_types(splits)
    assert (len(splits.train_x), len(splits.val_x), len(splits.test_x)) == (27, 3, 7)
    assert torch.equal(splits.train_x[4, 1, 10, 20], torch.tensor(train_hwcn[10, 20, 1, 4]))
    assert torch.equal(splits.train_x, torch.from_numpy(train_hwcn.transpose(3, 2, 0, 1)[:27].copy()))
    assert splits.train_y[:10].tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 9, 0]
    assert splits.test_y.tolist() == [0] * 7
    assert "warning: svhn" in capsys.readouterr().err


def test_fmnist_fixture(tmp_path):
    train_images = write_fmnist(tmp_path)
    splits = load_splits("fmnist", str(tmp_path))
    assert_split_types(splits)
    assert (len(splits.train_x), len(splits.val_x), len(splits.test_x)) == (18, 2, 5)
    assert splits.train_x[3, 0, 27, 1] == int(train_images[3, 27, 1])
    assert torch.equal(splits.val_x[:, 0], torch.from_numpy(train_images[18:]))
    assert splits.train_y.tolist() == [i % 10 for i in range(18)] and splits.val_y.tolist() == [8, 9]


def test_digits_sizes_split_and_constants():
    from sklearn.datasets import load_digits

    first, second = load_splits("digits", None), load_splits("digits", "/ignored/path")
    assert_split_types(first)
    assert (len(first.train_x), len(first.val_x), len(first.test_x)) == (1294, 143, 360)
    for name in ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y"):
        assert torch.equal(getattr(first, name), getattr(second, name))
    everything = torch.cat([first.train_x, first.val_x, first.test_x]).float() / 255
    assert everything.min() == 0 and everything.max() == 1
    assert abs(everything.mean().item() - first.spec.mean[0]) < 1e-3
    assert abs(everything.std(unbiased=False).item() - first.spec.std[0]) < 1e-3
    order = np.random.default_rng(0).permutation(1797)
    assert first.test_y.tolist() == load_digits().target[order[:360]].tolist()


def test_every_spec_is_consistent():
    assert set(DATASETS) == {"cifar10", "cifar100", "svhn", "fmnist", "digits"}
    for name, spec in DATASETS.items():
        assert spec.name == name
        assert len(spec.mean) == len(spec.std) == spec.in_channels
        assert spec.augment in ("crop_flip", "none") and "\n" not in spec.layout


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------


def user_error_message(name: str, root, **kwargs) -> str:
    with pytest.raises(UserError) as caught:
        load_splits(name, root, **kwargs)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_unknown_name_lists_known_names():
    message = user_error_message("imagenet", "/tmp")
    assert "imagenet" in message and all(name in message for name in DATASETS)


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "svhn", "fmnist"])
def test_missing_or_empty_root_names_the_layout(tmp_path, name):
    layout = DATASETS[name].layout
    missing = tmp_path / "nowhere"
    assert layout in user_error_message(name, str(missing)) and str(missing) in user_error_message(name, str(missing))
    assert layout in user_error_message(name, str(tmp_path))  # empty folder
    a_file = tmp_path / "file.txt"
    a_file.write_text("not a folder")
    assert layout in user_error_message(name, str(a_file))
    assert "--data" in user_error_message(name, None)


def test_partial_cifar_folder_is_not_found(tmp_path):
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_4").unlink()
    assert DATASETS["cifar10"].layout in user_error_message("cifar10", tmp_path)


def test_truncated_cifar_pickle_names_the_file(tmp_path):
    write_cifar10(tmp_path)
    broken = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    broken.write_bytes(broken.read_bytes()[:500])
    assert str(broken) in user_error_message("cifar10", tmp_path)


def test_unparsable_svhn_mat_names_the_file(tmp_path):
    write_svhn(tmp_path)
    (tmp_path / "test_32x32.mat").write_bytes(b"this is not a MATLAB file")
    assert "test_32x32.mat" in user_error_message("svhn", tmp_path)


def test_fmnist_with_wrong_image_size_is_rejected(tmp_path):
    write_fmnist(tmp_path)
    write_idx(tmp_path / "FashionMNIST" / "raw" / "t10k-images-idx3-ubyte", 2051, np.zeros((5, 16, 16), np.uint8))
    assert "(N, 1, 28, 28)" in user_error_message("fmnist", tmp_path)


def test_download_failure_is_a_user_error(tmp_path, download_attempts):
    assert "download" in user_error_message("cifar10", tmp_path / "new", download=True)
    assert download_attempts  # the request did reach torchvision's downloader (here: refused)
    download_attempts.clear()


# ---------------------------------------------------------------------------------------------
# Batch transforms
# ---------------------------------------------------------------------------------------------


def torchvision_crop_flip(image_chw: torch.Tensor, top: int, left: int, flip: bool) -> torch.Tensor:
    pil = Image.fromarray(image_chw.permute(1, 2, 0).numpy())
    height, width = image_chw.shape[1:]
    result = TF.crop(TF.pad(pil, 4, fill=0), top, left, height, width)
    if flip:
        result = TF.hflip(result)
    return torch.from_numpy(np.asarray(result).copy()).permute(2, 0, 1)


def test_crop_flip_matches_torchvision_per_image():
    rng = np.random.default_rng(11)
    image = torch.from_numpy(rng.integers(0, 256, size=(3, 32, 32), dtype=np.uint8))
    choices = [(0, 0, False), (8, 8, True), (0, 8, True), (8, 0, False), (4, 4, False), (4, 4, True)]
    choices += [(int(rng.integers(9)), int(rng.integers(9)), bool(rng.integers(2))) for _ in range(14)]
    for top, left, flip in choices:
        ours = crop_flip(image[None], 4, torch.tensor([top]), torch.tensor([left]), torch.tensor([flip]))[0]
        assert torch.equal(ours, torchvision_crop_flip(image, top, left, flip)), (top, left, flip)


def test_crop_flip_batch_applies_each_sample_its_own_window():
    generator = torch.Generator().manual_seed(3)
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8, generator=generator)
    tops = torch.randint(0, 9, (16,), generator=generator)
    lefts = torch.randint(0, 9, (16,), generator=generator)
    flips = torch.rand(16, generator=generator) < 0.5
    batch = crop_flip(images, 4, tops, lefts, flips)
    assert batch.dtype == torch.uint8 and batch.shape == images.shape
    for i in range(16):
        assert torch.equal(batch[i], torchvision_crop_flip(images[i], int(tops[i]), int(lefts[i]), bool(flips[i])))
    as_float = crop_flip(images.float(), 4, tops, lefts, flips)
    assert torch.equal(as_float, batch.float())


def test_augment_draws_every_offset_and_flips_half_the_time(monkeypatch):
    drawn = {}

    def record(x, padding, tops, lefts, flips):
        drawn.update(padding=padding, tops=tops, lefts=lefts, flips=flips)
        return x

    monkeypatch.setattr(data, "crop_flip", record)
    images = torch.zeros(4000, 3, 2, 2, dtype=torch.uint8)
    augment_batch(images, DATASETS["cifar10"], torch.Generator().manual_seed(0))
    assert drawn["padding"] == 4
    for offsets in (drawn["tops"], drawn["lefts"]):
        assert offsets.dtype == torch.int64 and sorted(offsets.unique().tolist()) == list(range(9))
    assert drawn["flips"].dtype == torch.bool and 0.46 < drawn["flips"].float().mean().item() < 0.54


def test_augment_is_reproducible_and_normalised():
    spec = DATASETS["cifar10"]
    images = torch.randint(0, 256, (32, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    first = augment_batch(images, spec, torch.Generator().manual_seed(5))
    again = augment_batch(images, spec, torch.Generator().manual_seed(5))
    other = augment_batch(images, spec, torch.Generator().manual_seed(6))
    assert first.dtype == torch.float32 and torch.equal(first, again) and not torch.equal(first, other)
    grey = DATASETS["fmnist"]
    plain = torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8)
    assert torch.equal(augment_batch(plain, grey, torch.Generator()), normalize_batch(plain, grey))


@pytest.mark.parametrize("name", ["cifar10", "fmnist"])
def test_normalize_matches_to_tensor_and_normalize(name):
    spec = DATASETS[name]
    rng = np.random.default_rng(2)
    hwc = rng.integers(0, 256, size=(spec.image_size, spec.image_size, spec.in_channels), dtype=np.uint8)
    pil = Image.fromarray(hwc[:, :, 0] if spec.in_channels == 1 else hwc)
    reference = transforms.Normalize(spec.mean, spec.std)(transforms.ToTensor()(pil))
    ours = normalize_batch(torch.from_numpy(hwc).permute(2, 0, 1)[None].contiguous(), spec)[0]
    assert ours.dtype == torch.float32
    assert torch.allclose(ours, reference, rtol=0, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_augment_gives_the_same_result_on_cuda():
    spec = DATASETS["cifar10"]
    images = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    on_cpu = augment_batch(images, spec, torch.Generator().manual_seed(9))
    on_gpu = augment_batch(images.cuda(), spec, torch.Generator().manual_seed(9))
    assert torch.allclose(on_cpu, on_gpu.cpu(), rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# TensorLoader
# ---------------------------------------------------------------------------------------------


def numbered_set(count: int, size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Images whose label is their own index, so every yielded batch can be traced to its samples."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (count, 3, size, size), dtype=torch.uint8, generator=generator)
    return images, torch.arange(count)


def collect(loader: TensorLoader) -> tuple[list[torch.Tensor], list[int]]:
    inputs, labels = [], []
    for batch_inputs, batch_labels in loader:
        inputs.append(batch_inputs)
        labels.extend(batch_labels.tolist())
    return inputs, labels


def test_train_order_depends_only_on_seed_and_epoch():
    images, labels = numbered_set(40)
    spec = DATASETS["cifar10"]

    def loader() -> TensorLoader:
        return TensorLoader(images, labels, spec, 8, train=True, seed=3, device="cpu")

    first, second = loader(), loader()
    first.set_epoch(2)
    second.set_epoch(2)
    inputs_a, order_a = collect(first)
    inputs_b, order_b = collect(second)
    assert order_a == order_b and all(torch.equal(a, b) for a, b in zip(inputs_a, inputs_b))
    expected = torch.randperm(40, generator=torch.Generator().manual_seed(3 * 1_000_003 + 2)).tolist()
    assert order_a == expected
    second.set_epoch(3)
    assert collect(second)[1] != order_a
    second.set_epoch(2)
    assert collect(second)[1] == order_a  # resuming at an epoch replays it exactly
    for batch in inputs_a:
        assert batch.dtype == torch.float32 and batch.shape == (8, 3, 8, 8)


def test_eval_is_in_order_and_only_normalised():
    images, labels = numbered_set(10)
    spec = DATASETS["cifar10"]
    loader = TensorLoader(images, labels, spec, 4, train=False, seed=0, device="cpu")
    inputs, order = collect(loader)
    assert order == list(range(10)) and [len(batch) for batch in inputs] == [4, 4, 2]
    assert torch.equal(torch.cat(inputs), normalize_batch(images, spec))


def test_drop_last_defaults_to_train():
    images, labels = numbered_set(10)
    spec = DATASETS["svhn"]
    train = TensorLoader(images, labels, spec, 4, train=True, seed=0, device="cpu")
    assert len(train) == 2 and train.num_samples == 10 and len(collect(train)[1]) == 8
    keep = TensorLoader(images, labels, spec, 4, train=True, seed=0, device="cpu", drop_last=False)
    assert len(keep) == 3 and sorted(collect(keep)[1]) == list(range(10))
    evaluation = TensorLoader(images, labels, spec, 4, train=False, seed=0, device="cpu")
    assert len(evaluation) == 3
    dropping_eval = TensorLoader(images, labels, spec, 4, train=False, seed=0, device="cpu", drop_last=True)
    assert len(dropping_eval) == 2 and collect(dropping_eval)[1] == list(range(8))


def test_two_rank_train_shards_cover_the_padded_permutation():
    images, labels = numbered_set(11)
    spec = DATASETS["cifar10"]
    shards = []
    for rank in range(2):
        loader = TensorLoader(images, labels, spec, 3, train=True, seed=7, device="cpu", drop_last=False,
                              rank=rank, world_size=2)
        loader.set_epoch(1)
        assert loader.num_samples == 6 and len(loader) == 2
        shards.append(collect(loader)[1])
    permutation = torch.randperm(11, generator=torch.Generator().manual_seed(7 * 1_000_003 + 1)).tolist()
    padded = permutation + permutation[:1]
    assert shards[0] == padded[0::2] and shards[1] == padded[1::2]
    assert set(shards[0]) | set(shards[1]) == set(range(11))


def test_two_rank_eval_shards_are_disjoint_and_exact():
    images, labels = numbered_set(11)
    spec = DATASETS["cifar10"]
    shards = []
    for rank in range(2):
        loader = TensorLoader(images, labels, spec, 4, train=False, seed=0, device="cpu", rank=rank, world_size=2)
        shards.append(collect(loader)[1])
        assert loader.num_samples == len(shards[-1])
    assert (len(shards[0]), len(shards[1])) == (6, 5)
    assert not set(shards[0]) & set(shards[1])
    assert sorted(shards[0] + shards[1]) == list(range(11))


def test_channels_last_and_label_dtype():
    images, labels = numbered_set(6)
    loader = TensorLoader(images, labels.int(), DATASETS["cifar10"], 3, train=True, seed=0, device="cpu",
                          channels_last=True)
    for batch_inputs, batch_labels in loader:
        assert batch_inputs.is_contiguous(memory_format=torch.channels_last)
        assert batch_labels.dtype == torch.int64


def test_bad_batch_size_is_a_user_error():
    images, labels = numbered_set(4)
    with pytest.raises(UserError):
        TensorLoader(images, labels, DATASETS["cifar10"], 0, train=True, seed=0, device="cpu")
