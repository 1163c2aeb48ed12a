"""Kernel selection: which integer template runs a layer on a target.

A :class:`IntKernel` is a scheduled TIR PrimFunc plus the numpy function that
lays the int8 weights out the way it reads them (done once, at compile time).
Templates:

* ``generic``: plain NCHW loops, parallel over output channels; any target.
* ``x86-avx2-pmaddwd`` / ``x86-vnni-vpdpbusd``: groups-1 convs, 8 output channels per
  vector, ``vpmaddwd`` on int16 channel pairs or ``vpdpbusd`` on uint8 quads (see
  :mod:`pfcompile.quantexec.x86`).
* ``x86-avx2-wino-pmaddwd``: 3x3 stride-1 convs on AVX2 targets, exact integer Winograd
  F(2x2, 3x3) (see :mod:`pfcompile.quantexec.winograd`), chosen by shape.
* ``x86-avx2-dw-pmaddwd`` / ``x86-vnni-dw-vpdpbusd``: depthwise, 8 channels per vector,
  horizontal taps in pairs / quads.
* ``arm-neon-smlal`` / ``arm-sdot`` and ``arm-neon-dw-smlal`` / ``arm-sdot-dw``: the same
  templates on AArch64 (see :mod:`pfcompile.quantexec.arm`).
* ``depthwise``: per-channel 2-D loops vectorised along the output row (anything else:
  dilated or wide depthwise kernels, batch > 1).

The x86 and AArch64 templates read and write both activation layouts (``NCHW`` and the blocked
``NCHW8c``); :func:`supports_blocked` says whether a layer's template does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from tvm import s_tir, te, tirx

from pfcompile.quantexec.kernels import QConvSpec, QDenseSpec, qconv2d_compute, qdense_compute

__all__ = ["IntKernel", "int8_dot_kind", "select_conv_kernel", "select_dense_kernel",
           "spatial_key", "supports_blocked"]


@dataclass(frozen=True)
class IntKernel:
    name: str  # template name, reported per layer
    func: tirx.PrimFunc
    pack_weight: Callable[[np.ndarray], np.ndarray]
    #: added to every activation (and the zero point) inside the kernel, e.g. -128 where
    #: uint8 data feeds a signed dot product; the caller folds ``-(zx + x_offset) * sum(w)``
    #: into the bias instead of ``-zx * sum(w)``
    x_offset: int = 0
    #: scalar arguments after the per-channel ``base`` (the sizes of a kernel shared across
    #: spatial sizes, ``blocked.spatial_args``)
    scalars: tuple = ()


def _identity(w: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(w.astype(np.int8))


_X86_INT8 = ("avx2", "avx-vnni", "avx512-vnni", "vnni")


def int8_dot_kind(target) -> str:
    """``x86`` / ``neon`` / ``sdot`` / ``generic`` from a pfcompile Target.

    Every x86 ``hardware.int8_dot`` value (``avx2``, ``avx-vnni``,
    ``avx512-vnni``) implies AVX2, which is all the x86 template needs.
    """
    hw = getattr(target, "hardware", {}) or {}
    kind = str(hw.get("int8_dot", "")).lower()
    if kind in _X86_INT8:
        return "x86"
    mattr = [str(a) for a in (getattr(target, "tvm", {}) or {}).get("mattr", [])]
    if kind == "sdot" or "+dotprod" in mattr:
        return "sdot"
    if kind == "neon" or getattr(target, "arch", "") == "aarch64":
        return "neon"
    return "generic"


def _finish(func: tirx.PrimFunc) -> tirx.PrimFunc:
    # op_pattern 8 (opaque): FuseOps must not merge other ops into a scheduled kernel
    return (func.with_attr("tirx.is_scheduled", True).with_attr("tir.noalias", True)
            .with_attr("op_pattern", 8))


def _generic_conv(sp: QConvSpec) -> tirx.PrimFunc:
    func = te.create_prim_func(qconv2d_compute(sp))
    sch = s_tir.Schedule(func)
    if any(sp.padding):
        sch.compute_inline(sch.get_sblock("pad"))
    acc = sch.get_sblock("acc")
    req = sch.get_sblock("requant")
    n, o, i, _j = sch.get_loops(req)
    fused = sch.fuse(n, o)
    sch.parallel(fused)
    sch.compute_at(acc, i)
    return _finish(sch.mod["main"])


def _depthwise_conv(sp: QConvSpec) -> tirx.PrimFunc:
    """Depthwise: one output row at a time, taps outside, the row vectorised."""
    func = te.create_prim_func(qconv2d_compute(sp))
    sch = s_tir.Schedule(func)
    if any(sp.padding):
        pad = sch.get_sblock("pad")
        pn, pc, _, pj = sch.get_loops(pad)
        sch.parallel(sch.fuse(pn, pc))
        sch.vectorize(pj)
    acc = sch.get_sblock("acc")
    req = sch.get_sblock("requant")
    n, o, i, _j = sch.get_loops(req)
    sch.parallel(sch.fuse(n, o))
    sch.compute_at(acc, i)
    aj, *taps = sch.get_loops(acc)[2:]  # the channel loop (extent 1) is gone
    sch.reorder(*taps, aj)
    sch.unroll(taps[-1])
    lanes = 16 if sp.ow % 16 == 0 else (8 if sp.ow % 8 == 0 else 0)
    if lanes:
        _, ji = sch.split(aj, [None, lanes])
        sch.vectorize(ji)
        _, rj = sch.split(sch.get_loops(req)[-1], [None, lanes])
        sch.vectorize(rj)
    sch.decompose_reduction(acc, taps[0])
    return _finish(sch.mod["main"])


def _generic_dense(sp: QDenseSpec) -> tirx.PrimFunc:
    func = te.create_prim_func(qdense_compute(sp))
    sch = s_tir.Schedule(func)
    acc = sch.get_sblock("acc")
    req = sch.get_sblock("requant")
    i, j = sch.get_loops(req)
    sch.parallel(j if sp.m == 1 else i)
    sch.compute_at(acc, j)
    return _finish(sch.mod["main"])


def supports_blocked(sp: QConvSpec, target) -> bool:
    """Whether the template :func:`select_conv_kernel` picks for ``sp`` reads and writes
    the blocked ``NCHW8c`` layout (else both sides must be ``NCHW``)."""
    from pfcompile.quantexec.blocked import dw_supported

    if int8_dot_kind(target) in ("x86", "neon", "sdot"):
        return sp.n == 1 and (sp.groups == 1 or dw_supported(sp))
    return False


def spatial_key(sp: QConvSpec, target):
    """What a conv kernel taking its spatial sizes as arguments (``blocked.conv_func`` with
    ``sp.spatial``) depends on: layers with equal keys share one. None where ``sp`` does not
    qualify (:func:`~pfcompile.quantexec.blocked.spatial_ok`; an x86 / AArch64 template), or
    where the shared kernel would use another register tile than ``sp``'s own kernel (the
    tile sets its speed: a layer keeps it), or would tile rows where the own kernel tiles
    pixels across rows. The key: the spec without channel counts and
    sizes, how the input size follows from the output size, and the tile."""
    from dataclasses import replace

    from pfcompile.quantexec.blocked import _conv_views, _flat, conv_tiles, kernel_tiles, spatial_ok

    kind = int8_dot_kind(target)
    if sp.groups != 1 or not spatial_ok(sp) or kind not in ("x86", "neon", "sdot"):
        return None
    if kind == "x86":
        from pfcompile.quantexec import winograd as wino
        from pfcompile.quantexec import x86

        isa = x86.VNNI if x86._vnni_ok(sp, target) else x86.AVX2
        if isa is x86.AVX2 and wino.wino_eligible(sp) and wino.wino_heuristic(sp):
            return None  # an integer Winograd layer: its own kernel
    else:
        from pfcompile.quantexec import arm

        isa = arm._isa(kind)
    tile = kernel_tiles(replace(sp, spatial=1), isa)
    if tile != conv_tiles(sp, isa):
        return None
    if _conv_views(sp, None)[1] != _flat(sp):
        # the layer's own kernel tiles output pixels across rows (a 3x3 stride-1 layer
        # narrower than 16), a shared one tiles rows: measured, ResNet-20 with its 8x8 and
        # 4x4 3x3 layers sharing 1.11x the time of the model (1 thread, alternating rounds)
        return None
    (sh, sw), dh, dw = sp.stride, sp.h - sp.stride[0] * sp.oh, sp.w - sp.stride[1] * sp.ow
    return (replace(sp, c=0, oc=0, h=0, w=0), dh, dw, sh, sw, tile)


def select_conv_kernel(sp: QConvSpec, target, shared: bool = True,
                       winograd: bool | None = None) -> IntKernel:
    """The kernel for ``sp`` on ``target``. ``shared``: the x86 / AArch64 templates give
    a function that also serves layers with other channel counts (see
    :func:`pfcompile.quantexec.blocked.conv_func`); False: one for these channel counts
    only (what tools/bench_int8_kernels.py --static times). ``winograd`` (x86 AVX2 only):
    None lets :func:`pfcompile.quantexec.winograd.wino_heuristic` choose integer Winograd
    for 3x3 stride-1 layers, False never, True wherever eligible."""
    kind = int8_dot_kind(target)
    k = None
    if kind == "x86":
        from pfcompile.quantexec import x86

        k = x86.avx2_conv_kernel(sp, target, shared, winograd) if sp.groups == 1 else \
            x86.x86_depthwise_kernel(sp, target, shared)
    elif kind in ("neon", "sdot"):
        from pfcompile.quantexec import arm

        k = arm.arm_conv_kernel(sp, kind, shared) if sp.groups == 1 else \
            arm.arm_depthwise_kernel(sp, kind, shared)
    if k is not None:
        return k
    if sp.x_layout != "NCHW" or sp.y_layout != "NCHW":
        raise ValueError(f"no {kind} template for {sp} reads or writes a blocked layout")
    if sp.depthwise:
        return IntKernel("depthwise", _depthwise_conv(sp), _identity)
    return IntKernel("generic", _generic_conv(sp), _identity)


def select_dense_kernel(sp: QDenseSpec, target) -> IntKernel:
    return IntKernel("generic", _generic_dense(sp), _identity)
