"""What the detection entry scripts share: their flags (the original's config values), and the data,
model, loaders, training config, step and evaluator they hand to the shared core."""

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
from Detection.model import BACKBONE_CHANNELS, CONV_TYPES, YOLOv4
from lth import cli, validate
from lth.checkpoint import append_jsonl, read_jsonl
from lth.distributed import Context, per_process_batch, per_process_eval_batch
from lth.engine import Precision, StepResult, unwrap
from lth.errors import UserError
from lth.loaders import DeviceLoader, Loaders
from lth.models import MOCO_ENCODER_HELP, MOCO_ENCODERS
from lth.plots import plot_accuracy_vs_remaining, plot_training_curves
from lth.runs import SUMMARY
from lth.trainer import Objective, StageProgress, TrainConfig, train_stage

PRETRAINED_TYPES = ("imagenet", "moco", "simclr")
# The original's weight files (train_imp.py); its ImageNet weights came from a torchvision download
# (never done here): the file torchvision stored them in.
DEFAULT_WEIGHTS = {"imagenet": "weight/resnet50-19c8e357.pth", "moco": "weight/moco_v2_800ep_pretrain.pth.tar",
                   "simclr": "weight/simclr_weight.pt"}
OBJECTIVE = Objective("ap", higher_is_better=True, lists=("class_ap50",), val_prefix="")
CHECKPOINT_FORMAT = "lth-detection"
# Flags that make a resumed or continued run a different experiment (beyond the trainer's own).
IDENTITY = ("arch", "conv_type", "dataset", "img_size", "epochs", "batch_size", "accumulate", "lr_init",
            "lr_end", "warmup_epochs", "lr_schedule", "momentum", "weight_decay", "seed", "pretrained", "rate",
            "moco_encoder")


def default_save_dir(seed: int, kind: str, job: str) -> str:
    """The original's output folder: ``seed{S}_{type}_{imp|transfer|random}_ckpt``."""
    return f"seed{seed}_{kind}_{job}_ckpt"


