"""Classification as a task: its objective (accuracy, with the summary keys its runs always had), its
step and evaluator, and the tasks of the top-level scripts (small data sets, ImageNet, VisDA-2017)."""

from __future__ import annotations

import math
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from lth import data, imagedata, pruning, tickets
from lth.checkpoint import atomic_save, load_file, write_json
from lth.distributed import Context, all_reduce_sum, per_process_batch, per_process_eval_batch
from lth.engine import Precision, StepResult, unwrap
from lth.errors import UserError
from lth.imp import CHECKPOINT_FORMAT, ImpConfig, PruneStrategy, examples_checkpoint_keys
from lth.loaders import Loaders
from lth.models import build_model, load_pretrained, select_state_dict
from lth.runs import ONE_OFF_SUMMARY, RunDir
from lth.task import Task
from lth.trainer import Objective, StageFiles, StageProgress, TrainConfig, load_checkpoint_into


class Accuracy(Objective):
    """Top-1 accuracy (%). Its summary rows keep the keys classification runs always wrote:
    ``best_val_acc``, ``test_acc_at_best_val``, ``reported_acc``, ``final_test_acc`` and the
    top-5 and mean class accuracy of the reported split at the best evaluation."""

    def summary_fields(self, progress: StageProgress) -> dict:
        split = "val" if math.isnan(progress.test_at_best) else "test"
        figures = {key: progress.at_best[f"{split}_{key}"] for key in ("top5", "mean_class_acc")
                   if f"{split}_{key}" in progress.at_best}
        tests = progress.history["test_ta"]
        return {"best_val_acc": progress.best_val, "test_acc_at_best_val": progress.test_at_best,
                "reported_acc": progress.reported, **figures,
                "final_test_acc": tests[-1] if tests else math.nan}


# Classification's and the contrastive tasks' primary metric (console lines read "val 93.10").
ACCURACY = Accuracy(label="accuracy (%)", plot_name="accuracy", shown="")


def step(model: nn.Module, batch) -> StepResult:
    """Cross-entropy on ``(inputs, labels)``: the step of every classification script."""
    inputs, labels = batch
    logits = model(inputs)
    return StepResult(F.cross_entropy(logits, labels), (logits.detach().argmax(1) == labels).sum(),
                      labels.size(0))


@torch.inference_mode()
def evaluate(model: nn.Module, loader, ctx: Context, precision: Precision, num_classes: int,
             desc: str = "eval") -> dict:
    """Top-1, top-5 (when there are more than 5 classes), mean loss and per-class accuracy (%).

    Every rank evaluates its shard; counts are summed over ranks, so the result is exact.
    Per-class accuracy and its mean are the VisDA metric.
    """
    model = unwrap(model)
    was_training = model.training
    model.eval()
    device = ctx.device
    loss_sum = torch.zeros((), device=device)
    top5 = torch.zeros((), device=device)
    class_correct = torch.zeros(num_classes, device=device)
    class_total = torch.zeros(num_classes, device=device)
    for inputs, labels in tqdm(loader, desc=desc, leave=False, disable=None if ctx.is_main else True, dynamic_ncols=True):
        with precision.eval_autocast(device):
            logits = model(inputs)
        logits = logits.float()
        loss_sum += F.cross_entropy(logits, labels, reduction="sum")
        hit = logits.argmax(1) == labels
        class_total += torch.bincount(labels, minlength=num_classes)[:num_classes].float()
        class_correct += torch.bincount(labels[hit], minlength=num_classes)[:num_classes].float()
        if num_classes > 5:
            top5 += (logits.topk(5, dim=1).indices == labels[:, None]).any(1).sum()
    totals = all_reduce_sum(torch.cat([class_correct, class_total, loss_sum[None], top5[None]]))
    class_correct, class_total = totals[:num_classes], totals[num_classes:2 * num_classes]
    count = class_total.sum().item()
    per_class = torch.where(class_total > 0, 100.0 * class_correct / class_total.clamp(min=1),
                            torch.full_like(class_total, float("nan")))
    model.train(was_training)
    result = {"acc": 100.0 * class_correct.sum().item() / max(count, 1),
              "loss": totals[-2].item() / max(count, 1),
              "per_class": [round(value, 4) for value in per_class.tolist()],
              "mean_class_acc": float(per_class[class_total > 0].mean().item()) if count else float("nan")}
    if num_classes > 5:
        result["top5"] = 100.0 * totals[-1].item() / max(count, 1)
    return result


