"""What the detection entry scripts share: the data, model, loaders, training config, step and
evaluator they hand to the shared core (their flags: Detection/hparams.py)."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import sys
from dataclasses import dataclass

import torch
import torch.nn as nn

from Detection import config, task
from Detection.data import (DetectionEvalSet, DetectionTrainSet, eval_collate, train_collate)
from Detection.evaluate import DetectionEvaluator
from Detection.imp_files import keep_trained_pruned_convs, read_backbone_imp, save_backbone_imp, start_round_from
from Detection.model import YOLOv4
from Detection.task import DetectionPruning
from lth import validate
from lth.checkpoint import append_jsonl, read_jsonl
from lth.distributed import Context, per_process_batch, per_process_eval_batch
from lth.engine import Precision, StepResult, unwrap
from lth.errors import UserError
from lth.imp import CHECKPOINT_FORMAT as IMP_FORMAT
from lth.imp import LRR, ImpConfig
from lth.loaders import DeviceLoader, Loaders
from lth.plots import plot_accuracy_vs_remaining
from lth.runs import SUMMARY
from lth.session import Session
from lth.task import Task
from lth.trainer import Objective, StageFiles, StageProgress, TrainConfig

# The original's weight files (train_imp.py); its ImageNet weights came from a torchvision download
# (never done here): the file torchvision stored them in.
DEFAULT_WEIGHTS = {"imagenet": "weight/resnet50-19c8e357.pth", "moco": "weight/moco_v2_800ep_pretrain.pth.tar",
                   "simclr": "weight/simclr_weight.pt"}
OBJECTIVE = Objective("ap", higher_is_better=True, lists=("class_ap50",), val_prefix="", label="AP (%)")
CHECKPOINT_FORMAT = "lth-detection"


def default_save_dir(seed: int, kind: str, job: str) -> str:
    """The original's output folder: ``seed{S}_{type}_{imp|transfer|random}_ckpt``."""
    return f"seed{seed}_{kind}_{job}_ckpt"


def original_flag_notices(args: argparse.Namespace) -> list[str]:
    """Apply the original's flags that mean something here (--fp_16) and say what each given one does."""
    notices = []
    flags = ("weight_path", "log_path") + (("mask_dir",) if getattr(args, "mask_dir_ignored", False) else ())
    for flag in flags:
        if getattr(args, flag, None) is not None:
            notices.append(f"notice: --{flag} is ignored: {IGNORED_ORIGINAL_FLAGS[flag]}")
    if getattr(args, "fp_16", None):
        args.precision = "bf16"
        notices.append("notice: --fp_16: training runs in bf16 autocast (--precision bf16); evaluation stays fp32")
    return notices


IGNORED_ORIGINAL_FLAGS = {
    "weight_path": "the original's ResNet-50 model never read it; backbone weights come from --pretrained",
    "log_path": "the log is run.json, metrics.jsonl and summary.jsonl in --save_dir",
    "mask_dir": "an IMP round reads backbone_imp{k}.pth from --save_dir (train_transfer.py --mask_dir transfers a mask)",
}


def check_args(args: argparse.Namespace) -> None:
    notices = original_flag_notices(args)
    if os.environ.get("RANK", "0") == "0":
        for line in notices:
            print(line, file=sys.stderr)
    for name in ("epochs", "batch_size", "accumulate", "img_size"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name} must be at least 1, got {getattr(args, name)}")
    if args.img_size % 32:
        raise UserError(f"--img_size must be a multiple of 32, got {args.img_size}")
    if args.eval_interval < 0:
        raise UserError(f"--eval_interval must be 0 or more, got {args.eval_interval}")
    validate.check_shared(args)
    validate.check_positive("lr_init", args.lr_init)
    validate.check_nonneg("lr_end", args.lr_end)
    validate.check_nonneg("warmup_epochs", args.warmup_epochs)
    validate.check_fraction("conf_thresh", args.conf_thresh)
    validate.check_fraction("nms_thresh", args.nms_thresh)
    if args.eval_batch_size is not None and args.eval_batch_size < 1:
        raise UserError(f"--eval_batch_size must be at least 1, got {args.eval_batch_size}")


