"""Constant folding: evaluate nodes whose inputs are all constants."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
from onnx.reference import ReferenceEvaluator
from onnx_ir.passes import FunctionalPass, PassResult
from onnx_ir.passes.common import LiftConstantsToInitializersPass, RemoveUnusedNodesPass

from pfcompile.ir import infer_shapes, static_shape
from pfcompile.passes._rewrite import bypass

__all__ = ["ConstantFoldingPass"]

# Quantization nodes on constant weights are the representation, not a computation to fold.
_NEVER_FOLD = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "RandomNormal",
               "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial",
               "Bernoulli"}


class ConstantFoldingPass(FunctionalPass):
    """Replace constant sub-computations by initializers.

    Constant nodes are lifted to initializers; a node whose inputs are all
    initializers is evaluated (onnx's reference evaluator) and its outputs
    become initializers; ``Shape`` of a value with a static shape folds to its
    shape. Outputs larger than ``size_limit`` elements are left alone. QDQ and
    random ops are never folded.
    """

    def __init__(self, size_limit: int = 1 << 22) -> None:
        super().__init__()
        self.size_limit = size_limit

    def call(self, model: ir.Model) -> PassResult:
        model = model.clone()
        modified = LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)(
            model).modified
        infer_shapes(model)
        graph = model.graph
        opset = graph.opset_imports.get("", 17)
        for node in list(graph):
            if node.domain not in ("", "ai.onnx") or node.op_type in _NEVER_FOLD:
                continue
            if any(o.is_graph_output() for o in node.outputs):
                continue
            arrays = self._evaluate(node, opset)
            if arrays is None:
                continue
            for k, (out, arr) in enumerate(zip(node.outputs, arrays)):
                name = out.name or f"{node.name}_folded{k}"
                out.name = None
                new = ir.Value(name=name, shape=ir.Shape(arr.shape),
                               type=ir.TensorType(ir.DataType.from_numpy(arr.dtype)),
                               const_value=ir.Tensor(arr, name=name))
                graph.register_initializer(new)
                bypass(node, out, new)
            graph.remove(node, safe=True)
            modified = True
        RemoveUnusedNodesPass()(model)
        return PassResult(model, modified)

    def _evaluate(self, node: ir.Node, opset: int) -> list[np.ndarray] | None:
        if node.op_type == "Shape":
            shape = static_shape(node.inputs[0])
            if shape is None:
                return None
            start = node.attributes.get("start")
            end = node.attributes.get("end")
            s = shape[(start.value if start else 0):(end.value if end else None)]
            return [np.asarray(s, dtype=np.int64)]
        if not node.inputs or any(v is not None and v.const_value is None for v in node.inputs):
            return None
        if any(a.type == ir.AttributeType.GRAPH for a in node.attributes.values()):
            return None
        feeds, names = {}, []
        for i, v in enumerate(node.inputs):
            if v is None:
                names.append("")
                continue
            feeds[f"i{i}"] = v.const_value.numpy()
            names.append(f"i{i}")
        outs = [f"o{i}" for i in range(len(node.outputs))]
        proto = onnx.helper.make_node(node.op_type, names, outs, domain=node.domain or "")
        proto.attribute.extend(ir.serde.serialize_attribute(a) for a in node.attributes.values())
        try:
            outputs = [onnx.helper.make_value_info(o, onnx.TypeProto()) for o in outs]
            ev = ReferenceEvaluator(onnx.helper.make_model(
                onnx.helper.make_graph([proto], "fold", [], outputs),
                opset_imports=[onnx.helper.make_opsetid("", opset)]))
            arrays = ev.run(None, feeds)
        except Exception:  # noqa: BLE001  (an op the reference evaluator cannot run: leave it)
            return None
        if any(np.asarray(a).size > self.size_limit for a in arrays):
            return None
        return [np.asarray(a) for a in arrays]
