"""The MoCo v2 model that IMP prunes: query and momentum encoders, the key queue, shuffle-BN, weight loading."""

from __future__ import annotations

import sys
from typing import Mapping

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from lth import pruning
from lth.checkpoint import load_file
from lth.errors import UserError
from lth.models import LoadReport, build_model, select_state_dict


def make_encoder(arch: str, dim: int, mlp: bool) -> nn.Module:
    """A torchvision ResNet (ImageNet stem) whose fc maps to ``dim``; with ``mlp`` fc is fc.0-ReLU-fc.2.

    The MLP keeps the key names of released MoCo v2 checkpoints (``fc.0.*``, ``fc.2.*``).
    """
    encoder = build_model(arch, dim, 3, stem="imagenet")
    if mlp:
        width = encoder.fc.in_features
        encoder.fc = nn.Sequential(nn.Linear(width, width), nn.ReLU(inplace=True), encoder.fc)
    return encoder


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@torch.no_grad()
def gather_batches(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's ``tensor`` concatenated along dim 0, in rank order (no gradient flows back)."""
    if not _distributed():
        return tensor
    tensor = tensor.contiguous()
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor)
    return torch.cat(parts)


class MoCo(nn.Module):
    """MoCo: a query encoder trained by InfoNCE against a momentum key encoder and a queue of keys.

    ``forward(im_q, im_k)`` is the training step's model call: it returns the logits (positive in
    column 0) and their targets, and pushes the new keys into the queue. The momentum update is a
    separate call (``momentum_update``), run after each optimizer step. After pruning, both encoders
    hold ``weight_orig`` + ``weight_mask``; the momentum update then acts on ``weight_orig``.
    """

    def __init__(self, arch: str = "resnet50", dim: int = 128, queue_size: int = 65536,
                 momentum: float = 0.999, temperature: float = 0.07, mlp: bool = False):
        super().__init__()
        self.arch, self.dim, self.mlp = arch, dim, mlp
        self.queue_size, self.momentum, self.temperature = queue_size, momentum, temperature
        self.encoder_q = make_encoder(arch, dim, mlp)
        self.encoder_k = make_encoder(arch, dim, mlp)
        self.encoder_k.load_state_dict(self.encoder_q.state_dict())
        self.freeze_key_encoder()
        self.register_buffer("queue", F.normalize(torch.randn(dim, queue_size), dim=0))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))

    def freeze_key_encoder(self) -> None:
        """The key encoder follows the query encoder by momentum, never by gradient.

        Called again after every (re-)pruning: ``prune.remove`` creates new parameters, which
        would otherwise require gradients and make DDP wait for gradients that never come.
        """
        for param in self.encoder_k.parameters():
            param.requires_grad_(False)

    @torch.no_grad()
    def momentum_update(self) -> None:
        """key = m * key + (1 - m) * query, parameter by parameter (matched by name)."""
        query = dict(self.encoder_q.named_parameters())
        key = dict(self.encoder_k.named_parameters())
        if query.keys() != key.keys():
            missing = sorted(set(query) ^ set(key))[0]
            raise RuntimeError(f"the two MoCo encoders are pruned differently (e.g. '{missing}')")
        names = list(query)
        keys = [key[name] for name in names]
        torch._foreach_mul_(keys, self.momentum)
        torch._foreach_add_(keys, [query[name] for name in names], alpha=1.0 - self.momentum)

    def forward(self, im_q: torch.Tensor, im_k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q = F.normalize(self.encoder_q(im_q), dim=1)
        with torch.no_grad():
            shuffled, restore = self._shuffle(im_k)
            k = F.normalize(self.encoder_k(shuffled), dim=1)
            k = self._unshuffle(k, restore)
        # The queue is cloned because _enqueue overwrites it in place while backward still needs it.
        logits = self._logits(q, k, self.queue.clone().detach())
        self._enqueue(k)
        return logits, torch.zeros(logits.size(0), dtype=torch.long, device=logits.device)

    @torch.no_grad()
    def contrastive_logits(self, im_q: torch.Tensor, im_k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits of a test batch against the current queue: no shuffle, no enqueue, no momentum update."""
        q = F.normalize(self.encoder_q(im_q), dim=1)
        k = F.normalize(self.encoder_k(im_k), dim=1)
        logits = self._logits(q, k, self.queue)
        return logits, torch.zeros(logits.size(0), dtype=torch.long, device=logits.device)

    def _logits(self, q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor) -> torch.Tensor:
        positive = (q * k).sum(dim=1, keepdim=True)
        negative = q @ queue.to(q.dtype)
        return torch.cat([positive, negative], dim=1) / self.temperature

    @torch.no_grad()
    def _enqueue(self, keys: torch.Tensor) -> None:
        keys = gather_batches(keys)
        count = keys.size(0)
        if self.queue_size % count:
            raise RuntimeError(f"queue size {self.queue_size} is not a multiple of the global batch {count}")
        start = int(self.queue_ptr)
        self.queue[:, start:start + count] = keys.T.to(self.queue.dtype)
        self.queue_ptr[0] = (start + count) % self.queue_size

    @torch.no_grad()
    def _shuffle(self, images: torch.Tensor):
        """Shuffle-BN: deal the global key batch out to the ranks in a random order.

        Each rank's batch-norm statistics then come from other images than its queries', so the
        model cannot find the positive through the statistics. A single process has nothing to do.
        """
        if not _distributed():
            return images, None
        channels_last = images.dim() == 4 and images.is_contiguous(memory_format=torch.channels_last)
        gathered = gather_batches(images)
        order = torch.randperm(gathered.size(0), device=gathered.device)
        dist.broadcast(order, src=0)
        mine = order.view(dist.get_world_size(), -1)[dist.get_rank()]
        shuffled = gathered[mine]
        if channels_last:
            shuffled = shuffled.contiguous(memory_format=torch.channels_last)
        return shuffled, torch.argsort(order)

    @torch.no_grad()
    def _unshuffle(self, keys: torch.Tensor, restore: torch.Tensor | None) -> torch.Tensor:
        if restore is None:
            return keys
        gathered = gather_batches(keys)
        return gathered[restore.view(dist.get_world_size(), -1)[dist.get_rank()]]


# --------------------------------------------------------------------------------------------
# Pre-trained weights and the file format they are written in
# --------------------------------------------------------------------------------------------

def load_moco_weights(model: MoCo, path: str, quiet: bool = False) -> LoadReport:
    """Load a MoCo checkpoint's query encoder into BOTH encoders of ``model`` (in place).

    Accepts ``moco_v2_800ep_pretrain.pth.tar`` (``state_dict`` with ``module.encoder_q.*``, maybe
    ``module.encoder_k.*`` and the queue), ``moco.pt`` (plain torchvision names) and the files
    this toolkit writes (IMP checkpoints included: ``weight_orig * weight_mask`` is loaded).
    encoder_k values are never loaded: the original stripped 17 characters from every key, so
    ``module.encoder_k.*`` overwrote encoder_q. The queue is loaded when its shape fits.
    A key that fits neither encoder, or a shape that differs, is a ``UserError`` naming it.
    """
    state = select_state_dict(load_file(path, "pre-trained weight"), path, None)
    encoder, names, queue, skipped = {}, {}, {}, 0
    for key, value in state.items():
        name = key[len("module."):] if key.startswith("module.") else key
        if name.startswith("encoder_k."):
            skipped += 1
            continue
        if name in ("queue", "queue_ptr"):
            queue[name] = value
            continue
        if name.startswith("encoder_q."):
            name = name[len("encoder_q."):]
        encoder[name], names[name] = value, key
    if any(name.endswith(pruning.MASK_SUFFIX) for name in encoder):
        try:
            encoder = pruning.dense_state_dict(encoder)
        except KeyError as error:
            raise UserError(f"'{path}' holds a pruned weight without its mask ({error})") from None
        names = {name: names.get(name, names.get(name[:-len(".weight")] + pruning.ORIG_SUFFIX, name))
                 for name in encoder}
    target = model.encoder_q.state_dict()
    setting = f"a MoCo {model.arch} with --moco-dim {model.dim}{' and --mlp' if model.mlp else ' without --mlp'}"
    for name, value in encoder.items():
        if name not in target:
            hint = "pass --mlp for MoCo v2's MLP head" if name.startswith("fc.0.") and not model.mlp else \
                "is it for another architecture or head?"
            raise UserError(f"'{path}' has weight '{names[name]}' that fits neither encoder of {setting}; {hint}")
        if not isinstance(value, torch.Tensor) or value.shape != target[name].shape:
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise UserError(f"'{path}' weight '{names[name]}' has shape {shape} but {setting} expects "
                            f"{tuple(target[name].shape)}")
    if not encoder:
        raise UserError(f"'{path}' holds no query-encoder weights (encoder_q or plain ResNet names)")
    with torch.no_grad():
        for name, value in encoder.items():
            target[name].copy_(value.to(target[name].dtype))
    model.encoder_k.load_state_dict(model.encoder_q.state_dict())
    model.freeze_key_encoder()
    report = LoadReport(path=path, loaded=sorted(encoder),
                        left_at_init=[name for name in target if name not in encoder])
    queue_note = _load_queue(model, queue)
    if not quiet:
        ignored = f"; ignored {skipped} encoder_k tensors" if skipped else ""
        print(f"{report.summary()} (into both encoders{ignored}); {queue_note}", file=sys.stderr)
    return report


def _load_queue(model: MoCo, queue: Mapping[str, torch.Tensor]) -> str:
    saved = queue.get("queue")
    if saved is None:
        return "queue starts random"
    if not isinstance(saved, torch.Tensor) or saved.shape != model.queue.shape:
        shape = tuple(saved.shape) if isinstance(saved, torch.Tensor) else "?"
        return f"queue starts random (the file's is {shape}, this model's {tuple(model.queue.shape)})"
    with torch.no_grad():
        model.queue.copy_(saved.to(model.queue.dtype))
        pointer = queue.get("queue_ptr")
        if isinstance(pointer, torch.Tensor) and pointer.numel() == 1:
            model.queue_ptr.fill_(int(pointer) % model.queue_size)
    return "queue loaded"


def export_checkpoint(model: MoCo, **meta) -> dict:
    """``model`` in the released ``moco_v2_800ep_pretrain.pth.tar`` layout (``module.encoder_q.*``...).

    ``--pretrained_path`` and ``main_eval_downstream.py --pretrained`` read it; masks, if any, are
    baked into the weights.
    """
    state = pruning.dense_state_dict(model)
    return {"state_dict": {f"module.{key}": value.cpu() for key, value in state.items()},
            "arch": model.arch, "moco_dim": model.dim, "mlp": model.mlp, **meta}
