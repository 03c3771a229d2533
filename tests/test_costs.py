"""Early-bird stopping, learning-rate rewinding and the cost columns of the IMP driver (issue 17).

The early-bird rule and LRR are checked against the authors' rules written out here; the cost
columns of a killed and resumed run against those of an uninterrupted one. A tiny conv net on tiny
random data keeps every run under a second.
"""

import argparse
import bisect
import json

import pytest
import torch
import torch.nn as nn
from torch.utils.data import Dataset

from lth import pruning as pruning_utils
from lth import earlybird, imp as imp_module, trainer
from lth.checkpoint import load_file
from lth.classification import step as classification_step
from lth.distributed import Context
from lth.earlybird import EarlyBird, EarlyBirdConfig, config_of
from lth.engine import Precision
from lth.errors import UserError
from lth.imp import ImpConfig, ImpRun, PruneStrategy
from lth.loaders import DeviceLoader, Loaders
from lth.runs import RunDir
from lth.session import Session
from lth.tickets import read_masks
from lth.task import Task
from lth.trainer import TrainConfig

CPU = Context(device=torch.device("cpu"))


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    """Tiny runs: a second thread only waits (and the machine is shared)."""


# --------------------------------------------------------------------------------------------
# The authors' rules, written out
# --------------------------------------------------------------------------------------------

def authors_early_bird(masks, window=5, threshold=0.1):
    """GATECH-EIC/Early-Bird-Tickets main.py, EarlyBird.early_bird_emerge called once per draw: a
    FIFO of ``window`` (epoch_keep) masks; once full, dists[i] = 1 - sum(new == old_i) / len for the
    ``window - 1`` older masks; emerged unless some dist > threshold. Returns the first draw index
    at which it emerged, or None."""
    queue = []
    for index, mask in enumerate(masks):
        if len(queue) < window:
            queue.append(mask)
        else:
            queue.pop(0)
            queue.append(mask)
        if len(queue) == window:
            dists = [1 - float(torch.sum(queue[-1] == queue[i])) / queue[i].size(0) for i in range(window - 1)]
            if not any(d > threshold for d in dists):
                return index
    return None


def magnitude_keep_mask(weights, rate):
    """Global magnitude pruning of ``rate`` of the weights (distinct magnitudes): keep all but the
    round(rate * n) smallest |w|."""
    flat = weights.abs().flatten()
    pruned = flat.argsort()[:round(rate * flat.numel())]
    keep = torch.ones_like(flat, dtype=torch.bool)
    keep[pruned] = False
    return keep


def multistep_lr(lr, epoch, warmup_epochs, milestones, steps_per_epoch):
    """The learning rate at the first step of ``epoch``: linear warm-up per step over the first
    ``warmup_epochs`` epochs ((step + 1) / warm-up steps), then x0.1 at each milestone epoch."""
    step = epoch * steps_per_epoch
    if step < warmup_epochs * steps_per_epoch:
        return lr * (step + 1) / (warmup_epochs * steps_per_epoch)
    return lr * 0.1 ** bisect.bisect_right(milestones, epoch)


# --------------------------------------------------------------------------------------------
# A tiny task
# --------------------------------------------------------------------------------------------

class Squares(Dataset):
    """1x8x8 noise images; the class is which third of the image is brightest."""

    def __init__(self, count, seed):
        generator = torch.Generator().manual_seed(seed)
        self.images = torch.rand(count, 1, 8, 8, generator=generator)
        self.labels = torch.stack([self.images[:, 0, :, i * 3:(i + 1) * 3].mean((1, 2)) for i in range(3)]).argmax(0)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        return self.images[index], self.labels[index]


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1, bias=False)  # the stem: never pruned
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.conv3 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(torch.relu(self.conv3(x)).mean((2, 3)))


TRAIN, BATCH = 48, 16  # 3 full batches per epoch (the train loader drops a partial last batch)


