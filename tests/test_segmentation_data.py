"""Segmentation data: tiny VOC2012 and Cityscapes folders in their real layouts, the joint transforms,
bad input, the padding collate, the digits set and the prediction writer."""

import os

import numpy as np
import pytest
import torch
from PIL import Image

from lth.errors import UserError
from lth.imagedata import IMAGENET_MEAN, IMAGENET_STD
from Segmentation import data
from Segmentation.visual import PredictionWriter, cityscapes_palette, voc_palette

pytestmark = pytest.mark.usefixtures("one_thread")


def _label_png(path, labels, palette=True):
    image = Image.fromarray(labels.astype(np.uint8), mode="P" if palette else "L")
    if palette:
        image.putpalette(voc_palette().reshape(-1).tolist())
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image.save(path)


def _jpeg(path, height, width, seed):
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path, quality=90)


def _voc_labels(height, width, cls):
    labels = np.zeros((height, width), dtype=np.uint8)
    labels[2: height - 2, 3: width - 3] = cls
    labels[2, 3: width - 3] = 255  # a boundary, as VOC's
    return labels


def make_voc(root, sizes=None, aug=False):
    """VOCdevkit/VOC2012 with JPEG images, palette PNG labels and train/val lists."""
    sizes = sizes or {"a": (20, 28), "b": (24, 18), "c": (16, 16)}
    voc = os.path.join(root, "VOCdevkit", "VOC2012")
    for index, (name, (height, width)) in enumerate(sizes.items()):
        _jpeg(os.path.join(voc, "JPEGImages", name + ".jpg"), height, width, index)
        _label_png(os.path.join(voc, "SegmentationClass", name + ".png"), _voc_labels(height, width, index + 1))
        if aug:
            _label_png(os.path.join(voc, "SegmentationClassAug", name + ".png"),
                       _voc_labels(height, width, index + 5), palette=False)
    lists = os.path.join(voc, "ImageSets", "Segmentation")
    os.makedirs(lists, exist_ok=True)
    names = list(sizes)
    with open(os.path.join(lists, "train.txt"), "w") as f:
        f.write("\n".join(names[:2]) + "\n")
    with open(os.path.join(lists, "val.txt"), "w") as f:
        f.write(names[2] + "\n")
    if aug:
        with open(os.path.join(root, "train_aug.txt"), "w") as f:
            f.write("\n".join(names) + "\n")
    return voc


def make_cityscapes(root):
    """leftImg8bit/{split}/{city}/*_leftImg8bit.png and gtFine/{split}/{city}/*_gtFine_labelIds.png."""
    label_ids = np.array([[7, 8, 11, 0], [26, 33, 4, 255], [24, 21, 23, 13]], dtype=np.uint8)
    labels = np.kron(label_ids, np.ones((4, 4), dtype=np.uint8))  # 12 x 16
    for split, cities in (("train", ("aachen", "bochum")), ("val", ("frankfurt",))):
        for city in cities:
            for frame in ("000000_000019", "000001_000019"):
                stem = f"{city}_{frame}"
                image = os.path.join(root, "leftImg8bit", split, city, f"{stem}_leftImg8bit.png")
                os.makedirs(os.path.dirname(image), exist_ok=True)
                Image.fromarray(np.full((12, 16, 3), 100, dtype=np.uint8)).save(image)
                _label_png(os.path.join(root, "gtFine", split, city, f"{stem}_gtFine_labelIds.png"), labels,
                           palette=False)
    return labels


def test_voc_reads_the_real_layout(tmp_path):
    make_voc(tmp_path)
    train = data.voc_segmentation(str(tmp_path), "2012", "train")
    val = data.voc_segmentation(str(tmp_path), "2012", "val")
    assert train.ids == ["a", "b"] and val.ids == ["c"]
    image, target = train[1]
    assert image.shape == (3, 24, 18) and image.dtype == torch.float32
    assert target["mask"].dtype == torch.int64
    assert torch.equal(target["mask"], torch.from_numpy(_voc_labels(24, 18, 2)).long())
    assert target["size"].tolist() == [24, 18] and int(target["index"]) == 1
    # normalised with ImageNet statistics
    raw = torch.from_numpy(np.array(Image.open(train.samples[1].image))).permute(2, 0, 1).float() / 255
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    assert torch.allclose(image, (raw - mean) / std, atol=1e-5)


