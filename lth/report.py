"""Results across runs: read run folders, pool seeds, judge matching sparsity and controls, write the report."""

from __future__ import annotations

import csv
import glob
import json
import math
import os
import re
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from lth.errors import UserError

RUN_RECORD = "run.json"
ROUND_SUMMARY = "summary.jsonl"
ONE_OFF_SUMMARY = "summary.json"
METRICS = "metrics.jsonl"

# Flags that never change what a run computes (where it writes, how it is launched, how fast it
# runs on a CPU): runs that differ only in these and in their seed are repeats of one experiment.
NOT_EXPERIMENT_FLAGS = frozenset({
    "seed", "save_dir", "resume", "checkpoint", "gpu", "cpu", "print_freq", "print-freq", "workers",
    "data", "download", "precision", "channels_last", "compile", "eval_batch_size", "dist_url",
    "dist_backend", "world_size", "rank", "multiprocessing_distributed", "local_rank", "evaluate",
    "save_model", "start_state",
})
# Flags naming files: they are compared by what the file is (e.g. "ticket of run group G"), not by path.
PATH_FLAGS = ("mask_dir", "pretrained", "pre_weight", "sim_model", "pretrained_path")
# A level is a remaining share; shares are compared at 4 significant digits, so 100 - 67.232 (a
# reversed mask put at the level of its ticket) and 32.768 are one level.
LEVEL_DIGITS = 4
DENSE_LEVEL = 100.0

# The data set each script trains on, where its args do not name it.
_SCRIPT_TASKS = {
    "main_imp_imagenet.py": "classification on ImageNet",
    "main_imp_visda.py": "classification on VisDA-2017",
    "main_eval_visda.py": "classification on VisDA-2017",
    "main.py": "SimCLR contrastive pre-training task",  # SimCLR/main.py
    "main_moco_imp.py": "MoCo contrastive pre-training task",
}
_ROUNDED_FILE = re.compile(r"^(ticket_)(\d+)(\.pt)$|^(\d+)(model_SA_best\.pth\.tar|model_best\.pth\.tar|"
                           r"checkpoint\.pth\.tar)$")


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
    remaining: float  # the share of conv weights the trained network kept (%)
    level: float  # where the point is plotted and compared (for a reversed mask: its ticket's level)
    reported: float  # the primary metric at the best evaluation
    final: float  # the primary metric at the last evaluation


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
    key: str = ""  # the experiment without the seed (filled in by ``group_runs``)

    @property
    def seed(self):
        return self.args.get("seed")

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
            rows.append(json.loads(line))
        except ValueError:
            if index == len(lines) - 1:
                break
            raise UserError(f"'{path}' line {index + 1} is not JSON") from None
    return rows


KNOWN_SCRIPTS = ("main_imp_downstream.py", "main_eval_downstream.py", "main_imp_imagenet.py", "main_imp_visda.py",
                 "main_eval_visda.py", "main.py", "main_moco_imp.py")


def script_of(argv0: str, args: dict) -> str:
    """The entry script of a run: argv[0]'s name, or, for a run started in-process (argv[0] is then
    the caller's, e.g. pytest), the downstream script its flags belong to."""
    name = os.path.basename(argv0)
    if name in KNOWN_SCRIPTS or name.startswith(("main_", "train_")):
        return name
    if "pruning_times" in args:
        return "main_imp_downstream.py"
    if "mask_dir" in args and "dataset" in args:
        return "main_eval_downstream.py"
    return name


def task_of(script: str, args: dict, metric: str) -> str:
    """What a run measures: the data set and metric it is judged by. Runs of different tasks are
    never compared with each other."""
    if script in ("main_imp_downstream.py", "main_eval_downstream.py") and args.get("dataset"):
        task = f"classification on {args['dataset']}"
    elif script in _SCRIPT_TASKS:
        task = _SCRIPT_TASKS[script]
    else:
        dataset = args.get("dataset") or args.get("data") or "?"
        task = f"{script} on {dataset}"
    return f"{task} ({metric})"


