"""ONNX-level preparation of QDQ models before TVM import.

TVM 0.27's importer rejects some quantisation it cannot express: blocked
quantisation (``DequantizeLinear(block_size=...)``) and float8 types raise at
import, and it has no int4 tensors. For *constant* weights this pass keeps the
model importable without changing its numbers:

* int4 / uint4 weights are widened into int8 / uint8 containers (same values,
  same scales): sub-8-bit weights then run on the int8 kernels;
* a DequantizeLinear of a constant that TVM cannot import (blocked, float8,
  other types) is evaluated once with ``onnx.reference`` and replaced by the
  float initializer it produces, so the layer runs on the float path; a
  :class:`~pfcompile.quantexec.lower.QuantFallbackWarning` names the node.

Quantise/dequantise of *activations* in an unsupported type cannot be folded;
those raise :class:`~pfcompile.errors.UnsupportedOpError` naming the node.
"""

from __future__ import annotations

import warnings

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from pfcompile.errors import UnsupportedOpError
from pfcompile.quantexec.lower import LayerReport, QuantFallbackWarning

__all__ = ["onnx_layer_names", "prepare_qdq"]

_LAYER_ONNX_OPS = ("Conv", "MatMul", "Gemm")


def onnx_layer_names(model: onnx.ModelProto) -> list[str]:
    """Names of the Conv/MatMul/Gemm nodes in graph order (as Relax imports them)."""
    return [n.name or f"{n.op_type}_{i}" for i, n in enumerate(model.graph.node)
            if n.op_type in _LAYER_ONNX_OPS]


_TVM_QTYPES = {TensorProto.INT8, TensorProto.UINT8, TensorProto.INT32}
_WIDEN = {TensorProto.INT4: TensorProto.INT8, TensorProto.UINT4: TensorProto.UINT8}


def _elem_type(model: onnx.ModelProto, name: str, inits: dict) -> int | None:
    if name in inits:
        return inits[name].data_type
    for vi in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        if vi.name == name:
            return vi.type.tensor_type.elem_type
    return None


def _eval_dq(node: onnx.NodeProto, inits: dict, opset: int) -> np.ndarray:
    from onnx.reference import ReferenceEvaluator

    ins = [i for i in node.input if i]
    g = helper.make_graph(
        [helper.make_node(node.op_type, node.input, ["out"], domain=node.domain,
                          **{a.name: helper.get_attribute_value(a) for a in node.attribute})],
        "dq", [], [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
        [inits[i] for i in ins])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", max(opset, 21))])
    return np.asarray(ReferenceEvaluator(m).run(None, {})[0], dtype=np.float32)


def prepare_qdq(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[LayerReport]]:
    """Return a copy of ``model`` TVM can import, and a report per folded node."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    inits = {i.name: i for i in g.initializer}
    opset = max((o.version for o in out.opset_import if o.domain in ("", "ai.onnx")), default=13)
    reports: list[LayerReport] = []
    keep = []
    for i, node in enumerate(g.node):
        name = node.name or f"{node.op_type}_{i}"
        if node.op_type not in ("DequantizeLinear", "QuantizeLinear"):
            keep.append(node)
            continue
        src = node.input[0]
        blocked = any(a.name == "block_size" and a.i != 0 for a in node.attribute)
        etype = _elem_type(out, src, inits) if node.op_type == "DequantizeLinear" else None
        if node.op_type == "QuantizeLinear":
            zp = node.input[2] if len(node.input) > 2 and node.input[2] else ""
            otype = inits[zp].data_type if zp in inits else None
            for a in node.attribute:
                if a.name == "output_dtype" and a.i:
                    otype = a.i
            if blocked or (otype is not None and otype not in _TVM_QTYPES):
                raise UnsupportedOpError(
                    name, node.op_type,
                    f"quantises an activation to {TensorProto.DataType.Name(otype or 0)}"
                    f"{' with blocks' if blocked else ''}; only uint8/int8 per-tensor activations "
                    "are supported: re-quantise the model with 8-bit activations")
            keep.append(node)
            continue
        if src in inits and etype in _WIDEN and not blocked:
            arr = numpy_helper.to_array(inits[src]).astype(np.int8 if etype == TensorProto.INT4 else np.uint8)
            inits[src].CopyFrom(numpy_helper.from_array(arr, src))
            zp = node.input[2] if len(node.input) > 2 else ""
            if zp in inits:
                zarr = numpy_helper.to_array(inits[zp]).astype(arr.dtype)
                inits[zp].CopyFrom(numpy_helper.from_array(zarr, zp))
            keep.append(node)
            continue
        if not blocked and (etype is None or etype in _TVM_QTYPES):
            keep.append(node)
            continue
        why = "blocked quantisation" if blocked else \
            f"{TensorProto.DataType.Name(etype)} quantisation"
        if not all((x in inits) for x in node.input if x):
            raise UnsupportedOpError(name, node.op_type, f"{why} of an activation cannot run: "
                                     "re-quantise the model with uint8/int8 activations")
        folded = _eval_dq(node, inits, opset)
        g.initializer.append(numpy_helper.from_array(folded, node.output[0]))
        reports.append(LayerReport(name, "float", f"{why} is not supported by the integer path; "
                                   "weights dequantised to float at compile time", "dequantize"))
        warnings.warn(f"'{name}' ({node.op_type}): {why} is not supported; its consumer runs in "
                      "float (weights dequantised at compile time)", QuantFallbackWarning,
                      stacklevel=2)
    del g.node[:]
    g.node.extend(keep)
    used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
    live = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(live)
    return out, reports
