"""Bad files and bad values end in one line, a non-zero exit and nothing written (issue 18).

One block per family: malformed tickets and mask files; data folders that could run code; resuming
after a half-written log line or run.json; bad images, unwritable folders, a full disk and
nonsensical flag values; memory bombs inside the checkpoint allow-list; the side effects of
refused runs.
"""

import errno
import io
import json
import os
import pickle
import stat
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import scipy.io
import torch
import torch.nn as nn
from PIL import Image

import main_eval_downstream
import main_imp_downstream
import main_imp_imagenet
from lth import checkpoint as checkpoint_module
from lth import cli, data, imagedata, pruning, tickets, trainer
from lth.checkpoint import load_file
from lth.distributed import Context
from lth.errors import UserError
from lth.loaders import DeviceLoader
from lth.models import build_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIGITS = ["--dataset", "digits", "--arch", "resnet18_w16", "--epochs", "1", "--batch_size", "256", "--seed", "0",
          "--print_freq", "0"]
CPU = Context(device=torch.device("cpu"))


def run_main(module_or_main, argv, capsys, parser=None):
    """``cli.run_main`` in this process: (exit status, the stderr lines that are not notices or
    warnings; progress lines such as "training ...: 100% of conv weights remain" are kept)."""
    main = getattr(module_or_main, "main", module_or_main)
    parser = parser or module_or_main.get_args_parser()
    capsys.readouterr()
    try:
        cli.run_main(main, parser, [str(arg) for arg in argv])
        code = 0
    except SystemExit as stop:
        code = stop.code
    err = capsys.readouterr().err
    return code, [line for line in err.splitlines() if line.strip() and not line.startswith(("notice:", "warning:"))]


def assert_one_line(code, lines, *needles):
    """Exit status 2, exactly one ``error:`` line naming every needle, and no traceback."""
    assert code == 2, lines
    errors = [line for line in lines if "error" in line.lower() or "traceback" in line.lower()]
    assert len(errors) == 1 and errors[0].startswith("error: "), lines
    for needle in needles:
        assert str(needle) in errors[0], (needle, errors[0])
    return errors[0]


def tree(path):
    """Every file under ``path`` with its bytes: what a refused run must leave as it was."""
    out = {}
    for folder, _, files in os.walk(path):
        for name in files:
            full = os.path.join(folder, name)
            with open(full, "rb") as handle:
                out[os.path.relpath(full, path)] = handle.read()
    return out


