"""Tests for Detection/evaluate.py: a hand-computed AP, the devkit's rules (its voc_eval written out
here) on the comp4 files, difficult objects, the original's GIoU NMS, box decoding and DDP gathering."""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch

from Detection import evaluate as E
from Detection.data import VOC_CLASSES, DetectionRecord, letterbox, voc_records
from test_detection_data import write_voc

pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------------------------------------
# The devkit (the original's eval/voc_eval.py and ap.py), written out
# ---------------------------------------------------------------------------------------------

def reference_parse_rec(filename):
    tree = ET.parse(filename)
    objects = []
    for obj in tree.findall("object"):
        bbox = obj.find("bndbox")
        objects.append({"name": obj.find("name").text, "difficult": int(obj.find("difficult").text),
                        "bbox": [int(bbox.find(t).text) for t in ("xmin", "ymin", "xmax", "ymax")]})
    return objects


def reference_voc_ap_07(rec, prec):
    ap = 0.0
    for t in np.arange(0.0, 1.1, 0.1):
        p = 0 if np.sum(rec >= t) == 0 else np.max(prec[rec >= t])
        ap = ap + p / 11.0
    return ap


def reference_voc_eval(detpath, annopath, imagesetfile, classname, ovthresh):
    with open(imagesetfile) as f:
        imagenames = [x.strip() for x in f.readlines()]
    recs = {name: reference_parse_rec(annopath.format(name)) for name in imagenames}
    class_recs, npos = {}, 0
    for imagename in imagenames:
        R = [obj for obj in recs[imagename] if obj["name"] == classname]
        bbox = np.array([x["bbox"] for x in R])
        difficult = np.array([x["difficult"] for x in R]).astype(bool)
        npos = npos + sum(~difficult)
        class_recs[imagename] = {"bbox": bbox, "difficult": difficult, "det": [False] * len(R)}
    detfile = detpath.format(classname)
    with open(detfile) as f:
        lines = f.readlines()
    if not lines:     # the original wrote no file for a class without detections: AP 0
        return 0.0
    splitlines = [x.strip().split(" ") for x in lines]
    image_ids = [x[0] for x in splitlines]
    confidence = np.array([float(x[1]) for x in splitlines])
    BB = np.array([[float(z) for z in x[2:]] for x in splitlines])
    sorted_ind = np.argsort(-confidence)
    BB = BB[sorted_ind, :]
    image_ids = [image_ids[x] for x in sorted_ind]
    nd = len(image_ids)
    tp, fp = np.zeros(nd), np.zeros(nd)
    for d in range(nd):
        R = class_recs[image_ids[d]]
        bb = BB[d, :].astype(float)
        ovmax = -np.inf
        BBGT = R["bbox"].astype(float)
        if BBGT.size > 0:
            ixmin = np.maximum(BBGT[:, 0], bb[0])
            iymin = np.maximum(BBGT[:, 1], bb[1])
            ixmax = np.minimum(BBGT[:, 2], bb[2])
            iymax = np.minimum(BBGT[:, 3], bb[3])
            iw = np.maximum(ixmax - ixmin + 1.0, 0.0)
            ih = np.maximum(iymax - iymin + 1.0, 0.0)
            inters = iw * ih
            uni = ((bb[2] - bb[0] + 1.0) * (bb[3] - bb[1] + 1.0)
                   + (BBGT[:, 2] - BBGT[:, 0] + 1.0) * (BBGT[:, 3] - BBGT[:, 1] + 1.0) - inters)
            overlaps = inters / uni
            ovmax = np.max(overlaps)
            jmax = np.argmax(overlaps)
        if ovmax > ovthresh:
            if not R["difficult"][jmax]:
                if not R["det"][jmax]:
                    tp[d] = 1.0
                    R["det"][jmax] = 1
                else:
                    fp[d] = 1.0
        else:
            fp[d] = 1.0
    fp, tp = np.cumsum(fp), np.cumsum(tp)
    with np.errstate(divide="ignore", invalid="ignore"):
        rec = tp / float(npos)
    prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return reference_voc_ap_07(rec, prec)


