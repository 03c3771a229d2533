"""The detection entry scripts end to end on tiny digits canvases with a ResNet-18 YOLOv4: IMP masks at
0.8^k and nested with neck/heads/conv1 untouched, the original's rewind between rounds, one process
per round equal to all rounds in one, a kill mid-round resumed to the same masks, random pruning,
transfer of classification and detection masks, and bad input refused on one line."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

import pruning_utils
from Detection import eval as det_eval
from Detection import train_imp, train_random, train_transfer
from Detection.imp_files import BACKBONE_IMP_KEYS
from Detection.model import YOLOv4
from lth import cli, imp as lth_imp, trainer
from lth.models import build_model
from test_detection_data import write_voc

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def free_disk(tmp_path):
    """A YOLOv4 checkpoint is 80-160 MB even on ResNet-18: each test's folder goes once it is done."""
    yield
    shutil.rmtree(tmp_path, ignore_errors=True)

TINY = ["--dataset", "digits", "--digits_canvas", "32", "--digits_counts", "24,8,8", "--arch", "resnet18_w16",
        "--img_size", "32", "--batch_size", "8", "--workers", "0", "--seed", "0", "--lr_schedule", "as_meant",
        "--warmup_epochs", "0", "--lr_init", "0.01", "--print_freq", "0", "--epochs", "2"]


def run(module, *argv):
    return module.main(module.get_args_parser().parse_args([*TINY, *argv]))


@pytest.fixture(scope="module")
def weights(module_tmp):
    """A 'pre-trained' backbone file: a classification ResNet-18 state_dict (fc of 10 classes)."""
    torch.manual_seed(3)
    path = module_tmp("weights") / "resnet18.pth"
    torch.save(build_model("resnet18_w16", 10, stem="imagenet").state_dict(), path)
    return str(path)


class Snapshots:
    """Wraps the core's train_stage to keep each round's model state as it starts training."""

    def __init__(self):
        self.at_start = {}
        self.real = lth_imp.train_stage

    def __call__(self, model, *args, stage, **kwargs):
        self.at_start.setdefault(stage, {k: v.detach().clone() for k, v in model.state_dict().items()})
        return self.real(model, *args, stage=stage, **kwargs)


@pytest.fixture(scope="module")
def whole(module_tmp, weights):
    """Rounds 0..2 in one process (each 2 epochs, evaluated after the last)."""
    path = module_tmp("imp") / "whole"
    snapshots = Snapshots()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(lth_imp, "train_stage", snapshots)
        run(train_imp, "--imp_num", "0", "--rounds", "3", "--pretrained", weights, "--save_dir", str(path))
    yield path, snapshots.at_start
    shutil.rmtree(path.parent, ignore_errors=True)


def masks_of(path):
    return pruning_utils.read_masks(str(path))[0]


def rows(path, name):
    return [json.loads(line) for line in open(os.path.join(path, name)) if line.strip()]


def numbers(row):
    return {k: v for k, v in row.items() if "seconds" not in k and k != "train_images_per_s"}  # measured: wall time


def test_masks_shrink_by_0_8_per_round_nested_on_backbone_convs_only(whole):
    path, _ = whole
    masks = [masks_of(path / f"ticket_{k:02d}.pt") for k in range(4)]
    classifier = build_model("resnet18_w16", 10, stem="imagenet")
    expected = {name + ".weight_mask" for name, _ in pruning_utils.prunable_convs(classifier)}
    assert len(expected) == 19 and "conv1.weight_mask" not in expected
    for k in (1, 2, 3):
        assert set(masks[k]) == expected
        assert pruning_utils.mask_remaining(masks[k]) == pytest.approx(100 * 0.8 ** k, abs=0.01)
        assert all(torch.all(masks[k][key] <= masks[k - 1].get(key, 1)) for key in masks[k])  # nested
    state = torch.load(path / "backbone_imp2.pth", weights_only=False)
    assert set(state) == set(BACKBONE_IMP_KEYS) and state["imp"] == 1
    assert "backbone.layer1.0.conv1.weight_orig" in state["all_state_dict"]
    assert not any(k.endswith("weight_mask") for k in state["all_state_dict"] if not k.startswith("backbone."))
    assert "backbone.conv1.weight" in state["all_state_dict"] and "weight" in state["first_conv1"]
    summary = rows(path, "summary.jsonl")
    assert [row["remaining"] for row in summary] == pytest.approx([100, 80, 64], abs=0.01)
    assert all(row["primary_metric"] == "ap" and row["trained_epochs"] == 2 for row in summary)
    metrics = rows(path, "metrics.jsonl")
    assert [(r["round"], r["epoch"], "ap" in r) for r in metrics] == \
        [(r, e, e == 1) for r in range(3) for e in range(2)]  # evaluated once, after the last epoch
    evaluated = [r for r in metrics if "ap" in r][0]
    assert {"ap50", "ap75", "class_ap50", "test_ap", "train_ciou", "train_conf", "train_cls"} <= set(evaluated)
    assert sorted(os.listdir(path / "model1" / "pred_result"))[0] == "comp4_det_test_0.txt"
    assert (path / "ap_vs_remaining.png").exists() and (path / "run.json").exists()


