"""Size and cost of a model as it physically exists: MACs, parameters, bytes.

MACs are counted for the ops that dominate CNN cost: Conv (groups included),
ConvTranspose, Gemm and MatMul, from the shapes in the graph (so a pruned
model's smaller tensors give smaller numbers, and a sparsified model whose
zeros are still stored gives the same numbers: sparsity is reported by the
sparsify pass). Parameters are the elements of every initializer and Constant
tensor except int64 ones (shapes, axes, indices: not weights); bytes are their
storage in the ONNX file (int8 weights count 1 byte). A shape that is not static
(a dynamic dim) gives no MACs rather than a negative count: run the model through
the import front end (``--input-shape``) first.
A layer's parameters include weights reached through DequantizeLinear, Cast or
Identity, so a QDQ model's Conv owns its int8 weight, scale and zero point.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_ir as ir

from pfcompile.errors import ModelError
from pfcompile.ir import ModelLike, static_shape, to_proto

__all__ = ["MAC_OPS", "LayerStats", "ModelStats", "model_size_mb", "model_stats"]

MAC_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
_WEIGHT_CHAIN_OPS = ("DequantizeLinear", "Cast", "Identity", "Reshape", "Transpose")


@dataclass(frozen=True)
class LayerStats:
    """One node with compute (MACs) or parameters."""

    name: str
    op_type: str
    macs: int
    params: int
    bytes: int
    out_shape: tuple[int, ...] | None

    def to_json(self) -> dict:
        return {"name": self.name, "op_type": self.op_type, "macs": self.macs,
                "params": self.params, "bytes": self.bytes,
                "out_shape": None if self.out_shape is None else list(self.out_shape)}


@dataclass(frozen=True)
class ModelStats:
    """Totals plus per-layer rows (graph order)."""

    macs: int
    params: int
    size_bytes: int
    layers: list[LayerStats] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"macs": self.macs, "params": self.params, "size_bytes": self.size_bytes,
                "layers": [layer.to_json() for layer in self.layers]}


def _shape(v: ir.Value | None) -> tuple[int, ...] | None:
    dims = static_shape(v)
    if dims is None or any(d < 0 for d in dims):  # -1: a dynamic dim written as a value
        return None
    return dims


def _tensor_size(t: ir.TensorProtocol) -> tuple[int, int]:
    n = int(np.prod(t.shape.numpy())) if len(t.shape) else 1
    return n, int(t.nbytes)


def _stored_values(g: ir.Graph) -> dict[int, tuple[ir.Value, ir.TensorProtocol]]:
    """Every stored tensor, counted once: initializers and ``Constant`` node values."""
    out: dict[int, tuple[ir.Value, ir.TensorProtocol]] = {}
    for v in g.initializers.values():
        if v.const_value is not None:
            out[id(v)] = (v, v.const_value)
    for node in g:
        if node.op_type == "Constant":
            v = node.outputs[0]
            attr = node.attributes.get("value")
            t = v.const_value if v.const_value is not None else (
                attr.as_tensor() if attr is not None and attr.type == ir.AttributeType.TENSOR
                else None)
            if t is not None:
                out[id(v)] = (v, t)
    return out


def _weight_size(t: ir.TensorProtocol) -> tuple[int, int]:
    """(parameters, bytes) of a stored tensor; int64 ones (shapes, axes, indices) are not
    weights: (0, 0)."""
    return (0, 0) if t.dtype == ir.DataType.INT64 else _tensor_size(t)


def model_size_mb(model: ModelLike) -> float:
    """What the ONNX model stores for its weights, in MB (1e6 bytes): :func:`model_stats`'s
    ``size_bytes`` (every initializer and ``Constant`` value but int64 ones, at its element
    size: float32 weights 4 bytes each, the quantize pass's int8 weights 1 byte each plus
    their float32 scales and zero points; zeros from the sparsify pass like any other
    value), without its shape inference. Names and protobuf framing are not counted. The
    search judges ``--size-mb`` on the deployed files instead (:mod:`pfcompile.search.sizing`:
    measured, or predicted before compiling)."""
    m = model if isinstance(model, ir.Model) else ir.from_proto(to_proto(model))
    return sum(_weight_size(t)[1] for _, t in _stored_values(m.graph).values()) / 1e6


def _node_macs(node: ir.Node) -> int:
    op = node.op_type
    out = _shape(node.outputs[0]) if node.outputs else None
    if out is None:
        return 0
    if op == "Conv":
        w = _shape(node.inputs[1])
        return int(np.prod(out)) * int(np.prod(w[1:])) if w else 0
    if op == "ConvTranspose":
        x, w = _shape(node.inputs[0]), _shape(node.inputs[1])
        if x is None or w is None:
            return 0
        # every input element is multiplied by C_out/group * prod(kernel) weights
        return int(np.prod(x)) * int(np.prod(w[1:]))
    if op == "Gemm":
        a = _shape(node.inputs[0])
        if a is None:
            return 0
        trans_a = node.attributes.get("transA")
        k = a[0] if trans_a is not None and trans_a.value else a[-1]
        return int(np.prod(out)) * int(k)
    if op == "MatMul":
        a = _shape(node.inputs[0])
        return int(np.prod(out)) * int(a[-1]) if a else 0
    return 0


def _weight_sources(node: ir.Node) -> list[ir.Value]:
    """Constant values feeding ``node`` directly or through a DQ/Cast/Identity chain."""
    found: list[ir.Value] = []
    stack = [v for v in node.inputs if v is not None]
    while stack:
        v = stack.pop()
        if v.const_value is not None:
            found.append(v)
            continue
        prod = v.producer()
        if prod is not None and prod.op_type in _WEIGHT_CHAIN_OPS and len(v.uses()) == 1:
            stack.extend(x for x in prod.inputs if x is not None)
    return found


def model_stats(model: ModelLike) -> ModelStats:
    """MACs, parameters and bytes of ``model`` (proto or ir; not modified)."""
    proto = to_proto(model)
    try:
        inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=False, data_prop=True)
    except Exception as exc:
        raise ModelError(f"shape inference failed while computing model stats: {exc}") from exc
    m = ir.from_proto(inferred)
    g = m.graph

    sizes = {key: _weight_size(t) for key, (_, t) in _stored_values(g).items()}
    total_params = sum(n for n, _ in sizes.values())
    total_bytes = sum(b for _, b in sizes.values())

    owned: set[int] = set()
    layers: list[LayerStats] = []
    total_macs = 0
    for i, node in enumerate(g):
        if node.op_type in _WEIGHT_CHAIN_OPS or node.op_type == "Constant":
            continue
        macs = _node_macs(node)
        params = nbytes = 0
        for v in _weight_sources(node):
            if id(v) in owned:
                continue
            owned.add(id(v))
            n, b = sizes.get(id(v), _tensor_size(v.const_value))
            params += n
            nbytes += b
        total_macs += macs
        if macs or params:
            layers.append(LayerStats(node.name or f"{node.op_type}_{i}", node.op_type, macs,
                                     params, nbytes, _shape(node.outputs[0])))
    return ModelStats(total_macs, total_params, total_bytes, layers)
