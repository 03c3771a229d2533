"""The segmentation entry scripts end to end on tiny data: IMP rounds (masks at 0.8^k, nested, head never
pruned, rewinding to round 0), the original's file keys, transfer of a classification ticket with its
controls, a kill mid-round resumed to the same masks, and bad input as one line with nothing overwritten."""

import functools
import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import pruning_utils
from lth import imp as lth_imp
from lth import trainer
from lth.models import build_model
from lth.tickets import save_ticket
from Segmentation import data as segdata
from Segmentation import run as segrun
from Segmentation.imp_files import read_imp_file
from test_segmentation_data import _label_png, _voc_labels, make_voc

pytestmark = pytest.mark.usefixtures("one_thread", "digits_built_once")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FAST = ["--dataset", "digits", "--model", "deeplabv3plus_resnet18_w16", "--pretrained", "none", "--total_itrs", "4",
        "--val_interval", "2", "--batch_size", "8", "--val_batch_size", "135", "--random_seed", "3",
        "--cpu", "--print_interval", "0"]


@pytest.fixture(scope="module")
def digits_built_once():
    """The digits set takes ~2 s to paste; every run of this file uses the same seed."""
    real = segdata.digits_segmentation
    segdata.digits_segmentation = functools.lru_cache(maxsize=2)(real)
    yield
    segdata.digits_segmentation = real


def imp(save_dir, round_index, *extra, source="imagenet"):
    segrun.imp_entry(source, [f"r{round_index}", "--imp_num", str(round_index), "--save_dir", str(save_dir),
                              *FAST, *extra])


def transfer(save_dir, exp, *extra):
    segrun.transfer_entry("imagenet", [exp, "--save_dir", str(save_dir), *FAST, "--val_interval", "4", *extra])


def rows(path):
    return [json.loads(line) for line in open(path)]


def masks_of(path):
    return pruning_utils.read_masks(str(path))[0]


class Captured(Exception):
    pass


@pytest.fixture(scope="module")
def three_rounds(module_tmp, one_thread):
    """Rounds 0, 1, 2; the model each round starts training from is recorded."""
    save_dir = module_tmp("imp")
    starts = {}
    real = lth_imp.train_stage

    def recording(model, *args, stage, **kwargs):
        starts[stage] = {key: value.clone() for key, value in pruning_utils.dense_state_dict(model).items()}
        return real(model, *args, stage=stage, **kwargs)

    lth_imp.train_stage = recording
    try:
        for round_index in range(3):
            imp(save_dir, round_index)
    finally:
        lth_imp.train_stage = real
    return save_dir, starts


def test_backbone_masks_shrink_by_0_8_per_round_and_are_nested(three_rounds):
    save_dir, _ = three_rounds
    tickets = [masks_of(save_dir / f"ticket_{k:02d}.pt") for k in (1, 2, 3)]
    classifier = build_model("resnet18_w16", 10, stem="imagenet")
    expected = {name + ".weight_mask" for name, _ in pruning_utils.prunable_convs(classifier)}
    for k, masks in enumerate(tickets, start=1):
        assert set(masks) == expected  # the backbone's 19 convs without conv1, named as classification's
        assert pruning_utils.mask_remaining(masks) == pytest.approx(100 * 0.8 ** k, abs=0.01)
    for earlier, later in zip(tickets, tickets[1:]):
        assert all(torch.all(later[key] <= earlier[key]) for key in earlier)
    summary = rows(save_dir / "summary.jsonl")
    assert [row["round"] for row in summary] == [0, 1, 2]
    assert [row["remaining"] for row in summary] == pytest.approx([100, 80, 64], abs=0.01)
    for row, round_index in zip(summary, range(3)):
        metrics = rows(save_dir / f"r{round_index}" / "metrics.jsonl")
        assert [m["itr"] for m in metrics] == [2, 4]
        assert {"miou", "overall_acc", "mean_acc", "fwiou", "class_iou"} <= set(metrics[0])
        assert row["best_miou"] == pytest.approx(max(m["miou"] for m in metrics), abs=1e-3)
        assert row["last_miou"] == pytest.approx(metrics[-1]["miou"], abs=1e-3)
        assert row["primary_metric"] == "miou" and "reported" in row and "final" in row
    # training cost: each round (its own run) 4 iterations, cumulative over the rounds before it (lth.cost)
    assert [row["cost_itrs"] for row in summary] == [4, 8, 12]
    assert [row["cost_images"] for row in summary] == [sum(r["round_images"] for r in summary[:k + 1]) for k in range(3)]
    assert (save_dir / "miou_vs_remaining.png").exists() and (save_dir / "r1" / "net_train.png").exists()
    # a finished round keeps seg_backbone_imp{k+1}.pth, its ticket and its best model, not the resumable
    # checkpoint (model and optimizer) unless --keep_checkpoints
    assert not (save_dir / "r2" / "latest_deeplabv3plus_resnet18_w16_digits_os16.pth").exists()
    assert (save_dir / "r2" / "best_deeplabv3plus_resnet18_w16_digits_os16.pth").exists()


