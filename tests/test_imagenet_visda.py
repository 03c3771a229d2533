"""ImageNet and VisDA-2017 scripts end to end on tiny image files in the real layouts, plus bad input."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import main_eval_downstream
import main_eval_visda
import main_imp_imagenet
import main_imp_visda
import pruning_utils
from lth import imp as imp_module
from lth import trainer
from lth.checkpoint import load_file
from lth.models import build_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST = ["-a", "resnet18_w16", "--image_size", "32", "-b", "4", "--epochs", "1", "-j", "0", "--seed", "0", "-p", "0"]
ORIGINAL_KEYS = {"epoch", "state", "arch", "state_dict", "mask", "best_acc1", "optimizer", "if_pruned",
                 "init_weight"}


pytestmark = pytest.mark.usefixtures("one_thread")


def write_image(path, rng):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (36, 30, 3), dtype=np.uint8)).save(path)


def write_image_folder(root, classes=("cat", "dog", "fox"), train=4, val=2):
    rng = np.random.default_rng(0)
    for split, count in (("train", train), ("val", val)):
        for name in classes:
            for index in range(count):
                write_image(os.path.join(root, split, name, f"{index}.{'png' if index % 2 else 'jpg'}"), rng)
    return str(root)


def write_visda(root, labels=(0, 3, 11), train=4, val=2):
    """VisDA-2017 layout: DIR/{train,validation}/image_list.txt naming files below each split."""
    rng = np.random.default_rng(1)
    for split, count in (("train", train), ("validation", val)):
        lines = []
        for label in labels:
            for index in range(count):
                relative = f"class{label}/{index}.{'png' if index % 2 else 'jpg'}"
                write_image(os.path.join(root, split, relative), rng)
                lines.append(f"{relative} {label}")
        with open(os.path.join(root, split, "image_list.txt"), "w") as handle:
            handle.write("\n".join(lines) + "\n")
    return str(root)


def run_script(module, *flags):
    args = module.get_args_parser().parse_args([str(flag) for flag in flags])
    module.main(args)
    return args


def rows(path):
    return [json.loads(line) for line in open(path).read().splitlines()]


def remaining_of(ticket):
    return pruning_utils.read_masks(str(ticket))[1]["remaining"]


def record_round_starts(monkeypatch):
    """Capture the weights and masks each IMP round starts training from."""
    starts = {}
    real = imp_module.train_stage

    def record(model, *args, stage, **kwargs):
        starts[stage] = (pruning_utils.dense_state_dict(model), pruning_utils.current_masks(model))
        return real(model, *args, stage=stage, **kwargs)

    monkeypatch.setattr(imp_module, "train_stage", record)
    return starts


@pytest.fixture(scope="module")
def data(module_tmp):
    base = module_tmp("data")
    return {"imagenet": write_image_folder(base / "imagenet"), "visda": write_visda(base / "visda")}


@pytest.fixture(scope="module")
def imagenet_run(data, module_tmp):
    base = module_tmp("imagenet")
    torch.manual_seed(123)
    pretrained = build_model("resnet18_w16", 3, stem="imagenet").state_dict()  # fc fits the 3 class folders
    torch.save(pretrained, base / "imagenet_weight.pt")
    with pytest.MonkeyPatch.context() as monkeypatch:
        starts = record_round_starts(monkeypatch)
        run_script(main_imp_imagenet, data["imagenet"], *FAST, "--states", "2",
                   "--pretrained", base / "imagenet_weight.pt", "--save_dir", base / "run")
    return {"dir": base / "run", "pretrained": pretrained, "starts": starts}


VISDA_IMP = [*FAST, "--states", "2", "--prune_type", "lt"]


@pytest.fixture(scope="module")
def visda_run(data, module_tmp):
    out = module_tmp("visda") / "run"
    run_script(main_imp_visda, data["visda"], *VISDA_IMP, "--save_dir", out)
    return out


# ------------------------------------------------------------------------------------------------
# main_imp_imagenet.py
# ------------------------------------------------------------------------------------------------

def test_imagenet_writes_the_original_files_and_tickets(imagenet_run):
    out = imagenet_run["dir"]
    for name in ("checkpoint.pth.tar", "1model_best.pth.tar", "metrics.jsonl", "summary.jsonl", "run.json",
                 "accuracy_vs_remaining.png", "1net_train.png"):
        assert (out / name).is_file(), name
    assert not (out / "0model_best.pth.tar").exists()  # round 0 trains nothing, as in the original
    assert [remaining_of(out / f"ticket_{r:02d}.pt") for r in range(3)] == pytest.approx([100, 80, 64], abs=1e-3)
    checkpoint = load_file(str(out / "checkpoint.pth.tar"))
    assert ORIGINAL_KEYS <= set(checkpoint)
    assert checkpoint["state"] == 1 and checkpoint["epoch"] == 1 and checkpoint["arch"] == "resnet18_w16"
    assert checkpoint["if_pruned"] is True and 0 <= checkpoint["best_acc1"] <= 100
    assert set(checkpoint["mask"]) == set(pruning_utils.extract_mask(checkpoint["state_dict"]))


def test_imagenet_round_zero_only_evaluates(imagenet_run):
    metrics = rows(imagenet_run["dir"] / "metrics.jsonl")
    assert metrics[0]["round"] == 0 and metrics[0]["epoch"] == -1 and metrics[0]["trained"] is False
    assert "val_acc" in metrics[0] and "val_mean_class_acc" in metrics[0]
    assert [(row["round"], row["epoch"]) for row in metrics[1:]] == [(1, 0)]
    summary = rows(imagenet_run["dir"] / "summary.jsonl")
    assert [row["trained_epochs"] for row in summary] == [0, 1]
    assert [row["remaining"] for row in summary] == pytest.approx([100, 80], abs=1e-3)
    assert all("mean_class_acc" in row for row in summary)


def test_imagenet_rounds_start_from_the_pretrained_weights(imagenet_run):
    pretrained, starts = imagenet_run["pretrained"], imagenet_run["starts"]
    weights, _ = starts[0]
    assert all(torch.equal(weights[key], value) for key, value in pretrained.items())
    weights, masks = starts[1]
    ticket, _ = pruning_utils.read_masks(str(imagenet_run["dir"] / "ticket_01.pt"))
    assert all(torch.equal(masks[key], ticket[key]) for key in ticket)
    for key, value in pretrained.items():  # fc, batch norms and conv1 included
        mask = ticket.get(key[: -len(".weight")] + ".weight_mask")
        assert torch.equal(weights[key], value if mask is None else value * mask), key


def test_imagenet_states_zero_trains_dense_and_evaluate_flag(data, tmp_path, capsys):
    out = tmp_path / "dense"
    run_script(main_imp_imagenet, data["imagenet"], *FAST, "--states", "0", "--random", "--save_dir", out)
    for name in ("checkpoint.pth.tar", "model_best.pth.tar", "summary.jsonl", "net_train.png"):
        assert (out / name).is_file(), name
    assert not list(out.glob("ticket_*.pt"))
    (row,) = rows(out / "summary.jsonl")
    assert row["remaining"] == 100 and row["trained_epochs"] == 1
    best = load_file(str(out / "model_best.pth.tar"))["state_dict"]
    assert not pruning_utils.extract_mask(best)
    # -e --resume evaluates the saved model and writes nothing.
    before = sorted(os.listdir(out))
    capsys.readouterr()
    run_script(main_imp_imagenet, data["imagenet"], *FAST, "--states", "0", "--random", "--save_dir", out,
               "--resume", "-e")
    assert "val top-1" in capsys.readouterr().out
    assert sorted(os.listdir(out)) == before


def test_imagenet_pretrained_with_another_class_count_loads_without_fc(data, tmp_path, capsys):
    torch.save(build_model("resnet18_w16", 1000, stem="imagenet").state_dict(), tmp_path / "w1000.pt")
    run_script(main_imp_imagenet, data["imagenet"], *FAST, "--pretrained", tmp_path / "w1000.pt",
               "--save_dir", tmp_path / "eval", "-e")
    captured = capsys.readouterr()
    assert "fc is not loaded" in captured.err and "val top-1" in captured.out
    assert not (tmp_path / "eval").exists()


# ------------------------------------------------------------------------------------------------
# main_imp_visda.py
# ------------------------------------------------------------------------------------------------

def test_visda_lt_run_files_metrics_and_rewind(visda_run):
    for name in ("checkpoint.pth.tar", "0model_best.pth.tar", "1model_best.pth.tar", "random_init.pt",
                 "0net_train.png", "1net_train.png"):
        assert (visda_run / name).is_file(), name
    assert [remaining_of(visda_run / f"ticket_{r:02d}.pt") for r in range(3)] == pytest.approx([100, 80, 64], abs=1e-3)
    checkpoint = load_file(str(visda_run / "checkpoint.pth.tar"))
    assert ORIGINAL_KEYS <= set(checkpoint) and checkpoint["state"] == 1
    init = load_file(str(visda_run / "random_init.pt"))["state_dict"]
    assert checkpoint["init_weight"].keys() == init.keys()
    assert all(torch.equal(checkpoint["init_weight"][key], value) for key, value in init.items())
    assert init["fc.weight"].shape == (12, 128)
    metrics = rows(visda_run / "metrics.jsonl")
    assert [(row["round"], row["epoch"]) for row in metrics] == [(0, 0), (1, 0)]
    assert all("val_mean_class_acc" in row and "val_top5" in row for row in metrics)
    summary = rows(visda_run / "summary.jsonl")
    assert [row["remaining"] for row in summary] == pytest.approx([100, 80], abs=1e-3)
    assert all("mean_class_acc" in row and "reported_acc" in row for row in summary)


def test_visda_pt_trans_rewinds_to_the_pre_weight(data, tmp_path):
    torch.manual_seed(7)
    source = build_model("resnet18_w16", 1000, stem="imagenet").state_dict()
    torch.save({"state_dict": {"module." + key: value for key, value in source.items()}}, tmp_path / "pre.pt")
    out = tmp_path / "ptt"
    run_script(main_imp_visda, data["visda"], *FAST, "--states", "1", "--prune_type", "pt_trans",
               "--pre_weight", tmp_path / "pre.pt", "--save_dir", out)
    init = load_file(str(out / "checkpoint.pth.tar"))["init_weight"]
    for key, value in source.items():
        if not key.startswith("fc."):
            assert torch.equal(init[key], value), key  # conv1 and batch norms too
    assert init["fc.weight"].shape == (12, 128)
    assert not (out / "random_init.pt").exists()
    assert remaining_of(out / "ticket_01.pt") == pytest.approx(80, abs=1e-3)


class Interrupted(Exception):
    pass


def interrupt_on_epoch(monkeypatch, number):
    calls = {"n": 0}
    real = trainer.train_one_epoch

    def dies(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == number:
            raise Interrupted()
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer, "train_one_epoch", dies)
    return real


def test_visda_resume_after_an_interruption_gives_the_same_ticket(data, visda_run, tmp_path, monkeypatch):
    out = tmp_path / "cut"
    real = interrupt_on_epoch(monkeypatch, 2)  # round 1, after the round-0 prune and rewind
    with pytest.raises(Interrupted):
        run_script(main_imp_visda, data["visda"], *VISDA_IMP, "--save_dir", out)
    monkeypatch.setattr(trainer, "train_one_epoch", real)
    run_script(main_imp_visda, data["visda"], *VISDA_IMP, "--save_dir", out, "--resume")
    whole, _ = pruning_utils.read_masks(str(visda_run / "ticket_02.pt"))
    cut, _ = pruning_utils.read_masks(str(out / "ticket_02.pt"))
    assert whole.keys() == cut.keys() and all(torch.equal(whole[key], cut[key]) for key in whole)

    def losses(run):
        return [(row["round"], row["epoch"], row["train_loss"], row["val_acc"]) for row in rows(run / "metrics.jsonl")]

    assert losses(out) == losses(visda_run)
    assert len(json.loads((out / "run.json").read_text())["resumed"]) == 1


# ------------------------------------------------------------------------------------------------
# Tickets into main_eval_visda.py and main_eval_downstream.py
# ------------------------------------------------------------------------------------------------

def test_json_files_are_strict_with_null_for_the_missing_test_split(imagenet_run, visda_run, assert_strict_json):
    for out in (imagenet_run["dir"], visda_run):
        rows = assert_strict_json(out, "metrics.jsonl", "summary.jsonl", "run.json")["summary.jsonl"]
        assert rows and all(row["test_acc_at_best_val"] is None and row["final_test_acc"] is None
                            and 0 <= row["reported_acc"] <= 100 for row in rows)


def test_imagenet_ticket_trains_on_visda(data, imagenet_run, tmp_path, assert_strict_json):
    ticket = imagenet_run["dir"] / "ticket_02.pt"
    out = tmp_path / "eval"
    run_script(main_eval_visda, data["visda"], *FAST, "--mask_dir", ticket,
               "--pretrained", imagenet_run["dir"] / "1model_best.pth.tar", "--save_dir", out)
    summary = assert_strict_json(out, "summary.json", "metrics.jsonl", "run.json")["summary.json"]
    assert summary["remaining"] == pytest.approx(64, abs=1e-3)
    assert 0 <= summary["best_val_acc"] <= 100 and 0 <= summary["mean_class_acc_at_best_val"] <= 100
    assert len(summary["per_class_acc_at_best_val"]) == 12
    masks, _ = pruning_utils.read_masks(str(ticket))
    trained = load_file(str(out / "checkpoint.pth.tar"))
    assert {"epoch", "arch", "state_dict", "best_acc1", "optimizer"} <= set(trained)
    assert all(torch.equal(trained["state_dict"][key], mask) for key, mask in masks.items())
    assert (out / "model_best.pth.tar").is_file() and (out / "metrics.jsonl").is_file()


def test_imagenet_ticket_trains_on_a_cifar_stem_model(imagenet_run, tmp_path):
    out = tmp_path / "digits"
    run_script(main_eval_downstream, "--dataset", "digits", "--arch", "resnet18_w16", "--epochs", "1",
               "--batch_size", "512", "--seed", "0", "--print_freq", "0",
               "--mask_dir", imagenet_run["dir"] / "ticket_01.pt", "--save_dir", out)
    assert json.loads((out / "summary.json").read_text())["remaining"] == pytest.approx(80, abs=1e-3)


def test_eval_visda_resumes(data, imagenet_run, tmp_path, monkeypatch):
    out = tmp_path / "eval"
    flags = [data["visda"], *FAST, "--epochs", "2", "--reverse_mask",
             "--mask_dir", imagenet_run["dir"] / "ticket_01.pt", "--save_dir", out]
    real = interrupt_on_epoch(monkeypatch, 2)
    with pytest.raises(Interrupted):
        run_script(main_eval_visda, *flags)
    monkeypatch.setattr(trainer, "train_one_epoch", real)
    run_script(main_eval_visda, *flags, "--resume")
    assert [row["epoch"] for row in rows(out / "metrics.jsonl")] == [0, 1]
    assert json.loads((out / "summary.json").read_text())["remaining"] == pytest.approx(20, abs=1e-3)


def test_help_explains_every_flag(capsys):
    for module in (main_imp_imagenet, main_imp_visda, main_eval_visda):
        parser = module.get_args_parser()
        assert all(action.help for action in parser._actions), module.__name__
        with pytest.raises(SystemExit) as exit_info:
            parser.parse_args(["--help"])
        assert exit_info.value.code == 0
        assert "(default:" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------
# Bad input: one line on stderr, a non-zero exit, nothing in --save_dir (run as real processes)
# ------------------------------------------------------------------------------------------------

def bad_inputs(base, data):
    """The cases run as real processes: name -> (script, leading flags, words the error must hold)."""
    empty = base / "empty_folder"
    for split in ("train", "val"):
        (empty / split / "cat").mkdir(parents=True)
    missing = write_visda(base / "missing_file")
    with open(os.path.join(missing, "validation", "image_list.txt"), "a") as handle:
        handle.write("class3/gone.jpg 3\n")
    return {
        "no images": ("main_imp_imagenet.py", [empty], ["holds no usable images"]),
        "missing image": ("main_imp_visda.py", [missing], ["line 7", "gone.jpg", "does not exist"]),
        "missing folder": ("main_imp_imagenet.py", [base / "nowhere"], ["nowhere/train", "not found"]),
        "pt_trans without pre_weight": ("main_imp_visda.py", [data["visda"], "--prune_type", "pt_trans"],
                                        ["--pre_weight"]),
    }


@pytest.fixture(scope="module")
def bad_results(data, module_tmp):
    """All bad-input processes at once: most of their time is importing torch."""
    base = module_tmp("bad")
    cases = bad_inputs(base, data)
    processes = {}
    for name, (script, flags, _) in cases.items():
        save_dir = base / f"out_{len(processes)}"
        command = [sys.executable, os.path.join(ROOT, script), *map(str, flags), *FAST, "--save_dir", str(save_dir)]
        processes[name] = (subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                            text=True), save_dir)
    results = {}
    for name, (process, save_dir) in processes.items():
        out, err = process.communicate(timeout=300)
        results[name] = (process.returncode, err, save_dir, cases[name][2])
    return results


@pytest.mark.parametrize("case", ["no images", "missing image", "missing folder", "pt_trans without pre_weight"])
def test_bad_input_is_one_line_and_writes_nothing(bad_results, case):
    returncode, err, save_dir, needles = bad_results[case]
    assert returncode != 0, err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("notice:")]
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert not save_dir.exists()


def write_bad_label(base):
    root = write_visda(base / "label")
    with open(os.path.join(root, "train", "image_list.txt"), "a") as handle:
        handle.write("class0/0.jpg 12\n")
    return root


def write_other_classes(base):
    root = write_image_folder(base / "classes")
    os.rename(os.path.join(root, "val", "fox"), os.path.join(root, "val", "wolf"))
    return root


@pytest.mark.parametrize("module, make_data, flags, needles", [
    (main_eval_visda, lambda base: str(base / "nowhere"), [], ["nowhere", "not found"]),
    (main_imp_visda, write_bad_label, [], ["label 12", "0..11"]),
    (main_imp_imagenet, write_other_classes, [], ["different class folders", "fox"]),
    (main_imp_imagenet, write_image_folder, ["--start_state", "3"], ["--start_state", "--resume"]),
    (main_imp_imagenet, write_image_folder, ["--random", "--pretrained", "w.pt"], ["--random"]),
    (main_imp_imagenet, write_image_folder, ["--percent", "1"], ["between 0 and 1"]),
    (main_eval_visda, lambda base: str(base / "nowhere"), ["--reverse_mask"], ["--mask_dir"]),
])
def test_more_bad_input_in_process(tmp_path, capsys, module, make_data, flags, needles):
    from lth import cli
    out = tmp_path / "run"
    argv = [make_data(tmp_path), *FAST, *flags, "--save_dir", str(out)]
    with pytest.raises(SystemExit) as exit_info:
        cli.run_main(module.main, module.get_args_parser(), argv)
    assert exit_info.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("notice:")]
    assert len(lines) == 1 and lines[0].startswith("error:")
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert not out.exists()
