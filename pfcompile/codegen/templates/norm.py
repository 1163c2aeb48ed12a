"""Row-wise normalisations: Softmax and LayerNorm (the op, or its ReduceMean /
Sub / Pow / Sqrt / Div decomposition, rewritten to the op here), and the
vectorizable approximations of exp / erf / tanh / sigmoid / GELU they and the
activations use.

**Graph level** (:func:`fuse_layer_norm`): ``(x - mean(x)) / sqrt(mean((x -
mean(x))²) + eps) · γ + β`` over the last axis, as exporters that have no
LayerNormalization op write it (PaddlePaddle, opset < 17), becomes
``relax.nn.layer_norm`` — one kernel instead of seven.

**Legalization** (:data:`FAST_MATH_LEGALIZE`): TVM lowers ``exp``, ``erf``,
``tanh`` and ``sigmoid`` to scalar libm calls (2–6 ns per element measured,
never vectorized); these legalize them with TOPI's polynomial approximations
(``topi.fast_exp`` / ``fast_erf`` / ``fast_tanh``: 0.3–0.8 ns per element,
vectorized, ≤ 3.3e-7 relative error measured over [-87, 88] against float64 —
the libm ``tanh`` TVM emits was 9.7e-5 off). GELU (erf and tanh forms), SiLU and
Softmax go through the same approximations.

**Schedule** (:class:`NormTemplate`): one parallel loop over rows, every stage of
the row (max, exp, sum, normalise / mean, variance, normalise, fused epilogue)
computed under it on a row-sized buffer, the elementwise stages vectorized along
the row, the row reductions vectorized by ``rfactor`` (lane-wise partial sums,
then one horizontal sum).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import tvm
from tvm import relax, s_tir, te, tirx, topi

from pfcompile.codegen.templates.base import (
    Hardware,
    Workload,
    block_iter_kinds,
    dims_tuple,
    root_blocks,
)

__all__ = [
    "FAST_MATH_LEGALIZE",
    "NormParams",
    "NormTemplate",
    "fuse_layer_norm",
]


# ----------------------------------------------------------------------------- legalization
def _fast_sigmoid(x: te.Tensor) -> te.Tensor:
    e = topi.fast_exp(topi.negative(x))
    return te.compute(x.shape, lambda *i: tirx.const(1.0, x.dtype) / (tirx.const(1.0, x.dtype) + e(*i)),
                      name="T_sigmoid")


def _fast_gelu(x: te.Tensor) -> te.Tensor:
    """0.5·x·(1 + erf(x/√2))"""
    s = te.compute(x.shape, lambda *i: x(*i) * tirx.const(1 / math.sqrt(2), x.dtype), name="T_gelu_s")
    e = topi.fast_erf(s)
    half = tirx.const(0.5, x.dtype)
    return te.compute(x.shape, lambda *i: x(*i) * (half + half * e(*i)), name="T_gelu")


def _fast_gelu_tanh(x: te.Tensor) -> te.Tensor:
    """0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))"""
    c = tirx.const(math.sqrt(2 / math.pi), x.dtype)
    a = tirx.const(0.044715, x.dtype)
    s = te.compute(x.shape, lambda *i: c * (x(*i) + a * x(*i) * x(*i) * x(*i)), name="T_gelu_s")
    t = topi.fast_tanh(s)
    half = tirx.const(0.5, x.dtype)
    return te.compute(x.shape, lambda *i: x(*i) * (half + half * t(*i)), name="T_gelu")


def _fast_silu(x: te.Tensor) -> te.Tensor:
    sg = _fast_sigmoid(x)
    return te.compute(x.shape, lambda *i: x(*i) * sg(*i), name="T_silu")


def _default(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
    return call.op.get_attr("FLegalize")(bb, call)


def _unary(fte):
    def legalize(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
        if str(call.args[0].ty.dtype) != "float32":
            return _default(bb, call)
        return bb.call_te(fte, call.args[0])
    return legalize


def _softmax(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
    x = call.args[0]
    if str(x.ty.dtype) != "float32":
        return _default(bb, call)
    ndim = len(x.ty.shape)
    axis = int(call.attrs.axis) % ndim
    return bb.call_te(topi.nn.fast_softmax, x, axis, primfunc_name_hint="softmax")


#: ``LegalizeOps`` overrides (float32 only; other dtypes keep TVM's legalization)
FAST_MATH_LEGALIZE = {
    "relax.exp": _unary(topi.fast_exp),
    "relax.erf": _unary(topi.fast_erf),
    "relax.tanh": _unary(topi.fast_tanh),
    "relax.sigmoid": _unary(_fast_sigmoid),
    "relax.nn.gelu": _unary(_fast_gelu),
    "relax.nn.gelu_tanh": _unary(_fast_gelu_tanh),
    "relax.nn.silu": _unary(_fast_silu),
    "relax.nn.softmax": _softmax,
}


# ----------------------------------------------------------------------------- graph rewrite
def _last_axis(call: relax.Call) -> bool:
    """A ``relax.mean`` over the last axis only, keeping dims."""
    a = call.attrs
    try:
        ndim = len(call.args[0].ty.shape)
        axes = [int(v) % ndim for v in a.axis]
    except (TypeError, AttributeError):
        return False
    return bool(a.keepdims) and axes == [ndim - 1]


def _scalar(expr) -> float | None:
    if isinstance(expr, tvm.ir.expr.Constant):
        v = expr.value.numpy()
        if v.size == 1:
            return float(v.reshape(()))
    return None


def fuse_layer_norm(mod: tvm.IRModule) -> tvm.IRModule:
    """Rewrite LayerNorm decompositions over the last axis to ``relax.nn.layer_norm``."""
    from tvm.relax.dpl import is_const, is_op, rewrite_call, wildcard

    x = wildcard()
    mean1 = is_op("relax.mean")(x)
    diff = is_op("relax.subtract")(x, mean1)
    sq = is_op("relax.power")(diff, is_const()) | is_op("relax.multiply")(diff, diff)
    var = is_op("relax.mean")(sq)
    eps = is_const()
    std = is_op("relax.sqrt")(is_op("relax.add")(var, eps))
    norm = is_op("relax.divide")(diff, std)
    gamma, beta = is_const(), is_const()
    scaled = is_op("relax.multiply")(norm, gamma)
    pattern = is_op("relax.add")(scaled, beta)

    def rewriter(expr, m):
        xv, e = m[x], _scalar(m[eps])
        if e is None or not (_last_axis(m[mean1]) and _last_axis(m[var])):
            return expr
        sqv = m[sq]
        if sqv.op.name == "relax.power" and _scalar(sqv.args[1]) != 2.0:
            return expr
        try:
            shape = [int(v) for v in xv.ty.shape]
        except (TypeError, AttributeError):
            return expr
        import numpy as np

        g, b = m[gamma].value.numpy(), m[beta].value.numpy()
        c = shape[-1]
        try:
            g = np.broadcast_to(g, shape).reshape(-1, c)
            b = np.broadcast_to(b, shape).reshape(-1, c)
        except ValueError:
            return expr
        if not (np.all(g == g[:1]) and np.all(b == b[:1])):
            return expr  # scale or shift varies along other axes: not a LayerNorm
        return relax.op.nn.layer_norm(xv, relax.const(np.ascontiguousarray(g[0])),
                                      relax.const(np.ascontiguousarray(b[0])),
                                      axes=[len(shape) - 1], epsilon=e)

    out = tvm.IRModule(dict(mod.functions), attrs=mod.attrs)
    for gv, func in mod.functions.items():
        if isinstance(func, relax.Function):
            out[gv] = rewrite_call(pattern, rewriter, func)
    return out


# ----------------------------------------------------------------------------- template
@dataclass(frozen=True)
class NormParams:
    vector_reductions: bool = True   # rfactor the row reductions into lane-wise partial sums


_MARKERS = {"T_softmax_maxelem": "softmax", "T_layer_norm": "layer_norm"}


def _kind(sch: s_tir.Schedule) -> tuple[str, list] | None:
    blocks = root_blocks(sch)
    for b in blocks:
        kind = _MARKERS.get(str(sch.get(b).name_hint))
        if kind:
            return kind, blocks
    return None


def _extent(sch: s_tir.Schedule, loop) -> int | None:
    try:
        return int(sch.get(loop).extent)
    except (TypeError, ValueError):
        return None


class NormTemplate:
    """Template for fused Softmax / LayerNorm kernels (TVM's and TOPI's block names)."""

    family = "norm"
    params_type = NormParams

    def match(self, func: tirx.PrimFunc) -> Workload | None:
        sch = s_tir.Schedule(func)
        found = _kind(sch)
        if found is None:
            return None
        kind, blocks = found
        last = sch.get(blocks[-1])
        try:
            shape = [int(v) for v in last.writes[0].source.shape]
        except (TypeError, IndexError):
            return None
        kinds = block_iter_kinds(sch, blocks[-1])
        if any(k != 0 for k in kinds) or len(shape) < 1:
            return None
        rows = 1
        for v in shape[:-1]:
            rows *= v
        d = {"rows": rows, "cols": shape[-1], "softmax": int(kind == "softmax")}
        return Workload(self.family, dims_tuple(d), rows * shape[-1], kind, 0)

    def heuristic(self, wl: Workload, hw: Hardware) -> NormParams:
        return NormParams(True)

    def space(self, wl: Workload, hw: Hardware) -> list[NormParams]:
        return [NormParams(True), NormParams(False)]

    def features(self, wl: Workload, p: NormParams, hw: Hardware) -> list[float]:
        d = wl.d
        return [float(p.vector_reductions), 0, 0, 0, float(d["cols"] % hw.fp32_lanes == 0), 0, 0,
                0, d["cols"], d["rows"], d["softmax"], 1, 1, 1, 1, 1, hw.fp32_lanes,
                hw.vector_registers, d["rows"]]

    def apply(self, func: tirx.PrimFunc, wl: Workload, p: NormParams,
              hw: Hardware) -> tirx.PrimFunc:
        d = wl.d
        lanes = hw.fp32_lanes
        sch = s_tir.Schedule(func)
        blocks = root_blocks(sch)
        names = [str(sch.get(b).name_hint) for b in blocks]
        last = blocks[-1]
        # cheap elementwise stages (the softmax's x - max, the mean) are inlined
        for b, n in zip(blocks[:-1], names[:-1], strict=True):
            if all(k == 0 for k in block_iter_kinds(sch, b)) and "exp" not in n:
                with contextlib.suppress(Exception):
                    sch.compute_inline(b)
        loops = sch.get_loops(last)
        row = sch.fuse(*loops[:-1]) if len(loops) > 2 else loops[0]
        col = loops[-1]
        vec_cols = d["cols"] % lanes == 0 and d["cols"] >= lanes
        if vec_cols:
            _co, ci = sch.split(col, [None, lanes])
            sch.vectorize(ci)
        if d["rows"] >= 2 * hw.cores and d["rows"] * d["cols"] >= 4096:
            sch.parallel(row)
        # every other stage of the row under the row loop, last first
        rest = [b for b in root_blocks(sch) if not sch.get(b).same_as(sch.get(last))]
        for b in reversed(rest):
            sch.compute_at(b, row)
        for b in root_blocks(sch):
            if sch.get(b).same_as(sch.get(last)):
                continue
            kinds = block_iter_kinds(sch, b)
            lo = sch.get_loops(b)[1:]
            if not lo:
                continue
            if all(k == 0 for k in kinds):
                if vec_cols and _extent(sch, lo[-1]) == d["cols"]:
                    _o, i = sch.split(lo[-1], [None, lanes])
                    sch.vectorize(i)
            elif p.vector_reductions and vec_cols and _extent(sch, lo[-1]) == d["cols"]:
                with contextlib.suppress(Exception):
                    self._vector_reduce(sch, b, lo[-1], lanes)
        return sch.mod["main"]

    @staticmethod
    def _vector_reduce(sch: s_tir.Schedule, block, loop, lanes: int) -> None:
        """Lane-wise partial reductions (vectorized), then one horizontal reduction."""
        _ko, ki = sch.split(loop, [None, lanes])
        rf = sch.rfactor(ki, 0)
        lo = sch.get_loops(rf)
        # rf loops: ..., ki (spatial), ko (reduction) → ko outer, ki inner vectorized
        sch.reorder(lo[-1], lo[-2])
        sch.vectorize(sch.get_loops(rf)[-1])
        sch.decompose_reduction(rf, sch.get_loops(rf)[-2])
