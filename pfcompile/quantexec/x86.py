"""x86 integer kernels: AVX2 ``vpmaddwd`` (int16 pairs) and AVX-512 VNNI ``vpdpbusd``.

Why int16 pairs and not ``vpmaddubsw`` (u8 x s8): ``vpmaddubsw`` adds two
u8*s8 products into a *saturating* int16, and 255*127*2 > 32767, so it can
give wrong numbers on real activations unless weights are cut to 7 bits.
``vpmaddwd`` multiplies 16 int16 pairs and adds each pair into an int32 lane
exactly: 16 MACs per instruction (an fp32 FMA does 8). ``vpdpbusd`` (VNNI) adds
four u8*s8 products into each int32 lane exactly: 32 MACs per instruction.

This module holds the tensor intrinsics and the two :class:`~pfcompile.quantexec.blocked.Isa`
descriptions; the templates themselves are in :mod:`pfcompile.quantexec.blocked`.

* conv: ``pf_avx2_pmaddwd_8x2`` (a channel pair of one pixel broadcast as one int32,
  times ``[8 oc, 2 ic]`` int16 weights), ``pf_vnni_vpdpbusd_8x4`` (a uint8 quad, times
  ``[8, 4]`` int8). On x86 a 256-bit ``vpbroadcastd`` and the ``vpaddd`` after each
  ``vpmaddwd`` share the four FP pipes with it (Zen), which is why AVX2 int8 gains less
  over fp32 FMA than the MAC count says; ``vpdpbusd`` accumulates in place.
* depthwise: ``pf_avx2_dw_pair_{u8,i8}`` (2 taps x 8 channels loaded as 16 bytes,
  interleaved, widened to int16, one ``vpmaddwd``), ``pf_vnni_dw_quad`` (4 taps x 8
  channels, 32 bytes, interleaved, one ``vpdpbusd``).
"""

from __future__ import annotations

import numpy as np
from tvm import s_tir, tirx
from tvm.script import tirx as T

from pfcompile.quantexec.blocked import (
    GLOBAL_ACC,
    Isa,
    conv_func,
    depthwise_func,
    dw_supported,
    kernel_tiles,
    pack_weight_conv,
    pack_weight_conv_shared,
    pack_weight_dw,
    shareable,
    spatial_args,
)
from pfcompile.quantexec.kernels import QConvSpec

__all__ = ["AVX2", "DW_PAIR_INTRIN", "DW_QUAD_INTRIN", "PMADDWD_INTRIN", "VNNI",
           "VPDPBUSD_INTRIN", "avx2_conv_func", "avx2_conv_kernel", "avx2_depthwise_func",
           "dw_supported", "has_vnni", "pack_weight_avx2", "pack_weight_dw_avx2",
           "pack_weight_dw_vnni", "pack_weight_vnni", "vnni_conv_func", "vnni_depthwise_func",
           "with_int8_features", "x86_depthwise_kernel"]

PMADDWD_INTRIN = "pf_avx2_pmaddwd_8x2"
VPDPBUSD_INTRIN = "pf_vnni_vpdpbusd_8x4"
DW_PAIR_INTRIN = "pf_avx2_dw_pair_{}"   # .format(x dtype)
DW_QUAD_INTRIN = "pf_vnni_dw_quad"


# ----------------------------------------------------------------------------- intrinsics
def _pmaddwd_desc(scope: str):
    @T.prim_func(s_tir=True)
    def func(
        A: T.Buffer((2,), "int16", offset_factor=1),
        B: T.Buffer((8, 2), "int16", offset_factor=1),
        C: T.Buffer((8,), "int32", offset_factor=1, scope=scope),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:8], A[0:2], B[0:8, 0:2])
            T.writes(C[0:8])
            for i in T.serial(0, 8):
                for k in T.serial(0, 2):
                    with T.sblock("update"):
                        vi, vk = T.axis.remap("SR", [i, k])
                        C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vi, vk], "int32")

    return func


def _pmaddwd_impl(scope: str):
    @T.prim_func(s_tir=True)
    def func(
        A: T.Buffer((2,), "int16", offset_factor=1),
        B: T.Buffer((8, 2), "int16", offset_factor=1),
        C: T.Buffer((8,), "int32", offset_factor=1, scope=scope),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:8], A[0:2], B[0:8, 0:2])
            T.writes(C[0:8])
            # one expression: a name bound here (a = ...) became a buffer that TVM 0.27
            # allocated with TVMBackendAllocWorkspace in every parallel task
            C[T.ramp(T.int32(0), 1, 8)] += T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"),
                T.reinterpret(T.broadcast(T.reinterpret(A.vload([0], "int16x2"), dtype="int32"), 8),
                              dtype="int16x16"),
                B.vload([0, 0], dtype="int16x16"), dtype="int32x8")

    return func


