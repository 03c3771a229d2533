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
from Detection.loss import yolo_loss
from Detection.model import YOLOv4

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
        raw, decoded = model(batch["image"])
        loss = yolo_loss(raw, decoded, batch["labels"], batch["boxes"], model.strides)
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
        for eval_batch in loader:
            evaluator.add(eval_batch, model)
        result_dir = str(tmp_path / f"flip{flip}_{sizes}")
        metrics = evaluator.finish(result_dir)
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