class TinyTask(Task):
    """The tiny net on the squares, classification step and accuracy; IMP of conv2 and conv3 (conv1 stays dense)."""

    def make_loaders(self) -> Loaders:
        ctx = self.session.ctx
        return Loaders(train=DeviceLoader(Squares(TRAIN, 1), BATCH, train=True, seed=0, ctx=ctx, workers=0),
                       val=DeviceLoader(Squares(24, 2), 12, train=False, seed=0, ctx=ctx, workers=0), num_classes=3)

    def make_model(self) -> nn.Module:
        torch.manual_seed(0)
        return TinyNet()

    def train_config(self) -> TrainConfig:
        h = self.hparams
        return TrainConfig(epochs=h.epochs, lr=h.lr, momentum=0.9, weight_decay=1e-4, warmup=h.warmup,
                           milestones=list(h.milestones), print_freq=0, total_itrs=h.total_itrs,
                           val_interval=1 if h.total_itrs else None)

    def make_strategy(self) -> PruneStrategy:
        return PruneStrategy(self.hparams.rate, prune_type=self.hparams.prune_type)

    def step(self, model, batch):
        return classification_step(model, batch)

    @torch.inference_mode()
    def evaluate(self, model, loader, desc):
        model.eval()
        correct = count = 0
        for images, labels in loader:
            correct += int((model(images).argmax(1) == labels).sum())
            count += len(labels)
        model.train()
        return {"acc": 100.0 * correct / count}

    def imp_config(self) -> ImpConfig:
        return ImpConfig(rounds=self.hparams.rounds, seed=0, meta={"arch": "tiny", "dataset": "squares"})

    def load_round(self, model, round_index):
        return round_index > 0  # a later round in the same process: the model holds its masks already


def run_imp(path, resume=False, rounds=2, epochs=3, lr=0.05, prune_type="lt", early_bird=None, rate=0.5,
            warmup=0, milestones=(2,), total_itrs=None):
    eb = early_bird or EarlyBirdConfig()  # given to ImpRun as the scripts' flags (lth.hparams.EarlyBird)
    hparams = argparse.Namespace(seed=0, resume=resume, rounds=rounds, epochs=epochs, lr=lr, prune_type=prune_type,
                                 rate=rate, warmup=warmup, milestones=milestones, total_itrs=total_itrs,
                                 early_bird=eb.every_round, early_bird_sparsity=eb.sparsity,
                                 eb_threshold=eb.threshold, eb_window=eb.window)
    session = Session(run=RunDir(str(path)), ctx=CPU, precision=Precision.choose("fp32", CPU.device),
                      resume_file=None, seed=0)
    task = TinyTask(hparams)
    task.build(session)
    session.record(hparams)
    driver = ImpRun(task, hparams, session)
    driver.resume() if resume else driver.start()
    return driver


def rows(path, name):
    return [json.loads(line) for line in (path / name).read_text().splitlines()]


def measured(row):
    """A log row without the figures that are measured (wall time)."""
    return {key: value for key, value in row.items()
            if "seconds" not in key and key not in ("train_images_per_s",)}


class Interrupted(Exception):
    pass


