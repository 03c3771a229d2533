"""Ticket files: writing and reading them, and `python -m lth.tickets` to show, export and apply one.

A ticket file holds one mask dict (``{"layer1.0.conv1.weight_mask": 0/1 tensor}``) packed as one
bit per weight, plus metadata (architecture, data set, prune type, round, remaining %). The
command turns it into what other tools read: a table of the remaining share per layer, a plain
``{layer.weight_mask: float tensor}`` file (``torch.nn.utils.prune.custom_from_mask`` takes its
tensors as they are), or a pruned ``state_dict`` with the masked weights set to zero.
"""

from __future__ import annotations

import datetime
import math
import os
import re
import stat
import sys
from typing import Mapping

import numpy as np
import torch

from lth import cli, pruning
from lth.checkpoint import atomic_save, load_file
from lth.errors import UserError
from lth.models import select_state_dict

TICKET_FORMAT = "lth-ticket"
TICKET_VERSION = 1


# --------------------------------------------------------------------------------------------
# Ticket files
# --------------------------------------------------------------------------------------------

def pack_masks(masks: Mapping[str, torch.Tensor]) -> dict:
    """Masks as one bit per weight (uint8 tensors) plus their shapes."""
    packed, shapes = {}, {}
    for key, mask in masks.items():
        bits = mask.detach().to("cpu").reshape(-1).ne(0).numpy()
        packed[key] = torch.from_numpy(np.packbits(bits))
        shapes[key] = list(mask.shape)
    return {"bits": packed, "shapes": shapes}


def unpack_masks(packed: Mapping, name: str = "the ticket") -> dict[str, torch.Tensor]:
    """The masks of a packed ticket, after checking every layer's bits against its shape: a
    truncated, padded, empty or mistyped bit array is a one-line ``UserError`` naming ``name`` and
    the layer (never zero-padded bits or uninitialised memory)."""
    damaged = f"{name} is a damaged ticket"
    bits_of, shapes = packed.get("bits"), packed.get("shapes")
    if not isinstance(bits_of, Mapping) or not isinstance(shapes, Mapping):
        raise UserError(f"{damaged}: its 'bits' and 'shapes' entries must both be dicts by layer "
                        f"(got {type(bits_of).__name__} and {type(shapes).__name__})")
    if not bits_of:
        raise UserError(f"{damaged}: it holds no layer")
    for key in list(bits_of) + list(shapes):
        if key not in bits_of or key not in shapes:
            raise UserError(f"{damaged}: layer '{key}' has {'bits' if key in bits_of else 'a shape'} but "
                            f"no {'shape' if key in bits_of else 'bits'}")
    masks = {}
    for key, bits in bits_of.items():
        if not isinstance(key, str) or not key.endswith(pruning.MASK_SUFFIX):
            raise UserError(f"{damaged}: layer name {key!r} does not end in '{pruning.MASK_SUFFIX}'")
        shape = shapes[key]
        if (not isinstance(shape, (list, tuple)) or not shape
                or not all(isinstance(size, int) and not isinstance(size, bool) and size > 0 for size in shape)):
            raise UserError(f"{damaged}: layer '{key}' has shape {shape!r}; expected a list of positive sizes")
        if not isinstance(bits, torch.Tensor) or bits.dtype != torch.uint8 or bits.dim() != 1:
            found = f"{bits.dim()}-D {bits.dtype} tensor" if isinstance(bits, torch.Tensor) else type(bits).__name__
            raise UserError(f"{damaged}: layer '{key}' has bits of type {found}; expected a 1-D uint8 tensor")
        count = math.prod(shape)
        needed = (count + 7) // 8
        if bits.numel() != needed:
            raise UserError(f"{damaged}: layer '{key}' (shape {tuple(shape)}, {count} weights) needs "
                            f"{needed} bytes of bits but has {bits.numel()} (truncated or padded)")
        packed_bits = bits.contiguous().numpy()
        spare = needed * 8 - count
        if spare and int(packed_bits[-1]) & ((1 << spare) - 1):
            raise UserError(f"{damaged}: layer '{key}' has bits set past its {count} weights")
        flat = np.unpackbits(packed_bits, count=count)
        masks[key] = torch.from_numpy(flat.astype(np.float32)).reshape(shape)
    return masks