def _expected_rounds(script: str, args: dict) -> int | None:
    if "pruning_times" in args:
        return int(args["pruning_times"])
    if script in ("main_imp_imagenet.py", "main_imp_visda.py") and "states" in args:
        return int(args["states"]) or 1
    if "prun_epoch" in args and args.get("prun_epoch"):
        return 1 + int(args["epochs"]) // int(args["prun_epoch"])
    if "retrain_epoch" in args and args.get("retrain_epoch"):
        return 1 + int(args["epochs"]) // int(args["retrain_epoch"])
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


def read_run(path: str) -> Run:
    """One run folder: its record, its measured levels and, if unfinished, what is missing."""
    record = _read_json(os.path.join(path, RUN_RECORD), "run record")
    args = record.get("args")
    argv = record.get("argv")
    if not isinstance(args, dict) or not argv:
        raise UserError(f"'{path}/{RUN_RECORD}' has no 'args'/'argv': not a run record of this toolkit")
    script = script_of(str(argv[0]), args)
    rows = _read_rows(os.path.join(path, ROUND_SUMMARY))
    one_off = os.path.join(path, ONE_OFF_SUMMARY)
    reverse = bool(args.get("reverse_mask"))
    missing = ""
    if rows:
        by_round = {}
        for row in rows:  # a resumed run may repeat a round: the last line wins
            by_round[int(row.get("round", 0))] = row
        rows = [by_round[r] for r in sorted(by_round)]
        expected = _expected_rounds(script, args)
        if expected is not None and len(rows) < expected:
            done = {row.get("round", 0) for row in rows}
            absent = [r for r in range(expected) if r not in done]
            missing = (f"unfinished: {len(rows)} of {expected} rounds in {ROUND_SUMMARY} "
                       f"(rounds {_ranges(absent)} missing){_progress(path)}")
    elif os.path.isfile(one_off):
        rows = [_read_json(one_off, "summary")]
    else:
        missing = f"unfinished: no round finished yet (no {ROUND_SUMMARY} or {ONE_OFF_SUMMARY}){_progress(path)}"
    metric = _metric_name(rows[-1], "accuracy") if rows else "accuracy"
    higher = bool(rows[-1].get("higher_is_better", True)) if rows else True
    points = []
    for row in rows:
        remaining = _number(row.get("remaining", DENSE_LEVEL if not args.get("mask_dir") else math.nan))
        if math.isnan(remaining):
            continue
        if row.get("early_stopped") and remaining >= DENSE_LEVEL:
            continue  # an early-bird search stopped round 0 short: not a dense model (lth.cost_report counts its cost)
        level = level_of(DENSE_LEVEL - remaining if reverse else remaining)
        points.append(Point(row.get("round"), remaining, level, _reported(row), _final(row)))
    return Run(path=path, script=script, args=args, record=record, task=task_of(script, args, metric),
               metric=metric, higher_is_better=higher, points=points, kind=_kind(script, args),
               missing=missing)


def _progress(path: str) -> str:
    rows = _read_rows(os.path.join(path, METRICS))
    if not rows:
        return "; no epoch logged"
    last = rows[-1]
    return f"; last logged: round {last.get('round', 0)} epoch {last.get('epoch')}"


def _ranges(values: Sequence[int]) -> str:
    values = sorted(values)
    if not values:
        return "none"
    return f"{values[0]}" if len(values) == 1 else f"{values[0]}-{values[-1]}"


def _kind(script: str, args: dict) -> str:
    if "mask_dir" in args and "pruning_times" not in args and "states" not in args:
        if not args.get("mask_dir"):
            return "dense"
        if args.get("reverse_mask"):
            return "reversed"
        if not args.get("pretrained"):
            return "reinit"
        return "transfer"
    return "random" if args.get("random_prune") else "imp"


# --------------------------------------------------------------------------------------------
# Grouping: runs that differ only in their seed
# --------------------------------------------------------------------------------------------

@dataclass
class Group:
    key: str
    runs: list[Run]
    label: str = ""
    reference: "Group | None" = None  # the group a control is compared with

    @property
    def kind(self) -> str:
        return self.runs[0].kind

    @property
    def metric(self) -> str:
        return self.runs[0].metric

    @property
    def higher_is_better(self) -> bool:
        return self.runs[0].higher_is_better


