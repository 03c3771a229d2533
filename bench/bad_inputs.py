"""Audit: feed every entry script bad files and bad values and count how each case ends.

Each case runs in this process (through ``lth.cli.run_main``, as the scripts do) in a fresh
folder, on tiny data in the real formats. A case ends as

* ``one-line``: non-zero exit, one ``error:`` line on stderr, no traceback;
* ``traceback``: any other exception, or more than one error line;
* ``accepted``: the run went on to train or evaluate (training is stopped at its first step: the
  audit only needs to know that the bad input got through) or ended normally.

A refused case must also leave its --save_dir uncreated (``left files``). Mask cases that are
accepted count as silent wrong masks. Usage (about a minute; prints a Markdown table)::

    python bench/bad_inputs.py [--only FAMILY ...] [--verbose]

The cases are those of issue 18's audit, rebuilt; tests/test_reliability.py pins one of each family.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import os
import pickle
import shutil
import tempfile
import traceback
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from lth.runs import METRICS, RUN_RECORD

FAMILIES = ("masks", "data", "resume", "inputs", "bombs", "side effects")


class ReachedTraining(Exception):
    """Raised at the first optimizer (or evaluation-only stage) a case reaches: it was accepted."""


@dataclass
class Case:
    family: str
    name: str
    script: str
    build: Callable[[Path], list]  # makes the case's files under the folder, returns argv
    stop_at_training: bool = True
    untouched: Callable[[Path], list] = field(default=lambda base: [base / "run"])
    expect: str = "one-line"  # or "accepted": a damaged log the resume tolerates, a batch of one dropped


# ------------------------------------------------------------------------------------------------
# Scripts
# ------------------------------------------------------------------------------------------------

def _script(name: str):
    """(parser, main) of an entry script by short name."""
    if name.startswith("seg_"):
        from Segmentation import run as segrun

        mode, source = name[4:].split("_")
        src = segrun.SOURCES[source]
        main = (lambda args: segrun.imp_main(args, src)) if mode == "imp" else \
            (lambda args: segrun.transfer_main(args, src))
        return segrun.get_args_parser(mode, src), main
    module = importlib.import_module({"simclr": "SimCLR.main", "moco": "MoCo.main_moco_imp",
                                      "det_imp": "Detection.train_imp", "det_random": "Detection.train_random",
                                      "det_transfer": "Detection.train_transfer", "det_eval": "Detection.eval",
                                      "tickets": "lth.tickets", "report": "main_report"}.get(name, name))
    return module.get_args_parser(), module.main


def run_case(case: Case, base: Path) -> tuple[str, str, bool]:
    """(outcome, the error line or traceback's last line, whether a refused case left files)."""
    from lth import cli, trainer

    argv = [str(arg) for arg in case.build(base)]
    parser, main = _script(case.script)
    err = io.StringIO()
    patches = []
    if case.stop_at_training:
        def stop(*args, **kwargs):
            raise ReachedTraining()
        # A stage that trains builds its optimizer first; one that only evaluates (round 0 of the
        # ImageNet and pre-training IMPs) calls its Evaluation hook first.
        for owner, name in ((trainer, "make_optimizer"), (trainer.Evaluation, "__call__")):
            patches.append((owner, name, getattr(owner, name)))
            setattr(owner, name, stop)
    outcome, detail = "accepted", ""
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            cli.run_main(main, parser, argv)
    except ReachedTraining:
        outcome, detail = "accepted", "reached training"
    except SystemExit as stop_:
        errors = [line for line in err.getvalue().splitlines()
                  if "error" in line.lower() or "traceback" in line.lower()]
        if stop_.code in (0, None):
            outcome = "accepted"
        elif len(errors) == 1 and errors[0].startswith(("error: ", f"{parser.prog}: error: ")):
            outcome, detail = "one-line", errors[0]
        else:
            outcome, detail = "traceback", " | ".join(errors[-2:])
    except BaseException as error:  # noqa: BLE001 - what the audit counts
        outcome = "traceback"
        detail = "".join(traceback.format_exception_only(type(error), error)).strip().splitlines()[-1][:300]
    finally:
        for owner, name, value in patches:
            setattr(owner, name, value)
        distributed_teardown()
    left = outcome != "accepted" and any(path.exists() for path in case.untouched(base))
    return outcome, detail, left


def distributed_teardown() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# ------------------------------------------------------------------------------------------------
# Tiny data in the real formats
# ------------------------------------------------------------------------------------------------

def image_folder(root: Path, classes=("a", "b"), count=3) -> Path:
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for name in classes:
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for index in range(count):
                Image.fromarray(rng.integers(0, 256, (36, 30, 3), dtype=np.uint8)).save(
                    root / split / name / f"{index}.png")
    return root


def visda(root: Path) -> Path:
    rng = np.random.default_rng(1)
    for split in ("train", "validation"):
        lines = []
        for label in (0, 5):
            for index in range(3):
                rel = f"c{label}/{index}.png"
                (root / split / f"c{label}").mkdir(parents=True, exist_ok=True)
                Image.fromarray(rng.integers(0, 256, (36, 30, 3), dtype=np.uint8)).save(root / split / rel)
                lines.append(f"{rel} {label}")
        (root / split / "image_list.txt").write_text("\n".join(lines) + "\n")
    return root


def cifar10(root: Path, n=12) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / name, "wb") as handle:
            pickle.dump({"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                         "labels": [i % 10 for i in range(n)]}, handle, protocol=2)
    return root


class CreatesFile:
    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (os.open, (self.path, os.O_CREAT | os.O_WRONLY))


def digits_masks():
    from lth import pruning
    from lth.models import build_model

    return pruning.current_masks(build_model("resnet18", 10, 1, "cifar"))


def save_ticket(path: Path, corrupt: Callable | None = None) -> Path:
    from lth import tickets

    masks = {key: (torch.arange(m.numel()) % 2).float().reshape(m.shape) for key, m in digits_masks().items()}
    tickets.save_ticket(str(path), masks, round=1, arch="resnet18", dataset="digits")
    if corrupt is not None:
        obj = torch.load(path, weights_only=True)
        corrupt(obj)
        torch.save(obj, path)
    return path


def save_plain_mask(path: Path, value) -> Path:
    masks = digits_masks()
    key = "layer1.0.conv1.weight_mask"
    if isinstance(value, torch.Tensor) or not isinstance(value, float):
        masks[key] = value
    else:
        masks[key] = masks[key].clone()
        masks[key][0, 0, 0, 0] = value
    torch.save(masks, path)
    return path


LAYER = "layer1.0.conv1.weight_mask"
DIGITS = ["--dataset", "digits", "--arch", "resnet18", "--epochs", "1", "--batch_size", "256", "--seed", "0",
          "--print_freq", "0"]
IMAGE_FAST = ["-a", "resnet18", "--image_size", "32", "-b", "2", "--epochs", "1", "-j", "0", "--seed", "0"]
SEG = ["--dataset", "digits", "--model", "deeplabv3plus_resnet18", "--total_itrs", "2", "--val_interval", "2",
       "--batch_size", "4", "--crop_size", "32", "--pretrained", "none", "--seed", "0", "-j", "0"]
DET = ["--dataset", "digits", "--arch", "resnet18", "--pretrained", "none", "--epochs", "1", "--batch_size", "4",
       "--img_size", "64", "--digits_counts", "8,4,4", "--digits_canvas", "64", "-j", "0", "--seed", "0"]
SIMCLR = ["--arch", "resnet18", "--image_size", "32", "--batch_size", "2", "--epochs", "1", "--prun_epoch", "1",
          "-j", "0", "--cpu", "--sim_model", "none", "--prun_percent", "0"]
MOCO = ["-a", "resnet18", "--image_size", "32", "-b", "2", "--moco-k", "4", "--epochs", "1", "--retrain_epoch", "1",
        "-j", "0", "--pretrained_path", "none", "--seed", "0"]


# ------------------------------------------------------------------------------------------------
# Cases
# ------------------------------------------------------------------------------------------------

def _ticket_corruptions():
    def half(o): o["bits"][LAYER] = o["bits"][LAYER][: o["bits"][LAYER].numel() // 2].clone()  # noqa: E704
    def empty(o): o["bits"][LAYER] = torch.empty(0, dtype=torch.uint8)  # noqa: E704
    def dtype(o): o["bits"][LAYER] = o["bits"][LAYER].to(torch.int32)  # noqa: E704
    def float_bits(o): o["bits"][LAYER] = o["bits"][LAYER].float()  # noqa: E704
    def doubled(o): o["bits"][LAYER] = torch.cat([o["bits"][LAYER]] * 2)  # noqa: E704
    return {
        "ticket bits cut to half": half, "ticket bits empty": empty, "ticket bits int32": dtype,
        "ticket bits float": float_bits, "ticket bits doubled": doubled,
        "ticket without bits": lambda o: o.pop("bits"), "ticket without shapes": lambda o: o.pop("shapes"),
        "ticket layer without shape": lambda o: o["shapes"].pop(LAYER),
        "ticket shape of strings": lambda o: o["shapes"].__setitem__(LAYER, ["a"]),
        "ticket shape negative": lambda o: o["shapes"].__setitem__(LAYER, [-8]),
        "ticket meta a list": lambda o: o.__setitem__("meta", [1]),
        "ticket meta None": lambda o: o.__setitem__("meta", None),
        "ticket version None": lambda o: o.__setitem__("version", None),
        "ticket version string": lambda o: o.__setitem__("version", "1"),
        "ticket version float": lambda o: o.__setitem__("version", 1.5),
        "ticket bits a list": lambda o: o.__setitem__("bits", [1, 2]),
    }


def mask_cases() -> list[Case]:
    cases = []
    for name, corrupt in _ticket_corruptions().items():
        for script, argv in (("main_eval_downstream", DIGITS), ("tickets", None)):
            def build(base, corrupt=corrupt, script=script, argv=argv):
                ticket = save_ticket(base / "ticket.pt", corrupt)
                if script == "tickets":
                    return ["show", ticket]
                return [*argv, "--mask_dir", ticket, "--save_dir", base / "run"]
            cases.append(Case("masks", f"{name} ({script})", script, build))
    for label, value in (("2", 2.0), ("-1", -1.0), ("0.5", 0.5), ("NaN", float("nan")), ("inf", float("inf")),
                         ("empty tensor", torch.empty(0)), ("a string", "x"),
                         ("int tensor of 3", torch.full((64, 64, 3, 3), 3, dtype=torch.int64))):
        for script in ("main_eval_downstream", "main_eval_visda", "seg_transfer_imagenet", "det_transfer", "tickets"):
            def build(base, value=value, script=script):
                mask = save_plain_mask(base / "mask.pt", value)
                if script == "main_eval_downstream":
                    return [*DIGITS, "--mask_dir", mask, "--save_dir", base / "run"]
                if script == "main_eval_visda":
                    return [visda(base / "visda"), *IMAGE_FAST, "--mask_dir", mask, "--save_dir", base / "run"]
                if script == "seg_transfer_imagenet":
                    return ["exp", *SEG, "--mask_dir", mask, "--save_dir", base / "run"]
                if script == "det_transfer":
                    return [*DET, "--mask_dir", mask, "--save_dir", base / "run"]
                return ["show", mask]
            cases.append(Case("masks", f"mask value {label} ({script})", script, build))
    return cases


def data_cases() -> list[Case]:
    cases = []

    def crafted(base, name):
        root = cifar10(base / "data")
        with open(root / "cifar-10-batches-py" / name, "wb") as handle:
            pickle.dump({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 1], "x": CreatesFile(base / "marker")},
                        handle, protocol=2)
        return root

    for name in ("data_batch_1", "test_batch"):
        for script in ("main_imp_downstream", "main_eval_downstream"):
            cases.append(Case("data", f"CIFAR {name} that creates a file ({script})", script,
                              lambda base, name=name: ["--dataset", "cifar10", "--data", crafted(base, name),
                                                       "--arch", "resnet18", "--save_dir", base / "run"],
                              untouched=lambda base: [base / "run", base / "marker"]))

    def object_array(base):
        root = cifar10(base / "data")
        with open(root / "cifar-10-batches-py" / "data_batch_2", "wb") as handle:
            pickle.dump({"data": np.array([[None] * 3072], dtype=object), "labels": [0]}, handle, protocol=2)
        return ["--dataset", "cifar10", "--data", root, "--arch", "resnet18", "--save_dir", base / "run"]
    cases.append(Case("data", "CIFAR batch with an object array", "main_imp_downstream", object_array))

    def svhn_cell(base):
        import scipy.io

        x = np.zeros((32, 32, 3, 4), np.uint8)
        (base / "svhn").mkdir()
        cells = np.empty((4, 1), dtype=object)
        cells[:, 0] = ["a", "b", "c", "d"]
        scipy.io.savemat(base / "svhn" / "train_32x32.mat", {"X": x, "y": cells})
        scipy.io.savemat(base / "svhn" / "test_32x32.mat", {"X": x, "y": np.ones((4, 1), np.uint8)})
        return ["--dataset", "svhn", "--data", base / "svhn", "--arch", "resnet18", "--save_dir", base / "run"]
    cases.append(Case("data", "SVHN .mat with a cell array", "main_imp_downstream", svhn_cell))

    def fmnist_bad_header(base):
        raw = base / "fm" / "FashionMNIST" / "raw"
        raw.mkdir(parents=True)
        import struct
        for split in ("train", "t10k"):
            (raw / f"{split}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, 10**6, 28, 28) + b"\0" * 100)
            (raw / f"{split}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, 4) + b"\0" * 4)
        return ["--dataset", "fmnist", "--data", base / "fm", "--arch", "resnet18", "--save_dir", base / "run"]
    cases.append(Case("data", "Fashion-MNIST idx header claiming 1e6 images", "main_imp_downstream", fmnist_bad_header))

    def det_list(base):
        (base / "train.txt").write_text("img.jpg 1,2,3\n")
        return [*DET[:1], "lists", *DET[2:], "--train_list", base / "train.txt", "--test_list", base / "train.txt",
                "--save_dir", base / "run"]
    cases.append(Case("data", "detection list naming a missing image", "det_imp", det_list))
    return cases


def resume_cases() -> list[Case]:
    """Resumes of a finished one-epoch digits run whose files were damaged (the run is made once)."""
    cases = []

    def damaged(base, damage, flags=()):
        template = Path(PREPARED["eval"])
        shutil.copytree(template, base / "run")
        damage(base / "run")
        return [*DIGITS, "--epochs", "2", "--decreasing_lr", "1", *flags, "--save_dir", base / "run", "--resume"]

    def partial_metrics(run):
        with open(run / METRICS, "a") as handle:
            handle.write('{"round": 0, "epoch": 1, "va')

    def truncated_record(run):
        (run / RUN_RECORD).write_text((run / RUN_RECORD).read_text()[:100])

    def empty_record(run):
        (run / RUN_RECORD).write_text("")

    def garbage_middle(run):
        lines = (run / METRICS).read_text()
        (run / METRICS).write_text("garbage\n" + lines)

    for name, damage, expect in (("half-written last metrics line", partial_metrics, "accepted"),
                                 ("truncated run.json", truncated_record, "accepted"),
                                 ("empty run.json", empty_record, "accepted"),
                                 ("a damaged line before the last", garbage_middle, "one-line")):
        cases.append(Case("resume", name, "main_eval_downstream", lambda base, damage=damage: damaged(base, damage),
                          untouched=lambda base: [], expect=expect))
    cases.append(Case("resume", "refused resume (another --lr)", "main_eval_downstream",
                      lambda base: damaged(base, lambda run: None, ["--lr", "0.5"]), untouched=lambda base: []))
    return cases


def bad_image(base: Path, kind: str, where: str = "val/b/1.png") -> Path:
    path = base / "data" / where
    data = path.read_bytes()
    path.write_bytes({"empty": b"", "truncated": data[: len(data) // 3], "corrupt": b"\x89PNG" + b"junk" * 40}[kind])
    return base / "data"


def input_cases() -> list[Case]:
    cases = []
    for kind in ("empty", "truncated", "corrupt"):
        for where in ("train/a/0.png", "val/b/1.png"):
            cases.append(Case("inputs", f"{kind} image {where} (ImageNet)", "main_imp_imagenet",
                              lambda base, kind=kind, where=where: [
                                  bad_image(image_folder(base / "data").parent, kind, where), *IMAGE_FAST,
                                  "--states", "2", "--random", "--save_dir", base / "run"],
                              stop_at_training=False, untouched=lambda base: []))
            cases.append(Case("inputs", f"{kind} image {where} (MoCo)", "moco",
                              lambda base, kind=kind, where=where: [
                                  bad_image(image_folder(base / "data", count=4).parent, kind, where), *MOCO,
                                  "--save_dir", base / "run"],
                              stop_at_training=False, untouched=lambda base: []))
            cases.append(Case("inputs", f"{kind} image {where} (SimCLR)", "simclr",
                              lambda base, kind=kind, where=where: [
                                  "exp", "--data", bad_image(image_folder(base / "data").parent, kind, where),
                                  *SIMCLR, "--save_dir", base / "run"],
                              stop_at_training=False, untouched=lambda base: []))
        cases.append(Case("inputs", f"{kind} image (VisDA)", "main_imp_visda",
                          lambda base, kind=kind: [bad_image(visda(base / "data").parent, kind, "train/c0/1.png"),
                                                   *IMAGE_FAST, "--states", "1", "--save_dir", base / "run"],
                          stop_at_training=False, untouched=lambda base: []))

    def read_only(base):
        return Path("/sys") if os.geteuid() == 0 else _chmod_ro(base / "ro")

    runs = {
        "main_imp_downstream": lambda out: [*DIGITS, "--save_dir", out],
        "main_eval_downstream": lambda out: [*DIGITS, "--save_dir", out],
        "main_imp_imagenet": lambda out: [IMAGE_DATA, *IMAGE_FAST, "--save_dir", out],
        "main_imp_visda": lambda out: [VISDA_DATA, *IMAGE_FAST, "--save_dir", out],
        "main_eval_visda": lambda out: [VISDA_DATA, *IMAGE_FAST, "--save_dir", out],
        "simclr": lambda out: ["exp", "--data", IMAGE_DATA, *SIMCLR, "--save_dir", out],
        "moco": lambda out: [IMAGE_DATA, *MOCO, "--save_dir", out],
        "det_imp": lambda out: [*DET, "--save_dir", out],
        "det_random": lambda out: [*DET, "--save_dir", out],
        "seg_imp_imagenet": lambda out: ["exp", *SEG, "--imp_num", "0", "--save_dir", out],
        "seg_transfer_simclr": lambda out: ["exp", *SEG, "--save_dir", out],
        "report": lambda out: [IMAGE_DATA, "--out", out],
    }
    for script, argv in runs.items():
        cases.append(Case("inputs", f"read-only --save_dir ({script})", script,
                          lambda base, argv=argv: argv(read_only(base) / "run"),
                          untouched=lambda base: [Path("/sys/run"), base / "ro" / "run"]))
        cases.append(Case("inputs", f"--save_dir below a file ({script})", script,
                          lambda base, argv=argv: argv(_a_file(base) / "run"), untouched=lambda base: []))

    values = {
        "main_imp_downstream": (DIGITS, [["--momentum", "-0.9"], ["--weight_decay", "-1"], ["--seed", str(2**70)],
                                         ["-j", "-1"], ["--lr", "nan"], ["--lr", "-1"], ["--warmup", "-1"],
                                         ["--decreasing_lr", "-5"], ["--rate", "nan"], ["--batch_size", "0"],
                                         ["--eval_batch_size", "0"], ["--epochs", "0"], ["--pruning_times", "0"],
                                         ["--momentum", "1.5"], ["--print_freq", "-1"], ["--lr", "inf"]]),
        "main_eval_downstream": (DIGITS, [["--momentum", "-1"], ["--weight_decay", "nan"], ["--seed", "-1"],
                                          ["--lr", "nan"], ["--warmup", "-2"], ["--decreasing_lr", "-1,3"]]),
        "main_imp_imagenet": (["IMAGE", *IMAGE_FAST], [["--momentum", "-1"], ["--wd", "-1"], ["--lr", "nan"],
                                                       ["--seed", str(2**70)], ["-j", "-1"], ["--percent", "nan"],
                                                       ["--states", "-1"], ["--image_size", "0"]]),
        "main_imp_visda": (["VISDA", *IMAGE_FAST], [["--momentum", "-1"], ["--lr", "nan"], ["-j", "-1"],
                                                    ["--percent", "1"], ["--seed", str(2**70)]]),
        "main_eval_visda": (["VISDA", *IMAGE_FAST], [["--momentum", "-1"], ["--lr", "nan"], ["-j", "-1"],
                                                     ["--image_size", "0"], ["--warmup", "-1"]]),
        "simclr": (["exp", "--data", "IMAGE", *SIMCLR], [["--lr", "nan"], ["--weight_decay", "-1"],
                                                         ["--seed", str(2**70)], ["-j", "-1"], ["--temperature", "nan"],
                                                         ["--temperature", "0"], ["--prun_percent", "2"]]),
        "moco": (["IMAGE", *MOCO], [["--lr", "nan"], ["--momentum", "-1"], ["--wd", "-1"], ["--seed", str(2**70)],
                                    ["-j", "-1"], ["--moco-t", "nan"], ["--moco-m", "2"], ["--prune_percent", "0"]]),
        "det_imp": (DET, [["--conf_thresh", "2"], ["--nms_thresh", "-1"], ["--lr_init", "nan"], ["--lr_end", "-1"],
                          ["--warmup_epochs", "-1"], ["--momentum", "-1"], ["--weight_decay", "-1"],
                          ["--seed", str(2**70)], ["-j", "-1"], ["--img_size", "33"], ["--accumulate", "0"],
                          ["--rate", "1"]]),
        "det_eval": (DET, [["--conf_thresh", "-0.1"], ["--nms_thresh", "2"]]),
        "seg_imp_imagenet": (["exp", *SEG, "--imp_num", "0"], [["--lr", "nan"], ["--weight_decay", "-1"],
                                                                ["--seed", str(2**70)], ["-j", "-1"],
                                                                ["--batch_size", "1"], ["--total_itrs", "0"],
                                                                ["--rate", "1"], ["--crop_size", "0"]]),
        "seg_transfer_moco": (["exp", *SEG], [["--lr", "nan"], ["--weight_decay", "-1"], ["-j", "-1"]]),
    }
    for script, (base_argv, bad_list) in values.items():
        for bad in bad_list:
            def build(base, base_argv=base_argv, bad=bad, script=script):
                argv = [IMAGE_DATA if a == "IMAGE" else VISDA_DATA if a == "VISDA" else a for a in base_argv]
                out = ["--result_dir", base / "run", "--checkpoint", _a_file(base)] if script == "det_eval" else \
                    ["--save_dir", base / "run"]
                return [*argv, *bad, *out]
            cases.append(Case("inputs", f"{' '.join(bad)} ({script})", script, build))

    def batch_of_one(base):
        root = image_folder(base / "data", classes=("a",), count=3)  # 3 images, batches of 2: last batch of 1
        return [root, *IMAGE_FAST, "--image_size", "32", "--states", "0", "--save_dir", base / "run"]
    cases.append(Case("inputs", "last training batch of one image (ImageNet --states 0)", "main_imp_imagenet",
                      batch_of_one, stop_at_training=False, untouched=lambda base: [], expect="accepted"))
    return cases


def _chmod_ro(path: Path) -> Path:
    path.mkdir()
    path.chmod(0o555)
    return path


def _a_file(base: Path) -> Path:
    path = base / "a_file"
    path.write_text("a file")
    return path


def bomb_cases() -> list[Case]:
    from numpy._core.multiarray import scalar

    class D:
        def __reduce__(self):
            return (np.dtype, ("S2000000000",))

    class S:
        def __reduce__(self):
            return (scalar, (D(),))

    class B:
        def __reduce__(self):
            return (bytearray, (3_000_000_000,))

    def deflated(path):
        buffer = io.BytesIO()
        torch.save({LAYER: torch.zeros(25_000_000)}, buffer)
        source = zipfile.ZipFile(io.BytesIO(buffer.getvalue()))
        with zipfile.ZipFile(path, "w") as out:
            for info in source.infolist():
                out.writestr(info.filename, source.read(info.filename), compress_type=zipfile.ZIP_DEFLATED)

    makers = {"numpy dtype + scalar": lambda p: torch.save({"best": S()}, p),
              "zero-stride tensor": lambda p: torch.save({LAYER: torch.ones(1).expand(10**9)}, p),
              "bytearray(3e9)": lambda p: torch.save({"x": B()}, p),
              "deflated record": deflated}
    cases = []
    for name, make in makers.items():
        for script in ("tickets", "main_eval_downstream", "main_imp_downstream"):
            def build(base, make=make, script=script):
                path = base / "file.pt"
                make(path)
                if script == "tickets":
                    return ["show", path]
                if script == "main_eval_downstream":
                    return [*DIGITS, "--mask_dir", path, "--save_dir", base / "run"]
                return [*DIGITS, "--prune_type", "pt_trans", "--pretrained", path, "--save_dir", base / "run"]
            cases.append(Case("bombs", f"{name} ({script})", script, build))
    return cases


def side_effect_cases() -> list[Case]:
    cases = []
    for target in ("fifo", "symlink", "folder"):
        def build(base, target=target):
            ticket = save_ticket(base / "ticket.pt")
            out = base / "out"
            if target == "fifo":
                os.mkfifo(out)
            elif target == "symlink":
                out.symlink_to(base / "elsewhere")
            else:
                out.mkdir()
            return ["export", ticket, out, "--force"]
        cases.append(Case("side effects", f"tickets export --force onto a {target}", "tickets", build,
                          untouched=lambda base: [base / "elsewhere"]))
    for script, argv in (("seg_imp_imagenet", lambda base: ["/tmp/lth-audit-outside", *SEG, "--imp_num", "0"]),
                         ("seg_transfer_moco", lambda base: ["../outside", *SEG]),
                         ("simclr", lambda base: ["../outside", "--data", IMAGE_DATA, *SIMCLR])):
        cases.append(Case("side effects", f"run name outside --save_dir ({script})", script,
                          lambda base, argv=argv: [*argv(base), "--save_dir", base / "run"],
                          untouched=lambda base: [base / "run", base / "outside", Path("/tmp/lth-audit-outside")]))
    return cases


# Data and runs built once and shared by the cases (read-only to them).
PREPARED: dict[str, str] = {}
IMAGE_DATA = VISDA_DATA = ""


def prepare(work: Path) -> None:
    global IMAGE_DATA, VISDA_DATA
    from lth import cli

    IMAGE_DATA = str(image_folder(work / "imagenet", count=4))
    VISDA_DATA = str(visda(work / "visda"))
    parser, main = _script("main_eval_downstream")
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        cli.run_main(main, parser, [*map(str, DIGITS), "--epochs", "2", "--decreasing_lr", "1",
                                    "--save_dir", str(work / "eval")])
    PREPARED["eval"] = str(work / "eval")
    # the run is finished; make it look killed after epoch 0: drop the last metrics line
    lines = (work / "eval" / METRICS).read_text().splitlines()
    (work / "eval" / METRICS).write_text(lines[0] + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=FAMILIES, nargs="+", default=None, help="run these families only")
    parser.add_argument("--verbose", action="store_true", help="print every case's outcome and line")
    args = parser.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")
    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="lth-audit-"))
    try:
        prepare(work)
        builders = {"masks": mask_cases, "data": data_cases, "resume": resume_cases, "inputs": input_cases,
                    "bombs": bomb_cases, "side effects": side_effect_cases}
        results = []
        for family in FAMILIES:
            if args.only and family not in args.only:
                continue
            for index, case in enumerate(builders[family]()):
                base = work / f"{family.replace(' ', '_')}-{index}"
                base.mkdir()
                outcome, detail, left = run_case(case, base)
                results.append((case, outcome, detail, left))
                if args.verbose:
                    print(f"[{outcome}{' +files' if left else ''}] {family}: {case.name}: {detail}", flush=True)
                shutil.rmtree(base, ignore_errors=True)
                _unlink("/tmp/lth-audit-outside")
        print_table(results)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _unlink(path: str) -> None:
    if os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)


def print_table(results) -> None:
    print("\n| family | cases | one-line errors | tracebacks | accepted | refused but left files |")
    print("|---|---:|---:|---:|---:|---:|")
    totals = [0, 0, 0, 0, 0]
    for family in FAMILIES:
        rows = [r for r in results if r[0].family == family]
        if not rows:
            continue
        counts = [len(rows), sum(r[1] == "one-line" for r in rows), sum(r[1] == "traceback" for r in rows),
                  sum(r[1] == "accepted" for r in rows), sum(r[3] for r in rows)]
        totals = [a + b for a, b in zip(totals, counts)]
        print(f"| {family} | " + " | ".join(map(str, counts)) + " |")
    print("| **all** | " + " | ".join(f"**{n}**" for n in totals) + " |")
    wrong_masks = sum(r[1] == "accepted" for r in results if r[0].family == "masks")
    print(f"\nsilent wrong masks (mask cases accepted): {wrong_masks}")
    odd = [r for r in results if r[1] != r[0].expect or r[3]]
    print(f"cases ending otherwise than expected (or leaving files): {len(odd)}")
    if odd:
        for case, outcome, detail, left in odd:
            print(f"- {case.family}: {case.name}: {outcome}{' (left files)' if left else ''}: {detail}")


if __name__ == "__main__":
    main()
