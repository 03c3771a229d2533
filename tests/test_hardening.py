"""Checkpoint files cannot run code, written JSON is strict, tickets can be shown, exported and applied."""

import argparse
import collections
import datetime
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.utils.prune as prune
import torchvision

import main_eval_downstream
import pruning_utils
from lth import cli, tickets
from lth.checkpoint import append_jsonl, load_file, trusted_checkpoints, write_json
from lth.errors import UserError
from lth.models import build_model
from lth.runs import RunDir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIGITS = ["--dataset", "digits", "--arch", "resnet18", "--epochs", "1", "--batch_size", "256",
          "--seed", "0", "--print_freq", "0"]


class CreatesFile:
    """Unpickling this object creates ``path`` (what a malicious checkpoint would do, harmlessly)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (os.open, (self.path, os.O_CREAT | os.O_WRONLY))


def write_crafted(path, marker, zipped=True):
    """A plausible checkpoint whose load would create ``marker``."""
    weights = build_model("resnet18", 10).state_dict()
    torch.save({"state_dict": weights, "epoch": 3, "payload": CreatesFile(marker)}, path,
               _use_new_zipfile_serialization=zipped)


def run_script(script, *flags):
    env = dict(os.environ, OMP_NUM_THREADS="1", TQDM_DISABLE="1")
    return subprocess.run([sys.executable, os.path.join(ROOT, script), *map(str, flags)], capture_output=True,
                          text=True, cwd=ROOT, timeout=300, env=env)


def error_line(returncode, stderr):
    """The one ``error: ...`` line of a refused run (which exits with status 2)."""
    assert returncode == 2, stderr
    errors = [line for line in stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and errors[0].startswith("error: "), stderr
    return errors[0]


def one_line(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


# ------------------------------------------------------------------------------------------------
# 1. Loading a checkpoint cannot run code
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("zipped", [True, False], ids=["zip", "legacy"])
def test_crafted_pickle_is_refused_and_creates_nothing(tmp_path, zipped):
    marker = tmp_path / "created_by_pickle"
    path = tmp_path / "evil.pth.tar"
    write_crafted(path, marker, zipped)
    with pytest.raises(UserError) as excinfo:
        load_file(str(path), "pre-trained weight")
    message = one_line(excinfo)
    assert str(path) in message and "--trust_checkpoint" in message
    assert "posix.open" in message or "os.open" in message  # the global it wanted
    assert not marker.exists()
    with pytest.raises(UserError):
        pruning_utils.read_masks(str(path))
    assert not marker.exists()


@pytest.mark.parametrize("text", ['{"a": 1}\n', "lr: 0.1\n"], ids=["json", "yaml"])
def test_a_text_file_is_not_reported_as_a_refused_object(tmp_path, text):
    path = tmp_path / "notes.pth.tar"
    path.write_text(text)
    with pytest.raises(UserError) as excinfo:
        load_file(str(path))
    message = one_line(excinfo)
    assert "cannot read" in message and str(path) in message and "holds the Python object" not in message


def test_trusted_full_load_runs_the_pickle(tmp_path, capsys):
    # The same file with the user's trust is loaded in full: proof that the refusal above matters.
    marker = tmp_path / "created_by_pickle"
    path = tmp_path / "evil.pth.tar"
    write_crafted(path, marker)
    obj = load_file(str(path), trust=True)
    assert marker.exists() and obj["epoch"] == 3
    assert "--trust_checkpoint" in capsys.readouterr().err
    marker.unlink()
    with trusted_checkpoints():
        load_file(str(path))
    assert marker.exists()
    marker.unlink()
    with pytest.raises(UserError):  # the trust ends with the block
        load_file(str(path))
    assert not marker.exists()


def test_scripts_refuse_a_crafted_pretrained_or_mask_file(tmp_path, capsys):
    marker = tmp_path / "created_by_pickle"
    evil = tmp_path / "evil.pth.tar"
    write_crafted(evil, marker)
    for flag in ("--pretrained", "--mask_dir"):
        out = tmp_path / flag.strip("-")
        with pytest.raises(SystemExit) as stop:
            cli.run_main(main_eval_downstream.main, main_eval_downstream.get_args_parser(),
                         [*DIGITS, "--save_dir", str(out), flag, str(evil)])
        line = error_line(stop.value.code, capsys.readouterr().err)
        assert str(evil) in line and "--trust_checkpoint" in line and "open" in line
        assert not marker.exists() and not out.exists()


def test_script_refuses_a_crafted_checkpoint_to_resume(tmp_path):
    marker = tmp_path / "created_by_pickle"
    out = tmp_path / "run"
    out.mkdir()
    evil = out / "checkpoint.pth.tar"
    write_crafted(evil, marker)
    before = evil.read_bytes()
    result = run_script("main_eval_downstream.py", *DIGITS, "--save_dir", out, "--resume")
    line = error_line(result.returncode, result.stderr)
    assert str(evil) in line and "--trust_checkpoint" in line
    assert not marker.exists() and evil.read_bytes() == before


def test_every_entry_script_has_the_trust_flag():
    import main_eval_visda
    import main_imp_downstream
    import main_imp_imagenet
    import main_imp_visda

    from MoCo import main_moco_imp
    from SimCLR import main as simclr_main

    for module in (main_imp_downstream, main_eval_downstream, main_imp_imagenet, main_imp_visda,
                   main_eval_visda, main_moco_imp, simclr_main):
        parser = module.get_args_parser()
        assert "--trust_checkpoint" in parser.format_help(), module.__name__
        action = next(a for a in parser._actions if "--trust_checkpoint" in a.option_strings)
        assert action.default is False and "trust" in action.help


def _sgd_state(model):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    optimizer.step()
    return optimizer


def released_and_original_formats():
    """What the released weights and the original code's scripts torch.save, in small (resnet18)."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None)
    plain = model.state_dict()
    optimizer = _sgd_state(model)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[91, 136], gamma=0.1)
    pruned = torchvision.models.resnet18(weights=None)
    for name, module in pruned.named_modules():
        if isinstance(module, torch.nn.Conv2d) and name != "conv1":
            prune.random_unstructured(module, "weight", amount=0.2)
    masks = {k: v for k, v in pruned.state_dict().items() if k.endswith("weight_mask")}
    return {
        # released weights
        "imagenet_weight.pt": plain,
        "moco.pt": plain,
        "simclr_weight.pt": {"state_dict": plain},
        "moco_v2_800ep_pretrain.pth.tar": {
            "epoch": 800, "arch": "resnet50", "optimizer": optimizer.state_dict(),
            "state_dict": {**{f"module.encoder_q.{k}": v for k, v in plain.items()},
                           **{f"module.encoder_k.{k}": v for k, v in plain.items()},
                           "module.queue": torch.randn(128, 64), "module.queue_ptr": torch.zeros(1, dtype=torch.long)}},
        # the original scripts' checkpoints
        "main_imp_downstream {state}checkpoint.pth.tar": {
            "state": 2, "result": {"train": [10.0], "ta": [9.5], "test_ta": [9.0]}, "epoch": 1,
            "state_dict": pruned.state_dict(), "best_sa": 9.5, "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "init_weight": plain},
        "main_imp_imagenet checkpoint.pth.tar": {
            "epoch": 1, "state": 1, "arch": "resnet18", "state_dict": pruned.state_dict(), "mask": masks,
            "best_acc1": torch.tensor(71.5), "optimizer": optimizer.state_dict(), "if_pruned": True,
            "init_weight": plain},
        "main_eval_visda model_best.pth.tar": {
            "epoch": 20, "arch": "resnet18", "state_dict": plain, "best_acc1": torch.tensor(60.0),
            "optimizer": optimizer.state_dict()},
        "SimCLR model_pruned10.pt": {"epoch": 10, "state_dict": pruned.state_dict(), "optim": optimizer.state_dict()},
        "Segmentation best_*.pth (numpy best_score)": {
            "cur_itrs": 30000, "model_state": plain, "optimizer_state": optimizer.state_dict(),
            "scheduler_state": scheduler.state_dict(), "best_score": np.float64(0.7125)},
        "Detection last.pt (numpy best_mAP)": {
            "epoch": 3, "best_mAP": np.float64(0.5), "model": plain, "optimizer": optimizer.state_dict()},
        "a checkpoint with its argparse args": {
            "args": argparse.Namespace(arch="resnet50", lr=0.1, decreasing_lr=[91, 136], seed=None),
            "state_dict": plain, "best_acc1": np.float32(1.5), "epoch": np.int64(4)},
        "the original's mask-{i}.pt": dict(masks),
    }


FORMATS = released_and_original_formats()


def _assert_same(loaded, expected):
    if isinstance(expected, torch.Tensor):
        assert torch.equal(loaded, expected)
    elif isinstance(expected, dict):
        assert type(loaded) in (dict, collections.OrderedDict, collections.Counter) and set(loaded) == set(expected)
        for key in expected:
            _assert_same(loaded[key], expected[key])
    elif isinstance(expected, argparse.Namespace):
        assert isinstance(loaded, argparse.Namespace) and vars(loaded) == vars(expected)
    elif isinstance(expected, (list, tuple)):
        assert len(loaded) == len(expected)
        for a, b in zip(loaded, expected):
            _assert_same(a, b)
    else:
        assert loaded == expected and type(loaded) is type(expected)


@pytest.mark.parametrize("name", list(FORMATS))
@pytest.mark.parametrize("zipped", [True, False], ids=["zip", "legacy"])
def test_released_and_original_formats_load_without_the_flag(tmp_path, capsys, name, zipped):
    path = tmp_path / "file.pth.tar"
    torch.save(FORMATS[name], path, _use_new_zipfile_serialization=zipped)
    _assert_same(load_file(str(path)), FORMATS[name])
    assert capsys.readouterr().err == ""


def test_numpy_scalar_written_by_numpy_1_loads(tmp_path):
    # The original pinned numpy 1.17, whose pickles name the scalar's module numpy.core.multiarray
    # (numpy 2 writes numpy._core.multiarray): rewrite the name as numpy 1.x wrote it.
    path = tmp_path / "old_numpy.pth.tar"
    torch.save({"best_score": np.float64(0.25), "model_state": {"w": torch.ones(2)}}, path,
               _use_new_zipfile_serialization=False)
    data = path.read_bytes()
    modern = b"numpy._core.multiarray" if b"numpy._core.multiarray" in data else b"numpy.core.multiarray"
    path.write_bytes(data.replace(modern, b"numpy.core.multiarray"))
    assert b"numpy.core.multiarray\nscalar" in path.read_bytes()
    loaded = load_file(str(path))
    assert loaded["best_score"] == np.float64(0.25) and isinstance(loaded["best_score"], np.float64)


def test_an_object_outside_the_allow_list_names_the_global_and_loads_when_trusted(tmp_path):
    path = tmp_path / "stamped.pth.tar"
    torch.save({"state_dict": {"w": torch.ones(2)}, "saved_at": datetime.datetime(2021, 6, 1)}, path)
    with pytest.raises(UserError) as excinfo:
        load_file(str(path), "pre-trained weight")
    message = one_line(excinfo)
    assert "datetime.datetime" in message and str(path) in message and "--trust_checkpoint" in message
    assert load_file(str(path), trust=True)["saved_at"].year == 2021


# ------------------------------------------------------------------------------------------------
# 2. Written JSON is strict
# ------------------------------------------------------------------------------------------------

def test_writers_turn_nan_and_infinity_into_null_at_any_depth(tmp_path, assert_strict_json):
    row = {"round": 1, "test_acc_at_best_val": math.nan, "best_val_acc": 50.0,
           "per_class": [100.0, math.nan, float("inf")], "nested": {"deeper": [{"x": -math.inf}]},
           "tensor": torch.tensor(math.nan), "numpy": np.float64("nan"), "array": np.array([1.0, np.nan])}
    write_json(row, str(tmp_path / "summary.json"))
    append_jsonl(row, str(tmp_path / "summary.jsonl"))
    append_jsonl({**row, "round": 2}, str(tmp_path / "summary.jsonl"))
    parsed = assert_strict_json(tmp_path, "summary.json", "summary.jsonl")
    expected = {"round": 1, "test_acc_at_best_val": None, "best_val_acc": 50.0, "per_class": [100.0, None, None],
                "nested": {"deeper": [{"x": None}]}, "tensor": None, "numpy": None, "array": [1.0, None]}
    assert parsed["summary.json"] == expected
    assert parsed["summary.jsonl"] == [expected, {**expected, "round": 2}]


def test_rewinding_logs_on_resume_keeps_them_strict(tmp_path, assert_strict_json):
    run = RunDir(str(tmp_path))
    for epoch in range(3):
        run.log_epoch({"round": 0, "epoch": epoch, "test_acc": math.nan, "val_acc": 10.0 * epoch})
    run.log_round({"round": 0, "test_acc_at_best_val": math.nan})
    run.rewind_logs(0, 2)
    parsed = assert_strict_json(tmp_path, "metrics.jsonl", "summary.jsonl")
    assert [row["test_acc"] for row in parsed["metrics.jsonl"]] == [None, None]
    assert parsed["summary.jsonl"] == []


def test_a_strict_parser_rejects_bare_nan(tmp_path, assert_strict_json):
    # The checker itself can fail: a file as the old writers made it.
    (tmp_path / "summary.jsonl").write_text('{"test_acc_at_best_val": NaN}\n')
    with pytest.raises(AssertionError, match="NaN"):
        assert_strict_json(tmp_path)


# ------------------------------------------------------------------------------------------------
# 3. Tickets: show, export, apply
# ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ticket(module_tmp):
    base = module_tmp("ticket")
    torch.manual_seed(0)
    model = build_model("resnet18", 10)
    pruning_utils.global_prune(model, 0.5)
    masks = pruning_utils.current_masks(model)
    path = base / "ticket_01.pt"
    pruning_utils.save_ticket(str(path), masks, arch="resnet18", dataset="digits", round=1, prune_type="lt")
    return {"path": path, "masks": masks, "base": base}


def run_tickets(*argv):
    """``python -m lth.tickets ARGV`` in this process; returns the exit status (0 on success)."""
    try:
        cli.run_main(tickets.main, tickets.get_args_parser(), [str(a) for a in argv])
    except SystemExit as stop:
        return stop.code
    return 0


def test_ticket_names_still_reachable_through_pruning_utils():
    for name in ("save_ticket", "read_masks", "is_ticket", "pack_masks", "unpack_masks", "TICKET_FORMAT"):
        assert getattr(pruning_utils, name) is getattr(tickets, name)
    from pruning_utils import read_masks  # noqa: F401 - the import form other branches use
    # Importing lth.tickets first, in a fresh interpreter, works too (no circular-import failure).
    subprocess.run([sys.executable, "-c", "import lth.tickets, pruning_utils; pruning_utils.read_masks"],
                   cwd=ROOT, check=True)


def test_show_prints_metadata_a_table_per_layer_and_the_total(ticket, capsys):
    assert run_tickets("show", ticket["path"]) == 0
    text = capsys.readouterr().out
    assert "arch: resnet18" in text and "dataset: digits" in text and "prune_type: lt" in text
    masks = ticket["masks"]
    for key, mask in masks.items():
        layer = key[: -len(".weight_mask")]
        line = next(line for line in text.splitlines() if line.split() and line.split()[0] == layer)
        kept = int(mask.sum())
        assert line.split()[1:] == ["x".join(map(str, mask.shape)), str(kept), str(mask.numel()),
                                    f"{100 * kept / mask.numel():.2f}"]
    total = next(line for line in text.splitlines() if line.startswith("total"))
    kept = sum(int(mask.sum()) for mask in masks.values())
    assert total.split()[-1] == f"{pruning_utils.mask_remaining(masks):.2f}" and str(kept) in total.split()
    assert pruning_utils.mask_remaining(masks) == pytest.approx(50, abs=0.01)


def test_export_is_a_plain_mask_file_that_prune_and_read_masks_take(ticket, tmp_path):
    out = tmp_path / "masks.pt"
    assert run_tickets("export", ticket["path"], out) == 0
    plain = torch.load(out, weights_only=True)
    assert set(plain) == set(ticket["masks"])
    for key, mask in plain.items():
        assert mask.dtype == torch.float32 and torch.equal(mask, ticket["masks"][key])
    read, _ = pruning_utils.read_masks(str(out))
    assert all(torch.equal(read[key], ticket["masks"][key]) for key in ticket["masks"])
    # A torch.nn.utils.prune user: custom_from_mask with the exported tensors.
    model = build_model("resnet18", 10)
    modules = dict(model.named_modules())
    for key, mask in plain.items():
        prune.custom_from_mask(modules[key[: -len(".weight_mask")]], "weight", mask)
    assert pruning_utils.sparsity(model)["remaining"] == pytest.approx(50, abs=0.01)
    assert run_tickets("export", ticket["path"], out) == 2  # never overwrites without --force
    assert run_tickets("export", ticket["path"], out, "--force") == 0


def test_exported_masks_train_through_mask_dir_with_a_trusted_pretrained_file(ticket, tmp_path, one_thread,
                                                                               assert_strict_json):
    exported = tmp_path / "masks.pt"
    assert run_tickets("export", ticket["path"], exported) == 0
    weights = tmp_path / "stamped_weights.pt"
    torch.save({"state_dict": build_model("resnet18", 10).state_dict(), "saved_at": datetime.datetime(2021, 6, 1)},
               weights)
    flags = [*DIGITS, "--mask_dir", str(exported), "--pretrained", str(weights)]
    parser = main_eval_downstream.get_args_parser()
    with pytest.raises(SystemExit) as stop:  # refused without the flag, before anything is written
        cli.run_main(main_eval_downstream.main, parser, [*flags, "--save_dir", str(tmp_path / "refused")])
    assert stop.value.code == 2 and not (tmp_path / "refused").exists()
    out = tmp_path / "run"
    cli.run_main(main_eval_downstream.main, parser, [*flags, "--save_dir", str(out), "--trust_checkpoint"])
    assert_strict_json(out, "summary.json", "metrics.jsonl", "run.json")
    trained = load_file(str(out / "checkpoint.pth.tar"))["state_dict"]
    for key, mask in ticket["masks"].items():
        assert torch.equal(trained[key], mask), key
    with pytest.raises(UserError):  # run_main's trust ended with the run
        load_file(str(weights))


def _weights_formats(state):
    return {
        "torchvision": state,
        "simclr": {"state_dict": state},
        "moco_v2": {"state_dict": {**{f"module.encoder_q.{k}": v for k, v in state.items()},
                                   **{f"module.encoder_k.{k}": torch.zeros_like(v) for k, v in state.items()},
                                   "module.queue": torch.randn(128, 16)}, "arch": "resnet18", "epoch": 800},
    }


@pytest.mark.parametrize("fmt", ["torchvision", "simclr", "moco_v2", "imp_checkpoint"])
def test_apply_zeroes_exactly_the_masked_weights(ticket, tmp_path, fmt):
    torch.manual_seed(1)
    model = build_model("resnet18", 10)
    dense = {k: v.clone() for k, v in model.state_dict().items()}
    if fmt == "imp_checkpoint":  # another mask is on it: its weight_orig*weight_mask is the weight
        pruning_utils.global_prune(model, 0.3, random=True)
        dense = pruning_utils.dense_state_dict(model)
        content = {"state": 1, "state_dict": model.state_dict()}
    else:
        content = _weights_formats(dense)[fmt]
    weights, out = tmp_path / "weights.pt", tmp_path / "pruned.pt"
    torch.save(content, weights)
    assert run_tickets("apply", ticket["path"], weights, out) == 0
    pruned = torch.load(out, weights_only=True)
    assert set(pruned) == set(dense)
    for key, value in pruned.items():
        mask = ticket["masks"].get(key[: -len(".weight")] + ".weight_mask") if key.endswith(".weight") else None
        if mask is None:
            assert torch.equal(value, dense[key]), key
        else:
            assert torch.equal(value == 0, (mask == 0) | (dense[key] == 0)), key
            assert torch.equal(value[mask == 0], torch.zeros(int((mask == 0).sum()))), key
            assert torch.equal(value[mask != 0], dense[key][mask != 0]), key
    build_model("resnet18", 10).load_state_dict(pruned, strict=True)


def test_apply_and_show_reject_bad_input_with_one_line(ticket, tmp_path, capsys):
    plain = tmp_path / "plain.pt"
    torch.save(build_model("resnet18", 10).state_dict(), plain)
    out = tmp_path / "pruned.pt"
    assert run_tickets("show", plain) == 2  # weights, not a ticket
    assert run_tickets("apply", plain, plain, out) == 2
    torch.save(build_model("resnet50", 10).state_dict(), tmp_path / "r50.pt")
    assert run_tickets("apply", ticket["path"], tmp_path / "r50.pt", out) == 2  # another architecture
    errors = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(errors) == 3 and all(line.startswith("error: ") for line in errors)
    assert "no '*.weight_mask'" in errors[0] and "another architecture" in errors[2]
    assert not out.exists()
    assert run_tickets("apply", ticket["path"], plain, plain) == 2  # never overwrites its input
    assert "input" in capsys.readouterr().err


def test_command_line_help_explains_every_subcommand():
    result = subprocess.run([sys.executable, "-m", "lth.tickets", "--help"], capture_output=True, text=True,
                            cwd=ROOT, check=True)
    for command in ("show", "export", "apply"):
        assert command in result.stdout
    for command, words in (("show", "remaining"), ("export", "custom_from_mask"), ("apply", "zero")):
        text = tickets.get_args_parser()._subparsers._group_actions[0].choices[command].format_help()
        assert words in text and "--trust_checkpoint" in text
