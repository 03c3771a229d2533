"""The MoCo v2 model that IMP prunes: query and momentum encoders, the key queue, shuffle-BN (weight files: MoCo/weights.py)."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from lth.models import build_model


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
