"""SimCLR IMP: tickets, rewinding to the SimCLR weights, NT-Xent, LARS, dense pre-training, bad input."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from PIL import Image

import main_eval_downstream
import pruning_utils
from lth import engine, trainer
from lth.checkpoint import load_file
from lth.contrastive import contrastive_evaluate
from lth.distributed import Context
from lth.engine import Precision
from lth.errors import UserError
from lth.models import build_model
from lth.optim import LARS
from SimCLR import main as simclr_main
from SimCLR import simclr

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "SimCLR", "main.py")
FAST = ["--arch", "resnet18_w16", "--image_size", "32", "--batch_size", "4", "-j", "0", "--cpu",
        "--print_freq", "0"]
CPU = Context(device=torch.device("cpu"))
FP32 = Precision(dtype=None, channels_last=False)


def write_image_folder(root, train_per_class=8, val_per_class=3):
    rng = np.random.default_rng(0)
    for split, count in (("train", train_per_class), ("val", val_per_class)):
        for label in ("cat", "dog"):
            os.makedirs(root / split / label)
            for index in range(count):
                pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / label / f"{index}.png")


@pytest.fixture(scope="module")
def files(module_tmp):
    """A tiny ImageFolder, a fake released simclr_weight.pt and a MoCo checkpoint."""
    root = module_tmp("simclr")
    write_image_folder(root / "data")
    torch.manual_seed(1)
    sim = build_model("resnet18_w16", 1000, 3, "imagenet").state_dict()  # 1000-way fc, num_batches_tracked
    torch.save({"state_dict": sim}, root / "simclr_weight.pt")
    moco = {f"module.encoder_{which}.{key}": value for which in "qk" for key, value in sim.items()}
    torch.save({"state_dict": {**moco, "module.queue": torch.zeros(128, 8)}}, root / "moco.pt")
    (root / "empty" / "train" / "cat").mkdir(parents=True)
    (root / "empty" / "val" / "cat").mkdir(parents=True)
    return root, sim


def run_main(*argv):
    simclr_main.main(simclr_main.get_args_parser().parse_args([str(arg) for arg in argv]))


@pytest.fixture(scope="module")
def imp_run(files):
    """--epochs 2 --prun_epoch 1: round 0 only evaluates, rounds 1 and 2 train one epoch each."""
    root, _ = files
    from lth import imp as imp_module
    starts, real = {}, imp_module.train_stage

    def record_start(model, *args, stage, **kwargs):
        starts[stage] = (pruning_utils.dense_state_dict(model), pruning_utils.current_masks(model))
        return real(model, *args, stage=stage, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(imp_module, "train_stage", record_start)
        # A large LARS rate so that one epoch visibly moves the head.
        run_main("exp", *FAST, "--epochs", 2, "--prun_epoch", 1, "--lr", 0.5, "--data", root / "data",
                 "--sim_model", root / "simclr_weight.pt", "--save_dir", root / "out")
    return root / "out" / "exp", starts


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_imp_writes_tickets_checkpoints_and_logs(imp_run):
    out, _ = imp_run
    for name in ("1checkpoint.pth.tar", "2checkpoint.pth.tar", "1model_best.pth.tar", "run.json",
                 "accuracy_vs_remaining.png"):
        assert (out / name).is_file(), name
    metrics = read_jsonl(out / "metrics.jsonl")
    assert [(row["round"], row["epoch"]) for row in metrics] == [(0, -1), (1, 0), (2, 0)]
    assert {"val_top1", "val_top3", "val_top5", "train_loss", "train_acc"} <= set(metrics[1])
    assert [row["round"] for row in read_jsonl(out / "summary.jsonl")] == [0, 1, 2]


def test_every_json_file_of_the_run_is_strict(imp_run, assert_strict_json):
    out, _ = imp_run
    rows = assert_strict_json(out, "metrics.jsonl", "summary.jsonl", "run.json")["summary.jsonl"]
    assert len(rows) == 3 and all(row["test_acc_at_best_val"] is None for row in rows)  # no test split


def test_tickets_prune_twenty_percent_of_the_backbone_convs_each_round(imp_run):
    out, _ = imp_run
    counts = []
    for round_index in range(4):
        masks, meta = pruning_utils.read_masks(str(out / f"ticket_{round_index:02d}.pt"))
        assert meta["remaining"] == pytest.approx(100 * 0.8 ** round_index, abs=1e-3)
        assert meta["arch"] == "resnet18_w16" and meta["round"] == round_index
        # Every conv but the stem; never the Linear head.
        assert "conv1.weight_mask" not in masks and not any(key.startswith("fc") for key in masks)
        assert len(masks) == 19
        counts.append(sum(int(mask.sum()) for mask in masks.values()))
    for before, after in zip(counts, counts[1:]):
        assert after == before - round(0.2 * before)


def test_each_round_starts_from_the_simclr_weights_and_keeps_the_head(imp_run, files):
    out, starts = imp_run
    _, sim = files
    for stage in (1, 2):
        weights, masks = starts[stage]
        ticket, _ = pruning_utils.read_masks(str(out / f"ticket_{stage:02d}.pt"))
        assert all(torch.equal(masks[key], ticket[key]) for key in ticket)
        for key, value in sim.items():
            if key.startswith("fc.") or key.endswith("num_batches_tracked"):
                continue
            mask = ticket.get(key[: -len(".weight")] + ".weight_mask")
            assert torch.equal(weights[key], value * mask if mask is not None else value), key
    # Round 0 did not train, so round 1 starts with the head's init; round 2 with round 1's head.
    assert torch.equal(starts[1][0]["fc.fc1.weight"], starts[0][0]["fc.fc1.weight"])
    assert not torch.equal(starts[2][0]["fc.fc1.weight"], starts[1][0]["fc.fc1.weight"])
    init_weight = load_file(str(out / "2checkpoint.pth.tar"))["init_weight"]
    assert set(init_weight) == {key for key in sim if not key.startswith("fc.")
                                and not key.endswith("num_batches_tracked")}


def test_the_ticket_trains_downstream(imp_run, tmp_path):
    out, _ = imp_run
    args = main_eval_downstream.get_args_parser().parse_args(
        ["--dataset", "digits", "--arch", "resnet18_w16", "--epochs", "1", "--batch_size", "256", "--seed", "0",
         "--print_freq", "0", "--mask_dir", str(out / "ticket_02.pt"), "--save_dir", str(tmp_path / "eval")])
    main_eval_downstream.main(args)
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary["remaining"] == pytest.approx(64, abs=1e-3)


def reference_nt_xent(z1, z2, temperature):
    z = torch.cat([z1, z2]).double()
    z = z / z.norm(dim=1, keepdim=True)
    count = z.size(0)
    losses = []
    for i in range(count):
        positive = (i + count // 2) % count
        denominator = sum(torch.exp(z[i] @ z[k] / temperature) for k in range(count) if k != i)
        losses.append(-torch.log(torch.exp(z[i] @ z[positive] / temperature) / denominator))
    return torch.stack(losses).mean()


def test_textbook_nt_xent_matches_the_definition():
    torch.manual_seed(0)
    z1, z2 = torch.randn(5, 7), torch.randn(5, 7)
    for temperature in (0.5, 0.1):
        assert simclr.nt_xent(z1, z2, temperature, form="textbook").item() == pytest.approx(
            reference_nt_xent(z1, z2, temperature).item(), rel=1e-5)


def test_textbook_nt_xent_is_smallest_for_identical_views_far_from_the_others():
    z = torch.eye(4, 8) * 3.0  # orthogonal: every other view is far
    best = simclr.nt_xent(z, z, 0.5, form="textbook").item()
    expected = -np.log(np.exp(2.0) / (np.exp(2.0) + 6))  # cos 1 to the positive, 0 to 6 negatives
    assert best == pytest.approx(expected, rel=1e-6)
    torch.manual_seed(0)
    assert best < simclr.nt_xent(z, z[[1, 2, 3, 0]], 0.5, form="textbook").item()
    assert best < simclr.nt_xent(z, z + 0.5 * torch.randn(4, 8), 0.5, form="textbook").item()


def original_nt_xent(x, t=0.5):
    """The original SimCLR IMP code's ``utils.nt_xent``, written out: ``x`` holds the two views of
    image i in rows 2i and 2i + 1 (its ``inputs.view(2B, ...)`` of a (B, 2, ...) batch)."""
    norms = x.norm(p=2, dim=1, keepdim=True)
    x = (x @ x.t()) / (norms * norms.t()).clamp(min=1e-8)
    x = torch.exp(x / t)
    idx = torch.arange(x.size(0))
    idx[::2] += 1  # put positive pairs on the diagonal
    idx[1::2] -= 1
    x = x[idx]
    x = x.diag() / (x.sum(0) - torch.exp(torch.tensor(1 / t)))
    return -torch.log(x.mean())


def interleave(z1, z2):
    return torch.stack([z1, z2], dim=1).reshape(-1, z1.size(1))


@pytest.mark.parametrize("temperature", [0.5, 0.2])
def test_default_nt_xent_is_the_originals_value_and_gradient(temperature):
    torch.manual_seed(0)
    z1, z2 = torch.randn(6, 9, dtype=torch.float64), torch.randn(6, 9, dtype=torch.float64)
    a, b = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    loss = simclr.nt_xent(a, b, temperature)  # the default form
    loss.backward()
    ra, rb = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    expected = original_nt_xent(interleave(ra, rb), temperature)
    expected.backward()
    # (The original subtracts exp(1/t) as a float32 constant: agreement to float32 precision.)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-7)
    assert torch.allclose(a.grad, ra.grad, rtol=1e-5, atol=1e-6)
    assert torch.allclose(b.grad, rb.grad, rtol=1e-5, atol=1e-6)
    # Not the textbook loss: -log(mean p) < mean(-log p) (Jensen), strictly for unequal p.
    assert loss.item() < simclr.nt_xent(z1, z2, temperature, form="textbook").item() - 1e-3


def test_training_step_minimises_the_original_loss_unless_told_otherwise():
    torch.manual_seed(0)
    model = simclr.build_simclr_model("resnet18_w16", 8)
    views = torch.rand(3, 2, 3, 32, 32)
    batch = (views, torch.zeros(3, dtype=torch.long))
    z = model(simclr.stack_views(views))
    expected = original_nt_xent(interleave(*z.chunk(2)), 0.5)
    assert simclr.make_step(0.5)(model, batch).loss.item() == pytest.approx(expected.item(), rel=1e-5)
    textbook = simclr.make_step(0.5, form="textbook")(model, batch).loss
    assert textbook.item() == pytest.approx(simclr.nt_xent(*z.chunk(2), 0.5, form="textbook").item(), rel=1e-5)
    assert simclr_main.get_args_parser().parse_args(["x"]).loss == "original"


def test_model_keeps_torchvision_names_and_the_head_is_optional():
    model = simclr.build_simclr_model("resnet18_w16", 16)
    assert {"layer1.0.conv1.weight", "fc.fc1.weight", "fc.fc2.bias"} <= set(model.state_dict())
    assert model.fc.fc1.in_features == 128 and model.fc.fc2.out_features == 16
    images = torch.rand(2, 3, 32, 32)
    assert model(images).shape == (2, 16)
    assert simclr.backbone_features(model.eval(), images).shape == (2, 128)
    assert simclr.build_simclr_model("resnet18_w16", 16, head=False)(images).shape == (2, 128)
    parser = simclr_main.get_args_parser()
    assert parser.parse_args(["x"]).phead and not parser.parse_args(["x", "--phead"]).phead


def test_contrastive_accuracy_is_perfect_for_identical_views():
    torch.manual_seed(0)
    model = simclr.build_simclr_model("resnet18_w16", 16)
    batches = []
    for _ in range(2):
        images = torch.rand(3, 3, 32, 32)
        batches.append((torch.stack([images, images], dim=1), torch.zeros(3, dtype=torch.long)))
    result = contrastive_evaluate(model, batches, CPU, FP32, simclr.make_eval_logits())
    assert result["top1"] == result["acc"] == 100.0


def _nt_xent_rank(rank, world, port, z1, z2, out):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    rows = slice(rank * z1.size(0) // world, (rank + 1) * z1.size(0) // world)
    for form in simclr.LOSS_FORMS:
        a, b = z1[rows].clone().requires_grad_(), z2[rows].clone().requires_grad_()
        loss = simclr.nt_xent(a, b, 0.5, form=form)
        loss.backward()
        torch.save((loss.detach(), a.grad, b.grad), os.path.join(out, f"{form}{rank}.pt"))
    with torch.inference_mode():  # validation ranks each view against the views of every rank
        torch.save(simclr._similarities(z1[rows], z2[rows]), os.path.join(out, f"similarities{rank}.pt"))
    dist.destroy_process_group()


def test_nt_xent_under_ddp_equals_the_global_batch_loss(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    torch.manual_seed(0)
    z1, z2 = torch.randn(6, 5), torch.randn(6, 5)
    mp.spawn(_nt_xent_rank, args=(2, port, z1, z2, str(tmp_path)), nprocs=2)
    for form in simclr.LOSS_FORMS:
        ranks = [torch.load(tmp_path / f"{form}{rank}.pt") for rank in range(2)]
        a, b = z1.clone().requires_grad_(), z2.clone().requires_grad_()
        if form == "original":
            loss = original_nt_xent(interleave(a, b), 0.5)
        else:
            loss = reference_nt_xent(a, b, 0.5)
        loss.backward()
        assert (ranks[0][0] + ranks[1][0]).item() / 2 == pytest.approx(loss.item(), rel=1e-5), form
        # DDP averages gradients over the 2 ranks: that must give the global-batch gradient.
        assert torch.allclose(torch.cat([ranks[0][1], ranks[1][1]]) / 2, a.grad.float(), atol=1e-6), form
        assert torch.allclose(torch.cat([ranks[0][2], ranks[1][2]]) / 2, b.grad.float(), atol=1e-6), form
    cosine, own, positive = simclr._similarities(z1, z2)
    for rank in range(2):
        part, part_own, part_positive = torch.load(tmp_path / f"similarities{rank}.pt")
        rows = torch.cat([torch.arange(3) + 3 * rank, torch.arange(3) + 6 + 3 * rank])
        assert torch.allclose(part, cosine[rows], atol=1e-6)
        assert torch.equal(part_own, own[rows]) and torch.equal(part_positive, positive[rows])


def original_lars_step(weight, grad, buffer, lr, momentum, weight_decay, eta=1e-3):
    """One step of the original SimCLR IMP code's LARS (its optimizer/lars.py), written out."""
    weight_norm, grad_norm = torch.norm(weight), torch.norm(grad)
    local_lr = eta * weight_norm / (grad_norm + weight_decay * weight_norm)
    if weight_norm < 1e-15 or grad_norm < 1e-15:
        local_lr = torch.ones(())
    buffer = buffer * momentum + local_lr * lr * (grad + weight_decay * weight)
    return weight - buffer, buffer