class CreatesFile:
    """Unpickling this creates ``path``: what a malicious data or checkpoint file would do, harmlessly."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (os.open, (self.path, os.O_CREAT | os.O_WRONLY))


# ------------------------------------------------------------------------------------------------
# 1. Malformed tickets and mask files: one line naming the file and the layer, never a wrong mask
# ------------------------------------------------------------------------------------------------

LAYER = "layer1.0.conv1.weight_mask"


@pytest.fixture(scope="module")
def good_ticket(tmp_path_factory):
    """A 50 % ticket of the digits ResNet-18 (conv weights alternately kept), as saved by save_ticket."""
    masks = pruning.current_masks(build_model("resnet18_w16", 10, 1, "cifar"))
    masks = {key: (torch.arange(mask.numel()) % 2).float().reshape(mask.shape) for key, mask in masks.items()}
    path = tmp_path_factory.mktemp("ticket") / "ticket_03.pt"
    tickets.save_ticket(str(path), masks, round=3, arch="resnet18_w16", dataset="digits")
    return path


def _half(obj):
    obj["bits"][LAYER] = obj["bits"][LAYER][: obj["bits"][LAYER].numel() // 2].clone()


def _empty(obj):
    obj["bits"][LAYER] = torch.empty(0, dtype=torch.uint8)


def _wrong_dtype(obj):
    obj["bits"][LAYER] = obj["bits"][LAYER].to(torch.int32)


def _two_d(obj):
    obj["bits"][LAYER] = obj["bits"][LAYER].reshape(1, -1)


def _padding_bits(obj):
    obj["shapes"][LAYER] = [obj["shapes"][LAYER][0] * obj["shapes"][LAYER][1] * 9 - 3]
    obj["bits"][LAYER] = torch.full(((obj["shapes"][LAYER][0] + 7) // 8,), 255, dtype=torch.uint8)


CORRUPTIONS = {
    "bits cut to half": (_half, [LAYER, "needs"]),
    "empty bits": (_empty, [LAYER, "has 0"]),
    "bits of int32": (_wrong_dtype, [LAYER, "uint8"]),
    "bits 2-D": (_two_d, [LAYER, "1-D"]),
    "bits set past the weights": (_padding_bits, [LAYER, "past"]),
    "no bits": (lambda obj: obj.pop("bits"), ["'bits'"]),
    "no shapes": (lambda obj: obj.pop("shapes"), ["'shapes'"]),
    "a layer without shape": (lambda obj: obj["shapes"].pop(LAYER), [LAYER, "no shape"]),
    "a layer without bits": (lambda obj: obj["bits"].pop(LAYER), [LAYER, "no bits"]),
    "shape of strings": (lambda obj: obj["shapes"].__setitem__(LAYER, ["64", "64"]), [LAYER, "shape"]),
    "meta a list": (lambda obj: obj.__setitem__("meta", [1, 2]), ["'meta'"]),
    "version None": (lambda obj: obj.__setitem__("version", None), ["version"]),
    "version a string": (lambda obj: obj.__setitem__("version", "1"), ["version"]),
    "version True": (lambda obj: obj.__setitem__("version", True), ["version"]),
    "version from the future": (lambda obj: obj.__setitem__("version", 99), ["version 99"]),
}


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_a_malformed_ticket_is_one_line_naming_file_and_layer(good_ticket, tmp_path, capsys, name):
    corrupt, needles = CORRUPTIONS[name]
    obj = load_file(str(good_ticket))
    corrupt(obj)
    path = tmp_path / "bad_ticket.pt"
    torch.save(obj, path)
    with pytest.raises(UserError) as caught:
        tickets.read_masks(str(path))
    message = str(caught.value)
    assert "\n" not in message and str(path) in message
    assert all(needle in message for needle in needles), message
    code, lines = run_main(tickets, ["show", path], capsys)
    assert_one_line(code, lines, path)


@pytest.mark.parametrize("value", [2.0, -1.0, 0.5, float("nan")])
def test_a_mask_file_holding_values_other_than_0_and_1_is_refused(tmp_path, value):
    masks = pruning.current_masks(build_model("resnet18_w16", 10, 1, "cifar"))
    masks[LAYER] = masks[LAYER].clone()
    masks[LAYER][0, 0, 0, 0] = value
    path = tmp_path / "mask-3.pt"
    torch.save(masks, path)
    with pytest.raises(UserError) as caught:
        tickets.read_masks(str(path))
    message = str(caught.value)
    assert str(path) in message and LAYER in message and "0 and 1" in message
    model = build_model("resnet18_w16", 10, 1, "cifar")  # the backstop every mask passes through
    with pytest.raises(UserError, match=LAYER):
        pruning.apply_mask(model, masks)


@pytest.mark.parametrize("bad", [torch.empty(0), "a string", torch.zeros(3, dtype=torch.complex64)],
                         ids=["empty tensor", "not a tensor", "complex"])
def test_a_mask_file_with_an_entry_that_is_no_mask_is_refused(tmp_path, bad):
    masks = pruning.current_masks(build_model("resnet18_w16", 10, 1, "cifar"))
    masks[LAYER] = bad
    path = tmp_path / "mask.pt"
    torch.save(masks, path)
    with pytest.raises(UserError, match=LAYER):
        tickets.read_masks(str(path))


def test_a_script_refuses_a_half_ticket_before_writing_anything(good_ticket, tmp_path, capsys):
    obj = load_file(str(good_ticket))
    _half(obj)
    bad = tmp_path / "half.pt"
    torch.save(obj, bad)
    out = tmp_path / "run"
    code, lines = run_main(main_eval_downstream, [*DIGITS, "--mask_dir", bad, "--save_dir", out], capsys)
    assert_one_line(code, lines, bad, LAYER)
    assert not out.exists()


def test_a_good_ticket_still_reads_exactly(good_ticket):
    masks, meta = tickets.read_masks(str(good_ticket))
    assert meta["round"] == 3 and meta["remaining"] == pytest.approx(50.0)
    assert torch.equal(masks[LAYER].flatten(), (torch.arange(masks[LAYER].numel()) % 2).float())


# ------------------------------------------------------------------------------------------------
# 2. A data folder cannot run code
# ------------------------------------------------------------------------------------------------

def write_cifar10(root, n=12, protocol=2):
    """A CIFAR-10 folder in the real layout (a subset: its checksums do not match)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        content = {"batch_label": name, "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                   "labels": [i % 10 for i in range(n)], "filenames": [f"{i}.png" for i in range(n)]}
        with open(folder / name, "wb") as handle:
            pickle.dump(content, handle, protocol=protocol)
    return folder


def python2_cifar_batch(images: np.ndarray, labels: list[int]) -> bytes:
    """The bytes cPickle (protocol 2) of Python 2 writes for a real CIFAR batch: str keys as
    SHORT_BINSTRING, the array through numpy.core.multiarray._reconstruct with its raw data as a
    Python 2 str, the dtype through numpy.dtype with a BUILD."""
    def short(text: bytes) -> bytes:
        return b"U" + bytes([len(text)]) + text
    raw = images.tobytes()
    out = b"\x80\x02}q\x00(" + short(b"data")
    out += b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85" + short(b"b") + b"\x87R"
    out += b"(K\x01" + b"M" + len(images).to_bytes(2, "little") + b"M\x00\x0c\x86"
    out += b"cnumpy\ndtype\n" + short(b"u1") + b"K\x00K\x01\x87R"
    out += b"(K\x03" + short(b"|") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
    out += b"\x89T" + len(raw).to_bytes(4, "little") + raw + b"tb"
    out += short(b"labels") + b"](" + b"".join(b"K" + bytes([label]) for label in labels) + b"e"
    out += short(b"batch_label") + short(b"training batch 1 of 5") + b"u."
    return out


def test_a_real_format_python2_cifar_batch_is_read(tmp_path):
    folder = write_cifar10(tmp_path)
    images = np.random.default_rng(3).integers(0, 256, (12, 3072), dtype=np.uint8)
    (folder / "data_batch_1").write_bytes(python2_cifar_batch(images, [7] * 12))
    splits = data.load_splits("cifar10", tmp_path)
    assert torch.equal(splits.train_x[:12], torch.from_numpy(images.reshape(12, 3, 32, 32)))
    assert splits.train_y[:12].tolist() == [7] * 12


@pytest.mark.parametrize("protocol", [2, 5])
def test_cifar_batches_of_any_pickle_protocol_read_alike(tmp_path, protocol):
    write_cifar10(tmp_path / "p", protocol=protocol)
    write_cifar10(tmp_path / "q", protocol=2)
    a, b = data.load_splits("cifar10", tmp_path / "p"), data.load_splits("cifar10", tmp_path / "q")
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y)


