"""Requantisation: an int32 accumulator to the next layer's ``(sy, zy)`` in float32.

An integer layer accumulates ``acc = sum((x - zx) * w) + bias`` in int32, whose
real value is ``acc * sx * sw[c]``. The next layer wants it quantised to
``(sy, zy)``: ``y = clip(rint(float32(acc) * M[c]) + zy, qmin, qmax)`` with
``M[c] = float32(sx * sw[c] / sy)`` and ``rint`` rounding half to even (the
rounding ONNX ``QuantizeLinear`` specifies).

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

__all__ = ["dtype_range", "requant_scale", "requantize_ref"]


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


def requantize_ref(acc: np.ndarray, scale: np.ndarray, zp: int, qmin: int, qmax: int,
                   axis: int = 1) -> np.ndarray:
    """Numpy reference of every kernel's epilogue:
    ``clip(rint(float32(acc) * scale) + zp, qmin, qmax)`` (float32 throughout, half to even).

    ``scale`` broadcasts along ``axis`` of ``acc`` (the channel axis); ``acc`` must fit
    int32, as the kernels' accumulators do.
    """
    acc = np.asarray(acc, dtype=np.int64)
    shape = [1] * acc.ndim
    shape[axis] = -1
    s = np.asarray(scale, dtype=np.float32).reshape(shape)
    f = acc.astype(np.float32) * s
    q = np.rint(f) + np.float32(zp)
    return np.clip(q, qmin, qmax).astype(np.int64)
