"""Results across runs: read run folders, pool seeds, judge each curve against its own dense model, write the report."""

from __future__ import annotations

import csv
import glob
import hashlib
import json
import math
import os
import re
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from lth.errors import UserError
from lth.runs import METRICS, ONE_OFF_SUMMARY, RUN_RECORD
from lth.runs import SUMMARY as ROUND_SUMMARY


# Flags that never change what a run computes (where it writes, how it is launched, how fast it
# runs on a CPU): runs that differ only in these and in their seed are repeats of one experiment.
# Used only for runs written before run.json carried an experiment id (the "flags" rule).
NOT_EXPERIMENT_FLAGS = frozenset({
    "seed", "save_dir", "resume", "checkpoint", "gpu", "cpu", "print_freq", "print-freq", "workers",
    "data", "download", "precision", "channels_last", "compile", "eval_batch_size", "dist_url",
    "dist_backend", "world_size", "rank", "multiprocessing_distributed", "local_rank", "evaluate",
    "save_model", "start_state", "data_root", "val_batch_size", "test_only", "save_val_results",
    "enable_vis", "vis_port", "vis_env", "vis_num_samples", "deterministic", "trust_checkpoint",
    # what a finished round keeps on disk, and the original's flags that do nothing here (--fp_16 acts
    # through "precision")
    "keep_checkpoints", "weight_path", "log_path", "fp_16", "mask_dir_ignored",
})
# Flags that pick a point of a curve (an IMP round, a mask number, the run's folder name) or how many
# rounds one command ran: runs that differ only in these are points of one curve.
LEVEL_FLAGS = frozenset({"imp_num", "mask_num", "exp", "rounds", "imp_rounds"})
# Flags that make a control: they decide the run's kind, which is part of the curve's identity.
CONTROL_FLAGS = frozenset({"random_prune", "reverse_mask"})
# Flags naming files: they are compared by what the file is (e.g. "ticket of run group G"), not by path.
PATH_FLAGS = ("mask_dir", "pretrained", "pre_weight", "sim_model", "pretrained_path")
MASK_FLAGS = ("mask_dir",)
# A level is a remaining share; shares are compared at 4 significant digits.
LEVEL_DIGITS = 4
DENSE_LEVEL = 100.0
# Means closer than this (in the metric's unit: percentage points) are a tie: half the last digit
# the report prints, so two values printed alike are judged alike and float rounding decides nothing.
TIE_TOLERANCE = 0.005
ALPHA = 0.05  # significance level of the one-sided Welch rule
CONFIDENCE = 0.95  # of the confidence intervals of differences

# The data set each script trains on, where its args do not name it.
_SCRIPT_TASKS = {
    "main_imp_imagenet.py": "classification on ImageNet",
    "main_imp_visda.py": "classification on VisDA-2017",
    "main_eval_visda.py": "classification on VisDA-2017",
    "main.py": "SimCLR contrastive pre-training task",  # SimCLR/main.py
    "main_moco_imp.py": "MoCo contrastive pre-training task",
}
# What a primary metric measures: runs of one domain, data set and metric are one task.
_METRIC_DOMAINS = {"accuracy": "classification", "ap": "detection", "miou": "segmentation"}
_METRIC_NAMES = {"accuracy": "accuracy", "ap": "AP", "miou": "mIoU"}
# Mask files that carry their round in the name (the round is the level, not part of the curve).
_ROUNDED_FILE = re.compile(r"^(ticket_|seg_backbone_imp|backbone_imp|backbone_random|mask-)(\d+)(\.pt|\.pth)$"
                           r"|^(\d+)(model_SA_best\.pth\.tar|model_best\.pth\.tar|checkpoint\.pth\.tar)$")
# Kinds as the contract's controls.kind and segmentation's summary rows name them.
_CONTROL_KINDS = {"random_prune": "random", "random": "random", "reverse_mask": "reversed", "reversed": "reversed",
                  "reinit": "reinit", "transfer": "transfer", "dense": "dense", "imp": "imp"}
_ROW_KINDS = {"imp": "imp", "dense": "dense", "ticket": "transfer", "reversed ticket": "reversed",
              "random pruning": "random"}


def level_of(remaining: float) -> float:
    """The canonical level of a remaining share (%), at ``LEVEL_DIGITS`` significant digits."""
    if remaining <= 0:
        return 0.0
    return float(f"{remaining:.{LEVEL_DIGITS}g}")


def _number(value) -> float:
    """A metric value as a float; ``None`` (strict JSON's NaN) and non-numbers become NaN."""
    if isinstance(value, bool) or value is None:
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


# --------------------------------------------------------------------------------------------
# Reading runs
# --------------------------------------------------------------------------------------------

@dataclass
class Point:
    """One measured level of one run (an IMP round, or the one training of a transfer run)."""
    round: int | None
    remaining: float  # the share of (conv) weights the trained network kept (%)
    level: float  # where the point is plotted and compared: its own remaining share
    reported: float  # the primary metric at the best evaluation (or where the run's rows say: Run.reported_at)
    final: float  # the primary metric at the last evaluation
    ticket_level: float | None = None  # a reversed mask: the level of the ticket it reverses
    source: str = ""  # the run folder


@dataclass
class Run:
    path: str
    script: str
    args: dict
    record: dict
    task: str
    metric: str
    higher_is_better: bool
    points: list[Point]
    kind: str  # imp | random | reversed | reinit | transfer | dense
    missing: str = ""  # what an unfinished run lacks ("" when complete)
    key: str = ""  # the curve without the seed (filled in by ``group_runs``)
    rule: str = ""  # what grouped it: "experiment id" or "flags"
    expected_rounds: int | None = None  # IMP: the rounds the run's commands asked for
    fingerprint: str = ""  # hash of its logs: two folders with one fingerprint are copies
    reported_at: str = ""  # its rows' "reported_at" (detection on VOC: the last evaluation); "" = the best

    @property
    def seed(self):
        return self.args.get("seed")

    @property
    def experiment(self) -> dict | None:
        value = self.record.get("experiment")
        return value if isinstance(value, dict) and value.get("id") else None

    @property
    def experiment_id(self) -> str | None:
        return self.experiment["id"] if self.experiment else None

    @property
    def controls(self) -> dict | None:
        value = self.record.get("controls")
        return value if isinstance(value, dict) else None

    @property
    def device(self) -> str:
        versions = self.record.get("versions", {})
        return versions.get("gpu") or ("CUDA" if versions.get("cuda") else "CPU")


@dataclass
class Inputs:
    runs: list[Run]
    notes: list[str]  # what was skipped or is missing, one line each


def find_run_dirs(patterns: Sequence[str]) -> tuple[list[str], list[str]]:
    """Run folders named by ``patterns`` (folders or globs); a folder that is not a run is searched
    for runs below it. Returns the folders and notes on empty folders."""
    found, notes = [], []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        if not matches:
            raise UserError(f"'{pattern}' matches no file or folder")
        for path in matches:
            if not os.path.exists(path):
                raise UserError(f"'{path}' does not exist")
            if not os.path.isdir(path):
                if glob.has_magic(pattern):
                    continue
                raise UserError(f"'{path}' is a file, not a run folder (give the --save_dir of a run)")
            if os.path.isfile(os.path.join(path, RUN_RECORD)):
                found.append(path)
                continue
            below = sorted(os.path.dirname(p) for p in glob.glob(os.path.join(path, "**", RUN_RECORD),
                                                                   recursive=True))
            if below:
                found.extend(below)
            elif not os.listdir(path):
                notes.append(f"{path}: an empty folder (no run.json): nothing to report")
            else:
                raise UserError(f"'{path}' is not a run folder: no {RUN_RECORD} in it or below it "
                                f"(give the --save_dir of IMP or transfer runs of this toolkit)")
    unique = list(dict.fromkeys(os.path.normpath(p) for p in found))
    return unique, notes