class _Keys:
    """Experiment keys of runs (every flag but the seed and the flags that change nothing), with
    file flags replaced by what they point at: a ticket or checkpoint of another run becomes that
    run's key (so the tickets of seed 0 and seed 1 of one IMP experiment count as the same source)."""

    def __init__(self):
        self._memo: dict[str, str] = {}
        self.labels: dict[str, str] = {}  # key of a run folder -> its short description

    def of_folder(self, folder: str) -> str | None:
        folder = os.path.realpath(folder)
        if folder in self._memo:
            return self._memo[folder]
        record_path = os.path.join(folder, RUN_RECORD)
        if not os.path.isfile(record_path):
            return None
        self._memo[folder] = ""  # guards against a folder that points at itself
        try:
            record = _read_json(record_path, "run record")
        except UserError:
            return None
        args = record.get("args") or {}
        key = self.of(script_of(str((record.get("argv") or ["?"])[0]), args), args)
        self._memo[folder] = key
        return key

    def of(self, script: str, args: dict) -> str:
        described = {"script": script}
        for name, value in sorted(args.items()):
            if name in NOT_EXPERIMENT_FLAGS:
                continue
            if name in PATH_FLAGS and isinstance(value, str) and value:
                value = self.describe_file(value, strip_round=(name == "mask_dir"))
            described[name] = value
        return json.dumps(described, sort_keys=True, default=str)

    def describe_file(self, path: str, strip_round: bool) -> str:
        folder, name = os.path.split(os.path.normpath(path))
        if strip_round:
            match = _ROUNDED_FILE.match(name)
            if match:
                name = (match.group(1) + "XX" + match.group(3)) if match.group(1) else "X" + match.group(5)
        source = self.of_folder(folder or ".")
        if source:
            return f"{name} of run {{{source}}}"
        return os.path.join(folder, name) if strip_round else path

    def source_of(self, run: Run) -> str | None:
        """Key of the run that made this run's mask (its ticket's IMP experiment), if known."""
        mask = run.args.get("mask_dir")
        if not isinstance(mask, str) or not mask:
            return None
        return self.of_folder(os.path.dirname(os.path.normpath(mask)) or ".")


def group_runs(runs: Sequence[Run]) -> list[Group]:
    """Pool runs that differ only in their seed (and in flags that change nothing); label each
    group, and tie each control to the group it controls."""
    check_one_task(runs)
    keys = _Keys()
    groups: dict[str, Group] = {}
    for run in runs:
        run.key = keys.of(run.script, run.args)
        groups.setdefault(run.key, Group(run.key, []))
        groups[run.key].runs.append(run)
    ordered = sorted(groups.values(), key=lambda g: (_KIND_ORDER.index(g.kind), g.key))
    by_key = {group.key: group for group in ordered}
    for group in ordered:
        group.label = _base_label(group.runs[0], keys)
    _disambiguate(ordered)
    for group in ordered:
        group.reference = _reference(group, by_key, keys)
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


def _short(path: str) -> str:
    return os.path.basename(os.path.normpath(path)) if path else ""


def _base_label(run: Run, keys: _Keys) -> str:
    args = run.args
    if run.kind in ("imp", "random"):
        what = "random pruning" if run.kind == "random" else "IMP"
        detail = args.get("prune_type") or ""
        if detail == "pt_trans" or (not detail and args.get("pretrained")):
            detail = f"{detail} from {_short(args.get('pretrained') or args.get('pre_weight') or '')}".strip()
        if run.script not in ("main_imp_downstream.py",):
            detail = f"{run.script}{', ' + detail if detail else ''}"
        return f"{what} ({detail})" if detail else what
    source = keys.source_of(run)
    source_label = _label_of_key(source) if source else _short(os.path.dirname(str(args.get("mask_dir"))))
    if run.kind == "dense":
        return f"dense from {_short(args.get('pretrained')) or 'random init'}"
    if run.kind == "reversed":
        return f"reversed masks of {source_label}"
    if run.kind == "reinit":
        return f"random re-init, masks of {source_label}"
    return f"tickets of {source_label}, weights {_short(args.get('pretrained'))}"


