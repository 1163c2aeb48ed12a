"""Labelled data for the PP-OCR direction classifier (pfcompile.realdata): RapidOCR's
preprocessing reproduced (OpenCV's bilinear resize in numpy, the resize/pad rule, the
normalisation), a deterministic generator, and the original classifier recognising
the rendered lines."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pfcompile.data import load_npz
from pfcompile.model import TensorSpec
from pfcompile.realdata import (
    CLS_SHAPE,
    classifier_top1,
    cls_preprocess,
    cv2_resize_linear,
    make_ocr_cls_splits,
    ocr_cls_samples,
)
from pfcompile.realmodels import ModelUnavailable, fetch


def test_resize_matches_opencv_rules_by_hand():
    img = np.array([[0, 100], [200, 255]], dtype=np.uint8)
    # same size: a copy
    assert np.array_equal(cv2_resize_linear(img, 2, 2), img)
    # an exact 2x reduction is a 2x2 average, rounded half up ((555 + 2) >> 2 = 139)
    assert cv2_resize_linear(img, 1, 1).tolist() == [[139]]
    # 2x enlargement along x: pixel centres at -0.25 (clamped to the border), 0.25, 0.75,
    # 1.25 (clamped): weights 3/4, 1/4 in between
    row = np.array([[0, 100]], dtype=np.uint8)
    assert cv2_resize_linear(row, 4, 1).tolist() == [[0, 25, 75, 100]]
    # colour images keep their channels apart
    rgb = np.stack([img, 255 - img, img // 2], axis=2)
    out = cv2_resize_linear(rgb, 3, 5)
    assert out.shape == (5, 3, 3) and out.dtype == np.uint8
    for c in range(3):
        assert np.array_equal(out[..., c], cv2_resize_linear(np.ascontiguousarray(rgb[..., c]), 3, 5))
    with pytest.raises(TypeError, match="uint8"):
        cv2_resize_linear(img.astype(np.float32), 4, 4)


def test_resize_equals_opencv_where_installed():
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(0)
    for t in range(60):
        h, w = int(rng.integers(2, 160)), int(rng.integers(2, 700))
        if t % 10 == 0:
            h, w = 96, 2 * int(rng.integers(1, 96))       # OpenCV's 2x area path
        img = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        rw = min(192, int(np.ceil(48 * w / h)))
        assert np.array_equal(cv2_resize_linear(img, rw, 48), cv2.resize(img, (rw, 48))), (h, w)


def test_preprocess_is_rapidocrs_resize_norm_img():
    white = np.full((24, 48, 3), 255, dtype=np.uint8)        # ratio 2 -> width 96
    x = cls_preprocess(white)
    assert x.shape == CLS_SHAPE and x.dtype == np.float32
    assert np.all(x[:, :, :96] == 1.0) and np.all(x[:, :, 96:] == 0.0)   # zero (grey) pad
    black = np.zeros((10, 1000, 3), dtype=np.uint8)          # ratio 100 -> squeezed to 192
    assert np.all(cls_preprocess(black) == -1.0)
    # ceil: 48 * 37 / 20 = 88.8 -> 89 columns of image
    x = cls_preprocess(np.full((20, 37, 3), 255, dtype=np.uint8))
    assert np.all(x[:, :, 88] == 1.0) and np.all(x[:, :, 89:] == 0.0)
    # HWC (B, G, R order kept as given) -> CHW
    img = np.zeros((48, 48, 3), dtype=np.uint8)
    img[..., 2] = 255
    x = cls_preprocess(img)
    assert np.all(x[2, :, :48] == 1.0) and np.all(x[0, :, :48] == -1.0)


def test_generator_is_deterministic_and_balanced():
    x1, y1 = ocr_cls_samples(6, [7, 2])
    x2, y2 = ocr_cls_samples(6, [7, 2])
    x3, _ = ocr_cls_samples(6, [8, 2])
    assert np.array_equal(x1, x2) and np.array_equal(y1, y2)
    assert not np.array_equal(x1, x3)
    assert x1.shape == (6, *CLS_SHAPE) and x1.dtype == np.float32
    assert y1.dtype == np.int64 and sorted(y1.tolist()) == [0, 0, 0, 1, 1, 1]
    assert x1.min() >= -1.0 and x1.max() <= 1.0
    # text is drawn: every image has dark and light pixels (contrast >= 90 grey levels)
    assert all(float(np.ptp(x[:, :, :40])) > 0.5 for x in x1)


def test_splits_load_as_pfcompile_data(tmp_path):
    paths = make_ocr_cls_splits(tmp_path, {"val": 4, "test": 2}, seed=3)
    assert sorted(paths) == ["test", "val"]
    spec = [TensorSpec("x", (1, *CLS_SHAPE), "float32")]
    ds = load_npz(paths["val"], spec)
    assert len(ds) == 4 and ds.labels is not None and ds.labels.tolist().count(1) == 2
    x, y = ocr_cls_samples(2, [3, 3])                   # the test split is stream [seed, 3]
    z = np.load(paths["test"])
    assert np.array_equal(z["x"], x) and np.array_equal(z["y"], y)
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["seed"] == 3 and meta["sizes"] == {"val": 4, "test": 2}
    assert meta["fonts"][-1] == "PIL built-in"
    with pytest.raises(ValueError, match="unknown split"):
        make_ocr_cls_splits(tmp_path, {"holdout": 3})


def test_original_classifier_recognises_the_lines():
    try:
        model = fetch("ppocr_cls")
    except ModelUnavailable as exc:
        pytest.skip(f"suite model 'ppocr_cls' unavailable: {exc}")
    x, y = ocr_cls_samples(96, [11, 0])
    # measured 0.98-0.99 on samples of 400-2000 (tools/make_ocr_cls_data.py)
    assert classifier_top1(model, x, y) >= 0.93
