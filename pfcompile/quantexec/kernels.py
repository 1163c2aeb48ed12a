"""Integer compute definitions (TE) for quantised conv2d and dense.

Each kernel takes the quantised activation (uint8/int8, zero point ``zx``),
int8 weights, an int32 bias already in accumulator units (with the
``-zx * sum(w)`` correction folded in), and per-channel fixed-point
``(m0, shift)``; it accumulates in int32 and requantises to the next layer's
``(sy, zy)`` with round-half-to-even and saturation to ``[qmin, qmax]`` (which
also applies a fused ReLU / Clip).

When no QuantizeLinear follows the layer (``y_dtype == "float32"``), the same
int32 accumulation ends in a float *dequantise* epilogue instead:
``y = float(acc + bias) * scale[c] + fbias[c]`` with ``scale = sx * sw[c]`` and
the model's float bias, then ``clamp(y, fmin, fmax)`` for a fused ReLU / Clip.
The two per-channel inputs ``m0, shift`` are then float32 ``scale, fbias``. Padding uses ``zx`` so that a padded element
contributes ``(zx - zx) * w = 0``, exactly as the float model's zero padding.

Which kernel runs a layer (and its schedule) is chosen in :mod:`pfcompile.quantexec.kernel_choice`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tvm import te, tirx

__all__ = ["QConvSpec", "QDenseSpec", "epilogue_expr", "epilogue_params", "qconv2d_compute",
           "qdense_compute", "requant_expr"]


@dataclass(frozen=True)
class QConvSpec:
    """Static description of one integer conv2d (NCHW activations, OIHW weights)."""

    n: int
    c: int
    h: int
    w: int
    oc: int
    kh: int
    kw: int
    stride: tuple[int, int]
    padding: tuple[int, int, int, int]  # top, left, bottom, right
    dilation: tuple[int, int]
    groups: int
    x_dtype: str
    y_dtype: str
    zx: int
    zy: int
    qmin: int
    qmax: int
    fmin: float = -math.inf  # float epilogue (y_dtype float32) only: fused ReLU / Clip
    fmax: float = math.inf

    @property
    def oh(self) -> int:
        return (self.h + self.padding[0] + self.padding[2] - self.dilation[0] * (self.kh - 1) - 1) \
            // self.stride[0] + 1

    @property
    def ow(self) -> int:
        return (self.w + self.padding[1] + self.padding[3] - self.dilation[1] * (self.kw - 1) - 1) \
            // self.stride[1] + 1

    @property
    def depthwise(self) -> bool:
        return self.groups == self.c and self.groups == self.oc

    @property
    def macs(self) -> int:
        return self.n * self.oc * self.oh * self.ow * (self.c // self.groups) * self.kh * self.kw


@dataclass(frozen=True)
class QDenseSpec:
    """``y[m, o] = requant(sum_k (x[m, k] - zx) * w[o, k] + bias[o])``."""

    m: int
    k: int
    o: int
    x_dtype: str
    y_dtype: str
    zx: int
    zy: int
    qmin: int
    qmax: int
    fmin: float = -math.inf
    fmax: float = math.inf


def requant_expr(acc, m0, shift, zy: int, qmin: int, qmax: int, out_dtype: str):
    """TIR expression: int32 ``acc`` -> saturated ``out_dtype`` (round half to even).

    ``acc`` (bias included) is int32, so ``acc * m0`` is a 32x32->64 multiply.
    """
    prod = acc.astype("int64") * m0.astype("int64")
    s = shift.astype("int64")
    q = tirx.shift_right(prod, s)
    rem = prod - tirx.shift_left(q, s)
    half = tirx.shift_left(tirx.const(1, "int64"), s - 1)
    up = tirx.Or(rem > half, tirx.And(rem == half, tirx.bitwise_and(q, tirx.const(1, "int64")) == 1))
    q = q + tirx.Select(up, tirx.const(1, "int64"), tirx.const(0, "int64")) + zy
    q = tirx.max(tirx.min(q, tirx.const(qmax, "int64")), tirx.const(qmin, "int64"))
    return q.astype(out_dtype)


def epilogue_params(sp, channels: int) -> tuple[te.Tensor, te.Tensor]:
    """The two per-channel epilogue inputs: int32 ``m0, shift`` (requantise) or float32
    ``scale, fbias`` (float dequantise epilogue, ``sp.y_dtype == "float32"``)."""
    if sp.y_dtype == "float32":
        return (te.placeholder((channels,), "float32", name="scale"),
                te.placeholder((channels,), "float32", name="fbias"))
    return (te.placeholder((channels,), "int32", name="m0"),
            te.placeholder((channels,), "int32", name="shift"))


def epilogue_expr(sp, acc, p0, p1):
    """``acc`` (int32, integer bias included) -> the layer output: :func:`requant_expr` for
    integer outputs, else ``clamp(float(acc) * scale + fbias, fmin, fmax)`` in float32."""
    if sp.y_dtype != "float32":
        return requant_expr(acc, p0, p1, sp.zy, sp.qmin, sp.qmax, sp.y_dtype)
    y = acc.astype("float32") * p0 + p1
    if math.isfinite(sp.fmin):
        y = tirx.max(y, tirx.const(sp.fmin, "float32"))
    if math.isfinite(sp.fmax):
        y = tirx.min(y, tirx.const(sp.fmax, "float32"))
    return y


def qconv2d_compute(sp: QConvSpec):
    """Plain NCHW integer conv2d; returns the TE tensors ``[x, w, bias, m0, shift, y]``."""
    x = te.placeholder((sp.n, sp.c, sp.h, sp.w), sp.x_dtype, name="x")
    icg = sp.c // sp.groups
    ocg = sp.oc // sp.groups
    wt = te.placeholder((sp.oc, icg, sp.kh, sp.kw), "int8", name="w")
    bias = te.placeholder((sp.oc,), "int32", name="bias")
    m0, shift = epilogue_params(sp, sp.oc)
    pt, pl, pb, pr = sp.padding
    hp, wp = sp.h + pt + pb, sp.w + pl + pr
    zx = tirx.const(sp.zx, sp.x_dtype)
    if any(sp.padding):
        xp = te.compute(
            (sp.n, sp.c, hp, wp),
            lambda n, c, i, j: tirx.if_then_else(
                tirx.all(i >= pt, i < pt + sp.h, j >= pl, j < pl + sp.w), x[n, c, i - pt, j - pl], zx),
            name="pad")
    else:
        xp = x
    rc = te.reduce_axis((0, icg), name="rc")
    ry = te.reduce_axis((0, sp.kh), name="ry")
    rx = te.reduce_axis((0, sp.kw), name="rx")
    (sh, sw), (dh, dw) = sp.stride, sp.dilation
    acc = te.compute(
        (sp.n, sp.oc, sp.oh, sp.ow),
        lambda n, o, i, j: te.sum(
            xp[n, (o // ocg) * icg + rc, i * sh + ry * dh, j * sw + rx * dw].astype("int32")
            * wt[o, rc, ry, rx].astype("int32"), axis=[rc, ry, rx]),
        name="acc")
    y = te.compute(
        (sp.n, sp.oc, sp.oh, sp.ow),
        lambda n, o, i, j: epilogue_expr(sp, acc[n, o, i, j] + bias[o], m0[o], shift[o]),
        name="requant")
    return [x, wt, bias, m0, shift, y]


def qdense_compute(sp: QDenseSpec):
    """Integer dense; returns the TE tensors ``[x, w, bias, m0, shift, y]``."""
    x = te.placeholder((sp.m, sp.k), sp.x_dtype, name="x")
    wt = te.placeholder((sp.o, sp.k), "int8", name="w")
    bias = te.placeholder((sp.o,), "int32", name="bias")
    m0, shift = epilogue_params(sp, sp.o)
    rk = te.reduce_axis((0, sp.k), name="rk")
    acc = te.compute(
        (sp.m, sp.o),
        lambda i, j: te.sum(x[i, rk].astype("int32") * wt[j, rk].astype("int32"), axis=rk),
        name="acc")
    y = te.compute(
        (sp.m, sp.o),
        lambda i, j: epilogue_expr(sp, acc[i, j] + bias[j], m0[j], shift[j]),
        name="requant")
    return [x, wt, bias, m0, shift, y]
