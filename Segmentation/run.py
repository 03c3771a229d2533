"""The one module behind Segmentation/main_imp_*.py and main_transfer_*.py: flags, set-up, IMP rounds, transfer.

The six entry scripts differ only in the pre-trained weights they default to (``SOURCES``) and, as
the original's, in when the IMP scripts validate (MoCo and SimCLR: only in a round's second half).
Layout under ``--save_dir``: the IMP files ``seg_backbone_imp{k}.pth``, tickets ``ticket_{k:02d}.pt``,
``summary.jsonl`` (one line per round, or per transfer run) and ``miou_vs_remaining.png``; each run
(an IMP round or a transfer) in ``--save_dir/EXP``: ``latest_*``/``best_*`` checkpoints (the
original's names), ``metrics.jsonl``, ``run.json``, ``net_train.png`` and ``results/`` (--save_val_results).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn

from lth import cli, distributed, pruning, validate
from lth.checkpoint import atomic_write_text, jsonl_text, load_file, locked, read_jsonl
from lth.hparams import controls_record, ticket_kind
from lth.errors import UserError
from lth.imp import BackbonePruning, training_curve_labels
from lth.loaders import DeviceLoader, Loaders
from lth.models import load_pretrained
from lth.plots import plot_accuracy_vs_remaining, plot_training_curves
from lth.runs import SUMMARY, RunDir, ticket_name
from lth.session import Session, check_same_experiment, open_session
from lth.trainer import Objective, StageFiles, StageProgress, TrainConfig, restore_stage, train_stage
from lth.tickets import save_ticket
from Segmentation import data as segdata
from Segmentation.hparams import NO_WEIGHTS, PRUNE_RATE, SEGMENTATION_HPARAMS, SOURCES, Source  # noqa: F401
from Segmentation.imp_files import (backbone_masks, drop_resumable_checkpoint, imp_file_path, restore_parts,
                                    save_imp_file)
from Segmentation.loss import build_loss
from Segmentation.model import build_segmentation_model
from Segmentation.task import evaluate as evaluate_segmentation
from Segmentation.task import make_step
from Segmentation.visual import PredictionWriter, palette_for

FORMAT = "lth-segmentation"
OBJECTIVE = Objective("miou", higher_is_better=True, lists=("class_iou",), val_prefix="")
# Where torchvision's download (the original's pretrained_backbone=True) leaves each backbone's weights.
TORCHVISION_FILES = {"resnet50": "resnet50-19c8e357.pth", "resnet101": "resnet101-5d3b4d8f.pth",
                     "resnet18": "resnet18-5c106cde.pth"}


def default_weights(source: Source, model: str) -> str:
    if source.weights is not None:
        return source.weights
    arch = model.split("_", 1)[1]
    if arch not in TORCHVISION_FILES:
        raise UserError(f"torchvision has no pre-trained {arch}: give its weights with --pretrained (or 'none')")
    return os.path.join(torch.hub.get_dir(), "checkpoints", TORCHVISION_FILES[arch])


def get_args_parser(mode: str, source: Source) -> argparse.ArgumentParser:
    """The flags of Segmentation/main_{mode}_{source}.py (``mode`` is ``imp`` or ``transfer``)."""
    what = ("Find a DeepLabV3+ segmentation ticket by IMP of the backbone" if mode == "imp" else
            "Train DeepLabV3+ with a backbone ticket (transfer)")
    return SEGMENTATION_HPARAMS[mode, source.name].parser(
        description=f"{what}, from {source.name} pre-trained weights (the original's "
                    f"Segmentation/main_{mode}_{source.name}.py).")


def check_args(args: argparse.Namespace, mode: str) -> None:
    for name in ("batch_size", "val_batch_size", "crop_size", "val_interval", "step_size"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name} must be at least 1, got {getattr(args, name)}")
    if args.total_itrs < 1:
        raise UserError(f"--total_itrs must be at least 1, got {args.total_itrs}")
    validate.check_shared(args)
    if args.batch_size < 2:
        raise UserError("--batch_size must be at least 2: the ASPP's image-pooling branch keeps one value "
                        "per channel and image, and BatchNorm cannot train on a batch of one")
    validate.check_run_name(args.exp, "EXP")
    if args.download:
        raise UserError("--download: data sets are never downloaded here; place them under --data_root "
                        "(VOCdevkit/VOC2012, or leftImg8bit and gtFine)")
    if args.continue_training and not args.ckpt:
        raise UserError("--continue_training needs --ckpt, the checkpoint to continue")
    if args.continue_training and args.resume:
        raise UserError("--continue_training --ckpt and --resume both continue a run: give one")
    if args.ckpt and not os.path.isfile(args.ckpt):
        raise UserError(f"--ckpt '{args.ckpt}' does not exist")
    if mode == "imp":
        if args.imp_num is not None and args.imp_num < 0:
            raise UserError(f"--imp_num must be 0 or more, got {args.imp_num}")
        pruning.check_rate(args.rate)
        if args.imp_rounds < 1:
            raise UserError(f"--imp_rounds must be at least 1, got {args.imp_rounds}")
        if args.ckpt and not (args.continue_training or args.test_only):
            raise UserError("an IMP round starts from its rewind point: give --ckpt with --continue_training "
                            "(continue the round) or --test_only (evaluate it)")
        if args.imp_num is None and (args.ckpt or args.test_only):
            raise UserError("--ckpt and --test_only act on one round: give --imp_num")
    else:
        if args.random_prune and not args.mask_dir:
            raise UserError("--random_prune prunes to the sparsity of a mask: give it with --mask_dir")
        if args.ckpt and not args.continue_training and args.mask_dir:
            raise UserError("--ckpt holds the weights and masks to start from: do not combine it with --mask_dir")
    if args.enable_vis:
        print("notice: --enable_vis is ignored (no visdom): see metrics.jsonl and the plots", file=sys.stderr)
    for line in ignored_original_flags(args, mode):
        print(line, file=sys.stderr)


def ignored_original_flags(args: argparse.Namespace, mode: str) -> list[str]:
    """One line per original flag given that does nothing here (as it did nothing there)."""
    if os.environ.get("RANK", "0") != "0":
        return []
    if mode == "imp" and args.mask_dir is not None:
        return ["notice: --mask_dir is ignored by the IMP scripts (as by the original's): round k reads "
                "seg_backbone_imp{k}.pth in --save_dir"]
    if mode == "transfer" and args.imp_num is not None:
        return ["notice: --imp_num is ignored by the transfer scripts (as by the original's): the mask is --mask_dir"]
    return []


# --------------------------------------------------------------------------------------------
# What every run is made of
# --------------------------------------------------------------------------------------------

@dataclass
class Task:
    """The data, loaders and training configuration shared by every run of one command."""
    args: argparse.Namespace
    source: Source
    session: Session
    data: segdata.SegmentationData
    loaders: Loaders
    cfg: TrainConfig

    @property
    def ctx(self):
        return self.session.ctx

    @property
    def precision(self):
        return self.session.precision


def build_task(args: argparse.Namespace, source: Source, session: Session, eval_from: int = 0) -> Task:
    ctx, precision = session.ctx, session.precision
    data = segdata.load_segmentation(args.dataset, args.data_root, year=args.year, crop_size=args.crop_size,
                                     crop_val=args.crop_val, seed=args.seed, label_pad=args.label_pad)
    if args.num_classes is not None and args.num_classes != data.num_classes:
        raise UserError(f"--num_classes {args.num_classes} does not match --dataset {args.dataset}, "
                        f"which has {data.num_classes} classes")
    args.num_classes = data.num_classes
    workers = 0 if args.dataset == "digits" else args.workers  # in memory: no reader processes needed

    def loader(dataset, batch_size, train):
        return DeviceLoader(dataset, batch_size, train=train, seed=args.seed, ctx=ctx, workers=workers,
                            channels_last=precision.channels_last, collate_fn=segdata.pad_collate)

    train_batch, val_batch = segdata.process_batches(args.batch_size, args.val_batch_size, ctx)
    loaders = Loaders(train=loader(data.train, train_batch, True),
                      val=loader(data.val, val_batch, False),
                      test=loader(data.test, val_batch, False) if data.test is not None else None,
                      num_classes=data.num_classes)
    # StepLR(step_size, gamma=0.1): x0.1 at every multiple of step_size (the last one included, so the
    # scheduler state at the end matches the original's too)
    milestones = list(range(args.step_size, args.total_itrs + 1, args.step_size)) if args.lr_policy == "step" else []
    cfg = TrainConfig.from_hparams(session.hparams, epochs=0, momentum=0.9, warmup=0, milestones=milestones,
                                lr_policy="multistep" if args.lr_policy == "step" else args.lr_policy,
                                lr_scales={"backbone.": 0.1}, objective=OBJECTIVE, eval_from=eval_from)
    return Task(args, source, session, data, loaders, cfg)


def build_model(task: Task) -> nn.Module:
    """The network with its random init drawn from the seed (the head's init is part of the run)."""
    args = task.args
    torch.manual_seed(args.seed)
    model = build_segmentation_model(args.model, task.data.num_classes, args.output_stride, args.separable_conv)
    if args.sync_bn and task.ctx.distributed:
        if task.ctx.device.type != "cuda":
            raise UserError("--sync_bn needs CUDA devices (torch's SyncBatchNorm does not run on the CPU)")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = model.to(task.ctx.device)
    if task.precision.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def load_start_weights(model: nn.Module, task: Task) -> None:
    """The pre-trained backbone (conv1 included, fc dropped), or random init with ``--pretrained none``."""
    args = task.args
    if args.pretrained == NO_WEIGHTS:
        return
    if not os.path.isfile(args.pretrained):
        raise UserError(f"pre-trained weights '{args.pretrained}' not found (they are never downloaded): "
                        f"pass --pretrained PATH, or --pretrained {NO_WEIGHTS} to start from random init")
    load_pretrained(model.backbone, args.pretrained, args.dict_key, conv1=True, quiet=not task.ctx.is_main,
                    moco_encoder=args.moco_encoder)


def load_ckpt_weights(model: nn.Module, path: str, strategy: BackbonePruning) -> None:
    """``--ckpt`` without --continue_training: weights and masks of a checkpoint of this toolkit
    (``state_dict``) or of the original (``model_state``)."""
    obj = load_file(path, "checkpoint")
    state = obj.get("state_dict") if isinstance(obj, dict) and obj.get("format") == FORMAT else None
    if state is None and isinstance(obj, dict):
        state = obj.get("model_state")
    if not isinstance(state, dict):
        raise UserError(f"'{path}' holds neither a segmentation checkpoint of this toolkit nor the "
                        f"original's 'model_state'")
    state = pruning.strip_prefixes(state)
    strategy.restore(model, state)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise UserError(f"checkpoint '{path}' does not fit this model (--model, --num_classes, "
                        f"--separable_conv?): {str(error).splitlines()[0]}") from None


def stage_files(args: argparse.Namespace) -> StageFiles:
    """The original's checkpoint names: ``latest_`` (resumable) and ``best_{model}_{dataset}_os{16}.pth``."""
    tail = f"{args.model}_{args.dataset}_os{args.output_stride}.pth"
    return StageFiles(checkpoint="latest_" + tail, best="best_" + tail)


def evaluator_for(task: Task, run: RunDir) -> Callable:
    """mIoU and the other scores; with --save_val_results also the predictions of val."""
    writer = prediction_writer(task, run)

    def evaluator(model, loader, desc):
        return evaluate_segmentation(model, loader, task.ctx, task.precision, task.data.num_classes,
                                     writer=writer if desc == "val" else None, desc=desc)
    return evaluator


def resume_file_of(run: RunDir, args: argparse.Namespace, files: StageFiles) -> str | None:
    """The checkpoint a run continues from (--continue_training --ckpt, or --resume), or None for a
    fresh start, which must not overwrite another run."""
    latest = run.file(files.checkpoint_of(0))
    run.check_location()
    if args.continue_training:
        return args.ckpt
    if args.resume:
        if not os.path.isfile(latest):
            raise UserError(f"--resume given but '{run.path}' holds no checkpoint ({os.path.basename(latest)}) "
                            f"to resume from")
        return latest
    if os.path.isfile(latest) or run.metrics():
        raise UserError(f"'{run.path}' already holds a run; pass --resume to continue it or choose another EXP")
    return None


def train_run(task: Task, model: nn.Module, run: RunDir, resume_file: str | None, strategy: BackbonePruning,
              stage: int, extra: dict, controls: dict | None = None) -> StageProgress:
    """Train one run (a round or a transfer) in ``run`` from scratch or from ``resume_file``; a
    resumed run must be the experiment (and seed) its run.json records."""
    args, ctx = task.args, task.ctx
    files = stage_files(args)
    progress, optimizer_state, scheduler_state = StageProgress(), None, None
    hparams = task.session.hparams
    run.hparams, run.experiment = hparams, task.session.run.experiment
    if resume_file:
        check_same_experiment(run, hparams, args.seed)
        checkpoint, progress = restore_stage(model, run, FORMAT, vars(args), False, resume_file,
                                             apply_masks=strategy.restore)
        optimizer_state, scheduler_state = checkpoint.get("optimizer"), checkpoint.get("scheduler")
    distributed.barrier()
    run.stamp = task.precision.describe()
    run.start(vars(args), bool(resume_file), experiment=run.experiment, controls=controls)

    def checkpoint_extra() -> dict:
        return {"format": FORMAT, "args": vars(args), "model": args.model, "dataset": args.dataset,
                "output_stride": args.output_stride, **extra,
                "cur_itrs": progress.next_itr, "best_score": max(progress.best_val, 0.0) / 100.0}

    if not progress.finished(task.cfg):
        progress = train_stage(model, task.loaders, task.cfg, task.precision, ctx, run, stage=stage,
                               progress=progress, files=files, optimizer_state=optimizer_state,
                               scheduler_state=scheduler_state, checkpoint_extra=checkpoint_extra,
                               step=make_step(build_loss(args.loss_type)), evaluator=evaluator_for(task, run),
                               remaining=strategy.remaining(model))
    if ctx.is_main:
        history = progress.history
        print(f"Last mIoU: {history['ta'][-1]:.4f}\nBest mIoU: {progress.best_val:.4f} (itr {progress.best_epoch})",
              flush=True)
        plot_training_curves(history, run.file("net_train.png"), title=f"{args.exp}: "
                             f"{strategy.remaining(model):.2f}% of backbone conv weights remain",
                             **training_curve_labels(task.cfg))
    return progress


def summary_row(progress: StageProgress, stage: int, remaining: float, **extra) -> dict:
    """The core's summary row plus the original's two printed figures: best and last validation mIoU."""
    row = progress.summary_row(stage, remaining, OBJECTIVE)
    row.update(best_miou=progress.best_val, last_miou=progress.history["ta"][-1], **extra)
    return row


def record_summary(save_dir: str, row: dict, key: str, curve: Callable[[dict], str], title: str) -> None:
    """Put ``row`` into SAVE_DIR/summary.jsonl, replacing the line with the same ``key`` (a re-run
    end of round), and redraw SAVE_DIR/miou_vs_remaining.png (one curve per ``curve(row)``)."""
    path = os.path.join(save_dir, SUMMARY)
    with locked(path):  # the parallel jobs of a transfer sweep share this file
        rows = [old for old in read_jsonl(path) if old.get(key) != row.get(key)] + [row]
        rows.sort(key=lambda item: (str(item.get("kind", "")), item.get("round", 0), str(item.get("exp", ""))))
        atomic_write_text(jsonl_text(rows), path)
    curves: dict[str, list] = {}
    for item in rows:
        curves.setdefault(curve(item), []).append((item["remaining"], item.get("reported")))
    plot_accuracy_vs_remaining(curves, os.path.join(save_dir, "miou_vs_remaining.png"), title=title,
                               ylabel="mIoU (%)")


def print_scores(result: dict, what: str) -> None:
    classes = ", ".join(f"{index}: {'-' if value is None else f'{value:.2f}'}"
                        for index, value in enumerate(result["class_iou"]))
    print(f"{what}: mIoU {result['miou']:.2f} overall acc {result['overall_acc']:.2f} mean acc "
          f"{result['mean_acc']:.2f} FreqW acc {result['fwiou']:.2f}\nclass IoU: {classes}", flush=True)


def test_only(task: Task, model: nn.Module, run: RunDir, strategy: BackbonePruning) -> None:
    """--test_only: evaluate val once, print, write nothing but --save_val_results."""
    result = evaluate_segmentation(model, task.loaders.val, task.ctx, task.precision, task.data.num_classes,
                                   writer=prediction_writer(task, run))
    if task.ctx.is_main:
        print_scores(result, f"val ({strategy.remaining(model):.2f}% of backbone conv weights remain)")


def prediction_writer(task: Task, run: RunDir) -> PredictionWriter | None:
    """--save_val_results: EXP/results/{image_id}_pred.png, rewritten at every evaluation (under
    torchrun each rank writes the images of its shard)."""
    if not task.args.save_val_results:
        return None
    return PredictionWriter(run.file("results"), task.data.val.ids, palette_for(task.args.dataset))


def open_run(args: argparse.Namespace, source: Source, mode: str, run: RunDir,
             resume_file: str | None, hparams) -> tuple[Session, Task]:
    """Device, process group and seed (core set-up), then data, loaders and the training config.
    ``hparams`` are the script's as parsed (before ``finish_args`` fills in weights and folders)."""
    # --test_only writes nothing: no experiment to check against.
    session = open_session(args, run, resume_file, hparams=hparams, continuing=False if args.test_only else None)
    eval_from = 0
    if mode == "imp" and source.imp_validates_second_half_only:
        eval_from = math.ceil(args.total_itrs / 2)
    return session, build_task(args, source, session, eval_from)


def finish_args(args: argparse.Namespace, source: Source, mode: str) -> None:
    if args.pretrained is None:
        args.pretrained = default_weights(source, args.model)
    if not args.save_dir:
        args.save_dir = source.imp_dir.format(seed=args.seed) if mode == "imp" else "checkpoints"


# --------------------------------------------------------------------------------------------
# IMP
# --------------------------------------------------------------------------------------------

def imp_main(args: argparse.Namespace, source: Source) -> None:
    check_args(args, "imp")
    hparams = SEGMENTATION_HPARAMS["imp", source.name].from_args(args)
    finish_args(args, source, "imp")
    if args.imp_num is None:
        return imp_sweep(args, source, hparams)
    run = RunDir(os.path.join(args.save_dir, args.exp))
    files = stage_files(args)
    if restarts_round_zero(run, args, files):
        resume_file = None
        print(f"notice: round 0 stopped before its first checkpoint: it starts again from "
              f"{imp_file_path(args.save_dir, 0)}", file=sys.stderr)
    else:
        resume_file = None if args.test_only else resume_file_of(run, args, files)
    check_round_inputs(args.save_dir, args.imp_num, args.resume or args.test_only)
    session, task = open_run(args, source, "imp", run, resume_file, hparams)
    imp_round(task, args.imp_num, run, resume_file)
    distributed.teardown()


def restarts_round_zero(run: RunDir, args: argparse.Namespace, files: StageFiles) -> bool:
    """--resume of a round 0 that stopped before its first checkpoint: seg_backbone_imp0.pth (written
    before training) holds the state it started from, so it starts again from there, as the sweep does."""
    return (args.resume and args.imp_num == 0 and not args.test_only and not args.continue_training
            and os.path.isfile(imp_file_path(args.save_dir, 0))
            and not os.path.isfile(run.file(files.checkpoint_of(0))) and not run.metrics())


def check_round_inputs(save_dir: str, round_index: int, continuing: bool) -> None:
    """Round k needs round 0's starting state and round k's mask; a fresh round must not
    overwrite a finished one's output."""
    if round_index > 0:
        for needed, writer in ((0, 0), (round_index, round_index - 1)):
            path = imp_file_path(save_dir, needed)
            if not os.path.isfile(path):
                raise UserError(f"round {round_index} needs '{path}', written by round {writer}: run "
                                f"--imp_num {writer} first with the same --save_dir")
    if continuing:
        return
    # Round 0 writes the rewind point seg_backbone_imp0.pth; every round writes the next round's file.
    written = [imp_file_path(save_dir, 0)] if round_index == 0 else []
    written.append(imp_file_path(save_dir, round_index + 1))
    for path in written:
        if not os.path.isfile(path):
            continue
        raise UserError(f"'{path}' already exists: round {round_index} of this --save_dir has started; "
                        f"pass --resume to continue it (from its latest checkpoint, or from its start if it "
                        f"stopped before the first), or choose another --save_dir")


def imp_round(task: Task, round_index: int, run: RunDir, resume_file: str | None) -> None:
    """One IMP round: start (or rewind), train, prune the last model, write the next round's files."""
    args, ctx = task.args, task.ctx
    save_dir = args.save_dir
    strategy = BackbonePruning(args.rate)
    model = build_model(task)
    start_file = imp_file_path(save_dir, 0)
    if args.ckpt and not args.continue_training:  # --test_only of a checkpoint
        load_ckpt_weights(model, args.ckpt, strategy)
    elif round_index == 0 and not os.path.isfile(start_file):
        load_start_weights(model, task)
        if ctx.is_main and not args.test_only:
            os.makedirs(save_dir, exist_ok=True)
            save_imp_file(start_file, model)  # pre-trained backbone, head at init: every round's rewind point
    else:
        if round_index > 0:
            masks, _ = backbone_masks(imp_file_path(save_dir, round_index))
            strategy.apply_ticket(model, masks)
        restore_parts(model, start_file, first_conv=True, classifier=True, backbone=True)  # rewind
    if args.test_only:
        return test_only(task, model, run, strategy)
    if ctx.is_main:
        print(f"IMP round {round_index}: {strategy.remaining(model):.2f}% of backbone conv weights remain",
              file=sys.stderr)
    progress = train_run(task, model, run, resume_file, strategy, round_index, {"imp_num": round_index})
    remaining = strategy.remaining(model)
    if ctx.is_main:
        record_summary(save_dir, summary_row(progress, round_index, remaining, exp=args.exp, kind="imp",
                                             **task.precision.describe()),
                       "round", lambda row: "IMP", f"{args.model} on {args.dataset}: IMP ({task.source.name})")
    strategy.prune(model, seed=args.seed * 7919 + round_index)
    if ctx.is_main:
        save_ticket(os.path.join(save_dir, ticket_name(round_index + 1)), strategy.masks(model),
                    round=round_index + 1, prune_type="pt_trans", random_prune=False, conv1=False, seed=args.seed,
                    experiment=task.session.run.experiment["id"],
                    source=os.path.abspath(save_dir), arch=args.model.split("_", 1)[1], dataset=args.dataset,
                    pretraining=task.source.name, model=args.model)
        save_imp_file(imp_file_path(save_dir, round_index + 1), model)  # written last: the round is done
        if not args.keep_checkpoints:
            drop_resumable_checkpoint(run.file(stage_files(args).checkpoint_of(0)))
        print(f"round {round_index} done: {imp_file_path(save_dir, round_index + 1)} holds "
              f"{strategy.remaining(model):.2f}% of the backbone conv weights", flush=True)
    distributed.barrier()


def imp_sweep(args: argparse.Namespace, source: Source, hparams) -> None:
    """Rounds 0..imp_rounds-1 in one command; with --resume, finished rounds are skipped and the
    interrupted one continues from its latest checkpoint."""
    RunDir(args.save_dir).check_location()
    started = os.path.isfile(imp_file_path(args.save_dir, 0))
    if started and not args.resume:
        raise UserError(f"'{args.save_dir}' already holds an IMP run; pass --resume to continue it or "
                        f"choose another --save_dir")
    exp = args.exp
    files = stage_files(args)
    session, task = open_run(args, source, "imp", RunDir(args.save_dir), None, hparams)
    for round_index in range(args.imp_rounds):
        if os.path.isfile(imp_file_path(args.save_dir, round_index + 1)):
            continue  # finished
        args.exp = f"{exp}_{round_index}"
        run = RunDir(os.path.join(args.save_dir, args.exp), is_main=session.ctx.is_main)
        latest = run.file(files.checkpoint_of(0))
        resume_file = latest if os.path.isfile(latest) else None
        if resume_file is None and (run.metrics() if session.ctx.is_main else False):
            raise UserError(f"'{run.path}' holds logs but no checkpoint; move it away to rerun round {round_index}")
        check_round_inputs(args.save_dir, round_index, True)
        imp_round(task, round_index, run, resume_file)
    args.exp = exp
    if session.ctx.is_main:
        print(f"done: {args.imp_rounds} rounds; summary.jsonl and miou_vs_remaining.png are in {args.save_dir}")
    distributed.teardown()


# --------------------------------------------------------------------------------------------
# Transfer
# --------------------------------------------------------------------------------------------

def transfer_main(args: argparse.Namespace, source: Source) -> None:
    check_args(args, "transfer")
    hparams = SEGMENTATION_HPARAMS["transfer", source.name].from_args(args)
    finish_args(args, source, "transfer")
    run = RunDir(os.path.join(args.save_dir, args.exp))
    resume_file = None if args.test_only else resume_file_of(run, args, stage_files(args))
    session, task = open_run(args, source, "transfer", run, resume_file, hparams)
    strategy = BackbonePruning(PRUNE_RATE)
    model = build_model(task)
    mask_meta = {}
    if args.ckpt and not args.continue_training:
        load_ckpt_weights(model, args.ckpt, strategy)
    elif not resume_file:
        load_start_weights(model, task)
        mask_meta = apply_transfer_mask(model, args, strategy)
    elif args.mask_dir:  # resumed: the checkpoint holds the weights and masks
        mask_meta = plain_meta(backbone_masks(args.mask_dir)[1])
    kind = transfer_kind(args, pruned=strategy.remaining(model) < 100.0)
    if session.ctx.is_main:
        print(f"{kind}: {strategy.remaining(model):.2f}% of backbone conv weights remain", file=sys.stderr)
    if args.test_only:
        test_only(task, model, run, strategy)
        return distributed.teardown()
    control = ticket_kind(args.mask_dir, args.reverse_mask, args.random_prune, pretrained=args.pretrained != NO_WEIGHTS)
    progress = train_run(task, model, run, resume_file, strategy, 0,
                         {"mask_dir": args.mask_dir, "mask_meta": mask_meta},
                         controls=controls_record(control, args.mask_dir, mask_meta) if control else None)
    if session.ctx.is_main:
        row = summary_row(progress, 0, strategy.remaining(model), exp=args.exp, kind=kind, mask_dir=args.mask_dir,
                          ckpt=args.ckpt, **task.precision.describe(), ticket_round=mask_meta.get("round"))
        record_summary(args.save_dir, row, "exp", lambda item: item.get("kind", "ticket"),
                       f"{args.model} on {args.dataset}: {source.name} weights")
    distributed.teardown()


def transfer_kind(args: argparse.Namespace, pruned: bool) -> str:
    """The summary row's kind (one curve each); without --mask_dir the model says it (--ckpt of a
    pruned model, or a run resumed from one, is not dense)."""
    if not args.mask_dir:
        return "pruned checkpoint" if pruned else "dense"
    if args.random_prune:
        return "random pruning"
    return "reversed ticket" if args.reverse_mask else "ticket"


def apply_transfer_mask(model: nn.Module, args: argparse.Namespace, strategy: BackbonePruning) -> dict:
    """The --mask_dir mask (reversed with --reverse_mask) on the backbone, or random pruning at its sparsity."""
    if not args.mask_dir:
        return {}
    masks, meta = backbone_masks(args.mask_dir)
    if args.reverse_mask:
        masks = pruning.reverse_mask(masks)
    if args.random_prune:
        rate = 1.0 - pruning.mask_remaining(masks) / 100.0
        if rate > 0:
            pruning.global_prune(strategy.target(model), rate, random=True, generator_seed=args.seed)
    else:
        strategy.apply_ticket(model, masks)
    return plain_meta(meta)


def plain_meta(meta: dict) -> dict:
    """The numbers and strings of a mask's metadata (checkpoint-safe)."""
    return {key: value for key, value in meta.items() if isinstance(value, (int, float, str))}


# --------------------------------------------------------------------------------------------
# Entry points of the six scripts
# --------------------------------------------------------------------------------------------

def imp_entry(source_name: str, argv: list[str] | None = None) -> None:
    source = SOURCES[source_name]
    cli.run_main(lambda args: imp_main(args, source), get_args_parser("imp", source), argv)


def transfer_entry(source_name: str, argv: list[str] | None = None) -> None:
    source = SOURCES[source_name]
    cli.run_main(lambda args: transfer_main(args, source), get_args_parser("transfer", source), argv)