def resolve_pretrained(args: argparse.Namespace, kind: str) -> str | None:
    """The backbone weight file: --pretrained, or the original's default for ``kind``; None: random."""
    path = args.pretrained if args.pretrained is not None else DEFAULT_WEIGHTS[kind]
    if path.lower() in ("none", ""):
        return None
    if not os.path.isfile(path):
        raise UserError(f"pre-trained weights '{path}' do not exist (nothing is downloaded): give the "
                        f"{kind} file with --pretrained, or --pretrained none for a random backbone")
    return path


class Evaluation:
    """The core's evaluator for detection: detect on this rank's shard, gather, write the comp4
    files of this evaluation under ``result_base`` (``pred_result`` for the first split, then
    ``pred_result_test``) and return ``ap``, ``ap50``, ``ap75``, ``class_ap50``..."""

    def __init__(self, records: dict, class_names, args: argparse.Namespace, ctx: Context, precision: Precision,
                 result_base: str):
        self.records, self.class_names, self.args = records, class_names, args
        self.ctx, self.precision, self.result_base = ctx, precision, result_base

    def result_dir(self, desc: str) -> str:
        return os.path.join(self.result_base, "pred_result" if desc == "val" else f"pred_result_{desc}")

    def __call__(self, model: nn.Module, loader, desc: str) -> dict:
        evaluator = DetectionEvaluator(self.records[desc], self.class_names, self.args.conf_thresh,
                                       self.args.nms_thresh, flip=self.args.flip_val)
        with self.precision.eval_autocast(self.ctx.device):
            metrics = task.run_evaluation(unwrap(model), loader, evaluator, self.result_dir(desc),
                                          progress=self.ctx.is_main)
        return as_percent(metrics)


def as_percent(metrics: dict) -> dict:
    """The evaluator's AP figures (fractions, as its comp4 files give them) in %, as the paper plots them."""
    out = {"ap": 100.0 * metrics["ap"], "ap50": 100.0 * metrics["ap50"], "ap75": 100.0 * metrics["ap75"],
           "class_ap50": {name: round(100.0 * value, 4) for name, value in metrics["class_ap50"].items()},
           "ap_by_threshold": {key: 100.0 * value for key, value in metrics["ap_by_threshold"].items()}}
    out["detections"] = float(metrics.get("detections", 0))
    return out


def detection_step(model: nn.Module, batch) -> StepResult:
    """The original's loss on one batch, its parts logged as train_ciou / train_conf / train_cls."""
    out = task.loss_step(model, batch)
    return StepResult(out["loss"], None, int(batch["image"].shape[0]),
                      parts={name: out[name] for name in ("ciou", "conf", "cls")})


@dataclass
class Setup:
    data: task.DetectionData
    model: YOLOv4
    loaders: Loaders
    train_cfg: TrainConfig
    evaluation: Evaluation
    pretrained_backbone: dict  # the backbone's weights before any training: the rewind point


