"""A run whose training loss turns NaN or infinite stops with one line and exit status 3, and writes nothing more.

Each task diverges twice: with a learning rate so large that its own loss blows up, and with a NaN
put into one weight as a later round (or a later chunk of iterations) starts, so that the files
written before it can be compared byte for byte and by modification time afterwards.
"""

import os
import re
import subprocess
import sys

import pytest
import torch

import main_imp_downstream
from Detection import train_imp
from lth import cli, trainer
from lth.engine import unwrap
from lth.models import build_model
from Segmentation import run as segrun

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIVERGED = re.compile(r"^error: training diverged in round (\d+) (epoch \d+|iterations \d+-\d+): "
                      r"the mean training loss is (nan|inf|-inf); .*start a new run in another folder")

pytestmark = pytest.mark.usefixtures("one_thread")


def snapshot(folder) -> dict:
    """Every file under ``folder``: its bytes and modification time (ns)."""
    found = {}
    for dirpath, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as handle:
                found[os.path.relpath(path, folder)] = (handle.read(), os.stat(path).st_mtime_ns)
    return found


class Poison:
    """Wraps the core's ``train_one_epoch``: as its ``at``-th call starts, the run's folder is
    recorded and one weight of the model set to NaN, so that the task's own loss is NaN there."""

    def __init__(self, monkeypatch, folder, at: int):
        self.folder, self.at, self.calls, self.before = folder, at, 0, None
        self.real = trainer.train_one_epoch
        monkeypatch.setattr(trainer, "train_one_epoch", self)

    def __call__(self, model, *args, **kwargs):
        self.calls += 1
        if self.calls == self.at:
            self.before = snapshot(self.folder)
            with torch.no_grad():
                next(unwrap(model).parameters()).view(-1)[0] = float("nan")
        return self.real(model, *args, **kwargs)