def evaluate_and_print(model: nn.Module, loaders: Loaders, precision: Precision, ctx: Context, *,
                       run: RunDir | None = None, checkpoint: str | None = None, fmt: str = "",
                       conv1: bool = False) -> dict:
    """The ``-e`` of the original scripts: print top-1/top-5/mean class accuracy on val, write nothing.

    With ``run`` (a bare ``--resume``) its latest checkpoint is loaded first, or ``checkpoint`` when given.
    """
    if checkpoint is None and run is not None:
        checkpoints = run.checkpoints()
        if not checkpoints:
            raise UserError(f"--resume given but '{run.path}' holds no checkpoint to evaluate")
        checkpoint = checkpoints[max(checkpoints)]
    if checkpoint is not None:
        load_checkpoint_into(model, checkpoint, fmt, {}, conv1)
    result = evaluate(model, loaders.val, ctx, precision, loaders.num_classes, desc="val")
    remaining = pruning.sparsity(model, conv1)["remaining"]
    if ctx.is_main:
        top5 = f" top-5 {result['top5']:.2f}" if "top5" in result else ""
        print(f"val top-1 {result['acc']:.2f}{top5} mean class accuracy {result['mean_class_acc']:.2f} "
              f"loss {result['loss']:.4f} ({remaining:.2f}% of conv weights remain"
              f"{', ' + checkpoint if checkpoint else ''})", flush=True)
    return result


def small_image_loaders(args, ctx: Context, precision: Precision, seed: int) -> tuple[data.DatasetSpec, Loaders]:
    """A small data set (``--dataset``, the whole of it kept on the training device as uint8) and
    its loaders, ``--batch_size`` being the global batch."""
    splits = data.load_splits(args.dataset, args.data, download=args.download)
    batch = per_process_batch(args.batch_size, ctx)
    eval_batch = per_process_eval_batch(args.eval_batch_size or 4 * args.batch_size, ctx)
    common = dict(spec=splits.spec, seed=seed, device=ctx.device, rank=ctx.rank,
                  world_size=ctx.world_size, channels_last=precision.channels_last)
    loaders = Loaders(
        train=data.TensorLoader(splits.train_x, splits.train_y, batch_size=batch, train=True, **common),
        val=data.TensorLoader(splits.val_x, splits.val_y, batch_size=eval_batch, train=False, **common),
        test=data.TensorLoader(splits.test_x, splits.test_y, batch_size=eval_batch, train=False, **common),
        num_classes=splits.spec.num_classes)
    if len(loaders.train) == 0:
        raise UserError(f"{args.dataset} has {splits.train_x.shape[0]} training images per process, "
                        f"fewer than one batch of {batch}: lower --batch_size")
    return splits.spec, loaders


# --------------------------------------------------------------------------------------------
# Tasks
# --------------------------------------------------------------------------------------------

class ClassificationTask(Task):
    """Cross-entropy training judged by top-1 accuracy; the loaders give ``num_classes``."""

    def step(self, model: nn.Module, batch) -> StepResult:
        return step(model, batch)

    def evaluate(self, model: nn.Module, loader, desc: str) -> dict:
        return evaluate(model, loader, self.session.ctx, self.session.precision, self.loaders.num_classes, desc=desc)

    def train_config(self) -> TrainConfig:
        return TrainConfig.from_args(self.hparams, objective=ACCURACY)

    def on_device(self, model: nn.Module) -> nn.Module:
        model = model.to(self.session.ctx.device)
        if self.session.precision.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model


