"""May a model be run on a batch of N samples at once? (core layer)

A model compiled or compressed at batch 1 often fixes the batch inside the graph
too: Paddle2ONNX and folded shape sub-graphs leave ``Reshape`` constants such as
``[1, 200]``. Declaring its input batch dynamic and feeding 32 samples then
either fails in onnxruntime (``requested shape {1,200}``) or, worse, silently
mixes samples (``Reshape [1, -1]``). :func:`batch_free` returns a copy that takes
any batch only when that is provably safe, else ``None`` (then run one sample at
a time); the evaluators call it instead of trying and catching errors.

The proof: a ``Reshape`` whose constant shape starts with ``1`` (or ``-1``)
and whose batch-1 input and output both start with 1 gets the constant
``[0, *output dims]`` (ONNX: 0 copies the input's dim), the same reshape of each
sample. Then, for two batch sizes B (7 and 13), onnx shape inference (with data
propagation) must give every value computed from the inputs (not through
``Shape`` / ``Size``) a known shape whose dim 0 is B. An op that mixes samples,
or that inference cannot follow, fails the check. The returned model declares
its batch as the symbol ``N``.

:func:`set_batch` / :func:`set_dim` are pfcompile's one writer of declared dims (the
front end, ``model.fix_input_shapes``, the accelerator's host segments and this module
use them);
:func:`require_batch_free` is :func:`batch_free` for callers that cannot fall back to one
sample at a time.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from pfcompile.errors import ModelError

__all__ = ["BATCH_SYMBOL", "batch_free", "require_batch_free", "set_batch", "set_dim"]

BATCH_SYMBOL = "N"  #: the symbol of a free batch dimension
_PROBES = (7, 13)  # two batch sizes no constant is likely to hold by chance
_SHAPE_OPS = {"Shape", "Size"}


def _dims(vi: onnx.ValueInfoProto) -> list[int | str | None]:
    out: list[int | str | None] = []
    for d in vi.type.tensor_type.shape.dim:
        if d.HasField("dim_value"):
            out.append(int(d.dim_value))
        elif d.dim_param:
            out.append(d.dim_param)
        else:
            out.append(None)
    return out


def _inferred(m: onnx.ModelProto
              ) -> tuple[onnx.ModelProto, dict[str, list[int | str | None]]] | None:
    """Shape inference with data propagation: (inferred model, value name -> dims), or
    None when inference fails (then nothing is provable)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(m, strict_mode=False, data_prop=True)
    except Exception:  # noqa: BLE001 - inference failed: not provable
        return None
    g = inferred.graph
    return inferred, {vi.name: _dims(vi) for vi in [*g.value_info, *g.input, *g.output]}


def set_batch(vi: onnx.ValueInfoProto, batch: int | str = BATCH_SYMBOL) -> None:
    """Declare dim 0 of a tensor's type as ``batch``: a size, or a symbol (free). A tensor
    without a shape or of rank 0 is left as it is."""
    dims = vi.type.tensor_type.shape.dim
    if len(dims):
        set_dim(dims[0], batch)


def set_dim(dim: onnx.TensorShapeProto.Dimension, value: int | str) -> None:
    """Declare one dim as a size (int) or a symbol (str)."""
    dim.Clear()
    if isinstance(value, str):
        dim.dim_param = value
    else:
        dim.dim_value = int(value)


def _set_input_batch(m: onnx.ModelProto, inits: set[str], batch: int | str) -> None:
    for vi in m.graph.input:
        if vi.name not in inits:
            set_batch(vi, batch)


def require_batch_free(model: onnx.ModelProto, where: str = "the model") -> onnx.ModelProto:
    """:func:`batch_free`, or ModelError when a free batch is not provably per-sample
    identical."""
    free = batch_free(model)
    if free is None:
        raise ModelError(f"{where}: cannot run on a free batch (a Reshape or another op fixes "
                         "or mixes the batch dimension; see pfcompile.batching); run it at "
                         "batch 1")
    return free


def batch_free(model: onnx.ModelProto) -> onnx.ModelProto | None:
    """A copy of ``model`` that runs on any batch, or ``None`` when that is not provably
    per-sample identical (see the module docstring). A model whose inputs already
    declare a dynamic batch is returned as it is."""
    inits = {t.name for t in model.graph.initializer}
    inputs = [vi for vi in model.graph.input if vi.name not in inits]
    if not inputs:
        return None
    first = [(_dims(vi) or [None])[0] for vi in inputs]
    if all(isinstance(d, str) for d in first):
        return model
    if any(d != 1 for d in first):
        return None
    static = _inferred(model)
    if static is None:
        return None
    shapes = static[1]
    m = onnx.ModelProto()
    m.CopyFrom(model)
    consts = {t.name: t for t in m.graph.initializer}
    for node in m.graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    consts[node.output[0]] = a.t
    new_inits: list[onnx.TensorProto] = []
    for k, node in enumerate(m.graph.node):
        if node.op_type != "Reshape" or len(node.input) < 2 or node.input[1] not in consts:
            continue
        if any(a.name == "allowzero" and a.i for a in node.attribute):
            continue
        shape = numpy_helper.to_array(consts[node.input[1]]).astype(np.int64).reshape(-1)
        ins, outs = shapes.get(node.input[0]), shapes.get(node.output[0])
        if len(shape) == 0 or shape[0] not in (1, -1) or not ins or not outs or ins[0] != 1 \
                or outs[0] != 1 or not all(isinstance(d, int) and d > 0 for d in outs):
            continue
        # batch 1 in and out: [0, *per-sample dims] is the same reshape of each sample
        name = f"{node.input[1]}__batch_free{k}"
        new_inits.append(numpy_helper.from_array(np.array([0, *outs[1:]], np.int64), name))
        node.input[1] = name
    m.graph.initializer.extend(new_inits)
    for vo in m.graph.output:   # re-inferred, so that a fixed batch shows
        vo.type.tensor_type.ClearField("shape")
    del m.graph.value_info[:]
    inferred = None
    for b in _PROBES:
        inferred = _check(m, inits, b)
        if inferred is None:
            return None
    _set_input_batch(m, inits, BATCH_SYMBOL)
    for vo, vi in zip(m.graph.output, inferred.graph.output):
        vo.type.tensor_type.shape.CopyFrom(vi.type.tensor_type.shape)
        set_batch(vo)
    return m


def _check(m: onnx.ModelProto, inits: set[str], b: int) -> onnx.ModelProto | None:
    """Infer shapes at batch ``b``: every value computed from the inputs must have dim 0 == b."""
    p = onnx.ModelProto()
    p.CopyFrom(m)
    _set_input_batch(p, inits, b)
    got = _inferred(p)
    if got is None:
        return None
    inferred, dims = got
    carries = {vi.name for vi in p.graph.input if vi.name not in inits}
    for node in inferred.graph.node:
        if node.op_type in _SHAPE_OPS or not any(i in carries for i in node.input):
            continue
        for o in node.output:
            if not o:
                continue
            d = dims.get(o)
            if not d or d[0] != b:
                return None
            carries.add(o)
    for vo in inferred.graph.output:
        d = dims.get(vo.name)
        if not d or d[0] != b:
            return None
    return inferred