def build(args: argparse.Namespace, ctx: Context, precision: Precision, kind: str, result_base: str,
          weights_follow: bool = False) -> Setup:
    """Data, model (pre-trained backbone loaded), loaders, training config and evaluator of a run;
    ``weights_follow``: every weight comes from a saved model afterwards (eval.py)."""
    pretrained = resolve_pretrained(args, kind)
    args.pretrained = pretrained or "none"
    data = task.load_detection_data(args.dataset, args.data_root, seed=args.seed, canvas=args.digits_canvas,
                                    train_list=args.train_list, test_list=args.test_list,
                                    digits_counts=dict(zip(task.DIGITS_COUNTS, args.digits_counts)),
                                    digits_scales=args.digits_scales)
    if data.note and ctx.is_main:
        print(data.note, file=sys.stderr)
    torch.manual_seed(args.seed)
    model = YOLOv4(len(data.class_names), args.arch, conv_type=args.conv_type)
    if pretrained:
        task.load_backbone_weights(model, pretrained, quiet=not ctx.is_main, moco_encoder=args.moco_encoder)
    elif ctx.is_main and not weights_follow:
        print("notice: --pretrained none: the backbone starts from random weights", file=sys.stderr)
    pretrained_backbone = {key: value.detach().clone() for key, value in model.backbone.state_dict().items()}
    model = model.to(ctx.device)
    if precision.channels_last:
        model = model.to(memory_format=torch.channels_last)
    workers = args.workers
    common = dict(seed=args.seed, ctx=ctx, workers=workers, channels_last=precision.channels_last)
    train = DeviceLoader(DetectionTrainSet(data.train, len(data.class_names), args.img_size, seed=args.seed,
                                           flip=data.flip, mixup_p=0.5 if data.mixup else 0.0),
                         per_process_batch(args.batch_size, ctx), train=True, drop_last=False,
                         collate_fn=train_collate, **common)
    sizes = config.MULTI_SCALE_VAL_SIZES if args.multi_scale_val else None
    eval_batch = per_process_eval_batch(args.eval_batch_size or args.batch_size, ctx)

    def eval_loader(records):
        return DeviceLoader(DetectionEvalSet(records, args.img_size, sizes=sizes), eval_batch, train=False,
                            collate_fn=eval_collate, **common)

    # VOC (as the original) evaluates on VOC07 test only; the digits set has a validation split too.
    val_records = data.val if data.val is not None else data.test
    records = {"val": val_records, "test": data.test}
    loaders = Loaders(train=train, val=eval_loader(val_records),
                      test=eval_loader(data.test) if data.val is not None else None)
    objective = OBJECTIVE
    if data.val is None:  # VOC and lists: VOC07 test is the only evaluation split
        objective = dataclasses.replace(OBJECTIVE, select_last=True)
        if args.eval_interval and args.eval_interval < args.epochs and ctx.is_main:
            print(f"notice: --eval_interval {args.eval_interval}: VOC07 test is also the validation split, so "
                  f"each round reports its last evaluation (not the best of several test-set evaluations)",
                  file=sys.stderr)
    batches = len(train)
    if batches == 0:
        raise UserError("the training set yields no batch")

    def lr_factor(step: int) -> float:  # the original's rate at batch i of epoch e, over lr_init
        epoch, index = divmod(step, batches)
        return config.learning_rate(epoch, index, batches, schedule=args.lr_schedule, epochs=args.epochs,
                                    batch_size=args.batch_size, lr_init=args.lr_init, lr_end=args.lr_end,
                                    warmup_epochs=args.warmup_epochs) / args.lr_init

    step_after = (functools.partial(_steps_after, accumulate=args.accumulate) if args.accumulate > 1 else None)
    train_cfg = TrainConfig(epochs=args.epochs, lr=args.lr_init, momentum=args.momentum,
                            weight_decay=args.weight_decay, warmup=0, milestones=[], print_freq=args.print_freq,
                            compile=args.compile, objective=objective, step_after=step_after, lr_factor=lr_factor,
                            eval_every=args.eval_interval or args.epochs)
    evaluation = Evaluation(records, data.class_names, args, ctx, precision, result_base)
    return Setup(data, model, loaders, train_cfg, evaluation, pretrained_backbone)


def _steps_after(index: int, accumulate: int) -> bool:
    return config.accumulation_steps_here(index, accumulate)


def record_sweep_point(sweep_dir: str, row: dict, label: str, title: str, is_main: bool = True) -> None:
    """Add one finished run (a mask or sparsity level) to the sweep folder's summary.jsonl and
    redraw its ap_vs_remaining.png from every run recorded there (the latest row per round)."""
    if not is_main:
        return
    os.makedirs(sweep_dir, exist_ok=True)
    path = os.path.join(sweep_dir, SUMMARY)
    append_jsonl(row, path)
    latest = {item["round"]: item for item in read_jsonl(path) if "round" in item}
    points = sorted((item["remaining"], item["reported"]) for item in latest.values())
    plot_accuracy_vs_remaining({label: points}, os.path.join(sweep_dir, "ap_vs_remaining.png"), title=title,
                               ylabel="AP (%, IoU 0.50:0.95)")


