"""Sweeps as lists of independent jobs: make a list, run one job (a cluster array task) or all, skip finished work, resume started work."""

from __future__ import annotations

import datetime
import glob
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from typing import Iterable, Sequence

from lth.errors import UserError
from lth.runs import ONE_OFF_SUMMARY, RUN_RECORD, SUMMARY

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN, REPORT = "train", "report"


@dataclass
class Job:
    """One unit of a sweep: one seed of one curve (IMP rounds depend on each other) or one level of
    a one-shot method. ``type`` says how to tell it finished and how to continue it:

    - ``rounds``: writes one summary.jsonl row per round into ``save_dir``: done with ``rounds`` rows;
      a checkpoint there means started: ``--resume`` is added.
    - ``once``: one training into ``save_dir``: done with summary.json (or a summary.jsonl row).
    - ``det_imp``: Detection/train_imp.py rounds ``first``..``last`` in ``save_dir``: done when
      backbone_imp{last+1}.pth exists; otherwise it starts at the first unfinished round.
    - ``det_level``: train_random.py / train_transfer.py level ``level``: its run is ``save_dir/model{level}``.
    - ``det_eval``: eval.py of round ``level``: done when eval_{level}checkpoint/eval.json exists.
    - ``seg_imp``: a segmentation IMP sweep (all rounds in one resumable command, round k in EXP_k):
      done when seg_backbone_imp{rounds}.pth exists; always given ``--resume`` (it skips finished rounds).
    - ``seg_once``: a segmentation transfer run ``save_dir/exp``: done when save_dir/summary.jsonl has its row.
    - ``report``: main_report.py over the ``inputs`` that exist when it runs (always runs).
    """
    name: str
    type: str
    command: list[str]  # the command line, without the flags the state adds (--resume, --imp_num)
    cwd: str
    save_dir: str = ""
    rounds: int = 0
    first: int = 0
    last: int = 0
    level: int = 0
    exp: str = ""
    needs: list[str] = field(default_factory=list)  # files that must exist first (made by other jobs)
    inputs: list[str] = field(default_factory=list)  # report: the run folders or globs it reads
    env: dict = field(default_factory=dict)
    stage: str = TRAIN

    def path(self, *parts: str) -> str:
        return os.path.join(self.cwd, self.save_dir, *parts)


# --------------------------------------------------------------------------------------------
# State of a job
# --------------------------------------------------------------------------------------------

def _rows(path: str) -> list[dict]:
    rows = []
    if os.path.isfile(path):
        with open(path) as handle:
            for line in handle:
                try:
                    row = json.loads(line)
                except ValueError:
                    continue  # a half-written last line
                if isinstance(row, dict):
                    rows.append(row)
    return rows


def _rounds_logged(path: str) -> set[int]:
    return {int(row.get("round", 0)) for row in _rows(path) if isinstance(row.get("round", 0), int)}


def _has_checkpoint(folder: str) -> bool:
    return bool(glob.glob(os.path.join(glob.escape(folder), "*checkpoint.pth.tar")))


def is_done(job: Job) -> bool:
    if job.type == "rounds":
        return set(range(job.rounds)) <= _rounds_logged(job.path(SUMMARY))
    if job.type == "once":
        return os.path.isfile(job.path(ONE_OFF_SUMMARY)) or bool(_rows(job.path(SUMMARY)))
    if job.type == "det_imp":
        return os.path.isfile(job.path(f"backbone_imp{job.last + 1}.pth")) and \
            set(range(job.first, job.last + 1)) <= _rounds_logged(job.path(SUMMARY))
    if job.type == "det_level":
        return bool(_rows(job.path(f"model{job.level}", SUMMARY)))
    if job.type == "det_eval":
        return os.path.isfile(job.path(f"eval_{job.level}checkpoint", "eval.json"))
    if job.type == "seg_imp":
        return os.path.isfile(job.path(f"seg_backbone_imp{job.rounds}.pth")) and \
            set(range(job.rounds)) <= {int(r.get("round", -1)) for r in _rows(job.path(SUMMARY))
                                       if r.get("kind") == "imp"}
    if job.type == "seg_once":
        return any(row.get("exp") == job.exp for row in _rows(job.path(SUMMARY)))
    if job.type == "report":
        return False
    raise UserError(f"job '{job.name}' has an unknown type '{job.type}'")


