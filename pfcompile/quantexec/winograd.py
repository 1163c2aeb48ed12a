"""Exact integer Winograd F(2x2, 3x3) for int8 3x3 stride-1 convs (x86 AVX2, ``vpmaddwd``).

Why integer Winograd: on AVX2 the direct ``vpmaddwd`` kernel does 36 multiplications per
2x2 outputs and input/output channel pair where pfcompile's fp32 build, with Winograd
F(4x4, 3x3), does 9 (``pfcompile/codegen/templates/winograd.py``); ``vpmaddwd`` does twice
the MACs of an fp32 FMA per instruction, so direct int8 stays behind fp32 on 3x3 layers.
F(2x2, 3x3) does 16 multiplications per 2x2 outputs.

Exactness. With ``G' = 2G`` (integer: rows ``(2,0,0), (1,1,1), (1,-1,1), (0,0,2)``) the
transformed weights ``U' = G' g G'^T = 4U`` are integers (done here, at compile time),
``V = B^T d B`` of the input patch ``d`` is integer (``B`` holds 0, +-1), and
``Y' = A^T [sum_c U'_c * V_c] A = 4Y`` exactly, so ``Y = Y' >> 2`` is the integer
correlation, bit for bit what the direct kernel accumulates. ``d`` is the raw activation
padded with the zero point, as in the direct kernels, so the bias with ``-zx * sum(w)``
folded in and the requantising / dequantising epilogue are the same.

Bounds (uint8 or int8 activations ``|x| <= 255``, int8 weights ``|w| <= 128``):
``|U'| <= 9 * 128 = 1152`` (int16), ``|V| <= 4 * 255 = 1020`` (int16), one ``vpmaddwd``
pair ``<= 2 * 1152 * 1020`` (no saturation: ``vpmaddwd`` wraps only for ``-32768^2``
twice). Summed over ``C`` input channels: ``|M| <= C * 1152 * 1020``. The output
transform's rows ``A^T M`` are, per column, twice a 1-D correlation of 3 weights-sums with
2 input sums, so ``|A^T M| <= C * 2 * 3 * 384 * 510 = C * 1152 * 1020`` too, and every
partial sum of the transform (two terms at most before the bound applies again) stays under
``2 * C * 1152 * 1020``. No int32 operation overflows when that is below ``2**31``:
``C <= MAX_CHANNELS = 913``; a layer with more input channels runs the direct kernel.

Stages (``n = 1``, channels in blocks of 8, P = tiles of 2x2 outputs, rounded up to the
register tile)::

    V    B^T d B, the padded input read in place       (4, 4, C/8, P, 8) int16
    M    sum over C of V * U'   (16 GEMMs, vpmaddwd)   (4, 4, OC/8, P, 8) int32
    acc  (A^T M A) >> 2, cropped to the output          (1, OC/8, OH, OW, 8) int32
    requant  + bias, the layer's epilogue               (y in NCHW or NCHW8c)

The GEMMs run the direct kernel's register tiles (``t_p`` tiles x ``t_oc`` blocks of 8
output channels) with its ``vpmaddwd`` tensor intrinsic; the weights are packed
``(4, 4, OC/8, C/8, 4, 8, 2)`` int16 (:func:`pack_weight_wino`).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from tvm import s_tir, te, tirx

from pfcompile.quantexec.kernels import (
    BLOCK,
    QConvSpec,
    channel_params,
    io_layouts,
    out_compute,
    padded_read,
    te_shape,
)

__all__ = [
    "FUSE_V_MAX",
    "G2",
    "MAX_CHANNELS",
    "MIN_MACS",
    "WINO_NAME",
    "pack_weight_wino",
    "transform_weight_int",
    "wino_eligible",
    "wino_func",
    "wino_heuristic",
    "wino_reference",
    "wino_tiles",
]

#: G' = 2G of F(2x2, 3x3): integer
G2 = np.array([[2, 0, 0], [1, 1, 1], [1, -1, 1], [0, 0, 2]], np.int64)
_BT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.int64)
_AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.int64)

#: the template name reported per layer
WINO_NAME = "x86-avx2-wino-pmaddwd"

#: the largest input channel count with no int32 overflow anywhere (module docstring)
MAX_CHANNELS = (2**31 - 1) // (2 * 1152 * 1020)


def wino_eligible(sp: QConvSpec) -> bool:
    """A 3x3, stride-1, undilated, ungrouped batch-1 conv with whole blocks of 8 channels
    and at most :data:`MAX_CHANNELS` input channels (the int32 bound)."""
    return (sp.n == 1 and sp.groups == 1 and (sp.kh, sp.kw) == (3, 3)
            and sp.stride == (1, 1) and sp.dilation == (1, 1)
            and sp.c % BLOCK == 0 and sp.oc % BLOCK == 0 and sp.c <= MAX_CHANNELS
            and sp.x_dtype in ("uint8", "int8"))


#: the most output channel tiles for which each task computes its own V (wino_func)
FUSE_V_MAX = 8

#: below this many multiply-accumulates a layer keeps the direct kernel (see wino_heuristic)
MIN_MACS = 3_000_000


def wino_heuristic(sp: QConvSpec) -> bool:
    """Whether an eligible layer runs Winograd rather than the direct ``vpmaddwd`` kernel,
    from its shape (no int8 tuning records exist): at least :data:`MIN_MACS` MACs.

    Measured in one process, alternating rounds, 2 threads on a loaded 2-core AMD EPYC
    (``tools/bench_int8_kernels.py --winograd``): on ResNet-18's 3x3 stride-1 layers
    (116 M MACs each) Winograd took 0.42-0.60x the direct kernel's time; the threshold is the fp32 template's (``heuristic_algorithm``), where the
    extra pass and its parallel region stop paying."""
    return wino_eligible(sp) and sp.macs >= MIN_MACS


def transform_weight_int(w: np.ndarray) -> np.ndarray:
    """OIHW 3x3 int8 -> ``U' = G' g G'^T`` as ``[OC, C, 4, 4]`` int16 (exact)."""
    u = np.einsum("ek,ocky,uy->oceu", G2, w.astype(np.int64), G2)
    assert np.abs(u).max(initial=0) <= 9 * 128
    return u.astype(np.int16)


