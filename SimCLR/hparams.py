"""The experiment of SimCLR/main.py (IMP of a SimCLR ResNet with the contrastive loss) as typed hparams.

Defaults are the original's SimCLR/args.py (inventory section 1.2) unless a source says otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass

from lth.hparams import BATCH_HELP, EARLY_BIRD, PATH_WHY, RUN, RUNTIME, SEED, EarlyBird, Run, hparam, like, lrr_field
from lth.models import ARCHS
from SimCLR.simclr import LOSS_FORMS

DEFAULT_SIM_MODEL = "./simclr_pre-train_model/resnet50-1x.pth"
LATEST = "latest"
MOMENTUM = 0.9  # LARS and SGD momentum, fixed as in the original (no flag)
DATA_MODEL = "data and model"
OPTIM = "optimisation (the original's defaults)"


@dataclass(frozen=True, kw_only=True)
class SimclrImp(EarlyBird, Run):
    """SimCLR/main.py: IMP of a SimCLR ResNet retrained with NT-Xent (--prun_percent 0: dense SimCLR)."""
    TASK = "SimCLR/main"
    GROUPS = (None, DATA_MODEL, OPTIM, "pruning", EARLY_BIRD, RUN)
    ORDER = {RUN: ("save_dir", "resume", "seed", "gpu", "cpu", "workers", "sync_bn", "print_freq", "precision",
                   "eval_precision", "channels_last", "compile", "deterministic", "trust_checkpoint")}
    experiment: str = hparam(help="name of this run; everything is written to SAVE_DIR/EXPERIMENT", positional=True,
                             role=RUNTIME, why="a name: part of the output path", source="original experiment")
    data: str = hparam("./data", "ImageFolder root with train/<class>/<images> and val/<class>/<images>",
                       group=DATA_MODEL, role=RUNTIME, why=PATH_WHY, source="original --data ./data")
    arch: str = hparam("resnet50", "torchvision ResNet (ImageNet stem) under the projection head", choices=ARCHS,
                       group=DATA_MODEL, source="original --arch resnet50")
    sim_model: str = hparam(
        DEFAULT_SIM_MODEL, "SimCLR pre-trained weights ({'state_dict': torchvision names}, e.g. the released "
                           "simclr_weight.pt or this script's --prun_percent 0 output); IMP prunes them one-shot "
                           "and rewinds to them after every round", group=DATA_MODEL,
        source="original --sim_model ./simclr_pre-train_model/resnet50-1x.pth")
    mlpout: int = hparam(128, "output size of the projection head", group=DATA_MODEL, source="original --mlpout 128")
    phead: bool = hparam(True, "passing it REMOVES the projection head (the original's store_false flag): the loss "
                               "then acts on the backbone features", action="store_false", group=DATA_MODEL,
                         source="original --phead (store_false)")
    image_size: int = hparam(224, "side of the random resized crops", group=DATA_MODEL,
                             source="original: RandomResizedCrop(224)")
    temperature: float = hparam(0.5, "NT-Xent temperature (the original hard-coded 0.5)", group=DATA_MODEL,
                                source="original: t = 0.5, hard-coded")
    loss: str = hparam("original", "NT-Xent form: original is -log(mean p) over the 2N views, what the original "
                                   "SimCLR IMP code (and the paper's tickets) minimised; textbook is mean(-log p), the "
                                   "SimCLR paper's cross entropy", choices=LOSS_FORMS, group=DATA_MODEL,
                       source="original: its loss function's form (ours: the flag)")
    epochs: int = hparam(150, "training epochs in all: rounds = 1 + epochs / prun_epoch, the first only evaluates",
                         group=OPTIM, source="original --epochs 150 (its README runs 180)")
    batch_size: int = hparam(256, "images per step over all GPUs; NT-Xent contrasts all 2x of them; " + BATCH_HELP,
                             group=OPTIM,
                             source="original --batch_size 256")
    lr: float = hparam(1e-4, "learning rate, constant", group=OPTIM, source="original --lr 1e-4")
    optimizer: str = hparam("lars", f"lars: trust ratio eta 1e-3; lars and sgd use momentum {MOMENTUM}; a fresh "
                                    f"optimizer starts every round", choices=("adam", "lars", "sgd"), group=OPTIM,
                            source="original --optimizer lars")
    weight_decay: float = hparam(1e-6, "weight decay of lars and sgd (adam takes none, as in the original)",
                                 group=OPTIM, source="original --weight_decay 1e-6")
    prun_percent: float = hparam(0.2, "fraction of the remaining backbone conv weights pruned each time; 0 trains a "
                                      "dense SimCLR model instead (random init without --sim_model)", group="pruning",
                                 source="original --prun_percent 0.2")
    prun_epoch: int = hparam(10, "epochs of training between two prunings (must divide --epochs)", group="pruning",
                             source="original --prun_epoch 10")
    prune_type: str | None = lrr_field("the --sim_model weights", "pruning")
    save_dir: str = like(Run, "save_dir", default="./output", required=False,
                         help="parent folder of the experiment's folder", source="original --save_dir ./output")
    resume: str = like(Run, "resume", default="", action=None, nargs="?", const=LATEST,
                       help="continue the experiment: alone, from its latest checkpoint; with a path, from that "
                            "checkpoint of this toolkit (give EXPERIMENT before --resume)",
                       source="original --resume ''")
    seed: int = hparam(2, "random seed (0 is valid): init, data order and augmentation", group=RUN, role=SEED,
                       why="which replicate: runs that differ only in their seed are pooled",
                       source="original --seed 2")
    gpu: str = like(Run, "gpu", help="CUDA devices, e.g. 0 or 0,1,2,3 (sets CUDA_VISIBLE_DEVICES); several devices "
                                     "re-launch the script under torchrun, one process each (DDP); ignored without "
                                     "CUDA", source="original --gpu 0")
    workers: int = like(Run, "workers", default=4, help="data-loading processes per GPU process",
                        source="ours: 4 per process")
    sync_bn: bool = hparam(False, "synchronise batch-norm statistics across GPUs (DDP on CUDA only)",
                           action="store_true", group=RUN,
                           source="ours (the original's DataParallel computed batch norm per GPU)")