def test_a_cifar_batch_that_would_run_code_is_refused_and_nothing_runs(tmp_path, capsys):
    folder = write_cifar10(tmp_path / "data")
    marker = tmp_path / "created_by_data_batch_1"
    with open(folder / "data_batch_1", "wb") as handle:
        pickle.dump({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 1], "x": CreatesFile(marker)},
                    handle, protocol=2)
    out = tmp_path / "run"
    code, lines = run_main(main_imp_downstream, ["--dataset", "cifar10", "--data", tmp_path / "data",
                                                 "--arch", "resnet18_w16", "--save_dir", out, "--seed", "0"], capsys)
    assert_one_line(code, lines, folder / "data_batch_1", "open")
    assert not marker.exists() and not out.exists()


@pytest.mark.parametrize("payload", ["object array", "numpy.load", "eval"])
def test_other_objects_in_a_cifar_batch_are_refused(tmp_path, payload):
    folder = write_cifar10(tmp_path)
    content = {"data": np.zeros((2, 3072), np.uint8), "labels": [0, 1]}
    if payload == "object array":
        content["data"] = np.array([[None] * 3072] * 2, dtype=object)
    elif payload == "numpy.load":
        content["extra"] = np.load  # a global outside the allow-list
    else:
        content["extra"] = eval
    with open(folder / "test_batch", "wb") as handle:
        pickle.dump(content, handle, protocol=2)
    with pytest.raises(UserError, match="test_batch"):
        data.load_splits("cifar10", tmp_path)


def test_an_svhn_file_holding_a_cell_array_is_refused(tmp_path):
    root = tmp_path
    x = np.zeros((32, 32, 3, 4), np.uint8)
    scipy.io.savemat(root / "train_32x32.mat", {"X": x, "y": np.ones((4, 1), np.uint8)})
    cells = np.empty((4, 1), dtype=object)
    cells[:, 0] = ["a", "b", "c", "d"]
    scipy.io.savemat(root / "test_32x32.mat", {"X": x, "y": cells})
    with pytest.raises(UserError, match="test_32x32.mat.*cell"):
        data.load_splits("svhn", root)


