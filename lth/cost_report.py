"""The report's cost section: the metric against cumulative training cost per method, and the cheapest matching ticket.

A *method* is every run that differs only in its seed and in ``--early_bird_sparsity`` (one-shot
early-bird runs at several sparsities make one curve). Each summary row is a point: its level
(remaining share), its metric and the training cost the method needed to reach that trained ticket
(``cost_*`` columns, lth.cost): the run's cumulative cost, except for random pruning, whose masks do
not depend on training, so that one training at the level (the row's ``round_*`` cost) gives the same
ticket. A dense row of a round that early-bird stopped is a search, not a dense model: it costs, and
is left out of the points. Seeds are pooled per level (mean and sample std of metric and cost).
"""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass, field
from typing import Callable, Sequence

from lth import report as run_report
from lth.errors import UserError
from lth.plots import plt  # Agg backend set there

CRITERIA = run_report.RULES  # within one dense std, at least the dense mean (the paper's), one-sided Welch
CRITERION_TEXT = run_report.RULE_TEXT
# Flags that do not make another method: the run's place and speed (report.NOT_EXPERIMENT_FLAGS),
# the seed, and the one-shot early-bird sparsity (a point on the method's curve).
_SAME_METHOD = frozenset({"early_bird_sparsity"})
FIGURE = "metric_vs_cost.png"
TABLE = "cost.csv"


@dataclass
class CostPoint:
    """One trained ticket of one run: its level, metric and what it cost."""
    level: float
    metric: float
    epochs: float  # epochs, or iterations for a task counted in iterations
    images: float
    seconds: float
    seed: object = None


@dataclass
class LevelCost:
    """A method's level pooled over seeds."""
    level: float
    points: list[CostPoint] = field(default_factory=list)

    def mean(self, name: str) -> float:
        return run_report.mean([getattr(p, name) for p in self.points])

    def std(self, name: str) -> float:
        return run_report.sample_std([getattr(p, name) for p in self.points])

    @property
    def n(self) -> int:
        return len(self.points)


@dataclass
class Method:
    key: str
    label: str
    runs: list
    levels: list[LevelCost]
    dense: run_report.DenseRef | None = None
    dense_source: str = ""


@dataclass
class CostSection:
    methods: list[Method]
    reference: Method | None
    unit: str  # "epochs" or "iterations"
    higher_is_better: bool
    metric: str
    notes: list[str]


def method_key(run) -> str:
    # The sparsity of a one-shot search is not part of the method, but searching at all is: an IMP run and
    # a search with as many rounds are two methods.
    described = {"script": run.script, "one_shot_search": run.args.get("early_bird_sparsity") is not None}
    for name, value in sorted(run.args.items()):
        if name in run_report.NOT_EXPERIMENT_FLAGS or name in _SAME_METHOD:
            continue
        described[name] = value
    return json.dumps(described, sort_keys=True, default=str)


def method_label(args: dict) -> str:
    prune_type = args.get("prune_type") or ""
    if args.get("random_prune"):
        base = "random pruning" + (f" ({prune_type})" if prune_type else "")
    elif prune_type == "lrr":
        base = "LRR (learning-rate rewinding)"
    else:
        base = "IMP" + (f" ({prune_type})" if prune_type else "")
    if args.get("early_bird_sparsity") is not None:
        base = f"early-bird one-shot, {base}"
        if args.get("early_bird"):
            base += ", early-bird every round"
    elif args.get("early_bird"):
        base = f"early-bird every round, {base}"
    return base


def _needed(run, row: dict, rows_by_round: dict) -> tuple[float, float, float]:
    """The cost a run needed to reach the trained ticket of ``row``: cumulative, except for random
    pruning (the masks are free: its own round, plus round 0 where the rewind point is trained)."""
    unit = "cost_itrs" if "cost_itrs" in row else "cost_epochs"
    if run.args.get("random_prune"):
        own = (row.get("trained_itrs", row.get("trained_epochs", 0)) or 0,
               row.get("round_images", 0) or 0, row.get("round_seconds", 0.0) or 0.0)
        if run.args.get("prune_type") in ("pt", "rewind_lt") and row.get("round", 0) > 0 and 0 in rows_by_round:
            first = rows_by_round[0]
            own = (own[0] + (first.get("trained_itrs", first.get("trained_epochs", 0)) or 0),
                   own[1] + (first.get("round_images", 0) or 0), own[2] + (first.get("round_seconds", 0.0) or 0.0))
        return tuple(float(v) for v in own)
    return float(row.get(unit) or 0), float(row.get("cost_images") or 0), float(row.get("cost_seconds") or 0.0)