def reference_nms(bboxes, score_threshold, iou_threshold):
    def giou(boxes1, boxes2):
        boxes1_area = (boxes1[..., 2] - boxes1[..., 0]) * (boxes1[..., 3] - boxes1[..., 1])
        boxes2_area = (boxes2[..., 2] - boxes2[..., 0]) * (boxes2[..., 3] - boxes2[..., 1])
        left_up = np.maximum(boxes1[..., :2], boxes2[..., :2])
        right_down = np.minimum(boxes1[..., 2:], boxes2[..., 2:])
        inter_section = np.maximum(right_down - left_up, 0.0)
        inter_area = inter_section[..., 0] * inter_section[..., 1]
        union_area = boxes1_area + boxes2_area - inter_area
        IOU = 1.0 * inter_area / union_area
        enclose_left_up = np.minimum(boxes1[..., :2], boxes2[..., :2])
        enclose_right_down = np.maximum(boxes1[..., 2:], boxes2[..., 2:])
        enclose = np.maximum(enclose_right_down - enclose_left_up, 0.0)
        enclose_area = enclose[..., 0] * enclose[..., 1]
        return IOU - 1.0 * (enclose_area - union_area) / enclose_area

    classes_in_img = list(set(bboxes[:, 5].astype(np.int32)))
    best_bboxes = []
    for cls in classes_in_img:
        cls_bboxes = bboxes[bboxes[:, 5].astype(np.int32) == cls]
        while len(cls_bboxes) > 0:
            max_ind = np.argmax(cls_bboxes[:, 4])
            best_bbox = cls_bboxes[max_ind]
            best_bboxes.append(best_bbox)
            cls_bboxes = np.concatenate([cls_bboxes[:max_ind], cls_bboxes[max_ind + 1:]])
            iou = giou(best_bbox[np.newaxis, :4], cls_bboxes[:, :4])
            weight = np.ones((len(iou),), dtype=np.float32)
            weight[iou > iou_threshold] = 0.0
            cls_bboxes[:, 4] = cls_bboxes[:, 4] * weight
            cls_bboxes = cls_bboxes[cls_bboxes[:, 4] > score_threshold]
    return np.array(best_bboxes)


# ---------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------

def _record(image_id, boxes_1based, labels, difficult):
    return DetectionRecord(image_id, np.asarray(boxes_1based, np.float32).reshape(-1, 4) - 1,
                           np.asarray(labels, np.int64), np.asarray(difficult, bool))


def test_hand_computed_ap(tmp_path):
    # One class. Image A: GT1 [1,1,20,20] and a difficult GT [41,41,60,60]; image B: GT [11,11,30,30].
    records = [_record("A", [[1, 1, 20, 20], [41, 41, 60, 60]], [0, 0], [False, True]),
               _record("B", [[11, 11, 30, 30]], [0], [False]), _record("C", [], [], [])]
    # Detections in 1-based pixels with their scores, best first:
    #   0.9 A exact GT1           -> TP at every threshold
    #   0.8 B far from its GT     -> FP
    #   0.7 A on the difficult GT -> ignored
    #   0.6 B [11,11,30,22.8]: IoU with +1 pixel = 20*12.8/400 = 0.64 -> TP up to 0.60, FP above
    #   0.5 A exact GT1 again     -> FP (already taken)
    dets_1based = {"A": [[1, 1, 20, 20, 0.9], [41, 41, 60, 60, 0.7], [1, 1, 20, 20, 0.5]],
                   "B": [[70, 70, 90, 90, 0.8], [11, 11, 30, 22.8, 0.6]]}
    detections = {k: np.asarray([[x1 - 1, y1 - 1, x2 - 1, y2 - 1, s, 0] for x1, y1, x2, y2, s in v])
                  for k, v in dets_1based.items()}
    E.write_comp4(str(tmp_path), detections, ["thing"])
    lines = (tmp_path / "comp4_det_test_thing.txt").read_text().splitlines()
    assert lines[0] == "A 0.900000 1.00 1.00 20.00 20.00" and lines[-1] == "B 0.600000 11.00 11.00 30.00 22.80"
    metrics = E.ap_from_files(str(tmp_path), E.ground_truth(records), ["thing"])
    # npos = 2. Up to IoU 0.60: tp 1,1,1,2,2 / fp 0,1,1,1,2 -> (recall, precision) (1/2, 1), (1/2, 1/2),
    # (1, 2/3), (1, 1/2): 11-point AP = (6 x 1 + 5 x 2/3) / 11 = 28/33.
    # Above 0.60: recall stays 1/2 with precision 1 at best: AP = 6/11.
    assert metrics["ap50"] == pytest.approx(28 / 33)
    assert metrics["ap75"] == pytest.approx(6 / 11)
    assert metrics["ap"] == pytest.approx((3 * 28 / 33 + 7 * 6 / 11) / 10)
    assert metrics["class_ap50"] == {"thing": pytest.approx(28 / 33)}
    # Were that object not difficult: npos = 3, tp 1,1,2,3,3 / fp 0,1,1,1,2, precision at recall
    # >= 0.4 is 3/4: AP50 = (4 x 1 + 7 x 3/4) / 11.
    records[0].difficult[:] = False
    assert E.ap_from_files(str(tmp_path), E.ground_truth(records), ["thing"])["ap50"] == pytest.approx(9.25 / 11)