def test_voc_2012_aug_reads_the_aug_labels_and_list(tmp_path):
    make_voc(tmp_path, aug=True)
    train = data.voc_segmentation(str(tmp_path), "2012_aug", "train")
    assert train.ids == ["a", "b", "c"]
    assert set(train[0][1]["mask"].unique().tolist()) == {0, 5, 255}
    val = data.voc_segmentation(str(tmp_path), "2012_aug", "val")
    assert set(val[0][1]["mask"].unique().tolist()) == {0, 3, 255}


def test_cityscapes_maps_label_ids_to_train_ids(tmp_path):
    label_ids = make_cityscapes(tmp_path)
    train = data.cityscapes_segmentation(str(tmp_path), "train")
    val = data.cityscapes_segmentation(str(tmp_path), "val")
    assert len(train) == 4 and len(val) == 2
    assert train.ids[0] == "aachen/aachen_000000_000019"
    mask = train[0][1]["mask"]
    expected = np.array([[0, 1, 2, 255], [13, 18, 255, 255], [11, 8, 10, 4]])
    assert torch.equal(mask[::4, ::4], torch.from_numpy(expected))
    assert mask.shape == label_ids.shape


@pytest.mark.parametrize("label_pad", [None, 0, 255])
def test_train_transform_scales_crops_flips_and_pads_labels(label_pad):
    """Padded pixels: image 0 before normalisation; label 0 by default (the original's pad_if_needed
    used F.pad's default fill, background), 255 (ignored) with --label_pad 255."""
    torch.manual_seed(0)
    labels = np.full((20, 30), 3, dtype=np.uint8)
    labels[5:15, 5:25] = 7
    labels[5, 5:25] = 255
    image = Image.fromarray(np.full((20, 30, 3), 200, dtype=np.uint8))
    transform = (data.train_transform("voc", crop_size=48) if label_pad is None else
                 data.train_transform("voc", crop_size=48, label_pad=label_pad))
    padded_seen = False
    for _ in range(20):
        out_image, out_label = transform(image, Image.fromarray(labels))
        assert out_image.shape == (3, 48, 48) and out_label.shape == (48, 48)
        assert set(out_label.unique().tolist()) <= {0, 3, 7, 255}
        black = ((out_image * torch.tensor(IMAGENET_STD).view(3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(3, 1, 1))
                 .abs() < 1e-4).all(0)
        assert torch.all(out_label[black] == (0 if label_pad is None else label_pad))
        if label_pad != 255:  # no 0 in the image's own labels: every 0 is padding
            assert not torch.any(out_label[~black] == 0)
        padded_seen |= bool(black.any())
    assert padded_seen
    from Segmentation import run

    parser = run.get_args_parser("imp", run.SOURCES["imagenet"])
    assert parser.parse_args(["exp"]).label_pad == 0 and parser.parse_args(["exp", "--label_pad", "255"]).label_pad == 255


def test_crop_and_flip_keep_image_and_label_aligned():
    torch.manual_seed(1)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 21, (30, 40)).astype(np.uint8)
    image = Image.fromarray(np.repeat(labels[..., None] * 10, 3, axis=2))
    transform = data.JointCompose([data.RandomCrop(24), data.RandomHorizontalFlip(), data.ToTensorNormalize()])
    flipped = set()
    for _ in range(10):
        out_image, out_label = transform(image, Image.fromarray(labels))
        grey = out_image[0] * IMAGENET_STD[0] + IMAGENET_MEAN[0]
        assert torch.equal(torch.round(grey * 255 / 10).long(), out_label)
        found = [(t, l) for t in range(7) for l in range(17) if np.array_equal(labels[t:t + 24, l:l + 24],
                                                                                out_label.numpy())]
        flipped.add(not found)
    assert flipped == {True, False}


