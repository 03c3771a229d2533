"""The experiments of the five classification scripts as typed hparams (defaults, flags, sources).

Shared pieces (data, model, optimisation, ticket) are composed into one frozen dataclass per script;
each default names its source: the original's script and flag (VITA-Group/CV_LTH_Pre-training,
see /work/shared/upstream/inventory.md section 1.1), or "ours" with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass

from lth.cli import milestones
from lth.data import DATASETS
from lth.hparams import (BATCH_HELP, EARLY_BIRD, LRR_HELP, PATH_WHY, PRINT_FREQ_EXAMPLES, RUN, RUNTIME, EarlyBird, Hparams,
                         Run, hparam, like, lrr_field, resume_path, workers_field)
from lth.imp import PRUNE_TYPES, REWIND_TARGETS
from lth.models import ARCHS

OPTIM = "optimisation (the original's defaults)"
# The pytorch/examples spellings of the ImageNet and VisDA originals, beside ours.
EXAMPLES_BATCH = ("-b", "--batch_size", "--batch-size")
EXAMPLES_LR = ("--lr", "--learning-rate")
EXAMPLES_WD = ("--weight_decay", "--wd", "--weight-decay")
EVAL_BATCH_WHY = "evaluation only: no gradients, batch norm in eval mode; the figures do not depend on it"


@dataclass(frozen=True, kw_only=True)
class Data(Hparams):
    """The small data sets of the downstream scripts."""
    GROUPS = ("data",)
    data: str = hparam("../data", "folder holding the data set in torchvision's on-disk layout (ignored for the "
                                  "built-in digits set)", group="data", role=RUNTIME, why=PATH_WHY,
                       source="original main_imp_downstream.py --data ../data")
    dataset: str = hparam("cifar10", "which data set; 'digits' is scikit-learn's 8x8 handwritten digits, shipped "
                                     "inside the package (no files needed)", choices=tuple(DATASETS), group="data",
                          source="original --dataset cifar10 (digits is ours: CPU demos and tests)")
    download: bool = hparam(False, "let torchvision download the data set into --data if it is missing (never done "
                                   "otherwise)", action="store_true", group="data", role=RUNTIME,
                            why="fetches missing files; which data set is --dataset",
                            source="ours: the original always downloaded (download=True)")


@dataclass(frozen=True, kw_only=True)
class Model(Hparams):
    """The CIFAR-stem ResNet of the downstream scripts and what of it is pruned or loaded."""
    GROUPS = ("model",)
    arch: str = hparam("resnet50", "ResNet depth (torchvision definition with the CIFAR 3x3 stem, no max-pool)",
                       choices=ARCHS, group="model", source="original --arch resnet50 (paper: ResNet-50)")
    conv1: bool = hparam(False, "also prune the stem conv1 and load it from pre-trained weights (by default it stays "
                                "dense and keeps its random init)", action="store_true", group="model",
                         source="original --conv1 (off: conv1 is never pruned, inventory section 0)")
    fc: bool = hparam(False, "also load the classifier fc from pre-trained weights (needs the same number of "
                             "classes)", action="store_true", group="model", source="original --fc")


@dataclass(frozen=True, kw_only=True)
class Optim(Hparams):
    """SGD with warm-up and step decay: the downstream scripts' defaults (others override them)."""
    GROUPS = (OPTIM,)
    batch_size: int = hparam(256, "training batch size; " + BATCH_HELP, group=OPTIM,
                             source="original main_imp_downstream.py --batch_size 256")
    eval_batch_size: int | None = hparam(None, "evaluation batch size, global as --batch_size (default: 4x "
                                               "--batch_size; no gradients are kept)", group=OPTIM, role=RUNTIME, why=EVAL_BATCH_WHY,
                                         source="ours (the original evaluated at --batch_size)")
    lr: float = hparam(0.1, "initial learning rate of SGD", group=OPTIM, source="original --lr 0.1")
    momentum: float = hparam(0.9, "SGD momentum factor (0 for plain SGD)", group=OPTIM,
                             source="original --momentum 0.9")
    weight_decay: float = hparam(2e-4, "SGD weight decay", group=OPTIM, source="original --weight_decay 2e-4")
    epochs: int = hparam(182, "training epochs per round", group=OPTIM, source="original --epochs 182")
    warmup: int = hparam(1, "epochs of linear per-step learning-rate warm-up at the start of each round",
                         group=OPTIM, source="original --warmup 1")
    decreasing_lr: tuple[int, ...] = hparam((91, 136), "epochs at which the learning rate is multiplied by 0.1",
                                            type=milestones, group=OPTIM, source="original --decreasing_lr 91,136")