def test_lars_is_the_originals_rule_on_every_tensor():
    weight = torch.nn.Parameter(torch.tensor([[3.0, 4.0]]))  # norm 5
    bias = torch.nn.Parameter(torch.tensor([1.0]))
    zero = torch.nn.Parameter(torch.zeros(2))
    optimizer = engine.make_optimizer([weight, bias, zero], lr=0.1, momentum=0.9, weight_decay=0.5,
                                      device=torch.device("cpu"), name="lars")
    assert isinstance(optimizer, LARS)
    expected = {}
    buffers = {name: torch.zeros_like(p) for name, p in (("w", weight), ("b", bias), ("z", zero))}
    for step in range(3):
        grads = {"w": torch.tensor([[0.0, 1.0 + step]]), "b": torch.tensor([2.0 - step]),
                 "z": torch.tensor([0.5, -1.0])}
        for name, param in (("w", weight), ("b", bias), ("z", zero)):
            expected[name], buffers[name] = original_lars_step(param.detach().clone(), grads[name],
                                                               buffers[name], 0.1, 0.9, 0.5)
            param.grad = grads[name]
        optimizer.step()
        # Bias and batch-norm tensors are adapted too, and a zero tensor takes ratio 1 (as the original).
        for name, param in (("w", weight), ("b", bias), ("z", zero)):
            assert torch.allclose(param.detach(), expected[name], rtol=1e-6, atol=1e-7), (step, name)
    state = optimizer.state_dict()
    restored = LARS([weight, bias, zero], lr=0.1)
    restored.load_state_dict(state)
    assert torch.equal(restored.state[weight]["momentum_buffer"], optimizer.state[weight]["momentum_buffer"])


