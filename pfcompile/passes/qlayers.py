"""Weighted layers as the sparsify and quantize passes see them.

A *layer* is a Conv, Gemm or MatMul node whose weight is a float initializer.
Its name is the node name (or, for an unnamed node, its first output's name);
that name is what per-layer configs (``--config``) refer to and what
``pfcompile inspect`` lists.

Also here: the few onnx_ir helpers both passes share (accept ModelProto or
ir.Model, add an initializer, run a model with onnxruntime).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_ir as ir

from pfcompile.errors import ConfigError
from pfcompile.ir import to_ir as as_ir
from pfcompile.ir import to_proto as as_proto
from pfcompile.reference import ORT_DISABLED_OPTIMIZERS, reference_session

__all__ = [
    "ORT_DISABLED_OPTIMIZERS",
    "WEIGHTED_OPS",
    "Layer",
    "add_initializer",
    "as_ir",
    "as_proto",
    "check_layer_names",
    "float_layers",
    "iter_ort",
    "layer_map",
    "ort_session",
    "run_ort",
    "unique_name",
    "weighted_layers",
]

WEIGHTED_OPS = ("Conv", "Gemm", "MatMul")



@dataclass(frozen=True)
class Layer:
    """A weighted node: its name, op, weight value and output-channel axis of the weight."""

    name: str
    node: ir.Node
    weight: ir.Value
    out_axis: int  # axis of the weight tensor that indexes output channels

    @property
    def op_type(self) -> str:
        return self.node.op_type

    @property
    def weight_array(self) -> np.ndarray:
        assert self.weight.const_value is not None
        return self.weight.const_value.numpy()

    @property
    def groups(self) -> int:
        attr = self.node.attributes.get("group")
        return int(attr.as_int()) if attr is not None else 1

    def matrix(self, w: np.ndarray | None = None) -> np.ndarray:
        """The weight as a 2-D (out_channels, fan_in) matrix."""
        w = self.weight_array if w is None else w
        if self.out_axis == 0:
            return w.reshape(w.shape[0], -1)
        return np.moveaxis(w, self.out_axis, 0).reshape(w.shape[self.out_axis], -1)

    def from_matrix(self, m: np.ndarray, like: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`matrix` for a weight shaped like ``like``."""
        if self.out_axis == 0:
            return m.reshape(like.shape)
        moved = np.moveaxis(like, self.out_axis, 0).shape
        return np.moveaxis(m.reshape(moved), 0, self.out_axis)


def _layer_name(node: ir.Node) -> str:
    if node.name:
        return node.name
    return node.outputs[0].name or f"{node.op_type}_{id(node)}"


def _attr_int(node: ir.Node, name: str, default: int) -> int:
    attr = node.attributes.get(name)
    return int(attr.as_int()) if attr is not None else default


def weighted_layers(model: ir.Model) -> list[Layer]:
    """Conv / Gemm / MatMul nodes of the main graph with a float initializer weight, in graph order.

    A weight that is computed (e.g. by DequantizeLinear) or is a graph input is
    not a layer here: those nodes are left alone by the passes.
    """
    layers = []
    for node in model.graph:
        if node.domain not in ("", "ai.onnx") or node.op_type not in WEIGHTED_OPS:
            continue
        if len(node.inputs) < 2 or node.inputs[1] is None:
            continue
        w = node.inputs[1]
        if w.const_value is None or w.is_graph_input():
            continue
        if w.const_value.dtype not in (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.DOUBLE):
            continue
        ndim = len(w.const_value.shape)
        if node.op_type == "Conv":
            out_axis = 0
        elif node.op_type == "Gemm":
            if ndim != 2:
                continue
            out_axis = 0 if _attr_int(node, "transB", 0) else 1
        else:  # MatMul: (..., K) @ (K, N)
            if ndim != 2:
                continue
            out_axis = 1
        layers.append(Layer(_layer_name(node), node, w, out_axis))
    return layers


