"""Layers with quantised inputs and NO QuantizeLinear after them (pfcompile's own QDQ format:
residual-add inputs, the final Gemm) run integer with a float dequantise epilogue; the
accumulation is exact, so they agree with onnxruntime on the same QDQ graph to float rounding."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import tvm
from onnx import TensorProto, helper, numpy_helper

from pfcompile.compiler import build
from pfcompile.passes.qlayers import ort_session
from pfcompile.targets import load_target

RNG = np.random.default_rng(0)


def _qdq_layer(kind: str, act: str | None, bias: bool, residual: bool = False) -> onnx.ModelProto:
    """x -> Q(u8) -> DQ -> Conv|Gemm(DQ(int8 per-channel W)) [+bias] [-> act] [-> Add x]."""
    if kind == "conv":
        xs, w = (1, 8, 10, 10), RNG.integers(-127, 128, (16, 8, 3, 3)).astype(np.int8)
        ys = (1, 16, 10, 10)
    else:
        xs, w = (1, 40), RNG.integers(-127, 128, (24, 40)).astype(np.int8)
        ys = (1, 24)
    sw = (RNG.uniform(0.5, 2.0, w.shape[0]) * 1e-2).astype(np.float32)
    inits = [numpy_helper.from_array(np.array(0.03, np.float32), "sx"),
             numpy_helper.from_array(np.array(117, np.uint8), "zx"),
             numpy_helper.from_array(w, "wq"), numpy_helper.from_array(sw, "sw"),
             numpy_helper.from_array(np.zeros(w.shape[0], np.int8), "zw"),
             numpy_helper.from_array(RNG.standard_normal(w.shape[0]).astype(np.float32), "b")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "sx", "zx"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "sx", "zx"], ["xd"]),
             helper.make_node("DequantizeLinear", ["wq", "sw", "zw"], ["wd"], axis=0)]
    ins = ["xd", "wd"] + (["b"] if bias else [])
    if kind == "conv":
        nodes.append(helper.make_node("Conv", ins, ["y0"], pads=[1, 1, 1, 1]))
    else:
        nodes.append(helper.make_node("Gemm", ins, ["y0"], transB=1))
    last = "y0"
    if act == "relu":
        nodes.append(helper.make_node("Relu", [last], ["y1"]))
        last = "y1"
    elif act == "clip":
        inits += [numpy_helper.from_array(np.array(0.0, np.float32), "lo"),
                  numpy_helper.from_array(np.array(6.0, np.float32), "hi")]
        nodes.append(helper.make_node("Clip", [last, "lo", "hi"], ["y1"]))
        last = "y1"
    if residual:
        inits.append(numpy_helper.from_array(RNG.standard_normal(ys).astype(np.float32), "r"))
        nodes.append(helper.make_node("Add", [last, "r"], ["y2"]))
        last = "y2"
    nodes.append(helper.make_node("Identity", [last], ["y"]))
    g = helper.make_graph(nodes, "layer", [helper.make_tensor_value_info("x", TensorProto.FLOAT, xs)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ys)], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 19)])
    m.ir_version = 9
    onnx.checker.check_model(m)
    return m


@pytest.mark.parametrize(("kind", "act", "bias", "residual"), [
    ("conv", None, True, False), ("conv", "relu", True, False), ("conv", "clip", False, False),
    ("conv", None, True, True), ("gemm", None, True, False), ("gemm", "relu", False, False)])
def test_float_epilogue_matches_ort(kind, act, bias, residual):
    model = _qdq_layer(kind, act, bias, residual)
    ex, reports = build(model, load_target("host"))
    assert [r.path for r in reports] == ["int8"], reports
    assert "float epilogue" in reports[0].reason
    vm = tvm.relax.VirtualMachine(ex, tvm.cpu())
    sess = ort_session(model)
    shape = tuple(d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim)
    for seed in range(3):
        x = np.random.default_rng(seed).uniform(-3.5, 4.0, shape).astype(np.float32)
        ref = sess.run(None, {"x": x})[0]
        y = vm["main"](tvm.runtime.tensor(x)).numpy()
        assert y.dtype == np.float32 and y.shape == ref.shape
        # int32 accumulation is exact: only the float epilogue's rounding order differs
        assert np.abs(y - ref).max() <= 1e-4 * np.ptp(ref), (np.abs(y - ref).max(), np.ptp(ref))
        if act == "relu" and not residual:
            assert y.min() >= 0.0


def test_shared_layer_output_is_not_fused_past_its_other_user():
    """A conv whose pre-activation output also feeds another op keeps the ReLU separate."""
    model = _qdq_layer("conv", "relu", True)
    # also expose the pre-ReLU conv output: the ReLU must not be folded into the kernel
    model.graph.output.append(helper.make_tensor_value_info("y0", TensorProto.FLOAT, (1, 16, 10, 10)))
    ex, reports = build(model, load_target("host"))
    assert [r.path for r in reports] == ["int8"]
    vm = tvm.relax.VirtualMachine(ex, tvm.cpu())
    x = np.random.default_rng(5).uniform(-3.5, 4.0, (1, 8, 10, 10)).astype(np.float32)
    y, y0 = (t.numpy() for t in vm["main"](tvm.runtime.tensor(x)))
    ref, ref0 = ort_session(model).run(None, {"x": x})
    assert y0.min() < 0.0  # the pre-activation output really is unclamped
    assert np.abs(y0 - ref0).max() <= 1e-4 * np.ptp(ref0)
    assert np.abs(y - ref).max() <= 1e-4 * np.ptp(ref)