def _points(run) -> tuple[list[CostPoint], list[CostPoint], str | None]:
    """The sparse points of a run, its fully trained dense points, and the unit of its cost columns
    ("epochs", "iterations"; None when it has none: written before cost was recorded)."""
    rows, _ = run_report._summary_rows(run.path)
    by_round = {}
    for row in rows:  # a resumed run may repeat a round: the last line wins
        by_round[run_report._round_number(row.get("round"))] = row
    level_of = {p.round if p.round is not None else 0: p.level for p in run.points}
    points, dense, unit = [], [], None
    for index, row in sorted(by_round.items()):
        if index not in level_of:
            continue
        if "cost_itrs" in row or "cost_epochs" in row:
            unit = "iterations" if "cost_itrs" in row else "epochs"
        epochs, images, seconds = _needed(run, row, by_round)
        point = CostPoint(level_of[index], run_report._reported(row), epochs, images, seconds, run.seed)
        if math.isnan(point.metric):
            continue
        searched = bool(row.get("early_stopped"))
        if point.level >= run_report.DENSE_LEVEL:
            if not searched:
                dense.append(point)
            continue
        points.append(point)
    return points, dense, unit


def analyse(runs: Sequence, reference_label: str | None = None) -> CostSection:
    """Pool every run's points per method and level; judge each level against its dense model."""
    notes: list[str] = []
    by_key: dict[str, list] = {}
    for run in runs:
        by_key.setdefault(method_key(run), []).append(run)
    methods, dense_points, without_cost, units = [], {}, [], set()
    for key, members in by_key.items():
        levels: dict[float, LevelCost] = {}
        dense: list[CostPoint] = []
        for run in members:
            points, run_dense, unit = _points(run)
            if unit is None:
                without_cost.append(run.path)
                continue
            units.add(unit)
            dense.extend(run_dense)
            for point in points:
                levels.setdefault(point.level, LevelCost(point.level)).points.append(point)
        if not levels and not dense:
            continue
        label = method_label(members[0].args)
        method = Method(key, label, members, [levels[k] for k in sorted(levels, reverse=True)])
        methods.append(method)
        dense_points[key] = dense
    _disambiguate(methods)
    if without_cost:
        notes.append(f"{len(without_cost)} run(s) have no cost columns (written before cost was recorded), "
                     f"e.g. {without_cost[0]}: left out of the cost section")
    reference = _reference(methods, reference_label)
    for method in methods:
        own = dense_points[method.key]
        source = method if own else reference
        points = own or (dense_points[reference.key] if reference is not None else [])
        if points:
            stats = run_report.LevelStats(run_report.DENSE_LEVEL, [p.metric for p in points], [], [p.seed for p in points])
            method.dense_source = "its own round 0" if own else f"the dense model of '{reference.label}'"
            method.dense = run_report.DenseRef(source.label, stats, method.dense_source)
    first = runs[0] if runs else None
    if len(units) > 1:
        notes.append("some runs count their cost in epochs, others in iterations: the axis shows each in its own")
    return CostSection(methods, reference, "iterations" if units == {"iterations"} else "epochs",
                       first.higher_is_better if first else True, first.metric if first else "metric", notes)


def _reference(methods: Sequence[Method], label: str | None) -> Method | None:
    """The method every cost is a fraction of: ``label``, else the first magnitude IMP without
    early-bird or LRR, else the first method."""
    if label:
        for method in methods:
            if method.label == label:
                return method
        raise UserError(f"--cost_reference '{label}' names no method; the methods are: "
                                   + "; ".join(m.label for m in methods))
    for method in methods:
        args = method.runs[0].args
        if not args.get("random_prune") and args.get("prune_type") != "lrr" and not args.get("early_bird") \
                and args.get("early_bird_sparsity") is None:
            return method
    return methods[0] if methods else None


def _disambiguate(methods: Sequence[Method]) -> None:
    by_label: dict[str, list[Method]] = {}
    for method in methods:
        by_label.setdefault(method.label, []).append(method)
    for same in by_label.values():
        if len(same) < 2:
            continue
        described = [json.loads(m.key) for m in same]
        names = sorted({name for d in described for name in d})
        differing = [n for n in names if len({json.dumps(d.get(n), sort_keys=True, default=str) for d in described}) > 1]
        for method, d in zip(same, described):
            method.label += " [" + ", ".join(f"{n}={d.get(n)}" for n in differing) + "]"