# ------------------------------------------------------------------------------------------------
# 3. --resume after a half-written log line and a truncated run.json
# ------------------------------------------------------------------------------------------------

class Interrupted(Exception):
    pass


EVAL_FAST = ["--dataset", "digits", "--arch", "resnet18_w16", "--epochs", "2", "--batch_size", "256", "--seed", "0",
             "--print_freq", "0", "--decreasing_lr", "1"]


@pytest.fixture(scope="module")
def interrupted_template(module_tmp, one_thread):
    """main_eval_downstream killed during its second epoch: epoch 0's checkpoint and log line exist."""
    out = module_tmp("interrupted") / "run"
    real = trainer.train_one_epoch
    calls = []

    def dies_on_second_epoch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise Interrupted()
        return real(*args, **kwargs)

    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setattr(trainer, "train_one_epoch", dies_on_second_epoch)
        with pytest.raises(Interrupted):
            main_eval_downstream.main(main_eval_downstream.get_args_parser().parse_args(
                [*EVAL_FAST, "--save_dir", str(out)]))
    return out


@pytest.fixture
def interrupted_run(interrupted_template, tmp_path):
    """A copy of the interrupted run for one test to damage and resume."""
    import shutil

    return shutil.copytree(interrupted_template, tmp_path / "run")


def test_resume_drops_a_half_written_line_and_survives_a_truncated_run_json(interrupted_run, capsys):
    out = interrupted_run
    with open(out / "metrics.jsonl", "a") as handle:
        handle.write('{"round": 0, "epoch": 1, "val_a')  # a kill during the append
    truncated = (out / "run.json").read_text()[:150]
    (out / "run.json").write_text(truncated)
    stale = out / ".tmp-interrupted.pt"
    stale.write_bytes(b"\0" * 4096)  # a kill during a checkpoint write
    code, lines = run_main(main_eval_downstream, [*EVAL_FAST, "--save_dir", out, "--resume"], capsys)
    assert code == 0, lines
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(row["round"], row["epoch"]) for row in rows] == [(0, 0), (0, 1)]
    record = json.loads((out / "run.json").read_text())
    assert record["args"]["seed"] == 0 and "unreadable" in record["note"]
    assert (out / "run.json.damaged").read_text() == truncated
    assert not stale.exists()


def test_a_refused_resume_changes_nothing(interrupted_run, capsys):
    out = interrupted_run
    stale = out / ".tmp-interrupted.pt"
    stale.write_bytes(b"\0" * 16)
    before = tree(out)
    code, lines = run_main(main_eval_downstream, [*EVAL_FAST, "--lr", "0.5", "--save_dir", out, "--resume"], capsys)
    assert_one_line(code, lines, "--lr")
    assert tree(out) == before  # run.json not extended, the temp file left to an accepted resume


