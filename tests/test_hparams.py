"""Typed hparams: the flags they generate equal the parsers before them (tests/parsers.json), the
experiment id is stable and moved by every experiment field and no other, --resume refuses another
experiment in one line, old run.json files still resume, and controls record their ticket's run."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import shutil
import subprocess
import sys

import pytest

import main_eval_downstream
import main_imp_downstream
import pruning_utils
from lth import cli, hparams, trainer
from lth.classification_hparams import DownstreamImp
from lth.errors import UserError
from lth.hparams import (EXPERIMENT, POSITION, RUNTIME, SEED, experiment_id, experiment_record, flag_name,
                         hparam_fields, identity_hash, option_strings, resume_mismatch, spec_of, twin_id)
from lth.runs import RunDir
from lth.session import check_same_experiment
from lth.trainer import TrainConfig
from tests import parser_snapshot

import Detection.hparams  # noqa: F401,E402  (every task registers its hparams)
import MoCo.hparams  # noqa: F401,E402
import Segmentation.hparams  # noqa: F401,E402
import SimCLR.hparams  # noqa: F401,E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
with open(os.path.join(ROOT, "tests", "parsers.json")) as _handle:
    SNAPSHOT = json.load(_handle)
SCRIPTS = sorted(SNAPSHOT)
# The deliberate differences from the parsers before the hparams: detection's --resume_all and --gpu_id
# were separate actions with the same dest as --resume and --gpu; they are now their aliases (same
# parse, and --help shows them beside the flag they spell).
ALIASES = {"Detection/": (("--resume_all", "--resume"), ("--gpu_id", "--gpu"))}
# Flags added after the snapshot, each with the flag it follows in its group: they are new settings
# (the original had none), so they join the expected parser as generated; every other flag must match.
ADDED = {"Detection/": (("--digits_scales", "--digits_counts"),)}
# The id of DownstreamImp's defaults. Recorded runs are resumed by comparing ids: if this changes,
# every run recorded before cannot be resumed (bump it only together with a migration).
PINNED_ID = "cb3a6a118305d20d"


def expected(script: str, generated: dict) -> dict:
    """The snapshot of ``script``'s parser with the listed deliberate differences applied (an added
    flag is taken from ``generated``, the description of the parser as it is now)."""
    want = copy.deepcopy(SNAPSHOT[script])
    for prefix, added in ADDED.items():
        if not script.startswith(prefix):
            continue
        for flag, after in added:
            want["actions"][flag] = generated["actions"][flag]
            for _title, keys in want["groups"]:
                if after in keys:
                    keys.insert(keys.index(after) + 1, flag)
    for prefix, pairs in ALIASES.items():
        if not script.startswith(prefix):
            continue
        for alias, flag in pairs:
            del want["actions"][alias]
            want["actions"][flag]["option_strings"].append(alias)
            want["groups"] = [[title, [key for key in keys if key != alias]] for title, keys in want["groups"]]
            want["groups"] = [group for group in want["groups"] if group[1]]
    return want


def task_of(script: str):
    return hparams.task_class(script[: -len(".py")])


def defaults(cls):
    """The hparams a command line with only the required arguments gives."""
    argv = []
    for field in hparam_fields(cls):
        spec = spec_of(field)
        if spec.positional:
            argv.append("x")
        elif spec.required:
            argv += [option_strings(field)[0], "x"]
    return cls.from_args(cls.parser().parse_args(argv))


def perturbed(cls, value, name):
    """Another valid-looking value of field ``name``."""
    spec = spec_of({f.name: f for f in dataclasses.fields(cls)}[name])
    if spec.choices and len(spec.choices) > 1:
        return next(choice for choice in spec.choices if choice != value)
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value + 0.5
    if isinstance(value, tuple):
        return (*value, 7)
    return (value or "") + "x"


@pytest.mark.parametrize("script", SCRIPTS)
def test_generated_parser_equals_the_snapshot(script):
    generated = parser_snapshot.describe(parser_snapshot.parsers()[script])
    assert generated == expected(script, generated)


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_flag_is_generated_from_a_field(script):
    parser, cls = parser_snapshot.parsers()[script], task_of(script)
    assert cls is not None, f"{script} registers no hparams class"
    actions = {action.dest: action for action in parser._actions if action.dest != "help"}
    fields = hparam_fields(cls)
    assert list(actions) == [field.name for field in fields]
    for field in fields:
        if not spec_of(field).positional:
            assert actions[field.name].option_strings == option_strings(field)
        assert actions[field.name].help == spec_of(field).help


def test_every_field_says_its_source_and_why_it_is_not_an_experiment_field():
    tasks = hparams.registered()
    assert {f"{task}.py" for task in tasks} >= set(SCRIPTS)
    for cls in tasks.values():
        for field in hparam_fields(cls):
            spec = spec_of(field)
            assert spec.help.strip() and spec.source.strip(), (cls.TASK, field.name)
            assert spec.role in (EXPERIMENT, RUNTIME, SEED, POSITION)
            assert spec.role == EXPERIMENT or spec.why.strip(), (cls.TASK, field.name)
        assert sum(spec_of(f).role == SEED for f in hparam_fields(cls)) == 1, cls.TASK


def test_the_id_is_the_same_in_another_process_and_pinned():
    code = ("import lth.classification_hparams as c; "
            "print(c.DownstreamImp.from_args(c.DownstreamImp.parser().parse_args(['--save_dir', 'x'])).experiment_id)")
    env = {**os.environ, "PYTHONPATH": ROOT, "PYTHONHASHSEED": "123"}
    other = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    mine = defaults(DownstreamImp).experiment_id
    assert other.stdout.strip() == mine == PINNED_ID
    fields = hparams.experiment_fields(defaults(DownstreamImp))
    assert identity_hash("main_imp_downstream", dict(reversed(list(fields.items())))) == mine
    # sha256 of the canonical JSON, as the run.json contract states it
    import hashlib
    text = json.dumps({"task": "main_imp_downstream", "hparams": fields}, sort_keys=True, separators=(",", ":"))
    assert hashlib.sha256(text.encode()).hexdigest()[:16] == mine


@pytest.mark.parametrize("task", sorted(hparams.registered()))
def test_runtime_fields_and_the_seed_leave_the_id_alone_and_every_experiment_field_moves_it(task):
    cls = hparams.task_class(task)
    base = defaults(cls)
    record = {"experiment": experiment_record(base), "args": {"seed": base.seed}}
    for field in hparam_fields(cls):
        changed = dataclasses.replace(base, **{field.name: perturbed(cls, getattr(base, field.name), field.name)})
        if spec_of(field).role == EXPERIMENT:
            assert changed.experiment_id != base.experiment_id, field.name
            reason = resume_mismatch(changed, base.seed, record, "'run'")
            assert reason.startswith(f"{flag_name(cls, field.name)} is ") and "\n" not in reason, reason
        else:
            assert changed.experiment_id == base.experiment_id, field.name
    # an int given to a float field is the same experiment (--warmup_epochs 2 and the default 2)
    floats = [f.name for f in hparam_fields(cls) if isinstance(getattr(base, f.name), float)]
    for name in floats[:1]:
        value = getattr(base, name)
        if value == int(value):
            assert dataclasses.replace(base, **{name: int(value)}).experiment_id == base.experiment_id


def test_a_record_without_an_experiment_key_is_compared_on_its_args(tmp_path):
    hp = defaults(DownstreamImp)
    args = {**{f.name: getattr(hp, f.name) for f in hparam_fields(DownstreamImp)}, "seed": 3}
    args["decreasing_lr"] = list(args["decreasing_lr"])
    run = RunDir(str(tmp_path))
    (tmp_path / "run.json").write_text(json.dumps({"args": args}))
    check_same_experiment(run, hp, 3)
    check_same_experiment(run, dataclasses.replace(hp, print_freq=1, workers=3), None)
    with pytest.raises(UserError, match=r"^--lr is 0.2 but the run being resumed .* used 0.1"):
        check_same_experiment(run, dataclasses.replace(hp, lr=0.2), 3)
    with pytest.raises(UserError, match=r"^--seed is 4 but the run being resumed .* used 3"):
        check_same_experiment(run, hp, 4)


def test_position_fields_must_match_on_resume(tmp_path):
    cls = hparams.task_class("Segmentation/main_imp_moco")
    hp = dataclasses.replace(defaults(cls), imp_num=3)
    record = {"experiment": experiment_record(hp), "args": {"imp_num": 3, "seed": 1}}
    assert dataclasses.replace(hp, imp_num=4).experiment_id == hp.experiment_id
    assert resume_mismatch(hp, 1, record, "'r'") is None
    assert resume_mismatch(dataclasses.replace(hp, imp_num=4), 1, record, "'r'").startswith("--imp_num is 4")
    other = hparams.task_class("Segmentation/main_imp_imagenet")
    assert "holds a run of Segmentation/main_imp_moco" in resume_mismatch(defaults(other), 1, record, "'r'")


def test_a_random_pruning_run_controls_the_magnitude_experiment_of_the_same_hparams():
    hp = defaults(DownstreamImp)
    assert twin_id(dataclasses.replace(hp, random_prune=True), random_prune=False) == hp.experiment_id
    det = hparams.task_class("Detection/train_random")
    imp = hparams.task_class("Detection/train_imp")
    assert twin_id(defaults(det), imp) == defaults(imp).experiment_id


def test_train_config_comes_from_the_hparams_without_fallbacks():
    hp = defaults(DownstreamImp)
    cfg = TrainConfig.from_hparams(hp)
    assert (cfg.epochs, cfg.lr, cfg.momentum, cfg.weight_decay, cfg.warmup, cfg.milestones) == \
        (182, 0.1, 0.9, 2e-4, 1, [91, 136])
    simclr = defaults(hparams.task_class("SimCLR/main"))
    with pytest.raises(TypeError, match="warmup"):
        TrainConfig.from_hparams(simclr, momentum=0.9)
    seg = TrainConfig.from_hparams(defaults(hparams.task_class("Segmentation/main_imp_imagenet")),
                                   epochs=0, momentum=0.9, warmup=0, milestones=[])
    assert (seg.total_itrs, seg.val_interval, seg.lr_policy) == (30000, 100, "poly")


# --------------------------------------------------------------------------------------------
# End to end on the digits set: resume checks, old records, a control's link
# --------------------------------------------------------------------------------------------

FAST = ["--dataset", "digits", "--arch", "resnet18", "--epochs", "2", "--batch_size", "256", "--lr", "0.05",
        "--decreasing_lr", "1", "--seed", "0", "--print_freq", "0", "--pruning_times", "1"]


class Interrupted(Exception):
    pass


@pytest.fixture(scope="module")
def cut_run(module_tmp):
    """An IMP run killed in its second epoch: its first epoch's checkpoint waits for --resume."""
    out = module_tmp("cut") / "run"
    real, calls = trainer.train_one_epoch, {"n": 0}

    def dies_in_the_second_epoch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise Interrupted()
        return real(*args, **kwargs)

    trainer.train_one_epoch = dies_in_the_second_epoch
    try:
        with pytest.raises(Interrupted):
            main_imp_downstream.main(main_imp_downstream.get_args_parser().parse_args([*FAST, "--save_dir", str(out)]))
    finally:
        trainer.train_one_epoch = real
    return out


