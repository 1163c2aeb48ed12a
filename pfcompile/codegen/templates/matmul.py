"""MatMul / batched MatMul ``(..., M, K) × (..., K, N)`` as TVM legalizes
``relax.matmul`` (a block named ``matmul`` / ``T_matmul`` / ``T_batch_matmul*``
with spatial iters ``(batch..., i, j)`` and one reduction ``k``; the second
operand may be shared by every batch, as a weight is): the attention products
``Q·Kᵀ`` and ``P·V`` and every Linear layer of a token model.

Register tile: ``m_tile`` rows × ``n_vec`` vectors of N in accumulators, the
reduction over K inside (per k: ``n_vec`` vector loads of B reused by every row,
``m_tile`` broadcasts of A), the fused epilogue (bias, GELU, residual, scale)
computed on the tile, parallel over (batch, column tiles, row tiles): the row
tiles of one column tile run back to back so that B's column tile is read from
memory once (tokens × features: B, the weight, is the large operand).

N that is not a multiple of the vector width (a head dimension of 15, 6625
classes) is split the same way; the pipeline's loop partitioning
(``s_tir.LoopPartition``, constant loops on, see
:func:`pfcompile.codegen.pipeline.build`) peels the last column tile so that
every other tile stays vectorized.
"""

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

__all__ = ["MATMUL_BLOCKS", "MatmulParams", "MatmulTemplate", "pad_matmul_columns", "vector_width"]

MATMUL_BLOCKS = ("matmul", "T_matmul", "T_batch_matmul_NN", "T_batch_matmul", "NN_matmul")


@dataclass(frozen=True)
class MatmulParams:
    m_tile: int = 4         # rows of the register tile
    n_vec: int = 2          # vectors of N per row of the register tile


def _ints(shape) -> list[int] | None:
    try:
        return [int(v) for v in shape]
    except TypeError:
        return None


def _var(e) -> str | None:
    return str(e.name) if type(e).__name__ == "Var" else None


def _find(sch: s_tir.Schedule):
    """(block, name, dims) of the matmul block in NN layout, or None."""
    for b in root_blocks(sch):
        s = sch.get(b)
        name = str(s.name_hint)
        if name not in MATMUL_BLOCKS:
            continue
        kinds = block_iter_kinds(sch, b)
        if len(kinds) < 3 or kinds[-1] != 2 or any(k != 0 for k in kinds[:-1]):
            continue
        if len(s.reads) != 2 or len(s.writes) != 1:
            continue
        ivs = [str(iv.var.name) for iv in s.iter_vars]
        ki, ji, ii = ivs[-1], ivs[-2], ivs[-3]
        a, bb = s.reads
        ia = [_var(r.min) for r in a.region]
        ib = [_var(r.min) for r in bb.region]
        if not ia or not ib or ia[-1] != ki or ib[-1] != ji or len(ib) < 2 or ib[-2] != ki:
            return None  # not (.., i, k) x (.., k, j): leave it to the generic schedule
        if len(ia) < 2 or ia[-2] != ii:
            return None
        out = _ints(s.writes[0].source.shape)
        ash, bsh = _ints(a.source.shape), _ints(bb.source.shape)
        if out is None or ash is None or bsh is None or str(a.source.dtype) != "float32":
            return None
        batch = 1
        for v in out[:-2]:
            batch *= v
        shared = 1
        for v in bsh[:-2]:
            shared *= v
        if len(out) == 2 and out[0] == 1:
            return None  # one row: a GEMV, the dense template's
        dims = {"batch": batch, "m": out[-2], "n": out[-1], "k": ash[-1],
                "bshared": int(shared == 1 and batch > 1)}
        return b, name, dims
    return None


def vector_width(n: int, hw: Hardware) -> int:
    """The widest vector (``fp32_lanes``, halves of it, down to 4) that divides
    ``n`` — no column tail, so every tile vectorizes; 0 when none does."""
    w = hw.fp32_lanes
    while w >= 4:
        if n % w == 0:
            return w
        w //= 2
    return 0


