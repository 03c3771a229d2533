"""LARS: SGD with momentum whose step for each weight tensor is scaled by a layer-wise trust ratio."""

from __future__ import annotations

import torch


class LARS(torch.optim.Optimizer):
    """Layer-wise Adaptive Rate Scaling (You et al., 2017), as SimCLR trains with it.

    For every parameter tensor ``w`` with gradient ``g``::

        g      <- g + weight_decay * w
        ratio  =  eta * ||w|| / ||g||      (1 where either norm is 0)
        v      <- momentum * v + lr * ratio * g
        w      <- w - v

    Tensors with one dimension (batch-norm weights and every bias) are excluded from both weight
    decay and the trust ratio when ``exclude_1d`` is set, as in the SimCLR paper: their norms say
    little about a sensible step size. ``exclude_1d=False`` adapts every tensor (what the original
    SimCLR IMP code did). The learning rate is used as given; a schedule, if any, is the caller's.
    """

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 eta: float = 1e-3, exclude_1d: bool = True):
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
            for param in group["params"]:
                if param.grad is None:
                    continue
                grad = param.grad
                if not (group["exclude_1d"] and param.ndim <= 1):
                    if group["weight_decay"]:
                        grad = grad.add(param, alpha=group["weight_decay"])
                    weight_norm, grad_norm = torch.linalg.vector_norm(param), torch.linalg.vector_norm(grad)
                    # torch.where keeps the ratio on the device: no host sync per tensor.
                    ratio = torch.where((weight_norm > 0) & (grad_norm > 0),
                                        group["eta"] * weight_norm / grad_norm.clamp(min=1e-30),
                                        torch.ones_like(weight_norm))
                    grad = grad * ratio
                state = self.state[param]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(param)
                buffer = state["momentum_buffer"]
                buffer.mul_(group["momentum"]).add_(grad, alpha=group["lr"])
                param.sub_(buffer)
        return loss
