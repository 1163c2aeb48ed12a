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

from pfcompile.quantexec.kernels import QConvSpec, epilogue_expr, epilogue_params

__all__ = ["PMADDWD_INTRIN", "VPDPBUSD_INTRIN", "avx2_conv_func", "avx2_conv_kernel",
           "default_tiles", "has_vnni", "pack_weight_avx2", "pack_weight_vnni", "vnni_conv_func",
           "with_int8_features"]

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


@T.prim_func(s_tir=True)
def _vpdpbusd_desc(
    A: T.Buffer((4,), "uint8", offset_factor=1),
    B: T.Buffer((8, 4), "int8", offset_factor=1),
    C: T.Buffer((8,), "int32", offset_factor=1, scope="local"),
) -> None:
    with T.sblock("root"):
        T.reads(C[0:8], A[0:4], B[0:8, 0:4])
        T.writes(C[0:8])
        for i in T.serial(0, 8):
            for k in T.serial(0, 4):
                with T.sblock("update"):
                    vi, vk = T.axis.remap("SR", [i, k])
                    C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vi, vk], "int32")


@T.prim_func(s_tir=True)
def _vpdpbusd_impl(
    A: T.Buffer((4,), "uint8", offset_factor=1),
    B: T.Buffer((8, 4), "int8", offset_factor=1),
    C: T.Buffer((8,), "int32", offset_factor=1, scope="local"),
) -> None:
    with T.sblock("root"):
        T.reads(C[0:8], A[0:4], B[0:8, 0:4])
        T.writes(C[0:8])
        a_i32 = T.reinterpret(A.vload([0], "uint8x4"), dtype="int32")
        a8 = T.reinterpret(T.broadcast(a_i32, 8), dtype="uint8x32")  # LLVM 22: <32 x i8> operands
        b8 = B.vload([0, 0], dtype="int8x32")
        C[T.ramp(T.int32(0), 1, 8)] = T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.256"),
            C.vload([0], dtype="int32x8"), a8, b8, dtype="int32x8")


VPDPBUSD_INTRIN = "pf_vnni_vpdpbusd_8x4"

_registered = False


def _register() -> None:
    global _registered
    if not _registered:
        s_tir.TensorIntrin.register(PMADDWD_INTRIN, _pmaddwd_desc, _pmaddwd_impl, override=True)
        s_tir.TensorIntrin.register(VPDPBUSD_INTRIN, _vpdpbusd_desc, _vpdpbusd_impl, override=True)
        _registered = True


