"""x86 integer conv template: AVX2 ``vpmaddwd`` on int16 channel pairs.

Why int16 pairs and not ``vpmaddubsw`` (u8 x s8): ``vpmaddubsw`` adds two
u8*s8 products into a *saturating* int16, and 255*127*2 > 32767, so it can
give wrong numbers on real activations unless weights are cut to 7 bits.
``vpmaddwd`` multiplies 16 int16 pairs and adds each pair into an int32 lane
exactly: 16 MACs per instruction (an fp32 FMA does 8), with weights at half the
bytes of fp32.

Layout: activations are packed (inside the kernel) into ``[N, C/2, Hp, Wp, 2]``
int16 with the zero point as padding; weights are packed once at compile time
into ``[OC/8, C/2, KH, KW, 8, 2]`` int16. The inner 8x2 block is one
``vpmaddwd`` (tensor intrinsic ``pf_avx2_pmaddwd_8x2``): the two activations of
a channel pair are broadcast as one int32 across 8 lanes. A register tile of
``tile_ow`` output columns x ``tile_oc`` blocks of 8 channels accumulates in
``local`` (registers after unrolling); the requantisation to uint8/int8 NCHW
runs right after each tile.
"""

from __future__ import annotations

import numpy as np
from tvm import s_tir, te, tirx
from tvm.script import tirx as T

from pfcompile.quantexec.kernels import QConvSpec, requant_expr

__all__ = ["PMADDWD_INTRIN", "avx2_conv_func", "avx2_conv_kernel", "default_tiles", "pack_weight_avx2"]

PMADDWD_INTRIN = "pf_avx2_pmaddwd_8x2"


@T.prim_func(s_tir=True)
def _pmaddwd_desc(
    A: T.Buffer((2,), "int16", offset_factor=1),
    B: T.Buffer((8, 2), "int16", offset_factor=1),
    C: T.Buffer((8,), "int32", offset_factor=1, scope="local"),
) -> None:
    with T.sblock("root"):
        T.reads(C[0:8], A[0:2], B[0:8, 0:2])
        T.writes(C[0:8])
        for i in T.serial(0, 8):
            for k in T.serial(0, 2):
                with T.sblock("update"):
                    vi, vk = T.axis.remap("SR", [i, k])
                    C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vi, vk], "int32")


@T.prim_func(s_tir=True)
def _pmaddwd_impl(
    A: T.Buffer((2,), "int16", offset_factor=1),
    B: T.Buffer((8, 2), "int16", offset_factor=1),
    C: T.Buffer((8,), "int32", offset_factor=1, scope="local"),
) -> None:
    with T.sblock("root"):
        T.reads(C[0:8], A[0:2], B[0:8, 0:2])
        T.writes(C[0:8])
        a_i32 = T.reinterpret(A.vload([0], "int16x2"), dtype="int32")
        a16 = T.reinterpret(T.broadcast(a_i32, 8), dtype="int16x16")
        b16 = B.vload([0, 0], dtype="int16x16")
        C[T.ramp(T.int32(0), 1, 8)] += T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"), a16, b16, dtype="int32x8")


_registered = False


def _register() -> None:
    global _registered
    if not _registered:
        s_tir.TensorIntrin.register(PMADDWD_INTRIN, _pmaddwd_desc, _pmaddwd_impl, override=True)
        _registered = True