def test_rounds_rewind_as_the_original(whole, weights):
    """Round k+1 starts as the original's train_imp.py builds it: a fresh model with the pre-trained
    backbone, every tensor of backbone_imp{k+1}.pth's all_state_dict whose key it has, first_conv1,
    then the masks (written out here as the reference)."""
    path, at_start = whole
    pretrained = {k: v for k, v in torch.load(weights).items() if not k.startswith("fc.")}
    for k in (1, 2):
        saved = torch.load(path / f"backbone_imp{k}.pth", weights_only=False)
        reference = {}
        for key, value in saved["all_state_dict"].items():
            if key.endswith("weight_orig"):  # no such key in the unpruned model: stays pre-trained
                reference[key[:-len("_orig")]] = pretrained[key[len("backbone."):-len("_orig")]] * \
                    saved["all_state_dict"][key[:-len("orig")] + "mask"]
            elif not key.endswith("weight_mask"):
                reference[key] = value
        reference.update({f"backbone.conv1.{n}": v for n, v in saved["first_conv1"].items()})
        model = at_start[k]
        effective = {key[:-len("_orig")]: model[key] * model[key[:-len("orig")] + "mask"]
                     for key in model if key.endswith("weight_orig")}
        for key, value in reference.items():
            actual = effective[key] if key in effective else model[key]
            assert torch.equal(actual, value), key
        neck = [key for key in reference if key.startswith(("spp.", "panet.", "predict_net."))]
        assert neck and any(not torch.equal(at_start[0][key], reference[key]) for key in neck)  # trained values kept
        assert not torch.equal(at_start[0]["backbone.bn1.running_mean"], reference["backbone.bn1.running_mean"])


def test_one_process_per_round_equals_all_rounds_in_one(whole, weights, tmp_path):
    path, _ = whole
    folder = tmp_path / "rounds"
    for k in range(3):
        run(train_imp, "--imp_num", str(k), "--pretrained", weights, "--save_dir", str(folder), "--keep_checkpoints")
    for k in (1, 2, 3):
        mine, theirs = masks_of(folder / f"ticket_{k:02d}.pt"), masks_of(path / f"ticket_{k:02d}.pt")
        assert all(torch.equal(mine[key], theirs[key]) for key in theirs)
    assert [numbers(r) for r in rows(folder, "summary.jsonl")] == [numbers(r) for r in rows(path, "summary.jsonl")]
    # Disk: a finished round keeps its backbone_imp{k+1}.pth and ticket (plus the run's logs and the
    # rewind point), no checkpoint or best-model copy; --keep_checkpoints keeps them all.
    assert not [name for name in os.listdir(path) if name.endswith(".pth.tar") and name != "rewind_point.pth.tar"]
    assert {f"{k}checkpoint.pth.tar" for k in range(3)} <= set(os.listdir(folder))
    # and the model each round trained is rebuilt exactly from the files kept: backbone_imp{k+1}.pth's
    # weights with round k's masks (eval.py's default) equal that round's final checkpoint
    for k in range(3):
        rebuilt, _ = det_eval.imp_round_state(str(path), k)
        checkpoint = torch.load(folder / f"{k}checkpoint.pth.tar", weights_only=False)["state_dict"]
        assert rebuilt.keys() == checkpoint.keys(), k
        assert all(torch.equal(rebuilt[key], checkpoint[key]) for key in checkpoint), k
    # backbone tensors are stored once in backbone_imp{k}.pth: its size is that of the whole model alone
    torch.save(torch.load(path / "backbone_imp1.pth", weights_only=False)["all_state_dict"], tmp_path / "alone.pth")
    assert os.path.getsize(path / "backbone_imp1.pth") < 1.01 * os.path.getsize(tmp_path / "alone.pth")


