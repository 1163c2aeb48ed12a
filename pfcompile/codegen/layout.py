"""Graph-level layout: every conv2d goes to a blocked layout (NCHW[x]c, the
NeoCPU approach) chosen per call, and ``relax.transform.ConvertLayout``
propagates it through elementwise ops and pooling so that activations stay
blocked between layers; only weights (constants, folded at compile time) and
the graph's edges are transformed.

Tensors that meet in one op (a Concat of 16 + 12 channels, an Add, a Split)
must share a channel chunk, or ConvertLayout fails ("Invalid layout axis 8b").
:func:`layout_classes` groups every conv's input and output into classes of
tensors connected through non-conv ops and gives each class one chunk that
divides every channel count in it (a power of two <= the vector block, or the
count itself when the class has a single count <= the block). Ops whose layout
TVM cannot convert (``conv2d_transpose``) keep NCHW: ConvertLayout inserts the
transforms around them. If ConvertLayout still fails, the pipeline compiles
the graph in plain NCHW (correct, slower; see ``pipeline.fuse_to_tir``)."""

from __future__ import annotations

import itertools

import numpy as np
from tvm import relax

from pfcompile.codegen.relax_util import bound_constant

__all__ = ["blocked_fake_quant", "canonicalize_for_layout", "channel_chunk", "conv_layouts",
           "convert_layout_pass", "fold_constant_layout_transforms", "fold_input_transforms",
           "layout_classes"]


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


def _class_chunk(counts: set[int], block: int) -> int:
    """One chunk for a class of tensors with these channel counts."""
    if len(counts) == 1:
        return channel_chunk(next(iter(counts)), block)
    b = block
    while b > 1 and any(c % b for c in counts):
        b //= 2
    return max(b, 1)


_NEW_LAYOUT_OPS = ("relax.nn.conv2d", "relax.nn.conv2d_transpose")


def layout_classes(func: relax.Function, block: int) -> dict[relax.Call, tuple[int, int]]:
    """Per conv2d call: (data chunk, output chunk) such that every tensor class
    (tensors joined by non-conv ops: Concat, Add, Split, activations, pooling...)
    has one chunk. Over-joining (e.g. through a reshape) only makes chunks smaller."""
    parent: dict[object, object] = {}

    def find(a):
        parent.setdefault(a, a)
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    def union(a, b):
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[rb] = ra

    def channels(e) -> int | None:
        try:
            shape = e.ty.shape
            if len(shape) == 4:
                return int(shape[1])
        except (AttributeError, TypeError, ValueError):
            return None
        return None

    counts: dict[object, int] = {}
    convs: list[tuple[relax.Call, relax.Var]] = []

    def tensor_args(call: relax.Call) -> list:
        out = []
        for a in call.args:
            if isinstance(a, relax.Tuple):
                out.extend(x for x in a.fields if isinstance(x, relax.Var))
            elif isinstance(a, relax.Var):
                out.append(a)
        return out

    for block_ in func.body.blocks:
        for b in block_.bindings:
            v, val = b.var, b.value
            c = channels(v)
            if c is not None:
                counts[v] = c
            find(v)
            if isinstance(val, relax.Call) and hasattr(val.op, "name"):
                args = tensor_args(val)
                for a in args:
                    c = channels(a)
                    if c is not None:
                        counts[a] = c
                if val.op.name in _NEW_LAYOUT_OPS:
                    if val.op.name == "relax.nn.conv2d":
                        convs.append((val, v))
                        ws = val.args[1].ty.shape
                        xs = val.args[0].ty.shape
                        try:
                            dw = int(val.attrs.groups) == int(xs[1]) == int(ws[0])
                        except (TypeError, ValueError):
                            dw = False
                        if dw and args:  # depthwise: one layout for input and output
                            union(args[0], v)
                    continue
                for a in args:
                    union(a, v)
            elif isinstance(val, (relax.Var, relax.TupleGetItem, relax.Tuple)):
                srcs = [val] if isinstance(val, relax.Var) else (
                    [val.tuple_value] if isinstance(val, relax.TupleGetItem) else
                    [x for x in val.fields if isinstance(x, relax.Var)])
                for a in srcs:
                    if isinstance(a, relax.Var):
                        union(a, v)
    per_class: dict[object, set[int]] = {}
    for t, c in counts.items():
        per_class.setdefault(find(t), set()).add(c)
    chunk = {r: _class_chunk(cs, block) for r, cs in per_class.items()}
    out: dict[relax.Call, tuple[int, int]] = {}
    for call, v in convs:
        x = call.args[0]
        out[call] = (chunk.get(find(x), 1) if isinstance(x, relax.Var) else 1,
                     chunk.get(find(v), 1))
    return out


