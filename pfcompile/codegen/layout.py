"""Graph-level layout: every conv2d goes to a blocked layout (NCHW[x]c, the
NeoCPU approach) chosen per call, and ``relax.transform.ConvertLayout``
propagates it through elementwise ops and pooling so that activations stay
blocked between layers; only weights (constants, folded at compile time) and
the graph's edges are transformed."""

from __future__ import annotations

import numpy as np
from tvm import relax

__all__ = ["channel_chunk", "conv_layouts", "convert_layout_pass", "fold_constant_layout_transforms"]


def channel_chunk(channels: int, block: int) -> int:
    """The channel chunk for a tensor with ``channels`` channels: the whole
    channel count when it is at most ``block``, else the largest power of two
    ≤ ``block`` that divides it (1 for odd counts such as 37)."""
    if channels <= block:
        return channels
    b = block
    while b > 1 and channels % b:
        b //= 2
    return max(b, 1)


def conv_layouts(cin: int, cout: int, groups: int, block: int) -> list[str]:
    """[data, kernel, out] layouts for one conv2d."""
    ib, ob = channel_chunk(cin, block), channel_chunk(cout, block)
    if groups == 1:
        return [f"NCHW{ib}c", f"OIHW{ib}i{ob}o", f"NCHW{ob}c"]
    if groups == cin == cout:
        return [f"NCHW{ib}c", f"OIHW1i{ib}o", f"NCHW{ib}c"]
    return [f"NCHW{ib}c", f"OIHW1i{ob}o", f"NCHW{ob}c"]


def convert_layout_pass(block: int):
    """``ConvertLayout`` with a per-call callback (NCHW convs only)."""

    def cb(call: relax.Call) -> dict:
        if call.op.name != "relax.nn.conv2d":
            return {}
        a = call.attrs
        if str(a.data_layout) != "NCHW" or str(a.kernel_layout) != "OIHW":
            return {}
        xs, ws = call.args[0].ty.shape, call.args[1].ty.shape
        try:
            cin, cout = int(xs[1]), int(ws[0])
        except TypeError:  # symbolic channels: leave as is
            return {}
        return {"relax.nn.conv2d": conv_layouts(cin, cout, int(a.groups), block)}

    return relax.transform.ConvertLayout({}, cb)


_OPS = {"FloorDiv": lambda a, b: a // b, "FloorMod": lambda a, b: a % b,
        "Add": lambda a, b: a + b, "Sub": lambda a, b: a - b, "Mul": lambda a, b: a * b}


def _eval_index(expr, env: dict):
    kind = type(expr).__name__
    if kind in _OPS:
        return _OPS[kind](_eval_index(expr.a, env), _eval_index(expr.b, env))
    if kind == "IntImm":
        return int(expr.value)
    if kind == "Var":
        return env[str(expr.name)]
    raise NotImplementedError(kind)


def _map_array(index_map, src: np.ndarray) -> np.ndarray | None:
    """``index_map`` applied to an array with numpy (None if the map is not a
    plain split/reorder of axes)."""
    try:
        grids = np.indices(src.shape, sparse=False)
        env = {str(v.name): grids[i] for i, v in enumerate(index_map.initial_indices)}
        dst_idx = [np.broadcast_to(np.asarray(_eval_index(e, env)), src.shape)
                   for e in index_map.final_indices]
    except (NotImplementedError, KeyError, AttributeError):
        return None
    shape = tuple(int(i.max()) + 1 for i in dst_idx)
    if int(np.prod(shape)) != src.size:
        return None
    out = np.empty(shape, dtype=src.dtype)
    out[tuple(dst_idx)] = src
    return out


def fold_constant_layout_transforms(mod):
    """Apply ``layout_transform`` to constant weights here, in one pass over the
    data (``FoldConstant`` would compile and run one TIR kernel per weight)."""
    import tvm

    @relax.expr_functor.mutator
    class _Folder(relax.PyExprMutator):
        def _const(self, e):
            if isinstance(e, relax.Var):
                b = self.lookup_binding(e)
                e = b if b is not None else e
            return e.value.numpy() if isinstance(e, tvm.ir.expr.Constant) else None

        def visit_call_(self, call):
            call = super().visit_call_(call)
            if not (isinstance(call, relax.Call) and isinstance(call.op, tvm.ir.Op)):
                return call
            name = call.op.name
            if name not in ("relax.layout_transform", "relax.reshape", "relax.permute_dims"):
                return call
            src = self._const(call.args[0])
            if src is None:
                return call
            if name == "relax.layout_transform":
                if call.attrs.pad_value is not None:
                    return call
                folded = _map_array(call.attrs.index_map, src)
            elif name == "relax.reshape":
                try:
                    folded = src.reshape([int(v) for v in call.ty.shape])
                except (TypeError, ValueError):
                    return call
            else:
                axes = call.attrs.axes
                folded = np.ascontiguousarray(
                    np.transpose(src, [int(a) for a in axes] if axes is not None else None))
            return relax.const(folded) if folded is not None else call

    out = tvm.IRModule(dict(mod.functions), attrs=mod.attrs)
    for gv, func in mod.functions.items():
        if isinstance(func, relax.Function):
            out[gv] = _Folder().visit_expr(func)
    return out