def _label_of_key(key: str) -> str:
    """A short description of an experiment key (the source of a ticket)."""
    described = json.loads(key)
    script = described.get("script", "?")
    if described.get("random_prune"):
        what = "random pruning"
    elif "mask_dir" in described and "pruning_times" not in described:
        what = script
    else:
        what = "IMP"
    detail = described.get("prune_type") or ""
    if script not in ("main_imp_downstream.py", "main_eval_downstream.py"):
        detail = f"{script}{', ' + detail if detail else ''}"
    return f"{what} ({detail})" if detail else what


def _disambiguate(groups: Sequence[Group]) -> None:
    """Groups that would share a label get the flags that tell them apart appended."""
    by_label: dict[str, list[Group]] = {}
    for group in groups:
        by_label.setdefault(group.label, []).append(group)
    for same in by_label.values():
        if len(same) < 2:
            continue
        described = [json.loads(group.key) for group in same]
        names = sorted({name for d in described for name in d})
        differing = [name for name in names if len({json.dumps(d.get(name), sort_keys=True, default=str)
                                                     for d in described}) > 1]
        for group, d in zip(same, described):
            parts = [f"{name}={_compact(d.get(name))}" for name in differing]
            group.label += " [" + ", ".join(parts) + "]"


def _compact(value) -> str:
    if isinstance(value, str):
        match = re.search(r"run (\{.*\})$", value)
        if match:
            return value.split(" of run ")[0] + " of " + _label_of_key(match.group(1))
        return value if len(value) <= 40 else "..." + value[-37:]
    return json.dumps(value, default=str) if isinstance(value, (list, dict)) else str(value)


def _reference(group: Group, by_key: dict[str, Group], keys: _Keys) -> Group | None:
    """The group a control is compared with: the same experiment without the control's change
    (random pruning -> magnitude pruning, reversed -> not reversed), else the IMP experiment that
    made the masks (its round k trained ticket k from the rewind point)."""
    if group.kind not in ("random", "reversed", "reinit"):
        return None
    described = json.loads(group.key)
    if group.kind == "random":
        described["random_prune"] = False
    elif group.kind == "reversed":
        described["reverse_mask"] = False
    twin = by_key.get(json.dumps(described, sort_keys=True, default=str))
    if twin is not None and group.kind != "reinit":
        return twin
    source = keys.source_of(group.runs[0])
    return by_key.get(source) if source else None


# --------------------------------------------------------------------------------------------
# Aggregation, matching, controls
# --------------------------------------------------------------------------------------------

@dataclass
class LevelStats:
    level: float
    values: list[float]  # the primary metric of each seed
    finals: list[float]
    seeds: list

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


def aggregate(group: Group) -> list[LevelStats]:
    """Per level, the seeds' values (a NaN/null metric is left out of that level), densest first."""
    levels: dict[float, LevelStats] = {}
    for run in group.runs:
        for point in run.points:
            if math.isnan(point.reported):
                continue
            stats = levels.setdefault(point.level, LevelStats(point.level, [], [], []))
            stats.values.append(point.reported)
            stats.finals.append(point.final)
            stats.seeds.append(run.seed)
    return [levels[level] for level in sorted(levels, reverse=True)]


@dataclass
class Baseline:
    label: str
    mean: float
    std: float
    n: int


def choose_baseline(groups: Sequence[Group], stats: dict[str, list[LevelStats]],
                    wanted: str | None = None) -> Baseline | None:
    """The dense model every curve is judged against: the 100 % level of ``wanted`` (a group
    label), else of a dense transfer run, else of the first IMP group that has one."""
    candidates = [g for g in groups if g.label == wanted] if wanted else (
        [g for g in groups if g.kind == "dense"] + [g for g in groups if g.kind == "imp"]
        + [g for g in groups if g.kind not in ("dense", "imp")])
    if wanted and not candidates:
        raise UserError(f"--baseline '{wanted}' names no group; the groups are: "
                        + "; ".join(g.label for g in groups))
    for group in candidates:
        dense = [s for s in stats[group.label] if s.level >= DENSE_LEVEL]
        if dense:
            return Baseline(group.label, dense[0].mean, dense[0].std, dense[0].n)
    if wanted:
        raise UserError(f"--baseline group '{wanted}' has no dense (100 % remaining) level")
    return None  # no dense level anywhere: no matching verdicts