def _vpdpbusd_desc(scope: str):
    @T.prim_func(s_tir=True)
    def func(
        A: T.Buffer((4,), "uint8", offset_factor=1),
        B: T.Buffer((8, 4), "int8", offset_factor=1),
        C: T.Buffer((8,), "int32", offset_factor=1, scope=scope),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:8], A[0:4], B[0:8, 0:4])
            T.writes(C[0:8])
            for i in T.serial(0, 8):
                for k in T.serial(0, 4):
                    with T.sblock("update"):
                        vi, vk = T.axis.remap("SR", [i, k])
                        C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vi, vk], "int32")

    return func


def _vpdpbusd_impl(scope: str):
    @T.prim_func(s_tir=True)
    def func(
        A: T.Buffer((4,), "uint8", offset_factor=1),
        B: T.Buffer((8, 4), "int8", offset_factor=1),
        C: T.Buffer((8,), "int32", offset_factor=1, scope=scope),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:8], A[0:4], B[0:8, 0:4])
            T.writes(C[0:8])
            # LLVM 22: <32 x i8> operands; one expression (see _pmaddwd_impl)
            C[T.ramp(T.int32(0), 1, 8)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.256"),
                C.vload([0], dtype="int32x8"),
                T.reinterpret(T.broadcast(T.reinterpret(A.vload([0], "uint8x4"), dtype="int32"), 8),
                              dtype="uint8x32"),
                B.vload([0, 0], dtype="int8x32"), dtype="int32x8")

    return func


_PAIR_IDX = [q * 8 + c for c in range(8) for q in range(2)]   # [tap][ch] -> [ch][tap]
_QUAD_IDX = [q * 8 + c for c in range(8) for q in range(4)]


def _dw_pair(xdt: str, scope: str = "local"):
    """Depthwise, 2 taps x 8 channels: C[c] += A[0, c] * B[c, 0] + A[1, c] * B[c, 1]."""

    @T.prim_func(s_tir=True)
    def desc(
        A: T.Buffer((2, 8), xdt, offset_factor=1),
        B: T.Buffer((8, 2), "int16", offset_factor=1),
        C: T.Buffer((8,), "int32", offset_factor=1, scope=scope),
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
        C: T.Buffer((8,), "int32", offset_factor=1, scope=scope),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:8], A[0:2, 0:8], B[0:8, 0:2])
            T.writes(C[0:8])
            C[T.ramp(T.int32(0), 1, 8)] += T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"),
                T.Cast("int16x16", T.Shuffle([A.vload([0, 0], dtype=xdt + "x16")], _PAIR_IDX)),
                B.vload([0, 0], dtype="int16x16"), dtype="int32x8")

    return desc, impl


def _dw_quad_desc(scope: str):
    @T.prim_func(s_tir=True)
    def func(
        A: T.Buffer((4, 8), "uint8", offset_factor=1),
        B: T.Buffer((8, 4), "int8", offset_factor=1),
        C: T.Buffer((8,), "int32", offset_factor=1, scope=scope),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:8], A[0:4, 0:8], B[0:8, 0:4])
            T.writes(C[0:8])
            for i in T.serial(0, 8):
                for k in T.serial(0, 4):
                    with T.sblock("update"):
                        vi, vk = T.axis.remap("SR", [i, k])
                        C[vi] = C[vi] + T.cast(A[vk, vi], "int32") * T.cast(B[vi, vk], "int32")

    return func


def _dw_quad_impl(scope: str):
    @T.prim_func(s_tir=True)
    def func(
        A: T.Buffer((4, 8), "uint8", offset_factor=1),
        B: T.Buffer((8, 4), "int8", offset_factor=1),
        C: T.Buffer((8,), "int32", offset_factor=1, scope=scope),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:8], A[0:4, 0:8], B[0:8, 0:4])
            T.writes(C[0:8])
            C[T.ramp(T.int32(0), 1, 8)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.256"),
                C.vload([0], dtype="int32x8"),
                T.Shuffle([A.vload([0, 0], dtype="uint8x32")], _QUAD_IDX),
                B.vload([0, 0], dtype="int8x32"), dtype="int32x8")

    return func


_registered = False


