"""main_report.py on real tiny detection and segmentation runs (the scripts run in-process on digits,
ResNet-18): the paper's Fig. 4 (IMP ticket, random pruning, dense), each curve against its own dense
model, and a finished detection round that --resume leaves alone (its logs are not cut back)."""

from __future__ import annotations

import csv
import functools
import os
import shutil

import pytest

import main_report
from Detection import train_imp, train_random
from lth import cli, report
from Segmentation import data as segdata
from Segmentation import run as segrun

pytestmark = pytest.mark.usefixtures("one_thread")

DET = ["--dataset", "digits", "--digits_canvas", "32", "--digits_counts", "24,8,8", "--arch", "resnet18_w16",
       "--img_size", "32", "--batch_size", "8", "--workers", "0", "--seed", "0", "--lr_schedule", "as_meant",
       "--warmup_epochs", "0", "--lr_init", "0.01", "--print_freq", "0", "--epochs", "1", "--pretrained", "none",
       "--imp_type", "moco"]
SEG = ["--dataset", "digits", "--model", "deeplabv3plus_resnet18_w16", "--pretrained", "none", "--total_itrs", "4",
       "--val_interval", "2", "--batch_size", "8", "--val_batch_size", "135", "--random_seed", "3", "--cpu",
       "--print_interval", "0"]


def make_report(out, *runs):
    main_report.main(main_report.get_args_parser().parse_args([*map(str, runs), "--out", str(out)]))
    with open(os.path.join(out, "levels.csv")) as handle:
        return list(csv.DictReader(handle)), open(os.path.join(out, "report.md")).read()


@pytest.fixture(scope="module")
def detection(module_tmp):
    """IMP rounds 0 and 1 (one command) and the random-pruning control at level 1 (0.8 remain)."""
    root = module_tmp("det")
    imp, random = root / "seed0_moco_imp_ckpt", root / "seed0_moco_random_ckpt"
    train_imp.main(train_imp.get_args_parser().parse_args([*DET, "--imp_num", "0", "--rounds", "2",
                                                            "--save_dir", str(imp)]))
    train_random.main(train_random.get_args_parser().parse_args([*DET, "--imp_num", "1", "--save_dir", str(random)]))
    yield root, imp, random
    shutil.rmtree(root, ignore_errors=True)


def test_detection_imp_and_random_pruning_make_fig_4(detection, tmp_path):
    root, imp, random = detection
    levels, text = make_report(tmp_path / "report", imp, random)
    by_group = {(row["group"], float(row["remaining"])): row for row in levels}
    assert set(by_group) == {("IMP (from random init)", 100.0), ("IMP (from random init)", 80.0),
                             ("random pruning (from random init)", 80.0)}
    control = by_group[("random pruning (from random init)", 80.0)]
    assert control["reference"] == "IMP (from random init)" and control["dense"] == "IMP (from random init)"
    assert control["metric"] == "ap" and control["matches_within_std"] in ("true", "false")
    # the task is read from the runs' contents (detection AP on digits), not from the scripts' names
    assert text.startswith("# Report: detection on digits (ap)")
    # the control's link to the IMP run that drew its ticket is read from its run.json
    line = next(line for line in text.splitlines() if line.startswith("| random pruning (from random init) |"))
    assert "| IMP (from random init): " in line and "(n=1) (the dense model of the ticket's experiment)" in line
    assert "AP (%) at the best evaluation" in text and str(imp) in text
    assert (tmp_path / "report" / "metric_vs_remaining.png").stat().st_size > 10_000


def one_line_error(capsys, module, argv) -> str:
    with pytest.raises(SystemExit) as info:
        cli.run_main(module.main, module.get_args_parser(), argv)
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert info.value.code == 2 and len(err) == 1
    return err[0]


def test_resuming_a_finished_detection_round_keeps_its_logs(detection, capsys):
    """Re-running a finished round with --resume used to resume its kept checkpoint and cut
    summary.jsonl and metrics.jsonl back to that round; now it is refused and nothing changes."""
    _, imp, _ = detection
    before = {name: (imp / name).read_bytes() for name in ("summary.jsonl", "metrics.jsonl", "run.json")}
    for first, rounds in (("0", "1"), ("1", "1"), ("0", "2")):
        message = one_line_error(capsys, train_imp, [*DET, "--imp_num", first, "--rounds", rounds, "--resume",
                                                     "--save_dir", str(imp)])
        assert "finished already" in message and "nothing was changed" in message
    assert {name: (imp / name).read_bytes() for name in before} == before


@pytest.fixture(scope="module")
def segmentation(module_tmp):
    """IMP rounds 0 and 1 in one command (round k in EXP_k, one summary.jsonl for the --save_dir),
    and random pruning at round 1's sparsity (the transfer script's --random_prune)."""
    real = segdata.digits_segmentation
    segdata.digits_segmentation = functools.lru_cache(maxsize=2)(real)
    root = module_tmp("seg")
    imp, transfer = root / "seed3_imp_outbackbone", root / "checkpoints"
    try:
        segrun.imp_entry("imagenet", ["seed3_imp_imagenet", "--imp_rounds", "2", "--save_dir", str(imp), *SEG])
        segrun.transfer_entry("imagenet", ["seed3_imagenet_random_01", "--save_dir", str(transfer), "--random_prune",
                                           "--mask_dir", str(imp / "seg_backbone_imp1.pth"), *SEG])
    finally:
        segdata.digits_segmentation = real
    yield root, imp, transfer
    shutil.rmtree(root, ignore_errors=True)


def test_segmentation_imp_and_random_pruning_make_fig_4(segmentation, tmp_path):
    """Each round runs in SAVE_DIR/EXP_k without a summary of its own (the rows are in SAVE_DIR):
    the report reads them (this was 'no finished round', exit status 2)."""
    _, imp, transfer = segmentation
    levels, text = make_report(tmp_path / "report", imp, transfer)
    by_group = {(row["group"], float(row["remaining"])): row for row in levels}
    assert set(by_group) == {("IMP", 100.0), ("IMP", 80.0), ("random pruning (one shot to the masks' sparsity)", 80.0)}
    control = by_group[("random pruning (one shot to the masks' sparsity)", 80.0)]
    assert control["reference"] == "IMP" and control["dense"] == "IMP"
    results = report.analyse(report.read_runs([str(imp), str(transfer)]))
    imp_group = results.groups[0]
    assert sorted(os.path.basename(r.path) for r in imp_group.runs) == ["seed3_imp_imagenet_0", "seed3_imp_imagenet_1"]
    assert imp_group.dense.runs == [str(imp / "seed3_imp_imagenet_0")]
    assert "mIoU (%)" in text and "Missing or skipped" not in text
