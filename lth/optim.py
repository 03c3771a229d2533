"""LARS: SGD with momentum whose step for each weight tensor is scaled by a layer-wise trust ratio."""

from __future__ import annotations

import torch

# Optimizers whose update of an element reads only that element (and its gradient and state). For
# them, masking the weights in place after each step (``pruning.masks_in_place``) gives bit
# for bit the update through ``torch.nn.utils.prune``'s hooks, where the optimizer steps the dense
# ``weight_orig`` with the masked gradient. LARS is not one: its trust ratio takes whole-tensor
# norms, which the original computed on the dense ``weight_orig``, so it trains through the hooks.
ELEMENTWISE_OPTIMIZERS = ("sgd", "adam")


def masks_in_place_exact(name: str) -> bool:
    """Whether the optimizer ``name`` (sgd, adam, lars) steps a masked model exactly under in-place masks."""
    return name in ELEMENTWISE_OPTIMIZERS


class LARS(torch.optim.Optimizer):
    """Layer-wise Adaptive Rate Scaling (You et al., 2017), the original SimCLR IMP code's rule.

    For every parameter tensor ``w`` with gradient ``g``::

        ratio  =  eta * ||w|| / (||g|| + weight_decay * ||w||)   (1 where ||w|| or ||g|| < 1e-15)
        v      <- momentum * v + lr * ratio * (g + weight_decay * w)
        w      <- w - v

    Under a pruning mask the original stepped ``weight_orig`` (dense, its pruned entries kept)
    with the masked gradient, through prune's hooks; the trainer keeps the hooks for LARS so that
    both norms are those. ``exclude_1d=True`` instead gives one-dimensional tensors (batch-norm
    weights, biases) a plain momentum-SGD step without weight decay (the SimCLR paper's rule); the
    default adapts every tensor, as the original did. The learning rate is used as given.
    """

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 eta: float = 1e-3, exclude_1d: bool = False):
        if lr <= 0:
            raise ValueError(f"invalid learning rate {lr}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"invalid momentum {momentum}")
        if weight_decay < 0 or eta <= 0:
            raise ValueError(f"invalid weight_decay {weight_decay} or eta {eta}")
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta,
                                      exclude_1d=exclude_1d))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            decay = group["weight_decay"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                grad = param.grad
                if group["exclude_1d"] and param.ndim <= 1:
                    step = grad
                else:
                    weight_norm, grad_norm = torch.linalg.vector_norm(param), torch.linalg.vector_norm(grad)
                    # torch.where keeps the ratio on the device: no host sync per tensor.
                    ratio = torch.where((weight_norm < 1e-15) | (grad_norm < 1e-15),
                                        torch.ones_like(weight_norm),
                                        group["eta"] * weight_norm / (grad_norm + decay * weight_norm))
                    step = (grad.add(param, alpha=decay) if decay else grad) * ratio
                state = self.state[param]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(param)
                buffer = state["momentum_buffer"]
                buffer.mul_(group["momentum"]).add_(step, alpha=group["lr"])
                param.sub_(buffer)
        return loss