def diverged_line(error_text: str, round_index: int, where: str = "") -> str:
    lines = [line for line in error_text.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, error_text
    match = DIVERGED.match(lines[0])
    assert match and int(match.group(1)) == round_index, lines[0]
    assert where in match.group(2), lines[0]
    return lines[0]


def run_main(main, parser, argv, capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as stopped:
        cli.run_main(main, parser, argv)
    out, err = capsys.readouterr()
    return stopped.value.code, out, err


# --------------------------------------------------------------------------------------------
# Classification
# --------------------------------------------------------------------------------------------

CLASSIFICATION = ["--dataset", "digits", "--arch", "resnet18_w16", "--batch_size", "256", "--decreasing_lr", "1",
                  "--seed", "0", "--print_freq", "0"]


def test_the_issues_command_stops_at_once_and_writes_no_ticket(tmp_path):
    """main_imp_downstream.py --dataset digits --epochs 1 --pruning_times 2 --lr 1e8 (issue 14)."""
    out = tmp_path / "run"
    result = subprocess.run([sys.executable, os.path.join(ROOT, "main_imp_downstream.py"), "--dataset", "digits",
                             "--arch", "resnet18_w16", "--epochs", "1", "--pruning_times", "2", "--lr", "1e8",
                             "--seed", "0", "--print_freq", "0", "--save_dir", str(out)],
                            capture_output=True, text=True, cwd=ROOT, timeout=600,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 3, result.stderr[-2000:]
    assert len(result.stderr.strip().splitlines()) == 1
    diverged_line(result.stderr, 0, "epoch 0")
    assert "done" not in result.stdout
    # ticket_00 is the starting (dense) mask, written before training; nothing after it
    assert sorted(os.listdir(out)) == ["run.json", "ticket_00.pt"]


def test_classification_keeps_every_file_of_before_and_refuses_a_resume_with_another_lr(tmp_path, monkeypatch,
                                                                                       capsys):
    out = tmp_path / "run"
    argv = [*CLASSIFICATION, "--epochs", "2", "--lr", "0.05", "--pruning_times", "2", "--save_dir", str(out)]
    parser = main_imp_downstream.get_args_parser()
    poison = Poison(monkeypatch, out, at=4)  # round 1, epoch 1: after round 1's checkpoint of its epoch 0
    code, stdout, err = run_main(main_imp_downstream.main, parser, argv, capsys)
    assert code == 3
    diverged_line(err, 1, "epoch 1")
    assert snapshot(out) == poison.before
    assert {"0checkpoint.pth.tar", "1checkpoint.pth.tar", "ticket_01.pt"} <= set(poison.before)
    assert "ticket_02.pt" not in poison.before and "done" not in stdout
    monkeypatch.setattr(trainer, "train_one_epoch", poison.real)
    # A resume keeps the run's learning rate: another one is refused, in one line that says what to do.
    code, _, err = run_main(main_imp_downstream.main, parser, [*argv, "--resume", "--lr", "0.01"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "--lr is 0.01" in err and "another folder" in err
    # (run.json gains a "resumed" entry before the check refuses: issue 18 item 6, the reliability work)
    after = snapshot(out)
    assert {name: after[name] for name in after if name != "run.json"} == \
        {name: poison.before[name] for name in poison.before if name != "run.json"}
    # The checkpoint from before the divergence is whole: the run resumes from it and finishes.
    main_imp_downstream.main(parser.parse_args([*argv, "--resume"]))
    assert (out / "ticket_02.pt").is_file()
    assert "resuming round 1 at epoch 1" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# Detection
# --------------------------------------------------------------------------------------------

DETECTION = ["--dataset", "digits", "--digits_canvas", "32", "--digits_counts", "24,8,8", "--arch", "resnet18_w16",
             "--img_size", "32", "--batch_size", "8", "--workers", "0", "--seed", "0", "--lr_schedule", "as_meant",
             "--warmup_epochs", "0", "--print_freq", "0", "--epochs", "2", "--cpu"]


@pytest.fixture(scope="module")
def backbone(module_tmp):
    torch.manual_seed(3)
    path = module_tmp("backbone") / "resnet18.pth"
    torch.save(build_model("resnet18_w16", 10, stem="imagenet").state_dict(), path)
    return str(path)


def test_detection_loss_diverging_stops_the_run(tmp_path, capsys, backbone):
    out = tmp_path / "huge_lr"
    code, stdout, err = run_main(train_imp.main, train_imp.get_args_parser(),
                                 [*DETECTION, "--lr_init", "1e6", "--imp_num", "0", "--rounds", "2",
                                  "--pretrained", backbone, "--save_dir", str(out)], capsys)
    assert code == 3 and "done" not in stdout
    diverged_line(err, 0)
    assert not any(name.startswith(("ticket_01", "backbone_imp")) or name.endswith(".png")
                   for name in os.listdir(out))


def test_detection_keeps_every_file_of_before(tmp_path, monkeypatch, capsys, backbone):
    out = tmp_path / "poisoned"
    poison = Poison(monkeypatch, out, at=4)  # round 1, epoch 1
    code, stdout, err = run_main(train_imp.main, train_imp.get_args_parser(),
                                 [*DETECTION, "--lr_init", "0.01", "--imp_num", "0", "--rounds", "2",
                                  "--pretrained", backbone, "--save_dir", str(out)], capsys)
    assert code == 3 and "done" not in stdout
    diverged_line(err, 1, "epoch 1")
    assert snapshot(out) == poison.before
    assert {"1checkpoint.pth.tar", "backbone_imp1.pth", "ticket_01.pt"} <= set(poison.before)
    assert "ticket_02.pt" not in poison.before and "backbone_imp2.pth" not in poison.before


# --------------------------------------------------------------------------------------------
# Segmentation (counted in iterations: a chunk is --val_interval iterations)
# --------------------------------------------------------------------------------------------

SEGMENTATION = ["--dataset", "digits", "--model", "deeplabv3plus_resnet18_w16", "--pretrained", "none",
                "--total_itrs", "4", "--val_interval", "2", "--batch_size", "8", "--val_batch_size", "135",
                "--random_seed", "3", "--cpu", "--print_interval", "0"]


def segmentation_round(save_dir, round_index, capsys, *extra):
    return run_main(lambda args: segrun.imp_main(args, segrun.SOURCES["imagenet"]),
                    segrun.get_args_parser("imp", segrun.SOURCES["imagenet"]),
                    [f"r{round_index}", "--imp_num", str(round_index), "--save_dir", str(save_dir),
                     *SEGMENTATION, *extra], capsys)


def test_segmentation_loss_diverging_stops_the_run(tmp_path, capsys):
    out = tmp_path / "huge_lr"
    code, stdout, err = segmentation_round(out, 0, capsys, "--lr", "1e6")
    assert code == 3 and "done" not in stdout
    diverged_line(err, 0, "iterations")
    assert not any(name.startswith("ticket_") or name.endswith(".png") for name in os.listdir(out))
    assert not os.path.exists(out / "seg_backbone_imp1.pth")


def test_segmentation_keeps_every_file_of_before(tmp_path, monkeypatch, capsys):
    out = tmp_path / "poisoned"
    segrun.imp_entry("imagenet", ["r0", "--imp_num", "0", "--save_dir", str(out), *SEGMENTATION])
    capsys.readouterr()
    poison = Poison(monkeypatch, out, at=2)  # round 1, iterations 3-4: after its checkpoint at iteration 2
    code, stdout, err = segmentation_round(out, 1, capsys)
    assert code == 3 and "done" not in stdout
    diverged_line(err, 1, "iterations 3-4")
    assert snapshot(out) == poison.before
    assert "ticket_01.pt" in poison.before and any(name.startswith("r1" + os.sep + "latest_")
                                                   for name in poison.before)
    assert "ticket_02.pt" not in poison.before and "seg_backbone_imp2.pth" not in poison.before


def test_weights_blown_up_by_the_last_step_stop_the_run_too():
    """A finite mean loss whose last step made the weights NaN: the check reads the weights as well."""
    from lth.errors import TrainingDiverged

    model = torch.nn.Linear(3, 2)
    trainer.stop_if_diverged({"loss": 0.5}, model, "round 0 epoch 0")  # finite: nothing happens
    with torch.no_grad():
        model.weight[0, 0] = float("inf")
    with pytest.raises(TrainingDiverged, match=r"round 2 epoch 4: its weights hold NaN or infinite values"):
        trainer.stop_if_diverged({"loss": 0.5}, model, "round 2 epoch 4")
    with pytest.raises(TrainingDiverged, match="the mean training loss is nan"):
        trainer.stop_if_diverged({"loss": float("nan")}, torch.nn.Linear(3, 2), "round 0 epoch 0")
    assert TrainingDiverged.exit_status == 3
