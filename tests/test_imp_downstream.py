"""End to end: IMP with every prune type, resume after an interruption, and training a ticket."""

import json
import os

import pytest
import torch

import main_eval_downstream
import main_imp_downstream
import pruning_utils
from lth import trainer
from lth.checkpoint import load_file
from lth.models import build_model

FAST = ["--dataset", "digits", "--arch", "resnet18_w16", "--epochs", "2", "--batch_size", "256",
        "--lr", "0.05", "--decreasing_lr", "1", "--seed", "0", "--print_freq", "0"]


def imp(save_dir, *flags):
    args = main_imp_downstream.get_args_parser().parse_args([*FAST, "--save_dir", str(save_dir), *flags])
    main_imp_downstream.main(args)
    return args


def evaluate_ticket(save_dir, *flags):
    args = main_eval_downstream.get_args_parser().parse_args([*FAST, "--save_dir", str(save_dir), *flags])
    main_eval_downstream.main(args)
    return args


def kept(masks):
    return sum(int(mask.sum()) for mask in masks.values())


@pytest.fixture(scope="module")
def lt_run(module_tmp):
    out = module_tmp("imp") / "lt"
    imp(out, "--pruning_times", "3", "--prune_type", "lt")
    return out


def test_lt_run_writes_the_original_files_and_ours(lt_run):
    for round_index in range(3):
        for name in ("checkpoint.pth.tar", "model_SA_best.pth.tar", "net_train.png"):
            assert (lt_run / f"{round_index}{name}").is_file()
    for round_index in range(4):  # the ticket made after the last round is written too
        assert (lt_run / f"ticket_{round_index:02d}.pt").is_file()
    assert (lt_run / "accuracy_vs_remaining.png").stat().st_size > 1000
    record = json.loads((lt_run / "run.json").read_text())
    assert record["args"]["seed"] == 0 and record["args"]["prune_type"] == "lt"
    assert record["versions"]["torch"] == torch.__version__ and record["code_version"]


def test_lt_run_prunes_twenty_percent_of_what_remains_each_round(lt_run):
    counts = []
    for round_index in range(4):
        masks, meta = pruning_utils.read_masks(str(lt_run / f"ticket_{round_index:02d}.pt"))
        assert meta["round"] == round_index and meta["arch"] == "resnet18_w16" and meta["dataset"] == "digits"
        assert meta["remaining"] == pytest.approx(100 * 0.8 ** round_index, abs=1e-3)
        counts.append(kept(masks))
    for before, after in zip(counts, counts[1:]):
        assert after == before - round(0.2 * before)
    summary = [json.loads(line) for line in (lt_run / "summary.jsonl").read_text().splitlines()]
    assert [row["round"] for row in summary] == [0, 1, 2]
    assert [row["remaining"] for row in summary] == pytest.approx([100, 80, 64], abs=1e-3)
    metrics = [json.loads(line) for line in (lt_run / "metrics.jsonl").read_text().splitlines()]
    assert [(row["round"], row["epoch"]) for row in metrics] == [(r, e) for r in range(3) for e in range(2)]
    assert {"lr", "train_acc", "val_acc", "test_acc", "seconds", "remaining"} <= set(metrics[0])


def test_every_json_file_of_the_run_is_strict(lt_run, assert_strict_json):
    parsed = assert_strict_json(lt_run, "metrics.jsonl", "summary.jsonl", "run.json")
    assert [row["round"] for row in parsed["summary.jsonl"]] == [0, 1, 2]


def test_lt_rewinds_to_the_initial_weights(lt_run):
    torch.manual_seed(0)
    init = build_model("resnet18_w16", 10, 1, "cifar").state_dict()
    checkpoint = load_file(str(lt_run / "2checkpoint.pth.tar"))
    for key, value in init.items():
        assert torch.equal(checkpoint["init_weight"][key], value), key
    # The best model of round 2 holds masks in the original's key layout.
    best = load_file(str(lt_run / "2model_SA_best.pth.tar"))
    assert "layer1.0.conv1.weight_orig" in best["state_dict"]
    assert "layer1.0.conv1.weight_mask" in best["state_dict"]
    assert "conv1.weight" in best["state_dict"] and "fc.weight" in best["state_dict"]


def test_pt_rewinds_to_the_best_dense_round_zero_model(tmp_path):
    imp(tmp_path / "pt", "--pruning_times", "2", "--prune_type", "pt")
    best = load_file(str(tmp_path / "pt" / "0model_SA_best.pth.tar"))["state_dict"]
    init = load_file(str(tmp_path / "pt" / "1checkpoint.pth.tar"))["init_weight"]
    assert best.keys() == init.keys()
    assert all(torch.equal(best[key], init[key]) for key in best)