class SmallImageTask(ClassificationTask):
    """IMP on a small data set (CIFAR-10/100, SVHN, Fashion-MNIST, digits): main_imp_downstream.py.

    The whole data set is kept on the training device as uint8; the ResNet has the CIFAR stem.
    ``--pretrained`` is loaded only for ``pt_trans`` (the original ignores it otherwise).
    """
    checkpoint_format = CHECKPOINT_FORMAT

    def make_loaders(self) -> Loaders:
        self.spec, loaders = small_image_loaders(self.hparams, self.session.ctx, self.session.precision,
                                                 self.session.seed)
        return loaders

    def make_model(self) -> nn.Module:
        """The ResNet for this data set, initialised from the seed (identical on every rank)."""
        args = self.hparams
        torch.manual_seed(self.session.seed)
        model = self.on_device(build_model(args.arch, self.spec.num_classes, self.spec.in_channels, stem="cifar"))
        self.load_start_weights(model)
        return model

    def load_start_weights(self, model: nn.Module) -> None:
        args, is_main = self.hparams, self.session.ctx.is_main
        if args.pretrained and args.prune_type != "pt_trans":
            if is_main:
                print(f"notice: --pretrained is ignored with --prune_type {args.prune_type} (as in the original): "
                      f"round 0 starts from a random init; use --prune_type pt_trans to start from and "
                      f"rewind to it", file=sys.stderr)
        elif args.pretrained:
            load_pretrained(model, args.pretrained, args.dict_key, fc=args.fc, conv1=args.conv1, quiet=not is_main)

    def make_strategy(self) -> PruneStrategy:
        args = self.hparams
        return PruneStrategy(args.rate, args.random_prune, args.conv1, prune_type=args.prune_type,
                             rewind_epoch=args.rewind_epoch)

    def imp_config(self) -> ImpConfig:
        args = self.hparams
        return ImpConfig(rounds=args.pruning_times, seed=args.seed, meta={"arch": args.arch, "dataset": args.dataset},
                         rewind_store="checkpoint")


class SmallImageTicketTask(SmallImageTask):
    """One ticket (pre-trained weights + a mask) trained on a small data set: main_eval_downstream.py.

    As the original's load_ticket: --conv1 only masks conv1, --load_all also loads it (and fc).
    """
    checkpoint_format = "lth-eval"
    files = StageFiles(checkpoint="checkpoint.pth.tar", best="model_SA_best.pth.tar", curves="net_train.png")

    @property
    def save_best(self) -> bool:
        return self.hparams.save_model

    def load_start_weights(self, model: nn.Module) -> None:
        args, is_main = self.hparams, self.session.ctx.is_main
        if args.pretrained:
            load_pretrained(model, args.pretrained, args.dict_key, fc=args.fc or args.load_all,
                            conv1=args.load_all, quiet=not is_main)
        self.mask_meta, self.mask_remaining = tickets.apply_ticket_args(model, args, is_main)

    def make_strategy(self) -> PruneStrategy:
        return PruneStrategy(0.2, conv1=self.hparams.conv1)

    def checkpoint_extra(self, progress: StageProgress) -> dict:
        return {"mask_meta": self.mask_meta}

    def record_summary(self, row: dict, progress: StageProgress) -> None:
        args = self.hparams
        write_json({"remaining": self.mask_remaining, "reverse_mask": args.reverse_mask, "mask": args.mask_dir,
                    "pretrained": args.pretrained, "best_epoch": progress.best_epoch,
                    "best_val_acc": progress.best_val, "test_acc_at_best_val": progress.test_at_best,
                    "final_test_acc": progress.history["test_ta"][-1]}, self.run.file(ONE_OFF_SUMMARY))

    def curves_title(self, stage: int, remaining: float) -> str:
        return f"{self.mask_remaining:.2f}% of conv weights remain"

    def finished(self, progress: StageProgress, row: dict) -> None:
        print(f"done: test accuracy {progress.test_at_best:.2f}% at the best validation epoch "
              f"({progress.best_epoch}); results in {self.hparams.save_dir}")


