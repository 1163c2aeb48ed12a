"""Labelled data for the real-model suite: rendered text lines for the PP-OCR
text-direction classifier (``ppocr_cls``: 0 = upright, 1 = rotated 180 degrees).

No OCR data set can be downloaded on these machines, so the images are made here:
a random string of letters and digits is drawn with PIL (the TrueType fonts found on
the machine, else PIL's built-in font) at a random size, colour and margin, with
light blur and noise, then rotated 180 degrees for label 1 and preprocessed exactly
as RapidOCR feeds the classifier (``rapidocr_onnxruntime/ch_ppocr_cls/text_cls.py``,
``TextClassifier.resize_norm_img`` with ``cls_image_shape: [3, 48, 192]``):

* resize to height 48 and width ``min(192, ceil(48 * w / h))`` with OpenCV's
  ``cv2.resize`` (bilinear, ``INTER_LINEAR``) on the uint8 image;
* ``/ 255``, ``- 0.5``, ``/ 0.5`` (so [-1, 1]), HWC -> CHW;
* zero-pad on the right to width 192 (zero is mid-grey after normalisation).

OpenCV itself is not a dependency of pfcompile (about 60 MB, for one resize), so
:func:`cv2_resize_linear` reimplements its uint8 ``INTER_LINEAR`` path in numpy: the
same pixel-centre mapping and border clamping, 11-bit fixed-point coefficients, the
vertical pass as OpenCV's SIMD kernel rounds it, and its switch to 2x2 area averaging
for an exact 2x reduction. Checked against opencv-python-headless 5.1.0 (AVX2 build)
on 2,000 random sizes and images (27 million output pixels, up- and down-scaling, 1 and
3 channels): equal on every pixel. ``tests/test_realdata.py`` repeats the check when
``cv2`` is importable.

Splits are deterministic: split ``s`` of seed ``k`` draws from
``numpy.random.default_rng([k, index of s])``, so train / calib / val / test never
share a random stream and any one of them can be regenerated alone. Which fonts are
available changes the images; :func:`font_paths` lists what was used and the
``.npz`` files record it (``fonts``). Text layout uses PIL's basic engine (not raqm),
so the same fonts give the same pixels on any machine.
"""

from __future__ import annotations

import json
import math
import string
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "CLS_SHAPE",
    "OCR_CLS_SPLITS",
    "OcrClsConfig",
    "classifier_top1",
    "cls_preprocess",
    "cv2_resize_linear",
    "font_paths",
    "make_ocr_cls_splits",
    "ocr_cls_samples",
    "ocr_suite_inputs",
    "parse_split_sizes",
    "render_text_line",
]

CLS_SHAPE = (3, 48, 192)
#: split name -> default size (val feeds the search and its confirmation; test is never given)
OCR_CLS_SPLITS: dict[str, int] = {"train": 2000, "calib": 64, "val": 1000, "test": 2000}
_SPLIT_INDEX = {"train": 0, "calib": 1, "val": 2, "test": 3}

_FONT_DIRS = ("/usr/share/fonts/truetype/dejavu", "/usr/share/fonts/truetype/liberation",
              "/usr/share/fonts/truetype/liberation2", "/usr/share/fonts/truetype/freefont")
_SKIP_FONTS = ("Math", "ExtraLight")   # symbol font; hairline strokes vanish at 48 px
_CHARS = string.ascii_lowercase * 3 + string.ascii_uppercase + string.digits


# ----------------------------------------------------------------------------- preprocessing
def _axis_coeffs(src: int, dst: int, clamp: bool) -> tuple[np.ndarray, np.ndarray]:
    """Source index and 11-bit weight pair per destination index, as OpenCV's
    ``resize`` computes them for ``INTER_LINEAR`` (float32 arithmetic, then
    ``saturate_cast<short>(w * 2048)`` with round-half-even). Along x (``clamp``)
    a position past the border takes the border pixel with weights (1, 0); along y
    OpenCV keeps the weights and clamps the row indices instead."""
    scale = src / dst                                    # 1 / inv_scale, in double
    d = np.arange(dst, dtype=np.float64)
    f = ((d + 0.5) * scale - 0.5).astype(np.float32)
    s = np.floor(f).astype(np.int64)
    f = (f - s.astype(np.float32)).astype(np.float32)
    if clamp:
        lo = s < 0
        f[lo], s[lo] = 0, 0
        hi = s >= src - 1
        f[hi], s[hi] = 0, src - 1
    w0 = np.rint((np.float32(1) - f) * np.float32(2048)).astype(np.int64)
    w1 = np.rint(f * np.float32(2048)).astype(np.int64)
    return s, np.stack([w0, w1], axis=1)