def matches(section: CostSection, method: Method, level: LevelCost, criterion: str) -> bool | None:
    """Whether the level matches the method's dense model under ``criterion`` (one of the report's
    rules, judged by ``report.test_against_dense``); None: no dense model, or a rule that cannot say
    (Welch with one seed)."""
    if method.dense is None:
        return None
    stats = run_report.LevelStats(level.level, [p.metric for p in level.points], [], [p.seed for p in level.points])
    return run_report.test_against_dense(stats, method.dense, section.higher_is_better).ok[criterion]


def _at(method: Method, level: float, tolerance: float = 0.01) -> LevelCost | None:
    for stats in method.levels:
        if abs(stats.level - level) <= tolerance * level:
            return stats
    return None


def cheapest(section: CostSection, criterion: str) -> tuple[Method, LevelCost] | None:
    """The matching ticket of least mean training samples (ties: the sparser), over all methods."""
    found = [(method, stats) for method in section.methods for stats in method.levels
             if matches(section, method, stats, criterion)]
    if not found:
        return None
    return min(found, key=lambda item: (item[1].mean("images"), item[1].level))


def fraction(section: CostSection, method: Method, stats: LevelCost) -> float | None:
    """The method's mean samples for this ticket over the reference's at the same level."""
    if section.reference is None:
        return None
    theirs = _at(section.reference, stats.level)
    if theirs is None or not theirs.mean("images"):
        return None
    return stats.mean("images") / theirs.mean("images")


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------

def _pm(stats: LevelCost, name: str, digits: int = 1) -> str:
    mean, std = stats.mean(name), stats.std(name)
    if math.isnan(mean):
        return "-"
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if stats.n > 1 else f"{mean:.{digits}f}"


def write_table(section: CostSection, path: str) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["method", "remaining", "n", "seeds", "metric_mean", "metric_std", f"{section.unit}_mean",
                         f"{section.unit}_std", "images_mean", "images_std", "seconds_mean", "seconds_std",
                         *(f"matches_{c}" for c in CRITERIA), "fraction_of_reference_images", "dense",
                         "dense_mean", "dense_std", "dense_n"])
        for method in section.methods:
            for s in method.levels:
                share = fraction(section, method, s)
                writer.writerow([method.label, s.level, s.n, " ".join(str(p.seed) for p in s.points),
                                 *(_csv(v) for v in (s.mean("metric"), s.std("metric"), s.mean("epochs"),
                                                     s.std("epochs"), s.mean("images"), s.std("images"),
                                                     s.mean("seconds"), s.std("seconds"))),
                                 *(("" if m is None else str(m).lower()) for m in
                                   (matches(section, method, s, c) for c in CRITERIA)),
                                 "" if share is None else f"{share:.4g}",
                                 *((method.dense.label, _csv(method.dense.mean), _csv(method.dense.std),
                                    method.dense.n) if method.dense else ("", "", "", ""))])


def _csv(value: float) -> str:
    return "" if value is None or math.isnan(value) else f"{value:.6g}"


def plot(section: CostSection, path: str, title: str = "") -> None:
    """Metric against the training cost each ticket needed, one line per method (mean ± std over
    seeds in both directions), each point labelled with its remaining share."""
    fig, ax = plt.subplots(figsize=(7.2, 4.6))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, method in enumerate(section.methods):
        levels = sorted(method.levels, key=lambda s: s.mean("epochs"))
        if not levels:
            continue
        colour = colours[index % len(colours)]
        xs, ys = [s.mean("epochs") for s in levels], [s.mean("metric") for s in levels]
        ax.errorbar(xs, ys, xerr=[s.std("epochs") for s in levels], yerr=[s.std("metric") for s in levels],
                    marker="o", markersize=3, color=colour, capsize=2, label=method.label)
        for s, x, y in zip(levels, xs, ys):
            ax.annotate(f"{run_report.fmt_level(s.level)}%", (x, y), fontsize=6, color=colour,
                        textcoords="offset points", xytext=(3, 3))
    dense = section.reference.dense if section.reference is not None else None
    if dense is not None:
        ax.axhline(dense.mean, color="black", linestyle="--", linewidth=1, label=f"dense: {dense.label}")
        if dense.std > 0:
            ax.axhspan(dense.mean - dense.std, dense.mean + dense.std, color="black", alpha=0.08, linewidth=0)
    ax.set_xlabel(f"training {section.unit} needed for the ticket (cumulative over rounds)")
    ax.set_ylabel(run_report.metric_label(section.metric))
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


