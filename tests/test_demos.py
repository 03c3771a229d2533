"""The demos' shared pieces (demo/common.py, demo/run.py) and the small architectures they train."""

import importlib.util
import json
import argparse
import os
import statistics
import sys

import pytest
import torch

from lth import pruning
from lth.models import build_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"demo_{name}", os.path.join(ROOT, "demo", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


common = _load("common")


def load_demo(name: str):
    """A demo script as a module. The demos import their sibling ``common`` as scripts do (``demo/``
    is first on a script's sys.path); here demo/common.py stands in for it while the script loads."""
    saved = sys.modules.get("common")
    sys.modules["common"] = common
    try:
        return _load(name)
    finally:
        if saved is None:
            del sys.modules["common"]
        else:
            sys.modules["common"] = saved


def test_mean_std_is_the_sample_standard_deviation():
    values = [96.1, 97.5, 94.25]
    mean, std = common.mean_std(values).split(" ± ")
    assert float(mean) == round(statistics.mean(values), 2) and float(std) == round(statistics.stdev(values), 2)
    assert common.mean_std([3.0]) == "3.00"


def test_convergence_table_counts_trainings_whose_best_evaluation_is_the_last():
    text = common.convergence_table("accuracy (%)", "epoch", [1, 2, 3], {
        "dense": [[50.0, 90.0, 90.0], [40.0, 80.0, 95.0]],  # a tie with an earlier epoch is not "best at the end"
        "short": [[10.0, 20.0]],  # another length: left out, and so is its row
    })
    rows = [line for line in text.splitlines() if line.startswith("| dense")]
    assert rows == ["| dense | 2 | 45.00 | 85.00 | 92.50 | +7.50 | 1 of 2 |"]
    assert "short" not in text


def test_read_trainings_splits_round_zero_off_as_the_dense_model(tmp_path):
    run = load_demo("run")

    def write(name, rounds):
        os.makedirs(tmp_path / name)
        with open(tmp_path / name / "metrics.jsonl", "w") as handle:
            for round_index, accuracies in enumerate(rounds):
                for epoch, accuracy in enumerate(accuracies):
                    handle.write(json.dumps({"round": round_index, "epoch": epoch, "val_acc": accuracy,
                                             "test_acc": accuracy - 1}) + "\n")

    write("imp_lt_s0", [[10, 90, 95], [20, 80, 97]])
    write("random_s0", [[10, 90, 95], [5, 30, 60]])
    write("reinit_r01_s0", [[15, 70, 96]])
    write("unrelated", [[1, 2, 3]])
    epochs, trainings = run.read_trainings(str(tmp_path))
    assert epochs == [1, 2, 3]
    assert trainings[run.DENSE] == [[10, 90, 95], [10, 90, 95]]
    assert trainings["IMP tickets"] == [[20, 80, 97]] and trainings["random pruning"] == [[5, 30, 60]]
    assert trainings["random re-init"] == [[15, 70, 96]] and trainings["reversed mask"] == []


def test_instruction_set_names_torch_capability_and_the_caps_in_force(monkeypatch):
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    text = common.instruction_set()
    assert f"PyTorch CPU capability {torch.backends.cpu.get_cpu_capability()}" in text
    assert "AVX-512 in the CPU: " in text and "ONEDNN_MAX_CPU_ISA=AVX2" in text


def test_run_reports_a_child_s_cpu_time_and_stops_on_its_failure(tmp_path, capsys):
    script = tmp_path / "spin.py"
    script.write_text("import sys\nx = sum(i * i for i in range(2_000_000))\nsys.exit(int(sys.argv[1]))\n")
    cpu = common.run(str(script), "0")  # an absolute path is used as it is
    assert cpu > 0.05 and "CPU" in capsys.readouterr().out
    log = tmp_path / "failed.log"
    with pytest.raises(SystemExit, match="failed \\(exit 3\\); its output is in"):
        common.run(str(script), "3", log=str(log))
    assert log.exists()


def test_resnet18_w16_is_a_quarter_width_resnet18_with_its_names_and_init_rule():
    narrow, wide = build_model("resnet18_w16", 10, 1, "cifar"), build_model("resnet18", 10, 1, "cifar")
    assert list(narrow.state_dict()) == list(wide.state_dict())  # tickets and weight files go by these names
    for (name, a), (_, b) in zip(narrow.named_parameters(), wide.named_parameters()):
        if a.dim() == 4:
            assert a.shape[0] * 4 == b.shape[0] and name.endswith("weight")
    assert narrow.layer4[1].conv2.out_channels == 128 and narrow.fc.in_features == 128
    assert 0.6e6 < sum(p.numel() for p in narrow.parameters()) < 0.8e6
    torch.manual_seed(0)
    conv = build_model("resnet18_w16", 10, 3, "imagenet").layer3[0].conv1.weight
    # torchvision's rule: kaiming normal, fan_out, gain sqrt(2): std sqrt(2 / (out * 3 * 3))
    assert abs(conv.std().item() - (2 / (conv.shape[0] * 9)) ** 0.5) < 0.004


def test_a_resnet18_w16_ticket_fits_both_stems():
    cifar = build_model("resnet18_w16", 10, 1, "cifar")
    pruning.global_prune(cifar, 0.5)
    masks = pruning.current_masks(cifar, False)
    imagenet = build_model("resnet18_w16", 10, 3, "imagenet")
    pruning.apply_mask(imagenet, masks)
    assert pruning.sparsity(imagenet, False)["remaining"] == pytest.approx(50.0, abs=0.01)


def test_quarter_width_dense_backbones_and_their_heads():
    from Detection.model import YOLOv4
    from Segmentation.model import build_segmentation_model

    seg = build_segmentation_model("deeplabv3plus_resnet18_w16", 11, 16)
    assert seg.classifier.project[0].out_channels == 12 and seg.classifier.classifier[0].out_channels == 64
    assert seg(torch.zeros(2, 3, 32, 32)).shape == (2, 11, 32, 32)
    full = build_segmentation_model("deeplabv3plus_resnet18", 11, 16)  # the original's widths stay
    assert full.classifier.project[0].out_channels == 48 and full.classifier.classifier[0].out_channels == 256
    det = YOLOv4(10, "resnet18_w16")
    raw, decoded = det(torch.zeros(2, 3, 32, 32))
    assert [tuple(r.shape[1:3]) for r in raw] == [(4, 4), (2, 2), (1, 1)]


def test_read_digits_gives_load_digits_arrays_without_importing_sklearn():
    import subprocess

    from sklearn.datasets import load_digits

    from lth.data import read_digits

    ink, labels = read_digits()
    bunch = load_digits()
    assert ink.dtype == bunch.images.dtype and ink.shape == (1797, 8, 8)
    assert (ink == bunch.images).all() and (labels == bunch.target).all() and labels.dtype == "int64"
    probe = "import sys; from lth.data import read_digits; read_digits(); print('sklearn' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "False"


def test_convergence_table_says_when_every_training_of_a_row_was_still_improving():
    text = common.convergence_table("mIoU (%)", "step", [100, 200], {
        "dense": [[10.0, 20.0], [12.0, 22.0], [15.0, 16.0]],  # 3 of 3 best at the end
        "ticket": [[10.0, 9.0], [12.0, 22.0]],  # 1 of 2: a plateau's noise can do that
    }, longer="--itrs")
    assert text.rstrip().endswith("Every training of dense was still improving at its last evaluation: "
                                  "their figures are of networks trained for this budget, not of converged "
                                  "ones (a longer budget: --itrs).")


def test_detection_demo_says_what_its_canvases_hold():
    detection = load_demo("detection")
    one = argparse.Namespace(train_canvases=60, canvas=32, scale=3)
    assert detection.digits_per_canvas(one) == "one 24 px digit per canvas"
    several = argparse.Namespace(train_canvases=60, canvas=64, scale=2)
    assert detection.digits_per_canvas(several) == "1-3 16 px digits per canvas"
