"""Find SimCLR pre-training tickets: IMP of a SimCLR ResNet, retrained with the contrastive loss.

The pre-trained weights (--sim_model) are pruned one-shot by --prun_percent, then every
--prun_epoch epochs of NT-Xent training another --prun_percent of the remaining backbone conv
weights are pruned and the weights rewound to --sim_model, --epochs epochs in all. Results go to
SAVE_DIR/EXPERIMENT. --prun_percent 0 instead trains a dense SimCLR model for --epochs. Example:

    cd SimCLR && python -u main.py simclr_r50 --gpu 0,1,2,3 --epochs 180 --prun_epoch 10 \\
        --prun_percent 0.2 --lr 1e-4 --arch resnet50 --batch_size 256 --data DIR \\
        --sim_model simclr_weight.pt --save_dir simclr_imp
"""

import os
import shlex
import sys

import torch

from lth import cli, distributed, pruning, validate
from lth.errors import UserError
from lth.imp import ImpRun
from lth.once import train_once
from lth.session import check_same_experiment, check_save_dir, open_session, resume_source
from SimCLR import simclr
from SimCLR.hparams import DEFAULT_SIM_MODEL, LATEST, SimclrImp
from SimCLR.task import DENSE_OUTPUT, SimCLRTask



def get_args_parser():
    return SimclrImp.parser(description=__doc__.split("\n\n")[0])


def gpu_ids(text: str) -> list[int]:
    """``--gpu 0,1,2,3`` as device numbers."""
    try:
        ids = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UserError(f"--gpu expects device numbers such as 0 or 0,1,2,3, got '{text}'") from None
    if not ids or min(ids) < 0 or len(set(ids)) != len(ids):
        raise UserError(f"--gpu expects distinct device numbers such as 0 or 0,1,2,3, got '{text}'")
    return ids


def relaunch_command(script: str, argv: list[str], nproc: int, python: str = sys.executable) -> list[str]:
    """The same command line under torchrun, one process per listed GPU."""
    return [python, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            script, *argv]


def check_args(args) -> None:
    for name in ("epochs", "batch_size", "prun_epoch", "mlpout", "image_size"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name} must be at least 1, got {getattr(args, name)}")
    validate.check_shared(args)
    validate.check_positive("temperature", args.temperature)
    validate.check_run_name(args.experiment, "EXPERIMENT")
    if args.prun_percent != 0:
        pruning.check_rate(args.prun_percent)
        if args.epochs % args.prun_epoch:
            raise UserError(f"--prun_epoch {args.prun_epoch} must divide --epochs {args.epochs} "
                            f"(rounds = 1 + epochs / prun_epoch)")
    gpu_ids(args.gpu)


def select_devices(args) -> int:
    """Set CUDA_VISIBLE_DEVICES from --gpu before CUDA starts; the number of CUDA devices to use.

    Under torchrun the launcher's environment already holds the choice (each process takes its
    LOCAL_RANK), so nothing is changed there.
    """
    if args.cpu or "WORLD_SIZE" in os.environ:
        return 0
    ids = gpu_ids(args.gpu)
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, ids))
    if not torch.cuda.is_available():
        print(f"notice: no CUDA device; --gpu {args.gpu} ignored, running on the CPU", file=sys.stderr)
        return 0
    if torch.cuda.device_count() < len(ids):
        raise UserError(f"--gpu {args.gpu} lists {len(ids)} devices but only "
                        f"{torch.cuda.device_count()} of them exist")
    if args.batch_size % len(ids):
        raise UserError(f"--batch_size {args.batch_size} must be divisible by the {len(ids)} GPUs of --gpu")
    return len(ids)


def start_weights(args) -> dict | None:
    """The --sim_model weights, or None for a dense run from random init (--prun_percent 0 only)."""
    path = args.sim_model
    absent = path in ("", "None", "none") or (path == DEFAULT_SIM_MODEL and not os.path.exists(path))
    if absent and args.prun_percent == 0:
        print("notice: no --sim_model; training a dense SimCLR model from random init", file=sys.stderr)
        return None
    if absent or not os.path.exists(path):
        raise UserError(f"--sim_model '{path}' does not exist: IMP prunes and rewinds to SimCLR "
                        f"weights (--prun_percent 0 pre-trains a dense model from scratch instead)")
    return simclr.read_sim_weights(path)


def main(args) -> None:
    check_args(args)
    hparams = SimclrImp.from_args(args)
    run, _ = check_save_dir(os.path.join(args.save_dir, args.experiment), bool(args.resume))
    checkpoint_path = None if args.resume in ("", LATEST) else args.resume
    if args.resume:  # before re-launching under torchrun
        check_same_experiment(resume_source(run, checkpoint_path), hparams, args.seed)
    # On resume the checkpoint holds the weights, the masks and the rewind point.
    weights = None if args.resume else start_weights(args)
    devices = select_devices(args)
    if devices > 1:
        command = relaunch_command(os.path.abspath(__file__), sys.argv[1:], devices)
        print(f"notice: {devices} GPUs listed; re-launching as {shlex.join(command)}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os.execv(command[0], command)
    # Device 0 is the one --gpu named (CUDA_VISIBLE_DEVICES); under torchrun, LOCAL_RANK's.
    session = open_session(args, run, checkpoint_path, gpu=0, hparams=hparams)
    ctx = session.ctx
    if args.batch_size % ctx.world_size:
        raise UserError(f"--batch_size {args.batch_size} must be divisible by the {ctx.world_size} processes")
    task = SimCLRTask(args, weights)
    weights = None  # the task keeps the part that is rewound to
    task.build(session)
    session.record(args)
    if args.prun_percent:
        imp = ImpRun(task, args, session)
        imp.resume(checkpoint_path) if args.resume else imp.start()
        done = "tickets (ticket_XX.pt), checkpoints, metrics.jsonl and summary.jsonl"
    else:
        train_once(task, args, session)
        done = f"{DENSE_OUTPUT} (usable as --sim_model), checkpoints and metrics.jsonl"
    if ctx.is_main:
        print(f"done: {done} are in {run.path}")
    distributed.teardown()


if __name__ == "__main__":
    cli.run_main(main, get_args_parser())
