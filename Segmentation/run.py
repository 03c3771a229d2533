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
from lth.cost import Cost
from lth.errors import UserError
from lth.imp import BackbonePruning, training_curve_labels
from lth.loaders import DeviceLoader, Loaders
from lth.models import MOCO_ENCODER_HELP, MOCO_ENCODERS, load_pretrained
from lth.plots import plot_accuracy_vs_remaining, plot_training_curves
from lth.runs import SUMMARY, RunDir, ticket_name
from lth.session import Session, check_same_experiment, open_session
from lth.trainer import Objective, StageFiles, StageProgress, TrainConfig, restore_stage, train_stage
from lth.tickets import save_ticket
from Segmentation import data as segdata
from Segmentation.imp_files import (backbone_masks, drop_resumable_checkpoint, imp_file_path, restore_parts,
                                    save_imp_file)
from Segmentation.loss import LOSS_TYPES, build_loss
from Segmentation.model import MODELS, build_segmentation_model
from Segmentation.task import evaluate as evaluate_segmentation
from Segmentation.task import make_step
from Segmentation.visual import PredictionWriter, palette_for

FORMAT = "lth-segmentation"
OBJECTIVE = Objective("miou", higher_is_better=True, lists=("class_iou",), val_prefix="")
PRUNE_RATE = 0.2  # of the remaining backbone conv weights, per round (the original's)
IMP_ROUNDS = 19  # the original's sweeps run rounds 0..18
NO_WEIGHTS = "none"
# Where torchvision's download (the original's pretrained_backbone=True) leaves each backbone's weights.
TORCHVISION_FILES = {"resnet50": "resnet50-19c8e357.pth", "resnet101": "resnet101-5d3b4d8f.pth",
                     "resnet18": "resnet18-5c106cde.pth"}
# Identity flags of a segmentation run beyond the trainer's (a resume must keep them).
RUN_FLAGS = ("rate", "model", "output_stride", "separable_conv", "crop_size", "crop_val", "year", "total_itrs",
             "val_interval", "lr_policy", "step_size", "loss_type", "imp_num", "exp", "moco_encoder",
             "label_pad")


@dataclass(frozen=True)
class Source:
    """What one pre-training's scripts hard-code: its weights and its IMP folder."""
    name: str
    weights: str | None  # the original's path; None: torchvision's cached file for the backbone
    imp_dir: str  # the original's OUTDIR, formatted with the seed
    imp_validates_second_half_only: bool


SOURCES = {
    "imagenet": Source("imagenet", None, "seed{seed}_imp_outbackbone", False),
    "moco": Source("moco", "./moco_v2_800ep_pretrain.pth.tar", "seed{seed}_imp_moco_outbackbone", True),
    "simclr": Source("simclr", "./simclr_pretrain.pth", "seed{seed}_imp_simclr_outbackbone", True),
}


def default_weights(source: Source, model: str) -> str:
    if source.weights is not None:
        return source.weights
    arch = model.split("_", 1)[1]
    if arch not in TORCHVISION_FILES:
        raise UserError(f"torchvision has no pre-trained {arch}: give its weights with --pretrained (or 'none')")
    return os.path.join(torch.hub.get_dir(), "checkpoints", TORCHVISION_FILES[arch])


# --------------------------------------------------------------------------------------------
# Flags (the original's args.py, with its defaults)
# --------------------------------------------------------------------------------------------

