"""Data sets kept as uint8 tensors on the training device, with batch-wise augmentation and loading."""

from __future__ import annotations

import math
import os
import pickle
import sys
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from lth.checkpoint import allocation_budget
from lth.errors import UserError


@dataclass(frozen=True)
class DatasetSpec:
    """Static facts about one data set: shape, normalisation constants, augmentation, disk layout."""

    name: str
    num_classes: int
    in_channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: str
    layout: str


DATASETS: dict[str, DatasetSpec] = {
    "cifar10": DatasetSpec(
        name="cifar10",
        num_classes=10,
        in_channels=3,
        image_size=32,
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2023, 0.1994, 0.2010),
        augment="crop_flip",
        layout="root/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}",
    ),
    "cifar100": DatasetSpec(
        name="cifar100",
        num_classes=100,
        in_channels=3,
        image_size=32,
        mean=(0.5071, 0.4866, 0.4409),
        std=(0.2009, 0.1984, 0.2023),
        augment="crop_flip",
        layout="root/cifar-100-python/{train,test,meta}",
    ),
    "svhn": DatasetSpec(
        name="svhn",
        num_classes=10,
        in_channels=3,
        image_size=32,
        mean=(0.4377, 0.4438, 0.4728),
        std=(0.1201, 0.1231, 0.1052),
        augment="none",
        layout="root/{train_32x32.mat,test_32x32.mat}",
    ),
    "fmnist": DatasetSpec(
        name="fmnist",
        num_classes=10,
        in_channels=1,
        image_size=28,
        mean=(0.1436,),
        std=(0.1609,),
        augment="none",
        layout="root/FashionMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte",
    ),
    # mean/std measured once over all 1,797 images as stored (uint8 / 255), population std.
    "digits": DatasetSpec(
        name="digits",
        num_classes=10,
        in_channels=1,
        image_size=8,
        mean=(0.3053,),
        std=(0.3759,),
        augment="none",
        layout="nothing: bundled with scikit-learn (--data is ignored)",
    ),
}

CROP_PADDING = 4
LARGE_VAL_COUNT = 5000
LARGE_TRAIN_THRESHOLD = 50000
DIGITS_COUNT = 1797  # scikit-learn's digits
DIGITS_TEST_COUNT = 360
DIGITS_MAX_VALUE = 16

# Files that must exist, relative to root, before reading from disk is attempted.
_REQUIRED_FILES: dict[str, tuple[str, ...]] = {
    "cifar10": tuple(
        os.path.join("cifar-10-batches-py", f)
        for f in ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch")
    ),
    "cifar100": (os.path.join("cifar-100-python", "train"), os.path.join("cifar-100-python", "test")),
    "svhn": ("train_32x32.mat", "test_32x32.mat"),
    "fmnist": tuple(
        os.path.join("FashionMNIST", "raw", f"{split}-{kind}-ubyte")
        for split in ("train", "t10k")
        for kind in ("images-idx3", "labels-idx1")
    ),
}


@dataclass
class Splits:
    """Train/validation/test tensors of one data set: images uint8 (N, C, H, W), labels int64 (N,)."""

    spec: DatasetSpec
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor


# ---------------------------------------------------------------------------------------------
# Loading from disk
# ---------------------------------------------------------------------------------------------