def pack_weight_wino(w: np.ndarray) -> np.ndarray:
    """OIHW 3x3 int8 -> ``(4, 4, OC/8, C/8, 4, 8, 2)`` int16: ``U'`` per transform position in
    the direct AVX2 kernel's ``[OC/8, C/8, ., 4, 8, 2]`` channel-pair layout."""
    from pfcompile.quantexec.blocked import pack_weight_conv

    p = pack_weight_conv(transform_weight_int(w), 2, np.int16)  # [ob, cb, e, u, 4, 8, 2]
    return np.ascontiguousarray(p.transpose(2, 3, 0, 1, 4, 5, 6))


def wino_reference(x: np.ndarray, w: np.ndarray, zx: int, padding) -> np.ndarray:
    """Numpy F(2x2, 3x3) in int64 with the same transforms: ``sum_c (x - zx) * w`` as
    ``[OC, OH, OW]`` for one image ``x [C, H, W]`` (a check of the algebra, used by tests)."""
    pt, pl, pb, pr = padding
    c, h, wd = x.shape
    oh, ow = h + pt + pb - 2, wd + pl + pr - 2
    nh, nw = -(-oh // 2), -(-ow // 2)
    d = np.full((c, 2 * nh + 2, 2 * nw + 2), zx, np.int64)
    d[:, pt:pt + h, pl:pl + wd] = x
    d -= zx
    u = transform_weight_int(w).astype(np.int64)
    y = np.zeros((w.shape[0], 2 * nh, 2 * nw), np.int64)
    for th in range(nh):
        for tw in range(nw):
            v = np.einsum("ea,cab,ub->ceu", _BT, d[:, 2 * th:2 * th + 4, 2 * tw:2 * tw + 4], _BT)
            m = np.einsum("ceu,oceu->oeu", v, u)
            yy = np.einsum("ye,oeu,xu->oyx", _AT, m, _AT)
            assert np.all(yy % 4 == 0)
            y[:, 2 * th:2 * th + 2, 2 * tw:2 * tw + 2] = yy // 4
    return y[:, :oh, :ow]


def _bt(d: list) -> list:
    """``B^T d`` for one column of 4 values (F(2x2, 3x3))."""
    return [d[0] - d[2], d[1] + d[2], d[2] - d[1], d[1] - d[3]]


def _at(t: list) -> list:
    """``A^T t`` for one column of 4 values."""
    return [t[0] + t[1] + t[2], t[1] - t[2] - t[3]]


def _select(idx, values: list):
    out = values[-1]
    for k in range(len(values) - 2, -1, -1):
        out = tirx.Select(idx == k, values[k], out)
    return out


def wino_tiles(sp: QConvSpec, isa=None) -> tuple[int, int, int]:
    """(``chunk`` tiles of one tile row per parallel task, ``t_p`` tiles x ``t_oc`` blocks of
    8 output channels: the GEMMs' register tile, from the AVX2 kernel's ranked tiles)."""
    from pfcompile.quantexec.x86 import AVX2

    isa = isa or AVX2
    nw = -(-sp.ow // 2)
    ocb = sp.oc // BLOCK
    t_p, t_oc = next(((tp, to) for tp, to in isa.tiles if nw % tp == 0 and ocb % to == 0),
                     (1, 1))
    return _chunk(nw, t_p), t_p, t_oc


def _chunk(nw: int, t_p: int) -> int:
    """Tiles per task: the largest multiple of ``t_p`` dividing the tile row, at most 16 (the
    task's ``M`` then takes ``16 * t_oc * chunk * 32`` bytes: 32 KB for ``t_oc = 4``)."""
    return max(c for c in range(t_p, min(nw, 16) + 1, t_p) if nw % c == 0) if nw >= t_p else nw


def _compute(sp: QConvSpec):
    nh, nw = -(-sp.oh // 2), -(-sp.ow // 2)
    cb, ocb = sp.c // BLOCK, sp.oc // BLOCK
    pt, pl = sp.padding[0], sp.padding[1]
    hp, wp = 2 * nh + 2, 2 * nw + 2
    # rows / columns of partial tiles past the padded input read the zero point too; their
    # outputs are never stored
    wide = replace(sp, padding=(pt, pl, hp - sp.h - pt, wp - sp.w - pl))
    x = te.placeholder(te_shape(sp.n, sp.c, sp.h, sp.w, sp.x_layout), sp.x_dtype, name="x")
    u = te.placeholder((4, 4, ocb, cb, BLOCK // 2, BLOCK, 2), "int16", name="w")
    cp = channel_params(sp, sp.oc)
    zx = tirx.const(sp.zx, sp.x_dtype)
    pad = te.compute(
        (cb, hp, wp, BLOCK),
        lambda b, i, j, c: padded_read(wide, x, 0, b, c, i, j, zx).astype("int16"), name="pad")

    def f_dt(b, p, e, q, c):  # B^T d: rows
        th, tw = p // nw, p % nw
        return _select(e, _bt([pad[b, 2 * th + a, 2 * tw + q, c] for a in range(4)]))

    dt = te.compute((cb, nh * nw, 4, 4, BLOCK), f_dt, name="dt")
    v = te.compute((4, 4, cb, nh * nw, BLOCK),
                   lambda e, nu, b, p, c: _select(nu, _bt([dt[b, p, e, q, c] for q in range(4)])),
                   name="V")
    rb = te.reduce_axis((0, cb), name="rb")
    rk = te.reduce_axis((0, BLOCK // 2), name="rk")
    rq = te.reduce_axis((0, 2), name="rq")
    mm = te.compute(
        (ocb, nh, nw, 4, 4, BLOCK),
        lambda b, th, tw, e, nu, o: te.sum(
            v[e, nu, rb, th * nw + tw, rk * 2 + rq].astype("int32")
            * u[e, nu, b, rb, rk, o, rq].astype("int32"), axis=[rb, rk, rq]), name="M")

    def f_ot(b, th, tw, y, nu, o):  # A^T M: rows
        return _select(y, _at([mm[b, th, tw, e, nu, o] for e in range(4)]))

    ot = te.compute((ocb, nh, nw, 2, 4, BLOCK), f_ot, name="ot")

    def f_acc(n, b, i, j, o):
        y4 = _select(j % 2, _at([ot[b, i // 2, j // 2, i % 2, nu, o] for nu in range(4)]))
        return tirx.shift_right(y4, tirx.const(2, "int32"))  # exact: y4 = 4 * y

    acc = te.compute((sp.n, ocb, sp.oh, sp.ow, BLOCK), f_acc, name="acc")
    y = out_compute(replace(sp, y_layout="NCHW8c"), acc, cp)
    return [x, u, *cp.tensors, *cp.scalars, y]


def wino_func(sp: QConvSpec, tile_p: int | None = None, tile_oc: int | None = None,
              chunk: int | None = None, fuse_v: bool | None = None) -> tirx.PrimFunc:
    """The scheduled F(2x2, 3x3) PrimFunc for ``sp`` (:func:`wino_eligible`); weights from
    :func:`pack_weight_wino`; arguments as the direct kernels' ``(x, w, bias, scale, offset,
    y)``.

    Per task (``t_oc`` output channel blocks, tile row, ``chunk`` tiles): the 16 GEMMs of
    those tiles into a task-local ``M`` (L1/L2-resident: a global ``M`` cost a third of a
    64->64 56x56 layer in memory traffic) and the output transform with the epilogue.
    ``fuse_v``: the task computes its tiles' ``V`` too (once per output channel tile),
    else ``V`` is a parallel pass of its own; by default fused where the output channels
    make at most :data:`FUSE_V_MAX` tiles (measured in one process, loaded 2-core EPYC, 2
    threads, medians of 7 rounds, fused / separate: 64->64 @56 0.54-0.67, 128 @28 0.87,
    256 @14 0.79-0.81 (8 tiles), 512 @7 1.36-1.40 (16 tiles))."""
    from pfcompile.quantexec.blocked import _finish, _schedule_out
    from pfcompile.quantexec.x86 import AVX2, PMADDWD_INTRIN

    if not wino_eligible(sp):
        raise ValueError(f"integer Winograd F(2x2, 3x3) does not take {sp}")
    AVX2.register()
    d_chunk, t_p, t_oc = wino_tiles(sp)
    nw = -(-sp.ow // 2)
    t_p = tile_p or t_p
    t_oc = tile_oc or t_oc
    if nw % t_p or (sp.oc // BLOCK) % t_oc:
        raise ValueError(f"register tile {t_p}x{t_oc} does not divide {nw} tiles x "
                         f"{sp.oc // BLOCK} channel blocks")
    chunk = chunk or (d_chunk if (tile_p is None) else _chunk(nw, t_p))
    if fuse_v is None:
        fuse_v = sp.oc // BLOCK // t_oc <= FUSE_V_MAX
    sch = s_tir.Schedule(te.create_prim_func(_compute(sp)))
    io_layouts(sch, sp, "pad", y_blocked_view=sp.y_layout == "NCHW")
    pad, dt, v, mm, ot, acc, req = (sch.get_sblock(b) for b in
                                    ("pad", "dt", "V", "M", "ot", "acc", "requant"))
    # input transform: per (channel block, tile), positions unrolled, 8 channels a vector
    sch.compute_inline(pad)
    if not fuse_v:
        e, nu, b, p, c = sch.get_loops(v)
        sch.reorder(b, p, e, nu, c)
        sch.parallel(sch.fuse(b, p))
        sch.compute_at(dt, sch.get_loops(v)[0])
        for blk in (dt, v):
            lo = sch.get_loops(blk)
            sch.unroll(lo[-3])
            sch.unroll(lo[-2])
            sch.vectorize(lo[-1])
    # output: per (oc tile, tile row, chunk of tiles) task
    sch.compute_inline(acc)
    n, b, i, j, o = sch.get_loops(req)
    bo, bi = sch.split(b, [None, t_oc])
    io, ii = sch.split(i, [None, 2])
    jo, ji = sch.split(j, [None, 2])
    jc, jt = sch.split(jo, [None, chunk])
    sch.reorder(n, bo, io, jc, bi, jt, ii, ji, o)
    task = sch.fuse(n, bo, io, jc)
    sch.parallel(task)
    sch.compute_at(ot, jt)
    lo = sch.get_loops(ot)
    sch.unroll(lo[-3])
    sch.unroll(lo[-2])
    sch.vectorize(lo[-1])
    sch.unroll(ii)
    sch.unroll(ji)
    _schedule_out(sch, replace(sp, y_layout="NCHW8c"), req, jt)
    # the task's GEMMs: the direct kernel's register tile, vpmaddwd on channel pairs
    sch.compute_at(mm, task, preserve_unit_loops=True)
    sch.set_scope(mm, 0, "local")
    if fuse_v:  # the task's V, computed in it (recomputed per output channel tile)
        sch.compute_at(v, task, preserve_unit_loops=True)
        lo = sch.get_loops(v)
        e, nu, b, p, c = lo[-5:]
        sch.reorder(b, p, e, nu, c)
        sch.compute_at(dt, p, preserve_unit_loops=True)
        for blk in (dt, v):
            lo = sch.get_loops(blk)
            sch.unroll(lo[-3])
            sch.unroll(lo[-2])
            sch.vectorize(lo[-1])
    loops = sch.get_loops(mm)
    at = sch.get(task)
    inner = loops[next(k for k, lp in enumerate(loops) if sch.get(lp).same_as(at)) + 1:]
    mb, _th, tw, e, nu, o, rb, rk, rq = inner
    two, twi = sch.split(tw, [None, t_p])
    sch.reorder(e, nu, two, rb, rk, mb, twi, o, rq)
    cw = sch.cache_write(mm, 0, "local")
    sch.reverse_compute_at(cw, two)
    sch.vectorize(sch.get_loops(cw)[-1])
    init = sch.decompose_reduction(mm, rb)
    sch.vectorize(sch.get_loops(init)[-1])
    sch.unroll(mb)
    sch.unroll(twi)
    sch.tensorize(o, PMADDWD_INTRIN)
    return _finish(sch.mod["main"])
