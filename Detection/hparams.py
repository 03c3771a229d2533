"""The experiments of the detection scripts (train_imp, train_random, train_transfer, eval) as typed hparams.

The numbers come from ``Detection.config.DEFAULTS`` (the original's config/yolov4_config.py and
train_imp.py flags, with what its code really ran: see that module's findings); this module says
which flag sets each and what role it has.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from Detection import config
from Detection.model import BACKBONE_CHANNELS, CONV_TYPES
from Detection.task import DATASETS, DIGITS_COUNTS, DIGITS_SCALES
from lth.models import MOCO_ENCODER_HELP, MOCO_ENCODERS
from lth.hparams import BATCH_HELP, EARLY_BIRD, PATH_WHY, RUN, RUNTIME, EarlyBird, Run, hparam, like, lrr_field, workers_field

PRETRAINED_TYPES = ("imagenet", "moco", "simclr")
ORIGINAL = "the original's flags (accepted; see each)"
IGNORED_WHY = "accepted as the original's and ignored (said on one line when given)"
D = config.DEFAULTS
TRAINING = "training (the original's config/yolov4_config.py values)"
ORIGINAL_CONFIG = "original config/yolov4_config.py"


def _integers(text: str) -> list[int]:
    """``"600,100,200"`` as integers; ``[]`` where a part is not one."""
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        return []


def counts(text: str) -> list[int]:
    """``--digits_counts 600,100,200``: canvases in the train, val and test splits."""
    values = _integers(text)
    if len(values) != 3 or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected three positive counts train,val,test, got '{text}'")
    return values


def scales(text: str) -> list[int]:
    """``--digits_scales 2,3``: the factors by which the 8x8 digits are enlarged."""
    values = _integers(text)
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers such as 2,3, got '{text}'")
    return values


# argparse shows the type's name in errors; the flag always had this one.
counts.__name__ = "_counts"


def truth(text: str) -> bool:
    """``--fp_16 true``: the original's type=bool flag, read as the word says."""
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got '{text}'")


truth.__name__ = "_truth"


