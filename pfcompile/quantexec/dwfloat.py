"""Integer depthwise conv computed exactly in float32 FMAs (``x86-avx2-dw-fma``).

On AVX2 without VNNI the integer depthwise template (``x86-avx2-dw-pmaddwd``) interleaves
two taps of 8 channels into one ``vpmaddwd`` per output vector: per 8 outputs of a 3x3
layer 6 loads, 6 shuffles, 6 widenings, 6 ``vpmaddwd`` and 6 adds. Here the input rows a
task needs are converted once to float32 (zero point padding included) and each 8 outputs
take one FMA per tap with the weights held in registers, as pfcompile's fp32 depthwise
template does.

**Exact.** Every product ``x * w`` is an integer with ``|x * w| <= 255 * 128 = 32640``
(uint8 or int8 activations, int8 weights), and every partial sum of ``k = KH * KW`` of them
is an integer of magnitude at most ``k * 32640``; float32 holds every integer below
``2**24`` exactly, so for ``k <= 514`` (:data:`MAX_TAPS`) each product, FMA and sum is
exact whatever the order or contraction. The sum is converted back to int32 (exact) before
the integer bias and the usual epilogue (:func:`~pfcompile.quantexec.kernels.out_compute`),
so the output equals the integer templates' bit for bit.
"""

from __future__ import annotations

import numpy as np
from tvm import s_tir, te, tirx

from pfcompile.quantexec.blocked import (
    _channel_vars,
    _divisor_at_most,
    _finish,
    _rows_per_task,
    _schedule_out,
    shareable,
)
from pfcompile.quantexec.kernels import (
    BLOCK,
    QConvSpec,
    channel_params,
    io_layouts,
    nblocks,
    out_compute,
    padded_read,
    te_shape,
)

__all__ = ["DW_FMA_NAME", "MAX_TAPS", "default_tile", "dw_fma_func", "dw_fma_supported", "pack_weight_dw_fma"]

DW_FMA_NAME = "x86-avx2-dw-fma"
#: the most taps whose integer sums stay exact in float32: ``MAX_TAPS * 255 * 128 < 2**24``
MAX_TAPS = (2**24 - 1) // (255 * 128)


def dw_fma_supported(sp: QConvSpec) -> bool:
    """Depthwise, batch 1, dilation 1, and few enough taps for exact float32 sums."""
    return (sp.depthwise and sp.n == 1 and sp.dilation == (1, 1)
            and sp.kh * sp.kw <= MAX_TAPS and sp.x_dtype in ("uint8", "int8"))


def default_tile(sp: QConvSpec, registers: int = 16) -> int:
    """Outputs per row tile: the accumulators and the input vectors one kernel row touches
    (``(t - 1) * stride + kw``) in the register file, at most 8 (the rule of pfcompile's
    fp32 depthwise template): 7 for a 3x3 stride-1 layer, 5 at stride 2."""
    sw = sp.stride[1]
    return max(1, min(8, (registers - sp.kw + sw) // (1 + sw)))


def pack_weight_dw_fma(w: np.ndarray) -> np.ndarray:
    """Depthwise ``[C, 1, KH, KW]`` int8 -> ``[C/8, KH, KW, 8]`` float32 (zero channels)."""
    c, _, kh, kw = w.shape
    cb = -(-c // BLOCK)
    full = np.zeros((cb * BLOCK, kh, kw), np.float32)
    full[:c] = w[:, 0]
    return np.ascontiguousarray(full.reshape(cb, BLOCK, kh, kw).transpose(0, 2, 3, 1))


class _AsInt:
    """``acc[idx]`` of a float32 accumulator, as int32 (exact: integer-valued, < 2**24)."""

    def __init__(self, t: te.Tensor):
        self.t = t

    def __getitem__(self, idx):
        return self.t[idx].astype("int32")


def _compute(sp: QConvSpec, shared: bool):
    if shared:
        sp, _ = _channel_vars(sp, None)
    cb = nblocks(sp.c)
    pt, pl, pb, pr = sp.padding
    sh, sw = sp.stride
    hp, wp = sp.h + pt + pb, sp.w + pl + pr
    x = te.placeholder(te_shape(sp.n, sp.c, sp.h, sp.w, sp.x_layout), sp.x_dtype, name="x")
    wt = te.placeholder((cb, sp.kh, sp.kw, BLOCK), "float32", name="w")
    cp = channel_params(sp, sp.oc)
    zx = tirx.const(sp.zx, sp.x_dtype)
    xp = te.compute((sp.n, cb, hp, wp, BLOCK),
                    lambda n, b, i, j, c: padded_read(sp, x, n, b, c, i, j, zx).astype("float32"),
                    name="pad")
    ry = te.reduce_axis((0, sp.kh), name="ry")
    rx = te.reduce_axis((0, sp.kw), name="rx")
    acc = te.compute(
        (sp.n, cb, sp.oh, sp.ow, BLOCK),
        lambda n, b, i, j, c: te.sum(xp[n, b, i * sh + ry, j * sw + rx, c] * wt[b, ry, rx, c],
                                     axis=[ry, rx]),
        name="acc")
    y = out_compute(sp, _AsInt(acc), cp)
    return [x, wt, *cp.tensors, *cp.scalars, y]


def dw_fma_func(sp: QConvSpec, tile_ow: int | None = None, shared: bool = False) -> tirx.PrimFunc:
    """The scheduled PrimFunc; weights from :func:`pack_weight_dw_fma`. Parallel over
    (channel block, rows per task); per task the padded float32 input rows it reads, then
    row tiles of ``tile_ow`` outputs x 8 channels in registers over the unrolled window.
    ``shared``: the channel count read from the arguments (as ``blocked.depthwise_func``)."""
    if not dw_fma_supported(sp):
        raise ValueError(f"the float32-exact depthwise template does not take {sp}")
    if shared and not shareable(sp):
        raise ValueError(f"a shared depthwise kernel needs batch 1 and a multiple of {BLOCK} "
                         f"channels (got {sp})")
    cb = -(-sp.c // BLOCK)
    t_ow = _divisor_at_most(sp.ow, tile_ow or default_tile(sp))
    rows = _rows_per_task(sp, cb)
    sch = s_tir.Schedule(te.create_prim_func(_compute(sp, shared)))
    bview = shared and sp.y_layout == "NCHW"
    io_layouts(sch, sp, "pad", y_blocked_view=bview)
    pad, acc, req = (sch.get_sblock(b) for b in ("pad", "acc", "requant"))
    n, b, i, j, c, ry, rx = sch.get_loops(acc)
    io, ii = sch.split(i, [None, rows])
    jo, ji = sch.split(j, [None, t_ow])
    sch.reorder(n, b, io, ii, jo, ry, rx, ji, c)
    task = sch.fuse(n, b, io)
    sch.parallel(task)
    sch.set_scope(acc, 0, "global")  # on the stack: registers after SROA (Isa.acc_scope)
    sch.reverse_compute_at(req, jo)
    sch.compute_at(pad, task)
    sch.vectorize(sch.get_loops(pad)[-1])
    sch.unroll(ry)
    sch.unroll(rx)
    sch.unroll(ji)
    sch.vectorize(c)  # before decompose_reduction (TVM refuses it on the update block after)
    init = sch.decompose_reduction(acc, ry)
    sch.vectorize(sch.get_loops(init)[-1])
    _schedule_out(sch, sp, req, jo, bview)
    return _finish(sch.mod["main"])