def test_a_damaged_line_that_is_not_the_last_is_one_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"epoch": 0}\n{"epo\n{"epoch": 1}\n')
    with pytest.raises(UserError, match="line 2"):
        checkpoint_module.read_jsonl(str(path))


def test_appending_after_a_half_written_line_drops_it(tmp_path, capsys):
    path = tmp_path / "summary.jsonl"
    path.write_text('{"round": 0}\n{"round": 1, "rem')
    checkpoint_module.append_jsonl({"round": 1}, str(path))
    assert path.read_text() == '{"round": 0}\n{"round": 1}\n'
    assert "half-written" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------
# 4. No tracebacks: bad images, unwritable folders, a full disk, nonsensical flag values
# ------------------------------------------------------------------------------------------------

def bad_image_bytes(kind: str, good: bytes) -> bytes:
    return {"empty": b"", "truncated": good[: len(good) // 3], "corrupt": b"\xff\xd8\xff" + b"junk" * 50}[kind]


def jpeg_bytes(size=(40, 36)) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (*size, 3), dtype=np.uint8)).save(buffer, "JPEG")
    return buffer.getvalue()


@pytest.mark.parametrize("kind", ["empty", "truncated", "corrupt"])
def test_every_image_reader_names_a_bad_file_the_same_way(tmp_path, kind):
    from Detection.data import DetectionRecord
    from Segmentation.data import _open

    path = tmp_path / "train" / "cat" / "0.jpg"
    path.parent.mkdir(parents=True)
    path.write_bytes(bad_image_bytes(kind, jpeg_bytes()))
    readers = {
        "ImageFolder (ImageNet, MoCo, SimCLR)": lambda: imagedata.image_folder(str(tmp_path), "train", None)[0],
        "VisDA list": lambda: imagedata.read_rgb_image(str(path)),
        "detection": lambda: DetectionRecord("0", np.zeros((0, 4), np.float32), np.zeros(0, np.int64),
                                             np.zeros(0, bool), image_path=str(path)).load_image(),
        "segmentation": lambda: _open(str(path), "image"),
    }
    for reader in readers.values():
        with pytest.raises(UserError) as caught:
            reader()
        assert f"cannot read image '{path}'" in str(caught.value) and "\n" not in str(caught.value)


def test_a_corrupt_image_found_by_a_loader_worker_is_one_line(tmp_path):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for name in ("a", "b"):
            for index in range(3):
                folder = tmp_path / "data" / split / name
                folder.mkdir(parents=True, exist_ok=True)
                Image.fromarray(rng.integers(0, 256, (36, 30, 3), dtype=np.uint8)).save(folder / f"{index}.png")
    bad = tmp_path / "data" / "val" / "b" / "1.png"
    bad.write_bytes(b"")
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", TQDM_DISABLE="1", PYTHONPATH=ROOT)
    result = subprocess.run([sys.executable, os.path.join(ROOT, "main_imp_imagenet.py"), str(tmp_path / "data"),
                             "-a", "resnet18_w16", "--image_size", "32", "-b", "2", "--epochs", "1", "-j", "1",
                             "--seed", "0", "--states", "1", "--random", "--save_dir", str(out)],
                            capture_output=True, text=True, cwd=ROOT, timeout=300, env=env)
    line = assert_one_line(result.returncode, result.stderr.splitlines(), f"cannot read image '{bad}'",
                           "replace or remove the file")
    assert "Caught" not in line and "worker" not in line


@pytest.fixture
def unwritable(tmp_path):
    """A folder nothing can be created in: read-only for a normal user; /sys for root, whom
    permission bits do not stop."""
    folder = tmp_path / "read_only"
    folder.mkdir()
    folder.chmod(0o555)
    probe = folder / "probe"
    try:
        probe.mkdir()
    except OSError:
        yield folder
        folder.chmod(0o755)
        return
    probe.rmdir()
    folder.chmod(0o755)
    try:
        os.mkdir("/sys/lth-probe")
    except OSError:
        yield type(tmp_path)("/sys")
        return
    os.rmdir("/sys/lth-probe")
    pytest.skip("no folder here refuses writes")


def test_an_unwritable_save_dir_is_one_line_before_anything_runs(unwritable, capsys):
    out = unwritable / "run"
    code, lines = run_main(main_imp_downstream, [*DIGITS, "--save_dir", out], capsys)
    assert_one_line(code, lines, out, "cannot be written")
    assert not out.exists()


@pytest.mark.parametrize("tail", ["run", "deeper/run"])
def test_a_save_dir_below_a_file_is_one_line(tmp_path, capsys, tail):
    a_file = tmp_path / "results"
    a_file.write_text("not a folder")
    code, lines = run_main(main_eval_downstream, [*DIGITS, "--save_dir", a_file / tail], capsys)
    assert_one_line(code, lines, "is a file, not a folder")
    assert a_file.read_text() == "not a folder"


def test_a_full_disk_during_a_checkpoint_write_is_one_line_and_keeps_the_last_checkpoint(tmp_path, monkeypatch,
                                                                                         capsys, one_thread):
    out = tmp_path / "run"
    real_save = torch.save
    writes = []

    def disk_fills_on_the_second_checkpoint(obj, handle, *args, **kwargs):
        if isinstance(obj, dict) and "optimizer" in obj:
            writes.append(1)
        if len(writes) == 2:
            handle.write(b"\0" * 1000)  # part of it reached the disk
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, handle, *args, **kwargs)

    monkeypatch.setattr(checkpoint_module.torch, "save", disk_fills_on_the_second_checkpoint)
    code, lines = run_main(main_eval_downstream, [*EVAL_FAST, "--save_dir", out], capsys)
    assert_one_line(code, lines, "No space left on device", out / "checkpoint.pth.tar")
    monkeypatch.setattr(checkpoint_module.torch, "save", real_save)
    assert load_file(str(out / "checkpoint.pth.tar"))["epoch"] == 1  # epoch 0's, intact
    assert not [name for name in os.listdir(out) if name.startswith(".tmp-")]