def resume(folder, *flags):
    cli.run_main(main_imp_downstream.main, main_imp_downstream.get_args_parser(),
                 [*FAST, "--save_dir", str(folder), "--resume", *flags])


@pytest.mark.parametrize("flags, message", [
    (["--lr", "0.07"], "--lr is 0.07 but the run being resumed in '{}' (experiment {}) used 0.05"),
    (["--seed", "5"], "--seed is 5 but the run being resumed in '{}' used 0"),
])
def test_resume_refuses_another_experiment_or_seed_in_one_line(cut_run, tmp_path, capsys, flags, message):
    folder = tmp_path / "run"
    shutil.copytree(cut_run, folder)
    before = {name: (folder / name).read_bytes() for name in os.listdir(folder)}
    recorded = json.loads((folder / "run.json").read_text())["experiment"]["id"]
    with pytest.raises(SystemExit) as exit_info:
        resume(folder, *flags)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1
    assert err.startswith("error: " + message.format(folder, recorded))
    assert {name: (folder / name).read_bytes() for name in os.listdir(folder)} == before  # nothing touched


@pytest.fixture(scope="module")
def old_run_resumed(cut_run, module_tmp):
    """The cut run as recorded before run.json had "experiment", resumed to the end."""
    folder = module_tmp("old") / "run"
    shutil.copytree(cut_run, folder)
    record = json.loads((folder / "run.json").read_text())
    del record["experiment"]
    (folder / "run.json").write_text(json.dumps(record))
    resume(folder, "--print_freq", "7", "--workers", "1")  # runtime fields may change
    return folder


