"""Fold an inference-mode BatchNormalization into the Conv or Gemm before it."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnx_ir.passes import FunctionalPass, PassResult

from pfcompile.ir import const_array, set_initializer
from pfcompile.passes._rewrite import attr_float, attr_int, bypass

__all__ = ["FoldBatchNormPass"]


class FoldBatchNormPass(FunctionalPass):
    """``BatchNormalization(Conv(x, W, b))`` -> ``Conv(x, W', b')`` (and the same for Gemm).

    Folds only when the producer's output feeds nothing but the BN, the BN is
    in inference form (one used output) and every parameter is a constant. A
    BN that cannot be folded is left in place. Functional: the input model is
    not changed.
    """

    def call(self, model: ir.Model) -> PassResult:
        model = model.clone()
        graph = model.graph
        modified = False
        for bn in list(graph):
            if bn.op_type != "BatchNormalization" or bn.domain not in ("", "ai.onnx"):
                continue
            if attr_int(bn, "training_mode", 0) or any(len(o.uses()) or o.is_graph_output()
                                                       for o in bn.outputs[1:]):
                continue
            x = bn.inputs[0]
            prod = x.producer() if x is not None else None
            if prod is None or prod.op_type not in ("Conv", "Gemm") or len(x.uses()) != 1 \
                    or x.is_graph_output():
                continue
            params = [const_array(v) for v in bn.inputs[1:5]]
            w = const_array(prod.inputs[1])
            if w is None or any(p is None for p in params):
                continue
            gamma, beta, mean, var = (p.astype(np.float64) for p in params)
            scale = gamma / np.sqrt(var + attr_float(bn, "epsilon", 1e-5))
            bias_in = prod.inputs[2] if len(prod.inputs) > 2 else None
            if bias_in is not None and const_array(bias_in) is None:
                continue
            b = const_array(bias_in) if bias_in is not None else np.zeros(len(scale))
            if prod.op_type == "Conv":
                w_new = w * scale.reshape((-1,) + (1,) * (w.ndim - 1))
            else:
                if attr_int(prod, "transA", 0) or attr_float(prod, "alpha", 1.0) != 1.0 \
                        or attr_float(prod, "beta", 1.0) != 1.0 or np.ndim(b) > 1:
                    continue
                w_new = w * (scale[None, :] if not attr_int(prod, "transB", 0) else scale[:, None])
            b_new = (np.broadcast_to(b, scale.shape) - mean) * scale + beta
            set_initializer(graph, prod, 1, w_new.astype(w.dtype), "_bnfold")
            if bias_in is None:
                prod.resize_inputs(3)
            set_initializer(graph, prod, 2, b_new.astype(w.dtype), "_bnfold")
            bypass(bn, bn.outputs[0], x)
            graph.remove(bn, safe=True)
            modified = True
        return PassResult(model, modified)
