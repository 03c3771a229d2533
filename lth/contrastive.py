"""Pieces shared by the self-supervised scripts (SimCLR, MoCo): two-view data and contrastive metrics."""

from __future__ import annotations

from typing import Callable, Iterable, Sequence

import torch
import torch.nn as nn
from tqdm import tqdm

from lth.distributed import Context, all_reduce_sum
from lth.engine import Precision, unwrap


class TwoViews:
    """Apply one random augmentation twice to the same image: the positive pair of a contrastive loss."""

    def __init__(self, transform: Callable):
        self.transform = transform

    def __call__(self, image):
        return torch.stack([self.transform(image), self.transform(image)])

    def __repr__(self) -> str:
        return f"TwoViews({self.transform!r})"


def topk_hits(logits: torch.Tensor, targets: torch.Tensor, ks: Sequence[int]) -> torch.Tensor:
    """How many rows have their target among the ``k`` largest logits, for each k (a device tensor)."""
    largest = logits.topk(min(max(ks), logits.size(1)), dim=1).indices
    hits = largest == targets[:, None]
    return torch.stack([hits[:, :k].any(1).sum() for k in ks]).float()


@torch.inference_mode()
def contrastive_evaluate(model: nn.Module, loader: Iterable, ctx: Context, precision: Precision,
                         logits_fn: Callable[[nn.Module, object], tuple[torch.Tensor, torch.Tensor]],
                         ks: Sequence[int] = (1, 3, 5), desc: str = "val") -> dict:
    """Contrastive top-k accuracy (%): how often a view's positive ranks among its k nearest.

    ``logits_fn(model, batch)`` returns similarity logits and the index of each row's positive.
    ``acc`` is top-1, so the result plugs into the trainer's best-model selection.
    """
    model = unwrap(model)
    was_training = model.training
    model.eval()
    totals = torch.zeros(len(ks) + 1, device=ctx.device)
    for batch in tqdm(loader, desc=desc, leave=False, disable=None if ctx.is_main else True, dynamic_ncols=True):
        with precision.eval_autocast(ctx.device):
            logits, targets = logits_fn(model, batch)
        totals[:-1] += topk_hits(logits.float(), targets, ks)
        totals[-1] += targets.numel()
    all_reduce_sum(totals)
    model.train(was_training)
    count = max(totals[-1].item(), 1.0)
    result = {f"top{k}": 100.0 * totals[i].item() / count for i, k in enumerate(ks)}
    result["acc"] = result[f"top{ks[0]}"]
    return result