def test_val_transform_full_image_or_resize_and_centre_crop():
    labels = np.zeros((20, 30), dtype=np.uint8)
    labels[:, 15:] = 3
    image = Image.fromarray(np.zeros((20, 30, 3), dtype=np.uint8))
    full_image, full_label = data.val_transform()(image, Image.fromarray(labels))
    assert full_image.shape == (3, 20, 30) and torch.equal(full_label, torch.from_numpy(labels).long())
    crop_image, crop_label = data.val_transform(10)(image, Image.fromarray(labels))
    assert crop_image.shape == (3, 10, 10) and crop_label.shape == (10, 10)
    # shorter side 20 -> 10: 15 columns wide; centre crop keeps columns 2..12, the class border at 7.5
    assert torch.equal(crop_label[0], torch.tensor([0] * 5 + [3] * 5))


def test_pad_collate_pads_images_with_0_and_masks_with_255(tmp_path):
    make_voc(tmp_path)
    train = data.voc_segmentation(str(tmp_path), "2012", "train")
    images, target = data.pad_collate([train[0], train[1]])
    assert images.shape == (2, 3, 24, 28) and target["mask"].shape == (2, 24, 28)
    assert target["size"].tolist() == [[20, 28], [24, 18]] and target["index"].tolist() == [0, 1]
    assert torch.all(target["mask"][0, 20:] == 255) and torch.all(images[0, :, 20:] == 0)
    assert torch.all(target["mask"][1, :, 18:] == 255)
    assert torch.equal(target["mask"][1, :, :18], train[1][1]["mask"])


@pytest.mark.parametrize("case", ["no_root", "no_list", "no_label", "no_image", "no_aug"])
def test_missing_files_are_named_before_reading(tmp_path, case):
    voc = make_voc(tmp_path)
    root, year, expected = str(tmp_path), "2012", None
    if case == "no_root":
        root, expected = str(tmp_path / "nowhere"), "VOCdevkit/VOC2012"
    elif case == "no_list":
        os.remove(os.path.join(voc, "ImageSets", "Segmentation", "train.txt"))
        expected = "train.txt"
    elif case == "no_label":
        os.remove(os.path.join(voc, "SegmentationClass", "b.png"))
        expected = "'b'.*label.*b.png"
    elif case == "no_image":
        os.remove(os.path.join(voc, "JPEGImages", "a.jpg"))
        expected = "'a'.*image.*a.jpg"
    else:
        year, expected = "2012_aug", "SegmentationClassAug"
    with pytest.raises(UserError, match=expected) as error:
        data.voc_segmentation(root, year, "train")
    assert "\n" not in str(error.value)


def test_bad_labels_are_named_when_read(tmp_path):
    voc = make_voc(tmp_path)
    _label_png(os.path.join(voc, "SegmentationClass", "a.png"), _voc_labels(21, 28, 1))
    bad_value = _voc_labels(24, 18, 2)
    bad_value[0, 0] = 21
    _label_png(os.path.join(voc, "SegmentationClass", "b.png"), bad_value)
    train = data.voc_segmentation(str(tmp_path), "2012", "train")
    with pytest.raises(UserError, match=r"a\.png' is 28x21 but its image .*a\.jpg' is 28x20"):
        train[0]
    with pytest.raises(UserError, match=r"b\.png' holds value 21"):
        train[1]
    Image.fromarray(np.zeros((16, 16, 3), dtype=np.uint8)).save(os.path.join(voc, "SegmentationClass", "c.png"))
    with pytest.raises(UserError, match="c.png' is a RGB image"):
        data.voc_segmentation(str(tmp_path), "2012", "val")[0]