def test_lars_can_exclude_one_dimensional_tensors():
    bias = torch.nn.Parameter(torch.tensor([1.0]))
    optimizer = LARS([bias], lr=0.1, momentum=0.9, weight_decay=0.5, exclude_1d=True)
    bias.grad = torch.tensor([2.0])
    optimizer.step()
    assert torch.allclose(bias.detach(), torch.tensor([1.0 - 0.1 * 2.0]))


def test_lars_reduces_a_quadratic():
    torch.manual_seed(0)
    target = torch.randn(8, 8)
    weight = torch.nn.Parameter(torch.randn(8, 8))
    optimizer = LARS([weight], lr=50.0, momentum=0.9)
    losses = []
    for _ in range(100):
        loss = ((weight - target) ** 2).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0]


def test_dense_pretraining_writes_a_sim_model(files, tmp_path, monkeypatch, capsys):
    root, _ = files
    monkeypatch.chdir(tmp_path)  # where the default --sim_model path does not exist
    run_main("dense", *FAST, "--epochs", 1, "--prun_percent", 0, "--data", root / "data", "--save_dir", "out")
    assert "notice: no --sim_model" in capsys.readouterr().err
    out = tmp_path / "out" / "dense"
    saved = load_file(str(out / "simclr_weight.pt"))
    trained = load_file(str(out / "0checkpoint.pth.tar"))["state_dict"]
    assert all(torch.equal(saved["state_dict"][key], trained[key]) for key in trained)
    model = simclr.build_simclr_model("resnet18_w16", 128)
    loaded = simclr.load_sim_weights(model, simclr.read_sim_weights(str(out / "simclr_weight.pt")), "x")
    assert "fc.fc1.weight" in loaded and "layer4.1.conv2.weight" in loaded
    assert not pruning_utils.extract_mask(trained)
    assert [row["epoch"] for row in read_jsonl(out / "metrics.jsonl")] == [0]