def matches(value: float, baseline: Baseline, criterion: str, higher_is_better: bool = True) -> bool:
    """Whether a mean ``value`` matches the dense model: ``within_std`` (no worse than the dense
    mean minus one dense std) or ``at_least`` (no worse than the dense mean)."""
    slack = baseline.std if criterion == "within_std" else 0.0
    if higher_is_better:
        return value >= baseline.mean - slack
    return value <= baseline.mean + slack


@dataclass
class Verdict:
    extreme: float | None  # the lowest remaining share (%) that matches, None if none below dense
    contiguous: float | None  # the lowest share down to which every level matches
    failing_above: list[float]  # levels above ``extreme`` that do not match


def matching_verdict(levels: Sequence[LevelStats], baseline: Baseline, criterion: str,
                     higher_is_better: bool = True) -> Verdict:
    """The extreme sparsity at which a curve still matches the dense model (levels below 100 %)."""
    sparse = sorted((s for s in levels if s.level < DENSE_LEVEL and not math.isnan(s.mean)),
                    key=lambda s: -s.level)
    ok = [matches(s.mean, baseline, criterion, higher_is_better) for s in sparse]
    extreme = min((s.level for s, good in zip(sparse, ok) if good), default=None)
    contiguous = None
    for s, good in zip(sparse, ok):
        if not good:
            break
        contiguous = s.level
    failing = [s.level for s, good in zip(sparse, ok) if not good and extreme is not None and s.level > extreme]
    return Verdict(extreme, contiguous, failing)


@dataclass
class Comparison:
    level: float
    reference: LevelStats
    control: LevelStats
    t: float | None
    p: float | None

    @property
    def difference(self) -> float:
        return self.reference.mean - self.control.mean


def welch(a: Sequence[float], b: Sequence[float]) -> tuple[float, float] | tuple[None, None]:
    """Welch's t-test (unequal variances); None where a side has fewer than 2 values."""
    a = [v for v in a if not math.isnan(v)]
    b = [v for v in b if not math.isnan(v)]
    if len(a) < 2 or len(b) < 2:
        return None, None
    from scipy import stats

    result = stats.ttest_ind(a, b, equal_var=False)
    return float(result.statistic), float(result.pvalue)


def compare_control(reference: Sequence[LevelStats], control: Sequence[LevelStats]) -> list[Comparison]:
    """The control against its reference at each level both measured (dense level left out)."""
    ref = {s.level: s for s in reference}
    out = []
    for stats in control:
        if stats.level in ref and stats.level < DENSE_LEVEL:
            t, p = welch(ref[stats.level].values, stats.values)
            out.append(Comparison(stats.level, ref[stats.level], stats, t, p))
    return out


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------

def fmt_level(level: float) -> str:
    return f"{level:.3g}" if level < 10 else f"{level:.4g}"


def _pm(mean_value: float, std_value: float, n: int) -> str:
    if math.isnan(mean_value):
        return "-"
    return f"{mean_value:.2f} ± {std_value:.2f} (n={n})" if n > 1 else f"{mean_value:.2f} (n=1)"


def write_levels_csv(groups: Sequence[Group], stats: dict[str, list[LevelStats]], path: str) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["group", "kind", "metric", "remaining", "sparsity", "n", "seeds", "mean", "std",
                         "final_mean", "final_std", "reference"])
        for group in groups:
            for s in stats[group.label]:
                writer.writerow([group.label, group.kind, group.metric, s.level, round(100 - s.level, 6), s.n,
                                 " ".join(str(seed) for seed in s.seeds), _csv(s.mean), _csv(s.std),
                                 _csv(s.final_mean), _csv(s.final_std),
                                 group.reference.label if group.reference else ""])


def write_runs_csv(groups: Sequence[Group], path: str) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["group", "run", "seed", "round", "remaining", "level", "reported", "final"])
        for group in groups:
            for run in group.runs:
                for p in run.points:
                    writer.writerow([group.label, run.path, run.seed, "" if p.round is None else p.round,
                                     p.remaining, p.level, _csv(p.reported), _csv(p.final)])


def _csv(value: float) -> str:
    return "" if value is None or math.isnan(value) else f"{value:.6g}"


@dataclass
class Report:
    groups: list[Group]
    stats: dict[str, list[LevelStats]]
    baseline: Baseline | None
    verdicts: dict[str, dict[str, Verdict]]
    controls: dict[str, list[Comparison]]
    notes: list[str] = field(default_factory=list)