def _tiny_voc(root):
    rng = np.random.default_rng(0)
    classes = ["dog", "person", "car"]
    images = {}
    for number in range(6):
        objects = []
        for _ in range(int(rng.integers(1, 4))):
            x1, y1 = (int(v) for v in rng.integers(1, 40, size=2))
            w, h = (int(v) for v in rng.integers(8, 24, size=2))
            objects.append((classes[int(rng.integers(3))], (x1, y1, x1 + w, y1 + h), bool(rng.random() < 0.25)))
        images[f"{number:06d}"] = (64, 64, objects)
    images["000099"] = (64, 64, [("car", (5, 5, 30, 30), True)])            # only object difficult
    return write_voc(root, "VOC2007", "test", images)


def _noisy_detections(records, seed):
    rng = np.random.default_rng(seed)
    detections = {}
    for record in records:
        rows = []
        for box, label in zip(record.boxes, record.labels):
            for _ in range(int(rng.integers(0, 3))):
                jitter = rng.normal(0, 2.5, size=4)
                rows.append([*np.clip(box + jitter, 0, 63), rng.random(), label])
        for _ in range(int(rng.integers(0, 3))):                           # false alarms
            x1, y1 = rng.uniform(0, 40, size=2)
            rows.append([x1, y1, x1 + rng.uniform(4, 20), y1 + rng.uniform(4, 20), rng.random(),
                         VOC_CLASSES.index(["dog", "person", "car"][int(rng.integers(3))])])
        detections[record.image_id] = np.asarray(rows, dtype=np.float64).reshape(-1, 6)
    return detections


def test_reported_ap_is_the_devkits_on_the_comp4_files(tmp_path):
    voc = _tiny_voc(str(tmp_path / "data"))
    records = voc_records(str(tmp_path / "data"), "test")
    assert records[-1].difficult.tolist() == [True]
    classes = list(VOC_CLASSES)      # AP is the mean over all 20 classes, as the original's ap.py
    evaluator = E.DetectionEvaluator(records, classes)
    detections = _noisy_detections(records, 1)
    detections["000099"] = np.array([[4, 4, 29, 29, 0.99, VOC_CLASSES.index("car")]])             # on the difficult car: ignored
    evaluator.add_boxes(range(len(records)), [detections[r.image_id] for r in records])
    result_dir = str(tmp_path / "pred_result")
    metrics = evaluator.finish(result_dir)
    detpath = os.path.join(result_dir, "comp4_det_test_{}.txt")
    annopath = os.path.join(voc, "Annotations", "{}.xml")
    imageset = os.path.join(voc, "ImageSets", "Main", "test.txt")
    table = {t: [reference_voc_eval(detpath, annopath, imageset, c, t / 100) for c in classes]
             for t in range(50, 100, 5)}
    per_threshold = {t: sum(v) / len(classes) for t, v in table.items()}
    assert metrics["ap50"] == pytest.approx(per_threshold[50], abs=1e-12)
    assert metrics["ap75"] == pytest.approx(per_threshold[75], abs=1e-12)
    assert metrics["ap"] == pytest.approx(np.mean(list(per_threshold.values())), abs=1e-12)
    assert [metrics["class_ap50"][c] for c in classes] == pytest.approx(table[50], abs=1e-12)
    assert 0.1 < 20 / 3 * metrics["ap50"] < 1.0 and metrics["ap"] < metrics["ap50"]
    # The files are rewritten by each evaluation, never appended to.
    evaluator.finish(result_dir)
    assert E.ap_from_files(result_dir, E.ground_truth(records), classes) == {
        k: v for k, v in metrics.items() if k != "detections"}