class Interrupted(Exception):
    pass


def test_resume_finishes_an_interrupted_run(files, tmp_path, monkeypatch):
    root, _ = files
    flags = ["exp", *FAST, "--epochs", 1, "--prun_epoch", 1, "--data", root / "data",
             "--sim_model", root / "simclr_weight.pt", "--save_dir", tmp_path]

    def dies(*args, **kwargs):
        raise Interrupted()

    monkeypatch.setattr(trainer, "train_one_epoch", dies)
    with pytest.raises(Interrupted):  # in round 1, after round 0 evaluated and pruned
        run_main(*flags)
    monkeypatch.undo()
    with pytest.raises(UserError, match="--temperature"):
        run_main(*flags, "--temperature", 0.1, "--resume")
    run_main(*flags, "--resume")
    out = tmp_path / "exp"
    assert [(row["round"], row["epoch"]) for row in read_jsonl(out / "metrics.jsonl")] == [(0, -1), (1, 0)]
    _, meta = pruning_utils.read_masks(str(out / "ticket_02.pt"))
    assert meta["remaining"] == pytest.approx(64, abs=1e-3)
    assert len(json.loads((out / "run.json").read_text())["resumed"]) == 1


def test_epochs_must_be_a_multiple_of_prun_epoch(files, tmp_path):
    root, _ = files
    with pytest.raises(UserError, match="--prun_epoch 2 must divide --epochs 3"):
        run_main("exp", *FAST, "--epochs", 3, "--prun_epoch", 2, "--data", root / "data",
                 "--sim_model", root / "simclr_weight.pt", "--save_dir", tmp_path)
    assert not (tmp_path / "exp").exists()