BAD_VALUES = [
    (["--momentum", "-0.9"], "--momentum"),
    (["--weight_decay=-1e-4"], "--weight_decay"),
    (["--seed", str(2**70)], "--seed"),
    (["-j", "-1"], "--workers"),
    (["--lr", "nan"], "--lr"),
    (["--lr", "inf"], "--lr"),
    (["--warmup", "-1"], "--warmup"),
    (["--decreasing_lr", "-5"], "--decreasing_lr"),
]


@pytest.mark.parametrize("flags, needle", BAD_VALUES, ids=[" ".join(flags) for flags, _ in BAD_VALUES])
def test_nonsensical_training_values_are_refused_before_anything_is_written(tmp_path, capsys, flags, needle):
    out = tmp_path / "run"
    code, lines = run_main(main_imp_downstream, [*DIGITS, *flags, "--save_dir", out], capsys)
    assert_one_line(code, lines, needle)
    assert not out.exists()


DETECTION_VALUES = [(["--conf_thresh", "2"], "--conf_thresh"), (["--nms_thresh", "-1"], "--nms_thresh"),
                    (["--lr_init", "nan"], "--lr_init"), (["--warmup_epochs", "-1"], "--warmup_epochs"),
                    (["--momentum", "-1"], "--momentum")]


@pytest.mark.parametrize("flags, needle", DETECTION_VALUES, ids=[" ".join(flags) for flags, _ in DETECTION_VALUES])
def test_nonsensical_detection_values_are_refused(tmp_path, capsys, flags, needle):
    from Detection import train_imp

    out = tmp_path / "run"
    code, lines = run_main(train_imp, ["--dataset", "digits", "--pretrained", "none", *flags, "--save_dir", out],
                           capsys)
    assert_one_line(code, lines, needle)
    assert not out.exists()


def test_a_last_training_batch_of_one_image_is_left_out(capsys):
    dataset = torch.utils.data.TensorDataset(torch.randn(5, 1, 4, 4), torch.zeros(5, dtype=torch.long))
    loader = DeviceLoader(dataset, 2, train=True, drop_last=False, seed=0, ctx=CPU, workers=0)
    assert len(loader) == 2 and [len(batch[0]) for batch in loader] == [2, 2]
    assert "1 image" in capsys.readouterr().err
    keeps = DeviceLoader(torch.utils.data.TensorDataset(torch.randn(6, 1), torch.zeros(6)), 4, train=True,
                         drop_last=False, seed=0, ctx=CPU, workers=0)
    assert [len(batch[0]) for batch in keeps] == [4, 2]  # a last batch of two is kept, as the original


def test_a_batch_of_one_reaching_batch_norm_is_one_line():
    from lth.classification import step as classification_step
    from lth.engine import Precision, train_one_epoch

    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2))
    batches = [(torch.randn(1, 4), torch.zeros(1, dtype=torch.long))]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(UserError, match="--batch_size"):
        train_one_epoch(model, batches, optimizer, None, CPU, Precision.choose("fp32", CPU.device), print_freq=0,
                            step=classification_step)


# ------------------------------------------------------------------------------------------------
# 5. Memory bombs inside the allow-list: bounded by the file's size
# ------------------------------------------------------------------------------------------------

class _Dtype:
    def __reduce__(self):
        return (np.dtype, ("S2000000000",))


class _Scalar:
    def __reduce__(self):
        from numpy._core.multiarray import scalar

        return (scalar, (_Dtype(),))


class _Bytes:
    def __reduce__(self):
        return (bytearray, (3_000_000_000,))


def _deflated(path):
    buffer = io.BytesIO()
    torch.save({LAYER: torch.zeros(25_000_000)}, buffer)  # 100 MB of zeros, deflated to ~100 kB
    source = zipfile.ZipFile(io.BytesIO(buffer.getvalue()))
    with zipfile.ZipFile(path, "w") as out:
        for info in source.infolist():
            out.writestr(info.filename, source.read(info.filename), compress_type=zipfile.ZIP_DEFLATED)