class ImageFolderTask(ClassificationTask):
    """A torchvision ResNet (ImageNet stem) on image files: ImageFolder (ImageNet) or VisDA-2017 lists.

    ``visda`` picks the VisDA-2017 layout and its 12 classes; no test split (the original reports
    validation accuracy).
    """
    checkpoint_format = CHECKPOINT_FORMAT
    visda = False

    def make_loaders(self) -> Loaders:
        args, session = self.hparams, self.session
        if self.visda:
            train_set, val_set = imagedata.visda_splits(args.data, args.image_size)
            num_classes = imagedata.VISDA_CLASSES
        else:
            train_set, val_set = imagedata.image_folder_splits(args.data, args.image_size)
            num_classes = len(train_set.classes)
        return imagedata.image_loaders(train_set, val_set, num_classes, batch_size=args.batch_size,
                                       eval_batch_size=args.eval_batch_size, workers=args.workers,
                                       seed=args.seed, ctx=session.ctx, precision=session.precision)

    def make_model(self) -> nn.Module:
        session = self.session
        model = imagedata.image_model(self.hparams.arch, self.loaders.num_classes, self.hparams.seed, session.ctx,
                                      session.precision)
        if not self.hparams.resume:
            self.load_start_weights(model)
        return model

    def load_start_weights(self, model: nn.Module) -> None:
        pass

    def checkpoint_extra(self, progress: StageProgress) -> dict:
        return examples_checkpoint_keys(self.strategy, self.model, progress)


class ImageNetTask(ImageFolderTask):
    """IMP of an ImageNet ResNet on ImageFolder data: main_imp_imagenet.py (``--states 0``: dense training).

    Round 0 only evaluates and prunes one-shot; every round rewinds all weights (fc and batch norms
    included) to the starting ones: pre-trained (pt_trans) or random init (lt).
    """
    files = StageFiles(checkpoint="checkpoint.pth.tar", best="{stage}model_best.pth.tar")

    def __init__(self, hparams):
        super().__init__(hparams)
        if hparams.states == 0:  # dense training (train_once), the IMP scripts' files and logs
            self.checkpoint_format = "lth-dense"
            self.files = StageFiles(checkpoint="checkpoint.pth.tar", best="model_best.pth.tar", curves="net_train.png")

    def load_start_weights(self, model: nn.Module) -> None:
        """The pre-trained weights, fc included when it fits the number of classes; else random init."""
        args, is_main = self.hparams, self.session.ctx.is_main
        if not args.pretrained:
            if not args.random and is_main:
                print("notice: no --pretrained weights given (they cannot be downloaded here): starting "
                      "from random init; pass --random to say that is intended", file=sys.stderr)
            return
        state = select_state_dict(load_file(args.pretrained, "pre-trained weight"), args.pretrained, args.dict_key)
        fc = pruning.transferable_weights(state, fc=True).get("fc.weight")
        load_fc = fc is not None and tuple(fc.shape) == tuple(model.fc.weight.shape)
        if fc is not None and not load_fc and is_main:
            print(f"notice: the fc of {args.pretrained} has {fc.shape[0]} outputs but {args.data}/train has "
                  f"{model.fc.out_features} classes: fc is not loaded and keeps its random init", file=sys.stderr)
        load_pretrained(model, args.pretrained, args.dict_key, fc=load_fc, conv1=True, quiet=not is_main)

    def make_strategy(self) -> PruneStrategy:
        # Both rewind to the weights the run starts from: pre-trained (pt_trans) or random init (lt);
        # --prune_type lrr keeps the trained weights instead.
        return PruneStrategy(self.hparams.percent,
                             prune_type=self.hparams.prune_type or ("pt_trans" if self.hparams.pretrained else "lt"))

    def imp_config(self) -> ImpConfig:
        args = self.hparams
        return ImpConfig(rounds=args.states, seed=args.seed, train_round0=False, rewind_store="checkpoint",
                         meta={"arch": args.arch, "dataset": "imagenet", "pretrained": args.pretrained,
                               "image_size": args.image_size, "num_classes": self.loaders.num_classes})

    def checkpoint_extra(self, progress: StageProgress) -> dict:
        if self.hparams.states == 0:
            return {"arch": self.hparams.arch, "dataset": "imagenet", "seed": self.hparams.seed, "if_pruned": False,
                    "mask": None, "best_acc1": max(progress.best_val, 0.0)}
        return super().checkpoint_extra(progress)

    def curves_title(self, stage: int, remaining: float) -> str:
        return "dense training" if self.hparams.states == 0 else super().curves_title(stage, remaining)

    def finished(self, progress: StageProgress, row: dict) -> None:
        print(f"done: best validation top-1 {progress.best_val:.2f}% (epoch {progress.best_epoch}); "
              f"{self.files.best} in {self.hparams.save_dir} can be given as --pretrained")