def snap_levels(runs: Sequence[Run], tolerance: float = 0.01) -> None:
    """Make levels within ``tolerance`` (relative) of each other one level: summary rows round the
    remaining share to 4 decimals, transfer runs do not, so 0.0144 and 0.01441 are one level."""
    representative: list[float] = []
    for level in sorted({p.level for run in runs for p in run.points}, reverse=True):
        if not representative or abs(representative[-1] - level) > tolerance * representative[-1]:
            representative.append(level)
    for run in runs:
        for point in run.points:
            point.level = min(representative, key=lambda r: abs(r - point.level))


def analyse(inputs: Inputs, baseline_label: str | None = None) -> Report:
    snap_levels(inputs.runs)
    groups = group_runs(inputs.runs)
    notes = list(inputs.notes)
    for group in groups:
        seen: dict[tuple, str] = {}
        for run in group.runs:
            for point in run.points:
                other = seen.setdefault((str(run.seed), point.level), run.path)
                if other != run.path:
                    notes.append(f"group '{group.label}' holds seed {run.seed} twice at {fmt_level(point.level)} % "
                                 f"({other} and {run.path}); each counts as a sample")
    stats = {group.label: aggregate(group) for group in groups}
    baseline = choose_baseline(groups, stats, baseline_label)
    if baseline is None:
        notes.append("no run has a dense (100 % remaining) level: no matching verdicts (add the dense "
                     "runs, IMP round 0 or a ticket_00 transfer)")
        verdicts = {}
    else:
        verdicts = {g.label: {c: matching_verdict(stats[g.label], baseline, c, g.higher_is_better)
                              for c in ("within_std", "at_least")} for g in groups}
    controls = {g.label: compare_control(stats[g.reference.label], stats[g.label])
                for g in groups if g.reference is not None}
    return Report(groups, stats, baseline, verdicts, controls, notes)


def _verdict_text(verdict: Verdict) -> str:
    if verdict.extreme is None:
        return "no sparse level matches"
    text = f"{fmt_level(verdict.extreme)} % remaining ({fmt_level(100 - verdict.extreme)} % sparsity)"
    if verdict.failing_above:
        text += "; not matching at " + ", ".join(fmt_level(v) for v in verdict.failing_above) + " % above it"
    return text


