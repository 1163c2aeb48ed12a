"""The exact reference for quantized graphs, and both x86 integer paths checked against it.

The QDQ conv below is the case where onnxruntime's fused int8 kernel is CPU-dependent:
uint8 activations near the top of their range times int8 weights near +-127 make the
pair sums of ``vpmaddubsw`` saturate int16 on x86 CPUs without VNNI. The reference
runs the graph as written; pfcompile's kernels (``vpmaddwd`` on AVX2, ``vpdpbusd`` on
VNNI) must equal it within one quantization step on every element, on this machine's
path and on the other x86 path through a target variant (``host-avx2`` runs anywhere
x86-64 with AVX2; ``host-vnni`` skips, with the reason, on a CPU without VNNI).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tvm
from onnx import TensorProto, helper, numpy_helper

from pfcompile.compiler import build
from pfcompile.reference import is_quantized, reference_outputs, reference_session
from pfcompile.targets import host_arch, load_target
from tests.device_helpers import x86_target

X86 = pytest.mark.skipif(host_arch() != "x86_64", reason="x86-64 integer kernels need an x86-64 CPU")

SX, ZX = 0.02, 0          # input scale / zero point: uint8 codes 0..255 cover [0, 5.1]
SY, ZY = 0.5, 128         # output scale / zero point (uint8)


def qdq_conv(c: int = 32, o: int = 16, hw: int = 12, seed: int = 0) -> tuple[onnx.ModelProto, dict]:
    """x -> Q(u8) -> DQ -> Conv(DQ(int8 per-channel W), bias) -> Q(u8) -> DQ; weights near +-127."""
    rng = np.random.default_rng(seed)
    w = (rng.choice([-1, 1], (o, c, 3, 3)) * rng.integers(110, 128, (o, c, 3, 3))).astype(np.int8)
    sw = rng.uniform(2e-4, 4e-4, o).astype(np.float32)
    bias = rng.integers(-2000, 2000, o).astype(np.int32)
    inits = [numpy_helper.from_array(np.array(SX, np.float32), "sx"),
             numpy_helper.from_array(np.array(ZX, np.uint8), "zx"),
             numpy_helper.from_array(w, "wq"), numpy_helper.from_array(sw, "sw"),
             numpy_helper.from_array(np.zeros(o, np.int8), "zw"),
             numpy_helper.from_array(bias, "bq"), numpy_helper.from_array(sw * SX, "sb"),
             numpy_helper.from_array(np.zeros(o, np.int32), "zb"),
             numpy_helper.from_array(np.array(SY, np.float32), "sy"),
             numpy_helper.from_array(np.array(ZY, np.uint8), "zy")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "sx", "zx"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "sx", "zx"], ["xd"]),
             helper.make_node("DequantizeLinear", ["wq", "sw", "zw"], ["wd"], axis=0),
             helper.make_node("DequantizeLinear", ["bq", "sb", "zb"], ["bd"], axis=0),
             helper.make_node("Conv", ["xd", "wd", "bd"], ["y0"], pads=[1, 1, 1, 1]),
             helper.make_node("QuantizeLinear", ["y0", "sy", "zy"], ["yq"]),
             helper.make_node("DequantizeLinear", ["yq", "sy", "zy"], ["y"])]
    g = helper.make_graph(nodes, "qdq_conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, (1, c, hw, hw))],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, (1, o, hw, hw))], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 19)])
    m.ir_version = 9
    onnx.checker.check_model(m)
    return m, {"w": w, "sw": sw, "bias": bias}


def near_full_range_input(c: int = 32, hw: int = 12, seed: int = 1) -> np.ndarray:
    """uint8 codes 200..255 (x / SX), the range where u8 x s8 pair sums overflow int16."""
    rng = np.random.default_rng(seed)
    return (rng.integers(200, 256, (1, c, hw, hw)) * SX).astype(np.float32)


def integer_conv_reference(x: np.ndarray, p: dict) -> np.ndarray:
    """The layer in integers (numpy, int64): round-half-even requantization of the exact
    accumulator, as the ONNX QuantizeLinear rule applies it to DQ -> Conv -> Q."""
    xq = np.clip(np.rint(x / SX) + ZX, 0, 255).astype(np.int64) - ZX
    w = p["w"].astype(np.int64)
    xp = np.pad(xq, ((0, 0), (0, 0), (1, 1), (1, 1)))
    o, _, kh, kw = w.shape
    h = x.shape[2]
    acc = np.zeros((1, o, h, h), np.int64) + p["bias"][None, :, None, None]
    for i in range(kh):
        for j in range(kw):
            acc += np.einsum("nchw,oc->nohw", xp[:, :, i:i + h, j:j + h], w[:, :, i, j])
    real = acc * (p["sw"].astype(np.float64) * SX)[None, :, None, None]
    yq = np.clip(np.rint(real / SY) + ZY, 0, 255)
    return ((yq - ZY) * SY).astype(np.float32)


def test_reference_session_runs_quantized_graphs_as_written():
    m, _ = qdq_conv()
    assert is_quantized(m)
    opts = reference_session(m).get_session_options()
    assert opts.graph_optimization_level == ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    float_model = helper.make_model(helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "f",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, (2,))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, (2,))]),
        opset_imports=[helper.make_opsetid("", 19)])
    assert not is_quantized(float_model)
    assert (reference_session(float_model).get_session_options().graph_optimization_level
            != ort.GraphOptimizationLevel.ORT_DISABLE_ALL)


def test_reference_equals_integer_arithmetic_within_one_step():
    """The reference is the integer layer: every element within one output step of the
    numpy int64 computation (float summation can cross a rounding boundary, no more)."""
    m, p = qdq_conv()
    x = near_full_range_input()
    ref = reference_outputs(m, {"x": x})["y"]
    exact = integer_conv_reference(x, p)
    steps = np.abs(ref - exact) / SY
    assert steps.max() <= 1.0 + 1e-6, steps.max()
    assert np.mean(steps == 0) > 0.95  # nearly all identical; the rest one step apart
    # and the inputs really are in the saturating range: u8 x s8 pair sums beyond int16
    xq = np.rint(x / SX).astype(np.int64)
    assert (2 * xq.max() * np.abs(p["w"].astype(np.int64)).max()) > 32767


@X86
@pytest.mark.parametrize(("target_name", "kernel"), [
    ("host-avx2", "x86-avx2-pmaddwd"),
    ("host-vnni", "x86-vnni-vpdpbusd"),
    ("host", None),
])
def test_x86_integer_kernels_equal_the_exact_reference(target_name, kernel):
    target = x86_target(target_name)
    m, p = qdq_conv()
    ex, reports = build(m, target)
    layer = [r for r in reports if r.path == "int8"]
    assert len(layer) == 1, reports
    if kernel is not None:
        assert layer[0].kernel == kernel, layer[0]
    vm = tvm.relax.VirtualMachine(ex, tvm.cpu())
    for seed in range(3):
        x = near_full_range_input(seed=seed + 1)
        got = vm["main"](tvm.runtime.tensor(x)).numpy()
        ref = reference_outputs(m, {"x": x})["y"]
        steps = np.abs(got - ref) / SY
        assert steps.max() <= 1.0 + 1e-6, (target_name, steps.max(), np.mean(steps > 0))
        # and against the integer arithmetic itself
        assert (np.abs(got - integer_conv_reference(x, p)) / SY).max() <= 1.0 + 1e-6


@X86
def test_host_variant_missing_features_is_refused_by_the_device(monkeypatch):
    """A target whose required CPU features are absent is refused before anything runs,
    with the missing features named (here faked: a CPU that has only sse2)."""
    from pfcompile import targets
    from pfcompile.device import serve
    from pfcompile.errors import DeviceError

    t = load_target("host-vnni")
    monkeypatch.setattr(targets, "cpu_flags", lambda: {"sse2"})
    assert t.missing_cpu_features() == list(t.requires)
    with pytest.raises(DeviceError, match="avx512_vnni"):
        serve(t, port=9199)


def test_search_accuracy_of_an_int8_candidate_equals_evaluate_and_the_reference(trained, digits):
    """One int8 model, three scorers: the search's estimate (``search.evaluation``),
    ``pfcompile evaluate`` and the reference session used directly. All go through
    :func:`pfcompile.reference.reference_session`, so they agree exactly on every CPU (the
    fused int8 session once scored such a model 8 points low on an AVX2 EPYC)."""
    from pfcompile.data import Dataset, load_npz
    from pfcompile.evaluate import evaluate
    from pfcompile.model import input_specs, load_onnx
    from pfcompile.passes.qlayers import as_proto
    from pfcompile.passes.quantize import QuantConfig, quantize
    from pfcompile.search.evaluation import Evaluator

    tm = trained("SENetTiny")
    m = load_onnx(tm.onnx)
    q = as_proto(quantize(m, QuantConfig(bits=8), load_npz(digits.calib_npz, input_specs(m))).model)
    assert is_quantized(q)
    data = Dataset({"input": digits.x_val}, digits.y_val, "val")
    searched = Evaluator(m, data).score(q)
    evaluated = evaluate(q, data, reference=m)
    sess = reference_session(q)
    pred = np.concatenate([sess.run(None, {"input": digits.x_val[i:i + 1]})[0]
                           for i in range(len(digits.x_val))]).argmax(1)
    manual = float(np.mean(pred == digits.y_val))
    assert searched.top1 == evaluated["top1"] == manual
    assert searched.agreement == evaluated["agreement"]
    assert manual >= tm.torch_top1 - 0.03  # int8 as written loses (almost) nothing here
