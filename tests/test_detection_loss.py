"""Tests for Detection/loss.py and Detection/targets.py against the original's formulas, written out here
(utils/tools.py CIOU_xywh_torch, model/loss/yolo_loss.py, utils/datasets.py __creat_label)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from Detection.loss import ciou_xywh, focal_bce, layer_loss, yolo_loss
from Detection.model import STRIDES, VOC_ANCHORS
from Detection.targets import build_targets

pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------------------------------------
# The original's formulas
# ---------------------------------------------------------------------------------------------

def reference_ciou(boxes1, boxes2):
    boxes1 = torch.cat([boxes1[..., :2] - boxes1[..., 2:] * 0.5, boxes1[..., :2] + boxes1[..., 2:] * 0.5], dim=-1)
    boxes2 = torch.cat([boxes2[..., :2] - boxes2[..., 2:] * 0.5, boxes2[..., :2] + boxes2[..., 2:] * 0.5], dim=-1)
    boxes1 = torch.cat([torch.min(boxes1[..., :2], boxes1[..., 2:]), torch.max(boxes1[..., :2], boxes1[..., 2:])], dim=-1)
    boxes2 = torch.cat([torch.min(boxes2[..., :2], boxes2[..., 2:]), torch.max(boxes2[..., :2], boxes2[..., 2:])], dim=-1)
    boxes1_area = (boxes1[..., 2] - boxes1[..., 0]) * (boxes1[..., 3] - boxes1[..., 1])
    boxes2_area = (boxes2[..., 2] - boxes2[..., 0]) * (boxes2[..., 3] - boxes2[..., 1])
    inter_left_up = torch.max(boxes1[..., :2], boxes2[..., :2])
    inter_right_down = torch.min(boxes1[..., 2:], boxes2[..., 2:])
    inter_section = torch.max(inter_right_down - inter_left_up, torch.zeros_like(inter_right_down))
    inter_area = inter_section[..., 0] * inter_section[..., 1]
    union_area = boxes1_area + boxes2_area - inter_area
    ious = 1.0 * inter_area / union_area
    outer_left_up = torch.min(boxes1[..., :2], boxes2[..., :2])
    outer_right_down = torch.max(boxes1[..., 2:], boxes2[..., 2:])
    outer = torch.max(outer_right_down - outer_left_up, torch.zeros_like(inter_right_down))
    outer_diagonal_line = torch.pow(outer[..., 0], 2) + torch.pow(outer[..., 1], 2)
    boxes1_center = (boxes1[..., :2] + boxes1[..., 2:]) * 0.5
    boxes2_center = (boxes2[..., :2] + boxes2[..., 2:]) * 0.5
    center_dis = torch.pow(boxes1_center[..., 0] - boxes2_center[..., 0], 2) + \
        torch.pow(boxes1_center[..., 1] - boxes2_center[..., 1], 2)
    boxes1_size = torch.max(boxes1[..., 2:] - boxes1[..., :2], torch.zeros_like(inter_right_down))
    boxes2_size = torch.max(boxes2[..., 2:] - boxes2[..., :2], torch.zeros_like(inter_right_down))
    v = (4 / (math.pi ** 2)) * torch.pow(
        torch.atan((boxes1_size[..., 0] / torch.clamp(boxes1_size[..., 1], min=1e-6)))
        - torch.atan((boxes2_size[..., 0] / torch.clamp(boxes2_size[..., 1], min=1e-6))), 2)
    alpha = v / (1 - ious + v)
    return ious - (center_dis / outer_diagonal_line + alpha * v)


def reference_focal(input, target, gamma=2.0, alpha=1.0):
    loss = nn.BCEWithLogitsLoss(reduction="none")(input=input, target=target)
    loss *= alpha * torch.pow(torch.abs(target - torch.sigmoid(input)), gamma)
    return loss


def reference_layer_loss(p, p_d, label, bboxes, stride, iou_threshold_loss=0.5):
    BCE = nn.BCEWithLogitsLoss(reduction="none")
    batch_size, grid = p.shape[:2]
    img_size = stride * grid
    p_conf = p[..., 4:5]
    p_cls = p[..., 5:]
    p_d_xywh = p_d[..., :4]
    label_xywh = label[..., :4]
    label_obj_mask = label[..., 4:5]
    label_cls = label[..., 6:]
    label_mix = label[..., 5:6]
    ciou = reference_ciou(p_d_xywh, label_xywh).unsqueeze(-1)
    bbox_loss_scale = 2.0 - 1.0 * label_xywh[..., 2:3] * label_xywh[..., 3:4] / (img_size ** 2)
    loss_ciou = label_obj_mask * bbox_loss_scale * (1.0 - ciou) * label_mix
    iou = reference_ciou(p_d_xywh.unsqueeze(4), bboxes.unsqueeze(1).unsqueeze(1).unsqueeze(1))
    iou_max = iou.max(-1, keepdim=True)[0]
    label_noobj_mask = (1.0 - label_obj_mask) * (iou_max < iou_threshold_loss).float()
    loss_conf = (label_obj_mask * reference_focal(p_conf, label_obj_mask)
                 + label_noobj_mask * reference_focal(p_conf, label_obj_mask)) * label_mix
    loss_cls = label_obj_mask * BCE(input=p_cls, target=label_cls) * label_mix
    loss_ciou = torch.sum(loss_ciou) / batch_size
    loss_conf = torch.sum(loss_conf) / batch_size
    loss_cls = torch.sum(loss_cls) / batch_size
    return loss_ciou + loss_conf + loss_cls, loss_ciou, loss_conf, loss_cls


def reference_iou_xywh_numpy(boxes1, boxes2):
    boxes1_area = boxes1[..., 2] * boxes1[..., 3]
    boxes2_area = boxes2[..., 2] * boxes2[..., 3]
    boxes1 = np.concatenate([boxes1[..., :2] - boxes1[..., 2:] * 0.5, boxes1[..., :2] + boxes1[..., 2:] * 0.5], axis=-1)
    boxes2 = np.concatenate([boxes2[..., :2] - boxes2[..., 2:] * 0.5, boxes2[..., :2] + boxes2[..., 2:] * 0.5], axis=-1)
    left_up = np.maximum(boxes1[..., :2], boxes2[..., :2])
    right_down = np.minimum(boxes1[..., 2:], boxes2[..., 2:])
    inter_section = np.maximum(right_down - left_up, 0.0)
    inter_area = inter_section[..., 0] * inter_section[..., 1]
    return 1.0 * inter_area / (boxes1_area + boxes2_area - inter_area)


def reference_labels(bboxes, img_size, num_classes):
    """The original's Build_Dataset.__creat_label."""
    anchors = np.array(VOC_ANCHORS)
    strides = np.array(STRIDES)
    train_output_size = img_size / strides
    anchors_per_scale = 3
    label = [np.zeros((int(train_output_size[i]), int(train_output_size[i]), anchors_per_scale, 6 + num_classes))
             for i in range(3)]
    for i in range(3):
        label[i][..., 5] = 1.0
    bboxes_xywh = [np.zeros((150, 4)) for _ in range(3)]
    bbox_count = np.zeros((3,))
    for bbox in bboxes:
        bbox_coor = bbox[:4]
        bbox_class_ind = int(bbox[4])
        bbox_mix = bbox[5]
        one_hot = np.zeros(num_classes, dtype=np.float32)
        one_hot[bbox_class_ind] = 1.0
        one_hot_smooth = one_hot * (1 - 0.01) + 0.01 * 1.0 / num_classes
        bbox_xywh = np.concatenate([(bbox_coor[2:] + bbox_coor[:2]) * 0.5, bbox_coor[2:] - bbox_coor[:2]], axis=-1)
        bbox_xywh_scaled = 1.0 * bbox_xywh[np.newaxis, :] / strides[:, np.newaxis]
        iou = []
        exist_positive = False
        for i in range(3):
            anchors_xywh = np.zeros((anchors_per_scale, 4))
            anchors_xywh[:, 0:2] = np.floor(bbox_xywh_scaled[i, 0:2]).astype(np.int32) + 0.5
            anchors_xywh[:, 2:4] = anchors[i]
            iou_scale = reference_iou_xywh_numpy(bbox_xywh_scaled[i][np.newaxis, :], anchors_xywh)
            iou.append(iou_scale)
            iou_mask = iou_scale > 0.3
            if np.any(iou_mask):
                xind, yind = np.floor(bbox_xywh_scaled[i, 0:2]).astype(np.int32)
                label[i][yind, xind, iou_mask, 0:4] = bbox_xywh
                label[i][yind, xind, iou_mask, 4:5] = 1.0
                label[i][yind, xind, iou_mask, 5:6] = bbox_mix
                label[i][yind, xind, iou_mask, 6:] = one_hot_smooth
                bbox_ind = int(bbox_count[i] % 150)
                bboxes_xywh[i][bbox_ind, :4] = bbox_xywh
                bbox_count[i] += 1
                exist_positive = True
        if not exist_positive:
            best_anchor_ind = np.argmax(np.array(iou).reshape(-1), axis=-1)
            best_detect = int(best_anchor_ind / anchors_per_scale)
            best_anchor = int(best_anchor_ind % anchors_per_scale)
            xind, yind = np.floor(bbox_xywh_scaled[best_detect, 0:2]).astype(np.int32)
            label[best_detect][yind, xind, best_anchor, 0:4] = bbox_xywh
            label[best_detect][yind, xind, best_anchor, 4:5] = 1.0
            label[best_detect][yind, xind, best_anchor, 5:6] = bbox_mix
            label[best_detect][yind, xind, best_anchor, 6:] = one_hot_smooth
            bbox_ind = int(bbox_count[best_detect] % 150)
            bboxes_xywh[best_detect][bbox_ind, :4] = bbox_xywh
            bbox_count[best_detect] += 1
    return label, bboxes_xywh


