"""Run by tests/test_distributed.py under torchrun: train_one_epoch with gradient accumulation on a
DDP-wrapped linear model; saves the final weights and how many gradient all-reduces DDP made."""

import os
import sys

import torch
import torch.distributed as dist
import torch.nn as nn

from lth import distributed
from lth.engine import Precision, StepResult, train_one_epoch


def regression_step(model, batch):
    inputs, targets = batch
    return StepResult(nn.functional.mse_loss(model(inputs), targets), None, inputs.shape[0])


if __name__ == "__main__":
    out = sys.argv[1]
    torch.set_num_threads(1)
    ctx = distributed.setup(cpu=True)
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    data = torch.load(os.path.join(out, "data.pt"))  # [rank][batch] -> (inputs, targets)
    reductions = {"n": 0}

    def counting_allreduce(state, bucket):
        reductions["n"] += 1
        tensor = bucket.buffer().div_(dist.get_world_size())
        return dist.all_reduce(tensor, async_op=True).get_future().then(lambda fut: fut.value()[0])

    wrapped = nn.parallel.DistributedDataParallel(model)
    wrapped.register_comm_hook(None, counting_allreduce)
    optimizer = torch.optim.SGD(wrapped.parameters(), lr=0.1)
    train_one_epoch(wrapped, data[ctx.rank], optimizer, None, ctx, Precision.choose("fp32", ctx.device),
                    print_freq=0, step=regression_step, step_after=lambda index: index % 2 == 1)
    torch.save({"state": model.state_dict(), "allreduces": reductions["n"]},
               os.path.join(out, f"accumulate_rank{ctx.rank}.pt"))
    distributed.teardown()
