"""AArch64 integer kernels: NEON ``smlal`` (int16 lanes) and the dot-product extension's
``sdot`` (int8 quads).

The templates are those of :mod:`pfcompile.quantexec.blocked`; this module holds the
tensor intrinsics and the two :class:`~pfcompile.quantexec.blocked.Isa` descriptions.

* **NEON** (Cortex-A72 class): activations widened to int16 in the kernel's pack; one input
  channel of one pixel is broadcast against 8 output channels of int16 weights and
  multiplied-accumulated into two int32x4 registers (``smlal`` / ``smlal2``: 4 exact MACs
  each). Depthwise: one tap of 8 channels (int16) times its 8 weights, ``smlal`` /
  ``smlal2``.
* **SDOT** (``+dotprod``, Cortex-A76 class): ``sdot`` adds four int8 x int8 products into
  each int32 lane (16 MACs per instruction, exact). It is signed on both sides, so uint8
  activations go in as ``x - 128`` (the kernel's ``x_offset`` = -128, folded into the bias
  by the caller); int8 activations go in as they are. Conv: a quad of input channels of one
  pixel broadcast (``ld1r`` / ``dup``) against ``[8 oc, 4 ic]`` weights: two ``sdot``.
  Depthwise: 4 horizontal taps x 8 channels loaded as 32 bytes, interleaved to
  ``[channel][tap]`` (``tbl`` / ``zip``), two ``sdot`` against ``[8, 4]`` weights.

The numerics are verified bit-exact on the emulated arm64 device (qemu-user,
``tests/test_quantexec_arm64.py``); the inner loops are checked with ``llvm-mca``
(``tools/mca_int8_kernels.py``). Neither gives ARM latencies.
"""

from __future__ import annotations

import numpy as np
from tvm import s_tir, tirx
from tvm.script import tirx as T

from pfcompile.quantexec.blocked import (
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
    x_offset,
)
from pfcompile.quantexec.kernels import QConvSpec

__all__ = ["NEON", "NEON_CONV_INTRIN", "NEON_DW_INTRIN", "SDOT", "SDOT_CONV_INTRIN",
           "SDOT_DW_INTRIN", "arm_conv_kernel", "arm_depthwise_kernel", "has_dotprod"]

NEON_CONV_INTRIN = "pf_neon_smlal_8x1"
NEON_DW_INTRIN = "pf_neon_dw_smlal"
SDOT_CONV_INTRIN = "pf_sdot_8x4"
SDOT_DW_INTRIN = "pf_sdot_dw_quad"


@T.prim_func(s_tir=True)
def _smlal_desc(
    A: T.Buffer((1,), "int16", offset_factor=1),
    B: T.Buffer((8, 1), "int16", offset_factor=1),
    C: T.Buffer((8,), "int32", offset_factor=1, scope="local"),
) -> None:
    with T.sblock("root"):
        T.reads(C[0:8], A[0:1], B[0:8, 0:1])
        T.writes(C[0:8])
        for i in T.serial(0, 8):  # one input channel: no reduction axis left in the block
            with T.sblock("update"):
                vi = T.axis.remap("S", [i])
                C[vi] = C[vi] + T.cast(A[0], "int32") * T.cast(B[vi, 0], "int32")


@T.prim_func(s_tir=True)
def _smlal_impl(
    A: T.Buffer((1,), "int16", offset_factor=1),
    B: T.Buffer((8, 1), "int16", offset_factor=1),
    C: T.Buffer((8,), "int32", offset_factor=1, scope="local"),
) -> None:
    with T.sblock("root"):
        T.reads(C[0:8], A[0:1], B[0:8, 0:1])
        T.writes(C[0:8])
        C[T.ramp(T.int32(0), 1, 8)] += T.Cast("int32x8", T.broadcast(A[0], 8)) * T.Cast(
            "int32x8", B.vload([0, 0], dtype="int16x8"))