# ---------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------

def random_xywh(generator, *shape, scale=40.0):
    xy = torch.rand(*shape, 2, generator=generator, dtype=torch.float64) * scale
    wh = torch.rand(*shape, 2, generator=generator, dtype=torch.float64) * scale / 2 + 1
    return torch.cat([xy, wh], dim=-1)


def test_ciou_and_its_gradient_through_alpha_match_the_original():
    g = torch.Generator().manual_seed(0)
    pred = random_xywh(g, 64).requires_grad_(True)
    target = random_xywh(g, 64)
    pred_ref = pred.detach().clone().requires_grad_(True)
    ours, ref = ciou_xywh(pred, target), reference_ciou(pred_ref, target)
    assert torch.allclose(ours, ref, rtol=0, atol=1e-12)
    ours.sum().backward()
    ref.sum().backward()
    assert torch.allclose(pred.grad, pred_ref.grad, rtol=1e-10, atol=1e-12)
    # The gradient does flow through alpha: torchvision's loss, which computes alpha without
    # gradient, has the same value but another gradient.
    detached = pred.detach().clone().requires_grad_(True)
    from torchvision.ops import complete_box_iou_loss
    xyxy = torch.cat([detached[..., :2] - detached[..., 2:] / 2, detached[..., :2] + detached[..., 2:] / 2], -1)
    txyxy = torch.cat([target[..., :2] - target[..., 2:] / 2, target[..., :2] + target[..., 2:] / 2], -1)
    loss = complete_box_iou_loss(xyxy, txyxy, reduction="sum", eps=0.0)
    assert torch.allclose(loss, (1 - ours.detach()).sum(), rtol=1e-9)        # same value ...
    loss.backward()
    assert not torch.allclose(-detached.grad, pred.grad, rtol=1e-3)           # ... other gradient


