"""Kernel selection: which integer template runs a layer on a target.

A :class:`Kernel` is a scheduled TIR PrimFunc plus the numpy function that
lays the int8 weights out the way it reads them (done once, at compile time).
Templates:

* ``generic``: plain NCHW loops, parallel over output channels; any target.
* ``x86-avx2-pmaddwd``: NCHW[2c] int16 pairs x OIHW[8o2i] int16 weights,
  ``vpmaddwd`` (16 exact int16 MACs per instruction, no saturation), register
  tile of output columns x 8 channels (see :mod:`pfcompile.quantexec.x86`).
* ``depthwise``: per-channel 2-D loops vectorised along the output row.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from tvm import s_tir, te, tirx

from pfcompile.quantexec.kernels import QConvSpec, QDenseSpec, qconv2d_compute, qdense_compute

__all__ = ["Kernel", "select_conv_kernel", "select_dense_kernel", "int8_dot_kind"]


@dataclass(frozen=True)
class Kernel:
    name: str  # template name, reported per layer
    func: tirx.PrimFunc
    pack_weight: Callable[[np.ndarray], np.ndarray]


def _identity(w: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(w.astype(np.int8))


def int8_dot_kind(target) -> str:
    """``avx2`` / ``neon`` / ``sdot`` / ``generic`` from a pfcompile Target."""
    hw = getattr(target, "hardware", {}) or {}
    kind = str(hw.get("int8_dot", "")).lower()
    if kind:
        return kind
    mattr = [str(a) for a in (getattr(target, "tvm", {}) or {}).get("mattr", [])]
    if "+dotprod" in mattr:
        return "sdot"
    if getattr(target, "arch", "") == "aarch64":
        return "neon"
    return "generic"


def _finish(func: tirx.PrimFunc) -> tirx.PrimFunc:
    return func.with_attr("tir.is_scheduled", True).with_attr("tir.noalias", True)


def _generic_conv(sp: QConvSpec) -> tirx.PrimFunc:
    func = te.create_prim_func(qconv2d_compute(sp))
    sch = s_tir.Schedule(func)
    if any(sp.padding):
        sch.compute_inline(sch.get_sblock("pad"))
    acc = sch.get_sblock("acc")
    req = sch.get_sblock("requant")
    n, o, i, j = sch.get_loops(req)
    fused = sch.fuse(n, o)
    sch.parallel(fused)
    sch.compute_at(acc, i)
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


def select_conv_kernel(sp: QConvSpec, target) -> Kernel:
    kind = int8_dot_kind(target)
    if kind in ("avx2", "vnni") and sp.groups == 1:
        from pfcompile.quantexec import x86

        k = x86.avx2_conv_kernel(sp)
        if k is not None:
            return k
    return Kernel("depthwise" if sp.depthwise else "generic", _generic_conv(sp), _identity)


def select_dense_kernel(sp: QDenseSpec, target) -> Kernel:
    return Kernel("generic", _generic_dense(sp), _identity)
