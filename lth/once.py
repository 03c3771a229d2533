"""The "train once" driver: one training of a task's model (transfer, controls, dense pre-training).

``train_once(task, hparams, session)`` restores the run on ``--resume`` (weights, masks, optimizer,
schedule and position), trains the stage to its end, then on rank 0 writes the task's summary row
(with its training cost, ``lth.cost``) and training curves and lets the task write what is its own
(``Task.finished``). The IMP driver is ``lth.imp.ImpRun``; both run any ``lth.task.Task``.
"""

from __future__ import annotations

from lth import cost
from lth.session import Session, hparams_dict
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
