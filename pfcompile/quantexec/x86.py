"""x86 integer templates: AVX2 ``vpmaddwd`` (int16 pairs) and AVX-512 VNNI ``vpdpbusd``.

Why int16 pairs and not ``vpmaddubsw`` (u8 x s8): ``vpmaddubsw`` adds two
u8*s8 products into a *saturating* int16, and 255*127*2 > 32767, so it can
give wrong numbers on real activations unless weights are cut to 7 bits.
``vpmaddwd`` multiplies 16 int16 pairs and adds each pair into an int32 lane
exactly: 16 MACs per instruction (an fp32 FMA does 8). ``vpdpbusd`` (VNNI) adds
four u8*s8 products into each int32 lane exactly: 32 MACs per instruction.

Every template accumulates 8 output channels per vector (one ``NCHW8c`` block,
see :mod:`pfcompile.quantexec.kernels`), reads activations in either layout and
writes either; the epilogue stores 8 bytes per pixel into a blocked output.

* **conv** (groups 1, any kernel size): the input is packed inside the kernel into a
  zero-point-padded ``[N, C/8, Hp, Wp, 8]`` buffer (int16 for ``vpmaddwd``; uint8 for
  ``vpdpbusd``, which skips the pack for a blocked, unpadded input such as every 1x1
  conv); weights are packed once at compile time into ``[OC/8, C/8, KH, KW, 8/g, 8, g]``
  (``g`` = 2 or 4 input channels per lane). The inner 8x``g`` block is one instruction
  (tensor intrinsics ``pf_avx2_pmaddwd_8x2`` / ``pf_vnni_vpdpbusd_8x4``): ``g`` input
  channels of one pixel broadcast across 8 lanes. A register tile of ``tile_ow`` output
  columns x ``tile_oc`` blocks accumulates in registers; the epilogue runs per tile.
* **depthwise** (kernel width <= 8, dilation 1): vectorised over the 8 channels of a
  block, with ``g`` *horizontal taps* per lane: ``(x[j*s + kx], x[j*s + kx + 1])`` of
  the same channel interleaved as the int16 pair of ``vpmaddwd`` (taps 2 by 2), or 4 taps
  as the u8 quad of ``vpdpbusd``. The taps of one row are adjacent pixels whatever the
  stride, so the ``g`` x 8 bytes are one contiguous load, interleaved in registers
  (``pf_avx2_dw_pair`` / ``pf_vnni_dw_quad``). A 3x3 layer takes 6 ``vpmaddwd`` or 3
  ``vpdpbusd`` per 8 outputs (the missing 4th tap has weight 0). Weights
  ``[C/8, KH, KW/g, 8, g]``.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from tvm import s_tir, te, tirx
from tvm.script import tirx as T

from pfcompile.quantexec.kernels import (
    BLOCK,
    QConvSpec,
    epilogue_params,
    io_layouts,
    out_compute,
    padded_read,
    te_shape,
)

__all__ = ["DW_PAIR_INTRIN", "DW_QUAD_INTRIN", "PMADDWD_INTRIN", "VPDPBUSD_INTRIN",
           "avx2_conv_func", "avx2_conv_kernel", "avx2_depthwise_func", "default_tiles",
           "dw_supported",
           "has_vnni", "pack_weight_avx2", "pack_weight_dw_avx2", "pack_weight_dw_vnni",
           "pack_weight_vnni", "vnni_conv_func", "vnni_depthwise_func", "with_int8_features",
           "x86_depthwise_kernel"]

PMADDWD_INTRIN = "pf_avx2_pmaddwd_8x2"
VPDPBUSD_INTRIN = "pf_vnni_vpdpbusd_8x4"
DW_PAIR_INTRIN = "pf_avx2_dw_pair_{}"   # .format(x dtype)
DW_QUAD_INTRIN = "pf_vnni_dw_quad"


# ----------------------------------------------------------------------------- intrinsics
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


_PAIR_IDX = [q * 8 + c for c in range(8) for q in range(2)]   # [tap][ch] -> [ch][tap]
_QUAD_IDX = [q * 8 + c for c in range(8) for q in range(4)]


def _dw_pair(xdt: str):
    """Depthwise, 2 taps x 8 channels: C[c] += A[0, c] * B[c, 0] + A[1, c] * B[c, 1]."""

    @T.prim_func(s_tir=True)
    def desc(
        A: T.Buffer((2, 8), xdt, offset_factor=1),
        B: T.Buffer((8, 2), "int16", offset_factor=1),
        C: T.Buffer((8,), "int32", offset_factor=1, scope="local"),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:8], A[0:2, 0:8], B[0:8, 0:2])
            T.writes(C[0:8])
            for i in T.serial(0, 8):
                for k in T.serial(0, 2):
                    with T.sblock("update"):
                        vi, vk = T.axis.remap("SR", [i, k])
                        C[vi] = C[vi] + T.cast(A[vk, vi], "int32") * T.cast(B[vi, vk], "int32")

    @T.prim_func(s_tir=True)
    def impl(
        A: T.Buffer((2, 8), xdt, offset_factor=1),
        B: T.Buffer((8, 2), "int16", offset_factor=1),
        C: T.Buffer((8,), "int32", offset_factor=1, scope="local"),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:8], A[0:2, 0:8], B[0:8, 0:2])
            T.writes(C[0:8])
            a = T.Shuffle([A.vload([0, 0], dtype=xdt + "x16")], _PAIR_IDX)
            a16 = T.Cast("int16x16", a)
            C[T.ramp(T.int32(0), 1, 8)] += T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"), a16,
                B.vload([0, 0], dtype="int16x16"), dtype="int32x8")

    return desc, impl


@T.prim_func(s_tir=True)
def _dw_quad_desc(
    A: T.Buffer((4, 8), "uint8", offset_factor=1),
    B: T.Buffer((8, 4), "int8", offset_factor=1),
    C: T.Buffer((8,), "int32", offset_factor=1, scope="local"),
) -> None:
    with T.sblock("root"):
        T.reads(C[0:8], A[0:4, 0:8], B[0:8, 0:4])
        T.writes(C[0:8])
        for i in T.serial(0, 8):
            for k in T.serial(0, 4):
                with T.sblock("update"):
                    vi, vk = T.axis.remap("SR", [i, k])
                    C[vi] = C[vi] + T.cast(A[vk, vi], "int32") * T.cast(B[vi, vk], "int32")


@T.prim_func(s_tir=True)
def _dw_quad_impl(
    A: T.Buffer((4, 8), "uint8", offset_factor=1),
    B: T.Buffer((8, 4), "int8", offset_factor=1),
    C: T.Buffer((8,), "int32", offset_factor=1, scope="local"),
) -> None:
    with T.sblock("root"):
        T.reads(C[0:8], A[0:4, 0:8], B[0:8, 0:4])
        T.writes(C[0:8])
        a = T.Shuffle([A.vload([0, 0], dtype="uint8x32")], _QUAD_IDX)
        C[T.ramp(T.int32(0), 1, 8)] = T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.256"),
            C.vload([0], dtype="int32x8"), a, B.vload([0, 0], dtype="int8x32"), dtype="int32x8")


_registered = False


def _register() -> None:
    global _registered
    if not _registered:
        s_tir.TensorIntrin.register(PMADDWD_INTRIN, _pmaddwd_desc, _pmaddwd_impl, override=True)
        s_tir.TensorIntrin.register(VPDPBUSD_INTRIN, _vpdpbusd_desc, _vpdpbusd_impl, override=True)
        for xdt in ("uint8", "int8"):
            s_tir.TensorIntrin.register(DW_PAIR_INTRIN.format(xdt), *_dw_pair(xdt), override=True)
        s_tir.TensorIntrin.register(DW_QUAD_INTRIN, _dw_quad_desc, _dw_quad_impl, override=True)
        _registered = True


# ----------------------------------------------------------------------------- weights
def _pack_weight(w: np.ndarray, kg: int, dtype) -> np.ndarray:
    oc, c, kh, kw = w.shape
    ocb, cb = -(-oc // BLOCK), -(-c // BLOCK)
    full = np.zeros((ocb * BLOCK, cb * BLOCK, kh, kw), dtype)
    full[:oc, :c] = w
    # [ob, o, cb, k, q, ky, kx] -> [ob, cb, ky, kx, k, o, q]
    return np.ascontiguousarray(
        full.reshape(ocb, BLOCK, cb, BLOCK // kg, kg, kh, kw).transpose(0, 2, 5, 6, 3, 1, 4))


def pack_weight_avx2(w: np.ndarray) -> np.ndarray:
    """OIHW int8 -> ``[OC/8, C/8, KH, KW, 4, 8, 2]`` int16 (zero-padded channels)."""
    return _pack_weight(w, 2, np.int16)


def pack_weight_vnni(w: np.ndarray) -> np.ndarray:
    """OIHW int8 -> ``[OC/8, C/8, KH, KW, 2, 8, 4]`` int8 (zero-padded channels)."""
    return _pack_weight(w, 4, np.int8)


def _pack_dw(w: np.ndarray, kg: int, dtype) -> np.ndarray:
    c, _, kh, kw = w.shape
    cb, g = -(-c // BLOCK), -(-kw // kg)
    full = np.zeros((cb * BLOCK, kh, g * kg), dtype)
    full[:c, :, :kw] = w[:, 0]
    # [cb, c, ky, g, q] -> [cb, ky, g, c, q]
    return np.ascontiguousarray(full.reshape(cb, BLOCK, kh, g, kg).transpose(0, 2, 3, 1, 4))


def pack_weight_dw_avx2(w: np.ndarray) -> np.ndarray:
    """Depthwise ``[C, 1, KH, KW]`` int8 -> ``[C/8, KH, KW/2, 8, 2]`` int16 (taps in pairs)."""
    return _pack_dw(w, 2, np.int16)


def pack_weight_dw_vnni(w: np.ndarray) -> np.ndarray:
    """Depthwise ``[C, 1, KH, KW]`` int8 -> ``[C/8, KH, KW/4, 8, 4]`` int8 (taps in quads)."""
    return _pack_dw(w, 4, np.int8)


# ----------------------------------------------------------------------------- conv
def _finish(func: tirx.PrimFunc) -> tirx.PrimFunc:
    # op_pattern 8 (opaque): FuseOps must not merge other ops into a scheduled kernel
    return (func.with_attr("tirx.is_scheduled", True).with_attr("tir.noalias", True)
            .with_attr("op_pattern", 8))


def _direct(sp: QConvSpec, kg: int) -> bool:
    """VNNI reads a blocked, unpadded uint8 input in place (no pack)."""
    return kg == 4 and sp.x_layout != "NCHW" and not any(sp.padding) and sp.c % BLOCK == 0


def _conv_compute(sp: QConvSpec, kg: int):
    """``kg`` input channels per lane: 2 (int16 pairs, vpmaddwd) or 4 (uint8, vpdpbusd)."""
    xdt, wdt = ("int16", "int16") if kg == 2 else ("uint8", "int8")
    ocb, cb = -(-sp.oc // BLOCK), -(-sp.c // BLOCK)
    pt, pl, pb, pr = sp.padding
    hp, wp = sp.h + pt + pb, sp.w + pl + pr
    x = te.placeholder(te_shape(sp.n, sp.c, sp.h, sp.w, sp.x_layout), sp.x_dtype, name="x")
    wt = te.placeholder((ocb, cb, sp.kh, sp.kw, BLOCK // kg, BLOCK, kg), wdt, name="w")
    bias = te.placeholder((sp.oc,), "int32", name="bias")
    p0, p1 = epilogue_params(sp, sp.oc)
    if _direct(sp, kg):
        src = x
    else:
        zx = tirx.const(sp.zx, sp.x_dtype)
        src = te.compute((sp.n, cb, hp, wp, BLOCK),
                         lambda n, b, i, j, c: padded_read(sp, x, n, b, c, i, j, zx).astype(xdt),
                         name="pack")
    rb = te.reduce_axis((0, cb), name="rb")
    ry = te.reduce_axis((0, sp.kh), name="ry")
    rx = te.reduce_axis((0, sp.kw), name="rx")
    # fewer than 8 input channels (an RGB stem): only the lane groups that hold channels
    rk = te.reduce_axis((0, min(BLOCK, -(-sp.c // kg) * kg) // kg), name="rk")
    rq = te.reduce_axis((0, kg), name="rq")
    (sh, sw), (dh, dw) = sp.stride, sp.dilation
    acc = te.compute(
        (sp.n, ocb, sp.oh, sp.ow, BLOCK),
        lambda n, b, i, j, o: te.sum(
            src[n, rb, i * sh + ry * dh, j * sw + rx * dw, rk * kg + rq].astype("int32")
            * wt[b, rb, ry, rx, rk, o, rq].astype("int32"), axis=[rb, ry, rx, rk, rq]),
        name="acc")
    y = out_compute(sp, acc, bias, p0, p1)
    return [x, wt, bias, p0, p1, y]


def _divisor_at_most(n: int, cap: int) -> int:
    return max(d for d in range(1, min(n, cap) + 1) if n % d == 0)


# register tiles (output columns, blocks of 8 channels), best first: llvm-mca (znver3 for
# vpmaddwd, icelake-server for vpdpbusd) cycles per instruction of the inner loop, on
# 1x1 and 3x3 layers of MobileNetV2 / ResNet-18. AVX2 (16 registers): 2x4, 2x3, 2x2, 4x2
# reach 0.63-0.66 cycles per vpmaddwd, 4x1 / 7x1 0.8, 4x3 / 7x2 spill (0.8-0.9). VNNI
# (32 registers): 4x4, 7x2, 7x3, 4x3, 2x6 reach 0.50 cycles per vpdpbusd (two per cycle).
_TILES_16 = ((2, 4), (2, 3), (4, 2), (2, 2), (1, 6), (1, 4), (1, 3), (7, 1), (4, 1), (2, 1),
             (1, 2), (8, 1), (1, 1))
_TILES_32 = ((4, 4), (7, 2), (4, 3), (7, 3), (2, 6), (8, 2), (2, 4), (4, 2), (1, 6), (1, 4),
             (2, 3), (7, 1), (8, 1), (4, 1), (1, 3), (2, 2), (2, 1), (1, 2), (1, 1))


def default_tiles(sp: QConvSpec, registers: int = 16) -> tuple[int, int]:
    """The first register tile of the ranked list for the vector register count that
    divides the output width (the pixel count for a flat 1x1) and the channel blocks."""
    ocb = -(-sp.oc // BLOCK)
    for t_ow, t_oc in _TILES_32 if registers >= 32 else _TILES_16:
        if sp.ow % t_ow == 0 and ocb % t_oc == 0:
            return t_ow, t_oc
    return 1, 1


def avx2_conv_func(sp: QConvSpec, tile_ow: int | None = None,
                   tile_oc: int | None = None) -> tirx.PrimFunc:
    """The scheduled PrimFunc (weights already packed with :func:`pack_weight_avx2`)."""
    return _x86_conv_func(sp, 2, PMADDWD_INTRIN, tile_ow, tile_oc, 16)


def vnni_conv_func(sp: QConvSpec, tile_ow: int | None = None,
                   tile_oc: int | None = None) -> tirx.PrimFunc:
    """uint8 activations only; weights packed with :func:`pack_weight_vnni`. Needs a
    target with AVX512-VNNI + AVX512VL (``vpdpbusd`` on 256-bit registers, 32 of them)."""
    if sp.x_dtype != "uint8":
        raise ValueError("the VNNI template takes uint8 activations")
    return _x86_conv_func(sp, 4, VPDPBUSD_INTRIN, tile_ow, tile_oc, 32)


def _schedule_out(sch: s_tir.Schedule, sp: QConvSpec, req, anchor) -> None:
    """Vectorise the epilogue (placed under loop ``anchor`` by ``reverse_compute_at``) over
    the 8 channels of a block: 8-byte stores when blocked, a scatter into NCHW otherwise."""
    loops = sch.get_loops(req)
    at = sch.get(anchor)
    depth = next(k for k, lp in enumerate(loops) if sch.get(lp).same_as(at)) + 1
    inner = loops[depth:]  # unit-extent loops are elided
    if sp.y_layout == "NCHW":
        rco, rci = sch.split(inner[0], [None, BLOCK])
        if len(inner) > 1:
            sch.reorder(rco, *inner[1:], rci)
        sch.vectorize(rci)
    else:
        sch.vectorize(inner[-1])


def _flat(sp: QConvSpec) -> bool:
    """A 1x1 stride-1 unpadded conv: computed as a ``1 x H*W`` image, so that its pixel
    tiles run across rows (any divisor of H*W, not of W)."""
    return (sp.kh, sp.kw, sp.stride) == (1, 1, (1, 1)) and not any(sp.padding)


def _x86_conv_func(sp: QConvSpec, kg: int, intrin: str, tile_ow: int | None,
                   tile_oc: int | None, registers: int) -> tirx.PrimFunc:
    _register()
    flat = _flat(sp)
    csp = replace(sp, h=1, w=sp.h * sp.w) if flat else sp  # the spec the TE computes
    d_ow, d_oc = default_tiles(csp, registers)
    ocb = -(-sp.oc // BLOCK)
    t_oc = _divisor_at_most(ocb, tile_oc or d_oc)
    t_ow = _divisor_at_most(csp.ow, tile_ow or d_ow)
    sch = s_tir.Schedule(te.create_prim_func(_conv_compute(csp, kg)))
    direct = _direct(csp, kg)
    io_layouts(sch, sp, "acc" if direct else "pack", flat)
    acc = sch.get_sblock("acc")
    req = sch.get_sblock("requant")
    if not direct:
        # pack: parallel over (n, channel block, row), 8 channels per vector
        pn, pb, pi, _pj, pc = sch.get_loops(sch.get_sblock("pack"))
        sch.parallel(sch.fuse(pn, pb, pi))
        sch.vectorize(pc)
    # conv: register tile (t_ow columns x t_oc blocks of 8 channels)
    n, b, i, j, o, rb, ry, rx, rk, rq = sch.get_loops(acc)
    bo, bi = sch.split(b, [None, t_oc])
    jo, ji = sch.split(j, [None, t_ow])
    if flat:  # parallel over (oc tile, pixel chunk): i has extent 1
        jc, jo = sch.split(jo, [None, _chunk(csp.ow // t_ow)])
        sch.reorder(n, bo, i, jc, jo, rb, ry, rx, rk, bi, ji, o, rq)
        sch.parallel(sch.fuse(n, bo, i, jc))
    else:
        sch.reorder(n, bo, i, jo, rb, ry, rx, rk, bi, ji, o, rq)
        sch.parallel(sch.fuse(n, bo, i))
    sch.set_scope(acc, 0, "local")  # accumulators: registers after unrolling
    sch.reverse_compute_at(req, jo)
    init = sch.decompose_reduction(acc, rb)
    sch.vectorize(sch.get_loops(init)[-1])
    sch.unroll(bi)
    sch.unroll(ji)
    sch.tensorize(o, intrin)
    _schedule_out(sch, csp, req, jo)
    return _finish(sch.mod["main"])


def _chunk(tiles: int) -> int:
    """Pixel tiles per parallel task of a flat 1x1 conv: about 8 (a row of a 56-wide image)."""
    return _divisor_at_most(tiles, 8)


# ----------------------------------------------------------------------------- depthwise
def dw_supported(sp: QConvSpec) -> bool:
    """Whether the x86 depthwise template takes ``sp``."""
    return sp.depthwise and sp.dilation == (1, 1) and sp.kw <= 8 and sp.n == 1


def _dw_compute(sp: QConvSpec, kg: int):
    wdt = "int16" if kg == 2 else "int8"
    cb = -(-sp.c // BLOCK)
    g = -(-sp.kw // kg)
    pt, pl, pb, _pr = sp.padding
    sh, sw = sp.stride
    hp = sp.h + pt + pb
    wq = max(sp.w + pl + sp.padding[3], (sp.ow - 1) * sw + g * kg)  # the zero-weight taps
    x = te.placeholder(te_shape(sp.n, sp.c, sp.h, sp.w, sp.x_layout), sp.x_dtype, name="x")
    wt = te.placeholder((cb, sp.kh, g, BLOCK, kg), wdt, name="w")
    bias = te.placeholder((sp.oc,), "int32", name="bias")
    p0, p1 = epilogue_params(sp, sp.oc)
    zx = tirx.const(sp.zx, sp.x_dtype)
    # the extra zero-weight tap columns past the right edge read zx too
    wide = QConvSpec(**{**sp.__dict__, "padding": (pt, pl, pb, wq - sp.w - pl)})
    xp = te.compute((sp.n, cb, hp, wq, BLOCK),
                    lambda n, b, i, j, c: padded_read(wide, x, n, b, c, i, j, zx), name="pad")
    ry = te.reduce_axis((0, sp.kh), name="ry")
    rg = te.reduce_axis((0, g), name="rg")
    rq = te.reduce_axis((0, kg), name="rq")
    acc = te.compute(
        (sp.n, cb, sp.oh, sp.ow, BLOCK),
        lambda n, b, i, j, c: te.sum(
            xp[n, b, i * sh + ry, j * sw + rg * kg + rq, c].astype("int32")
            * wt[b, ry, rg, c, rq].astype("int32"), axis=[ry, rg, rq]),
        name="acc")
    y = out_compute(sp, acc, bias, p0, p1)
    return [x, wt, bias, p0, p1, y]


def _rows_per_task(sp: QConvSpec, cb: int, threads: int = 16) -> int:
    """Output rows per parallel task: enough tasks for ``threads``, few recomputed pad rows."""
    for r in (8, 4, 2, 1):
        if sp.oh % r == 0 and cb * (sp.oh // r) >= 4 * threads:
            return r
    return 1


def _x86_dw_func(sp: QConvSpec, kg: int, intrin: str, tile_ow: int | None) -> tirx.PrimFunc:
    _register()
    cb = -(-sp.c // BLOCK)
    t_ow = _divisor_at_most(sp.ow, tile_ow or 8)
    rows = _rows_per_task(sp, cb)
    sch = s_tir.Schedule(te.create_prim_func(_dw_compute(sp, kg)))
    io_layouts(sch, sp, "pad")
    pad, acc, req = (sch.get_sblock(b) for b in ("pad", "acc", "requant"))
    n, b, i, j, c, ry, rg, rq = sch.get_loops(acc)
    io, ii = sch.split(i, [None, rows])
    jo, ji = sch.split(j, [None, t_ow])
    sch.reorder(n, b, io, ii, jo, ry, rg, ji, c, rq)
    task = sch.fuse(n, b, io)
    sch.parallel(task)
    sch.set_scope(acc, 0, "local")
    sch.reverse_compute_at(req, jo)
    sch.compute_at(pad, task)
    sch.vectorize(sch.get_loops(pad)[-1])
    init = sch.decompose_reduction(acc, ry)
    sch.vectorize(sch.get_loops(init)[-1])
    sch.unroll(ji)
    sch.tensorize(c, intrin)
    _schedule_out(sch, sp, req, jo)
    return _finish(sch.mod["main"])


def avx2_depthwise_func(sp: QConvSpec, tile_ow: int | None = None) -> tirx.PrimFunc:
    """Depthwise by ``vpmaddwd`` on tap pairs; weights from :func:`pack_weight_dw_avx2`."""
    return _x86_dw_func(sp, 2, DW_PAIR_INTRIN.format(sp.x_dtype), tile_ow)


def vnni_depthwise_func(sp: QConvSpec, tile_ow: int | None = None) -> tirx.PrimFunc:
    """Depthwise by ``vpdpbusd`` on tap quads (uint8 activations); weights from
    :func:`pack_weight_dw_vnni`."""
    if sp.x_dtype != "uint8":
        raise ValueError("the VNNI template takes uint8 activations")
    return _x86_dw_func(sp, 4, DW_QUAD_INTRIN, tile_ow)


# ----------------------------------------------------------------------------- selection
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


def _vnni_ok(sp: QConvSpec, target) -> bool:
    return target is not None and sp.x_dtype == "uint8" and has_vnni(target)


def avx2_conv_kernel(sp: QConvSpec, target=None):
    """The best x86 conv :class:`~pfcompile.quantexec.schedules.Kernel` for ``sp``, or None.

    ``x86-vnni-vpdpbusd`` when the TVM target enables VNNI (see
    :func:`with_int8_features`) and the activations are uint8; else
    ``x86-avx2-pmaddwd``.
    """
    from pfcompile.quantexec.schedules import Kernel

    if sp.groups != 1 or sp.n != 1:
        return None
    if _vnni_ok(sp, target):
        return Kernel("x86-vnni-vpdpbusd", vnni_conv_func(sp), pack_weight_vnni)
    return Kernel("x86-avx2-pmaddwd", avx2_conv_func(sp), pack_weight_avx2)


def x86_depthwise_kernel(sp: QConvSpec, target=None):
    """The x86 depthwise :class:`~pfcompile.quantexec.schedules.Kernel`, or None where
    the template does not apply (dilation, kernel wider than 8, batch > 1)."""
    from pfcompile.quantexec.schedules import Kernel

    if not dw_supported(sp):
        return None
    if _vnni_ok(sp, target):
        return Kernel("x86-vnni-dw-vpdpbusd", vnni_depthwise_func(sp), pack_weight_dw_vnni)
    return Kernel("x86-avx2-dw-pmaddwd", avx2_depthwise_func(sp), pack_weight_dw_avx2)
