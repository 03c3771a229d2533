"""Run by tests/test_distributed.py under torchrun: each script's training loader on this rank, with
--batch_size given as the global batch; writes the per-process batch sizes and the refusals."""

import json
import os
import sys

import torch

from lth import distributed
from lth.engine import Precision
from lth.errors import UserError


def first_batch_size(loader) -> int:
    batch = next(iter(loader))
    while isinstance(batch, (list, tuple)):
        batch = batch[0]
    if isinstance(batch, dict):
        batch = batch["image"]
    return int(batch.shape[0])


def builders(images: str, tmp: str):
    """Per script: a function of the global batch that builds this rank's training loader."""
    ctx = distributed.setup(cpu=True)
    fp32 = Precision.choose("fp32", ctx.device)

    def classification(batch):
        import main_imp_downstream
        from lth.classification import load_task

        args = main_imp_downstream.get_args_parser().parse_args(
            ["--dataset", "digits", "--batch_size", str(batch), "--save_dir", tmp, "--seed", "0"])
        return load_task(args, ctx, fp32, 0).loaders.train

    def detection(batch):
        from Detection import runner, train_imp

        args = train_imp.get_args_parser().parse_args(
            ["--dataset", "digits", "--digits_canvas", "32", "--digits_counts", "24,8,8", "--arch", "resnet18",
             "--img_size", "32", "--batch_size", str(batch), "--workers", "0", "--pretrained", "none", "--seed", "0"])
        return runner.build(args, ctx, fp32, "imagenet", tmp).loaders.train

    def segmentation(batch):
        from lth.runs import RunDir
        from lth.session import Session
        from Segmentation import run as segrun

        source = segrun.SOURCES["imagenet"]
        args = segrun.get_args_parser("transfer", source).parse_args(
            ["x", "--dataset", "digits", "--batch_size", str(batch), "--pretrained", "none", "--random_seed", "0"])
        session = Session(RunDir(tmp), ctx, fp32, None, 0)
        return segrun.build_task(args, source, session).loaders.train

    def simclr(batch):
        from SimCLR import main as simclr_main

        args = simclr_main.get_args_parser().parse_args(
            ["exp", "--data", images, "--batch_size", str(batch), "--image_size", "32", "--workers", "0"])
        return simclr_main.make_loaders(args, ctx).train

    def moco(batch):
        from MoCo import main_moco_imp

        args = main_moco_imp.get_args_parser().parse_args(
            [images, "-b", str(batch), "--moco-k", "12", "--image_size", "32", "--workers", "0", "--save_dir", tmp,
             "--seed", "0"])
        launch = main_moco_imp.launch_plan(args)
        main_moco_imp.check_args(args, launch)
        return main_moco_imp.make_loaders(args, ctx, launch).train

    return ctx, {"classification": classification, "detection": detection, "segmentation": segmentation,
                 "simclr": simclr, "moco": moco}


if __name__ == "__main__":
    out, images = sys.argv[1], sys.argv[2]
    torch.set_num_threads(1)
    ctx, build = builders(images, os.path.join(out, f"scratch{os.environ['RANK']}"))
    result = {}
    for name, make in build.items():
        sizes = {"even": first_batch_size(make(4))}
        try:
            make(3)
            sizes["odd"] = "accepted"
        except UserError as error:
            sizes["odd"] = str(error)
        result[name] = sizes
    with open(os.path.join(out, f"batches_rank{ctx.rank}.json"), "w") as handle:
        json.dump(result, handle)
    distributed.teardown()