@T.prim_func(s_tir=True)
def _dw_smlal_desc(
    A: T.Buffer((1, 8), "int16", offset_factor=1),
    B: T.Buffer((8, 1), "int16", offset_factor=1),
    C: T.Buffer((8,), "int32", offset_factor=1, scope="local"),
) -> None:
    with T.sblock("root"):
        T.reads(C[0:8], A[0:1, 0:8], B[0:8, 0:1])
        T.writes(C[0:8])
        for i in T.serial(0, 8):  # one tap
            with T.sblock("update"):
                vi = T.axis.remap("S", [i])
                C[vi] = C[vi] + T.cast(A[0, vi], "int32") * T.cast(B[vi, 0], "int32")


@T.prim_func(s_tir=True)
def _dw_smlal_impl(
    A: T.Buffer((1, 8), "int16", offset_factor=1),
    B: T.Buffer((8, 1), "int16", offset_factor=1),
    C: T.Buffer((8,), "int32", offset_factor=1, scope="local"),
) -> None:
    with T.sblock("root"):
        T.reads(C[0:8], A[0:1, 0:8], B[0:8, 0:1])
        T.writes(C[0:8])
        C[T.ramp(T.int32(0), 1, 8)] += T.Cast("int32x8", A.vload([0, 0], dtype="int16x8")) * T.Cast(
            "int32x8", B.vload([0, 0], dtype="int16x8"))


def _bcast_quad(a_buf):
    """The 4 int8 at the start of ``a_buf`` repeated over 16 lanes (an expression)."""
    return T.reinterpret(T.broadcast(T.reinterpret(a_buf.vload([0], "int8x4"), dtype="int32"), 4),
                         dtype="int8x16")


def _sdot(acc, a, b):
    return T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.sdot"),
                                   acc, a, b, dtype="int32x4")


