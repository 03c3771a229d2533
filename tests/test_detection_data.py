"""Tests for Detection/data.py on tiny VOC folders written here in the real layout (JPEG, XML with
difficult/truncated/pose, ImageSets/Main lists), the original's annotation lists, every bad input,
the original's augmentation and the embedded digits detection set."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from Detection import data as D
from lth.errors import UserError

pytestmark = pytest.mark.usefixtures("one_thread")


def write_voc(root, year: str, image_set: str, images: dict) -> str:
    """images: id -> (width, height, [(name, (x1, y1, x2, y2) 1-based, difficult), ...])."""
    voc = os.path.join(root, "VOCdevkit", year)
    for sub in ("Annotations", "JPEGImages", os.path.join("ImageSets", "Main")):
        os.makedirs(os.path.join(voc, sub), exist_ok=True)
    for image_id, (width, height, objects) in images.items():
        pixels = np.full((height, width, 3), 40, dtype=np.uint8)
        for _, (x1, y1, x2, y2), _ in objects:
            pixels[y1 - 1:y2, x1 - 1:x2] = 220
        Image.fromarray(pixels).save(os.path.join(voc, "JPEGImages", f"{image_id}.jpg"), quality=95)
        parts = [f"<annotation><folder>{year}</folder><filename>{image_id}.jpg</filename>",
                 f"<size><width>{width}</width><height>{height}</height><depth>3</depth></size>",
                 "<segmented>0</segmented>"]
        for name, (x1, y1, x2, y2), difficult in objects:
            parts.append(f"<object><name>{name}</name><pose>Left</pose><truncated>1</truncated>"
                         f"<difficult>{int(difficult)}</difficult><bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin>"
                         f"<xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>")
        parts.append("</annotation>")
        with open(os.path.join(voc, "Annotations", f"{image_id}.xml"), "w") as handle:
            handle.write("\n".join(parts))
    with open(os.path.join(voc, "ImageSets", "Main", f"{image_set}.txt"), "a") as handle:
        handle.writelines(f"{image_id}\n" for image_id in images)
    return voc


@pytest.fixture()
def voc_root(tmp_path):
    root = str(tmp_path / "data")
    write_voc(root, "VOC2007", "trainval", {
        "000005": (60, 40, [("chair", (5, 6, 30, 35), False), ("dog", (31, 2, 58, 20), True)]),
        "000007": (50, 50, [("person", (1, 1, 50, 50), True)]),       # only object difficult
    })
    write_voc(root, "VOC2012", "trainval", {"2008_000002": (48, 64, [("tvmonitor", (10, 12, 40, 60), False)])})
    write_voc(root, "VOC2007", "test", {
        "000001": (64, 48, [("dog", (3, 4, 40, 44), False), ("person", (42, 5, 60, 30), True)]),
        "000004": (40, 40, [("car", (2, 2, 38, 30), True)]),             # only object difficult
    })
    return root


def test_voc_train_and_test_splits(voc_root):
    train = D.voc_records(voc_root, "train")
    assert [r.image_id for r in train] == ["000005", "2008_000002"]           # 000007 skipped
    first = train[0]
    assert first.labels.tolist() == [D.VOC_CLASSES.index("chair")]           # difficult dog dropped
    assert first.boxes.tolist() == [[4, 5, 29, 34]]                          # 0-based pixel indices
    assert first.image_path.endswith(os.path.join("VOC2007", "JPEGImages", "000005.jpg"))
    test = D.voc_records(voc_root, "test")
    assert [r.image_id for r in test] == ["000001", "000004"]
    assert test[0].difficult.tolist() == [False, True]
    assert test[1].difficult.tolist() == [True] and len(test[1].boxes) == 1
    assert test[0].load_image().shape == (48, 64, 3)


def test_the_original_annotation_list_is_accepted(voc_root, tmp_path):
    listing = tmp_path / "train_annotation.txt"
    jpg = os.path.join(voc_root, "VOCdevkit", "VOC2007", "JPEGImages", "000005.jpg")
    listing.write_text(f"{jpg} 5,6,30,35,8 31,2,58,20,11\n\n")
    records = D.read_annotation_list(str(listing))
    assert len(records) == 1 and records[0].labels.tolist() == [8, 11]
    assert records[0].boxes.tolist() == [[4, 5, 29, 34], [30, 1, 57, 19]]
    relative = tmp_path / "rel.txt"
    os.symlink(jpg, tmp_path / "img.jpg")
    relative.write_text("img.jpg 5,6,30,35,8\n")
    assert D.read_annotation_list(str(relative))[0].load_image().shape == (40, 60, 3)


def _edit_xml(voc_root, image_id, old, new, year="VOC2007"):
    path = os.path.join(voc_root, "VOCdevkit", year, "Annotations", f"{image_id}.xml")
    with open(path) as handle:
        text = handle.read()
    assert old in text
    with open(path, "w") as handle:
        handle.write(text.replace(old, new, 1))
    return path


def test_bad_voc_input_is_one_line_naming_the_file(voc_root, tmp_path):
    def error(*args):
        with pytest.raises(UserError) as info:
            D.voc_records(*args)
        assert "\n" not in str(info.value)
        return str(info.value)

    assert "does not exist" in error(str(tmp_path / "nowhere"), "train")
    os.rename(os.path.join(voc_root, "VOCdevkit", "VOC2012"), os.path.join(voc_root, "VOCdevkit", "hidden"))
    assert os.path.join("VOCdevkit", "VOC2012") in error(voc_root, "train")
    os.rename(os.path.join(voc_root, "VOCdevkit", "hidden"), os.path.join(voc_root, "VOCdevkit", "VOC2012"))

    test_list = os.path.join(voc_root, "VOCdevkit", "VOC2007", "ImageSets", "Main", "test.txt")
    with open(test_list, "a") as handle:
        handle.write("009999\n")
    message = error(voc_root, "test")
    assert test_list in message and "009999.xml" in message
    with open(os.path.join(voc_root, "VOCdevkit", "VOC2007", "Annotations", "009999.xml"), "w") as handle:
        handle.write("<annotation><size><width>9</width><height>9</height></size></annotation>")
    message = error(voc_root, "test")
    assert test_list in message and "009999.jpg" in message

    path = _edit_xml(voc_root, "000005", "<xmax>30</xmax>", "<xmax>70</xmax>")       # width is 60
    assert path in error(voc_root, "train") and "outside" in error(voc_root, "train")
    _edit_xml(voc_root, "000005", "<xmax>70</xmax>", "<xmax>3</xmax>")               # xmin is 5
    assert path in error(voc_root, "train") and "x2 < x1" in error(voc_root, "train")
    _edit_xml(voc_root, "000005", "<xmax>3</xmax>", "<xmax>30</xmax>")
    _edit_xml(voc_root, "000005", "<name>chair</name>", "<name>unicorn</name>")
    message = error(voc_root, "train")
    assert path in message and "unknown class name 'unicorn'" in message


def test_bad_annotation_lists(voc_root, tmp_path):
    jpg = os.path.join(voc_root, "VOCdevkit", "VOC2007", "JPEGImages", "000005.jpg")
    cases = {"missing.txt": (f"{tmp_path}/none.jpg 1,1,5,5,0\n", "does not exist"),
             "class.txt": (f"{jpg} 1,1,5,5,20\n", "unknown class index 20"),
             "order.txt": (f"{jpg} 9,1,5,5,0\n", "x2 < x1")}
    for name, (text, expected) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(UserError, match=expected) as info:
            D.read_annotation_list(str(tmp_path / name))
        assert str(tmp_path / name) in str(info.value)
    (tmp_path / "outside.txt").write_text(f"{jpg} 1,1,61,5,0\n")                  # image is 60 wide
    record = D.read_annotation_list(str(tmp_path / "outside.txt"))[0]
    with pytest.raises(UserError, match="outside") as info:
        record.load_image()
    assert str(tmp_path / "outside.txt") in str(info.value)
    with pytest.raises(UserError, match="does not exist"):
        D.read_annotation_list(str(tmp_path / "absent.txt"))


def _white_box_image():
    image = np.zeros((40, 60, 3), dtype=np.uint8)
    image[10:21, 30:51] = 255                                   # pixels x 30..50, y 10..20
    return image, np.array([[30.0, 10.0, 50.0, 20.0, 3.0]])


def _bright_box(image):
    ys, xs = np.nonzero(image[..., 0] > 127)
    return np.array([xs.min(), ys.min(), xs.max(), ys.max()], dtype=float)


def test_flip_crop_translate_keep_boxes_on_their_pixels():
    image, boxes = _white_box_image()
    for seed in range(12):
        rng = np.random.default_rng(seed)
        out, moved = D.random_flip(image, boxes, rng, p=1.0)
        assert np.allclose(_bright_box(out), moved[0, :4])
        before = out
        out, moved = D.random_crop(out, moved, rng, p=1.0)
        assert np.allclose(_bright_box(out), moved[0, :4])
        cut_x, cut_y = before.shape[1] - out.shape[1], before.shape[0] - out.shape[0]
        assert np.array_equal(out, before[cut_y:, cut_x:])                   # only left/top cut (as the original)
        out, moved = D.random_translate(out, moved, rng, p=1.0)
        assert np.abs(_bright_box(out) - moved[0, :4]).max() <= 1.0       # bilinear: within a pixel
        assert moved[0, 4] == 3.0


def test_letterbox_grey_padding_and_scaling():
    image, boxes = _white_box_image()
    out, moved = D.letterbox(image, boxes, 32)
    ratio, new_w, new_h, dw, dh = D.letterbox_geometry(40, 60, 32)
    assert (new_w, new_h, dw, dh) == (32, 21, 0, 5)
    assert out.shape == (3, 32, 32) and out.dtype == np.float32
    assert np.allclose(out[:, :dh], 128 / 255) and np.allclose(out[:, dh + new_h:], 128 / 255)
    assert out.max() <= 1.0 and out[:, dh:dh + new_h].min() == 0.0       # /255, no mean/std
    assert np.allclose(moved[0, :4], boxes[0, :4] * ratio + [dw, dh, dw, dh])


def opencv_inter_linear(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """OpenCV's cv2.resize(float32 image, (width, height)) with INTER_LINEAR, written out
    (imgproc/src/resize.cpp, resizeGeneric's coefficients): for output pixel d the source
    coordinate is f = (d + 0.5) * in / out - 0.5, s = floor(f), a = f - s; where s < 0 it uses
    s = 0, a = 0, where s >= in - 1 it uses s = in - 1, a = 0 (the border replicated); the value is
    (1 - a) * src[s] + a * src[s + 1], rows then columns, in floating point: no antialiasing."""
    def axis(n_in: int, n_out: int):
        f = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
        s = np.floor(f).astype(int)
        a = f - s
        low, high = s < 0, s >= n_in - 1
        a[low], s[low] = 0.0, 0
        a[high], s[high] = 0.0, n_in - 1
        return s, np.minimum(s + 1, n_in - 1), a
    src = image.astype(np.float64)
    s0, s1, a = axis(src.shape[0], height)
    rows = src[s0] * (1 - a)[:, None, None] + src[s1] * a[:, None, None]
    s0, s1, a = axis(src.shape[1], width)
    return rows[:, s0] * (1 - a)[None, :, None] + rows[:, s1] * a[None, :, None]


def _photo(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Sharp edges and fine texture: what antialiasing would blur."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, size=(height, width, 3)).astype(np.uint8)
    image[height // 3: 2 * height // 3, width // 4: width // 2] = 255
    return image


@pytest.mark.parametrize("shape", [(375, 500), (333, 500), (500, 281), (120, 90)])
def test_letterbox_resizes_as_opencv_inter_linear(shape):
    """The original's Resize: cv2.resize of the float32 image (INTER_LINEAR), grey 128 around,
    /255. Downscaling (VOC photos to 416) and upscaling both follow OpenCV's rule to float
    rounding; Pillow's antialiased bilinear resize (used before) does not."""
    from PIL import Image

    image = _photo(*shape)
    size = 416
    out, _ = D.letterbox(image, None, size)
    _, new_w, new_h, dw, dh = D.letterbox_geometry(shape[0], shape[1], size)
    expected = np.full((size, size, 3), 128.0)
    expected[dh:dh + new_h, dw:dw + new_w] = opencv_inter_linear(image, new_h, new_w)
    diff = np.abs(out.transpose(1, 2, 0) * 255.0 - expected)                # in 0..255 units
    # Only float32 rounding of the source coordinate (OpenCV computes it in float32 too) remains:
    # at most ~5e-5 px, times this noise image's steepest step (255 per pixel).
    assert diff.max() < 0.05 and diff.mean() < 0.002
    if new_w < shape[1]:  # shrinking: the antialiased resize differs by far more
        pillow = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.Resampling.BILINEAR), np.float64)
        assert np.abs(pillow - expected[dh:dh + new_h, dw:dw + new_w]).mean() > 5.0


