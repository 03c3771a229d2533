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
import dataclasses
import math
import os
import sys
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn

from lth import cli, distributed, pruning, validate
from lth.checkpoint import atomic_write_text, jsonl_text, load_file, locked, read_jsonl
from lth.engine import StepResult
from lth.errors import UserError
from lth.hparams import controls_record, ticket_kind
from lth.imp import LRR, BackbonePruning, ImpConfig, ImpRun, Moment
from lth.loaders import DeviceLoader, Loaders
from lth.models import load_pretrained
from lth.once import train_once
from lth.plots import plot_accuracy_vs_remaining
from lth.runs import SUMMARY, RunDir
from lth.session import check_same_experiment, open_session
from lth.task import Task
from lth.trainer import Objective, StageFiles, StageProgress, TrainConfig
from Segmentation import data as segdata
from Segmentation.hparams import NO_WEIGHTS, PRUNE_RATE, SEGMENTATION_HPARAMS, SOURCES, Source  # noqa: F401
from Segmentation.imp_files import (backbone_masks, drop_resumable_checkpoint, imp_file_path, save_imp_file,
                                    start_weights)
from Segmentation.loss import build_loss
from Segmentation.model import build_segmentation_model
from Segmentation.task import evaluate as evaluate_segmentation
from Segmentation.task import make_step
from Segmentation.visual import PredictionWriter, palette_for

FORMAT = "lth-segmentation"
OBJECTIVE = Objective("miou", higher_is_better=True, lists=("class_iou",), val_prefix="", label="mIoU (%)")
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
# The task
# --------------------------------------------------------------------------------------------

class SegmentationPruning(BackbonePruning):
    """The original's segmentation IMP: global L1 pruning of the backbone's convs (conv1 never), and
    every round starting from ``seg_backbone_imp0.pth`` (the pre-trained backbone with the head at
    its init) under the round's mask: that file is the rewind point, read whenever a run starts
    or resumes (it is never copied into the round folders)."""

    def __init__(self, rate: float, start_file: str, prune_type: str = "pt_trans"):
        super().__init__(rate, prune_type=prune_type)
        self.start_file = start_file

    def rewind_point(self, imp, moment: Moment) -> dict | None:
        if moment.kind in ("start", "resume"):
            return self.start_state(imp.model)
        return None

    def start_state(self, model: nn.Module) -> dict:
        distributed.barrier()  # rank 0 may have just written it
        return start_weights(self.start_file, model)