def write_report(report: Report, out: str, figures: Sequence[tuple[str, str]], command: str,
                 ticket_section: Sequence[str] = ()) -> str:
    """Write ``out/levels.csv``, ``out/runs.csv`` and ``out/report.md``; returns the report's path."""
    write_levels_csv(report.groups, report.stats, os.path.join(out, "levels.csv"))
    write_runs_csv(report.groups, os.path.join(out, "runs.csv"))
    groups, stats, base = report.groups, report.stats, report.baseline
    first = groups[0].runs[0]
    metric = first.metric
    lines = [
        "# Report: " + first.task,
        "",
        f"Command: `{command}`",
        "",
        "## What was compared",
        "",
        f"{sum(len(g.runs) for g in groups)} runs in {len(groups)} groups; runs that differ only in their "
        f"seed are pooled. The metric is {_metric_text(metric)}; mean ± sample standard deviation over "
        f"seeds (n - 1 in the denominator; 0 for one seed). Remaining = share of the pruned (conv) "
        f"weights kept; a reversed mask is shown at the level of the ticket it reverses (it keeps "
        f"100 % minus that).",
        "",
        "| group | kind | seeds | levels | compared with |",
        "|---|---|---|---:|---|",
    ]
    for g in groups:
        seeds = ", ".join(str(s) for s in sorted({str(r.seed) for r in g.runs}))
        lines.append(f"| {g.label} | {_KIND_TEXT[g.kind]} | {seeds} | {len(stats[g.label])} | "
                     f"{g.reference.label if g.reference else ''} |")
    if base is not None:
        lines += ["", f"Dense baseline: the 100 % level of **{base.label}**: {_pm(base.mean, base.std, base.n)}.", ""]
    else:
        lines += ["", "No dense baseline: no run has a 100 % level.", ""]
    for title, name in figures:
        lines += [f"![{title}]({name})", ""]
    if base is not None:
        lines += _verdict_lines(report, first.higher_is_better)
    lines += _control_lines(report, first.higher_is_better)
    lines += ["## Table", "",
              "Per group and level: the metric at the best evaluation, and at the last epoch (they can part "
              "ways at extreme sparsity). Also in `levels.csv`; every run's values in `runs.csv`.", "",
              "| group | remaining (%) | n | mean ± std | final epoch: mean ± std |", "|---|---:|---:|---:|---:|"]
    for g in groups:
        for s in stats[g.label]:
            lines.append(f"| {g.label} | {fmt_level(s.level)} | {s.n} | {_pm(s.mean, s.std, s.n)} | "
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


def _verdict_lines(report: Report, higher_is_better: bool) -> list[str]:
    base = report.baseline
    lines = ["## Matching verdicts", "",
             "The most extreme sparsity at which each curve still matches the dense baseline, under the two "
             "criteria the paper uses: within one standard deviation of the dense mean "
             + (f"(≥ {base.mean - base.std:.2f}), and at least the dense mean (≥ {base.mean:.2f}). "
                if higher_is_better else
                f"(≤ {base.mean + base.std:.2f}), and at most the dense mean (≤ {base.mean:.2f}); lower is better. ")
             + "'Every level down to' is the sparsest level such that all denser levels match too.", "",
             "| group | within 1 std of dense | every level down to | ≥ dense | every level down to |",
             "|---|---|---:|---|---:|"]
    for g in report.groups:
        v1, v2 = report.verdicts[g.label]["within_std"], report.verdicts[g.label]["at_least"]
        lines.append(f"| {g.label} | {_verdict_text(v1)} | {_level_or_dash(v1.contiguous)} | "
                     f"{_verdict_text(v2)} | {_level_or_dash(v2.contiguous)} |")
    if base.n < 2:
        lines += ["", "The baseline has one seed, so its std is 0 and both criteria coincide."]
    return lines + [""]


def _control_lines(report: Report, higher_is_better: bool) -> list[str]:
    if not report.controls:
        return []
    lines = ["## Controls", "",
             "Each control against the group it controls, level by level: difference of means "
             "(reference minus control) and Welch's t-test (unequal variances, two-sided) where both "
             "sides have at least two seeds.", ""]
    for label, comparisons in report.controls.items():
        group = next(g for g in report.groups if g.label == label)
        lines += [f"### {label} vs {group.reference.label}", ""]
        if not comparisons:
            lines += ["No level measured by both.", ""]
            continue
        lines += ["| remaining (%) | reference | control | difference | t | p |", "|---:|---:|---:|---:|---:|---:|"]
        for c in comparisons:
            t = "-" if c.t is None else f"{c.t:.2f}"
            p = "-" if c.p is None else f"{c.p:.3g}"
            lines.append(f"| {fmt_level(c.level)} | {_pm(c.reference.mean, c.reference.std, c.reference.n)} | "
                         f"{_pm(c.control.mean, c.control.std, c.control.n)} | {c.difference:+.2f} | {t} | {p} |")
        tested = [c for c in comparisons if c.p is not None]
        if tested:
            better = sum(1 for c in tested if c.p < 0.05 and _better(c, higher_is_better))
            worse = sum(1 for c in tested if c.p < 0.05 and not _better(c, higher_is_better))
            lines += ["", f"At p < 0.05 the reference is better at {better} and worse at {worse} of "
                          f"{len(tested)} tested levels (not corrected for multiple comparisons)."]
        lines += [""]
    return lines


_KIND_TEXT = {"imp": "IMP", "random": "control: random pruning", "reversed": "control: reversed masks",
              "reinit": "control: random re-init", "transfer": "ticket transfer", "dense": "dense"}


def _better(comparison: Comparison, higher_is_better: bool) -> bool:
    return comparison.difference > 0 if higher_is_better else comparison.difference < 0


def _level_or_dash(level: float | None) -> str:
    return "-" if level is None else f"{fmt_level(level)} %"


def _metric_text(metric: str) -> str:
    if metric == "accuracy":
        return ("accuracy (%) at the best validation epoch (test accuracy where the task has a test "
                "split, else validation accuracy)")
    return f"{metric} at the best evaluation"


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