def is_started(job: Job) -> bool:
    if job.type in ("rounds", "once"):
        return _has_checkpoint(job.path())
    if job.type == "det_imp":
        return _has_checkpoint(job.path())
    if job.type == "det_level":
        return _has_checkpoint(job.path(f"model{job.level}"))
    if job.type == "seg_imp":
        return os.path.isfile(job.path("seg_backbone_imp0.pth"))
    if job.type == "seg_once":
        return bool(glob.glob(os.path.join(glob.escape(job.path(job.exp)), "latest_*.pth")))
    return False


def status(job: Job) -> str:
    if job.stage == REPORT:
        return "report"
    return "done" if is_done(job) else ("started" if is_started(job) else "todo")


def command_now(job: Job) -> list[str]:
    """The job's command for the state its files are in: ``--resume`` for started work, and for
    detection IMP the first round not finished yet (a finished round is never run again: its
    --resume would rewind the logs to it)."""
    command = list(job.command)
    if job.type == "det_imp":
        first = next(r for r in range(job.first, job.last + 1)
                     if not os.path.isfile(job.path(f"backbone_imp{r + 1}.pth")))
        command += ["--imp_num", str(first), "--rounds", str(job.last - first + 1)]
        if any(os.path.isfile(job.path(f"{r}checkpoint.pth.tar")) for r in range(first, job.last + 1)):
            command.append("--resume")
        return command
    if job.type == "seg_imp":
        return command + ["--resume"]  # a fresh folder starts; a started one continues
    if job.type == "report":
        inputs = [p for pattern in job.inputs
                  for p in (sorted(glob.glob(os.path.join(job.cwd, pattern))) if glob.has_magic(pattern)
                            else [os.path.join(job.cwd, pattern)])
                  if glob.glob(os.path.join(glob.escape(p), "**", RUN_RECORD), recursive=True)]
        return command[:2] + [_shown(p, job.cwd) for p in inputs] + command[2:] if inputs else []
    if is_started(job):
        command.append("--resume")
    return command


def _shown(path: str, cwd: str) -> str:
    """``path`` relative to ``cwd`` when it lies below it, else absolute."""
    relative = os.path.relpath(path, cwd)
    return path if relative.startswith("..") else relative


# --------------------------------------------------------------------------------------------
# Job lists on disk
# --------------------------------------------------------------------------------------------

def write_jobs(jobs: Sequence[Job], path: str) -> None:
    """The job list as strict JSON lines (written atomically; an earlier list is replaced)."""
    names = [job.name for job in jobs]
    if len(set(names)) != len(names):
        raise UserError("two jobs of the sweep have the same name")
    for name in names:  # a job's name is the name of its log and lock files
        if not re.fullmatch(r"[A-Za-z0-9_.+-]+", name):
            raise UserError(f"job name '{name}' may hold only letters, digits and _ . + -")
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)  # not lth.checkpoint's: no torch import here
    with os.fdopen(fd, "w") as handle:
        handle.writelines(json.dumps(asdict(job), allow_nan=False) + "\n" for job in jobs)
    os.replace(tmp, path)


def read_jobs(path: str) -> list[Job]:
    if not os.path.isfile(path):
        raise UserError(f"job list '{path}' does not exist (make it with main_sweep.py make ...)")
    jobs = []
    with open(path) as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                jobs.append(Job(**json.loads(line)))
            except (ValueError, TypeError) as error:
                raise UserError(f"'{path}' line {number} is not a job: {str(error).splitlines()[0]}") from None
    return jobs


def train_jobs(jobs: Iterable[Job]) -> list[Job]:
    return [job for job in jobs if job.stage == TRAIN]


def _side_folder(jobs_path: str, what: str) -> str:
    base = os.path.splitext(os.path.abspath(jobs_path))[0]
    return f"{base}.{what}"


# --------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------