def test_imp_files_have_the_original_keys_and_the_head_is_never_pruned(three_rounds):
    save_dir, _ = three_rounds
    start = read_imp_file(str(save_dir / "seg_backbone_imp0.pth"))
    assert set(start) == {"first_conv", "backbone", "classifier"}
    assert not any(key.endswith("_mask") for key in start["backbone"])  # round 0: dense
    third = read_imp_file(str(save_dir / "seg_backbone_imp3.pth"))
    assert "layer1.0.conv1.weight_orig" in third["backbone"] and "layer1.0.conv1.weight_mask" in third["backbone"]
    assert "conv1.weight" in third["backbone"] and "conv1.weight_mask" not in third["backbone"]
    assert set(third["first_conv"]) == {"weight"}
    assert not any("mask" in key or "orig" in key for key in third["classifier"])  # ASPP, decoder: dense
    assert not any(key.startswith("fc.") for key in third["backbone"])


def test_every_round_starts_from_the_round_0_state_with_its_mask(three_rounds):
    save_dir, starts = three_rounds
    saved = read_imp_file(str(save_dir / "seg_backbone_imp0.pth"))
    masks = masks_of(save_dir / "ticket_02.pt")
    start = starts[2]
    for key, value in saved["classifier"].items():  # head at its round-0 init
        assert torch.equal(start["classifier." + key], value), key
    assert torch.equal(start["backbone.conv1.weight"], saved["first_conv"]["weight"])
    for key, value in saved["backbone"].items():  # pre-trained backbone (batch norms too) under round 2's mask
        mask_key = key[: -len("weight")] + "weight_mask"
        expected = value * masks[mask_key] if key.endswith(".weight") and mask_key in masks else value
        assert torch.equal(start["backbone." + key], expected), key


def test_a_missing_previous_round_and_a_rerun_are_one_line_errors(three_rounds, tmp_path, capsys):
    save_dir, _ = three_rounds
    with pytest.raises(SystemExit) as exit_info:
        imp(tmp_path / "fresh", 2)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().count("\n") == 0
    before = hashlib.md5((save_dir / "seg_backbone_imp1.pth").read_bytes()).hexdigest()
    with pytest.raises(SystemExit):
        segrun.imp_entry("imagenet", ["other", "--imp_num", "0", "--save_dir", str(save_dir), *FAST])
    err = capsys.readouterr().err
    assert "seg_backbone_imp0.pth' already exists" in err and err.strip().count("\n") == 0
    assert hashlib.md5((save_dir / "seg_backbone_imp1.pth").read_bytes()).hexdigest() == before