def save_ticket(path: str, masks: Mapping[str, torch.Tensor], **meta) -> None:
    """Write a ticket file: packed masks plus metadata (remaining % is computed here)."""
    meta = dict(meta)
    meta["remaining"] = pruning.mask_remaining(masks)
    meta.setdefault("created", datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    atomic_save({"format": TICKET_FORMAT, "version": TICKET_VERSION, "meta": meta, **pack_masks(masks)}, path)


def is_ticket(obj) -> bool:
    return isinstance(obj, Mapping) and obj.get("format") == TICKET_FORMAT


def read_masks(source, what: str = "mask", name: str | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """Masks and metadata from any mask source a user has.

    ``source`` is a path or an already loaded object: a ticket file of this toolkit, a checkpoint
    of this toolkit or of the original code (``state_dict`` holding ``*.weight_mask``), or a plain
    ``{layer.weight_mask: tensor}`` dict (the original's ``mask-{i}.pt``, or ``export``'s output),
    or a dense task's round file, whose ``backbone`` entry holds the masks (segmentation's
    ``seg_backbone_imp{n}.pth``, detection's ``backbone_imp{n}.pth`` and ``backbone_random{n}.pth``;
    ``round`` n read from the name). ``module.``, ``encoder_q.`` and ``module.encoder_q.`` prefixes
    are stripped. ``name`` is the file an already loaded object came from, for messages.
    """
    name = source if isinstance(source, (str, os.PathLike)) else (name or "the given object")
    obj = load_file(source, what) if isinstance(source, (str, os.PathLike)) else source
    if is_ticket(obj):
        version, meta = obj.get("version"), obj.get("meta", {})
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise UserError(f"{name} is a damaged ticket: its format version is {version!r}, not a "
                            f"positive integer")
        if version > TICKET_VERSION:
            raise UserError(f"{name} is a ticket of format version {version}, newer than this "
                            f"toolkit reads ({TICKET_VERSION})")
        if not isinstance(meta, Mapping):
            raise UserError(f"{name} is a damaged ticket: its 'meta' is a {type(meta).__name__}, not a dict")
        return unpack_masks(obj, name), dict(meta)
    dense_round = (isinstance(obj, Mapping) and "state_dict" not in obj and isinstance(obj.get("backbone"), Mapping)
                   and ({"first_conv", "classifier"} <= set(obj) or {"all_state_dict", "first_conv1"} <= set(obj)))
    if dense_round:
        obj = {"state_dict": obj["backbone"], **_round_in_name(name)}
    state = obj.get("state_dict", obj) if isinstance(obj, Mapping) else None
    if not isinstance(state, Mapping):
        raise UserError(f"{name} holds no mask: expected a ticket file, a checkpoint with a "
                        f"'state_dict', or a dict of '*.weight_mask' tensors")
    state = {key: value for key, value in state.items() if isinstance(key, str)}
    entries = {key: value for key, value in pruning.strip_prefixes(state).items()
               if key.endswith(pruning.MASK_SUFFIX)}
    pruning.check_mask_values(entries, name)
    masks = {key: value.float() for key, value in pruning.extract_mask(entries).items()}
    if not masks:
        raise UserError(f"{name} holds no '*.weight_mask' tensor: it is not a pruned checkpoint "
                        f"or mask file")
    meta = {"source": str(name)}
    for key in ("state", "round", "arch", "dataset", "prune_type"):
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], (int, str, float)):
            meta[key] = obj[key]
    return masks, meta


def _round_in_name(name) -> dict:
    match = re.fullmatch(r"(?:seg_)?backbone_(?:imp|random)(\d+)\.pth", os.path.basename(str(name)))
    return {"round": int(match.group(1))} if match else {}


def apply_ticket_args(model, args, is_main: bool) -> tuple[dict, float]:
    """Put the mask of --mask_dir (reversed with --reverse_mask) on ``model``; report what trains.

    Returns the mask's metadata and the remaining percentage of conv weights.
    """
    mask_meta = {}
    if args.mask_dir:
        masks, mask_meta = read_masks(args.mask_dir)
        if args.reverse_mask:
            masks = pruning.reverse_mask(masks)
        pruning.apply_mask(model, masks, conv1=args.conv1)
    remaining = pruning.sparsity(model, args.conv1)["remaining"]
    if is_main:
        print(f"training {'the reverse of ' if args.reverse_mask else ''}"
              f"{args.mask_dir or 'a dense network'}: {remaining:.2f}% of conv weights remain", file=sys.stderr)
    return mask_meta, remaining


# --------------------------------------------------------------------------------------------
# What the command does
# --------------------------------------------------------------------------------------------

