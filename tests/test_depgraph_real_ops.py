"""Channel analysis and pruning through the ops of real vision models: ConvTranspose,
hard-swish as Clip/Div/Mul, SE gated by HardSigmoid, Resize; Softmax / LayerNorm over
the channel axis freeze with a reason; token-layout MatMul freezes with a reason."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from pfcompile.passes.depgraph import dependency_groups
from pfcompile.passes.prune import PruneConfig, prune


def _init(name: str, arr: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(arr), name)


def _run(m, x):
    return ort.InferenceSession(m.SerializeToString()).run(None, {"x": x})[0]


def _model(nodes, inits, out_shape, in_shape=(1, 3, 8, 8)) -> onnx.ModelProto:
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                      list(in_shape))],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
                          inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(m)
    return m


def _convt_model() -> onnx.ModelProto:
    """conv 3->8 (4 dead filters) -> hard-swish (Add/Clip/Div/Mul) -> SE (GAP, conv, HardSigmoid,
    Mul) -> ConvTranspose 8->6 stride 2 (2 dead outputs) -> Resize x2 -> conv 6->4."""
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((8, 3, 3, 3)).astype(np.float32)
    w1[4:] = 0
    wse = rng.standard_normal((8, 8, 1, 1)).astype(np.float32)
    wt = rng.standard_normal((8, 6, 2, 2)).astype(np.float32)
    wt[:, 4:] = 0
    w2 = rng.standard_normal((4, 6, 3, 3)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c1", "three"], ["a3"], name="hs_add"),
        helper.make_node("Clip", ["a3", "zero", "six"], ["cl"], name="hs_clip"),
        helper.make_node("Div", ["cl", "six"], ["dv"], name="hs_div"),
        helper.make_node("Mul", ["c1", "dv"], ["hs"], name="hs_mul"),
        helper.make_node("GlobalAveragePool", ["hs"], ["gap"], name="se_gap"),
        helper.make_node("Conv", ["gap", "wse"], ["sec"], name="se_conv"),
        helper.make_node("HardSigmoid", ["sec"], ["gate"], name="se_gate", alpha=0.2, beta=0.5),
        helper.make_node("Mul", ["hs", "gate"], ["se"], name="se_mul"),
        helper.make_node("ConvTranspose", ["se", "wt", "bt"], ["up"], name="convt",
                         strides=[2, 2]),
        helper.make_node("Resize", ["up", "", "scales"], ["rs"], name="resize", mode="nearest"),
        helper.make_node("Conv", ["rs", "w2"], ["y"], name="conv2", pads=[1, 1, 1, 1]),
    ]
    inits = [_init("w1", w1), _init("b1", np.zeros(8, np.float32)), _init("wse", wse),
             _init("wt", wt), _init("bt", np.zeros(6, np.float32)), _init("w2", w2),
             _init("three", np.float32(3)), _init("zero", np.float32(0)),
             _init("six", np.float32(6)),
             _init("scales", np.array([1, 1, 2, 2], np.float32))]
    return _model(nodes, inits, [1, 4, 32, 32])


def test_convtranspose_hardswish_se_resize_are_prunable():
    m = _convt_model()
    groups = {g.id: g for g in dependency_groups(m)}
    assert groups["conv1"].prunable and groups["conv1"].channels == 8
    assert groups["convt"].prunable and groups["convt"].channels == 6
    assert not groups["conv2"].prunable   # reaches the graph output
    r = prune(m, PruneConfig.from_json({"ratios": {"conv1": 0.5, "convt": 1 / 3}}, where="t"))
    assert r.modified
    p = onnx.shape_inference.infer_shapes(ir.to_proto(r.model))
    shapes = {t.name: tuple(t.dims) for t in p.graph.initializer}
    conv_t = next(n for n in p.graph.node if n.op_type == "ConvTranspose")
    assert shapes[conv_t.input[1]] == (4, 4, 2, 2)
    x = np.random.default_rng(1).standard_normal((1, 3, 8, 8)).astype(np.float32)
    # the removed channels were dead (zero filters, zero bias): same output
    np.testing.assert_allclose(_run(p, x), _run(m, x), rtol=1e-5, atol=1e-5)


def _norm_model(op: str) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1])]
    inits = [_init("w", rng.standard_normal((8, 3, 3, 3)).astype(np.float32)),
             _init("w2", rng.standard_normal((4, 8, 1, 1)).astype(np.float32))]
    if op == "Softmax":
        nodes.append(helper.make_node("Softmax", ["c"], ["n"], name="norm", axis=1))
    else:
        nodes.append(helper.make_node("LayerNormalization", ["c", "s"], ["n"], name="norm",
                                      axis=1))
        inits.append(_init("s", np.ones((8, 8, 8), np.float32)))
    nodes.append(helper.make_node("Conv", ["n", "w2"], ["y"], name="conv2"))
    return _model(nodes, inits, [1, 4, 8, 8])


def test_channel_normalisations_freeze_with_the_reason():
    for op in ("Softmax", "LayerNormalization"):
        g = next(g for g in dependency_groups(_norm_model(op)) if g.id == "conv")
        assert not g.prunable
        assert "'norm'" in g.frozen_reason and "channel axis" in g.frozen_reason


def test_softmax_over_spatial_axis_keeps_channels():
    m = _norm_model("Softmax")
    for a in m.graph.node[1].attribute:
        a.i = 3
    g = next(g for g in dependency_groups(m) if g.id == "conv")
    assert g.prunable


def test_token_layout_matmul_freezes_with_the_reason():
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="proj"),
             helper.make_node("MatMul", ["h", "w2"], ["y"], name="proj2")]
    m = _model(nodes, [_init("w", rng.standard_normal((8, 16)).astype(np.float32)),
                       _init("w2", rng.standard_normal((16, 8)).astype(np.float32))],
               [1, 4, 8], in_shape=(1, 4, 8))
    g = next(g for g in dependency_groups(m) if g.id == "proj")
    assert not g.prunable and "token layout" in g.frozen_reason