class Lock:
    """An exclusive lock file per job (O_EXCL, so it works across machines on a shared file system);
    a lock left by a dead process of this host is taken over."""

    def __init__(self, path: str):
        self.path = path
        self.held = False

    def acquire(self) -> str | None:
        """Take the lock; returns None, or who holds it."""
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        me = {"host": socket.gethostname(), "pid": os.getpid(), "since": _now()}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                holder = _read_lock(self.path)
                if holder.get("host") == me["host"] and not _alive(holder.get("pid")):
                    os.remove(self.path)  # left by a process that died (killed, machine restarted)
                    continue
                return f"{holder.get('host', '?')} pid {holder.get('pid', '?')} since {holder.get('since', '?')}"
            with os.fdopen(fd, "w") as handle:
                json.dump(me, handle)
            self.held = True
            return None
        return "another process"

    def release(self) -> None:
        if self.held and os.path.exists(self.path):
            os.remove(self.path)
        self.held = False


def _read_lock(path: str) -> dict:
    try:
        with open(path) as handle:
            value = json.load(handle)
        return value if isinstance(value, dict) else {}
    except (OSError, ValueError):
        return {}


def _alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except (TypeError, ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def _now() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def run_job(job: Job, jobs_path: str, out=None) -> int:
    """Run one job unless it is finished or running elsewhere; its output goes to the terminal and
    is appended to JOBS.logs/NAME.log (earlier attempts' logs are kept). Returns the exit status."""
    out = out or sys.stdout
    if job.stage == TRAIN and is_done(job):
        print(f"done already: {job.name}", file=out, flush=True)
        return 0
    missing = [p for p in job.needs if not os.path.exists(os.path.join(job.cwd, p))]
    if missing:
        print(f"error: job '{job.name}' needs '{missing[0]}', which an earlier job writes: run that first",
              file=sys.stderr, flush=True)
        return 2
    command = command_now(job)
    if not command:
        print(f"skipped: {job.name}: none of its inputs exists yet", file=out, flush=True)
        return 0
    lock = Lock(os.path.join(_side_folder(jobs_path, "locks"), f"{job.name}.lock"))
    holder = lock.acquire()
    if holder:
        print(f"skipped: {job.name} is running elsewhere ({holder})", file=out, flush=True)
        return 0
    log_path = os.path.join(_side_folder(jobs_path, "logs"), f"{job.name}.log")
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    try:
        with open(log_path, "a") as log:
            header = f"=== {_now()} {socket.gethostname()}: {shlex.join(command)} (in {job.cwd})"
            print(f"+ {job.name}: {shlex.join(command)}", file=out, flush=True)
            log.write(header + "\n")
            log.flush()
            env = dict(os.environ, **{k: str(v) for k, v in job.env.items()})
            env.setdefault("PYTHONUNBUFFERED", "1")
            process = subprocess.Popen(command, cwd=job.cwd, env=env, stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT)
            for chunk in iter(lambda: process.stdout.read1(4096), b""):
                log.write(chunk.decode(errors="replace"))
                log.flush()
                out.write(chunk.decode(errors="replace"))
                out.flush()
            code = process.wait()
            log.write(f"=== exit status {code}\n")
    finally:
        lock.release()
    if code:
        print(f"error: job '{job.name}' failed (exit status {code}); its log: {log_path}", file=sys.stderr, flush=True)
    return code


def run_jobs(jobs_path: str, index: int | None = None, reports_only: bool = False, out=None) -> int:
    """``index``: run that training job (an array task); else every training job in order, then
    the reports. A failed job does not stop the others; the exit status says whether any failed."""
    jobs = read_jobs(jobs_path)
    training = train_jobs(jobs)
    if index is not None:
        if not 0 <= index < len(training):
            raise UserError(f"job index {index} is outside the list's 0..{len(training) - 1}")
        return run_job(training[index], jobs_path, out)
    failed = []
    for job in ([] if reports_only else training) + [job for job in jobs if job.stage == REPORT]:
        if job.stage == REPORT and failed:
            print(f"skipped: {job.name}: {len(failed)} job(s) failed", file=out or sys.stdout, flush=True)
            continue
        if run_job(job, jobs_path, out):
            failed.append(job.name)
    if failed:
        print(f"error: {len(failed)} job(s) failed: {', '.join(failed)}; logs in "
              f"{_side_folder(jobs_path, 'logs')}", file=sys.stderr, flush=True)
        return 1
    return 0


def slurm_lines(jobs_path: str, python: str, parallel: int = 0, options: str = "") -> list[str]:
    """sbatch commands that run the list as a job array (one array task per training job, the
    same index as ``main_sweep.py run JOBS --index I``), then the reports once the array ends."""
    count = len(train_jobs(read_jobs(jobs_path)))
    jobs_path = os.path.abspath(jobs_path)
    script = os.path.join(ROOT, "sweeps", "slurm_array.sh")
    limit = f"%{parallel}" if parallel else ""
    extra = f"{options} " if options else ""
    lines = [f"array=$(sbatch --parsable {extra}--array=0-{count - 1}{limit} {script} {shlex.quote(jobs_path)})"]
    report = f"{shlex.quote(python)} {shlex.quote(os.path.join(ROOT, 'main_sweep.py'))} run {shlex.quote(jobs_path)} --reports"
    lines.append(f"sbatch --dependency=afterany:$array --wrap {shlex.quote(report)}")
    return lines


# --------------------------------------------------------------------------------------------
# Making the lists: the classification grid, detection and segmentation sweeps
# --------------------------------------------------------------------------------------------

def _pairs(text: str, what: str) -> list[tuple[str, str]]:
    pairs = []
    for item in text.split():
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise UserError(f"{what}: expected NAME=PATH items, got '{item}'")
        pairs.append((name, value))
    return pairs


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split()]
    except ValueError:
        raise UserError(f"seeds must be integers, got '{text}'") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise UserError(f"give one or more distinct seeds, got '{text}'")
    return seeds