def _register() -> None:
    global _registered
    if not _registered:
        for scope, sfx in (("local", ""), ("global", GLOBAL_ACC)):
            s_tir.TensorIntrin.register(PMADDWD_INTRIN + sfx, _pmaddwd_desc(scope),
                                        _pmaddwd_impl(scope), override=True)
            s_tir.TensorIntrin.register(VPDPBUSD_INTRIN + sfx, _vpdpbusd_desc(scope),
                                        _vpdpbusd_impl(scope), override=True)
            for xdt in ("uint8", "int8"):
                s_tir.TensorIntrin.register(DW_PAIR_INTRIN.format(xdt) + sfx,
                                            *_dw_pair(xdt, scope), override=True)
            s_tir.TensorIntrin.register(DW_QUAD_INTRIN + sfx, _dw_quad_desc(scope),
                                        _dw_quad_impl(scope), override=True)
        _registered = True


# ----------------------------------------------------------------------------- ISAs
#: the register tiles' accumulators on the stack (registers after SROA), see ``Isa.acc_scope``:
#: MobileNetV2 int8 on AVX2, one thread, whole model 0.96x the time with "local" (loaded)
ACC_SCOPE = "global"
AVX2 = Isa(
    conv_name="x86-avx2-pmaddwd", dw_name="x86-avx2-dw-pmaddwd",
    # register tiles, best first: llvm-mca (znver3) cycles per vpmaddwd of the inner loop on
    # 1x1 and 3x3 layers of MobileNetV2 / ResNet-18: 2x4, 2x3, 2x2, 4x2 reach 0.63-0.66,
    # 4x1 / 7x1 0.8, 4x3 / 7x2 spill (0.8-0.9) with 16 registers
    tiles=((2, 4), (2, 3), (4, 2), (2, 2), (1, 6), (1, 4), (1, 3), (7, 1), (4, 1), (2, 1),
           (1, 2), (8, 1), (1, 1)),
    conv_kg=2, conv_act="int16", conv_w="int16", conv_intrin=PMADDWD_INTRIN,
    dw_kg=2, dw_act="x", dw_w="int16", dw_intrin=DW_PAIR_INTRIN.replace("{}", "{x}"),
    signed_dot=False, register=_register, acc_scope=ACC_SCOPE,
    # two-stage epilogue: 0.9x the time of a 16->96 1x1 layer at 112x112 (one thread)
    split_cast=True)
VNNI = Isa(
    conv_name="x86-vnni-vpdpbusd", dw_name="x86-vnni-dw-vpdpbusd",
    # llvm-mca (icelake-server), 32 registers: 4x4, 7x2, 4x3, 7x3, 2x6 reach 0.50 cycles per
    # vpdpbusd (two per cycle)
    tiles=((4, 4), (7, 2), (4, 3), (7, 3), (2, 6), (8, 2), (2, 4), (4, 2), (1, 6), (1, 4),
           (2, 3), (7, 1), (8, 1), (4, 1), (1, 3), (2, 2), (2, 1), (1, 2), (1, 1)),
    conv_kg=4, conv_act="uint8", conv_w="int8", conv_intrin=VPDPBUSD_INTRIN,
    dw_kg=4, dw_act="uint8", dw_w="int8", dw_intrin=DW_QUAD_INTRIN,
    signed_dot=False, register=_register, acc_scope=ACC_SCOPE,
    # not the two-stage epilogue: MobileNetV2 int8 1.12x the time with it (AVX-512 targets
    # truncate 8 lanes with one vpmovdb)
    split_cast=False)


def pack_weight_avx2(w: np.ndarray) -> np.ndarray:
    """OIHW int8 -> ``[OC/8, C/8, KH, KW, 4, 8, 2]`` int16 (zero-padded channels)."""
    return pack_weight_conv(w, 2, np.int16)


def pack_weight_vnni(w: np.ndarray) -> np.ndarray:
    """OIHW int8 -> ``[OC/8, C/8, KH, KW, 2, 8, 4]`` int8 (zero-padded channels)."""
    return pack_weight_conv(w, 4, np.int8)


def pack_weight_dw_avx2(w: np.ndarray) -> np.ndarray:
    """Depthwise ``[C, 1, KH, KW]`` int8 -> ``[C/8, KH, KW/2, 8, 2]`` int16 (taps in pairs)."""
    return pack_weight_dw(w, 2, np.int16)


def pack_weight_dw_vnni(w: np.ndarray) -> np.ndarray:
    """Depthwise ``[C, 1, KH, KW]`` int8 -> ``[C/8, KH, KW/4, 8, 4]`` int8 (taps in quads)."""
    return pack_weight_dw(w, 4, np.int8)