def test_mixup_weights_and_probability():
    a, b = np.zeros((3, 4, 4), np.float32), np.ones((3, 4, 4), np.float32)
    boxes_a, boxes_b = np.array([[0, 0, 1, 1, 0.0]]), np.array([[1, 1, 2, 2, 1.0], [0, 0, 3, 3, 2.0]])
    mixed_count = 0
    for seed in range(200):
        image, boxes = D.mixup(a, boxes_a, b, boxes_b, np.random.default_rng(seed))
        if len(boxes) == 3:
            lam = boxes[0, 5]
            mixed_count += 1
            assert np.allclose(image, 1 - lam) and np.allclose(boxes[1:, 5], 1 - lam)
        else:
            assert np.array_equal(image, a) and boxes[0, 5] == 1.0
    assert 70 < mixed_count < 130


def test_train_set_is_deterministic_and_collates(voc_root):
    records = D.voc_records(voc_root, "train")
    dataset = D.DetectionTrainSet(records, num_classes=20, img_size=64, seed=3)
    first, again = dataset[0], dataset[0]
    assert torch.equal(first["image"], again["image"])
    dataset.set_epoch(1)
    assert any(not torch.equal(dataset[i]["image"], D.DetectionTrainSet(records, 20, 64, seed=3)[i]["image"])
               for i in range(2))
    batch = D.train_collate([dataset[0], dataset[1]])
    assert batch["image"].shape == (2, 3, 64, 64)
    assert [tuple(t.shape) for t in batch["labels"]] == [(2, 8, 8, 3, 26), (2, 4, 4, 3, 26), (2, 2, 2, 3, 26)]
    assert [tuple(t.shape) for t in batch["boxes"]] == [(2, 150, 4)] * 3
    assert sum(float(t[..., 4].sum()) for t in batch["labels"]) >= 2
    evaluation = D.DetectionEvalSet(D.voc_records(voc_root, "test"), img_size=64)
    eval_batch = D.eval_collate([evaluation[0], evaluation[1]])
    assert eval_batch["orig_size"].tolist() == [[48, 64], [40, 40]] and eval_batch["index"].tolist() == [0, 1]
    with pytest.raises(UserError, match="multiple of 32"):
        D.DetectionTrainSet(records, 20, img_size=50)