def read_runs(patterns: Sequence[str]) -> Inputs:
    """Read every run named by ``patterns``; runs with no finished level are noted and left out."""
    dirs, notes = find_run_dirs(patterns)
    runs = []
    for path in dirs:
        run = read_run(path)
        if run.missing:
            notes.append(f"{path}: {run.missing}")
        if run.points:
            runs.append(run)
    if not runs:
        detail = ("; ".join(notes)) if notes else "no run folder given"
        raise UserError(f"no finished round to report: {detail}")
    return Inputs(runs, notes)


def _read_json(path: str, what: str) -> dict:
    try:
        with open(path) as handle:
            value = json.load(handle)
    except (OSError, ValueError) as error:
        raise UserError(f"cannot read {what} '{path}': {str(error).splitlines()[0]}") from None
    if not isinstance(value, dict):
        raise UserError(f"{what} '{path}' is not a JSON object")
    return value


def _read_rows(path: str) -> list[dict]:
    """The JSON lines of ``path``; a half-written last line (a run killed mid-write) is ignored."""
    if not os.path.exists(path):
        return []
    rows = []
    with open(path) as handle:
        lines = [line for line in handle if line.strip()]
    for index, line in enumerate(lines):
        try:
            row = json.loads(line)
        except ValueError:
            if index == len(lines) - 1:
                break
            raise UserError(f"'{path}' line {index + 1} is not JSON") from None
        if isinstance(row, dict):
            rows.append(row)
    return rows


KNOWN_SCRIPTS = ("main_imp_downstream.py", "main_eval_downstream.py", "main_imp_imagenet.py", "main_imp_visda.py",
                 "main_eval_visda.py", "main.py", "main_moco_imp.py")


def _reads_mask(args: dict) -> bool:
    """Whether a run's --mask_dir is one it reads: detection's IMP and random-pruning scripts accept
    the original's --mask_dir and ignore it (their run.json says so with ``mask_dir_ignored``), so
    there the flag says nothing about the run's kind or masks."""
    return "mask_dir" in args and not args.get("mask_dir_ignored")


def _mask_of(args: dict):
    """The mask file or folder a run read (None for none, or an ignored --mask_dir)."""
    return args.get("mask_dir") if _reads_mask(args) else None


def script_of(argv0: str, args: dict) -> str:
    """The entry script of a run: argv[0]'s name, or, for a run started in-process (argv[0] is then
    the caller's, e.g. pytest), the downstream script its flags belong to. Used for labels and for
    the data set of the classification scripts whose flags do not name it, never for grouping."""
    name = os.path.basename(argv0)
    if name in KNOWN_SCRIPTS or name.startswith(("main_", "train_")):
        return name
    if "pruning_times" in args:
        return "main_imp_downstream.py"
    if _reads_mask(args) and "dataset" in args:
        return "main_eval_downstream.py"
    return name


def task_of(script: str, args: dict, metric: str) -> str:
    """What a run measures: the domain (from its metric), the data set and the metric. Runs of
    different tasks are never compared with each other; IMP and its controls share a task."""
    if script in _SCRIPT_TASKS and not args.get("dataset"):
        task = _SCRIPT_TASKS[script]
    else:
        domain = _METRIC_DOMAINS.get(metric, "task")
        task = f"{domain} on {args.get('dataset') or '?'}"
    return f"{task} ({metric})"


def _expected_rounds(script: str, args: dict, record: dict) -> int | None:
    """The IMP rounds a run's commands asked for (None: a one-level run, or not known)."""
    if "pruning_times" in args:
        return int(args["pruning_times"])
    if script in ("main_imp_imagenet.py", "main_imp_visda.py") and "states" in args:
        return int(args["states"]) or 1
    if args.get("prun_epoch"):
        return 1 + int(args["epochs"]) // int(args["prun_epoch"])
    if args.get("retrain_epoch"):
        return 1 + int(args["epochs"]) // int(args["retrain_epoch"])
    if "imp_rounds" in args:  # segmentation: all rounds in one command, or one round per command
        return int(args["imp_rounds"]) if args.get("imp_num") is None else int(args["imp_num"]) + 1
    if "rounds" in args and "imp_num" in args:  # detection: rounds imp_num..imp_num+rounds-1 per command
        commands = [args] + [entry.get("args") or {} for entry in record.get("resumed") or []
                             if isinstance(entry, dict)]
        return max(int(c.get("imp_num") or 0) + int(c.get("rounds") or 1) for c in commands)
    return None


def _metric_name(row: dict, default: str) -> str:
    """The primary metric a summary row names; classification's ``acc`` (the core's name) and the
    unnamed accuracy of older rows and ``summary.json`` files are one metric."""
    name = str(row.get("primary_metric") or default)
    return "accuracy" if name == "acc" else name


def _reported(row: dict) -> float:
    if "reported" in row:
        return _number(row["reported"])
    for key in ("reported_acc", "test_acc_at_best_val", "best_val_acc"):
        if key in row:
            return _number(row[key])
    return math.nan


def _final(row: dict) -> float:
    if "final" in row:
        return _number(row["final"])
    for key in ("final_test_acc", "final_val_acc"):
        if key in row:
            return _number(row[key])
    return math.nan


def _summary_rows(path: str) -> tuple[list[dict], str]:
    """A run's summary rows and where they came from: its own summary.jsonl or summary.json, else
    the rows of the folder above that name this folder as their ``exp`` (segmentation keeps one
    summary.jsonl for all the runs of a --save_dir, each run in SAVE_DIR/EXP)."""
    own = os.path.join(path, ROUND_SUMMARY)
    rows = _read_rows(own)
    if rows:
        return rows, own
    one_off = os.path.join(path, ONE_OFF_SUMMARY)
    if os.path.isfile(one_off):
        return [_read_json(one_off, "summary")], one_off
    parent = os.path.join(os.path.dirname(os.path.abspath(path)), ROUND_SUMMARY)
    name = os.path.basename(os.path.normpath(path))
    shared = [row for row in _read_rows(parent) if row.get("exp") == name]
    return shared, parent if shared else ""


