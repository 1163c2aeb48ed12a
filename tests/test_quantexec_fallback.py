"""Unsupported quantisation falls back to float with a warning naming the node,
never wrong numbers; int4 weights run integer in int8 containers."""

import numpy as np
import onnx
import pytest
import tvm
from onnx import TensorProto as TP
from onnx import helper as h
from onnx import numpy_helper as nh
from onnx.reference import ReferenceEvaluator

from pfcompile.errors import UnsupportedOpError
from pfcompile.quantexec import QuantFallbackWarning, build
from pfcompile.quantexec.onnx_prep import prepare_qdq
from pfcompile.targets import load_target

SY = 0.1


def _conv_model(w_init, w_scale, dq_attrs, act_type=TP.UINT8, opset=21):
    zp = 128 if act_type == TP.UINT8 else 0
    inits = [w_init, w_scale, nh.from_array(np.array(0.05, np.float32), "sx"),
             h.make_tensor("zx", act_type, [], [zp]), nh.from_array(np.array(SY, np.float32), "sy"),
             h.make_tensor("zy", act_type, [], [zp])]
    nodes = [h.make_node("QuantizeLinear", ["x", "sx", "zx"], ["xq"], name="qx"),
             h.make_node("DequantizeLinear", ["xq", "sx", "zx"], ["xd"], name="dqx"),
             h.make_node("DequantizeLinear", ["wq", "sw"], ["wd"], name="dqw", **dq_attrs),
             h.make_node("Conv", ["xd", "wd"], ["c"], pads=[1, 1, 1, 1], name="theconv"),
             h.make_node("QuantizeLinear", ["c", "sy", "zy"], ["cq"], name="qy"),
             h.make_node("DequantizeLinear", ["cq", "sy", "zy"], ["y"], name="dqy")]
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", TP.FLOAT, [1, 4, 8, 8])],
                     [h.make_tensor_value_info("y", TP.FLOAT, [1, 8, 8, 8])], inits)
    m = h.make_model(g, opset_imports=[h.make_opsetid("", opset)])
    onnx.checker.check_model(m)
    return m


def _run(model):
    ex, reports = build(model, load_target("host"))
    x = np.random.default_rng(0).standard_normal((1, 4, 8, 8)).astype(np.float32)
    got = tvm.relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    ref = ReferenceEvaluator(model).run(None, {"x": x})[0]
    return got, ref, reports


RNG = np.random.default_rng(0)
W8 = RNG.integers(-100, 100, (8, 4, 3, 3)).astype(np.int8)


def test_blocked_weights_fall_back_to_float_with_warning():
    m = _conv_model(nh.from_array(W8, "wq"),
                    nh.from_array(RNG.uniform(0.01, 0.02, (8, 2, 3, 3)).astype(np.float32), "sw"),
                    {"axis": 1, "block_size": 2})
    with pytest.warns(QuantFallbackWarning, match="'dqw'.*blocked"):
        got, ref, reports = _run(m)
    assert np.abs(got - ref).max() <= SY * 1.0001
    assert [r.path for r in reports] == ["float", "float"]
    assert reports[0].node == "dqw" and "blocked" in reports[0].reason


def test_float8_weights_fall_back_to_float_with_warning():
    wf8 = h.make_tensor("wq", TP.FLOAT8E4M3FN, [8, 4, 3, 3], RNG.uniform(-2, 2, 288).tolist())
    m = _conv_model(wf8, nh.from_array(np.full(8, 0.1, np.float32), "sw"), {"axis": 0})
    with pytest.warns(QuantFallbackWarning, match="'dqw'.*FLOAT8E4M3FN"):
        got, ref, reports = _run(m)
    assert np.abs(got - ref).max() <= SY * 1.0001
    assert all(r.path == "float" for r in reports)


def test_int4_weights_run_integer_in_int8_containers():
    w4 = RNG.integers(-8, 8, (8, 4, 3, 3))
    wi4 = h.make_tensor("wq", TP.INT4, [8, 4, 3, 3], w4.reshape(-1).tolist())
    m = _conv_model(wi4, nh.from_array(RNG.uniform(0.05, 0.1, 8).astype(np.float32), "sw"),
                    {"axis": 0})
    prepared, folded = prepare_qdq(m)
    assert folded == []
    wq = next(i for i in prepared.graph.initializer if i.name == "wq")
    assert wq.data_type == TP.INT8
    np.testing.assert_array_equal(nh.to_array(wq), w4)
    got, ref, reports = _run(m)
    assert [(r.node, r.path) for r in reports] == [("theconv", "int8")]
    assert np.abs(got - ref).max() <= SY * 1.0001


def test_float8_activations_are_a_clear_error():
    m = _conv_model(nh.from_array(W8, "wq"), nh.from_array(np.full(8, 0.01, np.float32), "sw"),
                    {"axis": 0}, act_type=TP.FLOAT8E4M3FN)
    with pytest.raises(UnsupportedOpError, match="'qx'.*FLOAT8E4M3FN"):
        prepare_qdq(m)


def test_asymmetric_uint8_weights_warn_and_stay_float():
    wu8 = (W8.astype(np.int16) + 128).astype(np.uint8)
    m = _conv_model(nh.from_array(wu8, "wq"), nh.from_array(np.float32(0.01), "sw"), {})
    m.graph.node[2].input.append("zw")
    m.graph.initializer.append(nh.from_array(np.uint8(128), "zw"))
    with pytest.warns(QuantFallbackWarning, match="'theconv'.*uint8 weights"):
        got, ref, reports = _run(m)
    assert reports[0].path == "float" and "uint8" in reports[0].reason
    assert np.abs(got - ref).max() <= SY * 1.0001


def test_integer_kernel_schedule_failure_falls_back_to_float(monkeypatch):
    """A kernel whose schedule cannot be built for a layer's shape (seen on pruned PP-OCR
    layers): the layer runs float, named with the reason; the model still compiles."""
    from tvm import s_tir

    from pfcompile.quantexec import lower

    def broken(sp, target):
        raise s_tir.ScheduleError("An error occurred in the schedule primitive 'reorder'.")

    monkeypatch.setattr(lower, "select_conv_kernel", broken)
    m = _conv_model(nh.from_array(W8, "wq"),
                    nh.from_array(RNG.uniform(0.01, 0.02, 8).astype(np.float32), "sw"),
                    {"axis": 0})
    with pytest.warns(QuantFallbackWarning, match="no integer kernel schedule"):
        got, ref, reports = _run(m)
    assert np.abs(got - ref).max() <= SY * 1.0001
    assert [r.path for r in reports] == ["float"]
    assert "reorder" in reports[0].reason