@T.prim_func(s_tir=True)
def _sdot_desc(
    A: T.Buffer((4,), "int8", offset_factor=1),
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
def _sdot_impl(
    A: T.Buffer((4,), "int8", offset_factor=1),
    B: T.Buffer((8, 4), "int8", offset_factor=1),
    C: T.Buffer((8,), "int32", offset_factor=1, scope="local"),
) -> None:
    with T.sblock("root"):
        T.reads(C[0:8], A[0:4], B[0:8, 0:4])
        T.writes(C[0:8])
        # no name bound here (a = ...): TVM 0.27 made it a buffer allocated with
        # TVMBackendAllocWorkspace in every parallel task; LLVM merges the repeated expression
        C[T.ramp(T.int32(0), 1, 4)] = _sdot(C.vload([0], dtype="int32x4"),
                                            B.vload([0, 0], dtype="int8x16"), _bcast_quad(A))
        C[T.ramp(T.int32(4), 1, 4)] = _sdot(C.vload([4], dtype="int32x4"),
                                            B.vload([4, 0], dtype="int8x16"), _bcast_quad(A))


_QUAD_LO = [q * 8 + c for c in range(4) for q in range(4)]      # [tap][ch] -> [ch][tap]
_QUAD_HI = [q * 8 + c for c in range(4, 8) for q in range(4)]


@T.prim_func(s_tir=True)
def _sdot_dw_desc(
    A: T.Buffer((4, 8), "int8", offset_factor=1),
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
def _sdot_dw_impl(
    A: T.Buffer((4, 8), "int8", offset_factor=1),
    B: T.Buffer((8, 4), "int8", offset_factor=1),
    C: T.Buffer((8,), "int32", offset_factor=1, scope="local"),
) -> None:
    with T.sblock("root"):
        T.reads(C[0:8], A[0:4, 0:8], B[0:8, 0:4])
        T.writes(C[0:8])
        C[T.ramp(T.int32(0), 1, 4)] = _sdot(C.vload([0], dtype="int32x4"),
                                            B.vload([0, 0], dtype="int8x16"),
                                            T.Shuffle([A.vload([0, 0], dtype="int8x32")], _QUAD_LO))
        C[T.ramp(T.int32(4), 1, 4)] = _sdot(C.vload([4], dtype="int32x4"),
                                            B.vload([4, 0], dtype="int8x16"),
                                            T.Shuffle([A.vload([0, 0], dtype="int8x32")], _QUAD_HI))


_registered = False


def _register() -> None:
    global _registered
    if not _registered:
        for name, desc, impl in ((NEON_CONV_INTRIN, _smlal_desc, _smlal_impl),
                                 (NEON_DW_INTRIN, _dw_smlal_desc, _dw_smlal_impl),
                                 (SDOT_CONV_INTRIN, _sdot_desc, _sdot_impl),
                                 (SDOT_DW_INTRIN, _sdot_dw_desc, _sdot_dw_impl)):
            s_tir.TensorIntrin.register(name, desc, impl, override=True)
        _registered = True


# register tiles (output columns, blocks of 8 channels), best first; each block of 8 int32
# accumulators takes two of the 32 NEON registers (ranked with llvm-mca, see
# tools/mca_int8_kernels.py)
_ARM_TILES = ((4, 3), (4, 2), (2, 4), (2, 3), (7, 1), (2, 2), (4, 1), (1, 4), (1, 3),
              (2, 1), (1, 2), (8, 1), (1, 1))

NEON = Isa(
    conv_name="arm-neon-smlal", dw_name="arm-neon-dw-smlal", tiles=_ARM_TILES,
    conv_kg=1, conv_act="int16", conv_w="int16", conv_intrin=NEON_CONV_INTRIN,
    dw_kg=1, dw_act="int16", dw_w="int16", dw_intrin=NEON_DW_INTRIN,
    signed_dot=False, register=_register)
SDOT = Isa(
    conv_name="arm-sdot", dw_name="arm-sdot-dw", tiles=_ARM_TILES,
    conv_kg=4, conv_act="int8", conv_w="int8", conv_intrin=SDOT_CONV_INTRIN,
    dw_kg=4, dw_act="int8", dw_w="int8", dw_intrin=SDOT_DW_INTRIN,
    signed_dot=True, register=_register)


def has_dotprod(target) -> bool:
    """Whether the TVM target enables the dot-product extension."""
    return "+dotprod" in [str(a) for a in (getattr(target, "tvm", {}) or {}).get("mattr", [])]


def _pack_conv(isa: Isa):
    dtype = np.int16 if isa.conv_w == "int16" else np.int8
    return lambda w: pack_weight_conv(w, isa.conv_kg, dtype)


def _pack_dw(isa: Isa):
    dtype = np.int16 if isa.dw_w == "int16" else np.int8
    return lambda w: pack_weight_dw(w, isa.dw_kg, dtype)


def _isa(kind: str) -> Isa:
    return SDOT if kind == "sdot" else NEON


def arm_conv_kernel(sp: QConvSpec, kind: str, shared: bool = True):
    """The AArch64 conv :class:`~pfcompile.quantexec.kernel_choice.IntKernel` (``kind``: ``neon``
    or ``sdot``, see ``int8_dot_kind``), or None for batch > 1 / grouped convs."""
    from pfcompile.quantexec.kernel_choice import IntKernel

    if sp.groups != 1 or sp.n != 1:
        return None
    isa = _isa(kind)
    if shared and shareable(sp):
        # one function for the layers that differ only in channel counts (see conv_func)
        t_oc = kernel_tiles(sp, isa)[1]
        dtype = np.int16 if isa.conv_w == "int16" else np.int8
        return IntKernel(isa.conv_name, conv_func(sp, isa, shared=True),
                         lambda w: pack_weight_conv_shared(w, isa.conv_kg, dtype, t_oc),
                         x_offset(isa, sp.x_dtype), spatial_args(sp, isa))
    return IntKernel(isa.conv_name, conv_func(sp, isa), _pack_conv(isa), x_offset(isa, sp.x_dtype))


def arm_depthwise_kernel(sp: QConvSpec, kind: str, shared: bool = True):
    """The AArch64 depthwise kernel, or None where the template does not apply."""
    from pfcompile.quantexec.kernel_choice import IntKernel

    if not dw_supported(sp):
        return None
    isa = _isa(kind)
    return IntKernel(isa.dw_name, depthwise_func(sp, isa, shared=shared and shareable(sp)), _pack_dw(isa),
                     x_offset(isa, sp.x_dtype))


_ = tirx  # tirx: the PrimFunc type the templates return