def _fingerprint(path: str, rows: Sequence[dict]) -> str:
    """What two copies of one run share: the bytes of its epoch log (which holds timings, so two
    real runs never share it), else its summary rows."""
    digest = hashlib.sha256()
    metrics = os.path.join(path, METRICS)
    if os.path.isfile(metrics) and os.path.getsize(metrics):
        with open(metrics, "rb") as handle:
            digest.update(handle.read())
    else:
        digest.update(json.dumps(rows, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def read_run(path: str) -> Run:
    """One run folder: its record, its measured levels and, if unfinished, what is missing."""
    record = _read_json(os.path.join(path, RUN_RECORD), "run record")
    args = record.get("args")
    argv = record.get("argv")
    if not isinstance(args, dict) or not argv:
        raise UserError(f"'{path}/{RUN_RECORD}' has no 'args'/'argv': not a run record of this toolkit")
    script = script_of(str(argv[0]), args)
    rows, _ = _summary_rows(path)
    missing = ""
    if rows:
        by_round = {}
        for row in rows:  # a resumed run may repeat a round: the last line wins
            by_round[_round_number(row.get("round"))] = row
        rows = [by_round[r] for r in sorted(by_round)]
    else:
        missing = f"unfinished: no round finished yet (no {ROUND_SUMMARY} or {ONE_OFF_SUMMARY}){_progress(path)}"
    metric = _metric_name(rows[-1], "accuracy") if rows else "accuracy"
    higher = bool(rows[-1].get("higher_is_better", True)) if rows else True
    kind = _kind(args, rows, record)
    points = []
    for row in rows:
        remaining = _number(row.get("remaining", DENSE_LEVEL if not _mask_of(args) else math.nan))
        if math.isnan(remaining):
            continue
        ticket = level_of(DENSE_LEVEL - remaining) if kind == "reversed" else None
        # A dense round that an early-bird search stopped short is no dense model: the round is
        # there (lth.cost_report counts its cost), its value is not.
        searched = bool(row.get("early_stopped")) and remaining >= DENSE_LEVEL
        points.append(Point(row.get("round"), remaining, level_of(remaining),
                            math.nan if searched else _reported(row), math.nan if searched else _final(row),
                            ticket, os.path.normpath(path)))
    return Run(path=os.path.normpath(path), script=script, args=args, record=record,
               task=task_of(script, args, metric), metric=metric, higher_is_better=higher, points=points,
               kind=kind, missing=missing, expected_rounds=_expected_rounds(script, args, record),
               fingerprint=_fingerprint(path, rows),
               reported_at=str(rows[-1].get("reported_at") or "") if rows else "")


def _round_number(value) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def _progress(path: str) -> str:
    rows = _read_rows(os.path.join(path, METRICS))
    if not rows:
        return "; no epoch logged"
    last = rows[-1]
    where = f"epoch {last.get('epoch')}" if "epoch" in last else f"iteration {last.get('itr')}"
    return f"; last logged: round {last.get('round', 0)} {where}"


def _ranges(values: Iterable[int]) -> str:
    """``[2, 3, 4, 7]`` -> ``2-4, 7``."""
    values = sorted(set(values))
    if not values:
        return "none"
    parts, start = [], values[0]
    for previous, current in zip(values, values[1:] + [None]):
        if current != previous + 1 if current is not None else True:
            parts.append(f"{start}" if start == previous else f"{start}-{previous}")
            start = current
    return ", ".join(parts)


def _no_weights(args: dict) -> bool:
    value = args.get("pretrained")
    return value is None or str(value).strip().lower() in ("", "none")


def _kind(args: dict, rows: Sequence[dict], record: dict) -> str:
    """What a run is: its run.json's controls.kind, else what its summary rows say, else its flags."""
    controls = record.get("controls")
    if isinstance(controls, dict) and str(controls.get("kind")) in _CONTROL_KINDS:
        kind = _CONTROL_KINDS[str(controls["kind"])]
        return "reinit" if kind == "transfer" and _no_weights(args) else kind
    row = rows[-1] if rows else {}
    if str(row.get("kind")) in _ROW_KINDS:
        kind = _ROW_KINDS[str(row["kind"])]
        return "reinit" if kind == "transfer" and _no_weights(args) else kind
    if row.get("random_prune") is True or args.get("random_prune"):
        return "random"
    if _reads_mask(args) and "pruning_times" not in args and "states" not in args:
        if not _mask_of(args):
            return "dense"
        if args.get("reverse_mask") or row.get("reverse_mask") is True:
            return "reversed"
        return "reinit" if _no_weights(args) else "transfer"
    return "imp"


# --------------------------------------------------------------------------------------------
# Grouping: runs that differ only in their seed and in the level they measured
# --------------------------------------------------------------------------------------------

@dataclass
class Group:
    key: str
    runs: list[Run]
    label: str = ""
    reference: "Group | None" = None  # the group a control is compared with
    dense: "DenseRef | None" = None  # the dense model its verdict uses

    @property
    def kind(self) -> str:
        return self.runs[0].kind

    @property
    def metric(self) -> str:
        return self.runs[0].metric

    @property
    def higher_is_better(self) -> bool:
        return self.runs[0].higher_is_better

    @property
    def rule(self) -> str:
        return self.runs[0].rule

    @property
    def fields(self) -> dict:
        return json.loads(self.key)

    @property
    def experiments(self) -> list[str]:
        return sorted({r.experiment_id for r in self.runs if r.experiment_id})


def _canonical(value) -> str:
    return json.dumps(value, sort_keys=True, default=str)


class _Keys:
    """Curve keys of runs: the task, the kind and the experiment without the seed and the level.
    With an experiment id in run.json the key is its hparams (rule "experiment id"); before ids
    existed, the flags but those in NOT_EXPERIMENT_FLAGS (rule "flags"). File flags are replaced by
    what they point at: a ticket of another run becomes that run's curve (so the tickets of seed 0
    and seed 1 of one IMP experiment count as the same source)."""

    def __init__(self):
        self._memo: dict[str, str | None] = {}

    def of_folder(self, folder: str, below: bool = False) -> str | None:
        """The curve key of the run in ``folder``; with ``below``, else of the first IMP run one
        level below it (a segmentation --save_dir holds its masks and one run folder per round)."""
        folder = os.path.realpath(folder)
        memo = f"{folder}|{below}"
        if memo in self._memo:
            return self._memo[memo]
        self._memo[memo] = None  # guards against a folder that points at itself
        records = [os.path.join(folder, RUN_RECORD)]
        if not os.path.isfile(records[0]):
            records = sorted(glob.glob(os.path.join(folder, "*", RUN_RECORD))) if below else []
        for record_path in records:
            try:
                run = read_run(os.path.dirname(record_path))
            except UserError:
                continue
            if record_path != os.path.join(folder, RUN_RECORD) and run.kind not in ("imp", "random"):
                continue
            self._memo[memo] = self.of(run)[0]
            break
        return self._memo[memo]

    def of(self, run: Run) -> tuple[str, str]:
        """``(key, rule)`` of ``run``."""
        experiment = run.experiment
        described = {"task": run.task, "kind": run.kind}
        if experiment is not None and isinstance(experiment.get("hparams"), dict):
            # A file another run wrote (a control's --pretrained: the init of its seed's IMP run)
            # stands for that run's curve, as in the flags rule, so the seeds of a control pool.
            hparams = {name: (self.describe_file(value, strip_round=False)
                              if name in PATH_FLAGS and isinstance(value, str) and value else value)
                       for name, value in experiment["hparams"].items()
                       if name not in LEVEL_FLAGS and name not in CONTROL_FLAGS and name != "seed"
                       and name not in MASK_FLAGS}
            described["hparams"] = hparams
            source = self.source_of(run)
            if source is not None:
                described["masks"] = source
            return _canonical(described), "experiment id"
        flags = {}
        for name, value in sorted(run.args.items()):
            if name in NOT_EXPERIMENT_FLAGS or name in LEVEL_FLAGS or name in CONTROL_FLAGS:
                continue
            if name in MASK_FLAGS:
                continue  # the masks' source is below
            if name in PATH_FLAGS and isinstance(value, str) and value:
                value = self.describe_file(value, strip_round=False)
            flags[name] = value
        described["flags"] = flags
        source = self.source_of(run)
        if source is not None:
            described["masks"] = source
        return _canonical(described), "flags"

    def source_of(self, run: Run) -> str | None:
        """What made the run's masks: the ticket's experiment (contract), else the curve of the run
        that wrote the mask file, else the file's path without its round; None for no mask."""
        controls = run.controls or {}
        if controls.get("ticket_experiment"):
            return f"experiment {controls['ticket_experiment']}"
        mask = _mask_of(run.args)
        if not isinstance(mask, str) or not mask:
            return None
        return self.describe_file(mask, strip_round=True)

    def describe_file(self, path: str, strip_round: bool) -> str:
        if strip_round and os.path.isdir(path):  # a mask folder (detection's --mask_dir with --mask_num)
            source = self.of_folder(path, below=True)
            return f"masks of run {source}" if source else os.path.normpath(path)
        folder, name = os.path.split(os.path.normpath(path))
        if strip_round:
            match = _ROUNDED_FILE.match(name)
            if match:
                name = (match.group(1) + "X" + match.group(3)) if match.group(1) else "X" + match.group(5)
        source = self.of_folder(folder or ".", below=strip_round)
        if source:
            return f"{name} of run {source}"
        return os.path.join(folder, name) if strip_round else path


def group_runs(runs: Sequence[Run]) -> list[Group]:
    """Pool runs that differ only in their seed and level (and in flags that change nothing); label
    each group, tie each control to the group it controls."""
    check_one_task(runs)
    keys = _Keys()
    groups: dict[str, Group] = {}
    for run in runs:
        run.key, run.rule = keys.of(run)
        groups.setdefault(run.key, Group(run.key, []))
        groups[run.key].runs.append(run)
    ordered = sorted(groups.values(), key=lambda g: (_KIND_ORDER.index(g.kind), g.key))
    for group in ordered:
        group.label = _base_label(group)
    _disambiguate(ordered)
    for group in ordered:
        group.reference = _reference(group, ordered, keys)
    return ordered


_KIND_ORDER = ["imp", "transfer", "dense", "random", "reinit", "reversed"]


def check_one_task(runs: Sequence[Run]) -> None:
    tasks: dict[str, list[str]] = {}
    for run in runs:
        tasks.setdefault(run.task, []).append(run.path)
    if len(tasks) > 1:
        listed = "; ".join(f"{task}: {len(paths)} run(s), e.g. {paths[0]}" for task, paths in tasks.items())
        raise UserError(f"runs of different tasks cannot be compared in one report ({listed}); "
                        f"report each task separately")


def _short(path) -> str:
    return os.path.basename(os.path.normpath(str(path))) if path else ""


_SOURCE_SCRIPT = re.compile(r"^main_(?:imp|transfer)_(imagenet|moco|simclr)\.py$")


def _weights_name(run: Run) -> str:
    """A short name of the pre-trained weights a run starts from (for labels only)."""
    args = run.args
    if _no_weights(args):
        return "random init"
    for flag in ("imp_type", "transfer_type"):
        if args.get(flag):
            return str(args[flag])
    match = _SOURCE_SCRIPT.match(run.script)
    if match:
        return match.group(1)
    return _short(args.get("pretrained") or args.get("pre_weight") or "")


def _base_label(group: Group) -> str:
    run = group.runs[0]
    args = run.args
    if run.kind in ("imp", "random"):
        what = "random pruning" if run.kind == "random" else "IMP"
        detail = str(args.get("prune_type") or "")
        if run.kind == "random" and _reads_mask(args) and "pruning_times" not in args:
            detail = "one shot to the masks' sparsity"  # a transfer run pruned at random
        if detail == "pt_trans" or (not detail and not _no_weights(args)) or args.get("imp_type"):
            detail = f"{detail} from {_weights_name(run)}".strip()
        if run.script not in ("main_imp_downstream.py",) and not args.get("imp_type") and "exp" not in args:
            detail = f"{run.script}{', ' + detail if detail else ''}"
        return f"{what} ({detail})" if detail else what
    source = _source_label(run)
    if run.kind == "dense":
        return f"dense from {_weights_name(run)}"
    if run.kind == "reversed":
        return f"reversed masks of {source}"
    if run.kind == "reinit":
        return f"random re-init, masks of {source}"
    return f"tickets of {source}, weights {_weights_name(run)}"


def _source_label(run: Run) -> str:
    controls = run.controls or {}
    mask = _mask_of(run.args) or controls.get("ticket") or ""
    folder = os.path.dirname(os.path.normpath(str(mask))) if os.path.splitext(str(mask))[1] else str(mask)
    record = os.path.join(folder, RUN_RECORD)
    if not os.path.isfile(record):
        inside = sorted(glob.glob(os.path.join(folder, "*", RUN_RECORD)))
        record = inside[0] if inside else ""
    if record:
        try:
            source = read_run(os.path.dirname(record))
        except UserError:
            return _short(folder) or "?"
        return _base_label(Group("{}", [source]))
    return _short(folder) or "?"


def _disambiguate(groups: Sequence[Group]) -> None:
    """Groups that would share a label get the fields that tell them apart appended."""
    by_label: dict[str, list[Group]] = {}
    for group in groups:
        by_label.setdefault(group.label, []).append(group)
    for same in by_label.values():
        if len(same) < 2:
            continue
        described = [_flat(group.fields) for group in same]
        names = sorted({name for d in described for name in d})
        differing = [name for name in names if len({_canonical(d.get(name)) for d in described}) > 1]
        for group, d in zip(same, described):
            parts = [f"{name}={_compact(d.get(name))}" for name in differing]
            group.label += " [" + ", ".join(parts) + "]"


def _flat(fields: dict) -> dict:
    flat = {}
    for name, value in fields.items():
        if name in ("flags", "hparams") and isinstance(value, dict):
            flat.update(value)
        else:
            flat[name] = value
    return flat


def _compact(value) -> str:
    if isinstance(value, str):
        if " of run " in value:
            return value.split(" of run ")[0] + " of another run"
        return value if len(value) <= 40 else "..." + value[-37:]
    return json.dumps(value, default=str) if isinstance(value, (list, dict)) else str(value)


def _with(fields: dict, kind: str, drop_masks: bool = False) -> str:
    changed = dict(fields, kind=kind)
    if drop_masks:
        changed.pop("masks", None)
    return _canonical(changed)


def _reference(group: Group, groups: Sequence[Group], keys: _Keys) -> Group | None:
    """The group a control is compared with: the same experiment without the control's change
    (random pruning -> magnitude pruning or the tickets it replaces, reversed -> not reversed,
    re-init -> the pre-trained weights), else the experiment that made the masks."""
    if group.kind not in ("random", "reversed", "reinit"):
        return None
    by_key = {g.key: g for g in groups}
    fields = group.fields
    twins = []
    if group.kind == "random":
        twins = [_with(fields, "imp"), _with(fields, "transfer")]
    elif group.kind == "reversed":
        twins = [_with(fields, "transfer")]
    for twin in twins:
        if twin in by_key:
            return by_key[twin]
    source = fields.get("masks")
    if source:
        for candidate in groups:
            if candidate is group or candidate.kind not in ("imp", "transfer"):
                continue
            if _made_by(source, candidate):
                return candidate
        if group.kind == "reinit":  # the same masks on the pre-trained weights
            for candidate in groups:
                if candidate.kind == "transfer" and candidate.fields.get("masks") == source:
                    return candidate
    return None


def _made_by(source: str, group: Group) -> bool:
    """Whether a masks' source description names ``group``'s experiment."""
    if source.startswith("experiment "):
        return source[len("experiment "):] in group.experiments
    return source.endswith(" of run " + group.key)


# --------------------------------------------------------------------------------------------
# Aggregation
# --------------------------------------------------------------------------------------------

@dataclass
class LevelStats:
    level: float
    values: list[float]  # the primary metric of each seed
    finals: list[float]
    seeds: list
    paths: list[str] = field(default_factory=list)  # the run folder of each value
    ticket_level: float | None = None  # a reversed mask: the level of the ticket it reverses

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return mean(self.values)

    @property
    def std(self) -> float:
        return sample_std(self.values)

    @property
    def final_mean(self) -> float:
        return mean(self.finals)

    @property
    def final_std(self) -> float:
        return sample_std(self.finals)


def mean(values: Sequence[float]) -> float:
    values = [v for v in values if not math.isnan(v)]
    return sum(values) / len(values) if values else math.nan


def sample_std(values: Sequence[float]) -> float:
    """Standard deviation over seeds with Bessel's correction (n - 1); 0 for a single seed."""
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return math.nan
    if len(values) == 1:
        return 0.0
    centre = mean(values)
    return math.sqrt(sum((v - centre) ** 2 for v in values) / (len(values) - 1))


def check_replicates(group: Group) -> None:
    """Refuse a group that holds one seed twice at one level (from two folders) or two folders with
    the same logs (a copied run): each would count as an independent sample."""
    seen: dict[tuple, str] = {}
    for run in group.runs:
        for point in run.points:
            other = seen.setdefault((str(run.seed), point.level), run.path)
            if other != run.path:
                raise UserError(f"group '{group.label}' holds seed {run.seed} twice at {fmt_level(point.level)} % "
                                f"remaining ({other} and {run.path}): a copied or repeated run would count as "
                                f"a second sample; leave one of them out")
    prints: dict[str, str] = {}
    for run in group.runs:
        other = prints.setdefault(run.fingerprint, run.path)
        if other != run.path:
            raise UserError(f"group '{group.label}': {other} and {run.path} hold the same logs (a copied run "
                            f"folder?); each would count as a sample: leave one of them out")


def aggregate(group: Group) -> list[LevelStats]:
    """Per level, the seeds' values (a NaN/null metric is left out of that level), densest first."""
    levels: dict[float, LevelStats] = {}
    for run in group.runs:
        for point in run.points:
            if math.isnan(point.reported):
                continue
            stats = levels.setdefault(point.level, LevelStats(point.level, [], [], [], [], point.ticket_level))
            stats.values.append(point.reported)
            stats.finals.append(point.final)
            stats.seeds.append(run.seed)
            stats.paths.append(run.path)
    return [levels[level] for level in sorted(levels, reverse=True)]


def unfinished_notes(group: Group) -> list[str]:
    """Per seed of an IMP-like group, the rounds its commands asked for that have no summary row
    (a gap in the middle too), with the run's last logged epoch."""
    notes = []
    by_seed: dict[str, list[Run]] = {}
    for run in group.runs:
        if run.expected_rounds is not None:
            by_seed.setdefault(str(run.seed), []).append(run)
    for seed, runs in by_seed.items():
        expected = max(run.expected_rounds for run in runs)
        done = {_round_number(p.round) for run in runs for p in run.points}
        absent = [r for r in range(expected) if r not in done]
        if absent:
            last = max(runs, key=lambda r: max((_round_number(p.round) for p in r.points), default=-1))
            where = last.path if len(runs) == 1 else f"{os.path.dirname(last.path)} (seed {seed})"
            notes.append(f"{where}: unfinished: {len(done & set(range(expected)))} of {expected} rounds "
                         f"in {ROUND_SUMMARY} (rounds {_ranges(absent)} missing){_progress(last.path)}")
    return notes


# --------------------------------------------------------------------------------------------
# The dense model of each curve, matching verdicts, controls
# --------------------------------------------------------------------------------------------

@dataclass
class DenseRef:
    """The dense model a curve is judged against: the 100 % level of ``label``'s group."""
    label: str
    stats: LevelStats
    rule: str  # why this dense model: own round 0, the ticket's experiment, ...
    experiments: list[str] = field(default_factory=list)

    @property
    def mean(self) -> float:
        return self.stats.mean

    @property
    def std(self) -> float:
        return self.stats.std

    @property
    def n(self) -> int:
        return self.stats.n

    @property
    def runs(self) -> list[str]:
        return sorted(set(self.stats.paths))


def _dense_level(stats: Sequence[LevelStats]) -> LevelStats | None:
    dense = [s for s in stats if s.level >= DENSE_LEVEL and s.n]
    return dense[0] if dense else None


def choose_dense(group: Group, groups: Sequence[Group], stats: dict[str, list[LevelStats]],
                 wanted: Group | None = None) -> DenseRef | None:
    """The dense model of ``group``'s own experiment (see docs/notes/report.md):
    IMP: its own round 0 (pooled over the seeds of the experiment); a control or a transfer: its own
    100 % level where it has one, else the dense model of the ticket's experiment (same task), else
    that of the group it is compared with, else a dense run of the same settings."""
    def ref(source: Group, rule: str) -> DenseRef | None:
        level = _dense_level(stats[source.label])
        return DenseRef(source.label, level, rule, source.experiments) if level else None

    if wanted is not None:
        return ref(wanted, "--baseline")
    own = ref(group, "its own round 0" if group.kind in ("imp", "random") else "its own 100 % level")
    if own or group.kind in ("imp", "dense"):
        return own
    masks = group.fields.get("masks")
    if masks:
        for candidate in groups:
            if candidate is not group and candidate.kind == "imp" and _made_by(masks, candidate):
                found = ref(candidate, "the dense model of the ticket's experiment")
                if found:
                    return found
    if group.reference is not None:
        found = ref(group.reference, f"the dense model of '{group.reference.label}', which it controls")
        if found:
            return found
    dense_twin = _with(group.fields, "dense", drop_masks=True)
    for candidate in groups:
        if candidate.kind == "dense" and _with(candidate.fields, "dense", drop_masks=True) == dense_twin:
            found = ref(candidate, "the dense run of the same settings")
            if found:
                return found
    return None


@dataclass
class LevelTest:
    """One level of a curve against its dense model."""
    level: float
    stats: LevelStats
    difference: float  # curve mean minus dense mean
    ci: tuple[float, float] | None  # CONFIDENCE interval of the difference (Welch)
    p: float | None  # one-sided Welch p of "the level is worse than dense"
    ok: dict[str, bool | None]  # per rule: matches, fails, or cannot say (None)


RULES = ("within_std", "at_least", "welch")
RULE_TEXT = {
    "within_std": "within one dense std (paper)",
    "at_least": "at least the dense mean (paper)",
    "welch": f"not significantly worse (one-sided Welch, α = {ALPHA})",
}


def matches(value: float, dense: DenseRef | LevelStats, criterion: str, higher_is_better: bool = True,
            tolerance: float = TIE_TOLERANCE) -> bool:
    """The paper's rules on a mean ``value``: ``within_std`` (no worse than the dense mean minus one
    dense std) or ``at_least`` (no worse than the dense mean); a difference within ``tolerance``
    is a tie and matches."""
    slack = dense.std if criterion == "within_std" else 0.0
    if higher_is_better:
        return value >= dense.mean - slack - tolerance
    return value <= dense.mean + slack + tolerance


def welch_interval(a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE
                   ) -> tuple[float, float, float, float] | None:
    """Welch's statistics of mean(a) - mean(b): ``(difference, standard error, degrees of freedom,
    half-width of the confidence interval)``; None where a side has fewer than 2 values or both
    sides have no spread."""
    from scipy import stats

    a = [v for v in a if not math.isnan(v)]
    b = [v for v in b if not math.isnan(v)]
    if len(a) < 2 or len(b) < 2:
        return None
    va, vb = sample_std(a) ** 2 / len(a), sample_std(b) ** 2 / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return None
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    half = float(stats.t.ppf(0.5 + confidence / 2, df)) * se
    return mean(a) - mean(b), se, df, half


def test_against_dense(stats: LevelStats, dense: DenseRef, higher_is_better: bool) -> LevelTest:
    from scipy import stats as distributions

    difference = stats.mean - dense.mean
    welch_values = welch_interval(stats.values, dense.stats.values)
    ci = p = None
    if welch_values is not None:
        diff, se, df, half = welch_values
        ci = (diff - half, diff + half)
        t = diff / se
        # H1: the level is worse than dense (lower for a higher-is-better metric).
        p = float(distributions.t.cdf(t, df) if higher_is_better else distributions.t.sf(t, df))
    ok = {"within_std": matches(stats.mean, dense, "within_std", higher_is_better),
          "at_least": matches(stats.mean, dense, "at_least", higher_is_better),
          "welch": None if p is None else p >= ALPHA}
    return LevelTest(stats.level, stats, difference, ci, p, ok)


@dataclass
class Verdict:
    extreme: float | None  # the lowest remaining share (%) that matches, None if none below dense
    contiguous: float | None  # the lowest share down to which every level matches
    failing_above: list[float]  # levels above ``extreme`` that do not match
    untested: list[float] = field(default_factory=list)  # levels the rule cannot judge


def verdict_of(tests: Sequence[LevelTest], rule: str) -> Verdict:
    """The extreme sparsity at which a curve still matches its dense model under ``rule`` (levels
    below 100 %, densest first); a level the rule cannot judge (one seed, for Welch) is skipped."""
    sparse = sorted((t for t in tests if t.level < DENSE_LEVEL and not math.isnan(t.stats.mean)),
                    key=lambda t: -t.level)
    judged = [(t.level, t.ok[rule]) for t in sparse if t.ok[rule] is not None]
    untested = [t.level for t in sparse if t.ok[rule] is None]
    extreme = min((level for level, good in judged if good), default=None)
    contiguous = None
    for level, good in judged:
        if not good:
            break
        contiguous = level
    failing = [level for level, good in judged if not good and extreme is not None and level > extreme]
    return Verdict(extreme, contiguous, failing, untested)


def matching_verdict(levels: Sequence[LevelStats], dense: DenseRef, criterion: str,
                     higher_is_better: bool = True) -> Verdict:
    """The verdict of one rule on a curve's levels (see ``verdict_of``)."""
    return verdict_of([test_against_dense(s, dense, higher_is_better) for s in levels], criterion)


@dataclass
class Comparison:
    level: float  # the control's level (its own remaining share)
    reference: LevelStats  # the reference at the level the control is paired with
    control: LevelStats
    t: float | None
    p: float | None
    ci: tuple[float, float] | None = None  # of the difference reference - control

    @property
    def difference(self) -> float:
        return self.reference.mean - self.control.mean


def welch(a: Sequence[float], b: Sequence[float]) -> tuple[float, float] | tuple[None, None]:
    """Welch's t-test (unequal variances, two-sided); None where a side has fewer than 2 values."""
    a = [v for v in a if not math.isnan(v)]
    b = [v for v in b if not math.isnan(v)]
    if len(a) < 2 or len(b) < 2:
        return None, None
    from scipy import stats

    result = stats.ttest_ind(a, b, equal_var=False)
    if math.isnan(result.statistic):
        return None, None
    return float(result.statistic), float(result.pvalue)


def compare_control(reference: Sequence[LevelStats], control: Sequence[LevelStats]) -> list[Comparison]:
    """The control against its reference at each level both measured (dense level left out); a
    reversed mask is paired with the ticket it reverses."""
    ref = {s.level: s for s in reference}
    out = []
    for stats in control:
        paired = stats.ticket_level if stats.ticket_level is not None else stats.level
        if paired in ref and paired < DENSE_LEVEL:
            t, p = welch(ref[paired].values, stats.values)
            interval = welch_interval(ref[paired].values, stats.values)
            ci = (interval[0] - interval[3], interval[0] + interval[3]) if interval else None
            out.append(Comparison(stats.level, ref[paired], stats, t, p, ci))
    return out


# --------------------------------------------------------------------------------------------
# The whole analysis
# --------------------------------------------------------------------------------------------

@dataclass
class Report:
    groups: list[Group]
    stats: dict[str, list[LevelStats]]
    tests: dict[str, list[LevelTest]]  # per group, each level against its dense model
    verdicts: dict[str, dict[str, Verdict]]  # per group, per rule
    controls: dict[str, list[Comparison]]
    notes: list[str] = field(default_factory=list)

    def dense_refs(self) -> list[DenseRef]:
        """The distinct dense models the verdicts use, in group order."""
        seen: dict[str, DenseRef] = {}
        for group in self.groups:
            if group.dense is not None:
                seen.setdefault(group.dense.label, group.dense)
        return list(seen.values())


def snap_levels(runs: Sequence[Run], tolerance: float = 0.01) -> None:
    """Make levels within ``tolerance`` (relative) of each other one level: summary rows round the
    remaining share to 4 decimals, transfer runs do not, so 0.0144 and 0.01441 are one level."""
    representative: list[float] = []
    for level in sorted({p.level for run in runs for p in run.points}, reverse=True):
        if not representative or abs(representative[-1] - level) > tolerance * representative[-1]:
            representative.append(level)

    def snap(level: float) -> float:
        return min(representative, key=lambda r: abs(r - level))

    for run in runs:
        for point in run.points:
            point.level = snap(point.level)
            if point.ticket_level is not None and point.ticket_level > 0:
                closest = snap(point.ticket_level)
                if abs(closest - point.ticket_level) <= tolerance * closest:
                    point.ticket_level = closest


def analyse(inputs: Inputs, baseline_label: str | None = None) -> Report:
    snap_levels(inputs.runs)
    groups = group_runs(inputs.runs)
    notes = list(inputs.notes)
    for group in groups:
        check_replicates(group)
        notes += unfinished_notes(group)
    stats = {group.label: aggregate(group) for group in groups}
    wanted = None
    if baseline_label:
        wanted = next((g for g in groups if g.label == baseline_label), None)
        if wanted is None:
            raise UserError(f"--baseline '{baseline_label}' names no group; the groups are: "
                            + "; ".join(g.label for g in groups))
        if _dense_level(stats[wanted.label]) is None:
            raise UserError(f"--baseline group '{baseline_label}' has no dense (100 % remaining) level")
    tests, verdicts = {}, {}
    for group in groups:
        group.dense = choose_dense(group, groups, stats, wanted)
        if group.kind == "dense":
            continue
        if group.dense is None:
            notes.append(f"'{group.label}': no dense model of its experiment among the runs (its IMP round 0, "
                         f"a ticket_00 transfer or a dense run of the same settings): no matching verdict")
            continue
        tests[group.label] = [test_against_dense(s, group.dense, group.higher_is_better)
                              for s in stats[group.label]]
        verdicts[group.label] = {rule: verdict_of(tests[group.label], rule) for rule in RULES}
    controls = {g.label: compare_control(stats[g.reference.label], stats[g.label])
                for g in groups if g.reference is not None}
    return Report(groups, stats, tests, verdicts, controls, notes)


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------

def fmt_level(level: float) -> str:
    return f"{level:.3g}" if level < 10 else f"{level:.4g}"


def metric_label(metric: str) -> str:
    """The metric with its unit, for axes and tables: accuracy (%), AP (%), mIoU (%)."""
    return f"{_METRIC_NAMES.get(metric, metric)} (%)"


def _pm(mean_value: float, std_value: float, n: int) -> str:
    if math.isnan(mean_value):
        return "-"
    return f"{mean_value:.2f} ± {std_value:.2f} (n={n})" if n > 1 else f"{mean_value:.2f} (n=1)"


def write_levels_csv(report: Report, path: str) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["group", "kind", "metric", "remaining", "sparsity", "n", "seeds", "mean", "std",
                         "final_mean", "final_std", "reference", "ticket_remaining", "dense", "difference",
                         "ci_low", "ci_high", "p_worse", *(f"matches_{rule}" for rule in RULES)])
        for group in report.groups:
            tests = {t.level: t for t in report.tests.get(group.label, [])}
            for s in report.stats[group.label]:
                t = tests.get(s.level)
                judged = t is not None and s.level < DENSE_LEVEL
                writer.writerow([group.label, group.kind, group.metric, s.level, round(100 - s.level, 6), s.n,
                                 " ".join(str(seed) for seed in s.seeds), _csv(s.mean), _csv(s.std),
                                 _csv(s.final_mean), _csv(s.final_std),
                                 group.reference.label if group.reference else "",
                                 "" if s.ticket_level is None else s.ticket_level,
                                 group.dense.label if group.dense else "",
                                 _csv(t.difference) if judged else "",
                                 _csv(t.ci[0]) if judged and t.ci else "", _csv(t.ci[1]) if judged and t.ci else "",
                                 _csv(t.p) if judged and t.p is not None else "",
                                 *(("" if not judged or t.ok[rule] is None else str(t.ok[rule]).lower())
                                   for rule in RULES)])


def write_runs_csv(groups: Sequence[Group], path: str) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["group", "run", "seed", "round", "remaining", "level", "reported", "final", "experiment"])
        for group in groups:
            for run in group.runs:
                for p in run.points:
                    writer.writerow([group.label, run.path, run.seed, "" if p.round is None else p.round,
                                     p.remaining, p.level, _csv(p.reported), _csv(p.final), run.experiment_id or ""])