def add_common_args(parser: argparse.ArgumentParser, mask_dir: bool = False, trains: bool = True) -> None:
    """Data, model, training and evaluation flags with the original's defaults, the run flags, and
    the original's flags that do nothing here (``mask_dir``: its ignored --mask_dir of train_imp/train_random)."""
    d = config.DEFAULTS
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", default="voc", choices=task.DATASETS,
                      help="voc: VOC07+12 trainval / VOC07 test read from the XML under --data_root; lists: the "
                           "original's train_annotation.txt/test_annotation.txt; digits: the embedded set "
                           "(scikit-learn digits on canvases, no files)")
    data.add_argument("--data_root", default="data",
                      help="folder holding VOCdevkit/VOC2007 and VOCdevkit/VOC2012 (the original's DATA_PATH)")
    data.add_argument("--train_list", default=None, help="--dataset lists: the training annotation list")
    data.add_argument("--test_list", default=None,
                      help="--dataset lists: the test annotation list; its images are scored against the VOC "
                           "XML beside them (../Annotations, difficult objects ignored) as the original's "
                           "evaluator did, or against the list's boxes (said on one line) where there is none")
    data.add_argument("--digits_canvas", type=int, default=64, help="--dataset digits: canvas side in pixels")
    data.add_argument("--digits_counts", type=_counts, default=_counts(",".join(map(str, task.DIGITS_COUNTS.values()))),
                      help="--dataset digits: canvases in its train,val,test splits")
    model = parser.add_argument_group("model")
    model.add_argument("--arch", default="resnet50", choices=sorted(BACKBONE_CHANNELS),
                       help="backbone (the original's Resnet50-YOLOv4; resnet18 for CPU demos and tests)")
    model.add_argument("--conv_type", default=d["conv_type"], choices=CONV_TYPES,
                       help="neck/head convs: general (what the original's ResNet-50 model really used) or "
                            "do_conv (what its config named; DO-Conv)")
    model.add_argument("--pretrained", default=None,
                       help="backbone weights (torchvision state_dict, MoCo v2 checkpoint, simclr_weight.pt, any "
                            "file the core reads); default the original's weight/ file of the type; 'none': "
                            "random init. Never downloaded")
    model.add_argument("--moco_encoder", default="k", choices=MOCO_ENCODERS,
                       help=MOCO_ENCODER_HELP + " (the original's train_imp.py MoCo loader did the same)")
    train = parser.add_argument_group("training (the original's config/yolov4_config.py values)")
    train.add_argument("--epochs", type=int, default=d["epochs"],
                       help="epochs per round (the original trained 120: Mobilenet_YOLO_EPOCHS applies to "
                            "Resnet50-YOLOv4; 50 is the config's YOLO_EPOCHS)")
    train.add_argument("--batch_size", type=int, default=d["batch_size"],
                       help="training batch size (the original's BATCH_SIZE); " + cli.BATCH_HELP)
    train.add_argument("--accumulate", type=int, default=d["accumulate"],
                       help="optimizer step when batch index %% accumulate == 0, as the original (gradients "
                            "of the batches in between summed)")
    train.add_argument("--img_size", type=int, default=d["img_size"], help="training and test input side (pixels)")
    train.add_argument("--lr_init", type=float, default=d["lr_init"], help="peak learning rate of SGD")
    train.add_argument("--lr_end", type=float, default=d["lr_end"], help="final learning rate of the cosine")
    train.add_argument("--warmup_epochs", type=float, default=d["warmup_epochs"], help="linear warm-up epochs")
    train.add_argument("--lr_schedule", default="as_run", choices=config.LR_SCHEDULES,
                       help="as_run: the original's scheduler index (divided by the batch size: a saw-tooth "
                            "warm-up, then about lr_init to the end); as_meant: warm-up then cosine to lr_end")
    train.add_argument("--momentum", type=float, default=d["momentum"], help="SGD momentum (the original's MOMENTUM)")
    train.add_argument("--weight_decay", type=float, default=d["weight_decay"], help="SGD weight decay")
    evaluation = parser.add_argument_group("evaluation")
    evaluation.add_argument("--eval_interval", type=int, default=0,
                            help="evaluate every this many epochs; 0: once, after the last epoch of each "
                                 "round (the original). On VOC and lists, whose only evaluation split is VOC07 "
                                 "test, each round reports its last evaluation, never the best one")
    evaluation.add_argument("--eval_batch_size", type=int, default=None,
                            help="evaluation batch size (default: --batch_size)")
    evaluation.add_argument("--conf_thresh", type=float, default=d["conf_thresh"],
                            help="keep boxes whose confidence x class probability exceeds this")
    evaluation.add_argument("--nms_thresh", type=float, default=d["nms_thresh"],
                            help="per-class NMS drops boxes whose GIoU with a kept one exceeds this")
    evaluation.add_argument("--multi_scale_val", action="store_true",
                            help="test at 320/416/512/608 px and merge (the config's MULTI_SCALE_VAL; the "
                                 "original's reported AP never used it)")
    evaluation.add_argument("--flip_val", action="store_true",
                            help="also test the flipped image (the config's FLIP_VAL; never used by the original)")
    cli.add_runtime_args(parser, save_dir="", workers=2)
    parser.set_defaults(seed=config.DEFAULTS["seed"])
    parser.add_argument("--resume_all", dest="resume", action="store_true",
                        help="the original's spelling of --resume")
    parser.add_argument("--gpu_id", dest="gpu", help="the original's spelling of --gpu")
    if trains:
        parser.add_argument_group("disk").add_argument(
            "--keep_checkpoints", action="store_true",
            help="keep every finished round's resumable checkpoint (model and optimizer, 1.4 GB on "
                 "ResNet-50) and best-model copy; by default a finished round keeps only what the "
                 "original kept (backbone_imp{k+1}.pth, or backbone_random{k}.pth) and its ticket, "
                 "and eval.py rebuilds the round's model from them")
    add_original_flags(parser, mask_dir=mask_dir)