def _pop_flag(flags: list[str], name: str) -> str | None:
    """Remove ``--name VALUE`` (or ``--name=VALUE``) from ``flags``; returns VALUE."""
    for index, flag in enumerate(flags):
        if flag == name and index + 1 < len(flags):
            value = flags[index + 1]
            del flags[index:index + 2]
            return value
        if flag.startswith(name + "="):
            del flags[index]
            return flag.split("=", 1)[1]
    return None


def _no_seed_flag(flags: Sequence[str], spelled: Sequence[str]) -> None:
    for flag in flags:
        if flag.split("=")[0] in spelled:
            raise UserError(f"the seed comes from SEEDS (or SEED), not from the extra flag {flag}")


def classification_jobs(out: str, *, python: str, data: str, dataset: str, arch: str, rounds: int,
                        seeds: str, pretrained: str, pt_tickets: str, levels: str, rewind_epoch: int,
                        extra: str = "", imp_extra: str = "", pending_tickets: bool = False,
                        title: str = "", notices: list[str] | None = None) -> list[Job]:
    """The paper's grid for one classification data set (Fig. 3), per seed: downstream IMP from each
    pre-training (pt_trans) and its random-pruning control; IMP from random init (lt) and with late
    rewinding (rewind_lt), each with its random-pruning control; the transfer of each pre-training's
    tickets at each level, their reversed masks and their random re-init; then the reports."""
    notices = notices if notices is not None else []
    cwd = os.getcwd()
    extra_flags, imp_flags = shlex.split(extra), shlex.split(imp_extra)
    _no_seed_flag(extra_flags + imp_flags, ("--seed",))
    weights = dict(_pairs(pretrained, "PRETRAINED"))
    tickets = _pairs(pt_tickets, "PT_TICKETS")
    chosen_levels = [int(level) for level in levels.split()]
    script = lambda name: [python, "-u", os.path.join(ROOT, name)]  # noqa: E731
    common = ["--data", data, "--dataset", dataset, "--arch", arch]
    imp = common + ["--pruning_times", str(rounds), *imp_flags]
    jobs = []
    for seed in _seeds(seeds):
        def add(name: str, job_type: str, command: list[str], needs=()):
            save_dir = os.path.join(out, f"{name}_s{seed}")
            jobs.append(Job(f"{name}_s{seed}", job_type, command + ["--seed", str(seed), "--save_dir", save_dir,
                                                                     *extra_flags],
                            cwd, save_dir, rounds=rounds, needs=list(needs)))

        for name, path in weights.items():
            for control, flag in (("imp", []), ("random", ["--random_prune"])):
                add(f"{control}_pt_trans_{name}", "rounds",
                    script("main_imp_downstream.py") + imp + ["--prune_type", "pt_trans", "--pretrained", path, *flag])
        for prune_type in ("lt", "rewind_lt"):
            rewind = ["--rewind_epoch", str(rewind_epoch)] if prune_type == "rewind_lt" else []
            for control, flag in (("imp", []), ("random", ["--random_prune"])):
                add(f"{control}_{prune_type}", "rounds",
                    script("main_imp_downstream.py") + imp + ["--prune_type", prune_type, *rewind, *flag])
        for name, folder in tickets:
            if name not in weights:
                notices.append(f"PRETRAINED has no weights named '{name}': its transfer runs are left out")
                continue
            if not os.path.isdir(folder) and not pending_tickets:
                notices.append(f"no ticket folder '{folder}' for '{name}': its transfer runs are left out")
                continue
            for level in chosen_levels:
                ticket = os.path.join(folder, f"ticket_{level:02d}.pt")
                if not os.path.isfile(ticket) and not pending_tickets:
                    notices.append(f"{ticket} is missing: its transfer runs are left out")
                    continue
                base = script("main_eval_downstream.py") + common + ["--mask_dir", ticket]
                add(f"transfer_{name}_r{level}", "once", base + ["--pretrained", weights[name]], [ticket])
                if level > 0:  # ticket 0 keeps every weight: its reverse keeps none, its re-init is dense
                    add(f"reversed_{name}_r{level}", "once",
                        base + ["--pretrained", weights[name], "--reverse_mask"], [ticket])
                    add(f"reinit_{name}_r{level}", "once", base, [ticket])
    report = [python, os.path.join(ROOT, "main_report.py")]
    title = title or f"{arch} on {dataset}"
    jobs.append(Job("report", "report", report + ["--out", os.path.join(out, "report"), "--title", title],
                    cwd, inputs=[os.path.join(out, "*_s*")], stage=REPORT))
    for name in weights:  # each pre-training with its controls and the transfer of its tickets
        patterns = [f"imp_pt_trans_{name}_s*", f"random_pt_trans_{name}_s*", f"transfer_{name}_r*_s*",
                    f"reversed_{name}_r*_s*", f"reinit_{name}_r*_s*"]
        jobs.append(Job(f"report_{name}", "report",
                        report + ["--out", os.path.join(out, f"report_{name}"), "--title", f"{title}, {name} pre-training"],
                        cwd, inputs=[os.path.join(out, p) for p in patterns], stage=REPORT))
    return jobs


