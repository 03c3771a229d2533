"""Every bad input gives one line on stderr, a non-zero exit, and leaves --save_dir untouched."""

import hashlib
import os
import subprocess
import sys

import pytest
import torch

import pruning_utils
from lth.models import build_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIGITS = ["--dataset", "digits", "--arch", "resnet18", "--epochs", "1", "--batch_size", "256", "--seed", "0"]


def run(script, *flags):
    result = subprocess.run([sys.executable, os.path.join(ROOT, script), *flags], capture_output=True,
                            text=True, cwd=ROOT, timeout=300)
    return result


def assert_one_line_error(result, *needles):
    assert result.returncode != 0, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("notice:")]
    assert len(lines) == 1, result.stderr
    assert "error" in lines[0]
    for needle in needles:
        assert needle in lines[0], lines[0]


def tree_digest(path):
    digest = hashlib.sha256()
    for root, _, files in sorted(os.walk(path)):
        for name in sorted(files):
            with open(os.path.join(root, name), "rb") as handle:
                digest.update(name.encode() + handle.read())
    return digest.hexdigest()


@pytest.mark.parametrize("flags, needles", [
    (["--dataset", "cifar10", "--data", "/nonexistent/cifar"], ["cifar-10-batches-py", "/nonexistent/cifar"]),
    (["--dataset", "imagenet"], ["invalid choice"]),
    (["--arch", "vgg16"], ["invalid choice"]),
    (["--rate", "0"], ["between 0 and 1"]),
    (["--rate", "1.5"], ["between 0 and 1"]),
    (["--prune_type", "pt_trans"], ["--pretrained"]),
    (["--prune_type", "rewind_lt", "--rewind_epoch", "5"], ["--rewind_epoch"]),
    (["--prune_type", "rewind_lt", "--rewind_epoch", "0"], ["--rewind_epoch", "[1, --epochs"]),
])
def test_imp_rejects_bad_flags_before_writing(tmp_path, flags, needles):
    out = tmp_path / "run"
    base = list(DIGITS)
    if "--dataset" in flags:
        index = base.index("--dataset")
        del base[index:index + 2]
    result = run("main_imp_downstream.py", *base, *flags, "--save_dir", str(out))
    assert_one_line_error(result, *needles)
    assert not out.exists()


def test_empty_data_folder_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    result = run("main_imp_downstream.py", "--dataset", "svhn", "--data", str(tmp_path / "empty"),
                 "--save_dir", str(tmp_path / "run"))
    assert_one_line_error(result, "svhn")
    assert not (tmp_path / "run").exists()


def test_a_folder_holding_a_run_is_refused_and_kept(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "0checkpoint.pth.tar").write_bytes(b"precious")
    (out / "metrics.jsonl").write_text('{"round": 0}\n')
    before = tree_digest(out)
    result = run("main_imp_downstream.py", *DIGITS, "--save_dir", str(out))
    assert_one_line_error(result, "already holds a run", "--resume")
    assert tree_digest(out) == before


def test_resume_with_nothing_to_resume(tmp_path):
    result = run("main_eval_downstream.py", *DIGITS, "--save_dir", str(tmp_path / "none"), "--resume")
    assert_one_line_error(result, "no checkpoint")


def test_truncated_checkpoint_is_an_error(tmp_path):
    torch.save(build_model("resnet18", 10, 1).state_dict(), tmp_path / "weights.pt")
    data = (tmp_path / "weights.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    result = run("main_eval_downstream.py", *DIGITS, "--pretrained", str(tmp_path / "cut.pt"),
                 "--save_dir", str(tmp_path / "run"))
    assert_one_line_error(result, "cut.pt")
    result = run("main_eval_downstream.py", *DIGITS, "--mask_dir", str(tmp_path / "cut.pt"),
                 "--save_dir", str(tmp_path / "run"))
    assert_one_line_error(result, "cut.pt")
    assert not (tmp_path / "run").exists()


def test_mask_of_another_architecture_is_an_error(tmp_path):
    model = build_model("resnet50", 10, 1)
    pruning_utils.global_prune(model, 0.2)
    pruning_utils.save_ticket(str(tmp_path / "r50.pt"), pruning_utils.extract_mask(model), arch="resnet50")
    result = run("main_eval_downstream.py", *DIGITS, "--mask_dir", str(tmp_path / "r50.pt"),
                 "--save_dir", str(tmp_path / "run"))
    assert_one_line_error(result, "layer1.0.conv1.weight_mask", "(64, 64, 1, 1)", "(64, 64, 3, 3)")
    assert not (tmp_path / "run").exists()


def test_weights_of_another_architecture_are_an_error(tmp_path):
    torch.save({"state_dict": build_model("resnet50", 10, 1).state_dict()}, tmp_path / "r50.pt")
    result = run("main_imp_downstream.py", *DIGITS, "--prune_type", "pt_trans", "--pretrained",
                 str(tmp_path / "r50.pt"), "--save_dir", str(tmp_path / "run"))
    assert_one_line_error(result, "r50.pt")
    assert not (tmp_path / "run").exists()


def test_help_explains_every_flag():
    for script in ("main_imp_downstream.py", "main_eval_downstream.py"):
        result = run(script, "--help")
        assert result.returncode == 0
        assert "--prune_type" in result.stdout or "--mask_dir" in result.stdout
        assert "(default:" in result.stdout
