"""The "train once" driver: one training of a task's model (transfer, controls, dense pre-training).

``train_once(task, hparams, session)`` restores the run on ``--resume`` (weights, masks, optimizer,
schedule and position), trains the stage to its end, then on rank 0 writes the task's summary row
(with its training cost, ``lth.cost``) and training curves and lets the task write what is its own
(``Task.finished``). The IMP driver is ``lth.imp.ImpRun``; both run any ``lth.task.Task``.
"""

from __future__ import annotations

from lth import cost, distributed
from lth.errors import UserError
from lth.hparams import controls_record, ticket_kind
from lth.session import Session, check_save_dir, hparams_dict, open_session
from lth.trainer import StageProgress, stage_hooks, train_stage


def train_once(task, hparams, session: Session, *, stage: int = 0) -> StageProgress:
    """Train ``task.model`` once in ``session.run``; ``stage`` numbers its rows and files (0 but
    where a script keeps the original's numbering, detection's ``model{k}``)."""
    model, strategy = task.model, task.strategy
    progress = session.restore(model, task.checkpoint_format, hparams, strategy.conv1, apply_masks=strategy.restore)
    remaining = strategy.remaining(model)
    session.run.flush_record()  # every check has passed: a resumed run's run.json entry is written now
    task.begin_round(stage)
    hooks = stage_hooks(session.run, remaining, task.files, save_best=task.save_best,
                        checkpoint_extra=lambda: once_extra(task, hparams, progress))
    train_stage(model, task.work(), task.cfg, session.ctx, session.precision, stage=stage, progress=progress,
                hooks=hooks)
    if session.ctx.is_main:
        row = {**task.summary_row(progress, stage, remaining), **cost.columns(cost.Cost(), progress)}
        task.record_summary(row, progress)
        task.plot_curves(progress, stage, task.curves_title(stage, remaining))
        task.finished(progress, row)
    return progress


def once_extra(task, hparams, progress: StageProgress) -> dict:
    """A one-off training's checkpoint entries: its format and hparams, then the task's own."""
    return {"format": task.checkpoint_format, "args": hparams_dict(hparams), **task.checkpoint_extra(progress)}


def transfer_ticket(args, hparams_class, task_class) -> None:
    """A ticket's transfer (``main_eval_downstream.py``, ``main_eval_visda.py``): the session of
    ``hparams_class``'s experiment, the task built, run.json naming the control the mask makes of
    the run (ticket, reversed, re-init), one training."""
    if args.reverse_mask and not args.mask_dir:
        raise UserError("--reverse_mask needs a mask to reverse: give --mask_dir")
    session = open_session(args, *check_save_dir(args.save_dir, args.resume), hparams=hparams_class.from_args(args))
    task = task_class(args)
    task.build(session)
    kind = ticket_kind(args.mask_dir, args.reverse_mask, pretrained=bool(args.pretrained))
    session.record(args, controls=controls_record(kind, args.mask_dir, task.mask_meta) if kind else None)
    train_once(task, args, session)
    distributed.teardown()