def test_a_kill_mid_round_resumes_to_the_same_masks(three_rounds, tmp_path, monkeypatch):
    save_dir, _ = three_rounds
    real, calls = trainer.train_one_epoch, {"n": 0}

    def dies_after_the_first_checkpoint(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise Captured()
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer, "train_one_epoch", dies_after_the_first_checkpoint)
    with pytest.raises(Captured):
        imp(tmp_path, 0)
    monkeypatch.setattr(trainer, "train_one_epoch", real)
    assert not (tmp_path / "seg_backbone_imp1.pth").exists()
    imp(tmp_path, 0, "--resume", "--keep_checkpoints")
    assert (tmp_path / "r0" / "latest_deeplabv3plus_resnet18_w16_digits_os16.pth").exists()  # kept, as asked
    whole, cut = masks_of(save_dir / "ticket_01.pt"), masks_of(tmp_path / "ticket_01.pt")
    assert all(torch.equal(whole[key], cut[key]) for key in whole)

    def numbers(row):
        return {key: value for key, value in row.items() if key not in ("seconds", "train_images_per_s")}
    assert [numbers(r) for r in rows(tmp_path / "r0" / "metrics.jsonl")] == \
        [numbers(r) for r in rows(save_dir / "r0" / "metrics.jsonl")]


def test_a_round_0_that_died_before_its_first_checkpoint_starts_again_with_resume(three_rounds, tmp_path,
                                                                                   monkeypatch, capsys):
    """seg_backbone_imp0.pth is written before training (as the original): after a crash in the
    first epoch a plain rerun is refused, --resume starts round 0 again from that file and ends
    with the uninterrupted run's ticket and metrics."""
    save_dir, _ = three_rounds

    def dies(*args, **kwargs):
        raise Captured()

    monkeypatch.setattr(trainer, "train_one_epoch", dies)
    with pytest.raises(Captured):
        imp(tmp_path, 0)
    monkeypatch.undo()
    assert (tmp_path / "seg_backbone_imp0.pth").exists() and not list((tmp_path / "r0").glob("*.pth"))
    start = (tmp_path / "seg_backbone_imp0.pth").read_bytes()
    capsys.readouterr()
    with pytest.raises(SystemExit):
        imp(tmp_path, 0)
    assert "seg_backbone_imp0.pth' already exists" in capsys.readouterr().err
    imp(tmp_path, 0, "--resume")
    assert "starts again from" in capsys.readouterr().err
    assert (tmp_path / "seg_backbone_imp0.pth").read_bytes() == start
    whole, again = masks_of(save_dir / "ticket_01.pt"), masks_of(tmp_path / "ticket_01.pt")
    assert all(torch.equal(whole[key], again[key]) for key in whole)

    def numbers(row):
        return {key: value for key, value in row.items() if key not in ("seconds", "train_images_per_s")}
    assert [numbers(r) for r in rows(tmp_path / "r0" / "metrics.jsonl")] == \
        [numbers(r) for r in rows(save_dir / "r0" / "metrics.jsonl")]


def test_all_rounds_in_one_resumable_command(tmp_path, capsys):
    argv = ["sweep", "--imp_rounds", "2", "--save_dir", str(tmp_path), *FAST, "--total_itrs", "2"]
    segrun.imp_entry("imagenet", argv)
    assert [row["exp"] for row in rows(tmp_path / "summary.jsonl")] == ["sweep_0", "sweep_1"]
    assert pruning_utils.mask_remaining(masks_of(tmp_path / "ticket_02.pt")) == pytest.approx(64, abs=0.01)
    ticket = (tmp_path / "ticket_02.pt").read_bytes()
    with pytest.raises(SystemExit):
        segrun.imp_entry("imagenet", argv)
    assert "already holds an IMP run" in capsys.readouterr().err
    segrun.imp_entry("imagenet", [*argv, "--resume"])  # finished rounds are skipped
    assert (tmp_path / "ticket_02.pt").read_bytes() == ticket and len(rows(tmp_path / "summary.jsonl")) == 2


def test_moco_and_simclr_imp_validate_only_in_the_second_half(tmp_path):
    imp(tmp_path, 0, "--total_itrs", "6", source="moco")
    assert [row["itr"] for row in rows(tmp_path / "r0" / "metrics.jsonl")] == [4, 6]


