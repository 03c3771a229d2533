"""MoCo IMP end to end: both encoders share encoder_q's mask, rewind to encoder_q's weights, resume, tickets."""

import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import pruning_utils
from lth import imp as imp_module
from lth.checkpoint import load_file
from lth.errors import UserError
from lth.models import build_model, load_pretrained
from MoCo import main_moco_imp
from MoCo import task as moco_task
from MoCo.builder import MoCo, make_encoder
from MoCo.weights import load_moco_weights

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "MoCo", "main_moco_imp.py")
TINY = ["-a", "resnet18_w16", "--image_size", "32", "-b", "4", "--moco-k", "16", "--moco-dim", "16",
        "--epochs", "2", "--retrain_epoch", "1", "-j", "0", "--cpu", "--mlp", "--aug-plus", "--seed", "0",
        "--moco-t", "0.2"]


def write_image_folder(root, per_class):
    rng = np.random.default_rng(0)
    for split, count in per_class.items():
        for label in ("cat", "dog"):
            os.makedirs(root / split / label, exist_ok=True)
            for index in range(count):
                pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / label / f"{index}.png")


@pytest.fixture(scope="module")
def files(module_tmp):
    """A tiny ImageFolder and fake released weights: encoder_k differs from encoder_q on purpose."""
    root = module_tmp("moco")
    write_image_folder(root / "data", {"train": 4, "val": 2})
    torch.manual_seed(1)
    query = make_encoder("resnet18_w16", 16, mlp=True).state_dict()
    torch.manual_seed(2)
    key = make_encoder("resnet18_w16", 16, mlp=True).state_dict()
    state = {f"module.encoder_q.{name}": value for name, value in query.items()}
    state.update({f"module.encoder_k.{name}": value for name, value in key.items()})
    state["module.queue"] = torch.nn.functional.normalize(torch.randn(16, 16), dim=0)
    state["module.queue_ptr"] = torch.zeros(1, dtype=torch.long)
    torch.save({"state_dict": state, "epoch": 800}, root / "moco_v2_800ep_pretrain.pth.tar")
    torch.save(query, root / "moco.pt")
    return {"root": root, "data": str(root / "data"), "query": query, "key": key,
            "v2": str(root / "moco_v2_800ep_pretrain.pth.tar"), "plain": str(root / "moco.pt")}


def moco(files, save_dir, *flags):
    args = main_moco_imp.get_args_parser().parse_args(
        [files["data"], "--pretrained_path", files["v2"], *TINY, "--save_dir", str(save_dir), *flags])
    main_moco_imp.main(args)
    return args


def kept(masks):
    return sum(int(mask.sum()) for mask in masks.values())


def same_masks(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[key].cpu().float(), b[key].cpu().float()) for key in a)


def encoder_masks(state, name):
    prefix = f"{name}."
    return {key[len(prefix):]: value for key, value in state.items()
            if key.startswith(prefix) and key.endswith(".weight_mask")}


@pytest.fixture(scope="module")
def imp_run(files):
    """The 3-round run (epochs 2, retrain every epoch), recording how each round starts."""
    starts = {}
    real = imp_module.train_stage

    def record_start(model, *args, stage, **kwargs):
        starts[stage] = {
            "q": pruning_utils.dense_state_dict(model.encoder_q),
            "k": pruning_utils.dense_state_dict(model.encoder_k),
            "q_masks": pruning_utils.current_masks(model.encoder_q),
            "k_masks": pruning_utils.current_masks(model.encoder_k),
            "k_frozen": not any(param.requires_grad for param in model.encoder_k.parameters())}
        return real(model, *args, stage=stage, **kwargs)

    out = files["root"] / "imp"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(imp_module, "train_stage", record_start)
        moco(files, out)
    return {"dir": out, "starts": starts}