def layer_table(masks: Mapping[str, torch.Tensor]) -> list[dict]:
    """One row per layer, in the mask's order: name, shape, kept and total weights, remaining %."""
    rows = []
    for key, mask in masks.items():
        kept, total = int(mask.ne(0).sum()), mask.numel()
        rows.append({"layer": key[: -len(pruning.MASK_SUFFIX)], "shape": tuple(mask.shape),
                     "kept": kept, "total": total, "remaining": 100.0 * kept / max(total, 1)})
    return rows


def format_show(masks: Mapping[str, torch.Tensor], meta: Mapping) -> str:
    """The text of ``show``: metadata, then a table of the remaining share per layer, then the total."""
    lines = [f"{key}: {meta[key]}" for key in sorted(meta) if key != "remaining"]
    rows = layer_table(masks)
    kept, total = sum(row["kept"] for row in rows), sum(row["total"] for row in rows)
    cells = [(row["layer"], "x".join(map(str, row["shape"])), str(row["kept"]), str(row["total"]),
              f"{row['remaining']:.2f}") for row in rows]
    cells.append(("total", "", str(kept), str(total), f"{100.0 * kept / max(total, 1):.2f}"))
    header = ("layer", "shape", "kept", "weights", "remaining %")
    widths = [max(len(header[i]), *(len(cell[i]) for cell in cells)) for i in range(len(header))]

    def line(cell) -> str:
        return "  ".join(text.ljust(widths[0]) if i == 0 else text.rjust(widths[i])
                         for i, text in enumerate(cell)).rstrip()

    lines += ["", line(header), line(tuple("-" * width for width in widths))]
    lines += [line(cell) for cell in cells[:-1]]
    lines += [line(tuple("-" * width for width in widths)), line(cells[-1])]
    return "\n".join(lines)


def export_masks(ticket: str, out: str, force: bool = False) -> dict[str, torch.Tensor]:
    """Write the ticket's masks as a plain ``{layer.weight_mask: float32 tensor}`` file."""
    masks, _ = read_masks(ticket, "ticket")
    _check_output(out, force, [ticket])
    plain = {key: mask.to(torch.float32).contiguous() for key, mask in masks.items()}
    atomic_save(plain, out)
    return plain