def validation_count(n_train: int) -> int:
    """How many of the last training images form the validation set.

    The full-size data sets (50,000 or more training images) hold out their last 5,000, as in the
    original code; smaller sets (digits, test fixtures) hold out their last 10%, at least one image.
    """
    if n_train >= LARGE_TRAIN_THRESHOLD:
        return LARGE_VAL_COUNT
    return max(1, n_train // 10)


def load_splits(name: str, root: str | os.PathLike | None, download: bool = False) -> Splits:
    """Read a data set into uint8 tensors and split its training set into train and validation."""
    spec = _spec_for(name)
    if name == "digits":
        train_pool_x, train_pool_y, test_x, test_y = _read_digits()
    else:
        root_dir = _checked_root(spec, root, download)
        train_pool_x, train_pool_y, test_x, test_y = _read_torchvision(spec, root_dir, download)
    _check_images(spec, train_pool_x, train_pool_y, "training set")
    _check_images(spec, test_x, test_y, "test set")
    n_train = len(train_pool_x)
    if n_train < 2:
        raise UserError(
            f"{name}: the training set has {n_train} image(s); at least 2 are needed to hold out a validation set"
        )
    n_fit = n_train - validation_count(n_train)
    return Splits(
        spec=spec,
        train_x=train_pool_x[:n_fit].contiguous(),
        train_y=train_pool_y[:n_fit].contiguous(),
        val_x=train_pool_x[n_fit:].contiguous(),
        val_y=train_pool_y[n_fit:].contiguous(),
        test_x=test_x.contiguous(),
        test_y=test_y.contiguous(),
    )


def _spec_for(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise UserError(f"unknown data set '{name}': choose one of {', '.join(sorted(DATASETS))}")
    return DATASETS[name]


def _not_found(spec: DatasetSpec, root: str) -> UserError:
    return UserError(
        f"{spec.name} data not found under '{root}': expected {spec.layout} (pass --download to fetch it)"
    )


def _checked_root(spec: DatasetSpec, root: str | os.PathLike | None, download: bool) -> str:
    if root is None:
        raise UserError(f"{spec.name} needs a data folder (--data) holding {spec.layout}")
    root_dir = os.fspath(root)
    if download:
        # torchvision creates the folder and fetches what is missing.
        return root_dir
    if not os.path.isdir(root_dir):
        raise _not_found(spec, root_dir)
    if _missing_files(spec.name, root_dir):
        raise _not_found(spec, root_dir)
    return root_dir


def _missing_files(name: str, root: str) -> list[str]:
    return [rel for rel in _REQUIRED_FILES[name] if not os.path.isfile(os.path.join(root, rel))]


def read_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 handwritten digits: ink (N, 8, 8) floats from 0 to ``DIGITS_MAX_VALUE``, labels int64.

    Read from the file ``sklearn.datasets.load_digits`` reads (``datasets/data/digits.csv.gz`` of the installed
    scikit-learn: 64 pixel columns then the label), without importing scikit-learn, whose import (with SciPy's)
    took about 1 s of CPU in every run on the digits; tests/test_demos.py checks that the arrays are
    load_digits' own. Falls back to load_digits if the file is not where it was."""
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    path = os.path.join(os.path.dirname(spec.origin), "datasets", "data", "digits.csv.gz") if spec else ""
    if not os.path.isfile(path):
        from sklearn.datasets import load_digits

        bunch = load_digits()
        return bunch.images, bunch.target.astype(np.int64)
    table = np.loadtxt(path, delimiter=",")
    return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(np.int64)


def digits_pixels(ink: np.ndarray) -> np.ndarray:
    """Digit ink as uint8 grey levels 0-255."""
    return np.round(ink * 255.0 / DIGITS_MAX_VALUE).astype(np.uint8)


def digits_split(blocks: Sequence[tuple[str, int | None]], seed: int | np.random.Generator = 0,
                 count: int = DIGITS_COUNT) -> dict[str, np.ndarray]:
    """The one digits splitter: disjoint index sets of the ``count`` digits, by name.

    The digits are permuted once (``np.random.default_rng(seed).permutation``; a Generator given as
    ``seed`` is drawn from and advanced) and the permutation is cut into consecutive blocks of the
    given sizes, in the order given; a size of None takes the rest. Tasks differ only in their
    blocks (kept as they were, so every digits result stays what it was): classification
    ``test 360, train rest`` (its validation set is then the train block's last 10 %, as for
    every data set), detection ``test 360, val 144, train rest``, segmentation ``val, test 15 %
    each, train rest`` drawn from the run's seed.
    """
    order = np.random.default_rng(seed).permutation(count)
    splits, start = {}, 0
    for name, size in blocks:
        end = count if size is None else start + size
        if end > count or name in splits:
            raise ValueError(f"digits blocks {list(blocks)} do not fit {count} digits once each")
        splits[name], start = order[start:end], end
    return splits


def _read_digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    ink, labels = read_digits()
    images = torch.from_numpy(digits_pixels(ink)).unsqueeze(1).contiguous()
    labels = torch.from_numpy(labels)
    # A fixed seed, not the run seed: every run must evaluate on the same held-out images.
    split = digits_split([("test", DIGITS_TEST_COUNT), ("train", None)], seed=0, count=len(images))
    test_idx, train_idx = torch.from_numpy(split["test"]), torch.from_numpy(split["train"])
    return images[train_idx], labels[train_idx], images[test_idx], labels[test_idx]


def _read_torchvision(
    spec: DatasetSpec, root: str, download: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Both splits, read by this module's own readers (never torchvision's unpickling of whatever
    lies in the folder); with ``download`` torchvision first fetches what is missing."""
    if download:
        _download(spec, root)
    train_x, train_y = _read_files(spec, root, train=True)
    test_x, test_y = _read_files(spec, root, train=False)
    if not _checksums_match(spec.name, root):
        print(
            f"warning: {spec.name} files under '{root}' do not match torchvision's checksums "
            "(a subset or modified copy?); reading them anyway",
            file=sys.stderr,
        )
    return train_x, train_y, test_x, test_y


def _torchvision_class(name: str) -> type:
    from torchvision import datasets

    classes = {
        "cifar10": datasets.CIFAR10,
        "cifar100": datasets.CIFAR100,
        "svhn": datasets.SVHN,
        "fmnist": datasets.FashionMNIST,
    }
    return classes[name]


def _download(spec: DatasetSpec, root: str) -> None:
    """torchvision's download: it fetches and verifies what is missing (and reads only files whose
    checksum matches the official one, as the original did)."""
    dataset_class = _torchvision_class(spec.name)
    for train in (True, False):
        try:
            if spec.name == "svhn":
                dataset_class(root, split="train" if train else "test", download=True)
            else:
                dataset_class(root, train=train, download=True)
        except Exception as error:  # noqa: BLE001 - network, disk and archive errors alike
            raise UserError(f"could not download or read {spec.name} under '{root}': "
                            f"{_one_line(f'{type(error).__name__}: {error}')}") from None


def _checksums_match(name: str, root: str) -> bool:
    """True when every file matches torchvision's md5 (Fashion-MNIST's extracted files have none)."""
    from torchvision.datasets.utils import check_integrity

    dataset_class = _torchvision_class(name)
    if name in ("cifar10", "cifar100"):
        pairs = [(os.path.join(root, dataset_class.base_folder, file), md5)
                 for file, md5 in dataset_class.train_list + dataset_class.test_list]
    elif name == "svhn":
        pairs = [(os.path.join(root, filename), md5) for _, filename, md5 in dataset_class.split_list.values()
                 if filename in ("train_32x32.mat", "test_32x32.mat")]
    else:
        return True
    return all(check_integrity(path, md5) for path, md5 in pairs)


def _read_files(spec: DatasetSpec, root: str, *, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, C, H, W) uint8 and labels of one split, every file read by a reader that cannot
    run code; a file that cannot be read is a ``UserError`` naming it."""
    parts = []
    for path, reader in _split_files(spec.name, root, train):
        try:
            parts.append(reader(path))
        except UserError as error:
            raise UserError(f"cannot read {spec.name} file '{path}' (expected layout {spec.layout}): {error}") from None
        except Exception as error:  # noqa: BLE001 - corrupt files fail in many ways
            reason = _one_line(f"{type(error).__name__}: {error}")
            raise UserError(f"cannot read {spec.name} file '{path}' (expected layout {spec.layout}): "
                            f"{reason}") from None
    if spec.name == "fmnist":
        (images, _), (labels, _) = parts
        return images, labels
    return torch.cat([images for images, _ in parts]), torch.cat([labels for _, labels in parts])


def _split_files(name: str, root: str, train: bool) -> list[tuple[str, Callable[[str], tuple]]]:
    split_prefix = "train" if train else "t10k"
    split_word = "train" if train else "test"
    if name == "cifar10":
        relative = list(_REQUIRED_FILES[name][:5] if train else _REQUIRED_FILES[name][5:])
        return [(os.path.join(root, rel), lambda path: _read_cifar_batch(path, "labels")) for rel in relative]
    if name == "cifar100":
        path = os.path.join(root, "cifar-100-python", split_word)
        return [(path, lambda path: _read_cifar_batch(path, "fine_labels"))]
    if name == "svhn":
        return [(os.path.join(root, f"{split_word}_32x32.mat"), _read_svhn_mat)]
    raw = os.path.join(root, "FashionMNIST", "raw")
    return [(os.path.join(raw, f"{split_prefix}-images-idx3-ubyte"), _read_idx_images),
            (os.path.join(raw, f"{split_prefix}-labels-idx1-ubyte"), _read_idx_labels)]


# ---------------------------------------------------------------------------------------------
# CIFAR batches: pickles read without running code
# ---------------------------------------------------------------------------------------------

# A CIFAR batch is a pickled dict of str/bytes keys, lists of ints and names, and one numpy array
# of bytes. The unpickler below builds exactly that and refuses every other global, so a batch file
# that would create a file or start a process when unpickled is an error, whatever its checksum
# (torchvision unpickles it fully once its checksum fails and it is read "anyway"). Subsets and
# modified copies, which fail the checksum, keep working without a trust flag.


class _CheckedArray(np.ndarray):
    """What a pickled ndarray is rebuilt into here: its state must be plain numbers in bytes."""

    def __setstate__(self, state):
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise pickle.UnpicklingError("an array with an unexpected state")
        dtype, raw = state[-3], state[-1]
        _check_plain_dtype(dtype)
        if not isinstance(raw, (bytes, bytearray, str)):
            raise pickle.UnpicklingError("an array whose data are Python objects")
        super().__setstate__(state)


def _check_plain_dtype(dtype) -> np.dtype:
    if not isinstance(dtype, np.dtype) or dtype.hasobject or dtype.kind not in "biuf" or dtype.itemsize > 8 \
            or dtype.fields is not None or dtype.subdtype is not None:
        raise pickle.UnpicklingError(f"an array of type {dtype!r} (only numbers are read)")
    return dtype


def _reconstruct(subtype, shape, typecode):
    if subtype is not np.ndarray or math.prod(tuple(shape)) != 0:
        raise pickle.UnpicklingError("an array rebuilt in an unexpected way")
    return np.ndarray.__new__(_CheckedArray, (0,), np.uint8)


def _frombuffer(buffer, dtype, shape, order):
    _check_plain_dtype(dtype)
    if not isinstance(buffer, (bytes, bytearray)) or order not in ("C", "F"):
        raise pickle.UnpicklingError("an array whose data are not plain bytes")
    return np.frombuffer(buffer, dtype=dtype).reshape(shape, order=order).copy()


def _dtype(spec, *flags):
    return _check_plain_dtype(np.dtype(spec, *flags))


def _latin1(text, encoding="latin1"):
    if not isinstance(text, str) or encoding.lower().replace("_", "-") not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("an encoded string other than latin-1 text")
    return text.encode("latin1")


_CIFAR_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _dtype,
    ("_codecs", "encode"): _latin1,
}


