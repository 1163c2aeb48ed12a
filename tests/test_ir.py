"""ir helpers and model_stats on small hand-built graphs with known numbers."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from pfcompile import ir as pir
from pfcompile.errors import ModelError
from pfcompile.passes.stats import model_size_mb, model_stats


def _conv_gemm_model(groups: int = 2) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((8, 4 // groups, 3, 3)).astype(np.float32)
    b1 = np.zeros(8, np.float32)
    w2 = rng.standard_normal((10, 8 * 4 * 4)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c"], name="conv", pads=[1, 1, 1, 1],
                         group=groups),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("Flatten", ["r"], ["f"], name="flat", axis=1),
        helper.make_node("Gemm", ["f", "w2"], ["y"], name="fc", transB=1),
    ]
    g = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(b1, "b1"),
         numpy_helper.from_array(w2, "w2")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_stats_counts_grouped_conv_and_gemm():
    s = model_stats(_conv_gemm_model(groups=2))
    conv, fc = s.layers
    assert conv.name == "conv" and conv.out_shape == (1, 8, 4, 4)
    assert conv.macs == 8 * 4 * 4 * (4 // 2) * 9  # groups halve the MACs
    assert conv.params == 8 * 2 * 9 + 8 and conv.bytes == 4 * conv.params
    assert fc.macs == 10 * 128 and fc.params == 1280
    assert s.macs == conv.macs + fc.macs
    assert s.params == conv.params + fc.params and s.size_bytes == 4 * s.params
    assert model_stats(_conv_gemm_model(groups=1)).layers[0].macs == 2 * conv.macs


def test_stats_follows_dequantize_linear_to_int8_weights():
    m = _conv_gemm_model(groups=1)
    w = numpy_helper.to_array(m.graph.initializer[0])
    m.graph.initializer[0].CopyFrom(numpy_helper.from_array(
        np.clip(np.round(w * 10), -127, 127).astype(np.int8), "w1q"))
    m.graph.initializer.extend([numpy_helper.from_array(np.float32(0.1), "s"),
                                numpy_helper.from_array(np.int8(0), "z")])
    m.graph.node.insert(0, helper.make_node("DequantizeLinear", ["w1q", "s", "z"], ["w1"],
                                            name="dq"))
    s = model_stats(m)
    conv = s.layers[0]
    assert conv.name == "conv"
    assert conv.params == 8 * 4 * 9 + 8 + 2 and conv.bytes == 8 * 4 * 9 + 4 * 8 + 4 + 1
    assert s.size_bytes == conv.bytes + 4 * 1280


def test_model_size_is_the_stats_bytes_constants_included_int64_not():
    m = _conv_gemm_model(groups=1)
    base = model_stats(m).size_bytes
    assert model_size_mb(m) == base / 1e6 == 4 * (8 * 4 * 9 + 8 + 1280) / 1e6
    # a float Constant node is stored like an initializer; an int64 one (a shape) is no weight
    bias = numpy_helper.from_array(np.ones(10, np.float32), "bias")
    shape = numpy_helper.from_array(np.array([1, 10], np.int64), "shape")
    m.graph.node.extend([helper.make_node("Constant", [], ["bc"], value=bias, name="cb"),
                         helper.make_node("Constant", [], ["sc"], value=shape, name="cs"),
                         helper.make_node("Add", ["y", "bc"], ["y2"], name="add"),
                         helper.make_node("Reshape", ["y2", "sc"], ["y3"], name="rs")])
    m.graph.output[0].name = "y3"
    assert model_stats(m).size_bytes == base + 40
    assert model_size_mb(m) == (base + 40) / 1e6
    assert model_size_mb(pir.to_ir(m)) == model_size_mb(m)


def test_save_load_roundtrip_hash_and_clone(tmp_path):
    m = pir.to_ir(_conv_gemm_model())
    p = pir.save(m, tmp_path / "m.onnx")
    back = pir.load(p)
    assert [n.op_type for n in back.graph] == ["Conv", "Relu", "Flatten", "Gemm"]
    assert pir.content_hash(pir.to_ir(pir.to_proto(back))) == pir.content_hash(back)
    c = pir.clone(back)
    c.graph.remove(c.graph.node(1), safe=False)
    assert back.graph.num_nodes() == 4 and c.graph.num_nodes() == 3
    assert pir.content_hash(back) != pir.content_hash(c)


def test_save_refuses_invalid_model_and_writes_nothing(tmp_path):
    bad = _conv_gemm_model()
    bad.graph.node[3].input[0] = "missing"
    with pytest.raises(ModelError, match="fails the ONNX checker"):
        pir.save(bad, tmp_path / "bad.onnx")
    assert not (tmp_path / "bad.onnx").exists()


def test_load_names_missing_file(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        pir.load(tmp_path / "nope.onnx")


def test_infer_shapes_recomputes_after_rewrite():
    m = pir.to_ir(_conv_gemm_model())
    pir.infer_shapes(m)
    relu = m.graph.node(1)
    assert pir.static_shape(relu.outputs[0]) == (1, 8, 4, 4)