def test_three_rounds_write_tickets_of_100_80_64_and_51_percent(imp_run):
    out = imp_run["dir"]
    counts = []
    for round_index in range(4):
        masks, meta = pruning_utils.read_masks(str(out / f"ticket_{round_index:02d}.pt"))
        assert meta["round"] == round_index and meta["arch"] == "resnet18_w16" and meta["pretraining"] == "moco"
        assert meta["remaining"] == pytest.approx(100 * 0.8 ** round_index, abs=1e-3)
        counts.append(kept(masks))
    for before, after in zip(counts, counts[1:]):
        assert after == before - round(0.2 * before)
    summary = [json.loads(line) for line in (out / "summary.jsonl").read_text().splitlines()]
    assert [row["round"] for row in summary] == [0, 1, 2]
    assert [row["remaining"] for row in summary] == pytest.approx([100, 80, 64], abs=1e-3)
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(row["round"], row["epoch"]) for row in metrics] == [(0, -1), (1, 0), (2, 0)]
    assert metrics[0]["trained"] is False  # round 0 only evaluates, then prunes one-shot
    assert {"val_top1", "val_top5", "train_loss", "lr"} <= set(metrics[1])
    assert all(row.get("lr", 3e-4) == 3e-4 for row in metrics)  # fixed learning rate
    for round_index in (1, 2):
        assert (out / f"{round_index}checkpoint.pth.tar").is_file()


def test_every_json_file_of_the_run_is_strict(imp_run, assert_strict_json):
    rows = assert_strict_json(imp_run["dir"], "metrics.jsonl", "summary.jsonl", "run.json")["summary.jsonl"]
    assert rows and all(row["test_acc_at_best_val"] is None for row in rows)  # no test split: null


def test_encoder_k_takes_encoder_q_mask_every_round(imp_run):
    out = imp_run["dir"]
    for stage, start in imp_run["starts"].items():
        ticket, _ = pruning_utils.read_masks(str(out / f"ticket_{stage:02d}.pt"))
        assert same_masks(start["q_masks"], ticket), stage
        assert same_masks(start["k_masks"], start["q_masks"]), stage
        assert start["k_frozen"], stage  # re-pruning makes new parameters: still no gradient for k
    state = load_file(str(out / "2checkpoint.pth.tar"))["state_dict"]
    assert same_masks(encoder_masks(state, "encoder_k"), encoder_masks(state, "encoder_q"))


def test_both_encoders_start_every_round_from_the_pretrained_encoder_q(imp_run, files):
    assert sorted(imp_run["starts"]) == [0, 1, 2]
    for stage, start in imp_run["starts"].items():
        for encoder in ("q", "k"):
            weights = start[encoder]
            assert weights.keys() == files["query"].keys()
            for name, value in files["query"].items():
                mask = start["q_masks"].get(name[: -len(".weight")] + ".weight_mask")
                expected = value * mask if mask is not None else value
                assert torch.equal(weights[name], expected), (stage, encoder, name)
    # The file's encoder_k differs, and none of it was loaded (the original's k[17:] bug).
    assert not torch.equal(files["key"]["layer1.0.conv1.weight"], files["query"]["layer1.0.conv1.weight"])


def test_ticket_and_checkpoint_load_as_mask_dir_downstream(imp_run):
    out = imp_run["dir"]
    from_ticket, _ = pruning_utils.read_masks(str(out / "ticket_02.pt"))
    from_checkpoint, meta = pruning_utils.read_masks(str(out / "2checkpoint.pth.tar"))
    assert same_masks(from_ticket, from_checkpoint)  # encoder_q. stripped, encoder_k ignored
    assert "layer1.0.conv1.weight_mask" in from_ticket and meta["state"] == 2
    # The original's layout (DDP's module. before encoder_q.) reads the same.
    state = load_file(str(out / "2checkpoint.pth.tar"))["state_dict"]
    wrapped, _ = pruning_utils.read_masks({"state_dict": {f"module.{key}": value for key, value in state.items()}})
    assert same_masks(from_ticket, wrapped)
    for masks in (from_ticket, from_checkpoint):
        model = build_model("resnet18_w16", 10, 3, stem="cifar")
        pruning_utils.apply_mask(model, masks)
        assert pruning_utils.sparsity(model)["remaining"] == pytest.approx(64, abs=1e-3)


