"""SimCLR as a task: ImageFolder views, the projection-head ResNet from --sim_model, the NT-Xent step,
the contrastive evaluation, and IMP (rewinding what --sim_model provided) or dense pre-training."""

from __future__ import annotations

import os
import sys

import torch
import torch.nn as nn

from lth import distributed, pruning
from lth.checkpoint import atomic_save
from lth.classification import ACCURACY
from lth.contrastive import contrastive_evaluate
from lth.engine import StepResult
from lth.errors import UserError
from lth.imagedata import image_folder
from lth.imp import ImpConfig, PruneStrategy
from lth.loaders import DeviceLoader, Loaders
from lth.task import Task
from lth.trainer import StageFiles, StageProgress, TrainConfig
from SimCLR import simclr
from SimCLR.hparams import MOMENTUM

DENSE_FORMAT = "lth-simclr-dense"
DENSE_OUTPUT = "simclr_weight.pt"
IMP_FORMAT = "lth-imp"
# Round r's resumable state (its last epoch: the original's model_pruned{r*prun_epoch}.pt) and its
# best-validation model; the checkpoint name is the one RunDir looks for on --resume.
FILES = StageFiles(checkpoint="{stage}checkpoint.pth.tar", best="{stage}model_best.pth.tar")


def make_loaders(args, ctx) -> Loaders:
    """Two augmented views of DIR/train (training) and DIR/val (the contrastive test)."""
    transform = simclr.simclr_transform(args.image_size)
    train_set = image_folder(args.data, "train", transform)
    val_set = image_folder(args.data, "val", transform)
    per_process = distributed.per_process_batch(args.batch_size, ctx)
    common = dict(seed=args.seed, ctx=ctx, workers=args.workers)
    # The last partial batch is kept, as the original's loader kept it (under DDP every rank's
    # last batch has the same size: the sampler pads), so NT-Xent's gather stays aligned.
    loaders = Loaders(train=DeviceLoader(train_set, per_process, train=True, drop_last=False, **common),
                      val=DeviceLoader(val_set, per_process, train=False, **common),
                      test=None, num_classes=len(train_set.classes))
    if len(loaders.train) == 0:
        raise UserError(f"{args.data}/train has {len(train_set)} images, fewer than one batch of "
                        f"{per_process} per process: lower --batch_size")
    return loaders


class SimCLRTask(Task):
    """``--prun_percent`` > 0: IMP (round 0 evaluates the pre-trained model, then every
    ``--prun_epoch`` epochs prune and rewind); 0: dense SimCLR training written as ``simclr_weight.pt``.

    ``weights`` are the --sim_model tensors read by the script (None on resume or from scratch).
    """
    files = FILES

    def __init__(self, hparams, weights: dict | None):
        super().__init__(hparams)
        self.weights = weights
        self.imp = bool(hparams.prun_percent)
        self.checkpoint_format = IMP_FORMAT if self.imp else DENSE_FORMAT
        if not self.imp:
            self.files = StageFiles(checkpoint=FILES.checkpoint, best=FILES.best, curves=None)

    @property
    def meta(self) -> dict:
        args = self.hparams
        return {"arch": args.arch, "dataset": os.path.basename(os.path.normpath(os.path.abspath(args.data))),
                "pretraining": "simclr"}

    def make_loaders(self) -> Loaders:
        return make_loaders(self.hparams, self.session.ctx)

    def make_model(self) -> nn.Module:
        args, ctx, precision = self.hparams, self.session.ctx, self.session.precision
        torch.manual_seed(args.seed)  # the head (and everything, from scratch) starts alike on every rank
        model = simclr.build_simclr_model(args.arch, args.mlpout, head=args.phead)
        self.loaded = None  # what is rewound to: the part of --sim_model the model has
        if self.weights is not None:
            self.loaded = simclr.load_sim_weights(model, self.weights, args.sim_model, quiet=not ctx.is_main)
        self.weights = None  # free the rest of the file
        model = model.to(ctx.device)
        if precision.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if args.sync_bn:
            if ctx.distributed and ctx.device.type == "cuda":
                model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            elif ctx.is_main:
                print("notice: --sync_bn needs several CUDA processes; ignored", file=sys.stderr)
        self._step = simclr.make_step(args.temperature, precision.channels_last, args.loss)
        self._logits = simclr.make_eval_logits(precision.channels_last)
        return model

    def train_config(self) -> TrainConfig:
        args = self.hparams
        # The original's Adam took no weight decay; a constant learning rate (no warm-up, no decay).
        return TrainConfig.from_hparams(args, epochs=args.prun_epoch if self.imp else args.epochs,
                                        momentum=MOMENTUM, optimizer=args.optimizer, objective=ACCURACY,
                                        warmup=0, milestones=[],
                                        weight_decay=0.0 if args.optimizer == "adam" else args.weight_decay)

    def make_strategy(self) -> PruneStrategy:
        if not self.imp:
            return PruneStrategy(0.2)
        return simclr.CheckpointRewind(self.hparams.prun_percent, provided=self.loaded,
                                       prune_type=self.hparams.prune_type or "pt_trans")

    def step(self, model: nn.Module, batch) -> StepResult:
        return self._step(model, batch)

    def evaluate(self, model: nn.Module, loader, desc: str) -> dict:
        return contrastive_evaluate(model, loader, self.session.ctx, self.session.precision, self._logits, desc=desc)

    def imp_config(self) -> ImpConfig:
        args = self.hparams
        return ImpConfig(rounds=1 + args.epochs // args.prun_epoch, seed=args.seed, meta=self.meta,
                         train_round0=False, rewind_store="checkpoint")

    def checkpoint_extra(self, progress: StageProgress) -> dict:
        return {} if self.imp else {"seed": self.hparams.seed, **self.meta}

    def finished(self, progress: StageProgress, row: dict) -> None:
        """Dense training: the final model, written as --sim_model reads it."""
        args = self.hparams
        atomic_save({"state_dict": pruning.dense_state_dict(self.model), "epochs": args.epochs,
                     "mlpout": args.mlpout, **self.meta}, self.run.file(DENSE_OUTPUT))