def cv2_resize_linear(img: np.ndarray, width: int, height: int) -> np.ndarray:
    """``cv2.resize(img, (width, height))`` (``INTER_LINEAR``) for a uint8 image
    (H, W) or (H, W, C), in numpy (see the module docstring for how close)."""
    if img.dtype != np.uint8:
        raise TypeError(f"cv2_resize_linear takes uint8 images, got {img.dtype}")
    h, w = img.shape[:2]
    if (h, w) == (height, width):
        return img.copy()
    a = img.astype(np.int64)
    if w == 2 * width and h == 2 * height:               # OpenCV switches to INTER_AREA
        s = a[0::2, 0::2] + a[0::2, 1::2] + a[1::2, 0::2] + a[1::2, 1::2]
        return ((s + 2) >> 2).astype(np.uint8)
    sx, ax = _axis_coeffs(w, width, clamp=True)
    sy, ay = _axis_coeffs(h, height, clamp=False)
    sx1 = np.minimum(sx + 1, w - 1)
    axb = ax.reshape((1, width) + (1,) * (a.ndim - 2) + (2,))
    rows = a[:, sx] * axb[..., 0] + a[:, sx1] * axb[..., 1]          # (h, width[, c]) x 2048
    r0, r1 = rows[np.clip(sy, 0, h - 1)], rows[np.clip(sy + 1, 0, h - 1)]
    b = ay.reshape((height, 1) + (1,) * (a.ndim - 2) + (2,))
    # VResizeLinearVec_32s8u: (mulhi(r0 >> 4, b0) + mulhi(r1 >> 4, b1) + 2) >> 2
    v = (((r0 >> 4) * b[..., 0]) >> 16) + (((r1 >> 4) * b[..., 1]) >> 16)
    return np.clip((v + 2) >> 2, 0, 255).astype(np.uint8)


def cls_preprocess(img: np.ndarray, shape: Sequence[int] = CLS_SHAPE) -> np.ndarray:
    """RapidOCR's ``TextClassifier.resize_norm_img``: a uint8 (H, W, 3) image ->
    float32 (3, 48, 192) in [-1, 1], right-padded with zeros."""
    c, th, tw = shape
    h, w = img.shape[:2]
    ratio = w / float(h)
    rw = min(math.ceil(th * ratio), tw)           # resized width, as in resize_norm_img
    r = cv2_resize_linear(img, rw, th).astype(np.float32)
    r = r[np.newaxis] / 255 if c == 1 else r.transpose(2, 0, 1) / 255
    r -= 0.5
    r /= 0.5
    out = np.zeros((c, th, tw), dtype=np.float32)
    out[:, :, :rw] = r
    return out


# ----------------------------------------------------------------------------- rendering
def font_paths(dirs: Iterable[str] = _FONT_DIRS) -> list[str]:
    """TrueType fonts found under ``dirs`` (sorted; symbol and hairline fonts left out)."""
    found: list[str] = []
    for d in dirs:
        p = Path(d)
        if p.is_dir():
            found += [str(f) for f in sorted(p.glob("*.ttf"))
                      if not any(s in f.name for s in _SKIP_FONTS)]
    return found


@dataclass(frozen=True)
class OcrClsConfig:
    """How text lines are drawn (ranges are sampled uniformly)."""

    chars: tuple[int, int] = (4, 24)          # string length
    font_px: tuple[int, int] = (18, 72)       # font size in pixels
    margin_y: tuple[float, float] = (0.02, 0.15)   # vertical margin, fraction of the line height
    margin_x: tuple[float, float] = (0.0, 0.4)     # horizontal margin, fraction of the line height
    min_contrast: int = 90                    # |text - background| grey levels
    p_dark_background: float = 0.15
    p_color: float = 0.3
    blur: tuple[float, float] = (0.0, 1.2)    # Gaussian blur radius (pixels)
    noise: tuple[float, float] = (0.0, 8.0)   # Gaussian noise sigma (grey levels)
    max_tilt_deg: float = 2.0


def _text(rng: np.random.Generator, lo: int, hi: int) -> str:
    n = int(rng.integers(lo, hi + 1))
    out = []
    for i in range(n):
        if 0 < i < n - 1 and out[-1] != " " and rng.random() < 0.12:
            out.append(" ")
        else:
            out.append(_CHARS[int(rng.integers(len(_CHARS)))])
    return "".join(out)


