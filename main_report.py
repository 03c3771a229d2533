"""Turn a folder of runs into the paper's figures, matching verdicts, controls and ticket analysis.

Reads run.json and summary.jsonl (or summary.json) of every run given (classification, detection,
segmentation), pools the seeds of each curve, judges each curve against the dense model of its own
experiment, and writes levels.csv, runs.csv, report.md and the figures into --out. Example:

    python main_report.py results/demo/runs --out results/demo/report
    python main_report.py 'imp_cifar10_s*' 'random_cifar10_s*' --out report \\
        --tickets ImageNet=imagenet_imp/ticket_07.pt MoCo=moco_imp/ticket_07.pt
"""

import os
import shlex
import sys

from lth import cli, cost_report, report, ticket_analysis
from lth.errors import UserError
from lth.plots import plot_groups
from lth.runs import RUN_RECORD, RunDir

OUTPUTS = ("report.md", "levels.csv", "runs.csv", "metric_vs_remaining.png", "final_vs_remaining.png",
           cost_report.TABLE, cost_report.FIGURE)
# More sections of report.md (after the controls): callables (results, out folder) -> markdown lines,
# which may write their own tables and figures into the out folder.
EXTRA_SECTIONS: list = []


def get_args_parser():
    parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="*", metavar="RUN_DIR",
                        help="run folders (the --save_dir of any IMP or transfer script of this toolkit), "
                             "folders holding runs below them, or globs")
    parser.add_argument("--out", required=True,
                        help="folder for report.md, levels.csv, runs.csv and the figures; an earlier report "
                             "there is replaced, any other content is refused")
    parser.add_argument("--baseline", default=None, metavar="GROUP",
                        help="judge every curve against the 100 %% level of this group (its label in the "
                             "report); default: each curve against the dense model of its own experiment")
    parser.add_argument("--title", default=None, help="title of the figures (default: the task)")
    parser.add_argument("--cost_reference", default=None, metavar="METHOD",
                        help="label of the method whose training cost the cost section's fractions are of "
                             "(default: the first magnitude IMP without early-bird or LRR)")
    group = parser.add_argument_group("ticket analysis")
    group.add_argument("--tickets", nargs="+", default=[], metavar="T",
                       help="ticket files, globs or run folders (all their ticket_XX.pt), each optionally "
                            "LABEL=PATH: per-layer shares, fully pruned kernels per block, mask overlap, "
                            "FLOPs and parameters, in OUT/tickets/")
    group.add_argument("--arch", default=None,
                       help="architecture of the tickets for FLOPs (default: from the ticket's metadata)")
    group.add_argument("--input_size", type=int, default=None,
                       help="input height and width for FLOPs (default: the ticket's data set: 8 digits, "
                            "28 fmnist, 32 CIFAR/SVHN, 224 otherwise)")
    group.add_argument("--stem", default=None, choices=["cifar", "imagenet"],
                       help="ResNet stem for FLOPs (default: cifar for the small data sets, else imagenet)")
    group.add_argument("--num_classes", type=int, default=None,
                       help="classifier outputs for FLOPs (default: the ticket's data set's)")
    return parser