class Killed(Exception):
    pass


def test_a_kill_mid_round_resumes_to_the_same_masks(whole, weights, tmp_path, monkeypatch):
    path, _ = whole
    real, calls = trainer.train_one_epoch, {"n": 0}

    def dies_in_round_one(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:  # round 1, second epoch: after the checkpoint of its first
            raise Killed()
        return real(*args, **kwargs)

    folder = str(tmp_path / "cut")
    monkeypatch.setattr(trainer, "train_one_epoch", dies_in_round_one)
    with pytest.raises(Killed):
        run(train_imp, "--imp_num", "0", "--rounds", "3", "--pretrained", weights, "--save_dir", folder)
    monkeypatch.setattr(trainer, "train_one_epoch", real)
    assert torch.load(os.path.join(folder, "1checkpoint.pth.tar"), weights_only=False)["epoch"] == 1
    run(train_imp, "--imp_num", "0", "--rounds", "3", "--pretrained", weights, "--save_dir", folder, "--resume")
    for k in (1, 2, 3):
        mine, theirs = masks_of(os.path.join(folder, f"ticket_{k:02d}.pt")), masks_of(path / f"ticket_{k:02d}.pt")
        assert all(torch.equal(mine[key], theirs[key]) for key in theirs)
    assert [numbers(r) for r in rows(folder, "metrics.jsonl")] == [numbers(r) for r in rows(path, "metrics.jsonl")]


def test_random_pruning_one_shot_to_0_8_power_k(weights, tmp_path):
    folder = tmp_path / "random"
    row = run(train_random, "--imp_num", "2", "--pretrained", weights, "--save_dir", str(folder), "--epochs", "1")
    masks = masks_of(folder / "ticket_02.pt")
    assert pruning_utils.mask_remaining(masks) == pytest.approx(64, abs=0.01) and len(masks) == 19
    saved = torch.load(folder / "backbone_random2.pth", weights_only=False)
    assert set(saved) == set(BACKBONE_IMP_KEYS)
    assert row["remaining"] == pytest.approx(64, abs=0.01) and row["round"] == 2
    assert (folder / "model2" / "summary.jsonl").exists() and (folder / "ap_vs_remaining.png").exists()
    # backbone_random2.pth is the trained model (written after training, as the original's file was),
    # and the finished run keeps no checkpoint beside it
    assert not (folder / "model2" / "2checkpoint.pth.tar").exists()
    kept = tmp_path / "kept"
    run(train_random, "--imp_num", "2", "--pretrained", weights, "--save_dir", str(kept), "--epochs", "1",
        "--keep_checkpoints")
    trained = torch.load(kept / "model2" / "2checkpoint.pth.tar", weights_only=False)["state_dict"]
    saved_state = saved["all_state_dict"]
    assert trained.keys() == saved_state.keys()
    assert all(torch.equal(trained[key], saved_state[key]) for key in trained)
    neck = [key for key in trained if key.startswith("panet.")]
    fresh = YOLOv4(10, "resnet18_w16").state_dict()
    assert any(not torch.equal(fresh[key], saved_state[key]) for key in neck)  # not the untrained model
    # evaluation of the saved trained model reproduces the run's last figures
    metrics = det_eval.main(det_eval.get_args_parser().parse_args(
        [*TINY, "--checkpoint", str(folder / "backbone_random2.pth")]))
    last = rows(folder / "model2", "metrics.jsonl")[-1]
    assert metrics["ap"] == pytest.approx(last["test_ap"], abs=1e-3)
    assert metrics["ap50"] == pytest.approx(last["test_ap50"], abs=1e-3)


def test_transfer_of_a_classification_ticket_and_of_detection_masks(whole, weights, tmp_path):
    path, _ = whole
    torch.manual_seed(0)
    classifier = build_model("resnet18_w16", 10, stem="cifar")  # the downstream scripts' network
    pruning_utils.global_prune(classifier, 0.5)
    masks = pruning_utils.current_masks(classifier)
    pruning_utils.save_ticket(str(tmp_path / "ticket_05.pt"), masks, round=5)
    row = run(train_transfer, "--mask_dir", str(tmp_path / "ticket_05.pt"), "--mask_num", "5",
              "--pretrained", weights, "--save_dir", str(tmp_path / "transfer"), "--epochs", "1")
    assert row["remaining"] == pytest.approx(50, abs=0.01)
    trained = torch.load(tmp_path / "transfer" / "model5" / "5checkpoint.pth.tar", weights_only=False)["state_dict"]
    for key, mask in masks.items():
        assert torch.equal(trained[f"backbone.{key}"], mask.to(trained[f"backbone.{key}"].dtype))
    # the original's mask-{i}.pt (a plain dict) found in a folder, and its backbone_imp{n}.pth, reversed
    os.makedirs(tmp_path / "Maskall")
    torch.save(masks, tmp_path / "Maskall" / "mask-3.pt")
    row = run(train_transfer, "--mask_dir", str(tmp_path / "Maskall"), "--mask_num", "3", "--pretrained", weights,
              "--save_dir", str(tmp_path / "transfer"), "--epochs", "1")
    assert row["remaining"] == pytest.approx(50, abs=0.01)
    row = run(train_transfer, "--mask_dir", str(path / "backbone_imp2.pth"), "--mask_num", "2", "--reverse_mask",
              "--pretrained", weights, "--save_dir", str(tmp_path / "transfer"), "--epochs", "1")
    assert row["remaining"] == pytest.approx(36, abs=0.01)
    points = rows(tmp_path / "transfer", "summary.jsonl")
    assert sorted(r["round"] for r in points) == [2, 3, 5]


def one_line_error(capsys, module, *argv) -> str:
    with pytest.raises(SystemExit) as info:
        cli.run_main(module.main, module.get_args_parser(), list(argv))
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("error: ")]  # notices (weights loaded) may precede it
    assert len(errors) == 1 and err[-1] == errors[0] and not any("Traceback" in line for line in err), err
    return errors[0]


