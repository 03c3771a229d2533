"""MoCo v2 weight files: a released or toolkit checkpoint into both encoders, and export in the released layout."""

from __future__ import annotations

import sys
from typing import Mapping

import torch

from lth import pruning
from lth.checkpoint import load_file
from lth.errors import UserError
from lth.models import LoadReport, select_state_dict
from MoCo.builder import MoCo


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