def test_a_run_recorded_before_experiment_ids_still_resumes_and_gains_its_id(old_run_resumed):
    record = json.loads((old_run_resumed / "run.json").read_text())
    hp = DownstreamImp.from_args(main_imp_downstream.get_args_parser().parse_args(
        [*FAST, "--save_dir", str(old_run_resumed)]))
    assert record["experiment"] == experiment_record(hp) and len(record["resumed"]) == 1
    _, meta = pruning_utils.read_masks(str(old_run_resumed / "ticket_01.pt"))
    assert (meta["experiment"], meta["seed"]) == (hp.experiment_id, 0)
    assert "controls" not in record


def test_a_control_records_the_ticket_and_the_run_that_wrote_it(old_run_resumed, tmp_path):
    ticket = str(old_run_resumed / "ticket_01.pt")
    out = tmp_path / "reinit"
    main_eval_downstream.main(main_eval_downstream.get_args_parser().parse_args(
        ["--dataset", "digits", "--arch", "resnet18", "--epochs", "1", "--batch_size", "256", "--seed", "4",
         "--print_freq", "0", "--save_dir", str(out), "--mask_dir", ticket, "--reverse_mask"]))
    record = json.loads((out / "run.json").read_text())
    imp_id = json.loads((old_run_resumed / "run.json").read_text())["experiment"]["id"]
    assert record["controls"] == {"kind": "reverse_mask", "ticket": ticket, "ticket_experiment": imp_id,
                                  "ticket_seed": 0}
    assert record["experiment"]["task"] == "main_eval_downstream"
    assert record["experiment"]["id"] == experiment_id(hparams.task_class("main_eval_downstream").from_args(
        main_eval_downstream.get_args_parser().parse_args(["--dataset", "digits", "--arch", "resnet18", "--epochs",
                                                           "1", "--batch_size", "256", "--save_dir", "y",
                                                           "--mask_dir", ticket, "--reverse_mask"])))