class SegmentationTask(Task):
    """DeepLabV3(+) on a segmentation data set, judged by mIoU; ``mode`` is ``imp`` or ``transfer``.

    IMP keeps the original's layout: the run of round k in its own folder (``session.run``: the
    checkpoints, metrics.jsonl, run.json, net_train.png), the IMP files, tickets, summary.jsonl and
    miou_vs_remaining.png in --save_dir (``outputs``). A transfer run's summary row also goes to
    --save_dir's summary.jsonl, one line per EXP.
    """
    checkpoint_format = FORMAT

    def __init__(self, hparams: argparse.Namespace, source: Source, mode: str, resume_file: str | None = None):
        super().__init__(hparams)
        self.source, self.mode, self.resume_file = source, mode, resume_file
        self.files = stage_files(hparams)
        self.round_index = hparams.imp_num if mode == "imp" else 0
        self.mask_meta: dict = {}
        self._writers: dict[str, PredictionWriter | None] = {}

    @property
    def start_file(self) -> str:
        return imp_file_path(self.hparams.save_dir, 0)

    @property
    def outputs(self) -> RunDir:
        return RunDir(self.hparams.save_dir, is_main=self.session.ctx.is_main)

    # -- data, model, training ---------------------------------------------------------------
    def make_loaders(self) -> Loaders:
        self.data, loaders = segmentation_loaders(self.hparams, self.session)
        return loaders

    def make_model(self) -> nn.Module:
        """The network, its random init drawn from the seed (the head's init is part of the run),
        with the weights it starts from: --ckpt's (evaluation), the pre-trained backbone (round 0,
        then saved as seg_backbone_imp0.pth), or a transfer's pre-trained backbone under its mask."""
        args, ctx = self.hparams, self.session.ctx
        torch.manual_seed(args.seed)
        model = build_segmentation_model(args.model, self.data.num_classes, args.output_stride, args.separable_conv)
        if args.sync_bn and ctx.distributed:
            if ctx.device.type != "cuda":
                raise UserError("--sync_bn needs CUDA devices (torch's SyncBatchNorm does not run on the CPU)")
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model = model.to(ctx.device)
        if self.session.precision.channels_last:
            model = model.to(memory_format=torch.channels_last)
        strategy = BackbonePruning(PRUNE_RATE)
        if args.ckpt and not args.continue_training:
            load_ckpt_weights(model, args.ckpt, strategy)
        elif self.mode == "imp" and not os.path.isfile(self.start_file):
            self.load_start_weights(model)
            if not args.test_only:
                if ctx.is_main:  # pre-trained backbone, head at init: every round's rewind point
                    os.makedirs(args.save_dir, exist_ok=True)
                    save_imp_file(self.start_file, model)
                distributed.barrier()
        elif self.mode == "transfer" and not self.resume_file:
            self.load_start_weights(model)
            self.mask_meta = apply_transfer_mask(model, args, strategy)
        elif self.mode == "transfer" and args.mask_dir:  # resumed: the checkpoint holds weights and masks
            self.mask_meta = plain_meta(backbone_masks(args.mask_dir)[1])
        return model

    def load_start_weights(self, model: nn.Module) -> None:
        """The pre-trained backbone (conv1 included, fc dropped), or random init with ``--pretrained none``."""
        args = self.hparams
        if args.pretrained == NO_WEIGHTS:
            return
        if not os.path.isfile(args.pretrained):
            raise UserError(f"pre-trained weights '{args.pretrained}' not found (they are never downloaded): "
                            f"pass --pretrained PATH, or --pretrained {NO_WEIGHTS} to start from random init")
        load_pretrained(model.backbone, args.pretrained, args.dict_key, conv1=True, quiet=not self.session.ctx.is_main,
                        moco_encoder=args.moco_encoder)

    def train_config(self) -> TrainConfig:
        args = self.hparams
        eval_from = 0
        if self.mode == "imp" and self.source.imp_validates_second_half_only:
            eval_from = math.ceil(args.total_itrs / 2)
        # StepLR(step_size, gamma=0.1): x0.1 at every multiple of step_size (the last one included, so the
        # scheduler state at the end matches the original's too)
        milestones = (list(range(args.step_size, args.total_itrs + 1, args.step_size))
                      if args.lr_policy == "step" else [])
        return TrainConfig.from_args(args, epochs=0, momentum=0.9, warmup=0, milestones=milestones,
                                     lr_policy="multistep" if args.lr_policy == "step" else args.lr_policy,
                                     lr_scales={"backbone.": 0.1}, objective=OBJECTIVE, eval_from=eval_from)

    def make_strategy(self) -> BackbonePruning:
        if self.mode == "imp":
            return SegmentationPruning(self.hparams.rate, self.start_file, prune_type=self.hparams.prune_type or "pt_trans")
        return BackbonePruning(PRUNE_RATE)

    def step(self, model: nn.Module, batch) -> StepResult:
        if not hasattr(self, "_step"):
            self._step = make_step(build_loss(self.hparams.loss_type))
        return self._step(model, batch)

    def evaluate(self, model: nn.Module, loader, desc: str) -> dict:
        """mIoU and the other scores; with --save_val_results also the predictions of val."""
        writer = self.prediction_writer() if desc == "val" else None
        return evaluate_segmentation(model, loader, self.session.ctx, self.session.precision, self.data.num_classes,
                                     writer=writer, desc=desc)

    def prediction_writer(self) -> PredictionWriter | None:
        """--save_val_results: EXP/results/{image_id}_pred.png, rewritten at every evaluation (under
        torchrun each rank writes the images of its shard)."""
        if not self.hparams.save_val_results:
            return None
        if self.run.path not in self._writers:
            self._writers[self.run.path] = PredictionWriter(self.run.file("results"), self.data.val.ids,
                                                            palette_for(self.hparams.dataset))
        return self._writers[self.run.path]

    # -- what its runs write ---------------------------------------------------------------------
    def checkpoint_extra(self, progress: StageProgress) -> dict:
        args = self.hparams
        extra = ({"imp_num": self.round_index} if self.mode == "imp" else
                 {"mask_dir": args.mask_dir, "mask_meta": self.mask_meta})
        return {"model": args.model, "dataset": args.dataset, "output_stride": args.output_stride, **extra,
                "cur_itrs": progress.next_itr, "best_score": max(progress.best_val, 0.0) / 100.0}

    def summary_row(self, progress: StageProgress, stage: int, remaining: float) -> dict:
        """The core's row plus the original's two printed figures (best and last validation mIoU)."""
        args, precision = self.hparams, self.session.precision.describe()
        row = progress.summary_row(stage, remaining, OBJECTIVE)
        row.update(best_miou=progress.best_val, last_miou=progress.history["ta"][-1], exp=args.exp)
        if self.mode == "imp":
            row.update(kind="imp", **precision)
        else:
            row.update(kind=self.kind, mask_dir=args.mask_dir, ckpt=args.ckpt, **precision,
                       ticket_round=self.mask_meta.get("round"))
        return row

    @property
    def kind(self) -> str:
        """A transfer run's kind (one curve each in miou_vs_remaining.png)."""
        return transfer_kind(self.hparams, pruned=self.strategy.remaining(self.model) < 100.0)

    def record_summary(self, row: dict, progress: StageProgress) -> None:
        history = progress.history
        print(f"Last mIoU: {history['ta'][-1]:.4f}\nBest mIoU: {progress.best_val:.4f} (itr {progress.best_epoch})",
              flush=True)
        args = self.hparams
        if self.mode == "imp":
            with locked(self.outputs.file(SUMMARY)):  # --save_dir's summary may be shared with other jobs
                super().record_summary(row, progress)
        else:
            record_summary(args.save_dir, row, "exp", lambda item: item.get("kind", "ticket"),
                           f"{args.model} on {args.dataset}: {self.source.name} weights")

    def curves_title(self, stage: int, remaining: float) -> str:
        return f"{self.hparams.exp}: {remaining:.2f}% of backbone conv weights remain"

    # -- IMP: one round per run folder ------------------------------------------------------------
    def imp_config(self) -> ImpConfig:
        args = self.hparams
        return ImpConfig(rounds=self.round_index + 1, seed=args.seed, rewind_store="task", start_ticket=False,
                         title=f"{args.model} on {args.dataset}: IMP ({self.source.name})",
                         meta={"arch": args.model.split("_", 1)[1], "dataset": args.dataset,
                               "pretraining": self.source.name, "model": args.model})

    def begin_round(self, stage: int) -> None:
        if self.mode == "imp" and self.session.ctx.is_main:
            print(f"IMP round {stage}: {self.strategy.remaining(self.model):.2f}% of backbone conv weights remain",
                  file=sys.stderr)

    def load_round(self, model: nn.Module, round_index: int) -> bool:
        """Round k's mask from seg_backbone_imp{k}.pth (round 0: none); ImpRun then rewinds to round 0's file.
        With --prune_type lrr round k > 0 takes the file's trained weights too (ImpRun does not rewind)."""
        if round_index > 0:
            path = imp_file_path(self.hparams.save_dir, round_index)
            masks, _ = backbone_masks(path)
            self.strategy.apply_ticket(model, masks)
            if self.strategy.prune_type == LRR:
                self.strategy.rewind(model, start_weights(path, model))
        return True

    def save_round(self, model: nn.Module, next_round: int) -> None:
        """seg_backbone_imp{k+1}.pth, written last: the round is done."""
        if self.session.ctx.is_main:
            path = imp_file_path(self.hparams.save_dir, next_round)
            save_imp_file(path, model)
            if not self.hparams.keep_checkpoints:
                drop_resumable_checkpoint(self.run.file(self.files.checkpoint_of(0)))
            print(f"round {next_round - 1} done: {path} holds {self.strategy.remaining(model):.2f}% of the "
                  f"backbone conv weights", flush=True)
        distributed.barrier()


