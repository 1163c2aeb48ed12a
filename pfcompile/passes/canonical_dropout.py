"""Drop inference no-ops: Dropout (its mask unused) and Identity."""

from __future__ import annotations

import onnx_ir as ir
from onnx_ir.passes import FunctionalPass, PassResult
from onnx_ir.passes.common import IdentityEliminationPass

__all__ = ["DropIdentityDropoutPass"]


class DropIdentityDropoutPass(FunctionalPass):
    """Turn every inference Dropout into Identity, then let onnx-ir's
    :class:`IdentityEliminationPass` remove the Identity nodes (one that maps a
    graph input straight to a graph output is kept, as ONNX requires)."""

    def call(self, model: ir.Model) -> PassResult:
        model = model.clone()
        modified = False
        for node in list(model.graph):
            if node.op_type != "Dropout" or node.domain not in ("", "ai.onnx"):
                continue
            if len(node.outputs) > 1 and (node.outputs[1].uses()
                                          or node.outputs[1].is_graph_output()):
                continue  # the mask is read: not a no-op we can drop
            train = node.inputs[2] if len(node.inputs) > 2 else None
            if train is not None and (train.const_value is None or bool(train.const_value.numpy())):
                continue  # training_mode is on or not known
            ident = ir.node("Identity", [node.inputs[0]], name=node.name or None)
            graph = model.graph
            graph.insert_before(node, ident)
            out = node.outputs[0]
            was_output = out.is_graph_output()
            name = out.name
            out.replace_all_uses_with(ident.outputs[0], replace_graph_outputs=True)
            if was_output:
                out.name = None
            ident.outputs[0].name = name
            ident.outputs[0].shape, ident.outputs[0].type = out.shape, out.type
            graph.remove(node, safe=True)
            modified = True
        result = IdentityEliminationPass()(model)
        return PassResult(model, modified or result.modified)
