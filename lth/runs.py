"""A run's output folder: refusing to clobber another run, the run record, metrics and summaries."""

from __future__ import annotations

import glob
import json
import os
import re
import time

from lth.checkpoint import append_jsonl, atomic_write_text, jsonl_text, read_jsonl, run_record, write_json
from lth.errors import UserError

# The names of a run's files, for every writer and reader (scripts, report, demos).
RUN_RECORD = "run.json"
METRICS = "metrics.jsonl"  # one line per evaluation (or trained epoch)
SUMMARY = "summary.jsonl"  # one line per finished round
ONE_OFF_SUMMARY = "summary.json"  # the one row of a single training (main_eval_downstream/visda)
TICKET_GLOB = "ticket_*.pt"
_CHECKPOINT_RE = re.compile(r"^(\d*)checkpoint\.pth\.tar$")


class RunDir:
    """The ``--save_dir`` of one run; only rank 0 writes to it."""

    def __init__(self, path: str, is_main: bool = True):
        if not path:
            raise UserError("--save_dir is required: the folder where this run writes its results")
        self.path = path
        self.is_main = is_main
        # Facts of the run written into run.json and into every summary row that lacks them
        # (the session sets the precision that trains and the one that evaluates).
        self.stamp: dict = {}

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    def checkpoints(self) -> dict[int, str]:
        """``{round: path}`` of the resumable checkpoints present (``""`` prefix counts as round 0)."""
        found = {}
        if os.path.isdir(self.path):
            for name in os.listdir(self.path):
                match = _CHECKPOINT_RE.match(name)
                if match:
                    found[int(match.group(1) or 0)] = os.path.join(self.path, name)
        return found

    def holds_run(self) -> bool:
        """True once a run has results here. A start that died before its first checkpoint or log
        line (only ``run.json`` written) holds nothing to protect, so the folder can be reused."""
        return bool(self.checkpoints()) or bool(self.metrics())

    def check(self, resume: bool) -> None:
        """Refuse to start over another run, or to resume where there is nothing to resume."""
        if resume and not self.checkpoints():
            raise UserError(f"--resume given but '{self.path}' holds no checkpoint to resume from")
        if not resume and self.holds_run():
            raise UserError(f"'{self.path}' already holds a run; pass --resume to continue it or "
                            f"choose another --save_dir")
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise UserError(f"--save_dir '{self.path}' exists and is not a folder")

    def start(self, args: dict, resume: bool) -> None:
        """Create the folder and write (or extend, on resume) the run record."""
        if not self.is_main:
            return
        os.makedirs(self.path, exist_ok=True)
        record_path = self.file(RUN_RECORD)
        if resume and os.path.exists(record_path):
            with open(record_path) as handle:
                record = json.load(handle)
            record.setdefault("resumed", []).append({**run_record(args), **self.stamp, "time": _now()})
        else:
            record = {**run_record(args), **self.stamp, "time": _now()}
        write_json(record, record_path)

    def recorded_seed(self, given: int | None) -> int | None:
        """The seed a resumed run used (from its run record), unless one is given explicitly."""
        if given is not None or not os.path.exists(self.file(RUN_RECORD)):
            return given
        with open(self.file(RUN_RECORD)) as handle:
            return json.load(handle).get("args", {}).get("seed")

    def log_epoch(self, row: dict) -> None:
        if self.is_main:
            append_jsonl(row, self.file(METRICS))

    def log_round(self, row: dict) -> None:
        if self.is_main:
            append_jsonl({**row, **{key: value for key, value in self.stamp.items() if key not in row}},
                         self.file(SUMMARY))

    def metrics(self) -> list[dict]:
        return read_jsonl(self.file(METRICS))

    def summary(self) -> list[dict]:
        return read_jsonl(self.file(SUMMARY))

    def rewind_logs(self, round_index: int, next_epoch: int, key: str = "epoch") -> None:
        """Drop log lines written after the checkpoint being resumed (a kill between the two):
        those of later rounds and those of this round at ``key`` >= ``next_epoch``."""
        if not self.is_main:
            return
        keep = [row for row in self.metrics()
                if (row.get("round", 0), row.get(key, -1)) < (round_index, next_epoch)]
        _rewrite_jsonl(keep, self.file(METRICS))
        keep = [row for row in self.summary() if row.get("round", 0) < round_index]
        _rewrite_jsonl(keep, self.file(SUMMARY))

    def remove_stale(self, pattern: str) -> None:
        for path in glob.glob(self.file(pattern)):
            os.remove(path)


def ticket_name(round_index: int) -> str:
    """The ticket file of a round: its masks, the ones round ``round_index`` trains with."""
    return f"ticket_{round_index:02d}.pt"


def _rewrite_jsonl(rows: list[dict], path: str) -> None:
    atomic_write_text(jsonl_text(rows), path)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
