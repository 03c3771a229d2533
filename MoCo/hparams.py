"""The experiment of MoCo/main_moco_imp.py (IMP of both MoCo v2 encoders) as typed hparams.

Defaults are the original's MoCo/main_moco_imp.py flags (inventory section 1.3) unless a source says otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass

from lth.hparams import (BATCH_HELP, EARLY_BIRD, PATH_WHY, PRINT_FREQ_EXAMPLES, RUN, RUNTIME, EarlyBird, Run, hparam, like,
                         lrr_field, resume_path, workers_field)
from lth.models import ARCHS

EXPORT_NAME = "moco_pretrain.pth.tar"
MOCO = "MoCo (the original's flags and defaults)"
DISTRIBUTED = "distributed (the original's flags)"
IGNORED_LR = "accepted for compatibility and ignored: IMP keeps the learning rate fixed (so did the original)"
LAYOUT_WHY = "how the processes are laid out (their number is recorded in run.json), not the experiment"


@dataclass(frozen=True, kw_only=True)
class MocoImp(EarlyBird, Run):
    """MoCo/main_moco_imp.py: IMP of MoCo v2's encoders, rewound to the pre-trained weights each round."""
    TASK = "MoCo/main_moco_imp"
    GROUPS = (None, MOCO, "pruning", EARLY_BIRD, DISTRIBUTED, RUN)
    data: str = hparam(help="ImageFolder root: DIR/train/<class>/<images> (training) and DIR/val/<class>/<images> "
                            "(the contrastive top-1/5 test)", positional=True, metavar="DIR", role=RUNTIME,
                       why=PATH_WHY, source="original data")
    arch: str = hparam("resnet50", "encoder: a torchvision ResNet with the ImageNet stem", flags=("-a", "--arch"),
                       choices=ARCHS, group=MOCO, source="original -a resnet50")
    pretrained_path: str = hparam(
        "moco_v2_800ep_pretrain.pth.tar", "weights loaded into both encoders and rewound to after every pruning: "
                                          "moco_v2_800ep_pretrain.pth.tar (module.encoder_q.*), moco.pt (plain names) "
                                          f"or a file this script wrote ({EXPORT_NAME}); 'none' starts from random init",
        group=MOCO, source="original --pretrained_path moco_v2_800ep_pretrain.pth.tar")
    epochs: int = hparam(180, "training epochs in all; IMP prunes every --retrain_epoch of them", group=MOCO,
                         source="original --epochs 180")
    batch_size: int = hparam(256, "batch size of all processes together (the queue size must be a multiple of it); "
                                  + BATCH_HELP + " (the original's -b was per node: the same on one node)",
                             flags=("-b", "--batch-size"), group=MOCO, source="original -b 256")
    lr: float = hparam(3e-4, "SGD learning rate, fixed throughout (the original's fix_lr)",
                       flags=("--lr", "--learning-rate"), group=MOCO, source="original --lr 3e-4 (fix_lr)")
    schedule: tuple[int, ...] | None = hparam(None, IGNORED_LR, type=int, nargs="*", group=MOCO, role=RUNTIME,
                                              why="accepted for compatibility and ignored (as in the original)",
                                              source="original --schedule (ignored by its fix_lr)")
    cos: bool = hparam(False, IGNORED_LR, action="store_true", group=MOCO, role=RUNTIME,
                       why="accepted for compatibility and ignored (as in the original)",
                       source="original --cos (ignored by its fix_lr)")
    momentum: float = hparam(0.9, "SGD momentum factor of the query encoder's optimizer", group=MOCO,
                             source="original --momentum 0.9")
    weight_decay: float = hparam(1e-4, "SGD weight decay", flags=("--wd", "--weight-decay"), group=MOCO,
                                 source="original --wd 1e-4")
    moco_dim: int = hparam(128, "feature dimension (the output of fc)", flags=("--moco-dim",), group=MOCO,
                           source="original --moco-dim 128")
    moco_k: int = hparam(65536, "queue size: number of negative keys (a multiple of the global batch)",
                         flags=("--moco-k",), group=MOCO, source="original --moco-k 65536")
    moco_m: float = hparam(0.999, "momentum of the key encoder's update", flags=("--moco-m",), group=MOCO,
                           source="original --moco-m 0.999")
    moco_t: float = hparam(0.07, "softmax temperature (MoCo v2 uses 0.2)", flags=("--moco-t",), group=MOCO,
                           source="original --moco-t 0.07 (its README passes 0.2)")
    mlp: bool = hparam(False, "MoCo v2's 2-layer MLP head (fc.0, ReLU, fc.2) instead of a linear fc",
                       action="store_true", group=MOCO, source="original --mlp")
    aug_plus: bool = hparam(False, "MoCo v2's augmentation (colour jitter p 0.8, grayscale, Gaussian blur) instead of "
                                   "MoCo v1's", flags=("--aug-plus",), action="store_true", group=MOCO,
                            source="original --aug-plus")
    retrain_epoch: int = hparam(
        10, "epochs trained between two prunings: 1 + --epochs // --retrain_epoch rounds; 0 disables pruning and "
            "trains MoCo densely for --epochs (pre-training from --pretrained_path or from scratch), writing "
            f"{EXPORT_NAME}", group="pruning", source="original --retrain_epoch 10")
    prune_percent: float = hparam(0.2, "fraction of the remaining conv weights of encoder_q pruned each time, in "
                                       "(0, 1) (fixed at 0.2 in the original)", group="pruning",
                                  source="original: 0.2 hard-coded in pruning_rewind")
    image_size: int = hparam(224, "side of the random crops both views are made of", group="pruning",
                             source="original: RandomResizedCrop(224)")
    prune_type: str | None = lrr_field("encoder_q's starting weights (--pretrained_path, else the random init)",
                                       "pruning")
    world_size: int = hparam(-1, "number of nodes with --multiprocessing-distributed (-1: one); under torchrun its "
                                 "WORLD_SIZE is used", flags=("--world-size",), group=DISTRIBUTED, role=RUNTIME,
                             why=LAYOUT_WHY, source="original --world-size -1")
    rank: int = hparam(-1, "this node's rank with --multiprocessing-distributed (-1: 0); under torchrun its RANK is "
                           "used", group=DISTRIBUTED, role=RUNTIME, why=LAYOUT_WHY, source="original --rank -1")
    dist_url: str = hparam("tcp://127.0.0.1:23456", "tcp://HOST:PORT of the rank-0 node for "
                                                    "--multiprocessing-distributed (or env:// to use "
                                                    "MASTER_ADDR/MASTER_PORT); pass tcp://127.0.0.1:PORT on one machine",
                           flags=("--dist-url",), group=DISTRIBUTED, role=RUNTIME, why=LAYOUT_WHY,
                           source="original --dist-url")
    dist_backend: str = hparam("nccl", "accepted for compatibility: NCCL is used on CUDA and gloo on the CPU",
                               flags=("--dist-backend",), group=DISTRIBUTED, role=RUNTIME, why=LAYOUT_WHY,
                               source="original --dist-backend nccl")
    multiprocessing_distributed: bool = hparam(
        False, "start one process per visible GPU (PyTorch DDP, shuffle-BN across them); on a machine without CUDA "
               "one CPU process runs", flags=("--multiprocessing-distributed",), action="store_true",
        group=DISTRIBUTED, role=RUNTIME, why=LAYOUT_WHY, source="original --multiprocessing-distributed")
    sync_bn: bool = hparam(False, "synchronise encoder_q's batch norms across CUDA processes (encoder_k keeps "
                                  "shuffle-BN)", action="store_true", group=DISTRIBUTED,
                           source="ours (the original's encoder_q computed batch norm per GPU)")
    save_dir: str | None = like(Run, "save_dir", source="original --save_dir")
    resume: bool | str = resume_path(source="original --resume PATH")
    print_freq: int = like(Run, "print_freq", flags=PRINT_FREQ_EXAMPLES, default=10, source="original -p 10")
    workers: int = workers_field(32, source="original -j 32")