class _CifarUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _CIFAR_GLOBALS:
            return _CIFAR_GLOBALS[(module, name)]
        raise pickle.UnpicklingError(f"it holds the Python object '{module}.{name}', which a CIFAR batch "
                                     f"never does; it is not read (loading it could run code)")

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("it refers to external objects, which a CIFAR batch never does")


def _read_cifar_batch(path: str, label_key: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 3, 32, 32) uint8 and labels of one CIFAR batch file."""
    with open(path, "rb") as handle:
        try:
            entry = _CifarUnpickler(handle, encoding="latin1").load()
        except pickle.UnpicklingError as error:
            raise UserError(str(error)) from None
    if not isinstance(entry, dict) or "data" not in entry or label_key not in entry:
        found = ", ".join(map(str, list(entry)[:6])) if isinstance(entry, dict) else type(entry).__name__
        raise UserError(f"expected a dict with 'data' and '{label_key}', found {found}")
    images = np.asarray(entry["data"]).view(np.ndarray)
    if images.dtype != np.uint8 or images.ndim != 2 or images.shape[1] != 3 * 32 * 32:
        raise UserError(f"'data' is a {images.dtype} array of shape {images.shape}; expected uint8 (N, 3072)")
    labels = entry[label_key]
    if not isinstance(labels, (list, tuple, np.ndarray)) or len(labels) != len(images):
        raise UserError(f"'{label_key}' does not give one label per image ({len(images)} images)")
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu":
        raise UserError(f"'{label_key}' holds {labels.dtype} values, not integer labels")
    return (torch.from_numpy(images.reshape(-1, 3, 32, 32).copy()),
            torch.from_numpy(labels.astype(np.int64)).reshape(-1))


# ---------------------------------------------------------------------------------------------
# SVHN .mat files and Fashion-MNIST idx files (plain parsers: neither can run code)
# ---------------------------------------------------------------------------------------------


def _read_svhn_mat(path: str) -> tuple[torch.Tensor, torch.Tensor]:
    """X (32, 32, 3, N) uint8 and y (N, 1) of a MATLAB file, checked from its headers first: a
    cell or struct array, or a compressed variable that would take more memory than its file
    allows (``lth.checkpoint.allocation_budget``), is refused before it is read."""
    import scipy.io

    variables = {name: (shape, kind) for name, shape, kind in scipy.io.whosmat(path)}
    for name in ("X", "y"):
        if name not in variables:
            raise UserError(f"it has no variable '{name}' (found {', '.join(variables) or 'none'})")
        shape, kind = variables[name]
        if kind in ("cell", "struct", "object", "function_handle", "opaque", "sparse", "char"):
            raise UserError(f"variable '{name}' is a MATLAB {kind} array; expected numbers")
    shape = variables["X"][0]
    if len(shape) != 4 or tuple(shape[:3]) != (32, 32, 3):
        raise UserError(f"variable 'X' has shape {shape}; expected (32, 32, 3, N)")
    declared = 8 * (math.prod(shape) + math.prod(variables["y"][0]))
    if declared > allocation_budget(os.path.getsize(path)):
        raise UserError(f"its variables would take {declared / 2**20:,.0f} MB from a "
                        f"{os.path.getsize(path):,}-byte file: a corrupt or crafted file")
    contents = scipy.io.loadmat(path, variable_names=["X", "y"])
    images, labels = contents["X"], contents["y"]
    for name, array in (("X", images), ("y", labels)):
        if not isinstance(array, np.ndarray) or array.dtype.hasobject or array.dtype.kind not in "biuf":
            raise UserError(f"variable '{name}' holds {getattr(array, 'dtype', type(array).__name__)} values; "
                            f"expected numbers")
    if images.dtype != np.uint8:
        raise UserError(f"variable 'X' is {images.dtype}; expected uint8 pixels")
    labels = labels.astype(np.int64).reshape(-1)
    if len(labels) != images.shape[3]:
        raise UserError(f"{images.shape[3]} images but {len(labels)} labels")
    labels[labels == 10] = 0  # SVHN stores the digit 0 as label 10 (torchvision's rule)
    return torch.from_numpy(np.ascontiguousarray(images.transpose(3, 2, 0, 1))), torch.from_numpy(labels)


def _read_idx_images(path: str) -> tuple[torch.Tensor, None]:
    from torchvision.datasets.mnist import read_image_file

    return read_image_file(path).unsqueeze(1), None  # (N, H, W) grey


def _read_idx_labels(path: str) -> tuple[torch.Tensor, None]:
    from torchvision.datasets.mnist import read_label_file

    return read_label_file(path).to(torch.int64).reshape(-1), None


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _check_images(spec: DatasetSpec, images: torch.Tensor, labels: torch.Tensor, what: str) -> None:
    expected = (spec.in_channels, spec.image_size, spec.image_size)
    if images.dim() != 4 or tuple(images.shape[1:]) != expected:
        expected_text = ", ".join(map(str, expected))
        raise UserError(f"{spec.name} {what}: images have shape {tuple(images.shape)}, expected (N, {expected_text})")
    if len(images) != len(labels):
        raise UserError(f"{spec.name} {what}: {len(images)} images but {len(labels)} labels")
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= spec.num_classes):
        raise UserError(f"{spec.name} {what}: labels outside 0..{spec.num_classes - 1}")


# ---------------------------------------------------------------------------------------------
# Batch transforms on the device
# ---------------------------------------------------------------------------------------------


def normalize_batch(x: torch.Tensor, spec: DatasetSpec) -> torch.Tensor:
    """uint8 images (..., C, H, W) -> float32 ``(x / 255 - mean) / std``, as ToTensor + Normalize."""
    mean = torch.tensor(spec.mean, dtype=torch.float32, device=x.device).view(-1, 1, 1)
    std = torch.tensor(spec.std, dtype=torch.float32, device=x.device).view(-1, 1, 1)
    return x.to(torch.float32).div(255).sub_(mean).div_(std)


def crop_flip(
    x: torch.Tensor, padding: int, tops: torch.Tensor, lefts: torch.Tensor, flips: torch.Tensor
) -> torch.Tensor:
    """Zero-pad each image by ``padding``, crop its H x W window at (tops[i], lefts[i]), mirror where flips[i].

    Equals torchvision's ``hflip(crop(pad(img, padding, fill=0), top, left, H, W))`` per sample.
    """
    batch, channels, height, width = x.shape
    padded_width = width + 2 * padding
    padded = F.pad(x, (padding, padding, padding, padding))
    rows = tops.view(-1, 1) + torch.arange(height, device=x.device)
    cols = lefts.view(-1, 1) + torch.arange(width, device=x.device)
    cols = torch.where(flips.view(-1, 1), cols.flip(1), cols)
    # One gather over flattened pixels is several times faster on CPU than 4-way advanced indexing.
    flat_index = (rows.unsqueeze(2) * padded_width + cols.unsqueeze(1)).view(batch, 1, height * width)
    flat_pixels = padded.reshape(batch, channels, -1)
    picked = flat_pixels.gather(2, flat_index.expand(batch, channels, height * width))
    return picked.view(batch, channels, height, width)


def augment_batch(x: torch.Tensor, spec: DatasetSpec, generator: torch.Generator) -> torch.Tensor:
    """Training-time transform of a uint8 batch: the spec's augmentation, then normalisation.

    Random draws come from a CPU generator so that one seed gives the same crops on every device.
    """
    if spec.augment == "crop_flip":
        batch = x.shape[0]
        offsets = 2 * CROP_PADDING + 1
        tops = torch.randint(0, offsets, (batch,), generator=generator)
        lefts = torch.randint(0, offsets, (batch,), generator=generator)
        flips = torch.rand(batch, generator=generator) < 0.5
        x = crop_flip(x, CROP_PADDING, tops.to(x.device), lefts.to(x.device), flips.to(x.device))
    elif spec.augment != "none":
        raise ValueError(f"unknown augmentation '{spec.augment}' in the spec of {spec.name}")
    return normalize_batch(x, spec)


# ---------------------------------------------------------------------------------------------
# Loader
# ---------------------------------------------------------------------------------------------

_EPOCH_SEED_STRIDE = 1_000_003
_AUGMENT_SEED_OFFSET = 500_009


class TensorLoader:
    """Batches from a data set held whole on the device; order and augmentation depend only on (seed, epoch).

    Sharding across ranks follows torch's DistributedSampler for training (every rank sees the same
    number of samples, padded by repeating the start) but is unpadded for evaluation, so that summed
    counts over ranks are exact.
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        spec: DatasetSpec,
        batch_size: int,
        *,
        train: bool,
        seed: int,
        device: torch.device | str,
        drop_last: bool | None = None,
        rank: int = 0,
        world_size: int = 1,
        channels_last: bool = False,
    ) -> None:
        if batch_size < 1:
            raise UserError(f"batch size must be at least 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside 0..{world_size - 1}")
        if len(x) != len(y):
            raise ValueError(f"{len(x)} images but {len(y)} labels")
        if train and len(x) == 0:
            raise UserError(f"{spec.name}: the training set is empty")
        self.device = torch.device(device)
        self.x = x.to(self.device)
        self.y = y.to(self.device, torch.int64)
        self.spec = spec
        self.batch_size = batch_size
        self.train = train
        self.seed = seed
        self.drop_last = train if drop_last is None else drop_last
        self.rank = rank
        self.world_size = world_size
        self.channels_last = channels_last
        self.epoch = 0
        self.num_samples = self._count_samples(len(x))

    def _count_samples(self, total: int) -> int:
        if self.train:
            return math.ceil(total / self.world_size)
        return len(range(self.rank, total, self.world_size))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_samples // self.batch_size
        return math.ceil(self.num_samples / self.batch_size)

    def _epoch_generator(self, offset: int) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed * _EPOCH_SEED_STRIDE + self.epoch + offset)

    def _shard_indices(self) -> torch.Tensor:
        total = len(self.x)
        if not self.train:
            return torch.arange(self.rank, total, self.world_size)
        order = torch.randperm(total, generator=self._epoch_generator(0))
        padded_total = self.num_samples * self.world_size
        repeats = math.ceil(padded_total / total)
        return order.repeat(repeats)[:padded_total][self.rank :: self.world_size]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        indices = self._shard_indices().to(self.device)
        augment_generator = self._epoch_generator(_AUGMENT_SEED_OFFSET) if self.train else None
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            batch_indices = indices[start : start + self.batch_size]
            images = self.x[batch_indices]
            if augment_generator is not None:
                inputs = augment_batch(images, self.spec, augment_generator)
            else:
                inputs = normalize_batch(images, self.spec)
            if self.channels_last:
                inputs = inputs.contiguous(memory_format=torch.channels_last)
            yield inputs, self.y[batch_indices]
