"""A run's output folder: refusing to clobber another run, the run record, metrics and summaries."""

from __future__ import annotations

import glob
import json
import os
import re
import sys
import tempfile
import time

from lth.checkpoint import (TEMP_PREFIX, append_jsonl, atomic_write_text, jsonl_text, load_file, read_jsonl,
                            remove_stale_temp_files, run_record, write_json)
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
        self._pending_record: dict | None = None  # a resume's run.json entry, written once it is accepted
        self._resume_accepted = False
        self._damaged_noticed = False
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
        self.check_location()
        if resume and not self.checkpoints():
            raise UserError(f"--resume given but '{self.path}' holds no checkpoint to resume from")
        if not resume and self.holds_run():
            raise UserError(f"'{self.path}' already holds a run; pass --resume to continue it or "
                            f"choose another --save_dir")

    def check_location(self, flag: str = "--save_dir") -> None:
        """The folder can be written: it is a folder (or can become one) and the system lets us
        write there. Nothing is created: a probe file in the nearest existing folder is removed
        at once, so a refused run leaves no new folder behind."""
        path = os.path.abspath(self.path)
        if os.path.exists(path) and not os.path.isdir(path):
            raise UserError(f"{flag} '{self.path}' exists and is not a folder")
        target = path
        while not os.path.exists(target):
            target = os.path.dirname(target)
        if not os.path.isdir(target):
            raise UserError(f"{flag} '{self.path}' cannot be created: '{target}' is a file, not a folder")
        try:
            handle, probe = tempfile.mkstemp(prefix=TEMP_PREFIX + "probe-", dir=target)
            os.close(handle)
            os.remove(probe)
        except OSError as error:
            raise UserError(f"{flag} '{self.path}' cannot be written: '{target}': "
                            f"{error.strerror or error}") from None

    def start(self, args: dict, resume: bool) -> None:
        """Create the folder and write (or extend, on resume) the run record.

        On resume the entry waits until ``accept_resume`` (the checkpoint passed its checks) or
        until training starts (``flush_record``): a refused resume leaves run.json as it was.
        """
        if not self.is_main:
            return
        if resume and not self._resume_accepted:
            self._pending_record = dict(args)
            return
        self._write_record(args, resume)

    def accept_resume(self) -> None:
        """The checkpoint being resumed passed its checks: drop what interrupted writes left in the
        folder and write the pending run.json entry."""
        self._resume_accepted = True
        if not self.is_main:
            return
        removed = remove_stale_temp_files(self.path)
        if removed:
            print(f"notice: removed {len(removed)} temporary file(s) of an interrupted write from "
                  f"'{self.path}': {', '.join(removed)}", file=sys.stderr)
        self.flush_record()

    def flush_record(self) -> None:
        """Write a pending resume entry (training is about to start: every check has passed)."""
        if self.is_main and self._pending_record is not None:
            args, self._pending_record = self._pending_record, None
            self._write_record(args, True)

    def _write_record(self, args: dict, resume: bool) -> None:
        try:
            os.makedirs(self.path, exist_ok=True)
        except OSError as error:
            raise UserError(f"cannot create --save_dir '{self.path}': {error.strerror or error}") from None
        record_path = self.file(RUN_RECORD)
        record = self.record() if resume else None
        if record is not None:
            record.setdefault("resumed", []).append({**run_record(args), **self.stamp, "time": _now()})
        else:
            record = {**run_record(args), **self.stamp, "time": _now()}
            if resume and os.path.exists(record_path):
                os.replace(record_path, record_path + ".damaged")
                record["note"] = ("resumed from a checkpoint; the earlier run.json was unreadable and is "
                                  "kept as run.json.damaged")
        write_json(record, record_path)

    def record(self) -> dict | None:
        """run.json as a dict; None when absent, or unreadable (with a notice: a truncated file)."""
        path = self.file(RUN_RECORD)
        if not os.path.isfile(path):
            return None
        try:
            with open(path) as handle:
                value = json.load(handle)
        except (OSError, ValueError):
            value = None
        if not isinstance(value, dict):
            if not self._damaged_noticed:
                self._damaged_noticed = True
                print(f"notice: '{path}' is not readable JSON (truncated?): a resumed run continues from "
                      f"its checkpoint and starts a new record (the old one kept as {RUN_RECORD}.damaged)",
                      file=sys.stderr)
            return None
        return value

    def recorded_seed(self, given: int | None) -> int | None:
        """The seed a resumed run used (from its run record, or from its latest checkpoint when the
        record is unreadable), unless one is given explicitly."""
        if given is not None or not os.path.exists(self.file(RUN_RECORD)):
            return given
        record = self.record()
        if record is not None:
            return record.get("args", {}).get("seed")
        checkpoints = self.checkpoints()
        if not checkpoints:
            return None
        saved = load_file(checkpoints[max(checkpoints)], "checkpoint")
        args = saved.get("args") if isinstance(saved, dict) else None
        return args.get("seed") if isinstance(args, dict) else None

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