DETECTION_KINDS = {"imp": "train_imp.py", "eval": "eval.py", "random": "train_random.py",
                   "transfer": "train_transfer.py", "reversed": "train_transfer.py"}


def detection_jobs(kind: str, pretraining: str, first: int, last: int, *, python: str, seeds: str, gpu: str = "",
                   maskroot: str = "", flags: Sequence[str] = (), out: str = "") -> list[Job]:
    """Detection/sweep.sh KIND TYPE FIRST LAST: IMP rounds FIRST..LAST (one job per seed: a round
    starts from the previous one), or one job per level and seed for eval, random, transfer and
    reversed (the transfer of mask i with --reverse_mask); then the report of the pre-training's
    IMP and controls (Fig. 4). Runs the scripts in the caller's folder, so relative paths stay the
    caller's (from Detection/ this is the original's layout); the run folders (the original's
    seed{S}_{type}_{imp|random|transfer}_ckpt) and the report go to ``out``."""
    if kind not in DETECTION_KINDS:
        raise UserError(f"unknown kind '{kind}' (imp, eval, random, transfer, reversed)")
    if first < 0 or last < first:
        raise UserError(f"rounds FIRST..LAST must satisfy 0 <= FIRST <= LAST, got {first}..{last}")
    if kind in ("transfer", "reversed") and not maskroot:
        raise UserError("set MASKROOT to the mask folder for transfer and reversed sweeps")
    cwd = os.getcwd()
    flags = list(flags)
    _no_seed_flag(flags, ("--seed",))
    save_dir_flag = _pop_flag(flags, "--save_dir")
    seeds_list = _seeds(seeds)
    if save_dir_flag and len(seeds_list) > 1 and "{seed}" not in save_dir_flag:
        raise UserError("--save_dir with several seeds must hold '{seed}' (each seed writes its own folder)")
    env = {"CUDA_VISIBLE_DEVICES": gpu} if gpu != "" else {}
    job_word = {"imp": "imp", "eval": "imp", "random": "random", "transfer": "transfer", "reversed": "reversed"}[kind]
    jobs = []
    for seed in seeds_list:
        save_dir = (save_dir_flag.format(seed=seed) if save_dir_flag
                    else os.path.join(out, f"seed{seed}_{pretraining}_{job_word}_ckpt"))
        base = [python, "-u", os.path.join(ROOT, "Detection", DETECTION_KINDS[kind])]
        tail = ["--seed", str(seed), "--save_dir", save_dir, *flags]
        if kind == "imp":
            jobs.append(Job(f"imp_{pretraining}_s{seed}_r{first}-{last}", "det_imp",
                            base + ["--imp_type", pretraining] + tail, cwd, save_dir, first=first, last=last,
                            needs=[os.path.join(save_dir, f"backbone_imp{first}.pth")] if first else [], env=env))
            continue
        for level in range(first, last + 1):
            if kind == "eval":
                set_flags, job_type = ["--imp_type", pretraining, "--imp_num", str(level)], "det_eval"
                needs = [os.path.join(save_dir, f"{level}checkpoint.pth.tar")]
            elif kind == "random":
                set_flags, job_type, needs = ["--imp_type", pretraining, "--imp_num", str(level)], "det_level", []
            else:
                set_flags = ["--transfer_type", pretraining, "--mask_dir", maskroot, "--mask_num", str(level)]
                set_flags += ["--reverse_mask"] if kind == "reversed" else []
                job_type, needs = "det_level", []
            jobs.append(Job(f"{kind}_{pretraining}_s{seed}_{level}", job_type, base + set_flags + tail, cwd,
                            save_dir, level=level, needs=needs, env=env))
    if kind != "eval":
        pattern = [os.path.join(out, f"seed*_{pretraining}_{word}_ckpt")
                   for word in ("imp", "random", "transfer", "reversed")]
        jobs.append(Job(f"report_{pretraining}", "report",
                        [python, os.path.join(ROOT, "main_report.py"), "--out", os.path.join(out, f"report_{pretraining}"),
                         "--title", f"YOLOv4 detection, {pretraining} pre-training (Fig. 4)"],
                        cwd, inputs=pattern, stage=REPORT))
    return jobs