def test_focal_loss_matches_the_original():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(50, generator=g, dtype=torch.float64, requires_grad=True)
    target = (torch.rand(50, generator=g, dtype=torch.float64) > 0.5).double()
    ref_logits = logits.detach().clone().requires_grad_(True)
    ours, ref = focal_bce(logits, target), reference_focal(ref_logits, target)
    assert torch.allclose(ours, ref)
    ours.sum().backward()
    ref.sum().backward()
    assert torch.allclose(logits.grad, ref_logits.grad)


def _layer_inputs(seed, grid=8, classes=4, batch=2):
    g = torch.Generator().manual_seed(seed)
    raw = torch.randn(batch, grid, grid, 3, 5 + classes, generator=g, dtype=torch.float64)
    decoded = torch.cat([random_xywh(g, batch, grid, grid, 3, scale=grid * 8.0),
                         torch.rand(batch, grid, grid, 3, 1 + classes, generator=g, dtype=torch.float64)], -1)
    label = torch.zeros(batch, grid, grid, 3, 6 + classes, dtype=torch.float64)
    label[..., 5] = 1.0
    boxes = torch.zeros(batch, 150, 4, dtype=torch.float64)
    for b in range(batch):
        for k in range(3):
            y, x, a = (int(v) for v in torch.randint(0, grid, (3,), generator=g) % torch.tensor([grid, grid, 3]))
            box = random_xywh(g, scale=grid * 8.0)
            label[b, y, x, a, :4] = box
            label[b, y, x, a, 4] = 1.0
            label[b, y, x, a, 5] = 0.3 + 0.2 * k                       # mixup weights
            label[b, y, x, a, 6:] = 0.01 / classes
            label[b, y, x, a, 6 + k] = 0.99 + 0.01 / classes
            boxes[b, k] = box
    # Make some background cells overlap a ground-truth box strongly (CIoU >= 0.5: no conf loss).
    decoded[0, 0, 0, :, :4] = boxes[0, 0]
    return raw, decoded, label, boxes