def conv_layouts(cin: int, cout: int, groups: int, block: int,
                 chunks: tuple[int, int] | None = None) -> list[str]:
    """[data, kernel, out] layouts for one conv2d (``chunks``: from :func:`layout_classes`)."""
    ib, ob = chunks if chunks is not None else (channel_chunk(cin, block),
                                                channel_chunk(cout, block))
    if groups == 1:
        # (not NCHW1c for an RGB input: tried, it saved MobileNetV2 a 73 µs input
        # transpose but made the layout rewrite leave every conv of the PP-OCR classifier
        # (48x192 input) on TVM's unblocked path: 0.40 -> 5.0 ms, 2 threads;
        # tests/test_realmodels.py::test_convs_run_on_the_templates)
        return [f"NCHW{ib}c", f"OIHW{ib}i{ob}o", f"NCHW{ob}c"]
    if groups == cin == cout:
        return [f"NCHW{ib}c", f"OIHW1i{ib}o", f"NCHW{ib}c"]
    return [f"NCHW{ib}c", f"OIHW1i{ob}o", f"NCHW{ob}c"]


def convert_layout_pass(block: int):
    """``ConvertLayout`` with a per-call callback (NCHW convs only), chunks chosen per
    tensor class (:func:`layout_classes`); ``conv2d_transpose`` stays NCHW."""
    import tvm

    @tvm.transform.module_pass(opt_level=0, name="PfcompileConvertLayout")
    def _pass(mod, ctx):
        chunks: dict = {}
        for f in mod.functions.values():
            if isinstance(f, relax.Function):
                chunks.update(layout_classes(f, block))

        def cb(call: relax.Call) -> dict:
            if call.op.name == "relax.nn.conv2d_transpose":
                return {"relax.nn.conv2d_transpose": ["NCHW", "IOHW"]}
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
            return {"relax.nn.conv2d": conv_layouts(cin, cout, int(a.groups), block,
                                                    chunks.get(call))}

        return relax.transform.ConvertLayout({}, cb)(split_to_slices(mod))

    return _pass


#: the most channels an NCHW tensor may have for a conv to read it through
#: :func:`fold_input_transforms` (its padding stage gathers this many planes per row)
FOLD_MAX_CHANNELS = 4


