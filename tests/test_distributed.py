"""The DDP code path on CPU: 2 processes with gloo under torchrun end with identical masks."""

import json
import os
import socket
import subprocess
import sys

import pytest
import torch

import pruning_utils

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("random_prune", [False, True])
def test_two_gloo_ranks_hold_the_same_masks(tmp_path, random_prune):
    save_dir = tmp_path / "run"
    flags = ["--dataset", "digits", "--arch", "resnet18_w16", "--epochs", "1", "--batch_size", "128",
             "--pruning_times", "2", "--seed", "0", "--cpu", "--print_freq", "0", "--save_dir", str(save_dir)]
    if random_prune:
        flags.append("--random_prune")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
               "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
               os.path.join(ROOT, "tests", "ddp_worker.py"), str(tmp_path), *flags]
    # The worker imports main_imp_downstream, a script of the repository root (not an installed module).
    path = os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=path)
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    rank0 = torch.load(tmp_path / "masks_rank0.pt")
    rank1 = torch.load(tmp_path / "masks_rank1.pt")
    assert rank0.keys() == rank1.keys()
    assert all(torch.equal(rank0[key], rank1[key]) for key in rank0)
    ticket, meta = pruning_utils.read_masks(str(save_dir / "ticket_02.pt"))
    assert all(torch.equal(ticket[key], rank0[key]) for key in ticket)
    assert meta["remaining"] == pytest.approx(64, abs=1e-3)
    # Rank 0 alone logs: one line per epoch, with figures over the whole (sharded) data set.
    rows = [json.loads(line) for line in (save_dir / "metrics.jsonl").read_text().splitlines()]
    assert [(row["round"], row["epoch"]) for row in rows] == [(0, 0), (1, 0)]


def test_gradient_accumulation_under_ddp_reduces_once_per_optimizer_step(tmp_path):
    """Two gloo ranks, 4 batches each, the optimizer stepping after every second batch (Detection's
    --accumulate 2): DDP all-reduces only on the stepping batches, and the weights follow the rule
    written out here: each step takes the mean over ranks of the gradients summed over the window."""
    torch.manual_seed(1)
    data = [[(torch.randn(5, 3), torch.randn(5, 2)) for _ in range(4)] for _ in range(2)]
    torch.save(data, tmp_path / "data.pt")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
               "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
               os.path.join(ROOT, "tests", "ddp_accumulate_worker.py"), str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=300,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"accumulate_rank{rank}.pt") for rank in range(2)]
    assert [r["allreduces"] for r in ranks] == [2, 2]  # not 4: the summing batches skip it

    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    weight, bias = model.weight.detach().clone(), model.bias.detach().clone()
    for window in ((0, 1), (2, 3)):
        grad_w, grad_b = torch.zeros_like(weight), torch.zeros_like(bias)
        for rank in range(2):
            for index in window:
                inputs, targets = data[rank][index]
                w, b = weight.clone().requires_grad_(), bias.clone().requires_grad_()
                torch.nn.functional.mse_loss(inputs @ w.T + b, targets).backward()
                grad_w += w.grad / 2
                grad_b += b.grad / 2
        weight, bias = weight - 0.1 * grad_w, bias - 0.1 * grad_b
    for r in ranks:
        assert torch.allclose(r["state"]["weight"], weight, atol=1e-6)
        assert torch.allclose(r["state"]["bias"], bias, atol=1e-6)


def test_batch_size_is_the_global_batch_under_torchrun_in_every_script(tmp_path):
    """The originals ran one process (DataParallel): --batch_size B was the batch of a step. Under
    torchrun with 2 gloo ranks every script's training loader gives each process B / 2, and a B
    that does not divide is refused on one line (the run would train another experiment)."""
    from PIL import Image

    images = tmp_path / "images"
    for split in ("train", "val"):
        for name in ("a", "b"):
            (images / split / name).mkdir(parents=True)
            for index in range(6):
                Image.new("RGB", (36, 36), (40 * index, 90, 200)).save(images / split / name / f"{index}.png")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
               "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
               os.path.join(ROOT, "tests", "ddp_batch_worker.py"), str(tmp_path), str(images)]
    path = os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))  # the worker is not a module
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=600,
                            env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=path))
    assert result.returncode == 0, result.stderr[-3000:]
    for rank in range(2):
        batches = json.loads((tmp_path / f"batches_rank{rank}.json").read_text())
        assert set(batches) == {"classification", "detection", "segmentation", "simclr", "moco"}
        for name, sizes in batches.items():
            assert sizes["even"] == 2, (name, sizes)  # --batch_size 4 over 2 processes
            assert "3" in sizes["odd"] and "divide equally" in sizes["odd"] and "\n" not in sizes["odd"], name
