"""Test helpers for the device tests: a tiny ONNX model and a minimal compile step.

``compile_tiny`` compiles through ``pfcompile.compiler.compile_model`` (the
same ``model.so`` / ``model.json`` / ``source.onnx`` layout the CLI writes).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from pfcompile.compiler import compile_model
from pfcompile.targets import Target

__all__ = ["compile_tiny", "heavy_model", "tiny_model"]


def tiny_model(seed: int = 0) -> onnx.ModelProto:
    """x[1,3,8,8] -> Conv(4, 3x3, pad 1) -> Relu -> Flatten -> Gemm(10) = y; Softmax(y) = p."""
    rng = np.random.default_rng(seed)
    w = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32) * 0.3, "w")
    b = numpy_helper.from_array(rng.standard_normal(4).astype(np.float32) * 0.1, "b")
    fw = numpy_helper.from_array(rng.standard_normal((10, 256)).astype(np.float32) * 0.05, "fw")
    fb = numpy_helper.from_array(rng.standard_normal(10).astype(np.float32) * 0.1, "fb")
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("Flatten", ["r"], ["f"], name="flatten", axis=1),
        helper.make_node("Gemm", ["f", "fw", "fb"], ["y"], name="fc", transB=1),
        helper.make_node("Softmax", ["y"], ["p"], name="softmax", axis=1),
    ]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10]),
         helper.make_tensor_value_info("p", TensorProto.FLOAT, [1, 10])],
        [w, b, fw, fb],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def heavy_model(hw: int = 128, ch: int = 64) -> onnx.ModelProto:
    """Two 3x3 convs on ch x hw x hw: tens of ms per run untuned (for kill-mid-run tests)."""
    rng = np.random.default_rng(1)
    inits = [numpy_helper.from_array(rng.standard_normal((ch, ch, 3, 3)).astype(np.float32)
                                     * 0.05, f"w{i}") for i in range(2)]
    nodes = [helper.make_node("Conv", ["x", "w0"], ["c0"], pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["c0", "w1"], ["y"], pads=[1, 1, 1, 1])]
    graph = helper.make_graph(
        nodes, "heavy",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, ch, hw, hw])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, ch, hw, hw])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def compile_tiny(model: onnx.ModelProto, target: Target, out_dir: Path) -> Path:
    """Compile *model* for *target* into *out_dir* with pfcompile's compiler."""
    return compile_model(model, target, out_dir).dir


def x86_target(name: str) -> Target:
    """Target ``name`` (an x86 integer path: host-avx2 / host-vnni / host); the test skips
    where this CPU lacks its features."""
    import pytest

    from pfcompile.targets import load_target

    t = load_target(name)
    missing = t.missing_cpu_features()
    if missing:
        pytest.skip(f"this CPU lacks {', '.join(missing)}: the {name} kernels cannot run here")
    return t
