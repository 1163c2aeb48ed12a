"""Requantisation: float scale ratios as fixed-point multiplier and shift.

An integer layer accumulates ``acc = sum((x - zx) * w) + bias`` in int32, whose
real value is ``acc * sx * sw[c]``. The next layer wants it quantised to
``(sy, zy)``: ``y = round(acc * M[c]) + zy`` with ``M[c] = sx * sw[c] / sy``.
``M`` is held as an int32 mantissa ``m0`` in ``[2**30, 2**31)`` and a right
shift ``s`` so that ``M ~= m0 / 2**s``; the product ``acc * m0`` is formed in
int64 and shifted right with round-half-to-even (the rounding ONNX
``QuantizeLinear`` specifies). :func:`requantize_ref` is the numpy reference
the TIR kernels are tested against.
"""

from __future__ import annotations

import math

import numpy as np

from pfcompile.errors import PassError

__all__ = ["MAX_SHIFT", "dtype_range", "fixed_point", "requantize_ref"]

MAX_SHIFT = 62  # acc * m0 must stay within int64; shifts past this yield zero anyway


def dtype_range(dtype: str) -> tuple[int, int]:
    """Saturation bounds of an integer activation dtype."""
    info = np.iinfo(np.dtype(dtype))
    return int(info.min), int(info.max)


def fixed_point(multipliers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel ``(m0 int32, shift int32)`` with ``M ~= m0 * 2**-shift``.

    ``M`` must be positive and below ``2**30`` (a ratio of scales; anything
    larger means broken scales). Tiny ``M`` get ``m0 = 0`` (the output is the
    zero point, exactly as the float computation would round it).
    """
    m = np.asarray(multipliers, dtype=np.float64).reshape(-1)
    m0 = np.zeros(m.shape, dtype=np.int64)
    sh = np.full(m.shape, 31, dtype=np.int64)
    for i, v in enumerate(m):
        if not np.isfinite(v) or v <= 0.0 or v >= 2.0**30:
            raise PassError(f"requantisation multiplier {v!r} (channel {i}) is not in (0, 2**30): "
                            "check the quantisation scales")
        mant, exp = math.frexp(float(v))  # v = mant * 2**exp, mant in [0.5, 1)
        q = round(mant * 2.0**31)
        if q == 2**31:
            q //= 2
            exp += 1
        shift = 31 - exp
        if shift > MAX_SHIFT:  # v < 2**-31: every int32 accumulator rounds to 0
            q, shift = 0, 31
        m0[i], sh[i] = q, shift
    return m0.astype(np.int32), sh.astype(np.int32)


def requantize_ref(acc: np.ndarray, m0: np.ndarray, shift: np.ndarray, zp: int,
                   qmin: int, qmax: int, axis: int = 1) -> np.ndarray:
    """Numpy reference: ``clip(round_half_even(acc * m0 / 2**shift) + zp, qmin, qmax)``.

    ``m0`` and ``shift`` broadcast along ``axis`` of ``acc`` (the channel axis).
    """
    acc = np.asarray(acc, dtype=np.int64)
    shape = [1] * acc.ndim
    shape[axis] = -1
    mm = np.asarray(m0, dtype=np.int64).reshape(shape)
    ss = np.asarray(shift, dtype=np.int64).reshape(shape)
    prod = acc * mm
    q = prod >> ss
    rem = prod - (q << ss)
    half = np.int64(1) << (ss - 1)
    q = q + ((rem > half) | ((rem == half) & ((q & 1) == 1))).astype(np.int64)
    return np.clip(q + zp, qmin, qmax)