def _colors(rng: np.random.Generator, cfg: OcrClsConfig) -> tuple[tuple[int, ...], tuple[int, ...]]:
    dark_bg = rng.random() < cfg.p_dark_background
    bg_lvl = int(rng.integers(0, 90)) if dark_bg else int(rng.integers(170, 256))
    gap = int(rng.integers(cfg.min_contrast, 200))
    fg_lvl = int(np.clip(bg_lvl + gap if dark_bg else bg_lvl - gap, 0, 255))
    if rng.random() < cfg.p_color:
        tint = rng.integers(-40, 41, size=3)
        bg = tuple(int(v) for v in np.clip(bg_lvl + tint, 0, 255))
        fg = tuple(int(v) for v in np.clip(fg_lvl - tint, 0, 255))
        return fg, bg
    return (fg_lvl,) * 3, (bg_lvl,) * 3


def render_text_line(rng: np.random.Generator, fonts: Sequence[str],
                     cfg: OcrClsConfig = OcrClsConfig()) -> np.ndarray:
    """One upright text-line crop, uint8 (H, W, 3), as a detector would cut it."""
    from PIL import Image, ImageDraw, ImageFilter, ImageFont

    size = int(rng.integers(cfg.font_px[0], cfg.font_px[1] + 1))
    k = int(rng.integers(len(fonts) + 1))
    if k == len(fonts):
        font = ImageFont.load_default(size=size)
    else:
        font = ImageFont.truetype(fonts[k], size=size, layout_engine=ImageFont.Layout.BASIC)
    text = _text(rng, *cfg.chars)
    fg, bg = _colors(rng, cfg)
    x0, y0, x1, y1 = font.getbbox(text)
    tw, th = max(1, x1 - x0), max(1, y1 - y0)
    # the line's own height: the font's ascent + descent, so "aaa" and "Aqg" crop alike
    asc, desc = font.getmetrics()
    lh = max(th, asc + desc)
    my = [round(lh * rng.uniform(*cfg.margin_y)) for _ in range(2)]
    mx = [round(lh * rng.uniform(*cfg.margin_x)) for _ in range(2)]
    pad = lh                                               # room for the tilt
    canvas = Image.new("RGB", (tw + mx[0] + mx[1] + 2 * pad, lh + my[0] + my[1] + 2 * pad), bg)
    ImageDraw.Draw(canvas).text((pad + mx[0] - x0, pad + my[0]), text, font=font, fill=fg)
    tilt = float(rng.uniform(-cfg.max_tilt_deg, cfg.max_tilt_deg))
    if tilt:
        canvas = canvas.rotate(tilt, resample=Image.Resampling.BILINEAR, fillcolor=bg)
    canvas = canvas.crop((pad, pad, canvas.width - pad, canvas.height - pad))
    radius = float(rng.uniform(*cfg.blur))
    if radius > 0.3:
        canvas = canvas.filter(ImageFilter.GaussianBlur(radius))
    img = np.asarray(canvas, dtype=np.float32)
    sigma = float(rng.uniform(*cfg.noise))
    img = img + rng.normal(0.0, sigma, size=img.shape).astype(np.float32)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def ocr_cls_samples(n: int, seed: int | Sequence[int] = 0, fonts: Sequence[str] | None = None,
                    cfg: OcrClsConfig = OcrClsConfig()) -> tuple[np.ndarray, np.ndarray]:
    """``n`` preprocessed text lines ``x`` (n, 3, 48, 192) float32 and labels ``y``
    (int64: 0 upright, 1 rotated 180 degrees; balanced, in random order)."""
    rng = np.random.default_rng(seed)
    fonts = font_paths() if fonts is None else list(fonts)
    y = rng.permutation(np.arange(n) % 2).astype(np.int64)
    x = np.empty((n, *CLS_SHAPE), dtype=np.float32)
    for i in range(n):
        img = render_text_line(rng, fonts, cfg)
        if y[i]:
            img = np.ascontiguousarray(img[::-1, ::-1])     # cv2.rotate(img, ROTATE_180)
        x[i] = cls_preprocess(img)
    return x, y


#: RapidOCR's detector normalisation (``NormalizeImage``: ImageNet mean and std on /255)
_DET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)[:, None, None]
_DET_STD = np.array([0.229, 0.224, 0.225], np.float32)[:, None, None]