def check_out(out: str) -> None:
    """--out may be new, empty, or hold an earlier report; nothing else is overwritten."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise UserError(f"--out '{out}' exists and is not a folder")
    RunDir(out).check_location("--out")
    if os.path.isdir(out) and os.listdir(out) and not os.path.isfile(os.path.join(out, "report.md")):
        raise UserError(f"--out '{out}' holds other files and no earlier report.md; choose another folder")
    if os.path.isfile(os.path.join(out, RUN_RECORD)):
        raise UserError(f"--out '{out}' is a run folder; choose another folder")


def main(args) -> str:
    if not args.runs and not args.tickets:
        raise UserError("give run folders to report on, or --tickets to analyse")
    check_out(args.out)
    inputs = report.read_runs(args.runs) if args.runs else None
    tickets = []
    if args.tickets:
        tickets = ticket_analysis.load_tickets(args.tickets)
    results = report.analyse(inputs, args.baseline) if inputs else None
    os.makedirs(args.out, exist_ok=True)
    ticket_lines = []
    if tickets:
        ticket_lines = ticket_analysis.analyse_tickets(
            tickets, os.path.join(args.out, "tickets"), arch=args.arch, input_size=args.input_size,
            stem=args.stem, num_classes=args.num_classes)
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv) if sys.argv else "main_report.py"
    if results is None:
        path = os.path.join(args.out, "report.md")
        with open(path, "w") as handle:
            handle.write("\n".join(["# Ticket analysis", "", f"Command: `{command}`", "", *ticket_lines]))
    else:
        figures = _figures(results, args.out, args.title)
        cost = cost_report.write([run for group in results.groups for run in group.runs], args.out,
                                 args.title or results.groups[0].runs[0].task, args.cost_reference)
        extra = cost + [line for section in EXTRA_SECTIONS for line in section(results, args.out)]
        path = report.write_report(results, args.out, figures, command, ticket_lines, extra)
        for note in results.notes:
            print(f"notice: {note}", file=sys.stderr)
        _print_summary(results)
    print(f"report: {path}")
    return path


def _figures(results: report.Report, out: str, title: str | None) -> list[tuple[str, str]]:
    """The paper's figure (Fig. 3 for classification, Fig. 4 for detection and segmentation): every
    curve against remaining weights with the dense model(s) its verdict uses, at the best evaluation
    (or the evaluation the runs' summary rows name) and at the last epoch."""
    first = results.groups[0].runs[0]
    title = title or first.task
    unit = report.metric_label(first.metric)
    dense = [(ref.label, ref.mean, ref.std, ref.n) for ref in results.dense_refs()]
    dense_of = {g.label: g.dense.label for g in results.groups if g.dense is not None}
    kinds = {g.label: g.kind for g in results.groups}
    figures = []
    when = report.reported_when(run for group in results.groups for run in group.runs)
    for key, name, what in (("reported", "metric_vs_remaining.png", when),
                            ("final", "final_vs_remaining.png", "at the last epoch")):
        curves = {}
        for group in results.groups:
            if group.kind == "dense":
                continue  # drawn as a dense model
            curves[group.label] = [(s.level, s.mean if key == "reported" else s.final_mean,
                                    s.std if key == "reported" else s.final_std)
                                   for s in results.stats[group.label]]
        if not curves:
            continue
        plot_groups(curves, os.path.join(out, name), dense=dense if key == "reported" else (),
                    dense_of=dense_of, kinds=kinds, title=title, ylabel=f"{unit} {what}")
        figures.append((f"{unit} {what} against remaining weights, mean ± std over seeds", name))
    return figures


def _print_summary(results: report.Report) -> None:
    for group in results.groups:
        if group.label not in results.verdicts:
            continue
        dense = group.dense
        verdicts = results.verdicts[group.label]
        print(f"{group.label}: against {dense.label} {dense.mean:.2f} ± {dense.std:.2f} (n={dense.n}): "
              f"within 1 std down to {_level(verdicts['within_std'].extreme)}, >= dense down to "
              f"{_level(verdicts['at_least'].extreme)}, not significantly worse down to "
              f"{_level(verdicts['welch'].extreme)}")
    for label, comparisons in results.controls.items():
        reference = next(g for g in results.groups if g.label == label).reference.label
        for c in comparisons:
            test = f", Welch t {c.t:.2f}, p {c.p:.3g}" if c.p is not None else ""
            print(f"  {report.fmt_level(c.level)} % remaining: {reference} {c.reference.mean:.2f} ± "
                  f"{c.reference.std:.2f} vs {label} {c.control.mean:.2f} ± {c.control.std:.2f}{test}")


def _level(level) -> str:
    return "no sparse level" if level is None else f"{report.fmt_level(level)} % remaining"


if __name__ == "__main__":
    cli.run_main(main, get_args_parser())