def _pack_weight(w: np.ndarray, kg: int, dtype) -> np.ndarray:
    oc, c, kh, kw = w.shape
    ocb, icp = -(-oc // 8), -(-c // kg)
    full = np.zeros((ocb * 8, icp * kg, kh, kw), dtype)
    full[:oc, :c] = w
    return np.ascontiguousarray(
        full.reshape(ocb, 8, icp, kg, kh, kw).transpose(0, 2, 4, 5, 1, 3))


def pack_weight_avx2(w: np.ndarray) -> np.ndarray:
    """OIHW int8 -> ``[OC/8, C/2, KH, KW, 8, 2]`` int16 (zero-padded channels)."""
    return _pack_weight(w, 2, np.int16)


def pack_weight_vnni(w: np.ndarray) -> np.ndarray:
    """OIHW int8 -> ``[OC/8, C/4, KH, KW, 8, 4]`` int8 (zero-padded channels)."""
    return _pack_weight(w, 4, np.int8)


def _compute(sp: QConvSpec, kg: int = 2):
    """``kg`` input channels per group: 2 (int16 pairs, vpmaddwd) or 4 (uint8, vpdpbusd)."""
    xdt, wdt = ("int16", "int16") if kg == 2 else ("uint8", "int8")
    ocb, icp = -(-sp.oc // 8), -(-sp.c // kg)
    pt, pl, pb, pr = sp.padding
    hp, wp = sp.h + pt + pb, sp.w + pl + pr
    x = te.placeholder((sp.n, sp.c, sp.h, sp.w), sp.x_dtype, name="x")
    wt = te.placeholder((ocb, icp, sp.kh, sp.kw, 8, kg), wdt, name="w")
    bias = te.placeholder((sp.oc,), "int32", name="bias")
    m0, shift = epilogue_params(sp, sp.oc)
    zx = tirx.const(sp.zx, xdt)

    def _pack(n, p, i, j, q):
        c = p * kg + q
        inside = tirx.all(i >= pt, i < pt + sp.h, j >= pl, j < pl + sp.w, c < sp.c)
        return tirx.if_then_else(inside, x[n, tirx.min(c, sp.c - 1), i - pt, j - pl].astype(xdt), zx)

    xp = te.compute((sp.n, icp, hp, wp, kg), _pack, name="pack")
    rp = te.reduce_axis((0, icp), name="rp")
    ry = te.reduce_axis((0, sp.kh), name="ry")
    rx = te.reduce_axis((0, sp.kw), name="rx")
    rq = te.reduce_axis((0, kg), name="rq")
    (sh, sw), (dh, dw) = sp.stride, sp.dilation
    acc = te.compute(
        (sp.n, ocb, sp.oh, sp.ow, 8),
        lambda n, b, i, j, o: te.sum(
            xp[n, rp, i * sh + ry * dh, j * sw + rx * dw, rq].astype("int32")
            * wt[b, rp, ry, rx, o, rq].astype("int32"), axis=[rp, ry, rx, rq]),
        name="acc")
    y = te.compute(
        (sp.n, sp.oc, sp.oh, sp.ow),
        lambda n, o, i, j: epilogue_expr(sp, acc[n, o // 8, i, j, o % 8] + bias[o], m0[o],
                                         shift[o]),
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
    return _x86_conv_func(sp, 2, PMADDWD_INTRIN, tile_ow, tile_oc)


def vnni_conv_func(sp: QConvSpec, tile_ow: int | None = None,
                   tile_oc: int | None = None) -> tirx.PrimFunc:
    """uint8 activations only; weights packed with :func:`pack_weight_vnni`. Needs a
    target with AVX512-VNNI + AVX512VL or AVX-VNNI (``vpdpbusd`` on 256-bit registers)."""
    if sp.x_dtype != "uint8":
        raise ValueError("the VNNI template takes uint8 activations")
    return _x86_conv_func(sp, 4, VPDPBUSD_INTRIN, tile_ow, tile_oc)


def _x86_conv_func(sp: QConvSpec, kg: int, intrin: str, tile_ow: int | None,
                   tile_oc: int | None) -> tirx.PrimFunc:
    _register()
    d_ow, d_oc = default_tiles(sp)
    ocb = -(-sp.oc // 8)
    t_oc = _divisor_at_most(ocb, tile_oc or d_oc)
    t_ow = _divisor_at_most(sp.ow, tile_ow or d_ow)
    sch = s_tir.Schedule(te.create_prim_func(_compute(sp, kg)))
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
    sch.tensorize(o, intrin)
    # requantise each tile straight from the accumulators: 8 channels per vector
    rc, rw = sch.get_loops(req)[-2:]
    rco, rci = sch.split(rc, [None, 8])
    sch.reorder(rco, rw, rci)
    sch.vectorize(rci)
    return (sch.mod["main"].with_attr("tirx.is_scheduled", True).with_attr("tir.noalias", True)
            .with_attr("op_pattern", 8))


_VNNI_MATTR = {"avx512-vnni": ["+avx512vnni", "+avx512vl"], "avx-vnni": ["+avxvnni"]}
_VNNI_FLAGS = ("+avx512vnni", "+avxvnni")


def with_int8_features(target):
    """``target`` with the VNNI feature its ``hardware.int8_dot`` reports added to the TVM
    target's ``mattr`` (LLVM's ``x86-64-v4`` level does not include VNNI). Compile with the
    returned target to let :func:`lower_qdq` pick the VNNI template; unchanged otherwise."""
    from dataclasses import replace

    feats = _VNNI_MATTR.get(str((getattr(target, "hardware", {}) or {}).get("int8_dot", "")))
    if not feats:
        return target
    d = dict(target.tvm)
    have = [str(a) for a in d.get("mattr", [])]
    d["mattr"] = have + [f for f in feats if f not in have]
    return replace(target, tvm=d)


def has_vnni(target) -> bool:
    """Whether the TVM target itself enables VNNI (so ``vpdpbusd`` can be selected)."""
    return any(str(a) in _VNNI_FLAGS for a in (getattr(target, "tvm", {}) or {}).get("mattr", []))


def avx2_conv_kernel(sp: QConvSpec, target=None):
    """The best x86 :class:`~pfcompile.quantexec.kernel_choice.IntKernel` for ``sp``, or None.

    ``x86-vnni-vpdpbusd`` when the TVM target enables VNNI (see
    :func:`with_int8_features`) and the activations are uint8; else
    ``x86-avx2-pmaddwd``.
    """
    from pfcompile.quantexec.kernel_choice import IntKernel

    if sp.groups != 1 or sp.n != 1:
        return None
    if target is not None and sp.x_dtype == "uint8" and has_vnni(target):
        return IntKernel("x86-vnni-vpdpbusd", vnni_conv_func(sp), pack_weight_vnni)
    return IntKernel("x86-avx2-pmaddwd", avx2_conv_func(sp), pack_weight_avx2)
