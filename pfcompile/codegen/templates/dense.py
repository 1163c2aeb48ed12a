"""Dense / matmul ``(M, K) × (K, N)``: vectorize along N, keep an
``n_tile``-wide row of accumulators in registers, unroll K by ``k_unroll``,
parallel over N tiles (batch-1 inference is a GEMV: memory bound).

A one-row product with a constant weight reads the weight pre-packed at compile time
(:func:`pack_dense_weights`): ``(N/v, K, v)`` strips of one vector ``v``, so that a tile
streams its columns from contiguous memory. In ``(K, N)`` order a tile of 128 columns
reads 512 bytes per row and then jumps a whole row: every K step touches a new 4 KB
page, where the hardware prefetchers stop (MobileNetV2's 1280 x 1000 head: see
docs/codegen.md)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tvm import relax, s_tir, te, tirx

from pfcompile.codegen.relax_util import fp32_matmul_weight
from pfcompile.codegen.templates.base import (
    Hardware,
    Workload,
    block_iter_kinds,
    dims_tuple,
    inline_epilogue,
    root_blocks,
    schedule_rest,
)

__all__ = ["DENSE_PACKED_BLOCK", "DenseParams", "DenseTemplate", "dense_packed",
           "pack_dense_weights"]

DENSE_PACKED_BLOCK = "pf_dense_packed"


@dataclass(frozen=True)
class DenseParams:
    n_tile: int = 32
    k_unroll: int = 4


def _matmul_block(sch: s_tir.Schedule):
    for b in root_blocks(sch):
        name = str(sch.get(b).name_hint)
        if name in ("matmul", "T_matmul", "T_dense", "dense", DENSE_PACKED_BLOCK) and \
                block_iter_kinds(sch, b) == [0, 0, 2]:
            return b, name
    return None, None


def dense_packed(x: te.Tensor, wp: te.Tensor, out_dtype: str) -> te.Tensor:
    """``x (M, K) × W (K, N)`` with ``W`` packed as ``wp (N/v, K, v)``
    (``wp[j // v, k, j % v] = W[k, j]``)."""
    m, k = (int(v) for v in x.shape)
    strips, _k, v = (int(d) for d in wp.shape)
    rk = te.reduce_axis((0, k), name="k")
    return te.compute(
        (m, strips * v),
        lambda i, j: te.sum(x[i, rk].astype(out_dtype) * wp[j // v, rk, j % v].astype(out_dtype),
                            axis=rk),
        name=DENSE_PACKED_BLOCK)


def pack_dense_weights(mod, hw: Hardware):
    """``matmul(x, W)`` with one row ``x (1, K)`` and a constant fp32 ``W (K, N)``, N a
    multiple of the vector width (after :func:`pfcompile.codegen.templates.matmul.
    pad_matmul_columns`) → :func:`dense_packed` with ``W`` packed once here into
    ``(N/v, K, v)`` strips (a constant of the library, the same bytes)."""

    lanes = hw.fp32_lanes

    @relax.expr_functor.mutator
    class _Pack(relax.PyExprMutator):
        def visit_call_(self, call):
            call = super().visit_call_(call)
            w = fp32_matmul_weight(self, call)
            if w is None:
                return call
            try:
                xs = [int(d) for d in call.args[0].ty.shape]
                xdt = str(call.args[0].ty.dtype)
            except (AttributeError, TypeError, ValueError):
                return call
            k, n = (int(d) for d in w.shape)
            if len(xs) != 2 or xs != [1, k] or xdt != "float32" or n % lanes or n < 2 * lanes:
                return call
            out_dtype = str(call.attrs.out_dtype)
            if out_dtype in ("", "void", "None"):
                out_dtype = "float32"
            wp = np.ascontiguousarray(w.reshape(k, n // lanes, lanes).transpose(1, 0, 2))
            return self.builder_.call_te(dense_packed, call.args[0], relax.const(wp), out_dtype,
                                         primfunc_name_hint="pf_dense")

    packer = _Pack(mod)
    for gv, func in mod.functions.items():
        if isinstance(func, relax.Function):
            packer.builder_.update_func(gv, packer.visit_expr(func))
    return packer.builder_.get()


class DenseTemplate:
    family = "dense"
    params_type = DenseParams

    def match(self, func: tirx.PrimFunc) -> Workload | None:
        sch = s_tir.Schedule(func)
        blk, name = _matmul_block(sch)
        if blk is None:
            return None
        s = sch.get(blk)
        if len(s.reads) != 2:
            return None
        a, bb = (r.source for r in s.reads)
        packed = name == DENSE_PACKED_BLOCK
        if len(a.shape) != 2 or len(bb.shape) != (3 if packed else 2):
            return None
        try:
            m, k = (int(v) for v in a.shape)
            if packed:
                strips, k2, v = (int(d) for d in bb.shape)
                n = strips * v
            else:
                k2, n = (int(v) for v in bb.shape)
        except TypeError:
            return None
        if k != k2:  # transposed weight: leave it to the generic schedule
            return None
        names = [str(sch.get(b).name_hint) for b in root_blocks(sch)]
        return Workload(self.family, dims_tuple({"m": m, "k": k, "n": n}), m * k * n,
                        f"N{v}KN" if packed else "NK", len(names) - names.index(name) - 1)

    def heuristic(self, wl: Workload, hw: Hardware) -> DenseParams:
        """The widest tile of whole vectors (up to 8) that divides N: a column tail
        would leave the kernel scalar, and a narrow strip reads each weight row
        a few bytes at a time (measured on 512/1280 x 1000: 8-wide tiles 2.4x
        slower than 40-wide ones)."""
        n = wl.d["n"]
        lanes = hw.fp32_lanes
        fits = [lanes * v for v in range(1, 9) if n % (lanes * v) == 0]
        t = max(fits) if fits else lanes
        if n <= 2 * t:          # small layer: one tile, no thread launch
            t = lanes * -(-n // lanes)
        return DenseParams(n_tile=t, k_unroll=4)

    def space(self, wl: Workload, hw: Hardware) -> list[DenseParams]:
        lanes = hw.fp32_lanes
        return [DenseParams(lanes * m, ku) for m in (1, 2, 3, 4, 6, 8) for ku in (1, 2, 4, 8)]

    def features(self, wl: Workload, p: DenseParams, hw: Hardware) -> list[float]:
        d = wl.d
        return [p.n_tile, p.k_unroll, p.n_tile / hw.fp32_lanes, 0.0, float(d["n"] % p.n_tile == 0),
                0.0, 0.0, 0.0, d["k"], d["n"], d["m"], 1, 1, 1, 1, 1, hw.fp32_lanes,
                hw.vector_registers, d["n"] // p.n_tile]

    def apply(self, func: tirx.PrimFunc, wl: Workload, p: DenseParams, hw: Hardware) -> tirx.PrimFunc:
        sch = s_tir.Schedule(func)
        blk, name = _matmul_block(sch)
        last, _ = inline_epilogue(sch, name)
        if last is not None:
            sch.set_scope(blk, 0, "local")
        else:
            last = sch.cache_write(blk, 0, "local")
        i, j, k = sch.get_loops(blk)
        jo, ji = sch.split(j, [None, p.n_tile])
        jio, jii = sch.split(ji, [None, hw.fp32_lanes])
        ko, ki = sch.split(k, [None, p.k_unroll])
        sch.reorder(i, jo, ko, ki, jio, jii)
        sch.vectorize(jii)
        sch.unroll(jio)
        sch.unroll(ki)
        sch.reverse_compute_at(last, jo)
        d = wl.d
        if -(-d["n"] // p.n_tile) >= 2 and d["m"] * d["k"] * d["n"] >= 32768:
            sch.parallel(sch.fuse(i, jo))
        sch.decompose_reduction(blk, ko)
        schedule_rest(sch, hw, {name, str(sch.get(last).name_hint), name + "_init"})
        return sch.mod["main"]