def get_args_parser(mode: str, source: Source) -> argparse.ArgumentParser:
    """``mode`` is ``imp`` or ``transfer``."""
    what = ("Find a DeepLabV3+ segmentation ticket by IMP of the backbone" if mode == "imp" else
            "Train DeepLabV3+ with a backbone ticket (transfer)")
    parser = cli.ArgumentParser(description=f"{what}, from {source.name} pre-trained weights "
                                            f"(the original's Segmentation/main_{mode}_{source.name}.py).")
    parser.add_argument("exp", help="name of the run: its folder under --save_dir (the original's "
                                    "checkpoints/EXP); without --imp_num, round k runs in EXP_k")
    if mode == "imp":
        group = parser.add_argument_group("IMP")
        group.add_argument("--imp_num", type=int, default=None,
                           help="the round to run: 0 saves the starting state (seg_backbone_imp0.pth) and "
                                "trains; k loads seg_backbone_imp{k}.pth's mask, rewinds to round 0, trains; "
                                "each round prunes --rate of the remaining backbone conv weights and writes "
                                "seg_backbone_imp{k+1}.pth. Omitted: rounds 0..--imp_rounds-1 in one command")
        group.add_argument("--rate", type=float, default=PRUNE_RATE,
                           help="fraction of the remaining backbone conv weights pruned after each round "
                                "(the original's 0.2: round k keeps 0.8^k)")
        group.add_argument("--imp_rounds", type=int, default=IMP_ROUNDS,
                           help="rounds run without --imp_num (finished ones are skipped with --resume)")
        group.add_argument("--keep_checkpoints", action="store_true",
                           help="keep a finished round's resumable EXP/latest_*.pth (model and optimizer); by "
                                "default a finished round keeps seg_backbone_imp{k+1}.pth, its ticket and "
                                "EXP/best_*.pth (the best validation model)")
        group.add_argument("--mask_dir", default=None,
                           help="the original's flag, ignored as there: round k reads the mask of "
                                "seg_backbone_imp{k}.pth in --save_dir (transfer a mask with main_transfer_*.py)")
    else:
        group = parser.add_argument_group("ticket")
        group.add_argument("--mask_dir", default="",
                           help="the backbone mask: seg_backbone_imp{n}.pth, a ticket_XX.pt of any IMP "
                                "script, the original's mask-{i}.pt, or a pruned checkpoint; dense "
                                "training when empty")
        group.add_argument("--reverse_mask", action="store_true",
                           help="train the complement of the mask (1 - mask): the reversed-mask control")
        group.add_argument("--random_prune", action="store_true",
                           help="prune the backbone convs (conv1 excepted) globally at random to the "
                                "mask's sparsity instead of using the mask: the random-pruning control")
        group.add_argument("--imp_num", type=int, default=None,
                           help="the original's flag, ignored as there (its transfer scripts never read it); "
                                "the mask is --mask_dir")
    group = parser.add_argument_group("data")
    group.add_argument("--data_root", default="./datasets/data",
                       help="folder holding VOCdevkit/VOC2012 (voc) or leftImg8bit and gtFine (cityscapes)")
    group.add_argument("--dataset", default="voc", choices=list(segdata.DATASETS),
                       help="digits is the embedded set (digits pasted on 32x32 canvases, 11 classes)")
    group.add_argument("--num_classes", type=int, default=None,
                       help="accepted as the original's; the data set fixes it (21 voc, 19 cityscapes, "
                            "11 digits) and another value is an error")
    group.add_argument("--year", default="2012", choices=list(segdata.VOC_YEARS),
                       help="VOC: 2012 (SegmentationClass) or 2012_aug (SegmentationClassAug, train_aug.txt)")
    group.add_argument("--crop_val", action="store_true",
                       help="validate on the shorter side resized to --crop_size then centre-cropped "
                            "(default: full images)")
    group.add_argument("--crop_size", type=int, default=513, help="training (and --crop_val) crop size")
    group.add_argument("--label_pad", type=int, default=segdata.ORIGINAL_LABEL_PAD, choices=list(segdata.LABEL_PADS),
                       help="label of the pixels padded around a training image smaller than --crop_size: 0 "
                            "(background, the original's: 23.5 %% of VOC's training label pixels at 513) or 255 "
                            "(ignored by the loss)")
    group.add_argument("--download", action="store_true",
                       help="accepted as the original's, but refused: data sets are never downloaded; "
                            "place them under --data_root")
    group = parser.add_argument_group("model")
    group.add_argument("--model", default="deeplabv3plus_resnet50", choices=list(MODELS),
                       help="head and backbone (resnet18: CPU demos and tests)")
    group.add_argument("--separable_conv", action="store_true",
                       help="depthwise-separable convs in ASPP and decoder (DeepLabV3+ only)")
    group.add_argument("--output_stride", type=int, default=16, choices=[8, 16],
                       help="16: layer4 dilated, ASPP rates 6/12/18; 8: layer3 and 4, rates 12/24/36")
    group.add_argument("--pretrained", default=None,
                       help=f"backbone weights to start from ({source.name}; conv1 included, fc dropped); "
                            f"default: {_weights_note(source)}; never downloaded; "
                            f"'{NO_WEIGHTS}' starts from random init")
    group.add_argument("--dict_key", default=None,
                       help="entry of the --pretrained file that holds the weights (default: "
                            "'state_dict' when present, else the whole file)")
    group.add_argument("--moco_encoder", default="k", choices=MOCO_ENCODERS,
                       help=MOCO_ENCODER_HELP + " (the original's main_*_moco.py did the same)")
    group = parser.add_argument_group("training (the original's defaults)")
    group.add_argument("--test_only", action="store_true",
                       help="evaluate on val (--ckpt, or the model a run would start training from), "
                            "print the scores and exit; writes only --save_val_results")
    group.add_argument("--save_val_results", action="store_true",
                       help="at each evaluation write {image_id}_image.png, _target.png, _pred.png (palette, at "
                            "the label's size) and _overlay.png (prediction over the image at alpha 0.7), as the "
                            "original meant to, into EXP/results, replacing the previous evaluation's")
    group.add_argument("--lr", type=float, default=0.01, help="head learning rate; the backbone trains at 0.1x")
    group.add_argument("--weight_decay", type=float, default=1e-4, help="SGD weight decay (momentum 0.9)")
    group.add_argument("--batch_size", type=int, default=16,
                       help="training batch size (at least 2 per process: batch norm after ASPP's image pooling "
                            "sees one value per channel per image); " + cli.BATCH_HELP)
    group.add_argument("--val_batch_size", type=int, default=4,
                       help="validation batch size; images of different sizes (VOC without --crop_val) are "
                            "predicted each at its own size, so the scores do not depend on it")
    group.add_argument("--loss_type", default="cross_entropy", choices=list(LOSS_TYPES),
                       help="cross-entropy ignoring 255, or the original's focal loss")
    group.add_argument("--ckpt", default=None,
                       help="checkpoint to start from (this toolkit's, or the original's with "
                            "'model_state'); with --continue_training its optimizer, schedule and "
                            "iteration too")
    group.add_argument("--continue_training", action="store_true",
                       help="continue the --ckpt run where it stopped (needs a checkpoint of this toolkit)")
    group.add_argument("--sync_bn", action="store_true",
                       help="under torchrun, synchronise batch-norm statistics across processes")
    iterations = cli.add_iteration_args(parser, total_itrs=30000, val_interval=100, lr_policies=("poly", "step"))
    iterations.add_argument("--step_size", type=int, default=10000,
                            help="--lr_policy step: learning rate x0.1 every this many iterations")
    cli.add_runtime_args(parser, workers=2, save_dir="",
                         names={"seed": ("--random_seed",), "gpu": ("--gpu_id",), "print_freq": ("--print_interval",)})
    parser.set_defaults(seed=1, print_freq=10)
    group = parser.add_argument_group("visdom (accepted as the original's; ignored: metrics.jsonl and plots replace it)")
    group.add_argument("--enable_vis", action="store_true", help="the original's visdom switch; ignored with a notice")
    group.add_argument("--vis_port", default="13570", help="the original's visdom port; ignored")
    group.add_argument("--vis_env", default="main", help="the original's visdom environment; ignored")
    group.add_argument("--vis_num_samples", type=int, default=8,
                       help="the original's number of images shown in visdom; ignored")
    outputs = (f"the original's {source.imp_dir.format(seed='S')} with S = --random_seed" if mode == "imp"
               else "checkpoints (the original's)")
    _set_help(parser, "save_dir", f"folder of the run(s); each run writes into SAVE_DIR/EXP (default: {outputs})")
    _set_help(parser, "seed", "random seed (0 is valid): model init, data order, augmentation")
    _set_help(parser, "lr_policy", "poly: lr x (1 - itr/total_itrs)^0.9; step: x0.1 every --step_size iterations")
    _set_help(parser, "print_freq", "update the progress bar's loss every this many iterations")
    _set_help(parser, "resume", "continue the run in SAVE_DIR/EXP from its latest checkpoint (without "
                                "--imp_num: continue the IMP sweep, skipping finished rounds)")
    return parser


