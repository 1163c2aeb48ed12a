"""Integer compute definitions (TE) for quantised conv2d and dense.

Each kernel takes the quantised activation (uint8/int8, zero point ``zx``),
int8 weights, an int32 bias already in accumulator units (with the
``-zx * sum(w)`` correction folded in), and two per-channel float32 inputs
``(scale, offset)``; it accumulates in int32 and ends in one of two epilogues:

* requantise (``y_dtype`` uint8/int8): ``y = clip(rint(fma(float32(acc), scale[c],
  offset[c])), qmin, qmax)`` (computed as ``rint(clip(...))``, see :func:`requant_expr`) with ``scale = sx * sw[c] / sy`` and ``offset`` the zero point
  plus the float bias's fraction of an accumulator unit in output steps
  (:func:`~pfcompile.quantexec.requant.requant_offset`; round half to even; the bounds
  also apply a fused ReLU / Clip). See :mod:`pfcompile.quantexec.requant` for why float32.
* dequantise (``y_dtype == "float32"``, no QuantizeLinear after the layer):
  ``y = clamp(fma(float32(acc), scale[c], offset[c]), fmin, fmax)`` with
  ``scale = sx * sw[c]`` and ``offset`` the model's float bias.

With ``shared_params`` in the spec, the three per-channel inputs are arrays shared by every
layer of a library (:class:`ChannelParams`): the kernel reads its channels at a run-time
offset ``base`` (a scalar argument before the output), so a library stores them as three
arrays per epilogue kind, not three constants per layer.

Padding uses ``zx`` so that a padded element contributes ``(zx - zx) * w = 0``,
exactly as the float model's zero padding.

Activations between integer layers are either plain ``NCHW`` or channel-blocked
``NCHW8c``, stored ``[N, C/8, H*W, 8]``: the 8 channels of one pixel contiguous, so a
kernel vectorised over channels loads and stores 8 bytes per pixel, and the pixels of a
block flat, so a 1x1 kernel tiles them across rows. The TE computes index a blocked
tensor as ``[N, C/8, H, W, 8]`` (:func:`te_shape`); :func:`io_layouts` then maps the
kernel's input and output buffers to the stored shapes (:func:`act_shape`).
:func:`pfcompile.quantexec.lower.lower_qdq` picks the layout of each tensor (blocked
between kernels that take it, plain at float ops).

Which kernel runs a layer (and its schedule) is chosen in :mod:`pfcompile.quantexec.kernel_choice`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tvm import te, tirx

__all__ = [
    "BLOCK",
    "ChannelParams",
    "QConvSpec",
    "QDenseSpec",
    "act_shape",
    "channel_params",
    "clamp_cast",
    "epilogue_expr",
    "fma",
    "io_layouts",
    "nblocks",
    "out_compute",
    "padded_read",
    "partial_block",
    "qconv2d_compute",
    "qdense_compute",
    "requant_expr",
    "requant_int32",
    "round_half_even",
    "round_small",
    "split_cast",
    "te_shape",
]

BLOCK = 8  # channels per block of the NCHW8c activation layout
BLOCKED = f"NCHW{BLOCK}c"


def nblocks(c):
    """Blocks of 8 channels for ``c`` channels: ``ceil(c / 8)``; ``c`` may be a TIR
    expression (a kernel shared by layers of several channel counts, all multiples of 8)."""
    if isinstance(c, int):
        return -(-c // BLOCK)
    from tvm.sym.analyzer import Analyzer

    return Analyzer().simplify(tirx.floordiv(c + (BLOCK - 1), BLOCK))


def partial_block(c) -> bool:
    """Whether ``c`` channels leave a partly filled last block (a symbolic count never does:
    shared kernels take multiples of 8 only)."""
    return isinstance(c, int) and c % BLOCK != 0


def act_shape(n: int, c: int, h: int, w: int, layout: str) -> tuple[int, ...]:
    """Stored shape of an activation in ``layout``: ``[N, C, H, W]`` or ``[N, C/8, H*W, 8]``."""
    if layout == "NCHW":
        return (n, c, h, w)
    return (n, -(-c // BLOCK), h * w, BLOCK)


def te_shape(n: int, c: int, h: int, w: int, layout: str) -> tuple[int, ...]:
    """Shape a TE compute indexes an activation with: ``[N, C, H, W]`` or
    ``[N, C/8, H, W, 8]`` (mapped to :func:`act_shape` by :func:`io_layouts`)."""
    if layout == "NCHW":
        return (n, c, h, w)
    return (n, nblocks(c), h, w, BLOCK)


def _io_map(layout: str, h: int, w: int, flat: bool, blocked_view: bool = False):
    """Index map from a TE view of an activation to its stored shape. ``flat``: the TE
    view is ``h = 1, w = H*W`` (a 1x1 kernel that tiles pixels across rows).
    ``blocked_view``: an NCHW tensor that the TE views blocked (``[N, C/8, H, W, 8]``)."""
    if layout == "NCHW" and blocked_view:
        if flat:
            return lambda n, b, i, p, c: (n, b * BLOCK + c, p // w, p % w)
        return lambda n, b, i, j, c: (n, b * BLOCK + c, i, j)
    if layout == "NCHW":
        if not flat:
            return None
        return lambda n, c, i, p: (n, c, p // w, p % w)
    if flat:
        return lambda n, b, i, p, c: (n, b, p, c)
    return lambda n, b, i, j, c: (n, b, i * w + j, c)


def io_layouts(sch, sp, x_block: str, flat: bool = False, y_flat: bool | None = None,
               y_blocked_view: bool = False) -> None:
    """Map the ``x`` buffer (read by block ``x_block``) and the ``requant`` output buffer of a
    scheduled kernel for ``sp`` from their TE views to the stored activation shapes.
    ``flat`` / ``y_flat``: the TE views the input / output as a ``1 x H*W`` image (a 1x1
    stride-1 conv reads and writes flat pixels; a conv tiling its output pixels across rows
    writes them); ``y_flat`` defaults to ``flat``. ``y_blocked_view``: the TE computes an
    NCHW output blocked (:func:`out_compute` of a kernel shared across channel counts)."""
    y_flat = flat if y_flat is None else y_flat
    for buf, block, layout, h, w, fl, bv in (
            ("x", x_block, sp.x_layout, sp.h, sp.w, flat, False),
            ("requant", "requant", sp.y_layout, sp.oh, sp.ow, y_flat, y_blocked_view)):
        imap = _io_map(layout, h, w, fl, bv)
        if imap is not None:
            sch.transform_layout(sch.get_sblock(block), buf, imap)


def padded_read(sp, x, n, b, c, i, j, pad_value):
    """Channel ``b * 8 + c``, row ``i - pt``, column ``j - pl`` of the input ``x`` of ``sp``
    (a :func:`te_shape` view in ``sp.x_layout``), or ``pad_value`` outside it. The condition tests channels only
    when ``sp.c`` is not a multiple of 8, so that a loop over ``c`` vectorises with one
    uniform branch per pixel."""
    pt, pl = sp.padding[0], sp.padding[1]
    conds = []
    if pt or sp.padding[2]:
        conds += [i >= pt, i < pt + sp.h]
    if pl or sp.padding[3]:
        conds += [j >= pl, j < pl + sp.w]
    if sp.x_layout == "NCHW":
        v = x[n, tirx.min(b * BLOCK + c, sp.c - 1) if partial_block(sp.c) else b * BLOCK + c,
              i - pt, j - pl]
    else:
        v = x[n, b, i - pt, j - pl, c]
    if partial_block(sp.c):
        conds.append(b * BLOCK + c < sp.c)
    return tirx.if_then_else(tirx.all(*conds), v, pad_value) if conds else v


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
    x_layout: str = "NCHW"   # NCHW | NCHW8c (see act_shape / te_shape)
    y_layout: str = "NCHW"
    shared_params: bool = False  # per-channel inputs at an offset in shared arrays
    #: > 0: one kernel for several spatial sizes (blocked.conv_func), the output sizes are
    #: arguments; a flat 1x1 kernel's parallel task covers this many register tiles
    spatial: int = 0
    out_hw: tuple | None = None  # (oh, ow) as TIR expressions (a spatially shared kernel)

    @property
    def oh(self) -> int:
        if self.out_hw is not None:
            return self.out_hw[0]
        return (self.h + self.padding[0] + self.padding[2] - self.dilation[0] * (self.kh - 1) - 1) \
            // self.stride[0] + 1

    @property
    def ow(self) -> int:
        if self.out_hw is not None:
            return self.out_hw[1]
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
    shared_params: bool = False


def requant_expr(acc, scale, offset, qmin: int, qmax: int, out_dtype: str):
    """TIR expression: int32 ``acc`` -> ``clip(rint(fma(float32(acc), scale, offset)), qmin,
    qmax)`` as ``out_dtype`` (round half to even; :func:`~pfcompile.quantexec.requant.
    requantize_ref` is its numpy twin).

    Computed as ``rint(clip(f, qmin, qmax))`` (the same for integer bounds: rounding is
    monotone and keeps integers) with the rounding done by :func:`round_small`, an add
    (``vaddps``) where ``vroundps`` + ``vcvttps2dq`` took 7 % of a 16->96 1x1 conv at
    112x112 on AVX2 (AMD Zen, one thread; ``llvm.lrint`` was scalarised, slower still)."""
    return requant_int32(acc, scale, offset, qmin, qmax).astype(out_dtype)


def requant_int32(acc, scale, offset, qmin: int, qmax: int):
    """:func:`requant_expr` before its cast to 8 bits (int32 in ``[qmin, qmax]``)."""
    f = fma(acc.astype("float32"), scale, offset)
    f = tirx.max(tirx.min(f, tirx.const(float(qmax), "float32")), tirx.const(float(qmin), "float32"))
    return round_small(f)


#: 1.5 * 2**23: float32 values in [2**23, 2**24) are the integers (ulp 1); the magic's
#: halfway placement keeps ``f + MAGIC`` there for |f| < 2**22
_MAGIC = 12582912.0
_MAGIC_BITS = 0x4B400000  # its bits


def round_small(f):
    """``int32(rint(f))`` for float32 ``f`` with ``|f| < 2**22`` (a clamped requantised value):
    ``f + 1.5 * 2**23`` is rounded by the add itself to an integer, half to even (IEEE
    round-to-nearest-even, and the magic is even), and that integer sits in the low
    mantissa bits: ``bits(f + MAGIC) - bits(MAGIC)``. For an 8-bit output LLVM keeps only
    the low byte of the bits (the subtraction drops out)."""
    return (tirx.reinterpret("int32", f + tirx.const(_MAGIC, "float32"))
            - tirx.const(_MAGIC_BITS, "int32"))


def fma(a, b, c):
    """``a * b + c`` rounded once (``llvm.fma``: ``vfmadd`` on x86 with FMA, ``fmla`` on
    AArch64), so that the result does not depend on whether LLVM contracts a multiply and an
    add (:func:`~pfcompile.quantexec.requant.fma_f32` is its numpy twin)."""
    return tirx.call_llvm_pure_intrin("float32", "llvm.fma", a, b, c)


def round_half_even(f):
    """``rint(f)`` for float32 ``f``: ``llvm.roundeven`` (``vroundps $8`` on x86, ``frintn``
    on AArch64).

    Why not ``tirx.nearbyint``: TVM's vectoriser does not vectorise it (no
    ``TVectorizable``), so an epilogue with it ran one lane at a time; nor the
    ``(f + 1.5 * 2**23) - 1.5 * 2**23`` trick, which TVM's simplifier folds to ``f``.
    """
    return tirx.call_llvm_pure_intrin("float32", "llvm.roundeven", f)


def clamp_cast(q, qmin: int, qmax: int, out_dtype: str):
    """Float ``q`` (integer-valued) saturated to ``[qmin, qmax]`` and cast to ``out_dtype``."""
    q = tirx.max(tirx.min(q, tirx.const(float(qmax), "float32")), tirx.const(float(qmin), "float32"))
    return q.astype("int32").astype(out_dtype)


@dataclass(frozen=True)
class ChannelParams:
    """A kernel's per-channel epilogue inputs: the int32 ``bias`` and the float32 ``scale``
    and ``offset`` (offset: the output zero point when requantising, the float bias when
    dequantising).

    With ``base`` (a spec's ``shared_params``) they are arrays of any length shared by the
    layers of a library, channel ``c`` at element ``base + c``; ``base`` is a scalar argument
    of the kernel, before the output (``call_tir`` passes inputs, then outputs). Why: three small constants per layer cost a library
    more than their values (a header each, and too small to store packed); three arrays
    per epilogue kind are stored packed (the biases at their bit width, the zero points as
    a codebook; :mod:`pfcompile.storage`). Alignment: the kernels make no assumption about
    it (``base`` is any integer), so vector loads of them are unaligned loads."""

    bias: te.Tensor
    scale: te.Tensor
    offset: te.Tensor
    base: tirx.Var | None = None

    def at(self, c):
        """``(bias, scale, offset)`` of channel ``c``."""
        i = c if self.base is None else self.base + c
        return self.bias[i], self.scale[i], self.offset[i]

    @property
    def tensors(self) -> list:
        return [self.bias, self.scale, self.offset]

    @property
    def scalars(self) -> list:
        """Scalar arguments, after the tensors and before the output."""
        return [] if self.base is None else [self.base]


def channel_params(sp, channels) -> ChannelParams:
    """The per-channel epilogue inputs of a kernel for ``sp`` with ``channels`` outputs."""
    if sp.shared_params:
        n = tirx.Var("nch", "int32")
        return ChannelParams(te.placeholder((n,), "int32", name="bias"),
                             te.placeholder((n,), "float32", name="scale"),
                             te.placeholder((n,), "float32", name="offset"),
                             tirx.Var("base", "int32"))
    return ChannelParams(te.placeholder((channels,), "int32", name="bias"),
                         te.placeholder((channels,), "float32", name="scale"),
                         te.placeholder((channels,), "float32", name="offset"))


def epilogue_expr(sp, acc, p0, p1):
    """``acc`` (int32, integer bias included) -> the layer output: :func:`requant_expr` for
    integer outputs, else ``clamp(fma(float(acc), scale, offset), fmin, fmax)`` in float32."""
    if sp.y_dtype != "float32":
        return requant_expr(acc, p0, p1, sp.qmin, sp.qmax, sp.y_dtype)
    y = fma(acc.astype("float32"), p0, p1)
    if math.isfinite(sp.fmin):
        y = tirx.max(y, tirx.const(sp.fmin, "float32"))
    if math.isfinite(sp.fmax):
        y = tirx.min(y, tirx.const(sp.fmax, "float32"))
    return y


def _epilogue_at(sp, acc, cp: ChannelParams, c):
    bias, scale, offset = cp.at(c)
    return epilogue_expr(sp, acc + bias, scale, offset)


def split_cast(sp) -> bool:
    """Whether :func:`out_compute` gives ``sp`` the two-stage epilogue (block ``requant_q``,
    then ``requant``): a requantised (8-bit) blocked output."""
    return sp.y_dtype != "float32" and sp.y_layout != "NCHW"


def out_compute(sp: QConvSpec, acc, cp: ChannelParams, split: bool = False):
    """The output stage of a blocked-accumulator conv: ``acc[n, oc/8, oh, ow, 8]`` (int32)
    -> ``y`` in ``sp.y_layout`` through :func:`epilogue_expr` (block ``requant``).

    ``split`` (where :func:`split_cast`): the rounded int32 values first (block
    ``requant_q``: 8 channels a vector), then their cast to 8 bits as its own block
    (``requant``), which a schedule vectorises over the pixels of a register tile too: the
    8-bit stores of a tile's pixels are contiguous in ``NCHW8c``, and one 32-lane truncation
    takes fewer shuffles than four of 8 lanes."""
    if sp.y_layout != "NCHW" and partial_block(sp.oc):
        raise ValueError(f"a blocked output needs a multiple of {BLOCK} channels (got {sp.oc})")
    # an NCHW output of a kernel shared across channel counts (``oc`` a TIR expression) is
    # computed blocked too and stored NCHW by io_layouts(y_blocked_view=True): over an
    # NCHW channel loop of run-time extent, the epilogue placed under the conv's tile loop
    # kept a bounds predicate that stopped its vectorisation (1.5-2.7x slower 1x1 layers)
    if sp.y_layout == "NCHW" and isinstance(sp.oc, int):
        return te.compute(
            (sp.n, sp.oc, sp.oh, sp.ow),
            lambda n, o, i, j: _epilogue_at(sp, acc[n, o // BLOCK, i, j, o % BLOCK], cp, o),
            name="requant")

    def _blocked(n, b, i, j, o):
        return _epilogue_at(sp, acc[n, b, i, j, o], cp, b * BLOCK + o)

    if split and split_cast(sp):
        def _rounded(n, b, i, j, o):
            bias, scale, offset = cp.at(b * BLOCK + o)
            return requant_int32(acc[n, b, i, j, o] + bias, scale, offset, sp.qmin, sp.qmax)

        q = te.compute(te_shape(sp.n, sp.oc, sp.oh, sp.ow, BLOCKED), _rounded, name="requant_q")
        return te.compute(q.shape, lambda *idx: q[idx].astype(sp.y_dtype), name="requant")

    return te.compute(te_shape(sp.n, sp.oc, sp.oh, sp.ow, BLOCKED), _blocked, name="requant")


def qconv2d_compute(sp: QConvSpec):
    """Plain NCHW integer conv2d; returns the TE arguments ``[x, w, bias, scale, offset, y]``
    (``base`` before ``y`` with ``shared_params``)."""
    x = te.placeholder((sp.n, sp.c, sp.h, sp.w), sp.x_dtype, name="x")
    icg = sp.c // sp.groups
    ocg = sp.oc // sp.groups
    wt = te.placeholder((sp.oc, icg, sp.kh, sp.kw), "int8", name="w")
    cp = channel_params(sp, sp.oc)
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
        lambda n, o, i, j: _epilogue_at(sp, acc[n, o, i, j], cp, o),
        name="requant")
    return [x, wt, *cp.tensors, *cp.scalars, y]


def qdense_compute(sp: QDenseSpec):
    """Integer dense; returns the TE arguments ``[x, w, bias, scale, offset, y]`` (``base``
    before ``y`` with ``shared_params``)."""
    x = te.placeholder((sp.m, sp.k), sp.x_dtype, name="x")
    wt = te.placeholder((sp.o, sp.k), "int8", name="w")
    cp = channel_params(sp, sp.o)
    rk = te.reduce_axis((0, sp.k), name="rk")
    acc = te.compute(
        (sp.m, sp.o),
        lambda i, j: te.sum(x[i, rk].astype("int32") * wt[j, rk].astype("int32"), axis=rk),
        name="acc")
    y = te.compute(
        (sp.m, sp.o),
        lambda i, j: _epilogue_at(sp, acc[i, j], cp, j),
        name="requant")
    return [x, wt, *cp.tensors, *cp.scalars, y]
