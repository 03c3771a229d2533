"""Find MoCo v2 pre-training tickets: IMP of both MoCo encoders, rewound to the pre-trained weights each round."""

import os
import sys

import argparse
import hashlib
from dataclasses import dataclass

import torch

from lth import cli, distributed, pruning, validate
from lth.checkpoint import trusted_checkpoints
from lth.errors import UserError
from lth.imp import ImpRun
from lth.once import train_once
from lth.runs import RunDir
from lth.session import check_save_dir, open_session
from MoCo.hparams import EXPORT_NAME, MocoImp  # noqa: F401  (EXPORT_NAME: what --retrain_epoch 0 writes)
from MoCo.task import MocoTask

NO_WEIGHTS = ("", "none", "None")


EPILOG = """\
Round 0 only evaluates the pre-trained model and prunes it one-shot; every later round trains
--retrain_epoch epochs at a fixed learning rate, prunes --prune_percent of encoder_q's remaining conv
weights by global magnitude, gives encoder_k the same mask and rewinds both encoders to the
pre-trained encoder_q. The original's command line:

  cd MoCo && CUDA_VISIBLE_DEVICES=0,1,2,3 python -u main_moco_imp.py DIR \\
      --pretrained_path moco_v2_800ep_pretrain.pth.tar -a resnet50 --batch-size 256 \\
      --dist-url 'tcp://127.0.0.1:5234' --multiprocessing-distributed --world-size 1 --rank 0 \\
      --mlp --moco-t 0.2 --aug-plus --cos --epochs 180 --retrain_epoch 10 --save_dir moco_imp

or, with torchrun: torchrun --nproc_per_node 4 MoCo/main_moco_imp.py DIR ... (same flags).
"""


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults in the flags' help, and the epilog's command line kept as written."""


def get_args_parser():
    return MocoImp.parser(description=__doc__, epilog=EPILOG, formatter_class=_HelpFormatter)


# --------------------------------------------------------------------------------------------
# How the job is laid out over processes
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Launch:
    spawn: int  # processes this command starts itself (0: it runs in this process)
    local: int  # processes on this node, which share -j (-b is shared by all processes)
    world: int  # processes in the whole job


def launch_plan(args) -> Launch:
    """torchrun's layout when it started us, else one process per GPU with
    --multiprocessing-distributed, else this single process."""
    if "WORLD_SIZE" in os.environ:
        world = int(os.environ["WORLD_SIZE"])
        return Launch(0, int(os.environ.get("LOCAL_WORLD_SIZE", world)), world)
    if not args.multiprocessing_distributed:
        return Launch(0, 1, 1)
    gpus = 0 if args.cpu else torch.cuda.device_count()
    nodes = max(args.world_size, 1)
    if gpus == 0:
        if nodes > 1:
            raise UserError("--multiprocessing-distributed over several nodes (--world-size > 1) needs CUDA "
                            "devices; start CPU jobs with torchrun")
        return Launch(0, 1, 1)
    if gpus == 1 and nodes == 1:
        return Launch(0, 1, 1)
    return Launch(gpus, gpus, gpus * nodes)


def dist_address(url: str) -> tuple[str, str]:
    if url.startswith("env://"):
        return os.environ.get("MASTER_ADDR", "127.0.0.1"), os.environ.get("MASTER_PORT", "29500")
    if url.startswith("tcp://"):
        host, _, port = url[len("tcp://"):].rpartition(":")
        if host and port.isdigit():
            return host.strip("[]"), port
    raise UserError(f"--dist-url must be tcp://HOST:PORT or env://, got '{url}'")


def check_args(args, launch: Launch) -> None:
    for flag, value in (("epochs", args.epochs), ("batch-size", args.batch_size),
                        ("moco-dim", args.moco_dim), ("moco-k", args.moco_k)):
        if value < 1:
            raise UserError(f"--{flag} must be at least 1, got {value}")
    validate.check_shared(args)
    if not 0 <= args.retrain_epoch <= args.epochs:
        raise UserError(f"--retrain_epoch must lie in [0, --epochs {args.epochs}], got {args.retrain_epoch}")
    pruning.check_rate(args.prune_percent)
    validate.check_fraction("moco-m", args.moco_m)
    validate.check_positive("moco-t", args.moco_t)
    if args.image_size < 32:
        raise UserError(f"--image_size must be at least 32, got {args.image_size}")
    if args.multiprocessing_distributed and args.world_size > 1 and args.rank < 0 and "WORLD_SIZE" not in os.environ:
        raise UserError("--world-size > 1 runs over several nodes: give each node its --rank")
    if args.batch_size % launch.world:
        raise UserError(f"--batch-size {args.batch_size} is the global batch and must divide equally among "
                        f"the {launch.world} processes")
    global_batch = args.batch_size
    if args.moco_k % global_batch:
        raise UserError(f"--moco-k {args.moco_k} must be a multiple of the global batch {global_batch} "
                        f"(--batch-size {args.batch_size} over {launch.world} process(es)): the queue "
                        f"is refilled one global batch at a time")


def mask_digest(masks: dict) -> str:
    """A short fingerprint of a mask dict (equal masks, equal digest), to compare ranks and files."""
    digest = hashlib.sha256()
    for key in sorted(masks):
        digest.update(key.encode())
        digest.update(masks[key].detach().to("cpu").ne(0).to(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


# --------------------------------------------------------------------------------------------
# Driving
# --------------------------------------------------------------------------------------------

def main(args) -> None:
    launch = launch_plan(args)
    check_args(args, launch)
    _, resume_file = check_save_dir(args.save_dir, args.resume)
    first = os.environ.get("RANK", "0") == "0"
    if first and (args.cos or args.schedule is not None):
        print("notice: --cos/--schedule are accepted for compatibility and ignored: the learning rate "
              f"stays at --lr {args.lr} (as in the original)", file=sys.stderr)
    if args.multiprocessing_distributed and "WORLD_SIZE" not in os.environ and launch.spawn == 0 and first:
        where = "the CPU" if args.cpu or not torch.cuda.is_available() else "the only GPU"
        print(f"notice: --multiprocessing-distributed: running one process on {where}", file=sys.stderr)
    if launch.spawn:
        host, port = dist_address(args.dist_url)
        try:
            torch.multiprocessing.spawn(_spawned, args=(launch, host, port, args, resume_file),
                                        nprocs=launch.spawn)
        except torch.multiprocessing.ProcessExitedException as error:
            sys.exit(error.exit_code or 1)
    else:
        worker(args, launch, resume_file)


def _spawned(local_rank: int, launch: Launch, host: str, port: str, args, resume_file) -> None:
    """One process of --multiprocessing-distributed: torchrun's environment, then the common path."""
    node = max(args.rank, 0)
    os.environ.update(RANK=str(node * launch.local + local_rank), WORLD_SIZE=str(launch.world),
                      LOCAL_RANK=str(local_rank), LOCAL_WORLD_SIZE=str(launch.local),
                      MASTER_ADDR=host, MASTER_PORT=port)
    cli.set_deterministic(args.deterministic)  # a spawned process starts with PyTorch's defaults
    try:
        with trusted_checkpoints(args.trust_checkpoint):  # a fresh interpreter: run_main's setting is lost
            worker(args, launch, resume_file)
    except UserError as error:
        print(f"error: {cli.user_message(error)}", file=sys.stderr)
        sys.exit(error.exit_status)
    except KeyboardInterrupt:
        sys.exit(130)