def _csv(value: float | None) -> str:
    return "" if value is None or math.isnan(value) else f"{value:.6g}"


def _verdict_text(verdict: Verdict) -> str:
    if verdict.extreme is None:
        text = "no sparse level matches"
    else:
        text = f"{fmt_level(verdict.extreme)} % remaining ({fmt_level(100 - verdict.extreme)} % sparsity)"
        if verdict.failing_above:
            text += "; not at " + ", ".join(fmt_level(v) for v in verdict.failing_above) + " % above it"
    if verdict.untested:
        text += f" ({len(verdict.untested)} level{'s' if len(verdict.untested) > 1 else ''} not testable)"
    return text


def write_report(report: Report, out: str, figures: Sequence[tuple[str, str]], command: str,
                 ticket_section: Sequence[str] = (), extra_sections: Sequence[str] = ()) -> str:
    """Write ``out/levels.csv``, ``out/runs.csv`` and ``out/report.md``; returns the report's path.
    ``extra_sections`` (markdown lines) go after the controls: a place for other tables/figures."""
    write_levels_csv(report, os.path.join(out, "levels.csv"))
    write_runs_csv(report.groups, os.path.join(out, "runs.csv"))
    groups, stats = report.groups, report.stats
    first = groups[0].runs[0]
    metric = first.metric
    when = reported_when(run for g in groups for run in g.runs)
    lines = [
        "# Report: " + first.task,
        "",
        f"Command: `{command}`",
        "",
        "## What was compared",
        "",
        f"{sum(len(g.runs) for g in groups)} runs in {len(groups)} groups (curves). The metric is "
        f"{_metric_text(metric, when)}; mean ± sample standard deviation over seeds (n - 1 in the denominator; "
        f"0 for one seed). Remaining = share of the pruned (conv) weights kept; a reversed mask is shown "
        f"at its own remaining share and compared with the ticket it reverses.",
        "",
        _grouping_text(groups),
        "",
        "| group | kind | seeds | levels | grouped by | dense model of its verdict | compared with |",
        "|---|---|---|---:|---|---|---|",
    ]
    for g in groups:
        seeds = ", ".join(str(s) for s in sorted({str(r.seed) for r in g.runs}))
        dense = "-" if g.kind == "dense" else (_dense_text(g.dense) if g.dense else "none found")
        lines.append(f"| {g.label} | {_KIND_TEXT[g.kind]} | {seeds} | {len(stats[g.label])} | {g.rule} | "
                     f"{dense} | {g.reference.label if g.reference else ''} |")
    lines += [""]
    refs = report.dense_refs()
    if refs:
        lines += ["Dense models (the 100 % level of each, pooled over the seeds of its experiment):", ""]
        for ref in refs:
            ids = f"; experiment {', '.join(ref.experiments)}" if ref.experiments else ""
            lines.append(f"- **{ref.label}**: {_pm(ref.mean, ref.std, ref.n)}{ids}; runs: "
                         + ", ".join(f"`{path}`" for path in ref.runs))
        lines += [""]
    else:
        lines += ["No dense model: no run has a 100 % level of its experiment.", ""]
    for title, name in figures:
        lines += [f"![{title}]({name})", ""]
    if report.verdicts:
        lines += _verdict_lines(report)
    lines += _control_lines(report)
    lines += list(extra_sections)
    lines += ["## Table", "",
              f"Per group and level: the metric {when}, and at the last epoch (they can part "
              "ways at extreme sparsity). Also in `levels.csv` (with each level's test against the dense "
              "model); every run's values in `runs.csv`.", "",
              f"| group | remaining (%) | n | mean ± std | final epoch: mean ± std |", "|---|---:|---:|---:|---:|"]
    for g in groups:
        for s in stats[g.label]:
            shown = fmt_level(s.level) + (f" (reverse of {fmt_level(s.ticket_level)})"
                                          if s.ticket_level is not None else "")
            lines.append(f"| {g.label} | {shown} | {s.n} | {_pm(s.mean, s.std, s.n)} | "
                         f"{_pm(s.final_mean, s.final_std, s.n)} |")
    lines += [""]
    lines += list(ticket_section)
    lines += _provenance(groups)
    if report.notes:
        lines += ["## Missing or skipped", ""] + [f"- {note}" for note in report.notes] + [""]
    path = os.path.join(out, "report.md")
    with open(path, "w") as handle:
        handle.write("\n".join(lines))
    return path