def test_rewind_lt_rewinds_to_the_chosen_epoch(tmp_path):
    # --rewind_epoch k: the weights after k epochs (here 1 of 2), saved as the original named them.
    imp(tmp_path / "rw", "--pruning_times", "2", "--prune_type", "rewind_lt", "--rewind_epoch", "1")
    saved = load_file(str(tmp_path / "rw" / "epoch_1_rewind_weight.pt"))
    init = load_file(str(tmp_path / "rw" / "1checkpoint.pth.tar"))["init_weight"]
    assert all(torch.equal(saved[key], init[key]) for key in saved)
    metrics = [json.loads(line) for line in (tmp_path / "rw" / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 4


def test_pt_trans_rewinds_to_the_pretrained_weights_and_random_prune_works(tmp_path):
    source = build_model("resnet18_w16", 1000, 3, "imagenet").state_dict()
    torch.save(source, tmp_path / "imagenet_weight.pt")
    imp(tmp_path / "ptt", "--pruning_times", "2", "--prune_type", "pt_trans", "--random_prune",
        "--pretrained", str(tmp_path / "imagenet_weight.pt"))
    init = load_file(str(tmp_path / "ptt" / "1checkpoint.pth.tar"))["init_weight"]
    for key, value in source.items():
        if not key.startswith(("fc.", "conv1.")):
            assert torch.equal(init[key], value), key
    masks, meta = pruning_utils.read_masks(str(tmp_path / "ptt" / "ticket_02.pt"))
    assert meta["random_prune"] is True
    assert meta["remaining"] == pytest.approx(64, abs=1e-3)


class Interrupted(Exception):
    pass


def test_resume_after_an_interruption_gives_the_same_run(tmp_path, monkeypatch):
    imp(tmp_path / "whole", "--pruning_times", "2")
    calls = {"n": 0}
    real = trainer.train_one_epoch

    def dies_on_third_epoch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # round 1, epoch 0: after the round-0 prune and rewind
            raise Interrupted()
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer, "train_one_epoch", dies_on_third_epoch)
    with pytest.raises(Interrupted):
        imp(tmp_path / "cut", "--pruning_times", "2")
    monkeypatch.setattr(trainer, "train_one_epoch", real)
    args = main_imp_downstream.get_args_parser().parse_args(
        [*FAST, "--save_dir", str(tmp_path / "cut"), "--pruning_times", "2", "--resume"])
    main_imp_downstream.main(args)
    whole, _ = pruning_utils.read_masks(str(tmp_path / "whole" / "ticket_02.pt"))
    cut, _ = pruning_utils.read_masks(str(tmp_path / "cut" / "ticket_02.pt"))
    assert all(torch.equal(whole[key], cut[key]) for key in whole)

    def accuracies(run):
        rows = [json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
        return [(row["round"], row["epoch"], row["train_loss"], row["test_acc"]) for row in rows]

    assert accuracies("cut") == accuracies("whole")
    record = json.loads((tmp_path / "cut" / "run.json").read_text())
    assert len(record["resumed"]) == 1


def test_eval_trains_the_reversed_mask(lt_run, tmp_path):
    ticket = str(lt_run / "ticket_02.pt")
    evaluate_ticket(tmp_path / "rev", "--mask_dir", ticket, "--reverse_mask", "--save_model",
                    "--pretrained", str(lt_run / "0checkpoint.pth.tar"), "--dict_key", "init_weight",
                    "--load_all")
    ticket_masks, _ = pruning_utils.read_masks(ticket)
    trained = load_file(str(tmp_path / "rev" / "checkpoint.pth.tar"))["state_dict"]
    for key, mask in ticket_masks.items():
        assert torch.equal(trained[key], 1 - mask), key
    summary = json.loads((tmp_path / "rev" / "summary.json").read_text())
    assert summary["remaining"] == pytest.approx(36, abs=1e-3)
    assert summary["reverse_mask"] is True and 0 <= summary["test_acc_at_best_val"] <= 100
    assert (tmp_path / "rev" / "model_SA_best.pth.tar").is_file()


def test_eval_accepts_the_original_checkpoint_as_mask(lt_run, tmp_path):
    evaluate_ticket(tmp_path / "orig", "--mask_dir", str(lt_run / "1model_SA_best.pth.tar"), "--epochs", "1")
    summary = json.loads((tmp_path / "orig" / "summary.json").read_text())
    assert summary["remaining"] == pytest.approx(80, abs=1e-3)
    assert not (tmp_path / "orig" / "model_SA_best.pth.tar").exists()  # only with --save_model


def test_each_round_starts_from_the_rewind_point_with_the_new_mask(tmp_path, monkeypatch):
    from lth import imp as imp_module
    starts = {}
    real = imp_module.train_stage

    def record_start(model, *args, stage, **kwargs):
        starts[stage] = (pruning_utils.dense_state_dict(model), pruning_utils.current_masks(model))
        return real(model, *args, stage=stage, **kwargs)

    monkeypatch.setattr(imp_module, "train_stage", record_start)
    imp(tmp_path / "lt", "--pruning_times", "2", "--epochs", "1")
    torch.manual_seed(0)
    init = build_model("resnet18_w16", 10, 1, "cifar").state_dict()
    weights, masks = starts[1]
    ticket, _ = pruning_utils.read_masks(str(tmp_path / "lt" / "ticket_01.pt"))
    for key, value in init.items():
        mask_key = key[: -len(".weight")] + ".weight_mask"
        expected = value * ticket[mask_key] if mask_key in ticket else value
        assert torch.equal(weights[key], expected), key
    assert all(torch.equal(masks[key], ticket[key]) for key in ticket)