def test_transfer_of_a_classification_ticket_and_its_controls(tmp_path):
    torch.manual_seed(0)
    classifier = build_model("resnet18_w16", 10, stem="cifar")
    pruning_utils.global_prune(classifier, 0.3)
    ticket = tmp_path / "ticket_01.pt"
    save_ticket(str(ticket), pruning_utils.current_masks(classifier), round=1, arch="resnet18_w16")
    expected = masks_of(ticket)
    out = tmp_path / "out"
    transfer(out, "ticket", "--mask_dir", str(ticket))
    transfer(out, "reverse", "--mask_dir", str(ticket), "--reverse_mask")
    transfer(out, "random", "--mask_dir", str(ticket), "--random_prune")
    summary = {row["exp"]: row for row in rows(out / "summary.jsonl")}
    assert summary["ticket"]["remaining"] == pytest.approx(70, abs=0.01)
    assert summary["reverse"]["remaining"] == pytest.approx(30, abs=0.01)
    assert summary["random"]["remaining"] == pytest.approx(70, abs=0.01)
    assert {row["kind"] for row in summary.values()} == {"ticket", "reversed ticket", "random pruning"}
    latest = "latest_deeplabv3plus_resnet18_w16_digits_os16.pth"
    trained = {key[len("backbone."):]: value for key, value in
               torch.load(out / "ticket" / latest, weights_only=False)["state_dict"].items()
               if key.startswith("backbone.") and key.endswith("_mask")}
    assert set(trained) == set(expected) and all(torch.equal(trained[k], expected[k]) for k in expected)
    random = torch.load(out / "random" / latest, weights_only=False)["state_dict"]
    assert not torch.equal(random["backbone.layer4.1.conv2.weight_mask"], expected["layer4.1.conv2.weight_mask"])
    head = [key for key in random if key.startswith("classifier.") and key.endswith("_mask")]
    assert head == []
    assert (out / "miou_vs_remaining.png").exists()


def test_step_policy_and_the_backbone_at_a_tenth_of_the_head_rate(tmp_path):
    transfer(tmp_path, "step", "--lr_policy", "step", "--step_size", "1", "--total_itrs", "2", "--val_interval", "1")
    assert [row["lr"] for row in rows(tmp_path / "step" / "metrics.jsonl")] == pytest.approx([0.01, 0.001])
    checkpoint = torch.load(tmp_path / "step" / "latest_deeplabv3plus_resnet18_w16_digits_os16.pth", weights_only=False)
    groups = checkpoint["optimizer"]["param_groups"]
    assert [group["lr"] for group in groups] == pytest.approx([1e-4, 1e-5])  # head, backbone after 2 steps
    assert checkpoint["cur_itrs"] == 2 and 0 <= checkpoint["best_score"] <= 1  # the original's keys


def test_test_only_prints_the_scores_and_writes_only_predictions(tmp_path, capsys):
    transfer(tmp_path, "look", "--test_only", "--save_val_results")
    out = capsys.readouterr().out
    assert "mIoU" in out and "class IoU" in out
    written = sorted(os.listdir(tmp_path / "look"))
    results = os.listdir(tmp_path / "look" / "results")
    assert written == ["results"] and len(results) == 4 * 135  # image, target, prediction, overlay each
    assert {name.rsplit("_", 1)[1] for name in results} == {"image.png", "target.png", "pred.png", "overlay.png"}


