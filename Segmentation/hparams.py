"""The experiments of the six segmentation scripts (main_imp_*.py, main_transfer_*.py) as typed hparams.

Defaults are the original's Segmentation/args.py (inventory section 1.5) unless a source says
otherwise; ``SOURCES`` holds what each pre-training's scripts hard-code. One class per script:
``SEGMENTATION_HPARAMS[(mode, source)]``, mode ``imp`` or ``transfer``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from lth.hparams import (BATCH_HELP, EARLY_BIRD, PATH_WHY, POSITION, RUN, RUNTIME, EarlyBird, Iterations, Run, hparam,
                         like, lrr_field, workers_field)
from lth.models import MOCO_ENCODER_HELP, MOCO_ENCODERS
from Segmentation.data import DATASETS, LABEL_PADS, ORIGINAL_LABEL_PAD, VOC_YEARS
from Segmentation.loss import LOSS_TYPES
from Segmentation.model import MODELS

PRUNE_RATE = 0.2  # of the remaining backbone conv weights, per round (the original's)
IMP_ROUNDS = 19  # the original's sweeps run rounds 0..18
NO_WEIGHTS = "none"
TRAINING = "training (the original's defaults)"
VISDOM = "visdom (accepted as the original's; ignored: metrics.jsonl and plots replace it)"
VISDOM_WHY = "accepted as the original's and ignored (no visdom)"


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


def weights_note(source: Source) -> str:
    if source.weights is None:
        return "torchvision's resnet file in $TORCH_HOME/hub/checkpoints (e.g. resnet50-19c8e357.pth)"
    return source.weights


@dataclass(frozen=True, kw_only=True)
class Segmentation(Iterations, Run):
    """Data, model, training, iteration, run and visdom flags of every segmentation script."""
    exp: str = hparam(help="name of the run: its folder under --save_dir (the original's checkpoints/EXP); without "
                           "--imp_num, round k runs in EXP_k", positional=True, role=RUNTIME,
                      why="a name: part of the output path", source="original exp")
    data_root: str = hparam("./datasets/data", "folder holding VOCdevkit/VOC2012 (voc) or leftImg8bit and gtFine "
                                               "(cityscapes)", group="data", role=RUNTIME, why=PATH_WHY,
                            source="original --data_root ./datasets/data")
    dataset: str = hparam("voc", "digits is the embedded set (digits pasted on 32x32 canvases, 11 classes)",
                          choices=DATASETS, group="data", source="original --dataset voc (digits is ours)")
    num_classes: int | None = hparam(None, "accepted as the original's; the data set fixes it (21 voc, 19 "
                                           "cityscapes, 11 digits) and another value is an error", group="data",
                                     role=RUNTIME, why="fixed by --dataset (another value is refused)",
                                     source="original --num_classes")
    year: str = hparam("2012", "VOC: 2012 (SegmentationClass) or 2012_aug (SegmentationClassAug, train_aug.txt)",
                       choices=VOC_YEARS, group="data", source="original --year 2012")
    crop_val: bool = hparam(False, "validate on the shorter side resized to --crop_size then centre-cropped "
                                   "(default: full images)", action="store_true", group="data",
                            source="original --crop_val (its sweeps pass it)")
    crop_size: int = hparam(513, "training (and --crop_val) crop size", group="data", source="original --crop_size 513")
    label_pad: int = hparam(ORIGINAL_LABEL_PAD, "label of the pixels padded around a training image smaller than "
                                                "--crop_size: 0 (background, the original's: 23.5 %% of VOC's "
                                                "training label pixels at 513) or 255 (ignored by the loss)",
                            choices=LABEL_PADS, group="data", source="original: ext_transforms pads labels with 0")
    download: bool = hparam(False, "accepted as the original's, but refused: data sets are never downloaded; place "
                                   "them under --data_root", action="store_true", group="data", role=RUNTIME,
                            why="refused: data sets are never downloaded", source="original --download")
    model: str = hparam("deeplabv3plus_resnet50", "head and backbone (resnet18: CPU demos and tests)", choices=MODELS,
                        group="model", source="original --model deeplabv3plus_resnet50")
    separable_conv: bool = hparam(False, "depthwise-separable convs in ASPP and decoder (DeepLabV3+ only)",
                                  action="store_true", group="model", source="original --separable_conv")
    output_stride: int = hparam(16, "16: layer4 dilated, ASPP rates 6/12/18; 8: layer3 and 4, rates 12/24/36",
                                choices=(8, 16), group="model", source="original --output_stride 16")
    pretrained: str | None = hparam(
        None, "backbone weights to start from (conv1 included, fc dropped); default: the pre-training's file; never "
              f"downloaded; '{NO_WEIGHTS}' starts from random init", group="model", filled_in=True,
        source="original: the weights each script hard-codes (SOURCES)")
    dict_key: str | None = hparam(None, "entry of the --pretrained file that holds the weights (default: "
                                        "'state_dict' when present, else the whole file)", group="model",
                                  source="ours (the original read 'state_dict')")
    moco_encoder: str = hparam("k", MOCO_ENCODER_HELP + " (the original's main_*_moco.py did the same)",
                               choices=MOCO_ENCODERS, group="model",
                               source="original main_*_moco.py: k[17:] let encoder_k overwrite encoder_q")
    test_only: bool = hparam(False, "evaluate on val (--ckpt, or the model a run would start training from), print "
                                    "the scores and exit; writes only --save_val_results", action="store_true",
                             group=TRAINING, role=RUNTIME, why="evaluates and exits: no run is recorded",
                             source="original --test_only")
    save_val_results: bool = hparam(False, "at each evaluation write {image_id}_image.png, _target.png, _pred.png "
                                           "(palette, at the label's size) and _overlay.png (prediction over the "
                                           "image at alpha 0.7), as the original meant to, into EXP/results, "
                                           "replacing the previous evaluation's",
                                    action="store_true", group=TRAINING, role=RUNTIME, why="what is written",
                                    source="original --save_val_results")
    lr: float = hparam(0.01, "head learning rate; the backbone trains at 0.1x", group=TRAINING,
                       source="original --lr 0.01")
    weight_decay: float = hparam(1e-4, "SGD weight decay (momentum 0.9)", group=TRAINING,
                                 source="original --weight_decay 1e-4")
    batch_size: int = hparam(16, "training batch size (at least 2 per process: batch norm after ASPP's image "
                                 "pooling sees one value per channel per image); " + BATCH_HELP, group=TRAINING,
                             source="original --batch_size 16 (its sweeps pass 4)")
    val_batch_size: int = hparam(4, "validation batch size; images of different sizes (VOC without --crop_val) are "
                                    "predicted each at its own size, so the scores do not depend on it",
                                 group=TRAINING, role=RUNTIME,
                                 why="evaluation only: each image is predicted at its own size; the figures do not "
                                     "depend on it",
                                 source="original --val_batch_size 4")
    loss_type: str = hparam("cross_entropy", "cross-entropy ignoring 255, or the original's focal loss",
                            choices=LOSS_TYPES, group=TRAINING, source="original --loss_type cross_entropy")
    ckpt: str | None = hparam(None, "checkpoint to start from (this toolkit's, or the original's with "
                                    "'model_state'); with --continue_training its optimizer, schedule and iteration too",
                              group=TRAINING, role=RUNTIME,
                              why="a checkpoint to continue (--continue_training) or evaluate (--test_only); the run "
                                  "it came from holds the experiment", source="original --ckpt")
    continue_training: bool = hparam(False, "continue the --ckpt run where it stopped (needs a checkpoint of this "
                                            "toolkit)", action="store_true", group=TRAINING, role=RUNTIME,
                                     why="continues a run, like --resume", source="original --continue_training")
    sync_bn: bool = hparam(False, "under torchrun, synchronise batch-norm statistics across processes",
                           action="store_true", group=TRAINING, source="ours (the original ran one GPU)")
    total_itrs: int = like(Iterations, "total_itrs", source="original --total_itrs 30e3")
    val_interval: int = like(Iterations, "val_interval", source="original --val_interval 100")
    lr_policy: str = like(Iterations, "lr_policy", choices=("poly", "step"),
                          help="poly: lr x (1 - itr/total_itrs)^0.9; step: x0.1 every --step_size iterations",
                          source="original --lr_policy poly")
    step_size: int = hparam(10000, "--lr_policy step: learning rate x0.1 every this many iterations",
                            group="iterations", source="original --step_size 10000")
    save_dir: str = like(Run, "save_dir", default="", required=False,
                         help="folder of the run(s); each run writes into SAVE_DIR/EXP",
                         source="original: OUTDIR (IMP) or checkpoints (transfer) when empty")
    resume: bool = like(Run, "resume", help="continue the run in SAVE_DIR/EXP from its latest checkpoint (without "
                                            "--imp_num: continue the IMP sweep, skipping finished rounds)")
    seed: int | None = like(Run, "seed", flags=("--seed", "--random_seed"), default=1,
                            help="random seed (0 is valid): model init, data order, augmentation",
                            source="original --random_seed 1 (its sweeps pass 10)")
    gpu: str = like(Run, "gpu", flags=("--gpu", "--gpu_id"), source="original --gpu_id 0")
    print_freq: int = like(Run, "print_freq", flags=("--print_freq", "--print_interval"), default=10,
                           help="update the progress bar's loss every this many iterations",
                           source="original --print_interval 10")
    workers: int = workers_field(2, source="original: 2 loader workers")
    enable_vis: bool = hparam(False, "the original's visdom switch; ignored with a notice", action="store_true",
                              group=VISDOM, role=RUNTIME, why=VISDOM_WHY, source="original --enable_vis")
    vis_port: str = hparam("13570", "the original's visdom port; ignored", group=VISDOM, role=RUNTIME, why=VISDOM_WHY,
                           source="original --vis_port")
    vis_env: str = hparam("main", "the original's visdom environment; ignored", group=VISDOM, role=RUNTIME,
                          why=VISDOM_WHY, source="original --vis_env")
    vis_num_samples: int = hparam(8, "the original's number of images shown in visdom; ignored", group=VISDOM,
                                  role=RUNTIME, why=VISDOM_WHY, source="original --vis_num_samples")


@dataclass(frozen=True, kw_only=True)
class SegmentationImp(Segmentation, EarlyBird):
    """main_imp_*.py: IMP of DeepLabV3+'s backbone, one round per command (--imp_num) or all rounds."""
    GROUPS = (None, "IMP", EARLY_BIRD, "data", "model", TRAINING, "iterations", RUN, VISDOM)
    imp_num: int | None = hparam(
        None, "the round to run: 0 saves the starting state (seg_backbone_imp0.pth) and trains; k loads "
              "seg_backbone_imp{k}.pth's mask, rewinds to round 0, trains; each round prunes --rate of the remaining "
              "backbone conv weights and writes seg_backbone_imp{k+1}.pth. Omitted: rounds 0..--imp_rounds-1 in one "
              "command", group="IMP", role=POSITION,
        why="which round of the IMP run in --save_dir this command runs; a resume continues the same round",
        source="original --imp_num (its sweeps pass 0..18)")
    rate: float = hparam(PRUNE_RATE, "fraction of the remaining backbone conv weights pruned after each round (the "
                                     "original's 0.2: round k keeps 0.8^k)", group="IMP",
                         source="original: 20% per round, hard-coded")
    imp_rounds: int = hparam(IMP_ROUNDS, "rounds run without --imp_num (finished ones are skipped with --resume)",
                             group="IMP", source="original sh/imp_*.sh: rounds 0..18")
    keep_checkpoints: bool = hparam(False, "keep a finished round's resumable EXP/latest_*.pth (model and optimizer); by "
                                           "default a finished round keeps seg_backbone_imp{k+1}.pth, its ticket and "
                                           "EXP/best_*.pth (the best validation model)", action="store_true",
                                    group="IMP", role=RUNTIME, why="what is kept on disk",
                                    source="ours (the original kept every checkpoint)")
    mask_dir: str | None = hparam(None, "the original's flag, ignored as there: round k reads the mask of "
                                        "seg_backbone_imp{k}.pth in --save_dir (transfer a mask with main_transfer_*.py)",
                                  group="IMP", role=RUNTIME, why="accepted as the original's and ignored",
                                  source="original --mask_dir (unused by its IMP scripts)")
    prune_type: str | None = lrr_field("round 0's seg_backbone_imp0.pth (the pre-trained backbone, the head at its "
                                       "init)", "IMP")