class MatmulTemplate:
    """Template for N-D ``matmul`` blocks (2-D with one row is the dense template's)."""

    family = "matmul"
    params_type = MatmulParams

    def match(self, func: tirx.PrimFunc) -> Workload | None:
        sch = s_tir.Schedule(func)
        found = _find(sch)
        if found is None:
            return None
        _b, name, d = found
        names = [str(sch.get(b).name_hint) for b in root_blocks(sch)]
        macs = d["batch"] * d["m"] * d["n"] * d["k"]
        return Workload(self.family, dims_tuple(d), macs, "MK,KN",
                        len(names) - names.index(name) - 1)

    def heuristic(self, wl: Workload, hw: Hardware) -> MatmulParams:
        """The register tile that fills most of the register file (one register for
        the broadcast, ``n_vec`` for the B vectors): fewest loads per FMA, rows that
        divide M and column tiles that divide N preferred (a column tail would
        leave the whole kernel unvectorized)."""
        d = wl.d
        w = vector_width(d["n"], hw)
        nvec_max = max(1, d["n"] // w) if w else 1
        best: tuple[float, MatmulParams] | None = None
        for n_vec in (1, 2, 3, 4):
            if n_vec > nvec_max or (w and d["n"] % (n_vec * w)):
                continue
            cap = (hw.vector_registers - 1 - n_vec) // n_vec
            for m_tile in range(1, min(cap, d["m"]) + 1):
                acc = m_tile * n_vec
                ratio = (m_tile + n_vec) / acc          # loads per FMA
                tail = (-d["m"]) % m_tile / d["m"]
                score = ratio + tail - 0.01 * acc
                if best is None or score < best[0]:
                    best = (score, MatmulParams(m_tile, n_vec))
        return best[1] if best else MatmulParams(1, 1)

    def space(self, wl: Workload, hw: Hardware) -> list[MatmulParams]:
        d = wl.d
        out = []
        for n_vec in (1, 2, 3, 4, 6):
            if (n_vec - 1) * hw.fp32_lanes >= d["n"]:
                break
            for m_tile in range(1, min(d["m"], 16) + 1):
                if m_tile * n_vec > hw.vector_registers + 2:
                    break
                out.append(MatmulParams(m_tile, n_vec))
        return out

    def features(self, wl: Workload, p: MatmulParams, hw: Hardware) -> list[float]:
        d = wl.d
        acc = p.m_tile * p.n_vec
        nt = p.n_vec * hw.fp32_lanes
        return [p.m_tile, p.n_vec, acc, acc / hw.vector_registers, float(d["n"] % nt == 0),
                ((-d["n"]) % nt) / d["n"], float(d["m"] % p.m_tile == 0), d["bshared"], d["k"],
                d["n"], d["m"], d["batch"], 1, 1, 1, 1, hw.fp32_lanes, hw.vector_registers,
                d["batch"] * -(-d["m"] // p.m_tile) * -(-d["n"] // nt)]

    def apply(self, func: tirx.PrimFunc, wl: Workload, p: MatmulParams,
              hw: Hardware) -> tirx.PrimFunc:
        d = wl.d
        sch = s_tir.Schedule(func)
        found = _find(sch)
        if found is None:
            raise ValueError("no matmul block")
        blk, name, _d = found
        last, _ = inline_epilogue(sch, name)
        if last is not None:
            sch.set_scope(blk, 0, "local")
        else:
            last = sch.cache_write(blk, 0, "local")
        loops = sch.get_loops(blk)
        batch, i, j, k = loops[:-3], loops[-3], loops[-2], loops[-1]
        m_tile = max(1, min(p.m_tile, d["m"]))
        io, it = sch.split(i, [None, m_tile])
        w = vector_width(d["n"], hw)
        vec = w > 0
        if vec:
            n_vec = p.n_vec if d["n"] % (p.n_vec * w) == 0 else 1
            jo, jt, jv = sch.split(j, [None, n_vec, w])
            sch.reorder(*batch, jo, io, k, it, jt, jv)
            sch.vectorize(jv)
            sch.unroll(jt)
        else:
            jo, jv = sch.split(j, [None, d["n"]])
            sch.reorder(*batch, jo, io, k, it, jv)
            sch.unroll(jv)
        sch.unroll(it)
        sch.reverse_compute_at(last, io)
        tiles = d["batch"] * -(-d["m"] // m_tile) * -(-d["n"] // max(1, p.n_vec * max(w, 1)))
        if tiles >= 2 * hw.cores and wl.macs >= 65536:
            sch.parallel(sch.fuse(*batch, jo, io))
        el = sch.get_loops(last)
        inner = el[-1]
        ext = sch.get(inner).extent
        if vec and int(ext) % w == 0:
            _o, iv = sch.split(inner, [None, w])
            sch.vectorize(iv)
        sch.decompose_reduction(blk, k)
        schedule_rest(sch, hw, {name, str(sch.get(last).name_hint), name + "_init"})
        return sch.mod["main"]


def pad_matmul_columns(mod, hw: Hardware):
    """``matmul(x, W)`` with a constant 2-D ``W`` whose column count N is not a
    multiple of the vector width (6625 classes, 1000 + 1) → ``matmul(x, W')``
    with zero columns appended (done here, once: ``W'`` is a constant) and a
    slice back to N. Without it the column tail keeps the whole kernel scalar
    (measured 1.1 vs 28 GMAC/s on a 20×120×6625 product); with it the kernel
    pays a few zero columns and a copy of its output."""
    import numpy as np
    import tvm
    from tvm import relax

    from pfcompile.codegen.relax_util import fp32_matmul_weight

    step = 2 * hw.fp32_lanes

    @relax.expr_functor.mutator
    class _Pad(relax.PyExprMutator):
        def visit_call_(self, call):
            call = super().visit_call_(call)
            w = fp32_matmul_weight(self, call)
            if w is None:
                return call
            n = int(w.shape[1])
            if n % hw.fp32_lanes == 0 or n < 2 * hw.fp32_lanes:
                return call
            try:
                ndim = len(call.ty.shape)
            except (AttributeError, TypeError):
                return call
            padded = np.pad(w, ((0, 0), (0, -n % step)))
            out_dtype = call.attrs.out_dtype
            mm = self.builder_.emit(relax.op.matmul(call.args[0], relax.const(padded),
                                                    out_dtype=out_dtype))
            return relax.op.strided_slice(mm, axes=[ndim - 1], begin=[0], end=[n])

    out = tvm.IRModule(dict(mod.functions), attrs=mod.attrs)
    for gv, func in mod.functions.items():
        if isinstance(func, relax.Function):
            out[gv] = _Pad().visit_expr(func)
    return out