BOMBS = {
    "numpy dtype and scalar": lambda path: torch.save({"best_acc1": _Scalar()}, path),
    "zero-stride tensor": lambda path: torch.save({LAYER: torch.ones(1).expand(10**9)}, path),
    "bytearray": lambda path: torch.save({"x": _Bytes()}, path),
    "deflated record": _deflated,
}


@pytest.mark.parametrize("name", list(BOMBS))
def test_a_file_that_would_take_gigabytes_is_refused_on_one_line(tmp_path, capsys, name):
    import resource

    path = tmp_path / "mask.pt"
    BOMBS[name](path)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(UserError) as caught:
        load_file(str(path), "mask")
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 500_000  # kB: nothing was allocated
    code, lines = run_main(tickets, ["show", path], capsys)
    assert_one_line(code, lines, path)


def test_ordinary_checkpoints_are_within_the_bound(tmp_path):
    path = tmp_path / "checkpoint.pth.tar"
    model = build_model("resnet18_w16", 10)
    state = model.state_dict()
    torch.save({"state_dict": state, "init_weight": state, "best": np.float64(0.5),
                "optimizer": torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9).state_dict()}, path)
    assert set(load_file(str(path))) == {"state_dict", "init_weight", "best", "optimizer"}


# ------------------------------------------------------------------------------------------------
# 6. Side effects of refused runs
# ------------------------------------------------------------------------------------------------

@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_export_force_replaces_only_regular_files(good_ticket, tmp_path, capsys):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    link = tmp_path / "link.pt"
    link.symlink_to(tmp_path / "elsewhere.pt")
    for out in (fifo, link):
        code, lines = run_main(tickets, ["export", good_ticket, out, "--force"], capsys)
        assert_one_line(code, lines, out, "regular file")
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and os.path.islink(link)
    regular = tmp_path / "plain.pt"
    regular.write_bytes(b"old")
    code, _ = run_main(tickets, ["export", good_ticket, regular, "--force"], capsys)
    assert code == 0 and tickets.read_masks(str(regular))[0].keys() == tickets.read_masks(str(good_ticket))[0].keys()


@pytest.mark.parametrize("script, name", [("Segmentation/main_imp_imagenet.py", "ABSOLUTE"),
                                          ("Segmentation/main_transfer_moco.py", "../escaped"),
                                          ("SimCLR/main.py", "../escaped")])
def test_a_run_name_cannot_write_outside_save_dir(tmp_path, capsys, script, name):
    import importlib

    save_dir = tmp_path / "save"
    target = tmp_path / "outside" if name == "ABSOLUTE" else name
    if script.startswith("SimCLR"):
        module = importlib.import_module("SimCLR.main")
        parser, main = module.get_args_parser(), module.main
        argv = [target, "--save_dir", save_dir, "--cpu"]
    else:
        from Segmentation import run as segrun

        mode = "imp" if "imp" in script else "transfer"
        source = segrun.SOURCES[script.rsplit("_", 1)[1][:-3]]
        parser = segrun.get_args_parser(mode, source)
        main = (lambda args: segrun.imp_main(args, source)) if mode == "imp" else \
            (lambda args: segrun.transfer_main(args, source))
        argv = [target, "--dataset", "digits", "--save_dir", save_dir, "--imp_num", "0"] if mode == "imp" else \
            [target, "--dataset", "digits", "--save_dir", save_dir]
    code, lines = run_main(main, argv, capsys, parser=parser)
    assert_one_line(code, lines, "inside --save_dir")
    assert sorted(os.listdir(tmp_path)) == []


def test_the_audit_itself_runs_and_its_resume_cases_end_as_expected():
    """bench/bad_inputs.py stops an accepted case at the trainer's first step by patching the
    trainer; a change there must break this test, not the audit silently (it once did)."""
    result = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "bad_inputs.py"), "--only", "resume"],
                            capture_output=True, text=True, cwd=ROOT, timeout=600,
                            env=dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stderr[-2000:]
    # 5 cases: 2 refused on one line, 3 accepted on purpose (a half-written metrics line, a
    # truncated and an empty run.json), none a traceback, none leaving files
    assert "| **all** | **5** | **2** | **0** | **3** | **0** |" in result.stdout, result.stdout
    assert "cases ending otherwise than expected (or leaving files): 0" in result.stdout
