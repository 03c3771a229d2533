"""Bytes that one finished IMP round leaves on disk with ResNet-50, per task: the files the original
kept, this toolkit's files before the disk audit of issue 16, and now (default and --keep_checkpoints).

Each file's real content is built (the model pruned as after round 0, SGD momentum buffers filled by
one step, the payload keys each script writes) and serialised with ``torch.save`` into a byte
counter: the sizes are those of the files, and nothing is written to disk. Run-wide files (run.json,
logs, plots, the rewind point written once) and the detection comp4 text files are not counted.

    python bench/disk_per_round.py            # prints a markdown table (about 3 GB of memory, 1-2 min)
"""

from __future__ import annotations

import argparse
import io
import os

import torch
import torch.nn as nn

from lth import pruning
from lth.imp import BackbonePruning
from lth.models import build_model
from lth.tickets import pack_masks

GIB = 2 ** 30


class ByteCounter(io.RawIOBase):
    """A write-only sink that keeps only the number of bytes written."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self.count += len(data)
        return len(data)


def saved_bytes(obj) -> int:
    counter = ByteCounter()
    torch.save(obj, counter)
    return counter.count


def with_momentum(model: nn.Module, groups=None) -> dict:
    """The state_dict of SGD (momentum 0.9) after one step: one momentum buffer per parameter."""
    optimizer = torch.optim.SGD(groups or model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    for parameter in model.parameters():
        parameter.grad = torch.zeros_like(parameter)
    optimizer.step()
    for parameter in model.parameters():
        parameter.grad = None
    return optimizer.state_dict()


def cpu_copy(state: dict) -> dict:
    return {key: value.detach().clone() for key, value in state.items()}


def progress() -> dict:
    """The trainer's progress entries of a checkpoint (lth.trainer.StageProgress.to_checkpoint)."""
    return {"epoch": 120, "best_sa": 40.0, "best_epoch": 119, "test_at_best": float("nan"),
            "result": {"train": [0.0] * 120, "ta": [40.0], "test_ta": [float("nan")]}, "at_best": {},
            "rng_state": {"cpu": torch.get_rng_state()}}


def ticket(model_backbone: nn.Module) -> dict:
    masks = pruning.current_masks(model_backbone)
    return {"format": "lth-ticket", "version": 1, "meta": {"round": 1}, **pack_masks(masks)}


def detection() -> dict[str, dict[str, int]]:
    from Detection.imp_files import backbone_imp_state
    from Detection.model import YOLOv4

    torch.manual_seed(0)
    model = YOLOv4(20, "resnet50")
    BackbonePruning(0.2).prune(model, seed=0)
    state = model.state_dict()
    optimizer = with_momentum(model)
    checkpoint = {"state": 0, "state_dict": state, "optimizer": optimizer, "scheduler": {"last_epoch": 1},
                  **progress(), "format": "lth-imp", "rewind_point": "rewind_point.pth.tar", "args": {}}
    best = {"state": 0, "epoch": 119, "state_dict": state, "best_sa": 40.0, "test_ta": None}
    shared = backbone_imp_state(model, 0)
    copied = {"imp": 0, "all_state_dict": cpu_copy(state), "first_conv1": cpu_copy(model.backbone.conv1.state_dict()),
              "backbone": cpu_copy(model.backbone.state_dict())}
    sizes = {"checkpoint": saved_bytes(checkpoint), "best": saved_bytes(best), "imp_shared": saved_bytes(shared),
             "imp_copied": saved_bytes(copied), "ticket": saved_bytes(ticket(model.backbone)),
             "resume": saved_bytes({"epoch": 119, "model": state, "optimizer": optimizer})}
    return {
        "the original (model{k}/resume.pt, backbone_imp{k+1}.pth)": {
            "model{k}/resume.pt": sizes["resume"], "backbone_imp{k+1}.pth": sizes["imp_shared"]},
        "before (main at 2fbd86a)": {
            "{k}checkpoint.pth.tar": sizes["checkpoint"], "{k}model_SA_best.pth.tar": sizes["best"],
            "backbone_imp{k+1}.pth": sizes["imp_copied"], "ticket_{k+1}.pt": sizes["ticket"]},
        "now, default": {"backbone_imp{k+1}.pth": sizes["imp_shared"], "ticket_{k+1}.pt": sizes["ticket"]},
        "now, --keep_checkpoints": {
            "{k}checkpoint.pth.tar": sizes["checkpoint"], "backbone_imp{k+1}.pth": sizes["imp_shared"],
            "ticket_{k+1}.pt": sizes["ticket"]},
    }