@dataclass(frozen=True, kw_only=True)
class Ticket(Hparams):
    """What a trained ticket is made of: pre-trained weights and a mask."""
    GROUPS = ("ticket",)
    pretrained: str | None = hparam(
        None, "weights to start from (torchvision state_dict, simclr_weight.pt, moco.pt, MoCo v2 checkpoint, or an "
              "IMP checkpoint); random init when omitted", group="ticket", source="original main_eval_downstream.py "
                                                                                  "--pretrained")
    dict_key: str | None = hparam(
        None, "entry of the --pretrained file holding the weights; 'None' uses the whole file (default: "
              "'state_dict' when present, else the whole file)", group="ticket", source="original --dict_key")
    mask_dir: str | None = hparam(
        None, "the ticket's mask: a ticket_XX.pt (from any IMP script), an IMP checkpoint ({round}model_SA_best.pth.tar, "
              "{round}model_best.pth.tar, MoCo/SimCLR checkpoints) or a {layer.weight_mask: tensor} file; dense "
              "training when omitted", group="ticket", source="original --mask_dir")
    reverse_mask: bool = hparam(False, "train the complement of the mask (1 - mask): the reversed-mask control",
                                action="store_true", group="ticket", source="original --reverse_mask")


# --------------------------------------------------------------------------------------------
# The scripts
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class DownstreamImp(Data, Model, Optim, EarlyBird, Run):
    """main_imp_downstream.py: IMP on a small data set (task-specific tickets)."""
    TASK = "main_imp_downstream"
    GROUPS = (None, "data", "model", OPTIM, "pruning", EARLY_BIRD, RUN)
    pruning_times: int = hparam(19, "IMP rounds; round k trains with 0.8^k of the conv weights (at --rate 0.2)",
                                group="pruning", source="original --pruning_times 19 (the 0.8^k grid, k = 0..18)")
    rate: float = hparam(0.2, "fraction of the remaining conv weights pruned after each round, in (0, 1)",
                         group="pruning", source="original --rate 0.2")
    prune_type: str = hparam("lt", "rewind target: " + "; ".join(f"{k}: {v}" for k, v in REWIND_TARGETS.items()),
                             choices=PRUNE_TYPES, group="pruning", source="original --prune_type lt")
    random_prune: bool = hparam(False, "prune at random (the control) instead of by weight magnitude",
                                action="store_true", group="pruning", source="original --random_prune")
    rewind_epoch: int = hparam(9, "for rewind_lt: rewind to the weights after this many epochs of round 0 (1 to "
                                  "--epochs; saved as epoch_{k}_rewind_weight.pt, as in the original)",
                               group="pruning", source="original --rewind_epoch 9 (about 5% of 182 epochs)")
    pretrained: str | None = hparam(
        None, "pre-trained weights to start from and rewind to, for pt_trans (required there): a torchvision "
              "state_dict, simclr_weight.pt, moco.pt, a MoCo v2 checkpoint or an IMP checkpoint; ignored by lt, "
              "rewind_lt and pt, which start from a random init (as in the original)", group="pruning",
        source="original --pretrained")
    dict_key: str | None = hparam(None, "entry of the --pretrained file that holds the weights (default: "
                                        "'state_dict' when present, else the whole file)", group="pruning",
                                  source="ours (the original read 'state_dict' when present)")
    checkpoint: str | None = hparam(None, "with --resume: the checkpoint file to continue from (default: the latest)",
                                    role=RUNTIME, why="which checkpoint of the run to continue from",
                                    source="original --checkpoint")


@dataclass(frozen=True, kw_only=True)
class DownstreamEval(Data, Model, Optim, Ticket, Run):
    """main_eval_downstream.py: train one ticket (weights + mask) on a small data set."""
    TASK = "main_eval_downstream"
    GROUPS = ("data", "model", OPTIM, "ticket", RUN)
    conv1: bool = like(Model, "conv1", help="also mask the stem conv1 (its weights come from --pretrained only with "
                                            "--load_all, as in the original; by default it stays dense)")
    batch_size: int = like(Optim, "batch_size", default=128, source="original main_eval_downstream.py --batch_size 128")
    load_all: bool = hparam(False, "load every weight of --pretrained, fc and conv1 included (shapes must fit); "
                                   "without it conv1 and fc keep their random init, as in the original",
                            action="store_true", group="ticket", source="original --load_all")
    save_model: bool = hparam(False, "also keep the best-validation model as model_SA_best.pth.tar",
                              action="store_true", group="ticket", role=RUNTIME, why="what is written",
                              source="original --save_model")


IMAGE_FOLDER_HELP = "ImageFolder root: DIR/train/<class>/<images> and DIR/val/<class>/<images>"
VISDA_HELP = ("VisDA-2017 root: DIR/train/image_list.txt and DIR/validation/image_list.txt, lines "
              "'relative/path label' (labels 0-11)")
