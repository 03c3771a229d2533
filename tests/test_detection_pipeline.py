"""The detection pieces together on the embedded digits set: a few training steps lower the loss, and an
evaluation of the model writes the comp4 files and reports the AP they give."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from Detection import evaluate as E
from Detection.config import DEFAULTS
from Detection.data import (DIGIT_CLASSES, DetectionEvalSet, DetectionTrainSet, digit_detection_records,
                            eval_collate, train_collate)
from Detection.model import YOLOv4
from Detection.task import load_backbone_weights, load_detection_data, loss_step, prune_target, run_evaluation
from lth.errors import UserError
from lth.models import build_model

pytestmark = pytest.mark.usefixtures("one_thread")
IMG = 64


def test_training_steps_lower_the_loss_and_evaluation_scores_from_files(tmp_path):
    torch.manual_seed(0)
    model = YOLOv4(num_classes=10, arch="resnet18")
    records = digit_detection_records("train", 8, seed=0)
    dataset = DetectionTrainSet(records, num_classes=10, img_size=IMG, seed=0, augment=False)
    batch = train_collate([dataset[i] for i in range(len(dataset))])
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=DEFAULTS["momentum"])
    model.train()
    losses = []
    for _ in range(6):
        loss = loss_step(model, batch)
        optimizer.zero_grad()
        loss["loss"].backward()
        optimizer.step()
        losses.append(float(loss["loss"].detach()))
    assert all(np.isfinite(losses)) and losses[-1] < 0.7 * losses[0]

    test = digit_detection_records("test", 6, seed=0)
    model.eval()
    for flip, sizes in ((False, None), (True, None), (True, (IMG, IMG + 32))):   # plain, flip, multi-scale
        dataset = DetectionEvalSet(test, img_size=IMG, sizes=sizes)
        loader = torch.utils.data.DataLoader(dataset, batch_size=4, collate_fn=eval_collate)
        evaluator = E.DetectionEvaluator(test, DIGIT_CLASSES, conf_thresh=0.005, nms_thresh=0.45, flip=flip)
        result_dir = str(tmp_path / f"flip{flip}_{sizes}")
        metrics = run_evaluation(model, loader, evaluator, result_dir, progress=False)
        assert set(metrics) >= {"ap", "ap50", "ap75", "class_ap50", "ap_by_threshold", "detections"}
        assert sorted(os.listdir(result_dir)) == sorted(f"comp4_det_test_{c}.txt" for c in DIGIT_CLASSES)
        assert metrics["detections"] > 0 and 0.0 <= metrics["ap"] <= metrics["ap50"] <= 1.0
        recomputed = E.ap_from_files(result_dir, E.ground_truth(test), DIGIT_CLASSES)
        assert recomputed == {k: v for k, v in metrics.items() if k != "detections"}
        for name in DIGIT_CLASSES:
            for line in open(os.path.join(result_dir, f"comp4_det_test_{name}.txt")):
                image_id, score, *box = line.split()
                x1, y1, x2, y2 = map(float, box)
                assert image_id.startswith("test_") and 1 <= x1 <= x2 <= IMG and 1 <= y1 <= y2 <= IMG


def test_task_helpers(tmp_path):
    data = load_detection_data("digits", seed=3, digits_counts={"train": 5, "val": 1, "test": 4})
    again = load_detection_data("digits", seed=4, digits_counts={"train": 5, "val": 1, "test": 4})
    assert len(data.train) == 5 and len(data.test) == 4 and len(data.val) == 1 and data.class_names == DIGIT_CLASSES
    assert all(np.array_equal(a.image, b.image) for a, b in zip(data.test, again.test))     # fixed test set
    with pytest.raises(UserError, match="data_root"):
        load_detection_data("voc")
    with pytest.raises(UserError, match="unknown detection data set"):
        load_detection_data("coco")
    torch.manual_seed(0)
    source = build_model("resnet18", 1000, stem="imagenet")
    state = {"module.encoder_q." + k: v for k, v in source.state_dict().items() if not k.startswith("fc.")}
    torch.save({"state_dict": state}, tmp_path / "moco.pth.tar")           # a MoCo-style file
    model = YOLOv4(num_classes=10, arch="resnet18")
    load_backbone_weights(model, str(tmp_path / "moco.pth.tar"), quiet=True)
    assert torch.equal(model.backbone.conv1.weight, source.conv1.weight)
    assert torch.equal(model.backbone.layer4[1].bn2.running_var, source.layer4[1].bn2.running_var)
    assert prune_target(model) is model.backbone
