"""SimCLR pieces apart from the script: projection-head model, NT-Xent loss, weight loading, rewinding."""

from __future__ import annotations

import sys
from typing import Mapping

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
import torchvision.transforms as T

from lth import pruning
from lth.checkpoint import load_file
from lth.contrastive import TwoViews
from lth.engine import StepResult
from lth.errors import UserError
from lth.imp import PruneStrategy
from lth.models import build_model, select_state_dict

# Keys of a MoCo checkpoint: its encoders are not a SimCLR backbone under these names.
MOCO_PREFIXES = ("encoder_q.", "module.encoder_q.", "encoder_k.", "module.encoder_k.")


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------

class ProjectionHead(nn.Module):
    """SimCLR's MLP head g(h) = fc2(ReLU(fc1(h))), in place of the ResNet's classifier ``fc``."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.fc1 = nn.Linear(in_features, in_features)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(in_features, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.relu(self.fc1(x)))


def build_simclr_model(arch: str, mlpout: int, head: bool = True) -> nn.Module:
    """A torchvision ResNet (ImageNet stem) whose ``fc`` is the projection head (or nothing).

    Names stay torchvision's (``layer1.0.conv1.weight``, head ``fc.fc1.*``/``fc.fc2.*``), so the
    released ``simclr_weight.pt`` loads by name and the masks load directly downstream.
    """
    model = build_model(arch, 1000, 3, stem="imagenet")
    in_features = model.fc.in_features
    model.fc = ProjectionHead(in_features, mlpout) if head else nn.Identity()
    return model


def backbone_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The pooled features h of a torchvision ResNet, i.e. its forward without ``fc``.

    Validation measures on h (as the original did), not on the head's output z.
    """
    x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    x = model.layer4(model.layer3(model.layer2(model.layer1(x))))
    return torch.flatten(model.avgpool(x), 1)


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------

def simclr_transform(image_size: int) -> TwoViews:
    """The original's augmentation, applied twice per image; no Normalize, as in the original."""
    return TwoViews(T.Compose([
        T.RandomResizedCrop(image_size, scale=(0.08, 1.0)),
        T.RandomHorizontalFlip(),
        T.RandomApply([T.ColorJitter(0.8, 0.8, 0.8, 0.2)], p=0.8),
        T.RandomGrayscale(p=0.2),
        T.ToTensor(),
    ]))