def _grouping_text(groups: Sequence[Group]) -> str:
    rules = {g.rule for g in groups}
    text = []
    if "experiment id" in rules:
        text.append("Groups marked 'experiment id' pool runs whose run.json names the same experiment "
                    "hyper-parameters (its id is their hash) apart from the seed and the level (IMP round, "
                    "mask number).")
    if "flags" in rules:
        text.append("Groups marked 'flags' hold runs written before run.json carried an experiment id: they "
                    "pool runs whose flags are equal apart from the seed, the level (" + ", ".join(sorted(LEVEL_FLAGS))
                    + ") and flags that change nothing (" + ", ".join(sorted(NOT_EXPERIMENT_FLAGS - {"seed"})) + ").")
    return " ".join(text)


def _dense_text(ref: DenseRef) -> str:
    return f"{ref.label}: {_pm(ref.mean, ref.std, ref.n)} ({ref.rule})"


def _verdict_lines(report: Report) -> list[str]:
    lines = ["## Matching verdicts", "",
             "The most extreme sparsity at which each curve still matches the dense model of its own "
             "experiment (named in the table above), under three rules. The paper's two: the mean is within "
             "one standard deviation of the dense mean, and the mean is at least the dense mean (lower is "
             "better for a loss). Ours, for the uncertainty: the level is not significantly worse than "
             f"dense in a one-sided Welch t-test at α = {ALPHA} (both sides need 2 seeds; levels it cannot "
             f"test are skipped and counted). Means within {TIE_TOLERANCE} points of a bound are a tie and "
             "match (half the last printed digit: no float rounding decides a verdict). 'Every level down "
             "to' is the sparsest level such that all denser levels match too.", "",
             "| group | dense model | " + " | ".join(f"{RULE_TEXT[r]} | every level down to" for r in RULES) + " |",
             "|---|---|" + "---|---:|" * len(RULES)]
    for g in report.groups:
        if g.label not in report.verdicts:
            continue
        cells = []
        for rule in RULES:
            v = report.verdicts[g.label][rule]
            cells += [_verdict_text(v), _level_or_dash(v.contiguous)]
        lines.append(f"| {g.label} | {g.dense.label}: {_pm(g.dense.mean, g.dense.std, g.dense.n)} | "
                     + " | ".join(cells) + " |")
    lines += ["", "### Each level against its dense model", "",
              f"Difference = level mean minus dense mean, with its {int(CONFIDENCE * 100)} % confidence interval "
              "(Welch-Satterthwaite degrees of freedom); p = one-sided Welch p-value of 'worse than dense'. "
              "✓ = matches, ✗ = does not, - = cannot be tested.", "",
              "| group | remaining (%) | mean ± std | difference | CI | p | within std | ≥ dense | Welch |",
              "|---|---:|---:|---:|---:|---:|:-:|:-:|:-:|"]
    for g in report.groups:
        for t in report.tests.get(g.label, []):
            if t.level >= DENSE_LEVEL:
                continue
            ci = "-" if t.ci is None else f"[{t.ci[0]:+.2f}, {t.ci[1]:+.2f}]"
            p = "-" if t.p is None else f"{t.p:.3g}"
            marks = " | ".join({True: "✓", False: "✗", None: "-"}[t.ok[rule]] for rule in RULES)
            lines.append(f"| {g.label} | {fmt_level(t.level)} | {_pm(t.stats.mean, t.stats.std, t.stats.n)} | "
                         f"{t.difference:+.2f} | {ci} | {p} | {marks} |")
    return lines + [""]


