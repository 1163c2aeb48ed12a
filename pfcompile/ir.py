"""The in-memory model every compression pass works on: an ``onnx_ir.Model``.

Thin helpers around onnx-ir so that every pass and command loads, saves,
clones, hashes and shape-infers models the same way. Loading goes through
:func:`pfcompile.model.load_onnx`, so bad files fail with a clear
:class:`~pfcompile.errors.ModelError`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
from onnx_ir.passes.common import ShapeInferencePass

from pfcompile.errors import ModelError
from pfcompile.model import check_onnx, load_onnx

__all__ = [
    "ModelLike",
    "check",
    "clone",
    "const_array",
    "content_hash",
    "infer_shapes",
    "load",
    "save",
    "set_initializer",
    "static_shape",
    "to_ir",
    "to_proto",
]

ModelLike = onnx.ModelProto | ir.Model


def load(path: str | Path) -> ir.Model:
    """Load and validate an ONNX file (checker + shape inference) as an ``ir.Model``."""
    return ir.from_proto(load_onnx(path))


def to_ir(model: ModelLike) -> ir.Model:
    """An ``ir.Model`` for ``model`` (the same object when it already is one)."""
    if isinstance(model, ir.Model):
        return model
    if isinstance(model, onnx.ModelProto):
        return ir.from_proto(model)
    raise ModelError(f"expected an onnx.ModelProto or onnx_ir.Model, got {type(model).__name__}")


def to_proto(model: ModelLike) -> onnx.ModelProto:
    """An ``onnx.ModelProto`` for ``model`` (the same object when it already is one)."""
    if isinstance(model, onnx.ModelProto):
        return model
    if isinstance(model, ir.Model):
        return ir.to_proto(model)
    raise ModelError(f"expected an onnx.ModelProto or onnx_ir.Model, got {type(model).__name__}")


def clone(model: ir.Model) -> ir.Model:
    """A structural copy of ``model`` (tensors are shared, never mutated by our passes)."""
    return model.clone()


def content_hash(model: ModelLike) -> str:
    """sha256 (16 hex chars) of the deterministic serialisation of ``model``."""
    proto = to_proto(model)
    return hashlib.sha256(proto.SerializeToString(deterministic=True)).hexdigest()[:16]


def check(model: ModelLike, where: str = "model") -> None:
    """Run the ONNX checker (full check with shape inference); raise ``ModelError``."""
    check_onnx(to_proto(model), where, full_check=True)


def save(model: ModelLike, path: str | Path, *, validate: bool = True) -> Path:
    """Write ``model`` to ``path`` (checked first, so an invalid model is never written)."""
    proto = to_proto(model)
    p = Path(path)
    if validate:
        check(proto, where=f"model to be written to {p}")
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_bytes(proto.SerializeToString())
    tmp.replace(p)
    return p


def infer_shapes(model: ir.Model) -> ir.Model:
    """Clear stale intermediate shapes and re-infer them in place; returns ``model``.

    Graph input and output shapes are kept as declared; intermediate value
    shapes are recomputed (after a rewrite changes channel counts the old ones
    are wrong, and onnx shape inference refuses to overwrite a conflicting one).
    """
    graph = model.graph
    outputs = {id(v) for v in graph.outputs}
    for node in graph:
        for v in node.outputs:
            if id(v) not in outputs:
                v.shape = None
    ShapeInferencePass(check_type=True, strict_mode=False, data_prop=True)(model)
    return model


def static_shape(value: ir.Value | None) -> tuple[int, ...] | None:
    """The shape of ``value`` as ints, or None when unknown or symbolic."""
    if value is None:
        return None
    if value.const_value is not None:
        return tuple(int(d) for d in value.const_value.shape)
    if value.shape is None:
        return None
    dims = []
    for d in value.shape:
        if not isinstance(d, int):
            return None
        dims.append(int(d))
    return tuple(dims)


def const_array(value: ir.Value | None) -> np.ndarray | None:
    """The numpy array behind an initializer/constant value, else None."""
    if value is None or value.const_value is None:
        return None
    return value.const_value.numpy()


def set_initializer(graph: ir.Graph, node: ir.Node, index: int, array: np.ndarray,
                    suffix: str = "") -> ir.Value:
    """Point input ``index`` of ``node`` at a new initializer holding ``array``.

    The old initializer is left for :class:`RemoveUnusedNodesPass` to drop when
    no longer used, so that an initializer shared by several nodes is never
    changed under the others' feet.
    """
    old = node.inputs[index]
    base = old.name if old is not None and old.name else f"{node.name}_in{index}"
    name = base + (suffix or "_p")
    i = 0
    while name in graph.initializers:
        i += 1
        name = f"{base}{suffix or '_p'}{i}"
    arr = np.ascontiguousarray(array)
    value = ir.Value(name=name, shape=ir.Shape(arr.shape), type=ir.TensorType(
        ir.DataType.from_numpy(arr.dtype)), const_value=ir.Tensor(arr, name=name))
    graph.register_initializer(value)
    node.replace_input_with(index, value)
    return value