class DetectionTask(Task):
    """YOLOv4 on a ResNet backbone judged by AP (IoU 0.50:0.95), from the ``kind`` of pre-trained backbone.

    ``imp`` (train_imp.py): rounds in --save_dir, each evaluated into ``model{k}``, the original's
    ``backbone_imp{k}.pth`` after each prune and read by a later command (``--imp_num k``).
    Otherwise one training of a fixed mask (transfer, random pruning) whose summary row also goes
    to the sweep folder; ``label`` names it ("transfer 3", "random 2").
    """
    files = StageFiles(curves="net_train.png")

    def __init__(self, hparams: argparse.Namespace, kind: str, result_base: str, imp: bool = False,
                 sweep_dir: str | None = None, label: str = "", row_extra: dict | None = None):
        super().__init__(hparams)
        self.kind, self.result_base, self.imp = kind, result_base, imp
        self.sweep_dir, self.label, self.row_extra = sweep_dir, label, row_extra or {}
        self.checkpoint_format = IMP_FORMAT if imp else CHECKPOINT_FORMAT
        if imp:
            self.files = StageFiles()

    def build(self, session: Session) -> None:
        self.session = session
        self.setup = build(self.hparams, session.ctx, session.precision, self.kind, self.result_base)
        self.loaders, self.model, self.cfg = self.setup.loaders, self.setup.model, self.setup.train_cfg
        rate = self.hparams.rate if self.imp else config.DEFAULTS["prune_rate"]
        self.strategy = DetectionPruning(rate, pretrained=self.setup.pretrained_backbone,
                                         prune_type=getattr(self.hparams, "prune_type", None) or "pt_trans")

    def step(self, model: nn.Module, batch) -> StepResult:
        return detection_step(model, batch)

    def evaluate(self, model: nn.Module, loader, desc: str) -> dict:
        return self.setup.evaluation(model, loader, desc)

    def checkpoint_extra(self, progress: StageProgress) -> dict:
        return {} if self.imp else {"arch": self.hparams.arch, "dataset": self.hparams.dataset}

    # -- one training of a fixed mask -------------------------------------------------------------
    def summary_row(self, progress: StageProgress, stage: int, remaining: float) -> dict:
        if self.imp:
            return super().summary_row(progress, stage, remaining)
        return {**progress.summary_row(stage, remaining, self.objective), **self.row_extra,
                **self.session.precision.describe()}

    def record_summary(self, row: dict, progress: StageProgress) -> None:
        super().record_summary(row, progress)
        if not self.imp:
            record_sweep_point(self.sweep_dir, row, self.label.split(" ")[0],
                               f"YOLOv4-{self.hparams.arch} on {self.hparams.dataset}")

    def curves_title(self, stage: int, remaining: float) -> str:
        return f"{self.label}: {remaining:.2f}% remain" if not self.imp else super().curves_title(stage, remaining)

    def finished(self, progress: StageProgress, row: dict) -> None:
        print(f"done: {self.label}: AP {row['reported']:.2f} at {row['remaining']:.2f}% remaining; "
              f"outputs in {self.run.path}")

    # -- IMP -----------------------------------------------------------------------------------------
    def imp_config(self) -> ImpConfig:
        args = self.hparams
        return ImpConfig(rounds=args.imp_num + args.rounds, seed=args.seed,
                         meta={"arch": args.arch, "dataset": args.dataset, "task": "detection",
                               "imp_type": args.imp_type}, keep_finished=args.keep_checkpoints)

    def begin_round(self, stage: int) -> None:
        if self.imp:  # each round's comp4 files in model{k}, as the original's
            self.setup.evaluation.result_base = self.run.file(f"model{stage}")
        elif self.session.ctx.is_main:
            print(f"{self.label}: {self.strategy.remaining(self.model):.2f}% of the backbone's conv weights remain",
                  file=sys.stderr)

    def save_round(self, model: nn.Module, next_round: int) -> None:
        """The original's backbone_imp{k+1}.pth: the trained model with the new masks, before the rewind."""
        if self.session.ctx.is_main:
            save_backbone_imp(self.run.file(f"backbone_imp{next_round}.pth"), model, next_round - 1)

    def load_round(self, model: nn.Module, round_index: int) -> bool:
        """Round k of its own command: backbone_imp{k}.pth's trained tensors and masks (the original's
        overlap load, which leaves the pruned convs at their pre-trained weights; with --prune_type lrr they
        keep their trained weights, and ImpRun does not rewind)."""
        if round_index == 0:
            return False
        previous = read_backbone_imp(self.run.file(f"backbone_imp{round_index}.pth"))
        report = start_round_from(model, previous)
        if self.strategy.prune_type == LRR:  # the pruned convs too continue from their trained weights
            keep_trained_pruned_convs(model, previous)
            report["rewound"] = []
        if self.session.ctx.is_main:
            print(f"round {round_index}: {report['loaded']} tensors continue from round {round_index - 1}; "
                  f"{len(report['rewound'])} pruned backbone convs rewound to the pre-trained weights",
                  file=sys.stderr)
        return True