@dataclass(frozen=True, kw_only=True)
class DetectionCommon(Run):
    """Data, model, training, evaluation and run flags every detection script takes."""
    dataset: str = hparam("voc", "voc: VOC07+12 trainval / VOC07 test read from the XML under --data_root; lists: "
                                 "the original's train_annotation.txt/test_annotation.txt; digits: the embedded set "
                                 "(scikit-learn digits on canvases, no files)", choices=DATASETS, group="data",
                          source="original: VOC07+12 (utils/voc.py); digits and lists are ours")
    data_root: str = hparam("data", "folder holding VOCdevkit/VOC2007 and VOCdevkit/VOC2012 (the original's "
                                    "DATA_PATH)", group="data", role=RUNTIME, why=PATH_WHY,
                            source="original config DATA_PATH")
    train_list: str | None = hparam(None, "--dataset lists: the training annotation list", group="data",
                                    role=RUNTIME, why=PATH_WHY, source="original data/train_annotation.txt")
    test_list: str | None = hparam(None, "--dataset lists: the test annotation list; its images are scored against "
                                         "the VOC XML beside them (../Annotations, difficult objects ignored) as the "
                                         "original's evaluator did, or against the list's boxes (said on one line) "
                                         "where there is none", group="data", role=RUNTIME, why=PATH_WHY,
                                   source="original data/test_annotation.txt")
    digits_canvas: int = hparam(64, "--dataset digits: canvas side in pixels", group="data",
                                source="ours: the CPU demo's set")
    digits_counts: tuple[int, ...] = hparam(tuple(DIGITS_COUNTS.values()), "--dataset digits: canvases in its "
                                                                           "train,val,test splits", type=counts,
                                            group="data", source="ours: the CPU demo's set")
    digits_scales: tuple[int, ...] = hparam(DIGITS_SCALES, "--dataset digits: each digit is enlarged by one of "
                                                           "these factors, drawn at random (8x8 px each; 3 on a 32 "
                                                           "px canvas: one 24 px digit per canvas)", type=scales,
                                            group="data", source="ours: the CPU demo's set")
    arch: str = hparam("resnet50", "backbone (the original's Resnet50-YOLOv4; resnet18_w16 and resnet18 for CPU "
                                   "demos and tests)",
                       choices=tuple(sorted(BACKBONE_CHANNELS)), group="model",
                       source="original MODEL_TYPE Resnet50-YOLOv4")
    conv_type: str = hparam(D["conv_type"], "neck/head convs: general (what the original's ResNet-50 model really "
                                            "used) or do_conv (what its config named; DO-Conv)", choices=CONV_TYPES,
                            group="model", source="Detection/config.py finding 5 (the config's DO_CONV was never used)")
    pretrained: str | None = hparam(
        None, "backbone weights (torchvision state_dict, MoCo v2 checkpoint, simclr_weight.pt, any file the core "
              "reads); default the original's weight/ file of the type; 'none': random init. Never downloaded",
        group="model", filled_in=True, source="original train_imp.py weight/ files (Detection.runner.DEFAULT_WEIGHTS)")
    moco_encoder: str = hparam("k", MOCO_ENCODER_HELP + " (the original's train_imp.py MoCo loader did the same)",
                               choices=MOCO_ENCODERS, group="model",
                               source="original train_imp.py: k[17:] let encoder_k overwrite encoder_q")
    epochs: int = hparam(D["epochs"], "epochs per round (the original trained 120: Mobilenet_YOLO_EPOCHS applies to "
                                      "Resnet50-YOLOv4; 50 is the config's YOLO_EPOCHS)", group=TRAINING,
                         source="Detection/config.py finding 1 (120 as run)")
    batch_size: int = hparam(D["batch_size"], "training batch size (the original's BATCH_SIZE); " + BATCH_HELP,
                             group=TRAINING,
                             source=f"{ORIGINAL_CONFIG} BATCH_SIZE 8")
    accumulate: int = hparam(D["accumulate"], "optimizer step when batch index %% accumulate == 0, as the original "
                                              "(gradients of the batches in between summed)", group=TRAINING,
                             source="original train_imp.py --accumulate 2 (finding 3)")
    img_size: int = hparam(D["img_size"], "training and test input side (pixels)", group=TRAINING,
                           source=f"{ORIGINAL_CONFIG} TRAIN_IMG_SIZE 416")
    lr_init: float = hparam(D["lr_init"], "peak learning rate of SGD", group=TRAINING,
                            source=f"{ORIGINAL_CONFIG} LR_INIT 1e-4")
    lr_end: float = hparam(D["lr_end"], "final learning rate of the cosine", group=TRAINING,
                           source=f"{ORIGINAL_CONFIG} LR_END 1e-6")
    warmup_epochs: float = hparam(D["warmup_epochs"], "linear warm-up epochs", group=TRAINING,
                                  source=f"{ORIGINAL_CONFIG} WARMUP_EPOCHS 2")
    lr_schedule: str = hparam("as_run", "as_run: the original's scheduler index (divided by the batch size: a "
                                        "saw-tooth warm-up, then about lr_init to the end); as_meant: warm-up then "
                                        "cosine to lr_end", choices=config.LR_SCHEDULES, group=TRAINING,
                              source="Detection/config.py finding 2 (what the original ran)")
    momentum: float = hparam(D["momentum"], "SGD momentum (the original's MOMENTUM)", group=TRAINING,
                             source=f"{ORIGINAL_CONFIG} MOMENTUM 0.9")
    weight_decay: float = hparam(D["weight_decay"], "SGD weight decay", group=TRAINING,
                                 source=f"{ORIGINAL_CONFIG} WEIGHT_DECAY 5e-4")
    eval_interval: int = hparam(0, "evaluate every this many epochs; 0: once, after the last epoch of each round "
                                   "(the original). On VOC and lists, whose only evaluation split is VOC07 test, each "
                                   "round reports its last evaluation, never the best one", group="evaluation",
                                source="Detection/config.py finding 4 (once per round)")
    eval_batch_size: int | None = hparam(None, "evaluation batch size (default: --batch_size)", group="evaluation",
                                         role=RUNTIME, why="evaluation only: no gradients; the AP does not depend on it",
                                         source="ours")
    conf_thresh: float = hparam(D["conf_thresh"], "keep boxes whose confidence x class probability exceeds this",
                                group="evaluation", source=f"{ORIGINAL_CONFIG} VAL CONF_THRESH 0.005")
    nms_thresh: float = hparam(D["nms_thresh"], "per-class NMS drops boxes whose GIoU with a kept one exceeds this",
                               group="evaluation", source=f"{ORIGINAL_CONFIG} VAL NMS_THRESH 0.45")
    multi_scale_val: bool = hparam(False, "test at 320/416/512/608 px and merge (the config's MULTI_SCALE_VAL; the "
                                          "original's reported AP never used it)", action="store_true",
                                   group="evaluation", source="Detection/config.py finding 4")
    flip_val: bool = hparam(False, "also test the flipped image (the config's FLIP_VAL; never used by the original)",
                            action="store_true", group="evaluation", source="Detection/config.py finding 4")
    save_dir: str = like(Run, "save_dir", default="", required=False,
                         source="original: seed{S}_{type}_{imp|transfer|random}_ckpt when empty")
    resume: bool = like(Run, "resume", flags=("--resume", "--resume_all"),
                        help="continue the run in --save_dir from its latest checkpoint (--resume_all: the "
                             "original's spelling)", source="original --resume_all")
    seed: int | None = like(Run, "seed", default=D["seed"], source="original --seed 1")
    gpu: str = like(Run, "gpu", flags=("--gpu", "--gpu_id"),
                    help="CUDA device number for a single-process run (ignored on a CPU-only machine and under "
                         "torchrun, where each process takes LOCAL_RANK); --gpu_id is the original's spelling",
                    source="original --gpu_id 0")
    workers: int = workers_field(2, source="ours: 2 reader processes")
    weight_path: str | None = hparam(
        None, "ignored: the original's ResNet-50 model never read it (only its --resume looked for last.pt beside "
              "it); weights come from --pretrained", group=ORIGINAL, role=RUNTIME, why=IGNORED_WHY,
        source="original --weight_path weight/mobilenetv2.pth")
    log_path: str | None = hparam(
        None, "ignored: the original's log.txt and tensorboard folder; here run.json, metrics.jsonl and summary.jsonl "
              "in --save_dir hold the log", group=ORIGINAL, role=RUNTIME, why=IGNORED_WHY,
        source="original --log_path log/")
    fp_16: bool | None = hparam(
        None, "the original's mixed-precision switch (apex fp16, which crashed there): true trains in bf16 autocast "
              "(--precision bf16; evaluation stays fp32), false changes nothing", type=truth, metavar="BOOL",
        group=ORIGINAL, role=RUNTIME, why="sets --precision bf16 (the arithmetic, like --precision)",
        source="original --fp_16 (type=bool)")

    GROUPS = ("data", "model", TRAINING, "evaluation", RUN, ORIGINAL)