def kill_at_call(monkeypatch, n):
    """Make the n-th call of train_one_epoch (1-based) die, as a kill would."""
    real, calls = trainer.train_one_epoch, {"n": 0}

    def dies(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n:
            raise Interrupted()
        return real(*args, **kwargs)
    monkeypatch.setattr(trainer, "train_one_epoch", dies)
    return real


# --------------------------------------------------------------------------------------------
# Early-bird: the rule
# --------------------------------------------------------------------------------------------

def draws_of(weight_sequence, rate):
    """Our masks of a one-conv-to-prune network whose prunable weights take the hand-made values in turn."""
    net = nn.Sequential(nn.Conv2d(1, 1, 1, bias=False), nn.Conv2d(1, 2, (1, 5), bias=False))  # stem, then 10 weights
    masks = []
    for values in weight_sequence:
        with torch.no_grad():
            net[1].weight.copy_(torch.tensor(values, dtype=torch.float32).view(2, 1, 1, 5))
        masks.append(earlybird.draw_mask(net, rate))
    return masks


# Ten weights, 30 % pruned: the three smallest magnitudes go. The first draws move the three
# smallest around (distance 0.6 between disjoint choices), then they settle on positions 7-9.
SETTLING = [
    [0.01, 0.02, 0.03, 1, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6],
    [1, 1.1, 1.2, 0.01, 0.02, 0.03, 1.3, 1.4, 1.5, 1.6],
    [1, 1.1, 1.2, 1.3, 1.4, 1.5, 0.01, 0.02, 0.03, 1.6],
    [1, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 0.01, 0.02, 0.03],
    [1.1, 1, 1.2, 1.3, 1.4, 1.5, 1.6, 0.03, 0.02, 0.01],
    [1, 1.1, 1.3, 1.2, 1.4, 1.6, 1.5, 0.02, 0.01, 0.03],
    [1.2, 1.1, 1, 1.3, 1.4, 1.5, 1.6, 0.01, 0.03, 0.02],
    [1, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 0.01, 0.02, 0.03],
    [1, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 0.01, 0.02, 0.03],
]


def test_masks_are_the_global_magnitude_masks_of_the_hand_made_weights():
    for values, mask in zip(SETTLING, draws_of(SETTLING, 0.3)):
        assert torch.equal(mask, magnitude_keep_mask(torch.tensor(values), 0.3))


@pytest.mark.parametrize("window,threshold", [(5, 0.1), (3, 0.1), (4, 0.0), (5, 0.6), (2, 0.2)])
def test_early_bird_stops_where_the_authors_rule_does(window, threshold):
    masks = draws_of(SETTLING, 0.3)
    expected = authors_early_bird(masks, window, threshold)
    bird = EarlyBird(threshold, window)
    emerged = [bird.observe(mask, position) for position, mask in enumerate(masks)]
    first = emerged.index(True) if True in emerged else None
    assert first == expected
    assert first is None or first >= window - 1  # never before the window is full


def test_the_hand_made_sequence_settles_where_designed():
    # Draws 3.. keep positions 7-9 pruned; with a window of 5 the queue holds only settled masks at draw 7.
    assert authors_early_bird(draws_of(SETTLING, 0.3), 5, 0.1) == 7
    bird = EarlyBird(0.1, 5)
    assert [bird.observe(mask, p) for p, mask in enumerate(draws_of(SETTLING, 0.3))].index(True) == 7
    assert [d for _, d in bird.draws[:4]] == [None] * 4 and bird.draws[4][1] == pytest.approx(0.6)


def test_a_mask_that_never_changes_emerges_exactly_when_the_window_fills():
    still = [SETTLING[-1]] * 8
    for window in (2, 3, 5, 7):
        bird = EarlyBird(0.1, window)
        assert [bird.observe(mask, p) for p, mask in enumerate(draws_of(still, 0.3))].index(True) == window - 1


def test_a_distance_equal_to_the_threshold_counts_as_settled():
    a = torch.tensor([True] * 9 + [False])
    b = torch.tensor([True] * 8 + [False, True])  # differs in 2 of 10: 0.2
    assert earlybird.mask_distance(a, b) == pytest.approx(0.2)
    bird = EarlyBird(0.2, 2)
    assert not bird.observe(a, 0) and bird.observe(b, 1)
    assert authors_early_bird([a, b], 2, 0.2) == 1


def test_the_search_state_survives_a_checkpoint():
    bird = EarlyBird(0.1, 5)
    for p, mask in enumerate(draws_of(SETTLING[:6], 0.3)):
        bird.observe(mask, p)
    copy = EarlyBird.from_state_dict(bird.state_dict())
    assert [m.tolist() for m in copy.masks] == [m.tolist() for m in bird.masks] and copy.draws == bird.draws
    for p, mask in enumerate(draws_of(SETTLING[6:], 0.3), start=6):
        assert copy.observe(mask, p) == bird.observe(mask, p)


def test_rate_to_reaches_the_asked_sparsity_and_refuses_what_cannot_be():
    assert earlybird.rate_to(0.9, 100.0) == pytest.approx(0.9)
    assert earlybird.rate_to(0.96, 20.0) == pytest.approx(0.8)
    with pytest.raises(UserError, match="only"):
        earlybird.rate_to(0.5, 40.0)
    for bad in (dict(threshold=1.0), dict(window=1), dict(sparsity=1.0)):
        with pytest.raises(UserError):
            EarlyBirdConfig(**bad)


# --------------------------------------------------------------------------------------------
# Early-bird in the IMP driver
# --------------------------------------------------------------------------------------------

def scripted_draws(monkeypatch, masks):
    """The driver's draws return the given masks in turn (a hand-made search)."""
    calls = iter(masks)
    monkeypatch.setattr(imp_module, "draw_mask", lambda network, rate, conv1=False: next(calls))


def test_a_round_stops_at_the_draw_where_the_rule_says_and_costs_only_what_it_trained(tmp_path, monkeypatch):
    masks = draws_of(SETTLING, 0.3)  # emerges at draw 7: after 7 trained epochs (draw 0 is the start)
    scripted_draws(monkeypatch, masks)
    run_imp(tmp_path, rounds=1, epochs=9, early_bird=EarlyBirdConfig(0.1, 5, every_round=True))
    (row,) = rows(tmp_path, "summary.jsonl")
    assert row["trained_epochs"] == 7 and row["cost_epochs"] == 7 and row["early_stopped"] is True
    assert row["early_bird"]["emerged_at"] == 7 and [d[0] for d in row["early_bird"]["draws"]] == list(range(8))
    assert len(rows(tmp_path, "metrics.jsonl")) == 7
    assert row["cost_images"] == 7 * TRAIN


def test_training_that_ends_before_the_window_fills_is_never_stopped(tmp_path, monkeypatch):
    still = draws_of([SETTLING[-1]] * 9, 0.3)
    scripted_draws(monkeypatch, still)
    run_imp(tmp_path, rounds=1, epochs=3, early_bird=EarlyBirdConfig(0.1, 5, every_round=True))
    (row,) = rows(tmp_path, "summary.jsonl")
    assert row["trained_epochs"] == 3 and "early_stopped" not in row and row["early_bird"]["emerged_at"] is None


def test_constant_weights_stop_the_round_when_the_window_is_full(tmp_path):
    # lr 0: no conv weight moves, every mask is the same, so the ticket emerges at the 5th draw (4 epochs).
    run_imp(tmp_path, rounds=2, epochs=6, lr=1e-30, early_bird=EarlyBirdConfig(0.1, 5, every_round=True))
    first, second = rows(tmp_path, "summary.jsonl")
    assert first["trained_epochs"] == 4 and second["trained_epochs"] == 4
    assert first["early_bird"]["emerged_at"] == 4 and first["early_bird"]["draws"][-1] == [4, 0.0]
    assert second["cost_epochs"] == 8


def test_a_stage_counted_in_iterations_draws_at_each_evaluation(tmp_path):
    # Evaluated every iteration: draws after 0, 1, 2, 3 and 4 iterations fill the window.
    run_imp(tmp_path, rounds=1, lr=1e-30, total_itrs=7, early_bird=EarlyBirdConfig(0.1, 5, every_round=True))
    (row,) = rows(tmp_path, "summary.jsonl")
    assert row["trained_itrs"] == 4 and row["cost_itrs"] == 4 and row["early_stopped"] is True
    assert row["early_bird"]["unit"] == "itrs" and [d[0] for d in row["early_bird"]["draws"]] == [0, 1, 2, 3, 4]
    assert row["cost_images"] == 4 * BATCH


def test_one_shot_search_prunes_straight_to_the_sparsity_and_trains_the_ticket_fully(tmp_path):
    run_imp(tmp_path, rounds=3, epochs=6, lr=1e-30, rate=0.5,
            early_bird=EarlyBirdConfig(0.1, 5, sparsity=0.9))
    search, ticket, later = rows(tmp_path, "summary.jsonl")
    assert search["trained_epochs"] == 4 and search["early_stopped"] is True
    assert ticket["trained_epochs"] == 6 and "early_bird" not in ticket and later["trained_epochs"] == 6
    assert ticket["remaining"] == pytest.approx(10.0, abs=0.1)  # 90 % pruned in one step
    assert later["remaining"] == pytest.approx(5.0, abs=0.1)  # then --rate as usual
    assert [r["cost_epochs"] for r in (search, ticket, later)] == [4, 10, 16]


def test_an_early_bird_search_killed_mid_round_resumes_to_the_same_stop(tmp_path, monkeypatch):
    masks = draws_of(SETTLING, 0.3) + draws_of(SETTLING, 0.3)
    scripted_draws(monkeypatch, list(masks))
    eb = EarlyBirdConfig(0.1, 5, every_round=True)
    run_imp(tmp_path / "whole", rounds=1, epochs=9, early_bird=eb)
    # The cut run: draws 0..5 (5 epochs), killed in epoch 6; the resumed search continues at draw 6.
    scripted_draws(monkeypatch, list(masks))
    real = kill_at_call(monkeypatch, 6)
    with pytest.raises(Interrupted):
        run_imp(tmp_path / "cut", rounds=1, epochs=9, early_bird=eb)
    monkeypatch.setattr(trainer, "train_one_epoch", real)
    scripted_draws(monkeypatch, list(masks[6:]))
    run_imp(tmp_path / "cut", resume=True, rounds=1, epochs=9, early_bird=eb)
    assert [measured(r) for r in rows(tmp_path / "cut", "summary.jsonl")] == \
        [measured(r) for r in rows(tmp_path / "whole", "summary.jsonl")]


def test_early_bird_flags_build_the_config_and_refuse_random_pruning():
    import main_imp_downstream
    parser = main_imp_downstream.get_args_parser()
    args = parser.parse_args(["--save_dir", "x", "--early_bird_sparsity", "0.9", "--eb_window", "4"])
    assert config_of(args) == EarlyBirdConfig(0.1, 4, sparsity=0.9, every_round=False)
    assert config_of(parser.parse_args(["--save_dir", "x"])) is None
    with pytest.raises(UserError, match="random_prune"):
        config_of(parser.parse_args(["--save_dir", "x", "--early_bird", "--random_prune"]))
    with pytest.raises(UserError, match="window"):
        config_of(parser.parse_args(["--save_dir", "x", "--early_bird", "--eb_window", "1"]))
    with pytest.raises(UserError, match="window"):  # refused among the script's checks, before any file is written
        main_imp_downstream.check_args(parser.parse_args(["--save_dir", "x", "--early_bird", "--eb_window", "1"]))


# --------------------------------------------------------------------------------------------
# Learning-rate rewinding
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def lrr_run(module_tmp):
    """An LRR run of two rounds, with the model's state where each round's training starts."""
    path, starts = module_tmp("lrr"), {}
    real = imp_module.train_stage

    def record_start(model, *args, stage, **kwargs):
        starts[stage] = {key: value.clone() for key, value in model.state_dict().items()}
        return real(model, *args, stage=stage, **kwargs)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(imp_module, "train_stage", record_start)
        run_imp(path, rounds=2, epochs=4, prune_type="lrr", warmup=1, milestones=(2, 3))
    return path, starts


def test_lrr_keeps_the_trained_weights_and_prunes_them_by_magnitude(lrr_run):
    path, starts = lrr_run
    trained = load_file(str(path / "0checkpoint.pth.tar"))["state_dict"]  # round 0 after its last epoch
    start = starts[1]  # round 1 before its first step
    prunable = ("conv2", "conv3")
    # Renda et al.: the weights after pruning are the trained ones (no rewind), the mask is global
    # magnitude pruning of half of them (rate 0.5) across conv2 and conv3 (the stem conv1 stays dense).
    weights = torch.cat([trained[f"{name}.weight"].flatten() for name in prunable])
    keep = magnitude_keep_mask(weights, 0.5)
    assert torch.equal(torch.cat([start[f"{name}.weight_mask"].flatten() for name in prunable]), keep.float())
    for name in prunable:
        assert torch.equal(start[f"{name}.weight_orig"], trained[f"{name}.weight"])
    for key, value in trained.items():
        if not key.startswith(prunable):
            assert torch.equal(start[key], value), key
    assert not (path / "rewind_point.pth.tar").exists()


def test_lrr_replays_the_learning_rate_schedule_from_its_start(lrr_run):
    logged = {}
    for row in rows(lrr_run[0], "metrics.jsonl"):
        logged.setdefault(row["round"], []).append(row["lr"])
    expected = [multistep_lr(0.05, epoch, 1, [2, 3], steps_per_epoch=3) for epoch in range(4)]
    assert logged[0] == pytest.approx(expected) and logged[1] == pytest.approx(expected)


def test_lrr_and_early_bird_are_flags_of_every_imp_script():
    import importlib
    from Segmentation import run as segmentation
    scripts = {"main_imp_downstream": ["--save_dir", "x"], "main_imp_imagenet": ["data", "--save_dir", "x"],
               "main_imp_visda": ["data"], "SimCLR.main": ["exp"], "MoCo.main_moco_imp": ["data", "--save_dir", "x"],
               "Detection.train_imp": []}
    parsers = {name: importlib.import_module(name).get_args_parser() for name in scripts}
    for source in segmentation.SOURCES:
        name = f"Segmentation/main_imp_{source}"
        parsers[name], scripts[name] = segmentation.get_args_parser("imp", segmentation.SOURCES[source]), ["exp"]
    for name, parser in parsers.items():
        args = parser.parse_args([*scripts[name], "--prune_type", "lrr", "--early_bird_sparsity", "0.5",
                                  "--eb_threshold", "0.2"])
        assert args.prune_type == "lrr", name
        assert config_of(args) == EarlyBirdConfig(0.2, 5, sparsity=0.5), name


# --------------------------------------------------------------------------------------------
# Cost columns
# --------------------------------------------------------------------------------------------

def test_cost_columns_add_up_over_rounds(lrr_run):
    summary, metrics = rows(lrr_run[0], "summary.jsonl"), rows(lrr_run[0], "metrics.jsonl")
    assert [r["cost_epochs"] for r in summary] == [4, 8] and [r["trained_epochs"] for r in summary] == [4, 4]
    assert [r["round_images"] for r in summary] == [4 * TRAIN] * 2 and summary[1]["cost_images"] == 8 * TRAIN
    for row in summary:
        seconds = sum(m["seconds"] for m in metrics if m["round"] <= row["round"])
        assert row["cost_seconds"] == pytest.approx(seconds, abs=1e-3 * len(metrics))
    assert summary[1]["cost_seconds"] == pytest.approx(summary[0]["round_seconds"] + summary[1]["round_seconds"],
                                                       abs=2e-3)


@pytest.mark.parametrize("kill_at", [2, 5])  # mid-round 0; mid-round 1 (after the prune's round-start checkpoint)
def test_cost_columns_of_a_resumed_run_equal_an_uninterrupted_one(tmp_path, monkeypatch, kill_at):
    run_imp(tmp_path / "whole", rounds=2, epochs=3)
    real = kill_at_call(monkeypatch, kill_at)
    with pytest.raises(Interrupted):
        run_imp(tmp_path / "cut", rounds=2, epochs=3)
    monkeypatch.setattr(trainer, "train_one_epoch", real)
    run_imp(tmp_path / "cut", resume=True, rounds=2, epochs=3)
    whole, cut = rows(tmp_path / "whole", "summary.jsonl"), rows(tmp_path / "cut", "summary.jsonl")
    assert [measured(r) for r in cut] == [measured(r) for r in whole]
    assert [r["cost_epochs"] for r in cut] == [3, 6] and [r["cost_images"] for r in cut] == [3 * TRAIN, 6 * TRAIN]
    metrics = rows(tmp_path / "cut", "metrics.jsonl")  # the resumed run's lines: each epoch once
    assert cut[-1]["cost_seconds"] == pytest.approx(sum(m["seconds"] for m in metrics), abs=1e-3 * len(metrics))


def test_a_round_started_by_a_later_process_continues_the_cost_of_the_earlier_rounds(tmp_path):
    driver = run_imp(tmp_path, rounds=1, epochs=2)  # round 0 in one process (detection's --imp_num 0)
    first = rows(tmp_path, "summary.jsonl")[0]
    driver.cfg.rounds = 2
    driver.start(first_round=1)  # round 1 in the same folder, as --imp_num 1 does
    second = rows(tmp_path, "summary.jsonl")[1]
    assert second["cost_epochs"] == 4 and second["cost_images"] == first["cost_images"] + second["round_images"]


# --------------------------------------------------------------------------------------------
# The report's cost section
# --------------------------------------------------------------------------------------------

EPOCH_IMAGES = 1000


def write_run(folder, args, rows_):
    folder.mkdir(parents=True)
    (folder / "run.json").write_text(json.dumps({"argv": ["main_imp_downstream.py"], "args": {
        "dataset": "digits", "arch": "resnet18_w16", "epochs": 8, "rate": 0.8, "prune_type": "lt", "random_prune": False,
        "early_bird": False, "early_bird_sparsity": None, **args}}))
    lines = []
    spent = 0
    for round_index, remaining, metric, epochs, extra in rows_:
        spent += epochs
        lines.append(json.dumps({"round": round_index, "remaining": remaining, "reported": metric, "final": metric,
                                 "primary_metric": "acc", "higher_is_better": True, "trained_epochs": epochs,
                                 "cost_epochs": spent, "cost_images": spent * EPOCH_IMAGES, "cost_seconds": spent * 2.0,
                                 "round_images": epochs * EPOCH_IMAGES, "round_seconds": epochs * 2.0, **extra}))
    (folder / "summary.jsonl").write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def cost_report_out(module_tmp):
    import main_report
    runs = module_tmp("cost_runs")
    for seed, shift in ((0, -0.5), (1, 0.5)):  # dense 89.5 and 90.5: mean 90, std 0.707
        write_run(runs / f"imp_s{seed}", {"seed": seed, "pruning_times": 3},
                  [(0, 100.0, 90 + shift, 8, {}), (1, 20.0, 90.5 + shift, 8, {}), (2, 4.0, 85 + shift, 8, {})])
        write_run(runs / f"random_s{seed}", {"seed": seed, "pruning_times": 3, "random_prune": True},
                  [(0, 100.0, 90 + shift, 8, {}), (1, 20.0, 80 + shift, 8, {}), (2, 4.0, 70 + shift, 8, {})])
        for sparsity, stop, remaining, metric in ((0.8, 4, 20.0, 90.0), (0.96, 5, 4.0, 89.5)):
            write_run(runs / f"eb{sparsity}_s{seed}", {"seed": seed, "pruning_times": 2, "early_bird_sparsity": sparsity},
                      [(0, 100.0, 60 + shift, stop, {"early_stopped": True}), (1, remaining, metric + shift, 8, {})])
    out = module_tmp("cost_report") / "report"
    main_report.main(main_report.get_args_parser().parse_args([str(runs), "--out", str(out)]))
    return out


def cost_rows(out):
    import csv
    with open(out / "cost.csv") as handle:
        return {(row["method"], float(row["remaining"])): row for row in csv.DictReader(handle)}


def test_cost_table_pools_seeds_and_takes_what_each_ticket_needed(cost_report_out):
    table = cost_rows(cost_report_out)
    assert set(table) == {("IMP (lt)", 20.0), ("IMP (lt)", 4.0), ("random pruning (lt)", 20.0),
                          ("random pruning (lt)", 4.0), ("early-bird one-shot, IMP (lt)", 20.0),
                          ("early-bird one-shot, IMP (lt)", 4.0)}  # the stopped dense searches are no points
    imp, eb, random = (table[(m, 4.0)] for m in ("IMP (lt)", "early-bird one-shot, IMP (lt)", "random pruning (lt)"))
    assert float(imp["epochs_mean"]) == 24 and float(imp["images_mean"]) == 24 * EPOCH_IMAGES  # cumulative
    assert float(eb["epochs_mean"]) == 13 and float(eb["fraction_of_reference_images"]) == pytest.approx(13 / 24, abs=1e-4)
    assert float(random["epochs_mean"]) == 8  # random masks: one training at that sparsity
    assert float(eb["metric_mean"]) == pytest.approx(89.5) and float(eb["metric_std"]) == pytest.approx(0.5 ** 0.5)
    assert eb["seeds"] == "0 1" and imp["n"] == "2"


def test_cost_verdicts_use_the_paper_criteria_against_the_imp_dense_model(cost_report_out):
    table = cost_rows(cost_report_out)
    dense_mean, dense_std = 90.0, 0.5 ** 0.5
    for (method, level), row in table.items():
        mean = float(row["metric_mean"])
        assert float(row["dense_mean"]) == pytest.approx(dense_mean)  # early-bird has none: IMP's dense model
        assert row["matches_within_std"] == str(mean >= dense_mean - float(row["dense_std"])).lower()
        assert row["matches_at_least"] == str(mean >= dense_mean).lower(), (method, level)
    assert float(table[("IMP (lt)", 20.0)]["dense_std"]) == pytest.approx(dense_std)


def test_the_report_names_the_cheapest_matching_ticket_per_criterion(cost_report_out):
    text = (cost_report_out / "report.md").read_text()
    assert "## Cost: the metric against training cost" in text and (cost_report_out / "metric_vs_cost.png").is_file()
    # within 1 std: early-bird at 20 % (12 epochs); at least the dense mean: early-bird at 20 % too (90.0 >= 90.0);
    # one-sided Welch: early-bird at 20 % is not worse than dense either
    for rule in ("within one dense std (paper)", "at least the dense mean (paper)", "not significantly worse"):
        assert f"Cheapest ticket {rule}" in text
    assert text.count("**early-bird one-shot, IMP (lt)** at 20 % remaining: 12.0 epochs") == 3
    assert "75% of the reference's cost there" in text
    assert "unfinished" not in text  # the stopped search round is a round, not a gap


def test_the_levels_report_keeps_the_early_stopped_search_out_of_the_dense_levels(cost_report_out):
    import csv
    with open(cost_report_out / "levels.csv") as handle:
        searched = [row for row in csv.DictReader(handle) if "early_bird_sparsity=0." in row["group"]]
    assert sorted(float(row["remaining"]) for row in searched) == [4.0, 20.0]  # no 100 % level of a stopped search


def test_detection_lrr_one_process_per_round_starts_round_one_where_one_process_does(tmp_path):
    """Detection's --imp_num k (one process per round) with --prune_type lrr: round 1 starts from the
    trained weights of round 0 (pruned convs included), exactly as when both rounds run in one process."""
    from Detection import train_imp
    from test_detection_scripts import TINY
    from lth.models import build_model

    torch.manual_seed(3)
    weights = str(tmp_path / "resnet18.pth")
    torch.save(build_model("resnet18_w16", 10, stem="imagenet").state_dict(), weights)

    def round_one_start(*argv):
        starts = {}
        real = imp_module.train_stage

        def record(model, *args, stage, **kwargs):
            starts.setdefault(stage, {k: v.detach().clone() for k, v in model.state_dict().items()})
            return real(model, *args, stage=stage, **kwargs)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(imp_module, "train_stage", record)
            train_imp.main(train_imp.get_args_parser().parse_args([*TINY, "--epochs", "1", "--pretrained", weights,
                                                                   "--prune_type", "lrr", *argv]))
        return starts

    whole = round_one_start("--imp_num", "0", "--rounds", "2", "--save_dir", str(tmp_path / "whole"))
    round_one_start("--imp_num", "0", "--save_dir", str(tmp_path / "apart"))
    apart = round_one_start("--imp_num", "1", "--save_dir", str(tmp_path / "apart"))
    assert set(apart[1]) == set(whole[1])
    for key, value in whole[1].items():
        assert torch.equal(apart[1][key], value), key
    pretrained = torch.load(weights)
    pruned = [key for key in whole[1] if key.startswith("backbone.") and key.endswith(".weight_orig")]
    assert pruned and all(not torch.equal(whole[1][key], pretrained[key[len("backbone."):-len("_orig")]])
                          for key in pruned)  # trained, not rewound to the pre-trained weights
    summaries = [rows(tmp_path / name, "summary.jsonl") for name in ("whole", "apart")]
    assert [measured(r) for r in summaries[1]] == [measured(r) for r in summaries[0]]


def test_the_cost_demo_answers_with_the_share_of_imp_cost_and_the_rules_that_match(cost_report_out):
    """demo/cost.py's table, from the cost.csv of the hand-made runs above."""
    from test_demos import load_demo
    demo = load_demo("cost")
    args = demo.get_args_parser().parse_args(["--seeds", "0,1", "--rounds", "3"])
    lines = demo.demo_answer(str(cost_report_out / "cost.csv"), args)
    table = {line.split(" | ")[0].strip("| "): line for line in lines if line.startswith("| 20 ") or line.startswith("| 4 ")}
    header = next(line for line in lines if line.startswith("| remaining"))
    columns = [c.strip() for c in header.strip("|").split("|")][1:]
    cells = {level: dict(zip(columns, [c.strip() for c in row.strip("|").split("|")][1:])) for level, row in table.items()}
    assert cells["20"]["early-bird one-shot, IMP (lt)"].startswith("cost 0.75; matches: 1 std, ≥ mean, Welch")
    assert cells["4"]["IMP (lt)"].startswith("cost 1.00; **no match**")
    assert cells["4"]["random pruning (lt)"].startswith("cost 0.33; **no match**; 70.0 ± 0.7")


def test_segmentation_lrr_round_started_by_its_own_command_continues_from_the_trained_weights(tmp_path):
    """Segmentation's --imp_num k (each round its own command) with --prune_type lrr: round 1 starts from
    round 0's trained weights under round 1's mask (Renda et al.: no rewind), not from seg_backbone_imp0.pth,
    and its cost columns continue round 0's."""
    from test_segmentation_scripts import imp as segmentation_round

    starts, ends = {}, {}
    real = imp_module.train_stage

    def record(model, *args, stage, **kwargs):
        starts[stage] = pruning_utils.dense_state_dict(model)
        progress = real(model, *args, stage=stage, **kwargs)
        ends[stage] = pruning_utils.dense_state_dict(model)
        return progress
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(imp_module, "train_stage", record)
        for round_index in (0, 1):
            segmentation_round(tmp_path, round_index, "--prune_type", "lrr")
    masks = read_masks(str(tmp_path / "ticket_01.pt"))[0]
    pruned = {f"backbone.{key[:-len('_mask')]}": mask for key, mask in masks.items()}
    assert pruned and set(pruned) <= set(starts[1])
    for key, trained in ends[0].items():
        expected = trained * pruned[key] if key in pruned else trained
        assert torch.equal(starts[1][key], expected), key
    assert any(not torch.equal(starts[1][key], starts[0][key]) for key in pruned)  # not rewound
    summary = rows(tmp_path, "summary.jsonl")
    assert [row["cost_itrs"] for row in summary] == [4, 8]
    assert summary[1]["cost_images"] == summary[0]["round_images"] + summary[1]["round_images"]


def test_an_imp_run_and_a_one_shot_search_with_as_many_rounds_are_two_methods(tmp_path):
    from lth import cost_report, report
    write_run(tmp_path / "imp", {"seed": 0, "pruning_times": 2},
              [(0, 100.0, 90.0, 8, {}), (1, 20.0, 90.0, 8, {})])
    write_run(tmp_path / "eb", {"seed": 0, "pruning_times": 2, "early_bird_sparsity": 0.8},
              [(0, 100.0, 60.0, 4, {"early_stopped": True}), (1, 20.0, 89.0, 8, {})])
    runs = [report.read_run(str(tmp_path / name)) for name in ("imp", "eb")]
    section = cost_report.analyse(runs)
    assert sorted(method.label for method in section.methods) == ["IMP (lt)", "early-bird one-shot, IMP (lt)"]


def test_segmentation_early_bird_search_stops_round_zero_and_prunes_straight_to_its_sparsity(tmp_path):
    """Segmentation IMP with --early_bird_sparsity: round 0 stops at the evaluation where its mask at the
    asked sparsity has settled (window 2, threshold 0.99: the first comparison), and its prune goes straight
    to that sparsity of the backbone's pruned convs."""
    from test_segmentation_scripts import imp as segmentation_round

    segmentation_round(tmp_path, 0, "--early_bird_sparsity", "0.5", "--eb_window", "2", "--eb_threshold", "0.99")
    first = rows(tmp_path, "summary.jsonl")[0]
    assert first["early_stopped"] is True and first["early_bird"]["unit"] == "itrs"
    assert [draw[0] for draw in first["early_bird"]["draws"]] == [0, 2] and first["early_bird"]["emerged_at"] == 2
    assert first["cost_itrs"] == 2                                # of --total_itrs 4
    masks, meta = read_masks(str(tmp_path / "ticket_01.pt"))
    kept = sum(int(mask.sum()) for mask in masks.values()) / sum(mask.numel() for mask in masks.values())
    assert kept == pytest.approx(0.5, abs=1e-3) and meta["remaining"] == pytest.approx(50, abs=0.1)