def test_bad_input_is_one_line_and_overwrites_nothing(tmp_path, capsys, weights, whole):
    base = ["--arch", "resnet18_w16", "--img_size", "32", "--pretrained", "none", "--workers", "0"]
    saved = tmp_path / "out"
    saved.mkdir()
    (saved / "keep.txt").write_text("mine")

    def error(module, *argv):
        return one_line_error(capsys, module, *base, "--save_dir", str(saved / "run"), *argv)

    assert "does not exist" in error(train_imp, "--data_root", str(tmp_path / "nowhere"))
    root = str(tmp_path / "voc")
    write_voc(root, "VOC2007", "trainval", {"000005": (60, 40, [("dog", (5, 6, 30, 35), False)])})
    write_voc(root, "VOC2012", "trainval", {"000009": (60, 40, [("cat", (5, 6, 30, 35), False)])})
    write_voc(root, "VOC2007", "test", {"000001": (64, 48, [("dog", (3, 4, 40, 44), False)])})
    xml = os.path.join(root, "VOCdevkit", "VOC2012", "Annotations", "000009.xml")
    text = open(xml).read()
    for old, new, expected in (("<xmax>30</xmax>", "<xmax>90</xmax>", "outside"),
                               ("<xmax>30</xmax>", "<xmax>2</xmax>", "x2 < x1"),
                               ("<name>cat</name>", "<name>kitten</name>", "unknown class name 'kitten'")):
        open(xml, "w").write(text.replace(old, new))
        message = error(train_imp, "--data_root", root)
        assert expected in message and "000009.xml" in message
    open(xml, "w").write(text)
    os.remove(os.path.join(root, "VOCdevkit", "VOC2012", "JPEGImages", "000009.jpg"))
    assert "000009.jpg" in error(train_imp, "--data_root", root)
    os.remove(xml)
    assert "000009.xml" in error(train_random, "--data_root", root)
    listing = tmp_path / "train_annotation.txt"
    listing.write_text("missing/000042.jpg 1,1,10,10,3\n")
    assert "000042.jpg" in error(train_transfer, "--dataset", "lists", "--train_list", str(listing),
                                 "--test_list", str(listing), "--mask_dir", str(whole[0] / "ticket_01.pt"))
    assert "backbone_imp2.pth" in error(train_imp, "--dataset", "digits", "--imp_num", "2")
    wide = build_model("resnet50", 10, stem="imagenet")
    pruning_utils.global_prune(wide, 0.2)
    pruning_utils.save_ticket(str(tmp_path / "r50.pt"), pruning_utils.current_masks(wide))
    assert "shape" in error(train_transfer, "--dataset", "digits", "--mask_dir", str(tmp_path / "r50.pt"))
    assert "does not exist" in error(train_transfer, "--dataset", "digits", "--mask_dir", str(tmp_path / "none.pt"))
    assert "--pretrained" in error(train_imp, "--dataset", "digits", "--pretrained", str(tmp_path / "w.pth"))
    assert sorted(os.listdir(saved)) == ["keep.txt"] and (saved / "keep.txt").read_text() == "mine"
    # a finished round is never run again over its files
    finished = whole[0]
    before = os.path.getmtime(finished / "backbone_imp2.pth")
    message = one_line_error(capsys, train_imp, *TINY, "--imp_num", "1", "--pretrained", weights,
                             "--save_dir", str(finished))
    assert "round 1 is finished already" in message and os.path.getmtime(finished / "backbone_imp2.pth") == before


