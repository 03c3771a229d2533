"""One of each: unwrapping a wrapped model, moving a batch, splitting the digits, naming a run's files."""

import ast
import os

import numpy as np
import pytest
import torch
import torch.nn as nn
from sklearn.datasets import load_digits

from lth import runs
from lth.data import digits_split, load_splits
from lth.engine import unwrap
from lth.loaders import to_device
from test_layering import ROOT, python_files, read


def test_unwrap_sees_through_data_parallel_and_compile_in_any_nesting():
    model = nn.Linear(2, 2)
    assert unwrap(model) is model
    assert unwrap(nn.DataParallel(model)) is model
    assert unwrap(torch.compile(model)) is model  # compiled lazily: no compilation happens here
    assert unwrap(torch.compile(nn.DataParallel(model))) is model


def test_one_to_device_moves_every_tensor_of_a_detection_batch():
    batch = {"image": torch.zeros(2, 3, 4, 4), "images": [torch.zeros(2, 3, 4, 4)], "index": torch.tensor([0, 1]),
             "boxes": [torch.zeros(1, 4), torch.zeros(0, 4)], "name": "kept"}
    moved = to_device(batch, torch.device("cpu"), channels_last=True)
    assert moved["name"] == "kept" and isinstance(moved["images"], list) and len(moved["boxes"]) == 2
    assert moved["image"].is_contiguous(memory_format=torch.channels_last)


def _original_order(seed=0):
    return np.random.default_rng(seed).permutation(1797)


def test_the_one_digits_splitter_gives_each_task_the_split_it_had():
    """The three rules the tasks had before there was one splitter, written out: same digits, same order."""
    labels = load_digits().target
    order = _original_order()
    # Classification: test = the first 360 of the permutation; validation = the last 10 % of the rest.
    splits = load_splits("digits", None)
    assert splits.test_y.tolist() == labels[order[:360]].tolist()
    assert splits.train_y.tolist() + splits.val_y.tolist() == labels[order[360:]].tolist()
    assert len(splits.val_y) == (1797 - 360) // 10
    # Detection: test 360, validation the next 144, train the rest.
    from Detection.data import digit_pool

    for split, (start, end) in {"test": (0, 360), "val": (360, 504), "train": (504, 1797)}.items():
        pixels, pool_labels = digit_pool(split)
        assert pool_labels.tolist() == labels[order[start:end]].tolist(), split
        assert np.array_equal(pixels, np.round(load_digits().images[order[start:end]] * 255.0 / 16.0).astype(np.uint8))
    # Segmentation: the run seed's permutation; validation and test the first 15 % (270) each.
    from Segmentation.data import digits_segmentation

    for seed in (0, 3):
        order = _original_order(seed)
        sources = digits_segmentation(seed).sources
        blocks = {"val": order[:270], "test": order[270:540], "train": order[540:]}
        for name, block in blocks.items():
            assert set(sources[name].reshape(-1).tolist()) == set(block.tolist()), (seed, name)
        assert sources["val"].reshape(-1).tolist() == blocks["val"].tolist()


def test_digits_blocks_must_fit():
    with pytest.raises(ValueError):
        digits_split([("test", 1000), ("val", 1000)])
    assert [len(v) for v in digits_split([("a", 5), ("b", None)], count=12).values()] == [5, 7]


def test_run_file_names_are_written_once_in_lth_runs():
    names = {runs.RUN_RECORD, runs.METRICS, runs.SUMMARY, runs.ONE_OFF_SUMMARY}
    assert names == {"run.json", "metrics.jsonl", "summary.jsonl", "summary.json"}
    assert runs.ticket_name(3) == "ticket_03.pt"
    literal = []
    for path in python_files():
        if path.startswith("tests" + os.sep) or path == os.path.join("lth", "runs.py"):
            continue
        for node in ast.walk(ast.parse(read(path), path)):
            if isinstance(node, ast.Constant) and node.value in names:
                literal.append(f"{path}:{node.lineno} {node.value}")
    assert not literal, f"use the names of lth.runs instead of: {literal}"
    assert os.path.isfile(os.path.join(ROOT, "lth", "runs.py"))