@pytest.mark.parametrize("case", ["no_root", "no_list", "no_label", "size", "value"])
def test_bad_voc_input_is_one_line_and_overwrites_nothing(tmp_path, capsys, case):
    voc = make_voc(tmp_path / "data")
    root, expected = tmp_path / "data", None
    if case == "no_root":
        root, expected = tmp_path / "nowhere", "VOCdevkit/VOC2012"
    elif case == "no_list":
        os.remove(os.path.join(voc, "ImageSets", "Segmentation", "train.txt"))
        expected = "train.txt"
    elif case == "no_label":
        os.remove(os.path.join(voc, "SegmentationClass", "b.png"))
        expected = "'b' but its label"
    elif case == "size":
        _label_png(os.path.join(voc, "SegmentationClass", "a.png"), _voc_labels(21, 28, 1))
        expected = "a.png' is 28x21 but its image"
    else:
        bad = _voc_labels(24, 18, 2)
        bad[0, 0] = 21
        _label_png(os.path.join(voc, "SegmentationClass", "b.png"), bad)
        expected = "b.png' holds value 21"
    save_dir = tmp_path / "runs"
    (save_dir / "r0").mkdir(parents=True)
    (save_dir / "r0" / "metrics.jsonl").write_text('{"round": 0, "itr": 2, "miou": 1.0}\n')
    with pytest.raises(SystemExit) as exit_info:
        segrun.imp_entry("imagenet", ["r0", "--imp_num", "0", "--save_dir", str(save_dir), "--resume",
                                      "--dataset", "voc", "--data_root", str(root)])
    assert exit_info.value.code == 2
    # a run already in the folder: refused before the data are read; nothing is changed
    assert "holds no checkpoint" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        segrun.imp_entry("imagenet", ["r1", "--imp_num", "0", "--save_dir", str(save_dir), "--dataset", "voc",
                                      "--data_root", str(root), "--model", "deeplabv3plus_resnet18_w16",
                                      "--pretrained", "none", "--crop_size", "16", "--batch_size", "2",
                                      "--total_itrs", "2", "--workers", "0", "--cpu"])
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line.lower()]
    assert exit_info.value.code == 2 and len(errors) == 1 and errors[0].startswith("error: ")
    assert expected in errors[0]
    assert (save_dir / "r0" / "metrics.jsonl").read_text() == '{"round": 0, "itr": 2, "miou": 1.0}\n'
    assert not (save_dir / "seg_backbone_imp1.pth").exists()


def test_missing_or_mismatching_weights_are_one_line_errors(tmp_path, capsys):
    with pytest.raises(SystemExit):
        transfer(tmp_path, "w", "--pretrained", str(tmp_path / "absent.pth"))
    assert "never downloaded" in capsys.readouterr().err
    torch.save({"state_dict": build_model("resnet50", 1000, stem="imagenet").state_dict()}, tmp_path / "r50.pth")
    with pytest.raises(SystemExit):
        transfer(tmp_path, "w2", "--pretrained", str(tmp_path / "r50.pth"))
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "shape" in err and "\n" not in err


def test_round_files_as_masks_a_pruned_ckpt_and_the_originals_flags(three_rounds, tmp_path, capsys):
    """seg_backbone_imp{n}.pth transferred gives ticket_round n; --ckpt of a pruned model is not
    labelled dense; the original's --mask_dir (IMP) and --imp_num (transfer) are accepted and said
    ignored, as they did nothing there; python -m lth.tickets reads the round file."""
    save_dir, _ = three_rounds
    out = tmp_path / "out"
    transfer(out, "from_round", "--mask_dir", str(save_dir / "seg_backbone_imp2.pth"), "--imp_num", "7")
    assert "--imp_num is ignored" in capsys.readouterr().err
    best = save_dir / "r2" / "best_deeplabv3plus_resnet18_w16_digits_os16.pth"
    transfer(out, "from_ckpt", "--ckpt", str(best))
    summary = {row["exp"]: row for row in rows(out / "summary.jsonl")}
    assert summary["from_round"]["ticket_round"] == 2 and summary["from_round"]["kind"] == "ticket"
    assert summary["from_ckpt"]["kind"] == "pruned checkpoint"
    assert summary["from_ckpt"]["remaining"] == pytest.approx(64, abs=0.01)
    assert summary["from_ckpt"]["train_precision"] == "fp32" == summary["from_ckpt"]["eval_precision"]
    parser = segrun.get_args_parser("imp", segrun.SOURCES["imagenet"])
    args = parser.parse_args(["x", "--imp_num", "0", "--mask_dir", "../Maskall/img2-mask/mask-1.pt"])
    assert "--mask_dir is ignored" in segrun.ignored_original_flags(args, "imp")[0]
    shown = subprocess.run([sys.executable, "-m", "lth.tickets", "show", str(save_dir / "seg_backbone_imp2.pth")],
                           capture_output=True, text=True, cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT))
    assert shown.returncode == 0, shown.stderr
    assert "64.00" in shown.stdout and "round" in shown.stdout
    masks, meta = pruning_utils.read_masks(str(save_dir / "seg_backbone_imp2.pth"))
    assert meta["round"] == 2 and pruning_utils.mask_remaining(masks) == pytest.approx(64, abs=0.01)
