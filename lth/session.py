"""The set-up every entry script shares: save-dir checks, device and DDP, the seed, precision,
the run record, and resuming a one-stage run.

A script calls, in order: ``check_save_dir`` (before anything is built; fails fast on a folder
that holds another run), ``open_session`` (device, process group, the run's seed broadcast once
under torchrun, precision), builds its data and model, then ``Session.record`` (run.json).
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from dataclasses import dataclass
from typing import Sequence

import torch.nn as nn

from lth import cli, distributed
from lth.distributed import Context
from lth.engine import Precision
from lth.errors import UserError
from lth.runs import RunDir
from lth.trainer import MaskRestorer, StageProgress, restore_stage


@dataclass
class Session:
    """One process's view of a run: its folder, device, precision and the checkpoint to resume."""
    run: RunDir
    ctx: Context
    precision: Precision
    resume_file: str | None  # the file of ``--resume PATH``; None for a bare --resume or a fresh start
    seed: int

    def record(self, args: argparse.Namespace) -> None:
        """Wait for every rank, then write (or extend, on resume) ``run.json``."""
        distributed.barrier()
        self.run.start(vars(args), bool(args.resume))

    def restore(self, model: nn.Module, fmt: str, args: argparse.Namespace, conv1: bool = False,
                apply_masks: MaskRestorer | None = None) -> tuple[StageProgress, dict | None, dict | None]:
        """Progress, optimizer and scheduler state of a one-stage run: from its checkpoint on
        ``--resume`` (weights and masks loaded into ``model``), fresh otherwise."""
        if not args.resume:
            return StageProgress(), None, None
        checkpoint, progress = restore_stage(model, self.run, fmt, vars(args), conv1, self.resume_file,
                                             apply_masks=apply_masks)
        return progress, checkpoint.get("optimizer"), checkpoint.get("scheduler")


def check_save_dir(save_dir: str, resume: bool | str, evaluate: bool = False) -> tuple[RunDir, str | None]:
    """The run folder, checked for a fresh start or a resume (not for ``evaluate``: nothing is
    written); returns it and the file of ``--resume PATH``."""
    run = RunDir(save_dir)
    return run, None if evaluate else cli.check_save_dir(run, resume)


def open_session(args: argparse.Namespace, run: RunDir, resume_file: str | None = None, *,
                 gpu: int | str | None = None, default_seed: int | None = None) -> Session:
    """Device and process group, then the seed: the one given (0 included), the one a resumed run
    recorded, ``default_seed``, or a fresh draw; under torchrun rank 0's choice is broadcast once,
    so every rank builds the same model and data order. ``args.seed`` is set to it."""
    ctx = distributed.setup(args.gpu if gpu is None else gpu, args.cpu)
    run.is_main = ctx.is_main
    seed = args.seed
    if args.resume and seed is None:
        source = RunDir(os.path.dirname(resume_file) or ".") if resume_file else run
        seed = source.recorded_seed(None)
    if seed is None:
        seed = default_seed
    args.seed = resolve_seed(seed, ctx)
    precision = Precision.choose(args.precision, ctx.device, args.channels_last,
                                 getattr(args, "eval_precision", "fp32"))
    run.stamp = precision.describe()
    return Session(run=run, ctx=ctx, precision=precision, resume_file=resume_file, seed=args.seed)


def check_same_experiment(run: RunDir, args: argparse.Namespace, flags: Sequence[str]) -> None:
    """A resumed run must keep the script's own identity ``flags`` (beyond the trainer's
    ``IDENTITY_FLAGS``, checked against the checkpoint) as its run.json recorded them."""
    record = run.record()
    if record is None:
        return
    saved = record.get("args", {})
    for flag in flags:
        if flag in saved and saved[flag] != getattr(args, flag):
            raise UserError(f"--{flag} is {getattr(args, flag)!r} but the run being resumed used {saved[flag]!r}; "
                            f"a resume keeps the run's flags: to change it, start a new run in another folder")


def resolve_seed(seed: int | None, ctx: Context) -> int:
    """``seed``, or a fresh one (then announced; run.json records it). Under torchrun every rank
    calls this once and takes rank 0's value: exactly one broadcast."""
    drawn = seed is None
    if drawn:
        seed = secrets.randbelow(2**31)
    if ctx.distributed:
        seed, drawn = distributed.broadcast_object((seed, drawn))
    if drawn and ctx.is_main:
        print(f"notice: no --seed given; using seed {seed} (recorded in run.json)", file=sys.stderr)
    return seed