_SHORT = {"within_std": "within 1 std", "at_least": "≥ dense", "welch": "Welch"}


def section_lines(section: CostSection, figure: str | None) -> list[str]:
    """The report.md section: the figure, the cheapest matching ticket per criterion, the table."""
    unit = section.unit
    lines = ["## Cost: the metric against training cost", "",
             f"Each point is a trained ticket; its cost is the training the method needed to reach it "
             f"({unit} and samples seen, cumulative over the rounds before it; wall seconds as measured, "
             f"on the machines of the runs). Random pruning's masks do not depend on training, so its cost is "
             f"one training at that sparsity. Runs that differ only in their seed or in "
             f"`--early_bird_sparsity` make one method; mean ± sample std over seeds. Fractions are of the "
             f"samples **{section.reference.label if section.reference else '-'}** needed at the same sparsity. "
             f"Every number is in `{TABLE}`.", ""]
    if figure:
        lines += [f"![metric against training cost]({figure})", ""]
    for criterion in CRITERIA:
        best = cheapest(section, criterion)
        if best is None:
            lines.append(f"- Cheapest ticket {CRITERION_TEXT[criterion]}: none matches (or none can be judged).")
            continue
        method, stats = best
        share = fraction(section, method, stats)
        share_text = f", {share:.0%} of the reference's cost there" if share is not None else ""
        lines.append(f"- Cheapest ticket {CRITERION_TEXT[criterion]}: **{method.label}** at "
                     f"{run_report.fmt_level(stats.level)} % remaining: {stats.mean('epochs'):.1f} {unit}, "
                     f"{stats.mean('images'):.0f} samples, {stats.mean('seconds'):.1f} s (n={stats.n}){share_text}.")
    lines += ["", f"| method | remaining (%) | n | metric | {unit} | samples | seconds | "
                  + " | ".join(_SHORT[c] for c in CRITERIA) + " | fraction of reference |",
              "|---|---:|---:|---:|---:|---:|---:|" + "---|" * len(CRITERIA) + "---:|"]
    for method in section.methods:
        for s in method.levels:
            share = fraction(section, method, s)
            verdicts = ["-" if m is None else ("yes" if m else "no") for m in (matches(section, method, s, c)
                                                                               for c in CRITERIA)]
            lines.append(f"| {method.label} | {run_report.fmt_level(s.level)} | {s.n} | {_pm(s, 'metric', 2)} | "
                         f"{_pm(s, 'epochs')} | {_pm(s, 'images', 0)} | {_pm(s, 'seconds')} | "
                         + " | ".join(verdicts) + f" | {'-' if share is None else f'{share:.2f}'} |")
    dense_lines = [f"- {m.label}: judged against {m.dense_source} ({m.dense.mean:.2f} ± {m.dense.std:.2f}, "
                   f"n={m.dense.n})" for m in section.methods if m.dense is not None]
    missing = [m.label for m in section.methods if m.dense is None]
    lines += ["", "Dense models:", ""] + dense_lines
    if missing:
        lines.append(f"- no dense model (no verdict): {', '.join(missing)}")
    lines += [f"- {note}" for note in section.notes]
    return lines + [""]


def write(runs: Sequence, out: str, title: str = "", reference_label: str | None = None,
          log: Callable[[str], None] = print) -> list[str]:
    """Analyse ``runs`` and write ``out/cost.csv`` and ``out/metric_vs_cost.png``; returns the report lines."""
    section = analyse(runs, reference_label)
    if not section.methods:
        return ["## Cost", "", "No run records its training cost (runs written before cost columns).", ""]
    write_table(section, os.path.join(out, TABLE))
    plot(section, os.path.join(out, FIGURE), title)
    for criterion in CRITERIA:
        best = cheapest(section, criterion)
        if best:
            log(f"cheapest ticket {CRITERION_TEXT[criterion]}: {best[0].label} at "
                f"{run_report.fmt_level(best[1].level)} % remaining ({best[1].mean('epochs'):.1f} {section.unit})")
    return section_lines(section, FIGURE)
