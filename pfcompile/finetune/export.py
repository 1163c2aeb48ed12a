"""Write trained parameters back into the student's ONNX initializers.

Nothing is re-exported through torch: the graph (nodes, names, attributes,
inputs and outputs) stays exactly as it was, only initializer values change.
Float initializers get the trained float values; an integer weight read by
DequantizeLinear gets its float shadow re-quantized to the same integer type,
scale, zero point and bit range that the converter trained with.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import torch

from pfcompile.errors import ModelError
from pfcompile.finetune import fakequant as fq
from pfcompile.finetune.convert import OnnxModule, QuantWeight

__all__ = ["export_onnx", "requantize"]


def requantize(module: OnnxModule, qw: QuantWeight) -> np.ndarray:
    """Integer codes (int64) of a quantized weight's current float shadow."""
    w = module.params[qw.key].detach()
    scale = module._const(qw.scale).detach().float()
    zp = module._const(qw.zero_point).detach().float() if qw.zero_point else torch.zeros(())
    with torch.no_grad():
        q = fq.fake_quantize(w, scale, zp, qw.qmin, qw.qmax, qw.axis)
    return q.to(torch.int64).numpy()


def export_onnx(module: OnnxModule, student: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``student`` whose trained initializers hold ``module``'s values."""
    values: dict[str, np.ndarray] = {}
    for name, key in module.key_of.items():
        values[name] = module.params[key].detach().cpu().numpy()
    for name, qw in module.quant_weights.items():
        values[name] = requantize(module, qw)

    model = ir.from_proto(student)
    inits = model.graph.initializers
    missing = sorted(set(values) - set(inits))
    if missing:
        raise ModelError(f"the student graph has no initializers {missing}: was the module converted "
                         "from a different model?")
    for name, arr in values.items():
        old = inits[name].const_value
        if old is None:
            raise ModelError(f"initializer '{name}' has no value in the student graph")
        if tuple(old.shape) != arr.shape:
            raise ModelError(f"initializer '{name}': trained shape {arr.shape} differs from the "
                             f"student's {tuple(old.shape)}; pruned shapes must stay fixed")
        dtype = old.dtype
        if dtype.is_integer() and dtype.bitwidth < 8:  # int4 / uint4 / int2 / uint2
            new = ir.tensor(arr.astype(np.int8 if dtype.is_signed() else np.uint8), dtype=dtype, name=name)
        else:
            new = ir.tensor(arr.astype(dtype.numpy()), dtype=dtype, name=name)
        inits[name].const_value = new
    return ir.to_proto(model)
