"""Device choice and multi-process set-up with PyTorch's own DDP (launched by torchrun)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from lth.errors import UserError


@dataclass(frozen=True)
class Context:
    """Where this process runs and which part of the job it is."""
    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup(gpu: int | str | None = None, cpu: bool = False) -> Context:
    """Pick the device and, under torchrun (``WORLD_SIZE`` > 1), join the process group.

    ``gpu`` picks a CUDA device for a single-process run; under torchrun each process takes
    ``LOCAL_RANK``. NCCL is used on CUDA, gloo on CPU.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and not cpu
    if use_cuda:
        index = local_rank if world_size > 1 else _gpu_index(gpu)
        if index >= torch.cuda.device_count():
            raise UserError(f"--gpu {index} asked for, but this machine has "
                            f"{torch.cuda.device_count()} CUDA device(s)")
        torch.cuda.set_device(index)
        device = torch.device("cuda", index)
    else:
        device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return Context(device=device, rank=rank, world_size=world_size, local_rank=local_rank)


def per_process_batch(batch_size: int, ctx: Context, flag: str = "--batch_size") -> int:
    """One process's share of the global training batch ``batch_size``; refused if the processes
    cannot share it equally (the run would otherwise train another batch size than asked for)."""
    if batch_size % ctx.world_size:
        raise UserError(f"{flag} {batch_size} is the global batch and must divide equally among the "
                        f"{ctx.world_size} processes (e.g. {batch_size - batch_size % ctx.world_size or ctx.world_size})")
    return batch_size // ctx.world_size


def per_process_eval_batch(batch_size: int, ctx: Context) -> int:
    """One process's evaluation batch: the global one over the processes, rounded up (the scores
    do not depend on it, each sample is evaluated once)."""
    return max(1, -(-batch_size // ctx.world_size))


def _gpu_index(gpu: int | str | None) -> int:
    if gpu in (None, ""):
        return 0
    first = str(gpu).split(",")[0]
    try:
        return int(first)
    except ValueError:
        raise UserError(f"--gpu expects a device number such as 0, got '{gpu}'") from None


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        # Every rank reaches this point before any closes its connections: a rank that tore the gloo
        # group down while another still had work on it made that one abort at exit (seen once in CI:
        # "terminate called without an active exception", exit -6, after both had saved their files).
        dist.barrier()
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over all ranks, in place (a no-op in a single process)."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_buffers(model: torch.nn.Module, src: int = 0) -> None:
    """Every rank takes rank ``src``'s buffers (BN running statistics, masks). DDP broadcasts them at the
    start of each forward, so after the last training step each rank holds the statistics of its own
    last batch: without this, the ranks would evaluate their shards with models that differ from
    the one rank 0 saves (a no-op in a single process)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        for buffer in model.buffers():
            dist.broadcast(buffer, src)


def broadcast_object(obj, src: int = 0):
    """Rank ``src``'s copy of a picklable object, on every rank."""
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=src)
    return holder[0]


def all_gather_objects(obj) -> list:
    """Every rank's copy of a picklable object, in rank order (``[obj]`` in a single process);
    for evaluators that need all detections or predictions before computing a metric."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered
