"""Channel dependency groups on the fixture topologies and on hand-built graphs."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from pfcompile import ir as pir
from pfcompile.passes.depgraph import dependency_groups
from pfcompile.passes.report import inspect_model


def _by_id(groups):
    return {g.id: g for g in groups}


def test_plain_cnn_groups_and_frozen_logits(trained):
    groups = dependency_groups(pir.load(trained("PlainCNN").onnx))
    assert [(g.channels, g.prunable) for g in groups] == [(16, True), (32, True), (32, True),
                                                          (10, False)]
    fc = groups[-1]
    assert fc.id == "/fc/Gemm" and "graph output 'logits'" in fc.frozen_reason
    # the last conv's channels are read by the Gemm after pooling + flatten
    assert "/fc/Gemm" in groups[2].members and "/Flatten" in groups[2].members


def test_residual_adds_tie_producers_together(trained):
    groups = dependency_groups(pir.load(trained("ResNetTiny").onnx))
    multi = [g for g in groups if len(g.sources) > 1]
    # stage 1 (identity shortcut): stem + block-1 second conv; stages 2-3: shortcut + second conv
    assert len(multi) == 3
    assert all(g.prunable for g in multi)
    stem = groups[0]
    assert len(stem.sources) == 2 and stem.channels == 16
    assert any("Add" in m for m in stem.members)


def test_mobilenet_depthwise_follows_expansion_and_residual_links(trained):
    groups = dependency_groups(pir.load(trained("MobileNetV2Tiny").onnx))
    expand = _by_id(groups)["/features/features.2/body/body.0/body.0.0/Conv"]
    assert expand.channels == 64 and expand.prunable
    # the depthwise conv right after the expansion carries the same channels
    assert "/features/features.2/body/body.1/body.1.0/Conv" in expand.members
    # the linear bottlenecks of a residual pair share one group
    bottleneck = _by_id(groups)["/features/features.2/body/body.2/body.2.0/Conv"]
    assert bottleneck.sources == ("/features/features.2/body/body.2/body.2.0/Conv",
                                  "/features/features.3/body/body.2/body.2.0/Conv")


def test_densenet_concat_keeps_producers_separate(trained):
    groups = dependency_groups(pir.load(trained("DenseNetTiny").onnx))
    prunable = [g for g in groups if g.prunable]
    assert [(g.channels, len(g.sources)) for g in prunable] == [(16, 1), (12, 1), (12, 1),
                                                                 (24, 1)]
    # the stem's channels reach every later conv through both concats
    assert "/trans/trans.0/Conv" in prunable[0].members


def test_squeeze_excitation_mul_ties_excite_conv_to_trunk(trained):
    groups = dependency_groups(pir.load(trained("SENetTiny").onnx))
    trunk = _by_id(groups)["/c2/c2.0/Conv"]
    assert trunk.sources == ("/c2/c2.0/Conv", "/se/fc2/Conv") and trunk.channels == 32
    assert _by_id(groups)["/se/fc1/Conv"].channels == 8


def test_flatten_gemm_channel_owns_spatial_features(trained):
    groups = dependency_groups(pir.load(trained("FlattenGemmNet").onnx))
    conv2 = _by_id(groups)["/f/f.1/f.1.0/Conv"]
    assert conv2.channels == 24 and conv2.prunable and "/fc1/Gemm" in conv2.members
    hidden = _by_id(groups)["/fc1/Gemm"]
    assert hidden.channels == 64 and hidden.prunable


def test_grouped_conv_needs_even_removal_per_group(trained):
    groups = dependency_groups(pir.load(trained("GroupedConvNet").onnx))
    by = _by_id(groups)
    assert by["/c1/c1.0/Conv"].partitions == 4 and by["/c1/c1.0/Conv"].prunable
    assert by["/g/g.0/Conv"].partitions == 4 and by["/g/g.0/Conv"].channels == 32
    assert by["/c3/c3.0/Conv"].partitions == 1


def _conv_model(middle: list[onnx.NodeProto]) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.standard_normal((6, 8, 1, 1)).astype(np.float32), "w2"),
             numpy_helper.from_array(rng.standard_normal((4, 6, 1, 1)).astype(np.float32), "w3")]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], name="conv1", pads=[1, 1, 1, 1]),
             *middle,
             helper.make_node("Conv", ["m", "w2"], ["b"], name="conv2"),
             helper.make_node("Conv", ["b", "w3"], ["y"], name="conv3")]
    g = helper.make_graph(nodes, "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 5, 5])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_unknown_op_freezes_the_channels_it_touches_and_inspect_says_which():
    m = _conv_model([helper.make_node("Softmax", ["a"], ["m"], name="mixer", axis=1)])
    groups = _by_id(dependency_groups(m))
    frozen = groups["conv1"]
    assert not frozen.prunable
    assert "'mixer' (Softmax)" in frozen.frozen_reason
    assert groups["conv2"].prunable  # past the unknown node, conv2's own channels are free
    rep = inspect_model(m)
    row = next(g for g in rep["groups"] if g["id"] == "conv1")
    assert row["prunable"] is False and "mixer" in row["frozen_reason"]
    assert set(rep["config"]["ratios"]) == {"conv2"}


def test_followed_ops_keep_groups_prunable_and_model_untouched():
    m = _conv_model([helper.make_node("Relu", ["a"], ["r"], name="relu"),
                     helper.make_node("MaxPool", ["r"], ["p"], name="pool", kernel_shape=[2, 2]),
                     helper.make_node("Clip", ["p"], ["m"], name="clip")])
    before = m.SerializeToString()
    groups = _by_id(dependency_groups(m))
    assert groups["conv1"].prunable and groups["conv1"].channels == 8
    assert groups["conv1"].members == ("conv1", "relu", "pool", "clip", "conv2")
    assert m.SerializeToString() == before


def test_transpose_and_graph_input_add_freeze():
    t = _conv_model([helper.make_node("Transpose", ["a"], ["t"], name="tr", perm=[0, 1, 3, 2]),
                     helper.make_node("Identity", ["t"], ["m"], name="id")])
    assert "'tr' (Transpose)" in _by_id(dependency_groups(t))["conv1"].frozen_reason
    # conv1 output added to the graph input (3 channels -> a 3-channel conv1)
    m = _conv_model([helper.make_node("Add", ["a", "x"], ["m0"], name="add"),
                     helper.make_node("Relu", ["m0"], ["m"], name="relu")])
    m.graph.initializer[0].CopyFrom(numpy_helper.from_array(
        np.ones((3, 3, 3, 3), np.float32), "w1"))
    m.graph.initializer[1].CopyFrom(numpy_helper.from_array(
        np.ones((6, 3, 1, 1), np.float32), "w2"))
    g = _by_id(dependency_groups(m))["conv1"]
    assert not g.prunable and "graph input 'x'" in g.frozen_reason


def test_layer_on_dequantized_weights_is_listed_as_frozen():
    m = _conv_model([helper.make_node("Relu", ["a"], ["m"], name="relu")])
    w = numpy_helper.to_array(m.graph.initializer[1])
    m.graph.initializer[1].CopyFrom(numpy_helper.from_array(
        np.round(w * 20).astype(np.int8), "w2q"))
    m.graph.initializer.extend([numpy_helper.from_array(np.float32(0.05), "s")])
    m.graph.node.insert(0, helper.make_node("DequantizeLinear", ["w2q", "s"], ["w2"], name="dq"))
    groups = _by_id(dependency_groups(m))
    assert not groups["conv2"].prunable
    assert "'conv2' (Conv)" in groups["conv2"].frozen_reason
    assert not groups["conv1"].prunable  # its consumer cannot be rewritten either
    assert groups["conv3"].prunable is False  # reaches the graph output