def test_resuming_a_pruned_checkpoint_gives_the_same_next_ticket(imp_run, files):
    out = imp_run["dir"]
    cut = files["root"] / "cut"
    cut.mkdir()
    # The run as it stood when killed after the last epoch, before the final pruning (64 % masks).
    for name in ("2checkpoint.pth.tar", "run.json", "metrics.jsonl", "summary.jsonl", "ticket_00.pt",
                 "ticket_01.pt", "ticket_02.pt"):
        shutil.copy(out / name, cut / name)
    moco(files, cut, "--resume")
    whole, _ = pruning_utils.read_masks(str(out / "ticket_03.pt"))
    resumed, meta = pruning_utils.read_masks(str(cut / "ticket_03.pt"))
    assert meta["remaining"] == pytest.approx(51.2, abs=1e-3)
    assert same_masks(whole, resumed)  # pruned from the restored weights, not from stale ones
    metrics = [json.loads(line) for line in (cut / "metrics.jsonl").read_text().splitlines()]
    assert [(row["round"], row["epoch"]) for row in metrics] == [(0, -1), (1, 0), (2, 0)]
    summary = [json.loads(line) for line in (cut / "summary.jsonl").read_text().splitlines()]
    assert [row["round"] for row in summary] == [0, 1, 2]
    assert len(json.loads((cut / "run.json").read_text())["resumed"]) == 1


def test_restoring_a_checkpoint_masks_both_encoders_and_keeps_k_frozen(imp_run):
    state = load_file(str(imp_run["dir"] / "2checkpoint.pth.tar"))["state_dict"]
    model = MoCo("resnet18_w16", 16, 16, mlp=True)
    moco_task.MocoPruning(0.2, random=False, conv1=False).restore(model, state)
    model.load_state_dict(state, strict=True)
    assert not any(param.requires_grad for param in model.encoder_k.parameters())
    assert all(param.requires_grad for param in model.encoder_q.parameters())
    assert same_masks(pruning_utils.current_masks(model.encoder_k), pruning_utils.current_masks(model.encoder_q))
    assert pruning_utils.sparsity(model.encoder_q)["remaining"] == pytest.approx(64, abs=1e-3)


def test_plain_moco_pt_and_an_imp_checkpoint_load_into_both_encoders(files, imp_run):
    model = MoCo("resnet18_w16", 16, 16, mlp=True)
    report = load_moco_weights(model, files["plain"], quiet=True)
    assert not report.left_at_init
    for encoder in (model.encoder_q, model.encoder_k):
        state = encoder.state_dict()
        assert all(torch.equal(state[name], value) for name, value in files["query"].items())
    # A checkpoint of this script: its masked encoder_q (weight_orig * weight_mask) goes into both.
    checkpoint = load_file(str(imp_run["dir"] / "2checkpoint.pth.tar"))["state_dict"]
    expected = pruning_utils.dense_state_dict(
        {key[len("encoder_q."):]: value for key, value in checkpoint.items() if key.startswith("encoder_q.")})
    load_moco_weights(model, str(imp_run["dir"] / "2checkpoint.pth.tar"), quiet=True)
    for encoder in (model.encoder_q, model.encoder_k):
        assert all(torch.equal(encoder.state_dict()[name], value) for name, value in expected.items())


def test_a_key_that_fits_neither_encoder_is_named(files, tmp_path):
    state = {f"module.encoder_q.{name}": value for name, value in files["query"].items()}
    state["module.encoder_q.layer5.0.conv1.weight"] = torch.zeros(1)
    torch.save({"state_dict": state}, tmp_path / "odd.pth.tar")
    with pytest.raises(UserError, match="module.encoder_q.layer5.0.conv1.weight"):
        load_moco_weights(MoCo("resnet18_w16", 16, 16, mlp=True), str(tmp_path / "odd.pth.tar"), quiet=True)
    with pytest.raises(UserError, match="fc.0.weight.*pass --mlp"):  # an MLP head where a linear fc is expected
        load_moco_weights(MoCo("resnet18_w16", 16, 16, mlp=False), files["plain"], quiet=True)


