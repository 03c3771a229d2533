"""Segmentation metrics and losses against sklearn and the original's formulas written out here."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import confusion_matrix

from lth.errors import UserError
from Segmentation.loss import FocalLoss, build_loss
from Segmentation.metrics import ConfusionMatrix, scores


def original_stream_seg_metrics(label_batches, pred_batches, n_classes):
    """The original's StreamSegMetrics (metrics/stream_metrics.py): _fast_hist per image, then get_results."""
    hist = np.zeros((n_classes, n_classes))
    for label_trues, label_preds in zip(label_batches, pred_batches):
        for lt, lp in zip(label_trues, label_preds):
            lt, lp = lt.flatten(), lp.flatten()
            mask = (lt >= 0) & (lt < n_classes)
            hist += np.bincount(n_classes * lt[mask].astype(int) + lp[mask],
                                minlength=n_classes ** 2).reshape(n_classes, n_classes)
    with np.errstate(divide="ignore", invalid="ignore"):
        acc = np.diag(hist).sum() / hist.sum()
        acc_cls = np.nanmean(np.diag(hist) / hist.sum(axis=1))
        iu = np.diag(hist) / (hist.sum(axis=1) + hist.sum(axis=0) - np.diag(hist))
        mean_iu = np.nanmean(iu)
        freq = hist.sum(axis=1) / hist.sum()
        fwavacc = (freq[freq > 0] * iu[freq > 0]).sum()
    return hist, {"Overall Acc": acc, "Mean Acc": acc_cls, "FreqW Acc": fwavacc, "Mean IoU": mean_iu,
                  "Class IoU": dict(zip(range(n_classes), iu))}


def _batches(seed, n_classes=6):
    rng = np.random.default_rng(seed)
    labels, preds = [], []
    for _ in range(3):
        label = rng.integers(0, n_classes, (2, 9, 11))
        label[label == 4] = 2  # class 4 never occurs...
        label[:, 0, :3] = 255  # ...and some pixels are ignored
        pred = rng.integers(0, n_classes, (2, 9, 11))
        pred[pred == 5] = 0  # class 5 is never predicted
        pred[(pred == 4) & (rng.random(pred.shape) < 0.5)] = 1  # class 4 predicted, never true: IoU 0
        labels.append(label)
        preds.append(pred)
    return labels, preds


@pytest.mark.parametrize("seed", [0, 1])
def test_confusion_matrix_and_scores_match_sklearn_and_the_original(seed):
    n_classes = 7  # class 6 neither occurs nor is predicted: left out of the means
    labels, preds = _batches(seed)
    metric = ConfusionMatrix(n_classes)
    for label, pred in zip(labels, preds):
        metric.update(torch.from_numpy(pred), torch.from_numpy(label))
    metric.reduce()
    all_labels = np.concatenate([l.reshape(-1) for l in labels])
    all_preds = np.concatenate([p.reshape(-1) for p in preds])
    keep = all_labels != 255
    expected = confusion_matrix(all_labels[keep], all_preds[keep], labels=list(range(n_classes)))
    assert np.array_equal(metric.matrix.numpy(), expected)

    hist, original = original_stream_seg_metrics(labels, preds, n_classes)
    assert np.array_equal(hist, expected)
    ours = metric.results()
    assert ours["miou"] == pytest.approx(100 * original["Mean IoU"], abs=1e-9)
    assert ours["overall_acc"] == pytest.approx(100 * original["Overall Acc"], abs=1e-9)
    assert ours["mean_acc"] == pytest.approx(100 * original["Mean Acc"], abs=1e-9)
    assert ours["fwiou"] == pytest.approx(100 * original["FreqW Acc"], abs=1e-9)
    for cls, value in original["Class IoU"].items():
        if np.isnan(value):
            assert ours["class_iou"][cls] is None
        else:
            assert ours["class_iou"][cls] == pytest.approx(100 * value, abs=1e-9)
    assert ours["class_iou"][4] == 0.0 and ours["class_iou"][6] is None


def test_labels_outside_the_classes_are_ignored_and_the_matrix_resets():
    metric = ConfusionMatrix(3)
    metric.update(torch.tensor([0, 1, 2, 1]), torch.tensor([0, 255, 7, 1]))
    assert metric.matrix.sum() == 2 and metric.results()["overall_acc"] == 100.0
    metric.reset()
    assert metric.matrix.sum() == 0
    with pytest.raises(ValueError, match="differ in shape"):
        metric.update(torch.zeros(2, 3), torch.zeros(3, 2))


def test_scores_of_a_hand_made_matrix():
    matrix = np.array([[3, 1], [0, 0]])  # class 1 predicted once, never true
    result = scores(matrix)
    assert result["miou"] == pytest.approx(100 * (3 / 4 + 0) / 2)
    assert result["mean_acc"] == pytest.approx(75.0)  # class 0: 3 of 4; class 1: 0/0, not counted
    assert result["fwiou"] == pytest.approx(75.0)


def original_focal_loss(inputs, targets, alpha=1, gamma=0, size_average=True, ignore_index=255):
    """The original's FocalLoss.forward (utils/loss.py)."""
    ce_loss = F.cross_entropy(inputs, targets, reduction="none", ignore_index=ignore_index)
    pt = torch.exp(-ce_loss)
    focal_loss = alpha * (1 - pt) ** gamma * ce_loss
    return focal_loss.mean() if size_average else focal_loss.sum()


@pytest.mark.parametrize("alpha,gamma,size_average", [(1, 0, True), (0.25, 2, True), (1, 2, False)])
def test_focal_loss_is_the_originals(alpha, gamma, size_average):
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 6, 7)
    labels = torch.randint(0, 5, (2, 6, 7))
    labels[0, :2] = 255
    ours = FocalLoss(alpha=alpha, gamma=gamma, size_average=size_average)(logits, labels)
    reference = original_focal_loss(logits, labels, alpha, gamma, size_average)
    assert torch.allclose(ours, reference)
    # by hand: p_t of each labelled pixel, ignored pixels contribute 0 but count in the mean
    log_p = F.log_softmax(logits, 1)
    keep = labels != 255
    picked = log_p.permute(0, 2, 3, 1)[keep].gather(1, labels[keep].unsqueeze(1)).squeeze(1)
    per_pixel = -alpha * (1 - picked.exp()) ** gamma * picked
    by_hand = per_pixel.sum() / (labels.numel() if size_average else 1)
    assert torch.allclose(ours, by_hand, atol=1e-6)


def test_build_loss():
    logits = torch.randn(1, 3, 4, 4)
    labels = torch.randint(0, 3, (1, 4, 4))
    labels[0, 0] = 255
    ce = build_loss("cross_entropy")(logits, labels)
    assert torch.allclose(ce, F.cross_entropy(logits, labels, ignore_index=255))
    assert isinstance(build_loss("focal_loss"), FocalLoss)
    with pytest.raises(UserError, match="loss_type"):
        build_loss("dice")