def test_cityscapes_bad_input(tmp_path):
    with pytest.raises(UserError, match="leftImg8bit"):
        data.cityscapes_segmentation(str(tmp_path), "train")
    make_cityscapes(tmp_path)
    label = tmp_path / "gtFine" / "val" / "frankfurt" / "frankfurt_000001_000019_gtFine_labelIds.png"
    _label_png(str(label), np.full((12, 16), 40, dtype=np.uint8), palette=False)
    val = data.cityscapes_segmentation(str(tmp_path), "val")
    with pytest.raises(UserError, match="holds value 40"):
        val[1]
    os.remove(label)
    with pytest.raises(UserError, match="has no label .*frankfurt_000001_000019_gtFine_labelIds.png"):
        data.cityscapes_segmentation(str(tmp_path), "val")


def test_digits_set_is_deterministic_with_disjoint_splits():
    first, second, other = data.digits_segmentation(0), data.digits_segmentation(0), data.digits_segmentation(1)
    assert np.array_equal(first.train.images, second.train.images)
    assert np.array_equal(first.val.masks, second.val.masks)
    assert not np.array_equal(first.train.images, other.train.images)
    assert first.num_classes == 11 and (len(first.train), len(first.val), len(first.test)) == (1885, 135, 135)
    image, target = first.train[3]
    assert image.shape == (3, 32, 32) and target["mask"].shape == (32, 32)
    values = set(np.unique(first.train.masks).tolist())
    assert values == set(range(11)) | {255}
    # every digit pixel touches no background: a ring of 255 separates them
    masks = torch.from_numpy(first.val.masks.astype(np.int64))
    digit = (masks >= 1) & (masks <= 10)
    background = (masks == 0).float().unsqueeze(1)
    near_background = torch.nn.functional.max_pool2d(background, 3, 1, 1).squeeze(1).bool()
    assert not torch.any(digit & near_background)
    # no digit image is used in two splits, and each canvas shows the classes of its digits
    used = {name: set(first.sources[name].reshape(-1).tolist()) for name in ("train", "val", "test")}
    assert not used["train"] & used["val"] and not used["train"] & used["test"] and not used["val"] & used["test"]
    from sklearn.datasets import load_digits
    classes = load_digits().target
    for row in range(5):
        shown = set(np.unique(first.test.masks[row]).tolist()) - {0, 255}
        assert shown == {int(classes[i]) + 1 for i in first.sources["test"][row]}


def test_prediction_writer_writes_voc_palette_pngs_at_the_targets_size(tmp_path):
    writer = PredictionWriter(str(tmp_path / "val"), ["2007_000033", "city/frame"], voc_palette())
    predictions = torch.zeros(2, 6, 8, dtype=torch.int64)
    predictions[0, :2, :3] = 15
    target = {"index": torch.tensor([0, 1]), "size": torch.tensor([[4, 5], [6, 8]])}
    writer.write(predictions, target)
    first = Image.open(tmp_path / "val" / "2007_000033_pred.png")
    assert first.mode == "P" and first.size == (5, 4)
    assert np.array_equal(np.array(first), predictions[0, :4, :5].numpy())
    assert first.getpalette()[15 * 3: 15 * 3 + 3] == [192, 128, 128]  # VOC's 'person'
    assert (tmp_path / "val" / "city_frame_pred.png").exists()
    assert cityscapes_palette()[0].tolist() == [128, 64, 128] and cityscapes_palette()[255].tolist() == [0, 0, 0]