def test_several_gpus_relaunch_under_torchrun():
    command = simclr_main.relaunch_command("/repo/SimCLR/main.py", ["exp", "--gpu", "0,1,2,3"], 4, python="py")
    assert command == ["py", "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4",
                       "/repo/SimCLR/main.py", "exp", "--gpu", "0,1,2,3"]
    assert simclr_main.gpu_ids("0,1,2,3") == [0, 1, 2, 3]
    for bad in ("a", "0,0", "-1", ""):
        with pytest.raises(UserError, match="--gpu"):
            simclr_main.gpu_ids(bad)


def run_script(*flags, cwd=ROOT):
    return subprocess.run([sys.executable, SCRIPT, *map(str, flags)], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


def assert_one_line_error(result, *needles):
    assert result.returncode != 0, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("notice:")]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.mark.parametrize("case, needles", [
    ("moco", ["MoCo", "MoCo/main_moco_imp.py --pretrained_path"]),
    ("empty", ["holds no usable images"]),
    ("missing", ["--sim_model", "does not exist"]),
])
def test_bad_input_is_one_line_and_writes_nothing(files, tmp_path, case, needles):
    root, _ = files
    data = root / ("empty" if case == "empty" else "data")
    sim = {"moco": ["--sim_model", root / "moco.pt"], "empty": ["--sim_model", root / "simclr_weight.pt"],
           "missing": []}[case]
    result = run_script("exp", *FAST, "--data", data, *sim, "--save_dir", tmp_path / "out", cwd=tmp_path)
    assert_one_line_error(result, *needles)
    assert not (tmp_path / "out").exists()


def test_help_explains_every_flag():
    result = run_script("--help")
    assert result.returncode == 0
    for flag in ("--sim_model", "--prun_percent", "--prun_epoch", "--phead", "--temperature", "(default:"):
        assert flag in result.stdout
