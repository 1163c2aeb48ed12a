"""Canonicalisation passes: structure, modified flag, outputs equal to the original."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from _ort import assert_close_rel, run
from onnx import TensorProto, helper, numpy_helper

from pfcompile import ir as pir
from pfcompile.passes.canonical import canonicalize
from pfcompile.passes.canonical_bn import FoldBatchNormPass
from pfcompile.passes.canonical_dropout import DropIdentityDropoutPass
from pfcompile.passes.canonical_fold import ConstantFoldingPass


def _ops(model) -> list[str]:
    return [n.op_type for n in pir.to_ir(model).graph]


@pytest.mark.parametrize("name", ["PlainCNN", "ResNetTiny", "SENetTiny", "MobileNetV2Tiny"])
def test_each_canonical_pass_keeps_outputs(trained, digits, name):
    path = trained(name).onnx_bn
    model = pir.load(path)
    ref = run(path, digits.x_val[:16])
    n_before = model.graph.num_nodes()
    assert "BatchNormalization" in _ops(model)
    had_identity = "Identity" in _ops(model)

    r1 = DropIdentityDropoutPass()(model)
    assert r1.modified == had_identity and "Identity" not in _ops(r1.model)
    r2 = ConstantFoldingPass()(r1.model)
    r3 = FoldBatchNormPass()(r2.model)
    assert r3.modified and "BatchNormalization" not in _ops(r3.model)
    assert model.graph.num_nodes() == n_before  # functional: the input is untouched
    for r in (r1, r2, r3):
        assert_close_rel(ref, run(r.model, digits.x_val[:16]), 1e-5)
    assert not FoldBatchNormPass()(r3.model).modified
    assert not DropIdentityDropoutPass()(r3.model).modified

    full = canonicalize(model)
    assert full.modified
    assert "BatchNormalization" not in _ops(full.model)
    pir.check(full.model)
    assert_close_rel(ref, run(full.model, digits.x_val[:16]), 1e-5)


def _model(nodes, inits, out_shape=(1, 4, 4, 4)) -> onnx.ModelProto:
    g = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(out_shape))],
        [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_dropout_and_identity_dropped_even_at_graph_output():
    m = _model([helper.make_node("Relu", ["x"], ["a"], name="relu"),
                helper.make_node("Dropout", ["a"], ["b"], name="drop"),
                helper.make_node("Identity", ["b"], ["c"], name="id"),
                helper.make_node("Dropout", ["c"], ["y"], name="drop_out")], {})
    x = np.random.default_rng(0).standard_normal((2, 4, 4, 4)).astype(np.float32)
    r = DropIdentityDropoutPass()(pir.to_ir(m))
    assert r.modified
    assert _ops(r.model) == ["Relu"]
    assert [v.name for v in r.model.graph.outputs] == ["y"]
    np.testing.assert_array_equal(run(r.model, x), run(m, x))


def test_dropout_with_used_mask_is_kept():
    m = _model([helper.make_node("Dropout", ["x"], ["y", "mask"], name="drop")], {})
    m.graph.output.append(helper.make_tensor_value_info("mask", TensorProto.BOOL, [1, 4, 4, 4]))
    r = DropIdentityDropoutPass()(pir.to_ir(m))
    assert not r.modified and _ops(r.model) == ["Dropout"]


def test_constant_folding_folds_shape_chains_and_constant_math():
    rng = np.random.default_rng(0)
    inits = {"a": rng.standard_normal((1, 4, 1, 1)).astype(np.float32),
             "b": rng.standard_normal((1, 4, 1, 1)).astype(np.float32),
             "idx": np.array([0], np.int64), "rest": np.array([-1], np.int64),
             "back": np.array([1, 4, 4, 4], np.int64)}
    m = _model([
        helper.make_node("Add", ["a", "b"], ["ab"], name="const_add"),
        helper.make_node("Mul", ["x", "ab"], ["xm"], name="scale"),
        helper.make_node("Shape", ["xm"], ["shp"], name="shape"),
        helper.make_node("Gather", ["shp", "idx"], ["n"], name="gather", axis=0),
        helper.make_node("Concat", ["n", "rest"], ["target"], name="cat", axis=0),
        helper.make_node("Reshape", ["xm", "target"], ["flat"], name="reshape"),
        helper.make_node("Reshape", ["flat", "back"], ["y"], name="unflat"),
    ], inits)
    x = rng.standard_normal((2, 4, 4, 4)).astype(np.float32)
    r = ConstantFoldingPass()(pir.to_ir(m))
    assert r.modified
    assert _ops(r.model) == ["Mul", "Reshape", "Reshape"]
    target = r.model.graph.node(1).inputs[1]
    np.testing.assert_array_equal(target.const_value.numpy(), [1, -1])
    assert_close_rel(run(m, x), run(r.model, x), 1e-6)
    assert not ConstantFoldingPass()(r.model).modified


def test_fold_bn_into_gemm():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((6, 64)).astype(np.float32)
    bn = {f"bn_{k}": v for k, v in {
        "s": rng.uniform(0.5, 2, 6), "b": rng.standard_normal(6), "m": rng.standard_normal(6),
        "v": rng.uniform(0.5, 2, 6)}.items()}
    inits = {"w": w, "c": rng.standard_normal(6).astype(np.float32),
             **{k: v.astype(np.float32) for k, v in bn.items()}}
    m = _model([helper.make_node("Flatten", ["x"], ["f"], name="flat"),
                helper.make_node("Gemm", ["f", "w", "c"], ["g"], name="fc", transB=1),
                helper.make_node("BatchNormalization", ["g", "bn_s", "bn_b", "bn_m", "bn_v"],
                                 ["y"], name="bn", epsilon=1e-3)], inits, out_shape=(1, 6))
    x = rng.standard_normal((3, 4, 4, 4)).astype(np.float32)
    r = FoldBatchNormPass()(pir.to_ir(m))
    assert r.modified and _ops(r.model) == ["Flatten", "Gemm"]
    assert [v.name for v in r.model.graph.outputs] == ["y"]
    assert_close_rel(run(m, x), run(r.model, x), 1e-5)