def _text_scene(rng: np.random.Generator, fonts: Sequence[str], h: int, w: int) -> np.ndarray:
    """A uint8 (h, w, 3) page: one short text line (scaled to fit) on its own background."""
    line = render_text_line(rng, fonts, OcrClsConfig(chars=(3, 8), font_px=(16, 28)))
    lh, lw = line.shape[:2]
    if lw > w or lh > h:
        f = min(w / lw, h / lh)
        line = cv2_resize_linear(line, max(1, int(lw * f)), max(1, int(lh * f)))
        lh, lw = line.shape[:2]
    page = np.empty((h, w, 3), np.uint8)
    page[:] = line[0, 0]                              # the line's background colour
    y, x = int(rng.integers(0, h - lh + 1)), int(rng.integers(0, w - lw + 1))
    page[y:y + lh, x:x + lw] = line
    return page


def ocr_suite_inputs(kind: str, n: int, shape: Sequence[int], seed: int = 0) -> np.ndarray:
    """``n`` inputs (n, *shape) float32 for a PP-OCR model of ``kind``, rendered text
    preprocessed as RapidOCR feeds that model, so the outputs mean something (a detector
    fed noise answers all zeros, which any wrong kernel also matches):

    * ``classifier`` / ``recognizer``: a text-line crop, :func:`cls_preprocess` to
      ``shape`` (the recogniser's ``resize_norm_img`` is the same resize, scale and pad);
    * ``detector``: a page with one text line, ``/255``, ImageNet mean/std
      (``DetResizeForTest`` is a no-op at the page's size)."""
    rng = np.random.default_rng(seed)
    fonts = font_paths()
    c, h, w = shape
    x = np.empty((n, c, h, w), dtype=np.float32)
    for i in range(n):
        if kind == "detector":
            page = _text_scene(rng, fonts, h, w).astype(np.float32).transpose(2, 0, 1) / 255
            x[i] = (page - _DET_MEAN) / _DET_STD
        elif kind in ("classifier", "recognizer"):
            x[i] = cls_preprocess(render_text_line(rng, fonts), shape)
        else:
            raise ValueError(f"no OCR inputs for a model of kind {kind!r}")
    return x


def make_ocr_cls_splits(out_dir: str | Path, sizes: dict[str, int] | None = None,
                        seed: int = 0) -> dict[str, Path]:
    """Write ``<out_dir>/<split>.npz`` (``x``, ``y``) for each split and
    ``<out_dir>/meta.json`` (seed, sizes, the fonts drawn from)."""
    sizes = dict(OCR_CLS_SPLITS if sizes is None else sizes)
    unknown = set(sizes) - set(_SPLIT_INDEX)
    if unknown:
        raise ValueError(f"unknown split(s) {sorted(unknown)}; use {sorted(_SPLIT_INDEX)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fonts = font_paths()
    paths: dict[str, Path] = {}
    for split, n in sizes.items():
        x, y = ocr_cls_samples(n, [seed, _SPLIT_INDEX[split]], fonts)
        p = out / f"{split}.npz"
        np.savez(p, x=x, y=y)
        paths[split] = p
    meta = {"generator": "pfcompile.realdata.ocr_cls_samples", "seed": seed, "sizes": sizes,
            "shape": list(CLS_SHAPE), "labels": {"0": "upright", "1": "rotated 180 degrees"},
            "fonts": [Path(f).name for f in fonts] + ["PIL built-in"]}
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    return paths


def classifier_top1(model: str | Path, x: np.ndarray, y: np.ndarray, batch: int = 64,
                    threads: int = 2) -> float:
    """Top-1 of the ONNX classifier ``model`` (dynamic batch) on ``x``, ``y``, run by
    the reference (:func:`pfcompile.reference.reference_session`)."""
    from pfcompile.reference import reference_session

    sess = reference_session(model, threads=threads)
    name = sess.get_inputs()[0].name
    pred = np.concatenate([sess.run(None, {name: x[i:i + batch]})[0].argmax(1)
                           for i in range(0, len(x), batch)])
    return float((pred == y).mean())


def parse_split_sizes(text: str) -> dict[str, int]:
    """``"train=2000,val=1000"`` -> the size of every split (the defaults of
    :data:`OCR_CLS_SPLITS` for those not named); ValueError naming a bad entry."""
    sizes = dict(OCR_CLS_SPLITS)
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, n = part.partition("=")
        if name not in sizes or not n.isdigit() or int(n) < 1:
            raise ValueError(f"bad split size '{part}': use SPLIT=N (N >= 1) with SPLIT in "
                             f"{sorted(sizes)}")
        sizes[name] = int(n)
    return sizes