@dataclass(frozen=True, kw_only=True)
class DetectionTraining(DetectionCommon):
    """The flags of the detection scripts that train: what a finished round keeps on disk, and the
    original's unused --mask_dir of train_imp.py/train_random.py (``PARSER_DEFAULTS`` marks it ignored)."""
    keep_checkpoints: bool = hparam(
        False, "keep every finished round's resumable checkpoint (model and optimizer, 1.4 GB on ResNet-50) and "
               "best-model copy; by default a finished round keeps only what the original kept (backbone_imp{k+1}.pth, "
               "or backbone_random{k}.pth) and its ticket, and eval.py rebuilds the round's model from them",
        action="store_true", group="disk", role=RUNTIME, why="what is kept on disk",
        source="ours (the original kept every resume.pt)")
    mask_dir: str | None = hparam(
        None, "ignored, as in the original's train_imp.py/train_random.py: IMP reads its own backbone_imp{k}.pth; a "
              "mask is transferred with train_transfer.py --mask_dir", group=ORIGINAL, role=RUNTIME, why=IGNORED_WHY,
        source="original --mask_dir (unused)")
    PARSER_DEFAULTS = {"mask_dir_ignored": True}  # Detection.runner.original_flag_notices says so when given

    GROUPS = ("data", "model", TRAINING, "evaluation", RUN, "disk", ORIGINAL)


@dataclass(frozen=True, kw_only=True)
class DetectionImp(DetectionTraining, EarlyBird):
    """Detection/train_imp.py: IMP of YOLOv4's backbone, one round (or --rounds) per command."""
    TASK = "Detection/train_imp"
    IMP = "IMP (the original's flags)"
    GROUPS = (IMP, EARLY_BIRD, *DetectionTraining.GROUPS)
    imp_type: str = hparam("imagenet", "which pre-trained backbone the tickets start from (and rewind to)",
                           choices=PRETRAINED_TYPES, group=IMP, source="original --imp_type")
    imp_num: int = hparam(0, "the round to train: 0 starts from the pre-trained backbone, k > 0 from "
                             "backbone_imp{k}.pth that round k-1 wrote in --save_dir", group=IMP, role=RUNTIME,
                          why="which rounds of the one IMP run in --save_dir this command trains (its files say "
                              "where the run stands)", source="original --imp_num (its sweeps pass 0..18)")
    rounds: int = hparam(1, "rounds trained by this command, from --imp_num on (19 from 0: the whole IMP)", group=IMP,
                         role=RUNTIME, why="how many rounds this command trains; the IMP run spans commands",
                         source="ours: the original ran one round per command")
    rate: float = hparam(D["prune_rate"], "fraction of the remaining backbone conv weights pruned after each round",
                         group=IMP, source="original: 20% per round (imp_pruning_yolo_resnet50)")
    prune_type: str | None = lrr_field("the pre-trained backbone (its pruned convs; conv1, BN, neck and heads keep "
                                       "their trained values)", IMP)