def avx2_conv_func(sp: QConvSpec, tile_ow: int | None = None,
                   tile_oc: int | None = None) -> tirx.PrimFunc:
    """The scheduled PrimFunc (weights already packed with :func:`pack_weight_avx2`)."""
    return conv_func(sp, AVX2, tile_ow, tile_oc)


def vnni_conv_func(sp: QConvSpec, tile_ow: int | None = None,
                   tile_oc: int | None = None) -> tirx.PrimFunc:
    """uint8 activations only; weights packed with :func:`pack_weight_vnni`. Needs a
    target with AVX512-VNNI + AVX512VL (``vpdpbusd`` on 256-bit registers, 32 of them)."""
    if sp.x_dtype != "uint8":
        raise ValueError("the VNNI template takes uint8 activations")
    return conv_func(sp, VNNI, tile_ow, tile_oc)


def avx2_depthwise_func(sp: QConvSpec, tile_ow: int | None = None) -> tirx.PrimFunc:
    """Depthwise by ``vpmaddwd`` on tap pairs; weights from :func:`pack_weight_dw_avx2`."""
    return depthwise_func(sp, AVX2, tile_ow)


def vnni_depthwise_func(sp: QConvSpec, tile_ow: int | None = None) -> tirx.PrimFunc:
    """Depthwise by ``vpdpbusd`` on tap quads (uint8 activations); weights from
    :func:`pack_weight_dw_vnni`."""
    if sp.x_dtype != "uint8":
        raise ValueError("the VNNI template takes uint8 activations")
    return depthwise_func(sp, VNNI, tile_ow)


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


def avx2_conv_kernel(sp: QConvSpec, target=None, shared: bool = True,
                     winograd: bool | None = None):
    """The best x86 conv :class:`~pfcompile.quantexec.kernel_choice.IntKernel` for ``sp``, or None.

    ``x86-vnni-vpdpbusd`` when the TVM target enables VNNI (see
    :func:`with_int8_features`) and the activations are uint8; else, for a 3x3 stride-1
    layer that :func:`~pfcompile.quantexec.winograd.wino_heuristic` (or ``winograd=True``)
    gives to it, the exact integer Winograd ``x86-avx2-wino-pmaddwd``; else
    ``x86-avx2-pmaddwd``. ``shared``: one function for the layers that differ only in
    channel counts, where :func:`~pfcompile.quantexec.blocked.shareable` (False: a function
    for these channel counts, e.g. to time the two). ``winograd``: None chooses by the
    heuristic, False never, True wherever eligible.
    """
    from pfcompile.quantexec import winograd as wino
    from pfcompile.quantexec.kernel_choice import IntKernel

    if sp.groups != 1 or sp.n != 1:
        return None
    isa, dtype = (VNNI, np.int8) if _vnni_ok(sp, target) else (AVX2, np.int16)
    if isa is AVX2 and winograd is not False and wino.wino_eligible(sp) \
            and (winograd or wino.wino_heuristic(sp)):
        return IntKernel(wino.WINO_NAME, wino.wino_func(sp), wino.pack_weight_wino)
    if shared and shareable(sp):
        # one function for the layers that differ only in channel counts (see conv_func)
        t_oc = kernel_tiles(sp, isa)[1]
        return IntKernel(isa.conv_name, conv_func(sp, isa, shared=True),
                         lambda w: pack_weight_conv_shared(w, isa.conv_kg, dtype, t_oc),
                         scalars=spatial_args(sp, isa))
    if isa is VNNI:
        return IntKernel(VNNI.conv_name, vnni_conv_func(sp), pack_weight_vnni)
    return IntKernel(AVX2.conv_name, avx2_conv_func(sp), pack_weight_avx2)


def x86_depthwise_kernel(sp: QConvSpec, target=None, shared: bool = True):
    """The x86 depthwise :class:`~pfcompile.quantexec.kernel_choice.IntKernel`, or None where
    the template does not apply (dilation, kernel wider than 8, batch > 1)."""
    from pfcompile.quantexec.kernel_choice import IntKernel

    if not dw_supported(sp):
        return None
    shared = shared and shareable(sp)
    if _vnni_ok(sp, target):
        return IntKernel(VNNI.dw_name, depthwise_func(sp, VNNI, shared=shared),
                         pack_weight_dw_vnni)
    return IntKernel(AVX2.dw_name, depthwise_func(sp, AVX2, shared=shared), pack_weight_dw_avx2)