def pack_weight_avx2(w: np.ndarray) -> np.ndarray:
    """OIHW int8 -> ``[OC/8, C/2, KH, KW, 8, 2]`` int16 (zero-padded channels)."""
    oc, c, kh, kw = w.shape
    ocb, icp = -(-oc // 8), -(-c // 2)
    full = np.zeros((ocb * 8, icp * 2, kh, kw), np.int16)
    full[:oc, :c] = w
    return np.ascontiguousarray(
        full.reshape(ocb, 8, icp, 2, kh, kw).transpose(0, 2, 4, 5, 1, 3))


def _compute(sp: QConvSpec):
    ocb, icp = -(-sp.oc // 8), -(-sp.c // 2)
    pt, pl, pb, pr = sp.padding
    hp, wp = sp.h + pt + pb, sp.w + pl + pr
    x = te.placeholder((sp.n, sp.c, sp.h, sp.w), sp.x_dtype, name="x")
    wt = te.placeholder((ocb, icp, sp.kh, sp.kw, 8, 2), "int16", name="w")
    bias = te.placeholder((sp.oc,), "int32", name="bias")
    m0 = te.placeholder((sp.oc,), "int32", name="m0")
    shift = te.placeholder((sp.oc,), "int32", name="shift")
    zx = tirx.const(sp.zx, "int16")

    def _pack(n, p, i, j, q):
        c = p * 2 + q
        inside = tirx.all(i >= pt, i < pt + sp.h, j >= pl, j < pl + sp.w, c < sp.c)
        return tirx.if_then_else(inside, x[n, tirx.min(c, sp.c - 1), i - pt, j - pl].astype("int16"), zx)

    xp = te.compute((sp.n, icp, hp, wp, 2), _pack, name="pack")
    rp = te.reduce_axis((0, icp), name="rp")
    ry = te.reduce_axis((0, sp.kh), name="ry")
    rx = te.reduce_axis((0, sp.kw), name="rx")
    rq = te.reduce_axis((0, 2), name="rq")
    (sh, sw), (dh, dw) = sp.stride, sp.dilation
    acc = te.compute(
        (sp.n, ocb, sp.oh, sp.ow, 8),
        lambda n, b, i, j, o: te.sum(
            xp[n, rp, i * sh + ry * dh, j * sw + rx * dw, rq].astype("int32")
            * wt[b, rp, ry, rx, o, rq].astype("int32"), axis=[rp, ry, rx, rq]),
        name="acc")
    y = te.compute(
        (sp.n, sp.oc, sp.oh, sp.ow),
        lambda n, o, i, j: requant_expr(acc[n, o // 8, i, j, o % 8] + bias[o], m0[o], shift[o],
                                        sp.zy, sp.qmin, sp.qmax, sp.y_dtype),
        name="requant")
    return [x, wt, bias, m0, shift, y]


def _divisor_at_most(n: int, cap: int) -> int:
    return max(d for d in range(1, min(n, cap) + 1) if n % d == 0)


def default_tiles(sp: QConvSpec) -> tuple[int, int]:
    """Register tile: the widest output-column tile (a divisor of OW, <= 8) and 2 channel
    blocks while the accumulators fit 14 vector registers (measured best on 56x56x64)."""
    t_ow = _divisor_at_most(sp.ow, 8)
    if t_ow == 8:
        t_ow = 4  # 4 x 2 beat 8 x 1 on the 3x3 64->64 56x56 layer
    return t_ow, (2 if t_ow <= 7 else 1)


def avx2_conv_func(sp: QConvSpec, tile_ow: int | None = None,
                   tile_oc: int | None = None) -> tirx.PrimFunc:
    """The scheduled PrimFunc (weights already packed with :func:`pack_weight_avx2`)."""
    _register()
    d_ow, d_oc = default_tiles(sp)
    ocb = -(-sp.oc // 8)
    t_oc = _divisor_at_most(ocb, tile_oc or d_oc)
    t_ow = _divisor_at_most(sp.ow, tile_ow or d_ow)
    sch = s_tir.Schedule(te.create_prim_func(_compute(sp)))
    pack = sch.get_sblock("pack")
    acc = sch.get_sblock("acc")
    req = sch.get_sblock("requant")
    # pack: parallel over (n, channel pair)
    pn, pp, _, pj, pq = sch.get_loops(pack)
    sch.parallel(sch.fuse(pn, pp))
    sch.vectorize(sch.fuse(pj, pq))
    # conv: register tile (t_ow columns x t_oc blocks of 8 channels)
    n, b, i, j, o, rp, ry, rx, rq = sch.get_loops(acc)
    bo, bi = sch.split(b, [None, t_oc])
    jo, ji = sch.split(j, [None, t_ow])
    sch.reorder(n, bo, i, jo, rp, ry, rx, bi, ji, o, rq)
    outer = sch.fuse(n, bo, i)
    sch.parallel(outer)
    sch.set_scope(acc, 0, "local")  # accumulators: registers after unrolling
    sch.reverse_compute_at(req, jo)
    init = sch.decompose_reduction(acc, rp)
    sch.vectorize(sch.get_loops(init)[-1])
    sch.unroll(bi)
    sch.unroll(ji)
    sch.tensorize(o, PMADDWD_INTRIN)
    # requantise each tile straight from the accumulators: 8 channels per vector
    rc, rw = sch.get_loops(req)[-2:]
    rco, rci = sch.split(rc, [None, 8])
    sch.reorder(rco, rw, rci)
    sch.vectorize(rci)
    return (sch.mod["main"].with_attr("tir.is_scheduled", True).with_attr("tir.noalias", True)
            .with_attr("op_pattern", 8))


def avx2_conv_kernel(sp: QConvSpec):
    """The ``x86-avx2-pmaddwd`` :class:`~pfcompile.quantexec.schedules.Kernel`, or None."""
    from pfcompile.quantexec.schedules import Kernel

    if sp.groups != 1 or sp.n != 1:
        return None
    return Kernel("x86-avx2-pmaddwd", avx2_conv_func(sp), pack_weight_avx2)