START_STATE_HELP = ("accepted for compatibility: a fresh run starts at round 0 and --resume continues at the round "
                    "of its checkpoint (as the original, which took it from the checkpoint); other values are "
                    "refused without --resume")
IMAGE_SIZE_VISDA = "training crop size and validation resize (size x size)"
VISDA_REWIND = {"lt": "the random init (saved as random_init.pt)",
                "pt_trans": "the --pre_weight weights (fc dropped, conv1 loaded) with the new fc",
                "lrr": "none: " + LRR_HELP.split(": ", 1)[1] + " (starting from --pre_weight when given)"}


@dataclass(frozen=True, kw_only=True)
class ImagenetRun(Run):
    """The run flags of the pytorch/examples-style originals (ImageNet, VisDA): -p, -j 4, --resume [PATH]."""
    resume: bool | str = resume_path()
    print_freq: int = like(Run, "print_freq", flags=PRINT_FREQ_EXAMPLES, source="original -p 50")
    workers: int = workers_field(4, source="original -j 4")


@dataclass(frozen=True, kw_only=True)
class ImagenetImp(Optim, EarlyBird, ImagenetRun):
    """main_imp_imagenet.py: supervised ImageNet tickets (IMP from the pre-trained weights)."""
    TASK = "main_imp_imagenet"
    GROUPS = (None, "model", OPTIM, "pruning", EARLY_BIRD, RUN)
    data: str = hparam(help=IMAGE_FOLDER_HELP,
                       positional=True, metavar="DIR", role=RUNTIME, why=PATH_WHY, source="original data")
    arch: str = like(Model, "arch", flags=("-a", "--arch"), group="model",
                     help="torchvision ResNet (ImageNet stem), one output per class folder of DIR/train",
                     source="original -a resnet50")
    pretrained: str | None = hparam(
        None, "weights to start from and rewind to, e.g. imagenet_weight.pt (a torchvision state_dict; fc is loaded "
              "when DIR/train has as many classes); they cannot be downloaded, so without it the run starts from "
              "random init", metavar="W", group="model",
        source="ours: the original's torchvision pretrained=True download, given as a file")
    dict_key: str | None = like(DownstreamImp, "dict_key", group="model")
    random: bool = hparam(False, "start from random init on purpose (the original's pretrained=False)",
                          action="store_true", group="model", role=RUNTIME,
                          why="only declares that no --pretrained is intended (silences a notice); a run "
                              "without --pretrained computes the same", source="original --random")
    image_size: int = hparam(224, "training crop size; validation resizes the shorter side to size/0.875 and "
                                  "centre-crops size", group="model", source="original: 224 crops (pytorch/examples)")
    batch_size: int = like(Optim, "batch_size", flags=EXAMPLES_BATCH, source="original main_imp_imagenet.py -b 256")
    lr: float = like(Optim, "lr", flags=EXAMPLES_LR, default=1e-4,
                     source="original main_imp_imagenet.py --lr 1e-4 (constant)")
    weight_decay: float = like(Optim, "weight_decay", flags=EXAMPLES_WD,
                               default=1e-4, source="original --wd 1e-4")
    epochs: int = like(Optim, "epochs", default=10, source="original --epochs 10")
    warmup: int = like(Optim, "warmup", default=0, source="original: no warm-up")
    decreasing_lr: tuple[int, ...] = like(Optim, "decreasing_lr", default=(), source="original: constant learning rate")
    states: int = hparam(19, "IMP rounds; round k holds 0.8^k of the conv weights (at --percent 0.2); 0 trains the "
                             "dense model for --epochs without pruning", group="pruning", source="original --states 19")
    percent: float = hparam(0.2, "fraction of the remaining conv weights pruned after each round, in (0, 1)",
                            group="pruning", source="original --percent 0.2")
    start_state: int = hparam(0, START_STATE_HELP, group="pruning", role=RUNTIME,
                              why="accepted for compatibility: where a run continues comes from its checkpoint",
                              source="original --start_state 0")
    prune_type: str | None = lrr_field("the weights the run starts from (--pretrained, else the random init)",
                                       "pruning")
    evaluate: bool = hparam(False, "evaluate the starting (or, with --resume, the resumed) model on DIR/val, print "
                                   "top-1/top-5 and exit; nothing is written", flags=("-e", "--evaluate"),
                            action="store_true", role=RUNTIME, why="evaluates and exits: no run is recorded",
                            source="original -e")