def _weights_note(source: Source) -> str:
    if source.weights is None:
        return "torchvision's resnet file in $TORCH_HOME/hub/checkpoints (e.g. resnet50-19c8e357.pth)"
    return source.weights


def _set_help(parser: argparse.ArgumentParser, dest: str, text: str) -> None:
    for action in parser._actions:
        if action.dest == dest:
            action.help = text


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
    cfg = TrainConfig.from_args(args, epochs=0, momentum=0.9, warmup=0, milestones=milestones,
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
              stage: int, extra: dict) -> StageProgress:
    """Train one run (a round or a transfer) in ``run`` from scratch or from ``resume_file``."""
    args, ctx = task.args, task.ctx
    files = stage_files(args)
    progress, optimizer_state, scheduler_state = StageProgress(), None, None
    if resume_file:
        check_same_experiment(run, args, RUN_FLAGS)
        checkpoint, progress = restore_stage(model, run, FORMAT, vars(args), False, resume_file,
                                             apply_masks=strategy.restore)
        optimizer_state, scheduler_state = checkpoint.get("optimizer"), checkpoint.get("scheduler")
    distributed.barrier()
    run.stamp = task.precision.describe()
    run.start(vars(args), bool(resume_file))

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


def summary_row(progress: StageProgress, stage: int, remaining: float, spent_before: Cost = Cost(), **extra) -> dict:
    """The core's summary row plus the original's two printed figures: best and last validation mIoU.
    ``spent_before``: the training cost of the IMP rounds before (lth.cost)."""
    row = progress.summary_row(stage, remaining, OBJECTIVE, spent_before=spent_before)
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
             resume_file: str | None) -> tuple[Session, Task]:
    """Device, process group and seed (core set-up), then data, loaders and the training config."""
    session = open_session(args, run, resume_file)
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
    finish_args(args, source, "imp")
    if args.imp_num is None:
        return imp_sweep(args, source)
    run = RunDir(os.path.join(args.save_dir, args.exp))
    files = stage_files(args)
    if restarts_round_zero(run, args, files):
        resume_file = None
        print(f"notice: round 0 stopped before its first checkpoint: it starts again from "
              f"{imp_file_path(args.save_dir, 0)}", file=sys.stderr)
    else:
        resume_file = None if args.test_only else resume_file_of(run, args, files)
    check_round_inputs(args.save_dir, args.imp_num, args.resume or args.test_only)
    session, task = open_run(args, source, "imp", run, resume_file)
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
        # Each round is its own run: the cost of the rounds before is in their summary rows.
        earlier = [row for row in read_jsonl(os.path.join(save_dir, SUMMARY))
                   if row.get("kind") == "imp" and row.get("round", 0) < round_index]
        before = Cost.from_row(max(earlier, key=lambda row: row.get("round", 0))) if earlier else Cost()
        record_summary(save_dir, summary_row(progress, round_index, remaining, spent_before=before, exp=args.exp,
                                             kind="imp", **task.precision.describe()),
                       "round", lambda row: "IMP", f"{args.model} on {args.dataset}: IMP ({task.source.name})")
    strategy.prune(model, seed=args.seed * 7919 + round_index)
    if ctx.is_main:
        save_ticket(os.path.join(save_dir, ticket_name(round_index + 1)), strategy.masks(model),
                    round=round_index + 1, prune_type="pt_trans", random_prune=False, conv1=False, seed=args.seed,
                    source=os.path.abspath(save_dir), arch=args.model.split("_", 1)[1], dataset=args.dataset,
                    pretraining=task.source.name, model=args.model)
        save_imp_file(imp_file_path(save_dir, round_index + 1), model)  # written last: the round is done
        if not args.keep_checkpoints:
            drop_resumable_checkpoint(run.file(stage_files(args).checkpoint_of(0)))
        print(f"round {round_index} done: {imp_file_path(save_dir, round_index + 1)} holds "
              f"{strategy.remaining(model):.2f}% of the backbone conv weights", flush=True)
    distributed.barrier()


def imp_sweep(args: argparse.Namespace, source: Source) -> None:
    """Rounds 0..imp_rounds-1 in one command; with --resume, finished rounds are skipped and the
    interrupted one continues from its latest checkpoint."""
    RunDir(args.save_dir).check_location()
    started = os.path.isfile(imp_file_path(args.save_dir, 0))
    if started and not args.resume:
        raise UserError(f"'{args.save_dir}' already holds an IMP run; pass --resume to continue it or "
                        f"choose another --save_dir")
    exp = args.exp
    files = stage_files(args)
    session, task = open_run(args, source, "imp", RunDir(args.save_dir), None)
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
    finish_args(args, source, "transfer")
    run = RunDir(os.path.join(args.save_dir, args.exp))
    resume_file = None if args.test_only else resume_file_of(run, args, stage_files(args))
    session, task = open_run(args, source, "transfer", run, resume_file)
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
    progress = train_run(task, model, run, resume_file, strategy, 0,
                         {"mask_dir": args.mask_dir, "mask_meta": mask_meta})
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
