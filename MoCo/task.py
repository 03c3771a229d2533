"""MoCo v2 as a task: two-view ImageFolder data, both encoders from the pre-trained file, the InfoNCE step
with the key encoder's momentum update, contrastive top-1/5, and pruning both encoders with one mask."""

from __future__ import annotations

import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision.transforms as T
from PIL import ImageFilter

from lth import pruning
from lth.checkpoint import atomic_save
from lth.classification import ACCURACY
from lth.contrastive import TwoViews, contrastive_evaluate
from lth.engine import StepResult
from lth.errors import UserError
from lth.imagedata import IMAGENET_MEAN, IMAGENET_STD, image_folder
from lth.imp import ImpConfig, PruneStrategy
from lth.loaders import DeviceLoader, Loaders
from lth.task import Task
from lth.trainer import StageFiles, StageProgress, TrainConfig
from MoCo.builder import MoCo
from MoCo.hparams import EXPORT_NAME
from MoCo.weights import export_checkpoint, load_moco_weights

IMP_FORMAT = "lth-imp"
DENSE_FORMAT = "lth-moco-dense"
DENSE_FILES = StageFiles(checkpoint="checkpoint.pth.tar", best="model_best.pth.tar", curves="net_train.png")


class GaussianBlur:
    """MoCo v2's blur: PIL's ``ImageFilter.GaussianBlur`` with a radius drawn uniformly from ``sigma``.

    The original drew the radius with Python's ``random``; torch's generator is used here, which
    the data loader seeds per (seed, epoch), so runs stay reproducible.
    """

    def __init__(self, sigma: tuple[float, float] = (0.1, 2.0)):
        self.sigma = sigma

    def __call__(self, image):
        radius = float(torch.empty(()).uniform_(self.sigma[0], self.sigma[1]))
        return image.filter(ImageFilter.GaussianBlur(radius=radius))

    def __repr__(self) -> str:
        return f"GaussianBlur(sigma={self.sigma})"