def segmentation() -> dict[str, dict[str, int]]:
    from Segmentation.imp_files import imp_state
    from Segmentation.model import build_segmentation_model

    torch.manual_seed(0)
    model = build_segmentation_model("deeplabv3plus_resnet50", 21, 16, False)
    BackbonePruning(0.2).prune(model, seed=0)
    state = model.state_dict()
    groups = [{"params": list(model.classifier.parameters()), "lr": 0.01},
              {"params": list(model.backbone.parameters()), "lr": 0.001}]
    optimizer = with_momentum(model, groups)
    latest = {"state": 0, "state_dict": state, "optimizer": optimizer, "scheduler": {"last_epoch": 30000},
              **progress(), "format": "lth-segmentation", "args": {}, "cur_itrs": 30000, "best_score": 0.7}
    best = {"state": 0, "itr": 30000, "state_dict": state, "best_sa": 70.0, "test_ta": None}
    original = {"cur_itrs": 30000, "model_state": state, "optimizer_state": optimizer,
                "scheduler_state": {"last_epoch": 30000}, "best_score": 0.7}
    sizes = {"latest": saved_bytes(latest), "best": saved_bytes(best), "original": saved_bytes(original),
             "imp": saved_bytes(imp_state(model)), "ticket": saved_bytes(ticket(model.backbone))}
    return {
        "the original (checkpoints/EXP/latest_*, best_*, seg_backbone_imp{k+1}.pth)": {
            "latest_*.pth": sizes["original"], "best_*.pth": sizes["original"],
            "seg_backbone_imp{k+1}.pth": sizes["imp"]},
        "before (main at 2fbd86a)": {"latest_*.pth": sizes["latest"], "best_*.pth": sizes["best"],
                                     "seg_backbone_imp{k+1}.pth": sizes["imp"], "ticket_{k+1}.pt": sizes["ticket"]},
        "now, default": {"best_*.pth": sizes["best"], "seg_backbone_imp{k+1}.pth": sizes["imp"],
                         "ticket_{k+1}.pt": sizes["ticket"]},
        "now, --keep_checkpoints": {"latest_*.pth": sizes["latest"], "best_*.pth": sizes["best"],
                                    "seg_backbone_imp{k+1}.pth": sizes["imp"], "ticket_{k+1}.pt": sizes["ticket"]},
    }


def classification() -> dict[str, dict[str, int]]:
    torch.manual_seed(0)
    model = build_model("resnet50", 10, stem="cifar")
    init = cpu_copy(model.state_dict())
    pruning.global_prune(model, 0.2)
    state = model.state_dict()
    optimizer = with_momentum(model)
    checkpoint = {"state": 0, "state_dict": state, "optimizer": optimizer, "scheduler": {"last_epoch": 182},
                  **progress(), "format": "lth-imp", "init_weight": init, "args": {}}
    best = {"state": 0, "epoch": 150, "state_dict": state, "best_sa": 93.0, "test_ta": 92.0}
    original = {"state": 0, "result": {}, "epoch": 182, "state_dict": state, "best_sa": 93.0,
                "optimizer": optimizer, "scheduler": {"last_epoch": 182}, "init_weight": init}
    sizes = {"checkpoint": saved_bytes(checkpoint), "best": saved_bytes(best), "original": saved_bytes(original),
             "ticket": saved_bytes(ticket(model))}
    ours = {"{k}checkpoint.pth.tar": sizes["checkpoint"], "{k}model_SA_best.pth.tar": sizes["best"],
            "ticket_{k+1}.pt": sizes["ticket"]}
    return {
        "the original ({k}checkpoint.pth.tar, its copy {k}model_SA_best.pth.tar)": {
            "{k}checkpoint.pth.tar": sizes["original"], "{k}model_SA_best.pth.tar": sizes["original"]},
        "before and now (unchanged: the original's files, read with --dict_key init_weight)": ours,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.parse_args()
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    print("| task (ResNet-50) | layout | files of one finished round (GiB) | total (GiB) |")
    print("|---|---|---|---:|")
    for task, measure in (("detection (YOLOv4, VOC)", detection), ("segmentation (DeepLabV3+, VOC)", segmentation),
                          ("classification (CIFAR-10 stem)", classification)):
        for layout, files in measure().items():
            listed = ", ".join(f"{name} {size / GIB:.3f}" for name, size in files.items())
            print(f"| {task} | {layout} | {listed} | {sum(files.values()) / GIB:.2f} |", flush=True)


if __name__ == "__main__":
    main()