def fold_input_transforms(mod):
    """``conv2d(layout_transform(x: NCHW → NCHW{C}c), w)`` where ``x`` has ``C`` ≤
    :data:`FOLD_MAX_CHANNELS` channels (one chunk: the RGB input of a stem conv) →
    ``conv2d(x, w, data_layout="NCHW")``: the conv's padding stage reads the planes and
    writes its padded rows channel-last (:func:`pfcompile.codegen.te_ops.conv2d_nchwc`),
    and the transform, a separate kernel over the whole input (MobileNetV2 224²: 90 µs
    of ~7 ms at one thread), goes away when nothing else reads it.

    Run after :func:`convert_layout_pass`: the layout assignment itself is unchanged
    (every other conv keeps its blocked layout; an NCHW1c stem *layout* was tried and
    sent the PP-OCR classifier's convs off the templates, see :func:`conv_layouts`)."""
    import tvm

    def _is_chunk_transpose(call, c: int) -> bool:
        im = call.attrs.index_map
        try:
            for probe in ([0, c - 1, 2, 3], [0, 0, 1, 0], [0, c // 2, 0, 5]):
                got = [int(v) for v in im.map_indices(probe)]
                if got != [probe[0], 0, probe[2], probe[3], probe[1]]:
                    return False
        except Exception:  # noqa: BLE001 - an index map we cannot evaluate: leave it
            return False
        return True

    @relax.expr_functor.mutator
    class _Fold(relax.PyExprMutator):
        def visit_call_(self, call):
            call = super().visit_call_(call)
            if not (isinstance(call, relax.Call) and isinstance(call.op, tvm.ir.Op)
                    and call.op.name == "relax.nn.conv2d"):
                return call
            a = call.attrs
            data = call.args[0]
            src = self.lookup_binding(data) if isinstance(data, relax.Var) else None
            if not (isinstance(src, relax.Call) and isinstance(src.op, tvm.ir.Op)
                    and src.op.name == "relax.layout_transform"
                    and src.attrs.pad_value is None):
                return call
            try:
                xs = [int(v) for v in src.args[0].ty.shape]
                ts = [int(v) for v in data.ty.shape]
            except (AttributeError, TypeError, ValueError):
                return call
            if len(xs) != 4 or len(ts) != 5 or ts[1] != 1:
                return call
            c = xs[1]
            if (c > FOLD_MAX_CHANNELS or ts[4] != c or int(a.groups) != 1
                    or str(a.data_layout) != f"NCHW{c}c"
                    or not str(a.kernel_layout).startswith(f"OIHW{c}i")
                    or not _is_chunk_transpose(src, c)):
                return call
            return relax.op.nn.conv2d(src.args[0], call.args[1], strides=a.strides,
                                      padding=a.padding, dilation=a.dilation, groups=a.groups,
                                      data_layout="NCHW", kernel_layout=a.kernel_layout,
                                      out_layout=a.out_layout, out_dtype=a.out_dtype)

    out = tvm.IRModule(dict(mod.functions), attrs=mod.attrs)
    for gv, func in mod.functions.items():
        if isinstance(func, relax.Function):
            out[gv] = _Fold().visit_expr(func)
    return relax.transform.DeadCodeElimination()(out)


def split_to_slices(mod):
    """``split`` on the channel axis -> one ``strided_slice`` per part. TVM 0.27's
    ConvertLayout moves a channel split into NCHW[x]c without scaling its indices
    (the second part comes out empty); slices convert correctly."""
    import tvm

    @relax.expr_functor.mutator
    class _Splitter(relax.PyExprMutator):
        def visit_call_(self, call):
            call = super().visit_call_(call)
            if not (isinstance(call, relax.Call) and isinstance(call.op, tvm.ir.Op)
                    and call.op.name == "relax.split"):
                return call
            try:
                shape = [int(d) for d in call.args[0].ty.shape]
            except (TypeError, ValueError, AttributeError):
                return call
            axis = int(call.attrs.axis) % len(shape)
            if axis != 1:
                return call
            ind = call.attrs.indices_or_sections
            if not hasattr(ind, "__len__"):   # a number of equal sections
                n = int(ind)
                step = shape[1] // n
                bounds = [i * step for i in range(n + 1)]
            else:
                bounds = [0, *[int(i) for i in ind], shape[1]]
            parts = [relax.op.strided_slice(call.args[0], [1], [lo], [hi])
                     for lo, hi in itertools.pairwise(bounds)]
            return relax.Tuple([self.builder_.emit(p) for p in parts])

    out = tvm.IRModule(dict(mod.functions), attrs=mod.attrs)
    for gv, func in mod.functions.items():
        if isinstance(func, relax.Function):
            out[gv] = _Splitter().visit_expr(func)
    return relax.transform.Normalize()(out)


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
        def visit_call_(self, call):
            call = super().visit_call_(call)
            if not (isinstance(call, relax.Call) and isinstance(call.op, tvm.ir.Op)):
                return call
            name = call.op.name
            if name not in ("relax.layout_transform", "relax.reshape", "relax.permute_dims"):
                return call
            src = bound_constant(self, call.args[0])
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


_BINARY = ("relax.add", "relax.subtract", "relax.multiply", "relax.divide", "relax.maximum",
           "relax.minimum", "relax.power")


def _scalar_value(mutator, e):
    """The float value of a one-element constant expression (a constant, or
    ``where(isnan(c), a, c)`` as TVM's ONNX Clip writes its bounds), else None."""
    import tvm

    if isinstance(e, relax.Var):
        b = mutator.lookup_binding(e)
        e = b if b is not None else e
    if isinstance(e, tvm.ir.expr.Constant):
        v = e.value.numpy()
        return float(v.reshape(())) if v.size == 1 else None
    if isinstance(e, relax.Call) and isinstance(e.op, tvm.ir.Op) and e.op.name == "relax.where":
        cond = e.args[0]
        if isinstance(cond, relax.Var):
            cb = mutator.lookup_binding(cond)
            cond = cb if cb is not None else cond
        if isinstance(cond, relax.Call) and getattr(cond.op, "name", "") == "relax.isnan":
            c = _scalar_value(mutator, cond.args[0])
            if c is not None:
                return _scalar_value(mutator, e.args[1] if np.isnan(c) else e.args[2])
    return None


def canonicalize_for_layout(mod):
    """Rewrite what stops ``ConvertLayout`` from keeping activations blocked:

    - a one-element constant operand of an elementwise binary op (shape ``(1,)``,
      as PaddlePaddle exports ``x * 0.2``) becomes a rank-0 constant (same
      broadcast result, but a (1,)-shaped operand has no channel axis to block);
    - ``Clip`` with constant bounds, which TVM's ONNX importer emits as ``call_tir``
      to TOPI ``maximum`` / ``minimum`` kernels (opaque to layout inference), and
      ``relax.clip`` (HardSigmoid, HardSwish; it has no layout rule) become
      ``relax.maximum`` / ``relax.minimum`` with scalar constants.

    Measured on PP-OCRv4's recogniser: 18 layout conversions around each
    hard-swish (Clip) left the graph, 0.8 ms of 11.8 ms at one thread."""
    import tvm

    @relax.expr_functor.mutator
    class _Canon(relax.PyExprMutator):
        def visit_call_(self, call):
            call = super().visit_call_(call)
            if not isinstance(call, relax.Call):
                return call
            op = call.op
            if isinstance(op, tvm.ir.Op) and op.name in _BINARY and len(call.args) == 2:
                args = list(call.args)
                changed = False
                for i in (0, 1):
                    other = args[1 - i]
                    try:
                        other_rank = len(other.ty.shape)
                        mine = len(args[i].ty.shape)
                    except (AttributeError, TypeError):
                        continue
                    if mine == 0 or mine > other_rank:
                        continue
                    v = _scalar_value(self, args[i])
                    if v is not None:
                        args[i] = relax.const(v, str(args[i].ty.dtype))
                        changed = True
                if changed:
                    return relax.Call(op, args, call.attrs)
                return call
            if isinstance(op, tvm.ir.Op) and op.name == "relax.clip":
                try:
                    lo, hi = (float(getattr(a.value, "value", a.value)) for a in call.args[1:3])
                    dtype = str(call.args[0].ty.dtype)
                except (AttributeError, TypeError, ValueError):
                    return call
                return relax.op.minimum(relax.op.maximum(call.args[0], relax.const(lo, dtype)),
                                        relax.const(hi, dtype))
            if isinstance(op, tvm.ir.Op) and op.name == "relax.call_tir":
                gv = call.args[0]
                name = getattr(gv, "name_hint", "")
                kind = "maximum" if name.startswith("maximum") else (
                    "minimum" if name.startswith("minimum") else None)
                tup = call.args[1]
                if kind is None or not isinstance(tup, relax.Tuple) or len(tup.fields) != 2:
                    return call
                x, bound = tup.fields
                v = _scalar_value(self, bound)
                try:
                    same = [int(s) for s in x.ty.shape] == [int(s) for s in call.ty.shape]
                except (AttributeError, TypeError):
                    same = False
                if v is None or not same:
                    return call
                c = relax.const(v, str(x.ty.dtype))
                return relax.op.maximum(x, c) if kind == "maximum" else relax.op.minimum(x, c)
            return call

    out = tvm.IRModule(dict(mod.functions), attrs=mod.attrs)
    for gv, func in mod.functions.items():
        if isinstance(func, relax.Function):
            out[gv] = _Canon(mod).visit_expr(func)
    return relax.transform.DeadCodeElimination()(out)


def blocked_fake_quant(mod):
    """Keep the fake quantisation of blocked activations on the blocked layout.

    A float conv of a QDQ model whose activations are quantised (a codebook build: its
    weights are float) leaves ``layout_transform(dequantize(quantize(layout_transform(x))))``
    after the layout conversion: the blocked conv output to NCHW, the per-tensor
    quantize / dequantize, back to the blocked layout for the next conv. Rewritten to
    ``dequantize(quantize(x))`` on the blocked ``x`` when the two transforms are inverse
    (checked on an index array) and the scale and zero point are one value each: they
    become one-element tensor constants (TVM's legalization reads element 0 of such a
    "singleton" parameter, the same arithmetic per element: bit-exact), equal values
    sharing one, so the kernel the pair fuses into takes them as arguments (a 0-d
    constant would become an immediate of the kernel: one kernel per layer instead of one
    per shape). Removes two layout transforms and their calls per
    activation.
    """
    import tvm

    def _op(e, name):
        return isinstance(e, relax.Call) and isinstance(e.op, tvm.ir.Op) and e.op.name == name

    made: list = []  # (value, constant) of this module

    @relax.expr_functor.mutator
    class _Rewriter(relax.PyExprMutator):
        def _bound(self, e):
            if isinstance(e, relax.Var):
                b = self.lookup_binding(e)
                return b if b is not None else e
            return e

        def _const1(self, c):
            """A one-element tensor constant (equal values share one)."""
            for v, k in made:
                if v.dtype == c.dtype and np.array_equal(v, c.reshape(1)):
                    return k
            made.append((c.reshape(1), relax.const(c.reshape(1))))
            return made[-1][1]

        def _scalar(self, e):
            e = self._bound(e)
            if not isinstance(e, tvm.ir.expr.Constant):
                return None
            v = e.value.numpy()
            return v if v.size == 1 else None

        def visit_call_(self, call):
            call = super().visit_call_(call)
            if not _op(call, "relax.layout_transform") or call.attrs.pad_value is not None:
                return call
            dq = self._bound(call.args[0])
            if not _op(dq, "relax.dequantize"):
                return call
            q = self._bound(dq.args[0])
            if not _op(q, "relax.quantize"):
                return call
            inner = self._bound(q.args[0])
            if not _op(inner, "relax.layout_transform") or inner.attrs.pad_value is not None:
                return call
            x = inner.args[0]
            shape = [int(s) for s in x.ty.shape]
            idx = np.arange(int(np.prod(shape)), dtype=np.int64).reshape(shape)
            there = _map_array(inner.attrs.index_map, idx)
            back = None if there is None else _map_array(call.attrs.index_map, there)
            if back is None or back.shape != idx.shape or not np.array_equal(back, idx):
                return call
            consts = [self._scalar(a) for a in (q.args[1], q.args[2], dq.args[1], dq.args[2])]
            if any(c is None for c in consts):
                return call
            qs, qz, ds, dz = (self._const1(c) for c in consts)
            axis = len(shape) - 1
            q2 = self.builder_.emit(relax.op.quantize(x, qs, qz, axis=axis,
                                                      out_dtype=q.attrs.out_dtype))
            return relax.op.dequantize(q2, ds, dz, axis=axis, out_dtype=dq.attrs.out_dtype)

    out = tvm.IRModule(dict(mod.functions), attrs=mod.attrs)
    for gv, func in mod.functions.items():
        if isinstance(func, relax.Function):
            out[gv] = _Rewriter().visit_expr(func)
    return out