def test_accumulation_and_learning_rate_follow_the_original_loop():
    """The core's loop with the detection step rule and schedule against the original's train_imp.py
    loop written out: LR set before each batch from its scheduler index, backward every batch, an
    optimizer step (then zero_grad) only when i % accumulate == 0."""
    from Detection import config
    from lth.distributed import Context
    from lth.engine import Precision, StepResult, make_optimizer, make_scheduler, train_one_epoch

    torch.manual_seed(0)
    data = [(torch.randn(4, 3), torch.randn(4, 1)) for _ in range(5)]
    n, epochs = len(data), 3

    def lr_at(step):
        epoch, index = divmod(step, n)
        return config.learning_rate(epoch, index, n, epochs=epochs, batch_size=2, lr_init=0.1, lr_end=1e-3,
                                    warmup_epochs=1)

    def fresh():
        torch.manual_seed(1)
        return torch.nn.Linear(3, 1)

    reference = fresh()
    optimizer = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    for epoch in range(epochs):
        for i, (x, y) in enumerate(data):
            for group in optimizer.param_groups:
                group["lr"] = lr_at(epoch * n + i)
            ((reference(x) - y) ** 2).mean().backward()
            if i % 2 == 0:
                optimizer.step()
                optimizer.zero_grad()
    ours = fresh()
    optimizer = make_optimizer(ours.parameters(), 0.1, 0.9, 5e-4, torch.device("cpu"))
    scheduler = make_scheduler(optimizer, n, 0, [], factor=lambda step: lr_at(step) / 0.1)
    ctx = Context(device=torch.device("cpu"))
    for _ in range(epochs):
        train_one_epoch(ours, data, optimizer, scheduler, ctx, Precision.choose("fp32", ctx.device), print_freq=0,
                        step=lambda model, batch: StepResult(((model(batch[0]) - batch[1]) ** 2).mean(), None, 4),
                        step_after=lambda i: config.accumulation_steps_here(i, 2))
    for mine, theirs in zip(ours.parameters(), reference.parameters()):
        assert torch.allclose(mine, theirs, atol=1e-7)
    assert not torch.equal(ours.weight, fresh().weight)