@dataclass(frozen=True, kw_only=True)
class SegmentationTransfer(Segmentation):
    """main_transfer_*.py: DeepLabV3+ trained with a backbone ticket (or its controls)."""
    GROUPS = (None, "ticket", "data", "model", TRAINING, "iterations", RUN, VISDOM)
    mask_dir: str = hparam("", "the backbone mask: seg_backbone_imp{n}.pth, a ticket_XX.pt of any IMP script, the "
                               "original's mask-{i}.pt, or a pruned checkpoint; dense training when empty",
                           group="ticket", source="original --mask_dir ''")
    reverse_mask: bool = hparam(False, "train the complement of the mask (1 - mask): the reversed-mask control",
                                action="store_true", group="ticket", source="ours (a control)")
    random_prune: bool = hparam(False, "prune the backbone convs (conv1 excepted) globally at random to the mask's "
                                       "sparsity instead of using the mask: the random-pruning control",
                                action="store_true", group="ticket", source="ours (a control)")
    imp_num: int | None = hparam(None, "the original's flag, ignored as there (its transfer scripts never read it); "
                                       "the mask is --mask_dir", group="ticket", role=RUNTIME,
                                 why="accepted as the original's and ignored",
                                 source="original --imp_num (unused by its transfer scripts)")


def _script_class(base, mode: str, source: Source):
    """The hparams of Segmentation/main_{mode}_{source}.py: ``base`` with that script's task name and the
    help of the flags whose defaults depend on the pre-training."""
    outputs = (f"the original's {source.imp_dir.format(seed='S')} with S = --random_seed" if mode == "imp"
               else "checkpoints (the original's)")
    fields = [
        ("pretrained", "str | None", like(base, "pretrained", help=(
            f"backbone weights to start from ({source.name}; conv1 included, fc dropped); default: "
            f"{weights_note(source)}; never downloaded; '{NO_WEIGHTS}' starts from random init"))),
        ("save_dir", "str", like(base, "save_dir", help=f"folder of the run(s); each run writes into SAVE_DIR/EXP "
                                                        f"(default: {outputs})")),
    ]
    name = f"Segmentation{mode.capitalize()}{source.name.capitalize()}"
    cls = dataclasses.make_dataclass(name, fields, bases=(base,), frozen=True, kw_only=True,
                                     namespace={"TASK": f"Segmentation/main_{mode}_{source.name}", "SOURCE": source,
                                                "__doc__": f"Segmentation/main_{mode}_{source.name}.py"})
    cls.__module__ = __name__
    globals()[name] = cls  # importable by name (pickling)
    return cls


SEGMENTATION_HPARAMS = {(mode, name): _script_class(base, mode, source)
                        for mode, base in (("imp", SegmentationImp), ("transfer", SegmentationTransfer))
                        for name, source in SOURCES.items()}