def test_momentum_update_queue_and_evaluation(files):
    torch.manual_seed(0)
    model = MoCo("resnet18_w16", 8, 8, momentum=0.9, temperature=0.2, mlp=True)
    pruning_utils.global_prune(model.encoder_q, 0.2)
    pruning_utils.apply_mask(model.encoder_k, pruning_utils.extract_mask(model.encoder_q))
    model.freeze_key_encoder()
    with torch.no_grad():
        for param in model.encoder_q.parameters():
            param.add_(1.0)
    before = {name: param.clone() for name, param in model.encoder_k.named_parameters()}
    model.momentum_update()
    after = dict(model.encoder_k.named_parameters())
    assert "layer1.0.conv1.weight_orig" in after  # the update acts on weight_orig once pruned
    for name, value in before.items():
        assert torch.allclose(after[name], value + 0.1, atol=1e-6), name
    images = torch.randn(4, 3, 32, 32)
    queue = model.queue.clone()
    model.eval()
    logits, targets = model.contrastive_logits(images, images)
    assert logits.shape == (4, 9) and not targets.any()
    assert torch.equal(model.queue, queue) and int(model.queue_ptr) == 0  # evaluation leaves the queue
    model.train()
    logits, targets = model(images, images)
    assert logits.shape == (4, 9) and int(model.queue_ptr) == 4
    assert torch.allclose(model.queue[:, 4:], queue[:, 4:]) and not torch.allclose(model.queue[:, :4], queue[:, :4])


def test_dense_pretraining_writes_a_file_that_loads_as_pretrained(files):
    out = files["root"] / "dense"
    args = main_moco_imp.get_args_parser().parse_args(
        [files["data"], "--pretrained_path", "none", *TINY, "--retrain_epoch", "0", "--epochs", "1",
         "--multiprocessing-distributed", "--save_dir", str(out)])
    main_moco_imp.main(args)
    exported = load_file(str(out / main_moco_imp.EXPORT_NAME))
    assert all(key.startswith(("module.encoder_q.", "module.encoder_k.", "module.queue"))
               for key in exported["state_dict"])
    assert not any(key.endswith("_mask") for key in exported["state_dict"])
    model = MoCo("resnet18_w16", 16, 16, mlp=True)
    report = load_moco_weights(model, str(out / main_moco_imp.EXPORT_NAME), quiet=True)
    assert not report.left_at_init
    trained = {key[len("module.encoder_q."):]: value for key, value in exported["state_dict"].items()
               if key.startswith("module.encoder_q.")}
    assert all(torch.equal(model.encoder_k.state_dict()[name], value) for name, value in trained.items())
    # main_eval_downstream.py --pretrained reads it too (fc and the ImageNet stem are left out there).
    downstream = build_model("resnet18_w16", 10, 3, stem="cifar")
    report = load_pretrained(downstream, str(out / main_moco_imp.EXPORT_NAME), quiet=True)
    assert "layer4.1.conv2.weight" in report.loaded
    assert torch.equal(downstream.state_dict()["layer4.1.conv2.weight"], trained["layer4.1.conv2.weight"])
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 1 and metrics[0]["remaining"] == 100


def run_script(*flags, cwd=ROOT):
    command = [sys.executable, os.path.relpath(SCRIPT, cwd), *flags]
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, timeout=300)


def assert_one_line_error(result, *needles):
    assert result.returncode != 0, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("notice:")]
    assert len(lines) == 1, result.stderr
    assert "error" in lines[0]
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_bad_input_is_one_line_and_writes_nothing(files, tmp_path):
    empty = tmp_path / "empty"
    (empty / "train" / "cat").mkdir(parents=True)
    (empty / "val" / "cat").mkdir(parents=True)
    torch.save({"state_dict": {f"module.encoder_q.{name}": value for name, value in
                               list(build_model("resnet50", 16, 3, "imagenet").state_dict().items())[:12]}},
               tmp_path / "r50.pth.tar")
    cases = [  # the second is started as the original's README does it: cd MoCo && python main_moco_imp.py
        ([str(empty), "--pretrained_path", files["v2"]], [str(empty / "train")], ROOT),
        ([files["data"], "--pretrained_path", files["v2"], "--moco-k", "18"], ["--moco-k 18", "global batch 4"],
         os.path.join(ROOT, "MoCo")),
        ([files["data"], "--pretrained_path", str(tmp_path / "r50.pth.tar")], ["r50.pth.tar", "conv1.weight", "resnet18_w16"],
         ROOT),
    ]
    for flags, needles, cwd in cases:
        out = tmp_path / "run"
        result = run_script(*TINY, *flags, "--save_dir", str(out), cwd=cwd)
        assert_one_line_error(result, *needles)
        assert not out.exists()


