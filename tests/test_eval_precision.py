"""Evaluation runs in fp32 in every task unless --eval_precision says otherwise, whatever precision
trains (the original trained and scored in fp32; bf16 moves detection boxes enough to change AP at
high IoU); run.json and summary rows say which precision trained the model and which scored it."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn

from lth.contrastive import contrastive_evaluate
from lth.distributed import Context
from lth.engine import Precision, evaluate, train_one_epoch
from lth.runs import RunDir

CPU = Context(torch.device("cpu"))


class Probe(nn.Module):
    """A 1x1 conv whose output dtype (bf16 under autocast, fp32 without) is recorded at each call."""

    def __init__(self, classes: int = 3, pooled: bool = True):
        super().__init__()
        self.conv, self.pooled, self.seen = nn.Conv2d(3, classes, 1), pooled, []

    def forward(self, x):
        y = self.conv(x)
        self.seen.append(y.dtype)
        return y.mean((2, 3)) if self.pooled else y


def images(count=4, size=6):
    torch.manual_seed(0)
    return torch.randn(count, 3, size, size)


@pytest.mark.parametrize("eval_name, expected", [("fp32", torch.float32), ("bf16", torch.bfloat16)])
def test_training_in_bf16_evaluates_in_fp32_by_default(eval_name, expected):
    precision = Precision.choose("bf16", CPU.device, eval_name=eval_name)
    assert Precision.choose("bf16", CPU.device).eval_dtype is None  # the default: fp32
    model = Probe()
    batch = (images(), torch.tensor([0, 1, 2, 0]))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    train_one_epoch(model, [batch], optimizer, None, CPU, precision, print_freq=0)
    assert model.seen == [torch.bfloat16]
    model.seen.clear()
    evaluate(model, [batch], CPU, precision, 3)                                         # classification
    contrastive_evaluate(model, [batch], CPU, precision,
                         lambda m, b: (m(b[0]), torch.arange(4) % 3))                   # SimCLR, MoCo
    from Segmentation.task import evaluate as segmentation_evaluate

    dense = Probe(pooled=False)
    target = {"mask": torch.zeros(4, 6, 6, dtype=torch.long), "index": torch.arange(4),
              "size": torch.tensor([[6, 6]] * 4)}
    segmentation_evaluate(dense, [(images(), target)], CPU, precision, 3)               # segmentation
    assert model.seen + dense.seen == [expected] * 3


def test_detection_scores_in_fp32_by_default(tmp_path):
    from Detection import runner, task
    from Detection.data import DetectionEvalSet, eval_collate
    from Detection.model import YOLOv4

    data = task.load_detection_data("digits", canvas=32, digits_counts={"train": 2, "val": 2, "test": 2})
    from Detection import train_imp

    args = train_imp.get_args_parser().parse_args(["--arch", "resnet18", "--img_size", "32"])
    model = YOLOv4(10, "resnet18").eval()
    seen = []
    model.backbone.conv1.register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
    loader = torch.utils.data.DataLoader(DetectionEvalSet(data.test, 32), batch_size=2, collate_fn=eval_collate)
    for eval_name, expected in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        seen.clear()
        precision = Precision.choose("bf16", CPU.device, eval_name=eval_name)
        evaluation = runner.Evaluation({"test": data.test}, data.class_names, args, CPU, precision, str(tmp_path))
        evaluation(model, loader, "test")
        assert seen == [expected]


def test_run_json_and_summary_rows_record_the_precisions(tmp_path):
    run = RunDir(str(tmp_path / "run"))
    run.stamp = Precision.choose("bf16", CPU.device).describe()
    assert run.stamp == {"train_precision": "bf16", "eval_precision": "fp32"}
    run.start({"seed": 0}, False)
    run.log_round({"round": 0, "reported": 1.0})
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["train_precision"] == "bf16" and record["eval_precision"] == "fp32"
    assert run.summary()[0]["train_precision"] == "bf16"
    run.start({"seed": 0}, True)  # a resume records the precision it continues with
    run.accept_resume()  # the entry is written once the resume passed its checks
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["resumed"][0]["train_precision"] == "bf16"
    # the session resolves --precision auto (fp32 on a CPU) and stamps the run
    from lth.session import open_session
    from Detection import train_imp

    args = train_imp.get_args_parser().parse_args(["--cpu", "--seed", "0", "--save_dir", str(tmp_path / "s")])
    session = open_session(args, RunDir(str(tmp_path / "s")))
    assert session.run.stamp == {"train_precision": "fp32", "eval_precision": "fp32"}