def add_original_flags(parser: argparse.ArgumentParser, mask_dir: bool = False) -> None:
    """The original's flags that have no job here: accepted so that its command lines run, each
    said on one line when given (``original_flag_notices``)."""
    group = parser.add_argument_group("the original's flags (accepted; see each)")
    group.add_argument("--weight_path", default=None,
                       help="ignored: the original's ResNet-50 model never read it (only its --resume looked for "
                            "last.pt beside it); weights come from --pretrained")
    group.add_argument("--log_path", default=None,
                       help="ignored: the original's log.txt and tensorboard folder; here run.json, metrics.jsonl "
                            "and summary.jsonl in --save_dir hold the log")
    group.add_argument("--fp_16", type=_truth, default=None, metavar="BOOL",
                       help="the original's mixed-precision switch (apex fp16, which crashed there): true trains "
                            "in bf16 autocast (--precision bf16; evaluation stays fp32), false changes nothing")
    if mask_dir:
        parser.set_defaults(mask_dir_ignored=True)
        group.add_argument("--mask_dir", default=None,
                           help="ignored, as in the original's train_imp.py/train_random.py: IMP reads its own "
                                "backbone_imp{k}.pth; a mask is transferred with train_transfer.py --mask_dir")


def _truth(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got '{text}'")


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


def _counts(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",")]
    except ValueError:
        counts = []
    if len(counts) != 3 or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"expected three positive counts train,val,test, got '{text}'")
    return counts


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
                                    digits_counts=dict(zip(task.DIGITS_COUNTS, args.digits_counts)))
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
    train = DeviceLoader(DetectionTrainSet(data.train, len(data.class_names), args.img_size, seed=args.seed),
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


def stage_kwargs(setup: Setup) -> dict:
    return {"step": detection_step, "evaluator": setup.evaluation}


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


def train_single(args: argparse.Namespace, session, setup: Setup, stage: int, prepare, sweep_dir: str,
                 label: str, row_extra: dict) -> dict:
    """One training of a fixed mask (transfer, random pruning): ``prepare()`` puts the mask on the
    fresh model (skipped on --resume, where the checkpoint brings it), then the core trains and
    evaluates; the run's summary row goes to its own summary.jsonl and to the sweep folder's."""
    strategy = task.DetectionPruning(config.DEFAULTS["prune_rate"])
    run, ctx = session.run, session.ctx
    if args.resume:
        progress, optimizer_state, scheduler_state = session.restore(setup.model, CHECKPOINT_FORMAT, args,
                                                                     apply_masks=strategy.restore)
    else:
        prepare()
        progress, optimizer_state, scheduler_state = StageProgress(), None, None
    remaining = strategy.remaining(setup.model)
    if ctx.is_main:
        print(f"{label}: {remaining:.2f}% of the backbone's conv weights remain", file=sys.stderr)
    progress = train_stage(setup.model, setup.loaders, setup.train_cfg, session.precision, ctx, run, stage=stage,
                           progress=progress, optimizer_state=optimizer_state, scheduler_state=scheduler_state,
                           checkpoint_extra=lambda: {"format": CHECKPOINT_FORMAT, "args": vars(args),
                                                     "arch": args.arch, "dataset": args.dataset},
                           remaining=remaining, **stage_kwargs(setup))
    row = {**progress.summary_row(stage, remaining, setup.train_cfg.objective), **row_extra,
           **session.precision.describe()}
    if ctx.is_main:
        run.log_round(row)
        plot_training_curves(progress.history, run.file("net_train.png"), title=f"{label}: {remaining:.2f}% remain",
                             ylabel="AP (%)", xlabel="evaluation")
        record_sweep_point(sweep_dir, row, label.split(" ")[0], f"YOLOv4-{args.arch} on {args.dataset}")
        print(f"done: {label}: AP {row['reported']:.2f} at {remaining:.2f}% remaining; outputs in {run.path}")
    return row
