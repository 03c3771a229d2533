"""The set-up every entry script shares: save-dir checks, device and DDP, the seed, precision,
the run record, and resuming a one-stage run.

A script calls, in order: ``check_save_dir`` (before anything is built; fails fast on a folder
that holds another run), ``open_session`` (device, process group, the run's seed broadcast once
under torchrun, precision), builds its data and model, then ``Session.record`` (run.json).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import secrets
import sys
from dataclasses import dataclass

import torch.nn as nn

from lth import cli, distributed
from lth.distributed import Context
from lth.engine import Precision
from lth.errors import UserError
from lth.hparams import Hparams, experiment_record, resume_mismatch
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
    hparams: Hparams | None = None  # the run's typed hparams: its experiment, recorded in run.json

    def record(self, args: argparse.Namespace, controls: dict | None = None, resumed: bool | None = None) -> None:
        """Wait for every rank, then write (or extend, on resume) ``run.json``: the args, the
        experiment of the session's hparams and, for a control or transfer run, ``controls``
        (``lth.hparams.controls_record``). ``resumed`` (default: ``args.resume``) extends it."""
        distributed.barrier()
        self.run.start(hparams_dict(args), bool(args.resume) if resumed is None else resumed,
                       experiment=self.run.experiment, controls=controls)

    def restore(self, model: nn.Module, fmt: str, args: argparse.Namespace, conv1: bool = False,
                apply_masks: MaskRestorer | None = None) -> StageProgress:
        """Where a one-stage run stands: from its checkpoint on ``--resume`` (or the session's
        ``resume_file``: weights and masks loaded into ``model``, optimizer and schedule in the
        progress), fresh otherwise."""
        if not (args.resume or self.resume_file):
            return StageProgress()
        _, progress = restore_stage(model, self.run, fmt, hparams_dict(args), conv1, self.resume_file,
                                    apply_masks=apply_masks)
        return progress


def hparams_dict(hparams) -> dict:
    """The hparams as the plain dict that checkpoints and run.json record (``args``)."""
    if dataclasses.is_dataclass(hparams) and not isinstance(hparams, type):
        return dataclasses.asdict(hparams)
    return dict(vars(hparams))


def check_save_dir(save_dir: str, resume: bool | str, evaluate: bool = False) -> tuple[RunDir, str | None]:
    """The run folder, checked for a fresh start or a resume (not for ``evaluate``: nothing is
    written); returns it and the file of ``--resume PATH``."""
    run = RunDir(save_dir)
    return run, None if evaluate else cli.check_save_dir(run, resume)


def open_session(args: argparse.Namespace, run: RunDir, resume_file: str | None = None, *,
                 gpu: int | str | None = None, default_seed: int | None = None, hparams: Hparams | None = None,
                 continuing: bool | None = None) -> Session:
    """Device and process group, then the seed: the one given (0 included), the one a resumed run
    recorded, ``default_seed``, or a fresh draw; under torchrun rank 0's choice is broadcast once,
    so every rank builds the same model and data order. ``args.seed`` is set to it.

    ``hparams`` (the task's, from the parsed args before the script changes them) is the run's
    experiment: a resumed (or ``continuing``) run must be the recorded one, with the same seed
    (``check_same_experiment``), before anything is built.
    """
    if hparams is not None:
        if bool(args.resume) if continuing is None else continuing:
            check_same_experiment(resume_source(run, resume_file), hparams, args.seed)
        run.hparams, run.experiment = hparams, experiment_record(hparams)
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
    return Session(run=run, ctx=ctx, precision=precision, resume_file=resume_file, seed=args.seed, hparams=hparams)


def resume_source(run: RunDir, resume_file: str | None) -> RunDir:
    """The run being continued: the folder of ``--resume PATH``'s checkpoint, else ``run``."""
    return RunDir(os.path.dirname(resume_file) or ".") if resume_file else run


def check_same_experiment(run: RunDir, hparams: Hparams, seed: int | None) -> None:
    """Refuse, in one line naming the first differing flag, to continue the run recorded in ``run``
    as another experiment (its run.json's experiment id, or for a run recorded before ids existed
    its args' experiment fields) or with another ``seed`` (None: the recorded one is taken)."""
    record = run.record()
    if record is None:
        return
    reason = resume_mismatch(hparams, seed, record, f"'{run.path}'")
    if reason:
        raise UserError(reason)


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