@dataclass(frozen=True, kw_only=True)
class DetectionRandom(DetectionTraining):
    """Detection/train_random.py: the random-pruning control at sparsity level --imp_num."""
    TASK = "Detection/train_random"
    RANDOM = "random pruning (the original's flags)"
    GROUPS = (RANDOM, *DetectionTraining.GROUPS)
    imp_type: str = hparam("imagenet", "which pre-trained backbone is pruned and trained", choices=PRETRAINED_TYPES,
                           group=RANDOM, source="original --imp_type")
    imp_num: int = hparam(1, "sparsity level k: (1 - --rate)^k of the backbone conv weights remain (0: dense)",
                          group=RANDOM, source="original --imp_num (its random/*.sh pass 1..18)")
    rate: float = hparam(D["prune_rate"], "the IMP rate whose k-th level is matched (0.2: 0.8^k remain)", group=RANDOM,
                         source="original: 1 - 0.8^n")


@dataclass(frozen=True, kw_only=True)
class DetectionTransfer(DetectionCommon):
    """Detection/train_transfer.py: YOLOv4 trained with a fixed backbone mask (a ticket) on pre-trained weights."""
    TASK = "Detection/train_transfer"
    TRANSFER = "transfer (the original's flags)"
    GROUPS = (TRANSFER, "data", "model", TRAINING, "evaluation", RUN, "disk", ORIGINAL)
    transfer_type: str = hparam("imagenet", "which pre-trained backbone the mask is put on", choices=PRETRAINED_TYPES,
                                group=TRANSFER, source="original --transfer_type")
    mask_dir: str = hparam(help="the mask file (the original passes MASKROOT/mask-{i}.pt), or a folder holding "
                                "mask-{i}.pt, ticket_{i:02d}.pt or backbone_imp{i}.pth for i = --mask_num",
                           group=TRANSFER, required=True, source="original --mask_dir (required)")
    mask_num: int = hparam(-1, "the mask's number: names the run's folder model{i} and its summary row",
                           group=TRANSFER, source="original --mask_num -1")
    reverse_mask: bool = hparam(False, "train the complement of the mask (1 - mask): the reversed-mask control",
                                action="store_true", group=TRANSFER, source="ours (the original had no such control "
                                                                              "for detection)")
    keep_checkpoints: bool = like(DetectionTraining, "keep_checkpoints")


@dataclass(frozen=True, kw_only=True)
class DetectionEval(DetectionCommon):
    """Detection/eval.py: evaluate a saved detection model (writes eval.json, no run record)."""
    TASK = "Detection/eval"
    WHAT = "what to evaluate"
    GROUPS = (WHAT, *DetectionCommon.GROUPS)
    checkpoint: str | None = hparam(None, "the model file; default: the model round --imp_num of the IMP run in "
                                          "--save_dir trained: its {imp_num}checkpoint.pth.tar, or (a finished round "
                                          "keeps no checkpoint) backbone_imp{imp_num+1}.pth's weights with round "
                                          "imp_num's masks", group=WHAT, source="ours (the original's --resume_all file)")
    imp_type: str = hparam("imagenet", "with no --checkpoint: the IMP run's type (names its default folder)",
                           choices=PRETRAINED_TYPES, group=WHAT, source="original --imp_type")
    imp_num: int = hparam(0, "with no --checkpoint: the IMP round to evaluate", group=WHAT,
                          source="original --imp_num (its eval sweeps pass 7 and 5)")
    result_dir: str | None = hparam(None, "where the comp4 files and eval.json go (default: eval_{file name} beside "
                                          "the model)", group=WHAT, role=RUNTIME, why=PATH_WHY, source="ours")