def stack_views(views: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
    """``(B, 2, C, H, W)`` -> ``(2B, C, H, W)``: all first views, then all second views."""
    x = torch.cat([views[:, 0], views[:, 1]])
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


# --------------------------------------------------------------------------------------------
# Loss and metrics
# --------------------------------------------------------------------------------------------

def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class _GatherWithGrad(torch.autograd.Function):
    """All ranks' tensors concatenated; the backward sends each rank the gradient of its own rows
    summed over every rank's loss (``torch.distributed.nn``'s all_gather does this too but is
    deprecated in this PyTorch)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor.contiguous())
        ctx.rows = tensor.size(0)
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        start = dist.get_rank() * ctx.rows
        return grad[start:start + ctx.rows]


LOSS_FORMS = ("original", "textbook")


def _similarities(z1: torch.Tensor, z2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cosine similarities of this rank's 2n views against all 2N views, and each row's own and
    positive column.

    Rows are this rank's views (first views, then second views); columns are every rank's views
    (all first views, then all second views), gathered so that gradients flow back to the rank
    that computed them (ranks' batches are equal: the distributed sampler gives every rank as many
    images). Similarity is the original's ``pair_cosine_similarity``: dot product over the
    product of the norms, clamped at 1e-8; in at least fp32, as bf16 would blur 1/t-scaled values.
    """
    dtype = torch.promote_types(z1.dtype, torch.float32)
    z1, z2 = z1.to(dtype), z2.to(dtype)
    n = z1.size(0)
    if _distributed():
        all1, all2 = _GatherWithGrad.apply(z1), _GatherWithGrad.apply(z2)
        offset = dist.get_rank() * n
    else:
        all1, all2, offset = z1, z2, 0
    total = all1.size(0)
    rows, columns = torch.cat([z1, z2]), torch.cat([all1, all2])
    norms = rows.norm(dim=1, keepdim=True) * columns.norm(dim=1)[None]
    cosine = rows @ columns.T / norms.clamp(min=1e-8)
    index = torch.arange(n, device=z1.device) + offset
    return cosine, torch.cat([index, index + total]), torch.cat([index + total, index])


def nt_xent_logits(z1: torch.Tensor, z2: torch.Tensor, temperature: float
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Similarity logits (cosine / t) of this rank's views against all views, a view's own column
    excluded (-inf), and each row's positive: the inputs of the textbook loss and of the accuracy."""
    cosine, own, positive = _similarities(z1, z2)
    logits = (cosine / temperature).masked_fill(F.one_hot(own, cosine.size(1)).bool(), float("-inf"))
    return logits, positive


def _textbook_loss(logits: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """mean(-log p) over the rows: SimCLR paper's NT-Xent, a cross entropy.

    Under DDP each rank's loss is the mean over its own rows; DDP's gradient averaging then gives
    exactly the gradient of the mean over all 2N rows, the single-process loss on the global batch.
    """
    return F.cross_entropy(logits, positive)


def _original_loss(cosine: torch.Tensor, positive: torch.Tensor, temperature: float) -> torch.Tensor:
    """-log(mean p), p = exp(s_pos / t) / (sum_j exp(s_j / t) - exp(1 / t)): the original's ``nt_xent``.

    The sum runs over every column, the view's own included, and exp(1/t) (the similarity of a
    view with itself) is then subtracted, as the original did. Every term is scaled by exp(-1/t)
    (the same ratio; no overflow at small t). Under DDP the mean runs over all 2N rows: each rank
    returns the global value, and a surrogate whose gradient, averaged by DDP over the ranks, is
    the gradient of the global -log(mean p).
    """
    shifted = torch.exp((cosine - 1.0) / temperature)
    rows = torch.arange(cosine.size(0), device=cosine.device)
    p = shifted[rows, positive] / (shifted.sum(dim=1) - 1.0)
    local_sum, count = p.sum(), p.new_tensor(float(p.numel()))
    if not _distributed():
        return -torch.log(local_sum / count)
    totals = torch.stack([local_sum.detach(), count])
    dist.all_reduce(totals)
    total_sum, total_count = totals[0], totals[1]
    world = dist.get_world_size()
    surrogate = -world * local_sum / total_sum  # d/dz summed over ranks = world * d(-log sum)
    return surrogate - surrogate.detach() - torch.log(total_sum / total_count)


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5, form: str = "original") -> torch.Tensor:
    """Normalised temperature-scaled cross entropy over the 2N views of a batch (SimCLR's loss).

    ``form`` "original": -log(mean p), what the original SimCLR IMP code minimised; "textbook":
    mean(-log p), the SimCLR paper's definition.
    """
    if form == "textbook":
        return _textbook_loss(*nt_xent_logits(z1, z2, temperature))
    if form != "original":
        raise ValueError(f"unknown NT-Xent form '{form}' (expected one of {LOSS_FORMS})")
    cosine, _, positive = _similarities(z1, z2)
    return _original_loss(cosine, positive, temperature)


def make_step(temperature: float, channels_last: bool = False, form: str = "original"):
    """The training step for ``lth.engine.train_one_epoch``: NT-Xent (``form``) on the head's outputs.

    "Accuracy" is how often a view's most similar other view is its positive (contrastive top-1).
    """
    if form not in LOSS_FORMS:
        raise ValueError(f"unknown NT-Xent form '{form}' (expected one of {LOSS_FORMS})")

    def step(model: nn.Module, batch) -> StepResult:
        views, _ = batch
        z = model(stack_views(views, channels_last))
        z1, z2 = z.chunk(2)
        cosine, own, positive = _similarities(z1, z2)
        logits = (cosine / temperature).masked_fill(F.one_hot(own, cosine.size(1)).bool(), float("-inf"))
        loss = (_textbook_loss(logits, positive) if form == "textbook"
                else _original_loss(cosine, positive, temperature))
        correct = (logits.detach().argmax(1) == positive).sum()
        return StepResult(loss, correct, positive.numel())
    return step


def make_eval_logits(channels_last: bool = False):
    """``logits_fn`` for ``lth.contrastive.contrastive_evaluate``: the original's ``contrastive_acc``.

    Cosine similarity of the backbone features of this rank's 2n views against the 2N views of
    the whole batch (gathered under DDP, so every view has as many distractors as with the
    original's single process), a view's similarity with itself set to 0 (as the original did,
    not excluded), and each view's positive.
    """
    def logits_fn(model: nn.Module, batch) -> tuple[torch.Tensor, torch.Tensor]:
        views, _ = batch
        h1, h2 = backbone_features(model, stack_views(views, channels_last)).float().chunk(2)
        cosine, own, positive = _similarities(h1, h2)
        return cosine.masked_fill(F.one_hot(own, cosine.size(1)).bool(), 0.0), positive
    return logits_fn


# --------------------------------------------------------------------------------------------
# Pre-trained weights and rewinding
# --------------------------------------------------------------------------------------------

def read_sim_weights(path: str) -> dict[str, torch.Tensor]:
    """The weights of a SimCLR model file under torchvision names.

    Accepts ``{'state_dict': ...}`` (the released file, our dense pre-training output) or a bare
    state_dict, with or without DataParallel's ``module.``; IMP checkpoints give their
    ``weight_orig``. A MoCo checkpoint is refused: its encoder keys are MoCo's business.
    """
    state = select_state_dict(load_file(path, "SimCLR model (--sim_model)"), path, None)
    moco = next((key for key in state if key.startswith(MOCO_PREFIXES)), None)
    if moco is not None:
        raise UserError(f"--sim_model '{path}' is a MoCo checkpoint (key '{moco}'); find MoCo "
                        f"tickets with MoCo/main_moco_imp.py --pretrained_path {path}")
    return pruning.transferable_weights(state, fc=True, conv1=True)


def load_sim_weights(model: nn.Module, weights: Mapping[str, torch.Tensor], path: str,
                     quiet: bool = False) -> dict[str, torch.Tensor]:
    """Copy the tensors of ``weights`` that the (unpruned) model has into it; return them.

    Keys the model lacks (the released file's 1000-way ``fc``) are skipped, as are the batch-norm
    ``num_batches_tracked`` counters (not weights) and a head of another size. A backbone tensor
    of the wrong shape means another architecture: a ``UserError`` naming it.
    """
    own = model.state_dict()
    loaded, skipped = {}, []
    for key, value in weights.items():
        if key.endswith("num_batches_tracked") or key not in own:
            skipped.append(key)
            continue
        if not isinstance(value, torch.Tensor) or value.shape != own[key].shape:
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            if key.startswith("fc."):
                skipped.append(key)
                continue
            raise UserError(f"--sim_model '{path}' weight '{key}' has shape {shape} but this model "
                            f"expects {tuple(own[key].shape)}; is it for another --arch?")
        loaded[key] = value.detach().to("cpu", copy=True)
    backbone = [key for key in loaded if not key.startswith("fc.")]
    if not backbone:
        raise UserError(f"--sim_model '{path}' holds no weight of this {type(model).__name__} "
                        f"backbone (first keys: {', '.join(list(weights)[:4])})")
    model.load_state_dict(loaded, strict=False)
    if not quiet:
        left = [key for key in own if key not in loaded and not key.endswith("num_batches_tracked")]
        dropped = [key for key in skipped if not key.endswith("num_batches_tracked")]
        print(f"loaded {len(loaded)} tensors from {path}; skipped {len(dropped)} that do not fit "
              f"this model{_listing(dropped)}; {len(left)} left at init{_listing(left)}", file=sys.stderr)
    return loaded


def _listing(keys: list[str]) -> str:
    return (" (" + ", ".join(keys[:6]) + (" ..." if len(keys) > 6 else "") + ")") if keys else ""


class CheckpointRewind(PruneStrategy):
    """Magnitude pruning of the backbone convs (conv1 and the Linear head never), rewinding only
    the tensors the SimCLR checkpoint provided.

    As in the original, a pruned conv's ``weight_orig`` takes the checkpoint's ``weight`` (masks
    are kept), every other provided tensor is copied back, and the projection head, absent from
    the released checkpoint, keeps its trained values across rounds.
    """

    def __init__(self, rate: float, provided: dict | None = None, prune_type: str = "pt_trans"):
        super().__init__(rate, random=False, conv1=False, prune_type=prune_type)
        self.provided = provided

    def rewind_point(self, imp, moment) -> dict | None:
        """Only what --sim_model provided, taken at the start (a resumed run has it in its checkpoint)."""
        return self.provided if moment.kind == "start" else None

    def rewind(self, model: nn.Module, weights: dict) -> None:
        own = model.state_dict()
        with torch.no_grad():
            for key, value in weights.items():
                orig = key[: -len(".weight")] + pruning.ORIG_SUFFIX
                own[orig if key not in own and orig in own else key].copy_(value)
