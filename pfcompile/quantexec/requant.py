"""Requantisation: an int32 accumulator to the next layer's ``(sy, zy)`` in float32.

An integer layer accumulates ``acc = sum((x - zx) * w) + bias`` in int32, whose
real value is ``acc * sx * sw[c]``. The next layer wants it quantised to
``(sy, zy)``: ``y = clip(rint(fma(float32(acc), M[c], offset[c])), qmin, qmax)`` with
``M[c] = float32(sx * sw[c] / sy)``, ``rint`` rounding half to even (the
rounding ONNX ``QuantizeLinear`` specifies) and ``fma`` rounding once.

``offset[c] = zy + (b[c] - bias[c] * sx * sw[c]) / sy``: the zero point plus what is left of
a float bias ``b`` after its integer part ``bias[c] = round(b[c] / (sx * sw[c]))`` went into
the accumulator (:func:`requant_offset`). Rounding the whole float bias into accumulator
units moved every output by up to half an accumulator unit (``M / 2`` steps) and flipped
0.1 % of a MobileNetV2's outputs per layer against the exact reference, which compounded to
3-8 % of its logits' range (pfcompile's quantize pass wrote float biases before 2026-12-05;
it now writes int32 biases in accumulator units, ONNX's QDQ bias, whose remainder is zero:
the offset is then the zero point, one value per layer, which the library stores in a few bits).

Why float32 and not an int32 mantissa with an int64 product and shift: on x86 a
vector of int64 products costs ~3 ``vpmuludq`` and a dozen shifts and compares
per 4 lanes, and it was 80 % of the time of a 16->96 1x1 conv (3.8 ms vs 0.7 ms
on 112x112, measured in one process). Float32 takes a convert, a multiply and a
round per 8 lanes on AVX2 (``vcvtdq2ps``, ``vmulps``, ``vroundps``) and per 4 on
NEON (``scvtf``, ``fmul``, ``frinti``), the same instructions and IEEE results on
every target, so one numpy function (:func:`requantize_ref`) is bit-exact for all
kernels. It differs from the exact product only where ``acc * M`` lies within
float32 rounding (2**-24 relative) of a half-integer tie, i.e. by at most one
step on such ties, as onnxruntime's own requantisation (also float32) does.
"""

from __future__ import annotations

import numpy as np

from pfcompile.errors import PassError

__all__ = ["dtype_range", "fma_f32", "requant_offset", "requant_scale", "requantize_ref"]


def dtype_range(dtype: str) -> tuple[int, int]:
    """Saturation bounds of an integer activation dtype."""
    info = np.iinfo(np.dtype(dtype))
    return int(info.min), int(info.max)


def requant_scale(multipliers: np.ndarray) -> np.ndarray:
    """Per-channel float32 ``M``, checked: positive and finite (a ratio of scales;
    anything else means broken scales)."""
    m = np.asarray(multipliers, dtype=np.float64).reshape(-1)
    for i, v in enumerate(m):
        if not np.isfinite(v) or v <= 0.0 or v >= 2.0**30:
            raise PassError(f"requantisation multiplier {v!r} (channel {i}) is not in (0, 2**30): "
                            "check the quantisation scales")
    return m.astype(np.float32)


def requant_offset(zy: int, bias_real: np.ndarray | None, bias_acc: np.ndarray,
                   acc_scale: np.ndarray, sy: float) -> np.ndarray:
    """Per-channel float32 ``offset = zy + (bias_real - bias_acc * acc_scale) / sy``: the
    output zero point plus the part of the real bias ``bias_real`` that the integer bias
    ``bias_acc`` (accumulator units of ``acc_scale = sx * sw``) leaves out; in float64."""
    n = np.asarray(bias_acc).size
    if bias_real is None:
        return np.full(n, zy, np.float32)
    rest = (np.asarray(bias_real, np.float64).reshape(-1)
            - np.asarray(bias_acc, np.float64).reshape(-1) * np.asarray(acc_scale, np.float64).reshape(-1))
    return (float(zy) + rest / float(sy)).astype(np.float32)


def fma_f32(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """``fma(a, b, c)`` of float32 arrays, rounded once to float32 (what ``llvm.fma`` gives):
    computed in float64, where the product of two float32 is exact; the sum's rounding to
    float64 and then to float32 differs from one rounding only when the float64 sum lands
    exactly on a float32 tie (about 2**-29 of random cases)."""
    return (np.asarray(a, np.float32).astype(np.float64) * np.asarray(b, np.float32).astype(np.float64)
            + np.asarray(c, np.float32).astype(np.float64)).astype(np.float32)


def requantize_ref(acc: np.ndarray, scale: np.ndarray, offset, qmin: int, qmax: int,
                   axis: int = 1) -> np.ndarray:
    """Numpy reference of every kernel's epilogue:
    ``clip(rint(fma(float32(acc), scale, offset)), qmin, qmax)`` (float32, one rounding in
    the fma, then half to even).

    ``scale`` and ``offset`` (a scalar zero point or per-channel, :func:`requant_offset`)
    broadcast along ``axis`` of ``acc`` (the channel axis); ``acc`` must fit int32, as the
    kernels' accumulators do.
    """
    acc = np.asarray(acc, dtype=np.int64)
    shape = [1] * acc.ndim
    shape[axis] = -1
    s = np.asarray(scale, dtype=np.float32).reshape(shape)
    o = np.asarray(offset, dtype=np.float32)
    if o.ndim:
        o = o.reshape(shape)
    q = np.rint(fma_f32(acc.astype(np.float32), s, o))
    return np.clip(q, qmin, qmax).astype(np.int64)