def segmentation_loaders(args: argparse.Namespace, session) -> tuple[segdata.SegmentationData, Loaders]:
    """The data set and its loaders (``--batch_size`` the global batch); sets ``args.num_classes``."""
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
    return data, Loaders(train=loader(data.train, train_batch, True),
                         val=loader(data.val, val_batch, False),
                         test=loader(data.test, val_batch, False) if data.test is not None else None,
                         num_classes=data.num_classes)


def stage_files(args: argparse.Namespace) -> StageFiles:
    """The original's checkpoint names: ``latest_`` (resumable) and ``best_{model}_{dataset}_os{16}.pth``."""
    tail = f"{args.model}_{args.dataset}_os{args.output_stride}.pth"
    return StageFiles(checkpoint="latest_" + tail, best="best_" + tail, curves="net_train.png")


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


def test_only(task: SegmentationTask) -> None:
    """--test_only: evaluate val once, print, write nothing but --save_val_results."""
    result = task.evaluate(task.model, task.loaders.val, "val")
    if task.session.ctx.is_main:
        print_scores(result, f"val ({task.strategy.remaining(task.model):.2f}% of backbone conv weights remain)")


def open_task(args: argparse.Namespace, source: Source, mode: str, run: RunDir,
              resume_file: str | None, hparams) -> SegmentationTask:
    """Device, process group and seed (core set-up), then data, model and training config.
    ``hparams`` are the script's as parsed (before ``finish_args`` fills in weights and folders)."""
    # --test_only writes nothing: no experiment to check against.
    session = open_session(args, run, resume_file, hparams=hparams, continuing=False if args.test_only else None)
    task = SegmentationTask(args, source, mode, resume_file)
    task.build(session)
    return task


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
    task = open_task(args, source, "imp", run, resume_file, hparams)
    if args.test_only:
        if not args.ckpt and os.path.isfile(task.start_file):  # the model round imp_num starts training from
            task.load_round(task.model, args.imp_num)
            task.strategy.rewind(task.model, task.strategy.start_state(task.model))
        test_only(task)
    else:
        imp_round(task, args.imp_num, resume_file)
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


