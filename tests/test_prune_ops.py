"""Pruning through Split / Mul-by-constant / Pad / MaxPool / Concat / depthwise with a
channel multiplier / Resize(sizes) / Reshape -> MatMul, checked exactly: channels
whose filters are all zero contribute nothing, so removing exactly them must
leave the outputs unchanged."""

from __future__ import annotations

import numpy as np
import onnx
from _ort import assert_close_rel, run
from onnx import TensorProto, helper, numpy_helper

from pfcompile import ir as pir
from pfcompile.passes.depgraph import dependency_groups
from pfcompile.passes.prune import PruneConfig, prune
from pfcompile.passes.stats import model_stats


def _model() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((8, 3, 3, 3)).astype(np.float32)
    w1[[1, 6]] = 0.0                                  # one dead channel in each Split half
    w2 = rng.standard_normal((6, 16, 1, 1)).astype(np.float32)
    b2 = rng.standard_normal(6).astype(np.float32)
    w2[[2, 4]] = 0.0
    b2[[2, 4]] = 0.0
    inits = {
        "w1": w1, "split": np.array([4, 4], np.int64),
        "c1": rng.uniform(0.5, 2, (1, 4, 1, 1)).astype(np.float32),
        "pads": np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64),
        "wd": rng.standard_normal((16, 1, 3, 3)).astype(np.float32),
        "sizes": np.array([1, 16, 12, 12], np.int64), "w2": w2, "b2": b2,
        "shape": np.array([1, -1], np.int64),
        "wm": rng.standard_normal((6 * 6 * 6, 5)).astype(np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a"], ["r"], name="relu1"),
        helper.make_node("Split", ["r", "split"], ["s1", "s2"], name="split", axis=1),
        helper.make_node("Mul", ["s1", "c1"], ["m1"], name="scale"),
        helper.make_node("Pad", ["s2", "pads"], ["pd"], name="pad"),
        helper.make_node("MaxPool", ["pd"], ["p2"], name="pool3", kernel_shape=[3, 3]),
        helper.make_node("Concat", ["m1", "p2"], ["c"], name="cat", axis=1),
        helper.make_node("Conv", ["c", "wd"], ["d"], name="dw", group=8, pads=[1, 1, 1, 1]),
        helper.make_node("Resize", ["d", "", "", "sizes"], ["rs"], name="up", mode="nearest"),
        helper.make_node("Conv", ["rs", "w2", "b2"], ["e"], name="conv2"),
        helper.make_node("Relu", ["e"], ["er"], name="relu2"),
        helper.make_node("MaxPool", ["er"], ["ep"], name="pool2", kernel_shape=[2, 2],
                         strides=[2, 2]),
        helper.make_node("Reshape", ["ep", "shape"], ["flat"], name="flat"),
        helper.make_node("MatMul", ["flat", "wm"], ["y"], name="head"),
    ]
    g = helper.make_graph(nodes, "ops",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 6, 6])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])],
                          [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])


def test_groups_follow_split_concat_depthwise_resize_reshape():
    groups = {g.id: g for g in dependency_groups(_model())}
    g1 = groups["conv1"]
    assert g1.prunable and g1.channels == 8
    assert {"split", "scale", "pad", "pool3", "cat", "dw", "up", "conv2"} <= set(g1.members)
    g2 = groups["conv2"]
    assert g2.prunable and g2.channels == 6 and {"flat", "head"} <= set(g2.members)
    assert not groups["head"].prunable


def test_removing_dead_channels_is_exact_through_every_op():
    m = _model()
    x = np.random.default_rng(1).standard_normal((4, 3, 6, 6)).astype(np.float32)
    r = prune(m, PruneConfig(ratio=0.25, criterion="l1"))
    assert r.modified
    onnx.checker.check_model(pir.to_proto(r.model), full_check=True)
    nodes = {n.name: n for n in r.model.graph}
    assert nodes["conv1"].inputs[1].const_value.shape == (6, 3, 3, 3)
    np.testing.assert_array_equal(nodes["split"].inputs[1].const_value.numpy(), [3, 3])
    assert nodes["scale"].inputs[1].const_value.shape == (1, 3, 1, 1)
    assert nodes["dw"].attributes["group"].value == 6
    assert nodes["dw"].inputs[1].const_value.shape == (12, 1, 3, 3)
    np.testing.assert_array_equal(nodes["up"].inputs[3].const_value.numpy(), [1, 12, 12, 12])
    assert nodes["conv2"].inputs[1].const_value.shape == (4, 12, 1, 1)
    assert nodes["head"].inputs[1].const_value.shape == (4 * 36, 5)
    assert model_stats(r.model).macs < model_stats(m).macs
    assert_close_rel(run(m, x), run(r.model, x), 1e-5)


def test_unnamed_nodes_get_names_and_prune_the_same():
    m = _model()
    for node in m.graph.node:
        node.name = ""
    groups = dependency_groups(m)
    assert all(g.id for g in groups) and len({g.id for g in groups}) == len(groups)
    x = np.random.default_rng(2).standard_normal((2, 3, 6, 6)).astype(np.float32)
    r = prune(m, PruneConfig(ratio=0.25))
    assert model_stats(r.model).macs == model_stats(prune(_model(), PruneConfig(ratio=0.25))
                                                    .model).macs
    assert_close_rel(run(m, x), run(r.model, x), 1e-5)