class VisdaTask(ImageFolderTask):
    """IMP on VisDA-2017 from random init (lt, also saved as random_init.pt) or pre-trained weights
    with a new 12-way fc (pt_trans): main_imp_visda.py."""
    visda = True
    files = StageFiles(checkpoint="checkpoint.pth.tar", best="{stage}model_best.pth.tar")

    def load_start_weights(self, model: nn.Module) -> None:
        args = self.hparams
        if args.prune_type == "pt_trans" or (args.prune_type == "lrr" and args.pre_weight):
            load_pretrained(model, args.pre_weight, args.dict_key, fc=False, conv1=True,
                            quiet=not self.session.ctx.is_main)

    def make_strategy(self) -> PruneStrategy:
        return PruneStrategy(self.hparams.percent, prune_type=self.hparams.prune_type)

    def imp_config(self) -> ImpConfig:
        args = self.hparams
        return ImpConfig(rounds=args.states, seed=args.seed, rewind_store="checkpoint",
                         meta={"arch": args.arch, "dataset": args.dataset, "pre_weight": args.pre_weight,
                               "image_size": args.image_size})

    def save_random_init(self) -> None:
        """lt: the random init every round rewinds to, also as the original's random_init.pt."""
        if self.hparams.prune_type == "lt" and not self.hparams.resume and self.session.ctx.is_main:
            atomic_save({"state_dict": pruning.dense_state_dict(self.model)}, self.run.file("random_init.pt"))


class VisdaTicketTask(ImageFolderTask):
    """One ticket trained on VisDA-2017 (fc dropped, conv1 loaded): main_eval_visda.py."""
    visda = True
    checkpoint_format = "lth-eval-visda"
    files = StageFiles(checkpoint="checkpoint.pth.tar", best="model_best.pth.tar", curves="net_train.png")

    def load_start_weights(self, model: nn.Module) -> None:
        args, is_main = self.hparams, self.session.ctx.is_main
        if args.pretrained:
            load_pretrained(model, args.pretrained, args.dict_key, fc=False, conv1=True, quiet=not is_main)

    def make_model(self) -> nn.Module:
        session = self.session
        model = imagedata.image_model(self.hparams.arch, imagedata.VISDA_CLASSES, self.hparams.seed, session.ctx,
                                      session.precision)
        self.load_start_weights(model)
        self.mask_meta, self.mask_remaining = tickets.apply_ticket_args(model, self.hparams, session.ctx.is_main)
        return model

    def make_strategy(self) -> PruneStrategy:
        return PruneStrategy(0.2, conv1=self.hparams.conv1)

    def checkpoint_extra(self, progress: StageProgress) -> dict:
        return {"arch": self.hparams.arch, "mask_meta": self.mask_meta, "best_acc1": max(progress.best_val, 0.0)}

    def record_summary(self, row: dict, progress: StageProgress) -> None:
        args = self.hparams
        final = self.run.metrics()[-1] if self.run.metrics() else {}
        at_best = progress.at_best
        self.summary = {"remaining": self.mask_remaining, "reverse_mask": args.reverse_mask, "mask": args.mask_dir,
                        "pretrained": args.pretrained, "best_epoch": progress.best_epoch,
                        "best_val_acc": progress.best_val,
                        "mean_class_acc_at_best_val": at_best.get("val_mean_class_acc", math.nan),
                        "per_class_acc_at_best_val": at_best.get("val_per_class", []),
                        "final_val_acc": final.get("val_acc", math.nan),
                        "final_mean_class_acc": final.get("val_mean_class_acc", math.nan)}
        write_json(self.summary, self.run.file(ONE_OFF_SUMMARY))

    def curves_title(self, stage: int, remaining: float) -> str:
        return f"{self.mask_remaining:.2f}% of conv weights remain"

    def finished(self, progress: StageProgress, row: dict) -> None:
        print(f"done: validation top-1 {progress.best_val:.2f}% and mean class accuracy "
              f"{self.summary['mean_class_acc_at_best_val']:.2f}% at the best epoch ({progress.best_epoch}); "
              f"results in {self.hparams.save_dir}")
