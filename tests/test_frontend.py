"""The import front end (pfcompile.frontend) on a Paddle2ONNX-style graph built here:
opset 11, dynamic batch/height/width, weights in Constant nodes, a
Shape -> Gather -> Concat -> Reshape chain."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from pfcompile.errors import ModelError
from pfcompile.frontend import bind_input_shapes, import_model


def _const(name: str, arr: np.ndarray) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], name=f"const_{name}",
                            value=numpy_helper.from_array(arr, name))


def paddle_like(opset: int = 11) -> onnx.ModelProto:
    """conv (Constant weights) -> hard-swish as Clip/Div/Mul -> GAP -> Reshape(shape from
    Shape/Gather/Concat) -> MatMul (Constant weights)."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3
    fc = rng.standard_normal((8, 4)).astype(np.float32)
    nodes = [
        _const("w", w), _const("fc", fc),
        _const("three", np.array(3.0, np.float32)), _const("six", np.array(6.0, np.float32)),
        _const("zero", np.array(0.0, np.float32)),
        _const("idx0", np.array([0], np.int64)), _const("minus1", np.array([-1], np.int64)),
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c", "three"], ["a3"], name="hs_add"),
        helper.make_node("Clip", ["a3", "zero", "six"], ["cl"], name="hs_clip"),
        helper.make_node("Div", ["cl", "six"], ["dv"], name="hs_div"),
        helper.make_node("Mul", ["c", "dv"], ["hs"], name="hs_mul"),
        helper.make_node("GlobalAveragePool", ["hs"], ["gap"], name="gap"),
        helper.make_node("Shape", ["gap"], ["shp"], name="shape"),
        helper.make_node("Gather", ["shp", "idx0"], ["n"], name="gather", axis=0),
        helper.make_node("Concat", ["n", "minus1"], ["newshape"], name="concat", axis=0),
        helper.make_node("Reshape", ["gap", "newshape"], ["flat"], name="reshape"),
        helper.make_node("MatMul", ["flat", "fc"], ["y"], name="fc"),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    g = helper.make_graph(nodes, "paddle_like", [x], [y])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 7
    onnx.checker.check_model(m)
    return m


def _run(m: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(m.SerializeToString(), so).run(None, {"x": x})[0]


def test_front_end_folds_lifts_upgrades(tmp_path):
    p = tmp_path / "paddle.onnx"
    onnx.save(paddle_like(), p)
    m = import_model(p, {"x": (1, 3, 12, 16)})
    ops = [n.op_type for n in m.graph.node]
    assert "Shape" not in ops and "Gather" not in ops and "Concat" not in ops
    assert "Constant" not in ops
    assert {t.name for t in m.graph.initializer} >= {"w", "fc"}
    assert next(o.version for o in m.opset_import if o.domain == "") >= 17
    dims = [d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, 12, 16]
    assert [d.dim_value for d in m.graph.output[0].type.tensor_type.shape.dim] == [1, 4]
    x = np.random.default_rng(1).standard_normal((1, 3, 12, 16)).astype(np.float32)
    np.testing.assert_array_equal(_run(m, x), _run(paddle_like(), x))


def test_front_end_output_imports_into_tvm(tmp_path):
    from pfcompile.compiler import import_relax
    from pfcompile.model import input_specs

    p = tmp_path / "paddle.onnx"
    onnx.save(paddle_like(), p)
    m = import_model(p, {"x": (1, 3, 8, 8)})
    mod = import_relax(m, input_specs(m))
    assert "main" in [gv.name_hint for gv in mod.get_global_vars()]


def test_batch_alone_defaults_and_stays_free_for_evaluation():
    m = paddle_like()
    m.graph.input[0].type.tensor_type.shape.dim[2].dim_value = 8
    m.graph.input[0].type.tensor_type.shape.dim[3].dim_value = 8
    bound = import_model(m)
    assert [d.dim_value for d in bound.graph.input[0].type.tensor_type.shape.dim] == [1, 3, 8, 8]
    free = import_model(m, batch=None)
    d0 = free.graph.input[0].type.tensor_type.shape.dim[0]
    assert d0.dim_param == "N" and not d0.HasField("dim_value")
    x = np.random.default_rng(2).standard_normal((5, 3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(_run(free, x), _run(paddle_like(), x), rtol=1e-6, atol=1e-6)


def test_dynamic_spatial_dims_need_the_flag():
    with pytest.raises(ModelError, match=r"--input-shape x:1x3x1x1"):
        bind_input_shapes(paddle_like(), None)
    with pytest.raises(ModelError, match="rank 3"):
        bind_input_shapes(paddle_like(), {"x": (1, 3, 8)})
    with pytest.raises(ModelError, match=r"unknown input\(s\) \['nope'\]"):
        bind_input_shapes(paddle_like(), {"x": (1, 3, 8, 8), "nope": (1,)})


def test_qdq_weights_are_not_folded():
    w = numpy_helper.from_array(np.arange(24, dtype=np.int8).reshape(2, 3, 2, 2), "wq")
    s = numpy_helper.from_array(np.array(0.1, np.float32), "ws")
    nodes = [helper.make_node("DequantizeLinear", ["wq", "ws"], ["wf"], name="dq"),
             helper.make_node("Conv", ["x", "wf"], ["y"], name="conv")]
    g = helper.make_graph(nodes, "q", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                      [1, 3, 4, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 3, 3])], [w, s])
    m = import_model(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))
    assert [n.op_type for n in m.graph.node] == ["DequantizeLinear", "Conv"]


def test_inspect_counts_constant_weights(tmp_path):
    from pfcompile.passes.report import inspect_model

    p = tmp_path / "paddle.onnx"
    onnx.save(paddle_like(), p)
    rep = inspect_model(import_model(p, {"x": (1, 3, 8, 8)}))
    # conv + fc weights and the three float scalars of the hard-swish; the folded int64
    # Reshape shape is not a weight
    assert rep["params"] == 8 * 3 * 3 * 3 + 8 * 4 + 3
    assert rep["size_bytes"] == 4 * rep["params"]
    assert rep["macs"] > 0 and all(la["macs"] >= 0 for la in rep["layers"])