@dataclass(frozen=True, kw_only=True)
class VisdaImp(Optim, EarlyBird, ImagenetRun):
    """main_imp_visda.py: VisDA-2017 tickets (IMP from random init or pre-trained weights)."""
    TASK = "main_imp_visda"
    GROUPS = (None, "model", OPTIM, "pruning", EARLY_BIRD, RUN)
    data: str = hparam(help=VISDA_HELP, positional=True, metavar="DIR", role=RUNTIME, why=PATH_WHY,
                       source="original data")
    dataset: str = hparam("visda17", "the data set (the original's flag; VisDA-2017 is the only one)",
                          choices=("visda17",), source="original --dataset visda17")
    arch: str = like(Model, "arch", flags=("-a", "--arch"), group="model",
                     help="torchvision ResNet (ImageNet stem) with a 12-way fc", source="original -a resnet50")
    pre_weight: str | None = hparam(
        None, "pre-trained weights for --prune_type pt_trans (torchvision state_dict, simclr_weight.pt, moco.pt, "
              "MoCo v2 or IMP checkpoint; 'module.' prefixes are stripped)", group="model",
        source="original --pre_weight")
    dict_key: str | None = hparam(None, "entry of the --pre_weight file that holds the weights (default: "
                                        "'state_dict' when present, else the whole file)", group="model",
                                  source="ours (the original read the whole file)")
    pretrained: bool = hparam(False, "accepted for compatibility and unused, as in the original: give weights with "
                                     "--pre_weight and --prune_type pt_trans", action="store_true", group="model",
                              role=RUNTIME, why="accepted for compatibility and unused (as in the original)",
                              source="original --pretrained (unused)")
    image_size: int = hparam(224, IMAGE_SIZE_VISDA, group="model", source="original: 224 (visda2017.py)")
    batch_size: int = like(Optim, "batch_size", flags=EXAMPLES_BATCH, default=128,
                           source="original main_imp_visda.py -b 128")
    lr: float = like(Optim, "lr", flags=EXAMPLES_LR, default=1e-3, source="original --lr 1e-3")
    weight_decay: float = like(Optim, "weight_decay", flags=EXAMPLES_WD,
                               default=5e-4, source="original --wd 5e-4")
    epochs: int = like(Optim, "epochs", default=20, source="original --epochs 20")
    warmup: int = like(Optim, "warmup", default=0, source="original: no warm-up")
    decreasing_lr: tuple[int, ...] = like(Optim, "decreasing_lr", default=(10,),
                                          source="original: x0.1 from epoch 10")
    prune_type: str = hparam("lt", "rewind target: " + "; ".join(f"{k}: {v}" for k, v in VISDA_REWIND.items()),
                             choices=tuple(sorted(VISDA_REWIND)), group="pruning", source="original --prune_type")
    states: int = hparam(19, "IMP rounds; round k trains with 0.8^k of the conv weights (at --percent 0.2)",
                         group="pruning", source="original --states 19")
    percent: float = like(ImagenetImp, "percent")
    start_state: int = like(ImagenetImp, "start_state")
    save_dir: str | None = like(Run, "save_dir", default="results/", required=False,
                                source="original --save_dir results/")
    evaluate: bool = like(ImagenetImp, "evaluate",
                          help="evaluate the starting (or, with --resume, the resumed) model on DIR/validation, "
                               "print top-1 and mean class accuracy and exit; nothing is written")


@dataclass(frozen=True, kw_only=True)
class VisdaEval(Optim, Ticket, ImagenetRun):
    """main_eval_visda.py: train one ticket (weights + mask) on VisDA-2017."""
    TASK = "main_eval_visda"
    GROUPS = (None, "model", OPTIM, "ticket", RUN)
    data: str = like(VisdaImp, "data")
    arch: str = like(VisdaImp, "arch")
    image_size: int = like(VisdaImp, "image_size")
    batch_size: int = like(VisdaImp, "batch_size", default=64, source="original main_eval_visda.py -b 64")
    lr: float = like(VisdaImp, "lr")
    weight_decay: float = like(VisdaImp, "weight_decay")
    epochs: int = like(VisdaImp, "epochs")
    warmup: int = like(VisdaImp, "warmup")
    decreasing_lr: tuple[int, ...] = like(VisdaImp, "decreasing_lr")
    pretrained: str | None = like(Ticket, "pretrained", help=(
        "weights to start from (torchvision state_dict, simclr_weight.pt, moco.pt, MoCo v2 checkpoint, or an IMP "
        "checkpoint); fc is not loaded, conv1 is; random init when omitted"))
    conv1: bool = hparam(False, "also mask the stem conv1 (the mask must then hold conv1.weight_mask)",
                         action="store_true", group="ticket", source="original --conv1")
    save_dir: str | None = like(VisdaImp, "save_dir")