def test_two_gloo_ranks_gather_every_detection_before_the_ap(tmp_path, weights):
    """train_imp.py under torchrun (2 CPU ranks, gloo; 9 test canvases, so one rank's shard is padded):
    the AP logged for a round is what a single process gives on that round's saved model."""
    import socket
    import subprocess
    import sys

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    flags = [*TINY, "--digits_counts", "24,8,9", "--epochs", "1", "--imp_num", "0", "--rounds", "2", "--cpu",
             "--pretrained", weights, "--save_dir", str(tmp_path / "ddp")]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(port), os.path.join(root, "Detection", "train_imp.py"), *flags]
    result = subprocess.run(command, capture_output=True, text=True, cwd=root, timeout=600,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stderr[-3000:]
    logged = rows(tmp_path / "ddp", "metrics.jsonl")
    assert [(r["round"], r["epoch"]) for r in logged] == [(0, 0), (1, 0)]  # rank 0 alone writes
    ticket, meta = pruning_utils.read_masks(str(tmp_path / "ddp" / "ticket_02.pt"))
    assert meta["remaining"] == pytest.approx(64, abs=0.01)
    alone = det_eval.main(det_eval.get_args_parser().parse_args(
        [*TINY, "--digits_counts", "24,8,9", "--save_dir", str(tmp_path / "ddp"), "--imp_num", "1"]))
    # As many detections up to the few that float rounding moves across the confidence threshold
    # (315 against 319 on an AVX2-only CPU); a rank's missing or doubled shard would halve or double them.
    assert alone["detections"] > 0
    assert abs(alone["detections"] - logged[1]["test_detections"]) <= 0.05 * alone["detections"]
    # The same boxes up to float rounding (the shards' batches differ in size from the single
    # process's, and near-equal scores of a barely trained model may then swap ranks, so the AP is
    # compared through the files): every image of every class file, scores and boxes within 1e-3.
    from Detection.evaluate import read_comp4

    counts = [0, 0]
    for name in map(str, range(10)):
        ranks = read_comp4(str(tmp_path / "ddp" / "model1" / "pred_result_test" / f"comp4_det_test_{name}.txt"))
        single = read_comp4(str(tmp_path / "ddp" / "eval_round1" / "pred_result_test" /
                                f"comp4_det_test_{name}.txt"))
        # Detections of the ranks meet the single process's on the same image (matched by the nearest
        # box, not by a sort order that rounding can swap). NMS and the class argmax among near-tied
        # scores of this barely trained model may keep another box or class, so a rare one may differ;
        # a rank's missing or doubled shard would leave about half unmatched, and rank 1 evaluating
        # with its own BN statistics instead of the saved model's left a quarter of its shard's
        # detections unmatched (11 % of all).
        matched = 0
        for i, image in enumerate(ranks[0]):
            gaps = [max(abs(ranks[1][i] - single[1][j]) * 10, abs(ranks[2][i] - single[2][j]).max())
                    for j, other in enumerate(single[0]) if other == image]
            matched += bool(gaps) and min(gaps) < 1e-2
        counts[0] += matched
        counts[1] += len(ranks[0])
    assert counts[1] > 0 and counts[0] >= 0.97 * counts[1], counts
    assert alone["ap"] == pytest.approx(logged[1]["test_ap"], abs=0.05)


def test_voc_folders_and_the_originals_lists_train_and_write_the_devkit_files(tmp_path, weights):
    from Detection.data import VOC_CLASSES

    root = str(tmp_path / "voc")
    write_voc(root, "VOC2007", "trainval", {"000005": (60, 40, [("dog", (5, 6, 30, 35), False),
                                                                ("chair", (31, 2, 58, 20), True)])})
    write_voc(root, "VOC2012", "trainval", {"2008_000002": (48, 64, [("tvmonitor", (10, 12, 40, 60), False)])})
    write_voc(root, "VOC2007", "test", {"000001": (64, 48, [("dog", (3, 4, 40, 44), False)]),
                                        "000004": (40, 40, [("car", (2, 2, 38, 30), True)])})  # only difficult
    run(train_imp, "--dataset", "voc", "--data_root", root, "--epochs", "1", "--pretrained", weights,
        "--save_dir", str(tmp_path / "voc_run"), "--digits_counts", "1,1,1")
    files = sorted(os.listdir(tmp_path / "voc_run" / "model0" / "pred_result"))
    assert files == sorted(f"comp4_det_test_{name}.txt" for name in VOC_CLASSES)
    row = rows(tmp_path / "voc_run", "metrics.jsonl")[-1]
    assert set(row["class_ap50"]) == set(VOC_CLASSES) and "test_ap" not in row  # VOC07 test is the only split
    # the original's annotation lists: image path, then x1,y1,x2,y2,class with 1-based pixels
    jpeg = os.path.join(root, "VOCdevkit", "VOC2007", "JPEGImages")
    (tmp_path / "train_annotation.txt").write_text(f"{jpeg}/000005.jpg 5,6,30,35,11\n"
                                                   f"{jpeg}/000001.jpg 3,4,40,44,11 42,5,60,30,14\n")
    (tmp_path / "test_annotation.txt").write_text(f"{jpeg}/000001.jpg 3,4,40,44,11\n")
    run(train_imp, "--dataset", "lists", "--train_list", str(tmp_path / "train_annotation.txt"),
                  "--test_list", str(tmp_path / "test_annotation.txt"), "--epochs", "1", "--pretrained", weights,
                  "--save_dir", str(tmp_path / "list_run"))
    assert rows(tmp_path / "list_run", "summary.jsonl")[0]["primary_metric"] == "ap"


def test_flip_and_multi_scale_test_reach_the_detector_through_eval(whole, tmp_path, monkeypatch):
    """eval.py --flip_val predicts every test batch twice (as is and mirrored), --multi_scale_val at
    every size of the config's list (the original's 320/416/512/608 px; smaller sizes here, as
    608 px takes minutes on a CPU); the boxes of both stay on the 32-px canvases and differ from
    the plain single-scale evaluation's."""
    from Detection import config
    from Detection.evaluate import read_comp4
    from Detection.model import YOLOv4

    assert config.MULTI_SCALE_VAL_SIZES == tuple(range(320, 640, 96))  # the original's test sizes
    monkeypatch.setattr(config, "MULTI_SCALE_VAL_SIZES", (32, 64, 96))
    path, _ = whole
    seen = []
    real_forward = YOLOv4.forward

    def recording(self, images):
        seen.append((tuple(images.shape[-2:]), images.detach().clone()))
        return real_forward(self, images)

    monkeypatch.setattr(YOLOv4, "forward", recording)

    def evaluate(name, *flags):
        seen.clear()
        metrics = det_eval.main(det_eval.get_args_parser().parse_args(
            [*TINY, "--save_dir", str(path), "--imp_num", "1", "--result_dir", str(tmp_path / name), *flags]))
        files = {digit: read_comp4(str(tmp_path / name / "pred_result_test" / f"comp4_det_test_{digit}.txt"))
                 for digit in map(str, range(10))}
        return metrics, list(seen), files

    plain, plain_inputs, plain_files = evaluate("plain")
    flipped, flip_inputs, flip_files = evaluate("flip", "--flip_val")
    multi, multi_inputs, multi_files = evaluate("multi", "--multi_scale_val")

    assert {size for size, _ in plain_inputs} == {(32, 32)}
    assert len(flip_inputs) == 2 * len(plain_inputs)
    for (_, batch), (_, mirrored) in zip(flip_inputs[0::2], flip_inputs[1::2]):
        assert torch.equal(mirrored, torch.flip(batch, dims=[-1]))
    assert [size for size, _ in multi_inputs] == [(s, s) for s in (32, 64, 96)] * len(plain_inputs)
    for files in (plain_files, flip_files, multi_files):  # comp4 files hold VOC's 1-based pixels
        boxes = [box for _, _, found in files.values() for box in found]
        assert boxes and all(1 <= x1 <= x2 <= 32 and 1 <= y1 <= y2 <= 32 for x1, y1, x2, y2 in boxes)
    for files in (flip_files, multi_files):
        assert any(files[d][1].tolist() != plain_files[d][1].tolist() for d in files)
    for metrics in (plain, flipped, multi):
        assert 0 <= metrics["ap"] <= 100 and metrics["detections"] > 0


def test_voc_reports_the_last_evaluation_not_the_best_of_several_test_evaluations(tmp_path, weights, capsys):
    """VOC07 test is VOC detection's only evaluation split: with --eval_interval the round reports
    the last evaluation (choosing the best would select on the test set), says so, and keeps no
    best-model copy (it would be the last model)."""
    root = str(tmp_path / "voc")
    write_voc(root, "VOC2007", "trainval", {"000005": (60, 40, [("dog", (5, 6, 30, 35), False)])})
    write_voc(root, "VOC2012", "trainval", {"2008_000002": (48, 64, [("cat", (10, 12, 40, 60), False)])})
    write_voc(root, "VOC2007", "test", {"000001": (64, 48, [("dog", (3, 4, 40, 44), False)]),
                                        "000002": (40, 40, [("cat", (2, 2, 38, 30), False)])})
    save = tmp_path / "run"
    from Detection import runner

    real, scores = runner.Evaluation.__call__, iter([30.0, 50.0, 20.0])  # the best is not the last

    def scored(self, model, loader, desc):
        return {**real(self, model, loader, desc), "ap": next(scores)}

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(runner.Evaluation, "__call__", scored)
        run(train_imp, "--dataset", "voc", "--data_root", root, "--epochs", "3", "--eval_interval", "1",
            "--pretrained", weights, "--save_dir", str(save))
    assert "reports its last evaluation" in capsys.readouterr().err
    evaluated = [row for row in rows(save, "metrics.jsonl") if row.get("evaluated", True)]
    assert [(row["epoch"], row["ap"]) for row in evaluated] == [(0, 30.0), (1, 50.0), (2, 20.0)]
    summary = rows(save, "summary.jsonl")[0]
    assert summary["reported"] == summary["final"] == summary["best_val_ap"] == 20.0
    assert summary["best_itr" if "best_itr" in summary else "best_epoch"] == 2
    assert summary["reported_at"].startswith("last evaluation")
    assert not any(name.endswith("model_SA_best.pth.tar") for name in os.listdir(save))


def test_sweep_sh_keeps_the_callers_relative_paths(tmp_path, weights):
    """Detection/sweep.sh runs the scripts in the caller's folder: relative --save_dir and
    --pretrained given from elsewhere (here a temporary folder) land where the caller means."""
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    shutil.copy(weights, tmp_path / "w.pth")
    pairs = dict(zip(TINY[::2], TINY[1::2]))
    flags = [item for flag, value in pairs.items() if flag not in ("--epochs", "--seed") for item in (flag, value)]
    # (the seed comes from SEED)
    result = subprocess.run(["sh", os.path.join(root, "Detection", "sweep.sh"), "random", "imagenet", "1", "1", "",
                             *flags, "--epochs", "1", "--pretrained", "w.pth", "--save_dir", "mine"],
                            capture_output=True, text=True, cwd=tmp_path, timeout=600,
                            env=dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS="1", SEED="0",
                                     PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))))
    logs = "".join(path.read_text() for path in tmp_path.glob("sweep_jobs/*.logs/*.log"))
    assert result.returncode == 0, result.stderr[-1500:] + logs[-1500:]
    assert (tmp_path / "mine" / "backbone_random1.pth").is_file() and (tmp_path / "mine" / "ticket_01.pt").is_file()
    assert not os.path.exists(os.path.join(root, "Detection", "mine"))


def test_lth_tickets_reads_detection_round_files_when_run_from_detection(whole):
    """`python -m lth.tickets show backbone_imp{n}.pth` from Detection/ (where the original's users
    work; the repository importable, as installed with `pip install -e .`): the masks of the file's
    backbone, round n."""
    import subprocess
    import sys

    path, _ = whole
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    shown = subprocess.run([sys.executable, "-m", "lth.tickets", "show", str(path / "backbone_imp2.pth")],
                           capture_output=True, text=True, cwd=os.path.join(root, "Detection"), timeout=300,
                           env=dict(os.environ, PYTHONPATH=root))
    assert shown.returncode == 0, shown.stderr
    assert "64.00" in shown.stdout and "round" in shown.stdout
