"""The reference that every output check and accuracy figure in pfcompile is taken against.

One function, :func:`reference_session`, makes it; everything that compares outputs
(``pfcompile measure``, ``evaluate``, the search's device check and accuracy
estimates, fine-tuning's validation, the accelerator, the tests) goes through it.

**Float graphs** run in onnxruntime's CPU session with its graph optimizations on,
except ``WeightBiasQuantization`` (it would quantize a float weight that a codebook
layer computes, so onnxruntime would not run what the graph says).

**Quantized graphs** (any ``QuantizeLinear``, ``DequantizeLinear``, ``QLinear*``,
``*Integer`` or ``DynamicQuantizeLinear`` node) run with *every* graph optimization
off (``ORT_DISABLE_ALL``): each node runs as written, so no fused integer kernel is
used. That matters: onnxruntime fuses DQ -> Conv -> Q into QLinearConv, whose u8 x s8
kernel on x86 CPUs without VNNI sums pairs of products in saturating int16
(``vpmaddubsw``), so the fused result depends on the CPU (measured on an AVX2 EPYC:
up to 3 quantization steps apart on 18 % of one conv's outputs, 105 steps on the
demo's stem, 8 points of top-1 on an int8 digits model). As written, the result is
the same on every machine up to float rounding:

- ``DequantizeLinear``: ``(q - zero_point) * scale`` in float32;
- the float op (Conv, Gemm, MatMul, Add, ...) in float32, summing in onnxruntime's
  order (MLAS);
- ``QuantizeLinear``: ``saturate(round_half_to_even(y / scale) + zero_point)`` to the
  output type's range (the ONNX rule).

pfcompile's integer kernels accumulate exactly in int32 and requantize with their own
rounding, so they are required to lie within **one quantization step** of this
reference on every element (the float sum's rounding can move a value across a
rounding boundary, never further).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from pfcompile.errors import ModelError

__all__ = [
    "ORT_DISABLED_OPTIMIZERS",
    "QUANTIZED_OPS",
    "is_quantized",
    "reference_outputs",
    "reference_session",
]

#: Turned off in every reference session, float graphs included (see the module docstring).
ORT_DISABLED_OPTIMIZERS = ("WeightBiasQuantization",)

#: Node types that make a graph "quantized": it then runs with every optimization off.
QUANTIZED_OPS = frozenset({
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearConv",
    "QLinearMatMul", "QLinearAdd", "QLinearMul", "QLinearSigmoid", "QLinearLeakyRelu",
    "QLinearAveragePool", "QLinearGlobalAveragePool", "QLinearConcat", "QLinearSoftmax",
    "ConvInteger", "MatMulInteger", "MatMulIntegerToFloat", "QGemm",
})


def _proto(model) -> onnx.ModelProto:
    if isinstance(model, onnx.ModelProto):
        return model
    if isinstance(model, (str, Path)):
        try:
            return onnx.load(str(model))
        except Exception as exc:
            raise ModelError(f"cannot read ONNX model {model}: {exc}") from exc
    from pfcompile.ir import to_proto

    return to_proto(model)


def _graph_ops(graph: onnx.GraphProto) -> set[str]:
    ops = set()
    for node in graph.node:
        ops.add(node.op_type)
        for a in node.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                ops |= _graph_ops(a.g)
            elif a.type == onnx.AttributeProto.GRAPHS:
                for g in a.graphs:
                    ops |= _graph_ops(g)
    return ops


def is_quantized(model) -> bool:
    """True when the graph (or a function or sub-graph of it) has a quantization node."""
    m = _proto(model)
    ops = _graph_ops(m.graph)
    for f in m.functions:
        ops |= {n.op_type for n in f.node}
    return not ops.isdisjoint(QUANTIZED_OPS)


def reference_session(model, extra_outputs: list[str] | None = None, threads: int = 2):
    """An onnxruntime CPU session that computes the reference (see the module docstring).

    ``model`` is a ModelProto, an ``onnx_ir`` model or a path; ``extra_outputs`` names
    intermediate values to expose after the graph's own outputs; ``threads`` is the
    intra-op thread count (results do not depend on it).
    """
    import onnxruntime as ort

    proto = _proto(model)
    if extra_outputs:
        p = onnx.ModelProto()
        p.CopyFrom(proto)
        have = {o.name for o in p.graph.output}
        for name in extra_outputs:
            if name not in have:
                p.graph.output.append(onnx.ValueInfoProto(name=name))
        proto = p
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, int(threads))
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    if is_quantized(proto):
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        return ort.InferenceSession(proto.SerializeToString(), opts,
                                    providers=["CPUExecutionProvider"],
                                    disabled_optimizers=list(ORT_DISABLED_OPTIMIZERS))
    except Exception as exc:
        raise ModelError(f"onnxruntime could not load the model: {exc}") from exc


def reference_outputs(model, inputs: dict[str, np.ndarray], threads: int = 2
                      ) -> dict[str, np.ndarray]:
    """The reference outputs of ``model`` for one feed, keyed by output name."""
    sess = reference_session(model, threads=threads)
    names = [o.name for o in sess.get_outputs()]
    try:
        return dict(zip(names, sess.run(names, inputs), strict=True))
    except Exception as exc:
        where = f" {model}" if isinstance(model, (str, Path)) else ""
        raise ModelError(f"onnxruntime could not run the model{where}: {exc}") from exc