def imp_round(task: SegmentationTask, round_index: int, resume_file: str | None) -> None:
    """One IMP round in the task's run folder: ImpRun from round ``round_index`` (or the checkpoint)."""
    args = task.hparams
    task.round_index = round_index
    if resume_file:
        check_same_experiment(task.run, task.session.hparams, args.seed)
    task.session.record(args, resumed=bool(resume_file))
    imp = ImpRun(task, args, task.session)
    if resume_file:
        imp.resume(resume_file)
    else:
        imp.start(first_round=round_index)


def imp_sweep(args: argparse.Namespace, source: Source, hparams) -> None:
    """Rounds 0..imp_rounds-1 in one command, each in EXP_k; with --resume, finished rounds are
    skipped and the interrupted one continues from its latest checkpoint."""
    RunDir(args.save_dir).check_location()
    started = os.path.isfile(imp_file_path(args.save_dir, 0))
    if started and not args.resume:
        raise UserError(f"'{args.save_dir}' already holds an IMP run; pass --resume to continue it or "
                        f"choose another --save_dir")
    exp = args.exp
    files = stage_files(args)
    session = open_session(args, RunDir(args.save_dir), None, hparams=hparams)
    task = SegmentationTask(args, source, "imp")
    task.session = session
    task.loaders = task.make_loaders()
    task.cfg = task.train_config()
    for round_index in range(args.imp_rounds):
        if os.path.isfile(imp_file_path(args.save_dir, round_index + 1)):
            continue  # finished
        args.exp = f"{exp}_{round_index}"
        run = RunDir(os.path.join(args.save_dir, args.exp), is_main=session.ctx.is_main)
        run.stamp = session.precision.describe()
        run.hparams, run.experiment = session.run.hparams, session.run.experiment  # every round: one experiment
        latest = run.file(files.checkpoint_of(0))
        resume_file = latest if os.path.isfile(latest) else None
        if resume_file is None and (run.metrics() if session.ctx.is_main else False):
            raise UserError(f"'{run.path}' holds logs but no checkpoint; move it away to rerun round {round_index}")
        check_round_inputs(args.save_dir, round_index, True)
        task.session = dataclasses.replace(session, run=run, resume_file=resume_file)
        task.model = task.make_model()
        task.strategy = task.make_strategy()
        imp_round(task, round_index, resume_file)
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
    task = open_task(args, source, "transfer", run, resume_file, hparams)
    if task.session.ctx.is_main:
        print(f"{task.kind}: {task.strategy.remaining(task.model):.2f}% of backbone conv weights remain",
              file=sys.stderr)
    if args.test_only:
        test_only(task)
        return distributed.teardown()
    if resume_file:
        check_same_experiment(run, task.session.hparams, args.seed)
    control = ticket_kind(args.mask_dir, args.reverse_mask, args.random_prune, pretrained=args.pretrained != NO_WEIGHTS)
    task.session.record(args, resumed=bool(resume_file),
                        controls=controls_record(control, args.mask_dir, task.mask_meta) if control else None)
    train_once(task, args, task.session)
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