def test_nms_follows_the_original_rule():
    rng = np.random.default_rng(3)
    boxes = []
    for _ in range(120):
        x1, y1 = rng.uniform(0, 80, size=2)
        boxes.append([x1, y1, x1 + rng.uniform(5, 30), y1 + rng.uniform(5, 30), rng.uniform(0.001, 1),
                      rng.integers(3)])
    boxes = np.asarray(boxes)
    ours = E.nms(boxes.copy(), 0.005, 0.45)
    ref = reference_nms(boxes.copy(), 0.005, 0.45)
    key = lambda rows: sorted(map(tuple, np.round(rows, 9)))  # noqa: E731 - the same boxes, any order
    assert key(ours) == key(ref) and 10 < len(ours) < 120


def test_predictions_map_back_through_the_letterbox():
    height, width, size = 48, 80, 64
    box = np.array([[10.0, 5.0, 49.0, 30.0, 1.0]])
    _, moved = letterbox(np.zeros((height, width, 3), np.uint8), box, size)
    x1, y1, x2, y2 = moved[0, :4]
    decoded = np.array([[(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1, 0.8, 0.1, 0.5, 0.2],
                        [5, 5, 2, 2, 0.001, 0.9, 0.0, 0.0]])                   # below conf_thresh
    out = E.predictions_to_boxes(decoded, size, (height, width), conf_thresh=0.005)
    assert out.shape == (1, 6)
    assert np.allclose(out[0, :4], box[0, :4]) and out[0, 4] == pytest.approx(0.4) and out[0, 5] == 1


def _gather_worker(rank, world, init_file, result_dir, records, detections, queue):
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    evaluator = E.DetectionEvaluator(records, VOC_CLASSES)
    mine = range(rank, len(records), world)                                  # a sharded sampler
    evaluator.add_boxes(mine, [detections[records[i].image_id] for i in mine])
    queue.put((rank, evaluator.finish(result_dir)))
    dist.destroy_process_group()


def test_ddp_ranks_gather_detections_before_ap(tmp_path):
    _tiny_voc(str(tmp_path / "data"))
    records = voc_records(str(tmp_path / "data"), "test")
    detections = _noisy_detections(records, 2)
    single = E.DetectionEvaluator(records, VOC_CLASSES)
    single.add_boxes(range(len(records)), [detections[r.image_id] for r in records])
    expected = single.finish(str(tmp_path / "single"))
    context = torch.multiprocessing.get_context("fork")
    queue = context.SimpleQueue()
    torch.multiprocessing.start_processes(
        _gather_worker, args=(2, str(tmp_path / "init"), str(tmp_path / "ddp"), records, detections, queue),
        nprocs=2, join=True, start_method="fork")
    results = dict(queue.get() for _ in range(2))
    assert results[0] == expected and results[1] == expected
    for name in ("dog", "person", "car"):
        single_file = (tmp_path / "single" / f"comp4_det_test_{name}.txt").read_text()
        assert (tmp_path / "ddp" / f"comp4_det_test_{name}.txt").read_text() == single_file