def test_digits_detection_set():
    records = D.digit_detection_records("train", 30, seed=1)
    again = D.digit_detection_records("train", 30, seed=1)
    assert all(np.array_equal(a.image, b.image) and np.array_equal(a.boxes, b.boxes) for a, b in zip(records, again))
    other = D.digit_detection_records("train", 30, seed=2)
    assert not all(np.array_equal(a.image, b.image) for a, b in zip(records, other))
    counts = [len(r.boxes) for r in records]
    assert min(counts) >= 1 and max(counts) <= 3 and len(set(counts)) > 1
    for record in records:
        assert record.image.shape == (64, 64, 3)
        for (x1, y1, x2, y2), label in zip(record.boxes.astype(int), record.labels):
            region = record.image[y1:y2 + 1, x1:x2 + 1, 0]
            assert region[:, 0].any() and region[:, -1].any() and region[0].any() and region[-1].any()
            assert 0 <= label <= 9
    # The three splits draw from disjoint digit images (the 1,797 digits are all distinct).
    pools = {split: {p.tobytes() for p in D.digit_pool(split)[0]} for split in D.DIGIT_SPLITS}
    assert sum(len(p) for p in pools.values()) == 1797
    assert not (pools["train"] & pools["val"]) and not (pools["train"] & pools["test"]) \
        and not (pools["val"] & pools["test"])
    # A digit drawn at scale 2 on a test canvas is a test-pool digit, pixel for pixel.
    test_pool = D.digit_pool("test")[0]
    for record in D.digit_detection_records("test", 20, seed=1, scales=(2,)):
        for (x1, y1, x2, y2) in record.boxes.astype(int):
            crop = record.image[y1:y2 + 1, x1:x2 + 1, 0]
            matches = 0
            for digit in test_pool:
                big = np.kron(digit, np.ones((2, 2), dtype=np.uint8))
                ys, xs = np.nonzero(big)
                tight = big[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
                matches += tight.shape == crop.shape and np.array_equal(np.maximum(tight, crop), crop)
            assert matches >= 1


def test_digits_are_trained_without_mirror_or_mixup_and_at_the_scales_asked(monkeypatch):
    from Detection import task

    data = task.load_detection_data("digits", canvas=32, digits_counts={"train": 40, "val": 4, "test": 4},
                                    digits_scales=(3,))
    assert (data.flip, data.mixup) == (False, False)
    # One 24 px digit per 32 px canvas: a second one never fits beside it.
    assert all(len(r.boxes) == 1 for r in data.train)
    sides = np.concatenate([r.boxes[:, 2:] - r.boxes[:, :2] + 1 for r in data.train])
    assert 16 < sides.max() <= 24
    flips = []
    monkeypatch.setattr(D, "random_flip", lambda image, boxes, rng: flips.append(1) or (image, boxes))
    train = D.DetectionTrainSet(data.train, 10, img_size=32, seed=0, flip=data.flip, mixup_p=0.0)
    for epoch in range(2):
        train.set_epoch(epoch)
        for index in range(len(data.train)):
            item = train[index]
            weights = [t[..., 5][t[..., 4] > 0] for t in item["labels"]]
            assert float(torch.cat(weights).min()) == 1.0                    # never a mixup weight below 1
    assert not flips
    D.DetectionTrainSet(data.train, 10, img_size=32, seed=0)[0]               # the original's default flips
    assert flips


def test_annotation_lists_are_scored_against_the_voc_xml(voc_root, tmp_path):
    """The original's evaluator read VOC2007's XML (difficult flagged, then ignored), never the
    test_annotation.txt it trained beside, which lacks difficult objects: a list's test images are
    scored against the XML where the devkit is there, and said on one line where it is not."""
    jpeg = os.path.join(voc_root, "VOCdevkit", "VOC2007", "JPEGImages")
    listing = tmp_path / "test_annotation.txt"
    listing.write_text(f"{jpeg}/000001.jpg 3,4,40,44,11\n")          # the difficult person left out
    records, note = D.with_voc_ground_truth(D.read_annotation_list(str(listing)), str(listing))
    assert note is None and len(records) == 1
    record = records[0]
    assert record.image_path == f"{jpeg}/000001.jpg"
    assert record.labels.tolist() == [D.VOC_CLASSES.index("dog"), D.VOC_CLASSES.index("person")]
    assert record.difficult.tolist() == [False, True]
    assert np.allclose(record.boxes, [[2, 3, 39, 43], [41, 4, 59, 29]])   # XML's 1-based minus 1
    # no devkit beside the images: the list's boxes, and a line saying so
    plain = tmp_path / "images"
    plain.mkdir()
    Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(plain / "000001.jpg")
    listing.write_text(f"{plain}/000001.jpg 3,4,40,44,11\n")
    records, note = D.with_voc_ground_truth(D.read_annotation_list(str(listing)), str(listing))
    assert len(records[0].boxes) == 1 and "scoring against the list's own boxes" in note
    assert "\n" not in note
    # some images with XML, some without: refused
    listing.write_text(f"{jpeg}/000001.jpg 3,4,40,44,11\n{plain}/000001.jpg 3,4,40,44,11\n")
    with pytest.raises(UserError, match="1 images have a VOC XML"):
        D.with_voc_ground_truth(D.read_annotation_list(str(listing)), str(listing))