def apply_ticket(ticket: str, weights: str, out: str, dict_key: str | None = None,
                 force: bool = False) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Write ``weights`` as a plain state_dict with every weight the ticket masks set to zero.

    ``weights`` is any file the scripts' ``--pretrained`` reads: a torchvision state_dict,
    ``{'state_dict': ...}`` (SimCLR), a MoCo v2 checkpoint (``module.encoder_q.*``; the key
    encoder and the queue are left out) or an IMP checkpoint (``weight_orig * weight_mask``).
    Every mask must meet a weight of its shape, and every conv weight but the stem a mask.
    Returns the state_dict written and the conv weights left dense.
    """
    masks, _ = read_masks(ticket, "ticket")
    state = select_state_dict(load_file(weights, "weight"), weights, dict_key)
    state = pruning.strip_prefixes(state)
    tensors = {key: value for key, value in state.items() if isinstance(value, torch.Tensor)}
    for key in tensors:
        if key.endswith(pruning.ORIG_SUFFIX):
            mask_key = key[: -len(pruning.ORIG_SUFFIX)] + pruning.MASK_SUFFIX
            if mask_key not in tensors:
                raise UserError(f"'{weights}' has '{key}' without its '{mask_key}': not a readable checkpoint")
    dense = pruning.dense_state_dict(tensors)
    pruned = {}
    for key, mask in masks.items():
        weight_key = key[: -len(pruning.MASK_SUFFIX)] + ".weight"
        if weight_key not in dense:
            raise UserError(f"the ticket masks '{weight_key}' (shape {tuple(mask.shape)}), which "
                            f"'{weights}' does not have; are the weights of another architecture?")
        if tuple(dense[weight_key].shape) != tuple(mask.shape):
            raise UserError(f"the ticket's mask for '{weight_key}' has shape {tuple(mask.shape)} but "
                            f"'{weights}' has {tuple(dense[weight_key].shape)}; are the weights of "
                            f"another architecture?")
        pruned[weight_key] = dense[weight_key].masked_fill(mask.eq(0), 0)
    unmasked = [key for key, value in dense.items()
                if key.endswith(".weight") and value.dim() == 4 and key not in pruned]
    stray = [key for key in unmasked if key != "conv1.weight"]
    if stray:
        raise UserError(f"the ticket has no mask for conv weight '{stray[0]}' of '{weights}' (nor for "
                        f"{len(stray) - 1} more); are the weights of another architecture?")
    _check_output(out, force, [ticket, weights])
    result = {key: pruned.get(key, value) for key, value in dense.items()}
    atomic_save(result, out)
    return result, unmasked


def _check_output(out: str, force: bool, inputs: list[str]) -> None:
    """Never overwrite an input, nor (without --force) any existing file."""
    if any(os.path.exists(path) and os.path.exists(out) and os.path.samefile(path, out) for path in inputs):
        raise UserError(f"output '{out}' is one of the input files; choose another name")
    if os.path.isdir(out):
        raise UserError(f"output '{out}' is a folder; give a file name")
    if os.path.lexists(out) and not force:
        raise UserError(f"output '{out}' already exists; pass --force to replace it")
    if os.path.lexists(out) and not stat.S_ISREG(os.lstat(out).st_mode):
        raise UserError(f"output '{out}' is not a regular file (a link, pipe or device); --force only "
                        f"replaces regular files")


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------

def get_args_parser():
    parser = cli.ArgumentParser(
        prog="python -m lth.tickets",
        description="Inspect a ticket and turn it into files other pruning tools read. TICKET is a "
                    "ticket_XX.pt of any IMP script, or any other mask source --mask_dir reads (an IMP "
                    "checkpoint of this toolkit or of the original code, a {layer.weight_mask: tensor} file).")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, summary: str, description: str):
        sub = commands.add_parser(name, formatter_class=parser.formatter_class, help=summary,
                                  description=description)
        sub.add_argument("ticket", metavar="TICKET", help=f"the ticket (or other mask source) to {name}")
        cli.add_trust_arg(sub)
        return sub

    def output(sub) -> None:
        sub.add_argument("out", metavar="OUT", help="the file to write (refused if it exists, unless --force)")
        sub.add_argument("--force", action="store_true", help="replace OUT if it already exists")

    command("show", "print the ticket's metadata and a table of the remaining share of weights per layer, "
                    "with the total",
            "Print the ticket's metadata (architecture, data set, prune type, round, ...) and a table of "
            "kept weights per layer, with the total remaining share.")
    output(command("export", "write the masks as a plain {layer.weight_mask: float tensor} file",
                   "Write the masks as a plain {'layer1.0.conv1.weight_mask': float32 0/1 tensor} file: "
                   "torch.load it and call torch.nn.utils.prune.custom_from_mask(module, 'weight', mask) "
                   "for each layer; --mask_dir of every script reads it back."))
    apply = command("apply", "write WEIGHTS as a plain state_dict with every weight the ticket removes set to zero",
                    "Write WEIGHTS as a plain state_dict (torchvision names, no module./encoder_q. prefixes, "
                    "weight_orig*weight_mask folded into weight) in which every weight the ticket removes "
                    "is zero. Every mask must meet a weight of the same shape and every conv weight but the "
                    "stem conv1 must have a mask, otherwise the weights are for another architecture and "
                    "nothing is written.")
    apply.add_argument("weights", metavar="WEIGHTS",
                       help="weights to prune: a torchvision state_dict, simclr_weight.pt, moco.pt, a MoCo v2 "
                            "checkpoint or an IMP checkpoint (any file --pretrained reads)")
    output(apply)
    apply.add_argument("--dict_key", default=None,
                       help="entry of WEIGHTS holding the weights; 'None' uses the whole file (default: "
                            "'state_dict' when present, else the whole file)")
    return parser


def main(args) -> None:
    if args.command == "show":
        masks, meta = read_masks(args.ticket, "ticket")
        print(format_show(masks, meta))
    elif args.command == "export":
        masks = export_masks(args.ticket, args.out, force=args.force)
        print(f"wrote {len(masks)} masks ({pruning.mask_remaining(masks):.2f}% of their weights "
              f"remain) to {args.out}")
    else:
        state, unmasked = apply_ticket(args.ticket, args.weights, args.out, args.dict_key, force=args.force)
        dense = f"; left dense: {', '.join(unmasked)}" if unmasked else ""
        print(f"wrote {len(state)} tensors to {args.out} with the ticket's pruned weights set to zero{dense}")


if __name__ == "__main__":
    cli.run_main(main, get_args_parser())