SEGMENTATION_FLAGS = ["--model", "deeplabv3plus_resnet50", "--year", "2012", "--crop_val", "--batch_size", "4"]


def segmentation_imp_jobs(script: str, name: str, *, python: str, seeds: str, rounds: int, imp_dirs: dict[str, str],
                          gpu: str = "", flags: Sequence[str] = (), out: str = "") -> list[Job]:
    """Segmentation/sh/imp_*.sh: per seed one job running rounds 0..ROUNDS-1 (round k in NAME_k, as
    the original's one command per round), resumable; then the report of the IMP runs. Runs in
    Segmentation/; the --save_dir (the original's seed{S}_imp_..._outbackbone) and the report go to
    ``out`` (default Segmentation/ itself). ``imp_dirs``: per pre-training, the IMP scripts' default
    --save_dir with '{seed}' in it (Segmentation.run.SOURCES)."""
    cwd = os.path.join(ROOT, "Segmentation")
    source = _segmentation_source(script, "imp", imp_dirs)
    flags = list(flags)
    _no_seed_flag(flags, ("--random_seed", "--seed"))
    save_dir_flag = _pop_flag(flags, "--save_dir")
    jobs = []
    for seed in _seeds(seeds):
        save_dir = (save_dir_flag.format(seed=seed) if save_dir_flag
                    else os.path.join(out, imp_dirs[source].format(seed=seed)))
        gpu_flag = ["--gpu_id", gpu] if gpu != "" else []
        exp = name.format(seed=seed)
        jobs.append(Job(exp, "seg_imp", [python, "-u", script, exp, *SEGMENTATION_FLAGS, *gpu_flag, "--random_seed",
                                         str(seed), "--imp_rounds", str(rounds), "--save_dir", save_dir, *flags],
                        cwd, save_dir, rounds=rounds))
    jobs.append(_segmentation_report(python, cwd, [job.save_dir for job in jobs], os.path.join(out, f"report_imp_{source}"),
                                     f"DeepLabV3+ segmentation, IMP from {source} weights"))
    return jobs