def test_layer_loss_matches_the_original_with_its_gradient():
    raw, decoded, label, boxes = _layer_inputs(2)
    raw_ref, dec_ref = raw.clone().requires_grad_(True), decoded.clone().requires_grad_(True)
    raw.requires_grad_(True)
    decoded.requires_grad_(True)
    ours = layer_loss(raw, decoded, label, boxes, stride=8)
    ref = reference_layer_loss(raw_ref, dec_ref, label, boxes, 8)
    for key, value in zip(("loss", "ciou", "conf", "cls"), ref):
        assert torch.allclose(ours[key], value, rtol=1e-10), key
    ours["loss"].backward()
    ref[0].backward()
    assert torch.allclose(raw.grad, raw_ref.grad, rtol=1e-9, atol=1e-12)
    assert torch.allclose(decoded.grad, dec_ref.grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("counts", [(1, 5), (0, 2), (0, 0), (150, 3)])
def test_background_cells_match_the_original_for_any_number_of_boxes_per_image(counts):
    # layer_loss takes the best CIoU over each list's filled rows and one padding row; the original
    # took it over all 150 rows. Lists of different lengths in one batch, empty lists and a full one.
    raw, decoded, label, _ = _layer_inputs(5)
    g = torch.Generator().manual_seed(6)
    boxes = torch.zeros(2, 150, 4, dtype=torch.float64)
    for b, count in enumerate(counts):
        if count:
            boxes[b, :count] = random_xywh(g, count, scale=64.0)
            decoded[b, 1, 1, :, :4] = boxes[b, count - 1]          # a background cell on the last box
    ours = layer_loss(raw, decoded, label, boxes, stride=8)
    ref = reference_layer_loss(raw, decoded, label, boxes, 8)
    assert torch.allclose(ours["conf"], ref[2], rtol=1e-10)
    assert torch.allclose(ours["loss"], ref[0], rtol=1e-10)


def test_no_object_mask_uses_the_largest_ciou_with_any_box():
    raw, decoded, label, boxes = _layer_inputs(3)
    # Cell (0, 0, 0) of image 0 predicts exactly box 0: CIoU 1 >= 0.5, so it is not background
    # and its confidence costs nothing; with the box list emptied, it becomes background.
    base = layer_loss(raw, decoded, label, boxes, 8)["conf"]
    empty = layer_loss(raw, decoded, label, torch.zeros_like(boxes), 8)["conf"]
    cell = focal_bce(raw[0, 0, 0, :, 4], torch.zeros(3, dtype=torch.float64)).sum() / 2
    assert label[0, 0, 0, :, 4].sum() == 0
    assert empty > base
    ref_empty = reference_layer_loss(raw, decoded, label, torch.zeros_like(boxes), 8)[2]
    assert torch.allclose(empty, ref_empty)
    assert cell > 0


def test_yolo_loss_sums_the_three_strides():
    parts = [_layer_inputs(10 + s, grid=g) for s, g in enumerate((8, 4, 2))]
    total = yolo_loss(*[[p[i] for p in parts] for i in range(4)], strides=STRIDES)
    expected = sum(reference_layer_loss(p[0], p[1], p[2], p[3], s)[0] for p, s in zip(parts, STRIDES))
    assert torch.allclose(total["loss"], expected)


def test_targets_match_the_original_assignment():
    rng = np.random.default_rng(0)
    img_size, classes = 128, 5
    boxes = []
    for _ in range(40):                      # many boxes: overwrites and all three strides
        x1, y1 = rng.uniform(0, 100, size=2)
        w, h = rng.uniform(3, 120 - max(x1, y1), size=2)
        boxes.append([x1, y1, min(x1 + w, 127), min(y1 + h, 127), rng.integers(classes), rng.uniform(0.2, 1.0)])
    boxes = np.asarray(boxes)
    labels, box_lists = build_targets(boxes, img_size, classes)
    ref_labels, ref_boxes = reference_labels(boxes, img_size, classes)
    for ours, ref in zip(labels, ref_labels):
        assert np.allclose(ours, ref, atol=1e-5)
    for ours, ref in zip(box_lists, ref_boxes):
        assert np.allclose(ours, ref, atol=1e-4)
    assert sum(int((lab[..., 4] > 0).sum()) for lab in labels) > 10


def test_targets_keep_at_most_150_boxes_per_scale_as_a_ring():
    boxes = np.asarray([[10 + (k % 40), 10, 20 + (k % 40), 22, 0, 1.0] for k in range(160)], dtype=np.float64)
    labels, box_lists = build_targets(boxes, 128, 2)
    ref_labels, ref_boxes = reference_labels(boxes, 128, 2)
    assert all(b.shape == (150, 4) for b in box_lists)
    for ours, ref in zip(box_lists, ref_boxes):
        assert np.allclose(ours, ref)
    small = box_lists[0]
    assert np.allclose(small[0], [15 + 150 % 40, 16, 10, 12])       # box 150 overwrote slot 0


def test_a_degenerate_prediction_in_an_empty_cell_does_not_make_the_loss_nan():
    raw, decoded, label, boxes = _layer_inputs(4)
    empty = (label[0, :, :, :, 4] == 0).nonzero()[0]
    decoded = decoded.clone()
    decoded[0, empty[0], empty[1], empty[2], 2:4] = float("inf")        # exp overflow in an empty cell
    reference = reference_layer_loss(raw, decoded, label, boxes, 8)[1]
    assert torch.isnan(reference)                                        # the original's formula: NaN
    decoded.requires_grad_(True)
    ours = layer_loss(raw, decoded, label, boxes, 8)
    assert torch.isfinite(ours["loss"])
    ours["loss"].backward()
    assert torch.isfinite(decoded.grad).all()
    finite = decoded.detach().clone()
    finite[0, empty[0], empty[1], empty[2], 2:4] = 5.0
    assert torch.allclose(ours["ciou"], reference_layer_loss(raw, finite, label, boxes, 8)[1])