def test_help_explains_every_flag():
    parser = main_moco_imp.get_args_parser()
    text = parser.format_help()
    for flag in ("--pretrained_path", "--retrain_epoch", "--multiprocessing-distributed", "--moco-k", "--cos"):
        assert flag in text
    assert all(action.help for action in parser._actions), [a.dest for a in parser._actions if not a.help]
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(["--help"])
    assert exit_info.value.code == 0


def test_two_process_gloo_run_without_seed_ends_with_the_same_masks_on_both_ranks(files, tmp_path):
    """No --seed: rank 0 draws one and broadcasts it once (a second collective on rank 0 alone
    used to hang the run; the timeout turns a hang into a failure)."""
    out = tmp_path / "ddp"
    flags = [arg for arg in TINY]
    flags[flags.index("--epochs") + 1] = "1"
    del flags[flags.index("--seed"):flags.index("--seed") + 2]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               SCRIPT, files["data"], "--pretrained_path", files["v2"], *flags, "--save_dir", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
    try:
        stdout, stderr = process.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        # SIGTERM, not SIGKILL: torchrun then stops its workers (each runs in a session of its own).
        process.terminate()
        try:
            process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
        pytest.fail("the 2-process run without --seed hung (mismatched collectives?)")
    result = subprocess.CompletedProcess(command, process.returncode, stdout, stderr)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert "no --seed given" in result.stderr
    assert isinstance(json.loads((out / "run.json").read_text())["args"]["seed"], int)
    digests = dict(re.findall(r"rank (\d): mask digest (\w+); encoder_k's mask equals", result.stdout))
    assert sorted(digests) == ["0", "1"], result.stdout
    ticket, meta = pruning_utils.read_masks(str(out / "ticket_02.pt"))
    assert meta["remaining"] == pytest.approx(64, abs=1e-3)
    assert digests["0"] == digests["1"] == main_moco_imp.mask_digest(ticket)


def test_spawned_workers_keep_trust_checkpoint(files, tmp_path, monkeypatch, capfd):
    """--multiprocessing-distributed starts fresh interpreters (torch.multiprocessing.spawn), where the
    parent's --trust_checkpoint would be lost: a released file holding a non-tensor Python object is
    refused on one line without the flag and loaded in every worker with it (2 CPU ranks, gloo)."""
    import datetime
    import socket

    from lth import cli

    untrusted = tmp_path / "moco_v2_with_a_date.pth.tar"
    saved = torch.load(files["v2"], weights_only=False)
    saved["released"] = datetime.date(2020, 3, 9)  # outside weights_only's allow-list
    torch.save(saved, untrusted)
    monkeypatch.setattr(main_moco_imp, "launch_plan", lambda args: main_moco_imp.Launch(2, 2, 2))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    flags = [arg for arg in TINY]
    flags[flags.index("--epochs") + 1] = "1"

    def launch(save_dir, *extra):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        cli.run_main(main_moco_imp.main, main_moco_imp.get_args_parser(),
                     [files["data"], "--pretrained_path", str(untrusted), *flags, "--multiprocessing-distributed",
                      "--dist-url", f"tcp://127.0.0.1:{port}", "--save_dir", str(save_dir), *extra])

    capfd.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        launch(tmp_path / "refused")
    assert exit_info.value.code == 2
    errors = [line for line in capfd.readouterr().err.splitlines() if line.startswith("error: ")]
    assert errors and all("--trust_checkpoint" in line and "datetime" in line for line in errors), errors
    launch(tmp_path / "trusted", "--trust_checkpoint")
    masks, meta = pruning_utils.read_masks(str(tmp_path / "trusted" / "ticket_01.pt"))
    assert meta["remaining"] == pytest.approx(80, abs=0.01)