def _control_lines(report: Report) -> list[str]:
    if not report.controls:
        return []
    lines = ["## Controls", "",
             "Each control against the group it controls, level by level (a reversed mask against the ticket "
             "it reverses): difference of means (reference minus control) with its "
             f"{int(CONFIDENCE * 100)} % confidence interval, and Welch's t-test (unequal variances, two-sided) "
             "where both sides have at least two seeds.", ""]
    for label, comparisons in report.controls.items():
        group = next(g for g in report.groups if g.label == label)
        lines += [f"### {label} vs {group.reference.label}", ""]
        if not comparisons:
            lines += ["No level measured by both.", ""]
            continue
        lines += ["| control keeps (%) | compared at (%) | reference | control | difference | CI | t | p |",
                  "|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for c in comparisons:
            t = "-" if c.t is None else f"{c.t:.2f}"
            p = "-" if c.p is None else f"{c.p:.3g}"
            ci = "-" if c.ci is None else f"[{c.ci[0]:+.2f}, {c.ci[1]:+.2f}]"
            lines.append(f"| {fmt_level(c.level)} | {fmt_level(c.reference.level)} | "
                         f"{_pm(c.reference.mean, c.reference.std, c.reference.n)} | "
                         f"{_pm(c.control.mean, c.control.std, c.control.n)} | {c.difference:+.2f} | {ci} | {t} | {p} |")
        tested = [c for c in comparisons if c.p is not None]
        if tested:
            higher = group.higher_is_better
            better = sum(1 for c in tested if c.p < ALPHA and _better(c, higher))
            worse = sum(1 for c in tested if c.p < ALPHA and not _better(c, higher))
            lines += ["", f"At p < {ALPHA} the reference is better at {better} and worse at {worse} of "
                          f"{len(tested)} tested levels (not corrected for multiple comparisons)."]
        lines += [""]
    return lines


_KIND_TEXT = {"imp": "IMP", "random": "control: random pruning", "reversed": "control: reversed masks",
              "reinit": "control: random re-init", "transfer": "ticket transfer", "dense": "dense"}


def _better(comparison: Comparison, higher_is_better: bool) -> bool:
    return comparison.difference > 0 if higher_is_better else comparison.difference < 0


def _level_or_dash(level: float | None) -> str:
    return "-" if level is None else f"{fmt_level(level)} %"


def reported_when(runs: Iterable[Run]) -> str:
    """Which evaluation the reported metric is: the best one, unless the runs' summary rows say
    otherwise (``reported_at``: detection on VOC reports its last evaluation, as the original did)."""
    said = sorted({run.reported_at for run in runs})
    text = " or ".join(f"at the {what or 'best evaluation'}" for what in said) or "at the best evaluation"
    return text + (" (as each run's summary rows say)" if len(said) > 1 else "")


def _metric_text(metric: str, when: str = "at the best evaluation") -> str:
    if metric == "accuracy" and when == "at the best evaluation":
        return ("accuracy (%) at the best validation epoch (test accuracy where the task has a test "
                "split, else validation accuracy)")
    return f"{metric_label(metric)} {when}"


def _provenance(groups: Sequence[Group]) -> list[str]:
    runs = [run for g in groups for run in g.runs]
    lines = ["## Provenance", ""]
    for title, values in (
            ("code versions", [str(r.record.get("code_version", "unknown")) for r in runs]),
            ("libraries", [", ".join(f"{k} {v}" for k, v in sorted((r.record.get("versions") or {}).items()))
                           for r in runs]),
            ("devices", [f"{r.device} on {r.record.get('host', '?')}" for r in runs])):
        counts: dict[str, int] = {}
        for value in values:
            counts[value] = counts.get(value, 0) + 1
        lines.append(f"- {title}: " + "; ".join(f"{v} ({n} runs)" for v, n in counts.items()))
    resumed = [r.path for r in runs if r.record.get("resumed")]
    if resumed:
        lines.append(f"- resumed runs: {len(resumed)} ({', '.join(resumed[:5])}{' ...' if len(resumed) > 5 else ''})")
    lines += ["", "<details><summary>command lines</summary>", ""]
    for g in groups:
        for run in g.runs:
            lines.append(f"- `{' '.join(str(a) for a in run.record.get('argv', []))}`")
    lines += ["", "</details>", ""]
    return lines


def iter_levels(groups: Iterable[Group], stats: dict[str, list[LevelStats]]) -> list[float]:
    return sorted({s.level for g in groups for s in stats[g.label]}, reverse=True)
