"""pfcompile.batching.batch_free: a free batch only where provably per-sample identical;
the search evaluator runs fixed-batch graphs one sample at a time without errors."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from pfcompile.batching import BATCH_SYMBOL, batch_free, require_batch_free, set_batch
from pfcompile.data import Dataset
from pfcompile.errors import ModelError


def _model(shape_const: list[int], extra: list[onnx.NodeProto] | None = None,
           out_shape: list | None = None, batch: int | str = 1) -> onnx.ModelProto:
    """x [B,4,2,2] -> Relu -> Reshape(shape_const) -> (extra) -> y."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("Reshape", ["r", "shape"], ["y0" if extra else "y"], name="reshape")]
    nodes += extra or []
    inits = [numpy_helper.from_array(np.array(shape_const, np.int64), "shape"),
             numpy_helper.from_array(rng.standard_normal((16, 3)).astype(np.float32), "fc")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                      [batch, 4, 2, 2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
                          inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _run(m: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(m.SerializeToString()).run(None, {"x": x})[0]


def test_fixed_reshape_is_rewritten_and_batches_exactly():
    fc = [helper.make_node("MatMul", ["y0", "fc"], ["y"], name="fc")]
    for const in ([1, 16], [1, -1], [-1, 16]):
        m = _model(const, fc, [1, 3])
        free = batch_free(m)
        assert free is not None, const
        assert free.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"
        shape = [numpy_helper.to_array(t).tolist() for t in free.graph.initializer
                 if t.name.startswith("shape")]
        assert [0, 16] in shape, (const, shape)
        x = np.random.default_rng(1).standard_normal((6, 4, 2, 2)).astype(np.float32)
        one_by_one = np.concatenate([_run(m, x[i:i + 1]) for i in range(6)])
        np.testing.assert_array_equal(_run(free, x), one_by_one)


def test_ops_that_mix_samples_are_refused():
    # Reshape that puts the batch into the rows of a matrix: [1,4,2,2] -> [4, 4]
    assert batch_free(_model([4, 4])) is None
    # a reduction over the batch axis
    red = [helper.make_node("ReduceSum", ["y0", "axes"], ["y"], name="sum", keepdims=1)]
    m = _model([1, 16], red)
    m.graph.initializer.append(numpy_helper.from_array(np.array([0], np.int64), "axes"))
    assert batch_free(m) is None
    # a transpose that moves the batch axis
    tr = [helper.make_node("Transpose", ["y0"], ["y"], name="t", perm=[1, 0])]
    assert batch_free(_model([1, 16], tr)) is None


def test_set_batch_and_require_batch_free():
    vi = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 2, 2])
    set_batch(vi)
    assert vi.type.tensor_type.shape.dim[0].dim_param == BATCH_SYMBOL == "N"
    set_batch(vi, 3)
    dims = vi.type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [3, 4, 2, 2] and not dims[0].dim_param
    scalar = helper.make_tensor_value_info("s", TensorProto.FLOAT, [])
    set_batch(scalar)
    assert len(scalar.type.tensor_type.shape.dim) == 0
    m = _model([1, 16], [helper.make_node("MatMul", ["y0", "fc"], ["y"], name="fc")], [1, 3])
    assert require_batch_free(m).graph.output[0].type.tensor_type.shape.dim[0].dim_param == "N"
    with pytest.raises(ModelError, match="mixed.onnx: cannot run on a free batch"):
        require_batch_free(_model([4, 4]), "mixed.onnx")


def test_declared_dynamic_batch_is_kept():
    m = _model([-1, 16], batch="N")
    assert batch_free(m) is m


def test_evaluator_runs_fixed_batch_graph_per_sample_silently(capfd):
    from pfcompile.search.evaluation import Evaluator

    # [1,4,2,2] -> Reshape [4,4] (mixes samples if batched) -> Flatten -> 16 "classes"
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["r"], name="reshape"),
             helper.make_node("Flatten", ["r"], ["y"], name="flat", axis=0)]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                      [1, 4, 2, 2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16])],
                          [numpy_helper.from_array(np.array([4, 4], np.int64), "shape")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    x = np.random.default_rng(2).standard_normal((40, 4, 2, 2)).astype(np.float32)
    y = x.reshape(40, -1).argmax(1)
    ev = Evaluator(m, Dataset({"x": x}, y), batch=16)
    assert ev.reference.top1 == 1.0 and ev.reference.n == 40
    err = capfd.readouterr().err
    assert "onnxruntime" not in err and "Reshape" not in err