def segmentation_transfer_jobs(script: str, name: str, masks: str, *, python: str, seeds: str, rounds: int,
                               sources: Iterable[str], kinds: str = "ticket", gpu: str = "",
                               flags: Sequence[str] = (), out: str = "") -> list[Job]:
    """Segmentation/sh/transfer_*.sh: a mask file is one job (NAME_01, the original's); a folder of IMP
    outputs is one job per round, kind and seed: round 0 dense, round i the mask of round i
    (seg_backbone_imp{i}.pth, ticket_{ii}.pt or mask-{i}.pt; the first that exists, else the IMP
    file it waits for). KINDS: ticket (the original's), reversed (--reverse_mask) and random
    (--random_prune: random pruning at the mask's sparsity, the control of Fig. 4). The --save_dir
    (the original's checkpoints/) and the report go to ``out`` (default Segmentation/)."""
    cwd = os.path.join(ROOT, "Segmentation")
    source = _segmentation_source(script, "transfer", sources)
    flags = list(flags)
    _no_seed_flag(flags, ("--random_seed", "--seed"))
    save_dir = _pop_flag(flags, "--save_dir") or os.path.join(out, "checkpoints")
    chosen = kinds.split()
    unknown = [k for k in chosen if k not in ("ticket", "reversed", "random")]
    if unknown or not chosen:
        raise UserError(f"KINDS must be some of: ticket reversed random (got '{kinds}')")
    masks = os.path.abspath(masks)
    jobs = []
    for seed in _seeds(seeds):
        gpu_flag = ["--gpu_id", gpu] if gpu != "" else []
        base = [python, "-u", script]
        tail = [*SEGMENTATION_FLAGS, *gpu_flag, "--random_seed", str(seed), "--save_dir", save_dir, *flags]
        exp = name.format(seed=seed)
        if os.path.isfile(masks):
            jobs.append(Job(f"{exp}_01", "seg_once", base + [f"{exp}_01", "--mask_dir", masks, *tail], cwd, save_dir,
                            exp=f"{exp}_01"))
            continue
        for kind in chosen:
            for level in range(rounds):
                if level == 0 and kind != "ticket":
                    continue  # round 0 is dense: nothing to reverse or to prune at random
                run = f"{exp}_{level:02d}" if kind == "ticket" else f"{exp}_{kind}_{level:02d}"
                mask_flags, needs = [], []
                if level:
                    mask = _segmentation_mask(masks, level)
                    mask_flags, needs = ["--mask_dir", mask], [mask]
                mask_flags += {"ticket": [], "reversed": ["--reverse_mask"], "random": ["--random_prune"]}[kind]
                jobs.append(Job(run, "seg_once", base + [run, *mask_flags, *tail], cwd, save_dir, exp=run,
                                needs=needs))
    inputs = [save_dir] + ([masks] if not os.path.isfile(masks) else [])  # an IMP folder: its curve and dense model
    jobs.append(_segmentation_report(python, cwd, inputs, os.path.join(out, f"report_transfer_{source}"),
                                     f"DeepLabV3+ segmentation, {source} weights (Fig. 4)"))
    return jobs


def _segmentation_source(script: str, mode: str, sources: Iterable[str]) -> str:
    stem = os.path.basename(script)
    for source in sources:
        if stem == f"main_{mode}_{source}.py":
            return source
    raise UserError(f"'{script}' is not one of Segmentation's main_{mode}_<imagenet|moco|simclr>.py")


def _segmentation_mask(folder: str, level: int) -> str:
    names = (f"seg_backbone_imp{level}.pth", f"ticket_{level:02d}.pt", f"mask-{level}.pt")
    for name in names:
        if os.path.isfile(os.path.join(folder, name)):
            return os.path.join(folder, name)
    return os.path.join(folder, names[0])  # written by the IMP sweep: the job waits for it


def _segmentation_report(python: str, cwd: str, inputs: list[str], out: str, title: str) -> Job:
    return Job(os.path.basename(out), "report", [python, os.path.join(ROOT, "main_report.py"), "--out", out, "--title", title], cwd,
               inputs=inputs, stage=REPORT)