def float_layers(model: ir.Model) -> dict[str, str]:
    """Nodes with a constant float weight that are not :func:`weighted_layers` (so the
    quantize / sparsify passes leave them in float), each with the reason: named in the
    passes' reports, never dropped silently."""
    taken = {x.node.name for x in weighted_layers(model)}
    out: dict[str, str] = {}
    for node in model.graph:
        if node.name in taken or node.domain not in ("", "ai.onnx"):
            continue
        if node.op_type not in (*WEIGHTED_OPS, "ConvTranspose") or len(node.inputs) < 2:
            continue
        w = node.inputs[1]
        if w is None or w.const_value is None or w.is_graph_input() or w.const_value.dtype not in (
                ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.DOUBLE):
            continue
        if node.op_type == "ConvTranspose":
            out[_layer_name(node)] = "ConvTranspose: no integer kernel for it yet, stays float"
        else:
            out[_layer_name(node)] = (f"{node.op_type} with a {len(w.const_value.shape)}-D weight: "
                                      "only 2-D weights are quantized, stays float")
    return out


def layer_map(model: ir.Model) -> dict[str, Layer]:
    return {layer.name: layer for layer in weighted_layers(model)}


def check_layer_names(names, layers: dict[str, Layer], what: str) -> None:
    """Raise ConfigError naming every config key that is not a weighted layer of the model."""
    unknown = sorted(set(names) - set(layers))
    if unknown:
        known = sorted(layers)
        shown = ", ".join(known[:12]) + (" ..." if len(known) > 12 else "")
        raise ConfigError(
            f"{what} names unknown layer(s) {unknown}; the model's weighted layers are: {shown} "
            f"(run `pfcompile inspect MODEL` for the full list)"
        )


def unique_name(graph: ir.Graph, base: str) -> str:
    taken = set(graph.initializers)
    for node in graph:
        taken.update(v.name for v in node.outputs if v.name)
    taken.update(v.name for v in graph.inputs if v.name)
    name, i = base, 1
    while name in taken:
        name = f"{base}_{i}"
        i += 1
    return name


def add_initializer(graph: ir.Graph, base: str, array: np.ndarray) -> ir.Value:
    """Register ``array`` as a new initializer named after ``base`` (made unique)."""
    name = unique_name(graph, base)
    array = np.asarray(array)
    if not array.flags.c_contiguous:  # (np.ascontiguousarray would turn a 0-d array into 1-d)
        array = array.copy(order="C")
    tensor = ir.tensor(array, name=name)
    value = ir.Value(name=name, shape=ir.Shape(array.shape), type=ir.TensorType(tensor.dtype),
                     const_value=tensor)
    graph.register_initializer(value)
    return value


def ort_session(model: ir.Model | onnx.ModelProto, extra_outputs: list[str] | None = None,
                threads: int = 2):
    """pfcompile's reference session for a model (:func:`pfcompile.reference.reference_session`:
    float graphs optimized, quantized graphs run as written).

    ``extra_outputs`` names intermediate values to expose as graph outputs.
    """
    return reference_session(as_proto(model), extra_outputs, threads=threads)


def _static_batch(sess) -> int | None:
    dims = [i.shape[0] for i in sess.get_inputs() if i.shape]
    fixed = {d for d in dims if isinstance(d, int) and d > 0}
    return fixed.pop() if len(fixed) == 1 else None


def iter_ort(model: ir.Model | onnx.ModelProto, inputs: dict[str, np.ndarray], batch: int = 256,
             extra_outputs: list[str] | None = None, threads: int = 2
             ) -> Iterator[list[np.ndarray]]:
    """Run ``model`` over ``inputs`` batch by batch, yielding each batch's outputs.

    A model whose inputs fix the batch dimension (e.g. to 1) is run in batches of
    that size, the last one padded and cut. ``extra_outputs`` are appended after
    the model's own outputs. ``threads``: the session's intra-op threads.
    """
    sess = ort_session(model, extra_outputs, threads)
    n = len(next(iter(inputs.values())))
    fixed = _static_batch(sess)
    step = fixed or batch
    for i in range(0, n, step):
        feed = {k: v[i:i + step] for k, v in inputs.items()}
        got = len(next(iter(feed.values())))
        if fixed and got < fixed:
            feed = {k: np.concatenate([v, np.repeat(v[-1:], fixed - got, axis=0)])
                    for k, v in feed.items()}
        yield [o[:got] for o in sess.run(None, feed)]


def run_ort(model: ir.Model | onnx.ModelProto, inputs: dict[str, np.ndarray],
            batch: int = 256, threads: int = 2) -> list[np.ndarray]:
    """Every output of ``model`` over all of ``inputs``, concatenated on axis 0."""
    chunks = list(iter_ort(model, inputs, batch, threads=threads))
    return [np.concatenate([c[j] for c in chunks], axis=0) for j in range(len(chunks[0]))]