def test_save_val_results_writes_image_target_prediction_and_overlay_as_the_original(tmp_path):
    """The original's validate(): image = (denorm(x) * 255).astype(uint8) with ImageNet's mean/std,
    target and prediction in the VOC colours, overlay = the prediction at alpha 0.7 over the image
    (matplotlib's compositing: 0.7 * colour + 0.3 * image), written out here."""
    from Segmentation.visual import colorize

    torch.manual_seed(0)
    pixels = torch.rand(1, 3, 5, 7) * 255
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    images = (pixels / 255 - mean[:, None, None]) / std[:, None, None]
    predictions = torch.randint(0, 21, (1, 5, 7))
    mask = torch.randint(0, 21, (1, 5, 7))
    mask[0, 0, 0] = 255
    writer = PredictionWriter(str(tmp_path), ["2007_000033"], voc_palette())
    writer.write(predictions, {"index": torch.tensor([0]), "size": torch.tensor([[5, 7]]), "mask": mask}, images)
    palette = voc_palette()
    image = np.array(Image.open(tmp_path / "2007_000033_image.png"))
    expected_image = (((images[0] * std[:, None, None] + mean[:, None, None]) * 255).numpy()
                      .transpose(1, 2, 0).astype(np.uint8))
    assert image.shape == (5, 7, 3) and np.abs(image.astype(int) - expected_image.astype(int)).max() <= 1
    target = Image.open(tmp_path / "2007_000033_target.png")
    assert target.mode == "P" and np.array_equal(np.array(target), mask[0].numpy())
    assert np.array_equal(np.array(target.convert("RGB")), palette[mask[0].numpy()])
    assert np.array_equal(np.array(Image.open(tmp_path / "2007_000033_pred.png")), predictions[0].numpy())
    overlay = np.array(Image.open(tmp_path / "2007_000033_overlay.png")).astype(float)
    reference = 0.7 * colorize(predictions[0].numpy(), palette) + 0.3 * image
    assert overlay.shape == (5, 7, 3) and np.abs(overlay - reference).max() <= 0.5 + 1e-9


def test_load_segmentation_builds_each_data_set_with_its_transforms(tmp_path):
    make_voc(tmp_path / "voc")
    voc = data.load_segmentation("voc", str(tmp_path / "voc"), crop_size=12, crop_val=True)
    assert voc.num_classes == 21 and voc.test is None
    assert voc.train[0][0].shape == (3, 12, 12) and voc.val[0][0].shape == (3, 12, 12)
    full = data.load_segmentation("voc", str(tmp_path / "voc"), crop_size=12)
    assert full.val[0][0].shape == (3, 16, 16)
    make_cityscapes(tmp_path / "cs")
    cityscapes = data.load_segmentation("cityscapes", str(tmp_path / "cs"), crop_size=8)
    assert cityscapes.num_classes == 19 and cityscapes.train[0][0].shape == (3, 8, 8)
    assert cityscapes.val[0][0].shape == (3, 12, 16)
    digits = data.load_segmentation("digits", seed=0)
    assert digits.num_classes == 11 and len(digits.test) == 135
    with pytest.raises(UserError, match="--dataset"):
        data.load_segmentation("ade20k", str(tmp_path))
    with pytest.raises(UserError, match="--data_root"):
        data.load_segmentation("voc", None)


def test_a_bad_label_found_in_a_loader_worker_is_one_line(tmp_path, capsys):
    import argparse

    from torch.utils.data import DataLoader

    from lth.cli import run_main

    voc = make_voc(tmp_path)
    _label_png(os.path.join(voc, "SegmentationClass", "a.png"), _voc_labels(21, 28, 1))

    def main(args):
        train = data.voc_segmentation(str(tmp_path), "2012", "train")
        list(DataLoader(train, batch_size=1, num_workers=1, collate_fn=data.pad_collate))

    with pytest.raises(SystemExit) as stop:
        run_main(main, argparse.ArgumentParser(), [])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: label '") and "a.png' is 28x21" in err


def test_one_training_image_per_process_is_refused_on_one_line():
    """DeepLabV3+'s batch norm after ASPP's image pooling sees one value per channel per image:
    the original crashed there with --batch_size 1; here it is refused before anything runs."""
    from lth.distributed import Context

    one = Context(torch.device("cpu"))
    assert data.process_batches(2, 3, one) == (2, 3)
    with pytest.raises(UserError, match="--batch_size 1 gives 1 image per process") as info:
        data.process_batches(1, 4, one)
    assert "\n" not in str(info.value)
    two = Context(torch.device("cpu"), rank=1, world_size=2)
    assert data.process_batches(8, 3, two) == (4, 2)
    with pytest.raises(UserError, match="at least 2"):
        data.process_batches(2, 4, two)
