"""Dense / matmul ``(M, K) × (K, N)``: vectorize along N, keep an
``n_tile``-wide row of accumulators in registers, unroll K by ``k_unroll``,
parallel over N tiles (batch-1 inference is a GEMV: memory bound)."""

from __future__ import annotations

from dataclasses import dataclass

from tvm import s_tir, tirx

from pfcompile.codegen.templates.base import (
    Hardware,
    Workload,
    block_iter_kinds,
    dims_tuple,
    inline_epilogue,
    root_blocks,
    schedule_rest,
)

__all__ = ["DenseParams", "DenseTemplate"]


@dataclass(frozen=True)
class DenseParams:
    n_tile: int = 32
    k_unroll: int = 4


def _matmul_block(sch: s_tir.Schedule):
    for b in root_blocks(sch):
        name = str(sch.get(b).name_hint)
        if name in ("matmul", "T_matmul", "T_dense", "dense") and block_iter_kinds(sch, b) == [0, 0, 2]:
            return b, name
    return None, None


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
        if len(a.shape) != 2 or len(bb.shape) != 2:
            return None
        try:
            m, k = (int(v) for v in a.shape)
            k2, n = (int(v) for v in bb.shape)
        except TypeError:
            return None
        if k != k2:  # transposed weight: leave it to the generic schedule
            return None
        names = [str(sch.get(b).name_hint) for b in root_blocks(sch)]
        return Workload(self.family, dims_tuple({"m": m, "k": k, "n": n}), m * k * n, "NK",
                        len(names) - names.index(name) - 1)

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