def moco_augmentation(size: int, plus: bool) -> T.Compose:
    """MoCo v2's augmentation (``plus``) or MoCo v1's, ending in ImageNet normalisation."""
    crop = T.RandomResizedCrop(size, scale=(0.2, 1.0))
    finish = [T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    if plus:
        return T.Compose([crop, T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
                          T.RandomGrayscale(p=0.2), T.RandomApply([GaussianBlur((0.1, 2.0))], p=0.5), *finish])
    return T.Compose([crop, T.RandomGrayscale(p=0.2), T.ColorJitter(0.4, 0.4, 0.4, 0.4), *finish])


def make_loaders(args, ctx, launch) -> Loaders:
    transform = TwoViews(moco_augmentation(args.image_size, args.aug_plus))
    train_set = image_folder(args.data, "train", transform)
    val_set = image_folder(args.data, "val", transform)  # the original tests with the training views
    per_process = args.batch_size // launch.world  # check_args made sure it divides
    workers = -(-args.workers // launch.local)
    common = dict(seed=args.seed, ctx=ctx, workers=workers)
    loaders = Loaders(train=DeviceLoader(train_set, per_process, train=True, **common),
                      # The last partial batch is dropped in both, as the original's loaders did.
                      val=DeviceLoader(val_set, per_process, train=False, drop_last=True, **common),
                      test=None, num_classes=len(train_set.classes))
    for split, loader, dataset in (("train", loaders.train, train_set), ("val", loaders.val, val_set)):
        if len(loader) == 0:
            raise UserError(f"{os.path.join(args.data, split)} has {len(dataset)} images, fewer than one "
                            f"batch of {per_process} per process: lower --batch-size")
    return loaders


def _views(batch, channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    images = batch[0]  # (B, 2, C, H, W) from TwoViews; the class labels are not used
    views = images[:, 0], images[:, 1]
    if channels_last:
        views = tuple(view.contiguous(memory_format=torch.channels_last) for view in views)
    return views


def moco_step(channels_last: bool):
    def step(model: nn.Module, batch) -> StepResult:
        im_q, im_k = _views(batch, channels_last)
        logits, targets = model(im_q, im_k)
        hits = (logits.detach().argmax(1) == targets).sum()
        return StepResult(F.cross_entropy(logits.float(), targets), hits, targets.size(0))
    return step


def moco_evaluator(ctx, precision):
    """Contrastive top-1/5 on DIR/val: each query against its key and the current queue."""
    def logits_fn(model: nn.Module, batch):
        return model.contrastive_logits(*_views(batch, precision.channels_last))

    def run(model: nn.Module, loader, desc: str) -> dict:
        return contrastive_evaluate(model, loader, ctx, precision, logits_fn, ks=(1, 5), desc=desc)
    return run


# --------------------------------------------------------------------------------------------
# Pruning both encoders
# --------------------------------------------------------------------------------------------

class MocoPruning(PruneStrategy):
    """encoder_q is pruned and makes the ticket; encoder_k takes its mask; both rewind to encoder_q's start."""

    def target(self, model: MoCo) -> nn.Module:
        return model.encoder_q

    def prune(self, model: MoCo, seed: int) -> None:
        super().prune(model, seed)
        pruning.apply_mask(model.encoder_k, pruning.extract_mask(model.encoder_q), conv1=self.conv1)
        model.freeze_key_encoder()

    def rewind(self, model: MoCo, weights: dict) -> None:
        # The rewind point holds the whole model; its encoder_q is the pre-trained query encoder.
        start = {key[len("encoder_q."):]: value for key, value in weights.items() if key.startswith("encoder_q.")}
        for encoder in (model.encoder_q, model.encoder_k):
            pruning.rewind(encoder, start, conv1=self.conv1)
        model.freeze_key_encoder()

    def restore(self, model: MoCo, state_dict: dict) -> None:
        for name in ("encoder_q", "encoder_k"):
            prefix = f"{name}."
            masks = {key[len(prefix):]: value for key, value in state_dict.items()
                     if key.startswith(prefix) and key.endswith(pruning.MASK_SUFFIX)}
            if masks:
                pruning.apply_mask(getattr(model, name), masks, conv1=self.conv1)
        model.freeze_key_encoder()


class MocoTask(Task):
    """--retrain_epoch > 0: IMP of encoder_q (encoder_k takes its mask), round 0 evaluating the
    pre-trained model; 0: dense MoCo training, written in the released layout (``EXPORT_NAME``).

    ``launch`` says how many processes share a node's batch and workers; ``weights`` is the
    --pretrained_path file (None: random init, or a resume whose checkpoint brings the weights).
    """

    def __init__(self, hparams, launch, weights: str | None):
        super().__init__(hparams)
        self.launch, self.weights = launch, weights
        self.imp = hparams.retrain_epoch > 0
        self.checkpoint_format = IMP_FORMAT if self.imp else DENSE_FORMAT
        if not self.imp:
            self.files = DENSE_FILES

    def make_loaders(self) -> Loaders:
        return make_loaders(self.hparams, self.session.ctx, self.launch)

    def make_model(self) -> nn.Module:
        args, ctx, precision = self.hparams, self.session.ctx, self.session.precision
        torch.manual_seed(args.seed)  # encoders and queue start alike on every rank
        model = MoCo(args.arch, args.moco_dim, args.moco_k, args.moco_m, args.moco_t, args.mlp)
        if self.weights and not args.resume:  # on resume the checkpoint holds weights, masks and rewind point
            load_moco_weights(model, self.weights, quiet=not ctx.is_main)
        model = model.to(ctx.device)
        if precision.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if args.sync_bn:
            if ctx.distributed and ctx.device.type == "cuda":
                model.encoder_q = nn.SyncBatchNorm.convert_sync_batchnorm(model.encoder_q)
            elif ctx.is_main:
                print("notice: --sync_bn needs several CUDA processes; ignored", file=sys.stderr)
        self._step = moco_step(precision.channels_last)
        self._evaluate = moco_evaluator(ctx, precision)
        return model

    def train_config(self) -> TrainConfig:
        args = self.hparams
        return TrainConfig.from_hparams(args, epochs=args.retrain_epoch or args.epochs, warmup=0, milestones=[],
                                        objective=ACCURACY)

    def make_strategy(self) -> PruneStrategy:
        return MocoPruning(self.hparams.prune_percent,
                           prune_type=self.hparams.prune_type or ("pt_trans" if self.weights else "lt"))

    def step(self, model: nn.Module, batch) -> StepResult:
        return self._step(model, batch)

    def evaluate(self, model: nn.Module, loader, desc: str) -> dict:
        return self._evaluate(model, loader, desc)

    def after_step(self, train_model: nn.Module):
        return self.model.momentum_update

    def imp_config(self) -> ImpConfig:
        args = self.hparams
        return ImpConfig(rounds=1 + args.epochs // args.retrain_epoch, seed=args.seed, train_round0=False,
                         meta={"arch": args.arch, "dataset": os.path.basename(os.path.normpath(args.data)),
                               "pretraining": "moco"}, rewind_store="checkpoint")

    def checkpoint_extra(self, progress: StageProgress) -> dict:
        return {} if self.imp else {"arch": self.hparams.arch, "seed": self.hparams.seed}

    def curves_title(self, stage: int, remaining: float) -> str:
        return super().curves_title(stage, remaining) if self.imp else "dense MoCo training"

    def finished(self, progress: StageProgress, row: dict) -> None:
        """Dense training: the model in the released layout."""
        atomic_save(export_checkpoint(self.model, epoch=progress.next_epoch), self.run.file(EXPORT_NAME))
        print(f"done: {self.run.file(EXPORT_NAME)} holds the trained MoCo model; pass it as --pretrained_path "
              f"here or as --pretrained to main_eval_downstream.py")