def worker(args, launch: Launch, resume_file: str | None) -> None:
    weights = None if args.pretrained_path in NO_WEIGHTS else args.pretrained_path
    # Every process (spawned ones included) checks a resume against the run it continues.
    session = open_session(args, RunDir(args.save_dir), resume_file, hparams=MocoImp.from_args(args))
    ctx = session.ctx
    backend = "nccl" if ctx.device.type == "cuda" else "gloo"
    if ctx.is_main and ctx.distributed and args.dist_backend not in ("nccl", backend):
        # The default (nccl) is silently gloo on the CPU; only an explicit other choice is worth a word.
        print(f"notice: --dist-backend {args.dist_backend} ignored: using {backend}", file=sys.stderr)
    task = MocoTask(args, launch, weights)
    task.build(session)
    session.record(args)
    if args.retrain_epoch == 0:
        train_once(task, args, session)
    else:
        imp = ImpRun(task, args, session)
        if args.epochs % args.retrain_epoch and ctx.is_main:
            print(f"notice: --epochs {args.epochs} is not a multiple of --retrain_epoch {args.retrain_epoch}: "
                  f"{imp.cfg.rounds - 1} rounds train {(imp.cfg.rounds - 1) * args.retrain_epoch} epochs",
                  file=sys.stderr)
        imp.resume(resume_file) if args.resume else imp.start()
        if ctx.distributed:
            # Every rank must end with the ticket rank 0 wrote; print each rank's fingerprint to compare.
            masks = task.strategy.masks(task.model)
            same = all(torch.equal(a, b) for a, b in zip(masks.values(),
                                                          pruning.current_masks(task.model.encoder_k).values()))
            print(f"rank {ctx.rank}: mask digest {mask_digest(masks)}; encoder_k's mask "
                  f"{'equals' if same else 'DIFFERS from'} encoder_q's", flush=True)
        if ctx.is_main:
            print(f"done: tickets (ticket_XX.pt), checkpoints, metrics.jsonl and summary.jsonl are in {args.save_dir}")
    distributed.teardown()


if __name__ == "__main__":
    cli.run_main(main, get_args_parser())
