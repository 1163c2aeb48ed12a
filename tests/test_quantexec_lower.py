"""Integer execution vs onnxruntime running the same QDQ model."""

import numpy as np
import onnx
import pytest
import tvm

from pfcompile.compiler import build, import_onnx
from pfcompile.passes.ort_quantize import ort_quantize_qdq
from pfcompile.paths import demo_paths
from pfcompile.quantexec import lower_qdq, onnx_layer_names, reports_to_json
from pfcompile.reference import reference_session
from pfcompile.targets import load_target
from pfcompile.zoo import ResNetTiny, export_onnx

DEMO, DEMO_VAL, DEMO_CALIB = demo_paths()


def _output_step(model: onnx.ModelProto) -> float:
    """Scale of the DequantizeLinear that produces the graph output."""
    out = model.graph.output[0].name
    node = next(n for n in model.graph.node if out in n.output)
    assert node.op_type == "DequantizeLinear"
    init = {i.name: i for i in model.graph.initializer}
    return float(onnx.numpy_helper.to_array(init[node.input[1]]))


def _run_both(path, model, target, xs):
    ex, reports = build(model, target)
    vm = tvm.relax.VirtualMachine(ex, tvm.cpu())
    sess = reference_session(path)
    name = sess.get_inputs()[0].name
    got = np.stack([vm["main"](tvm.runtime.tensor(x[None])).numpy() for x in xs])
    ref = np.stack([sess.run(None, {name: x[None]})[0] for x in xs])
    return got, ref, reports


@pytest.fixture(scope="module")
def demo_qdq(tmp_path_factory):
    calib = np.load(DEMO_CALIB)["x"][:32]
    p = tmp_path_factory.mktemp("q") / "demo_qdq.onnx"
    return ort_quantize_qdq(DEMO, p, calib)


@pytest.fixture(scope="module")
def resnet_tiny_s8(tmp_path_factory):
    import torch

    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("r")
    fp = export_onnx(ResNetTiny(), d / "rt.onnx", (1, 1, 16, 16))
    calib = np.random.default_rng(0).standard_normal((16, 1, 16, 16)).astype(np.float32)
    return ort_quantize_qdq(fp, d / "rt_qdq.onnx", calib, activation="int8")


def test_demo_integer_matches_ort_within_one_step(demo_qdq, int8_target):
    model = onnx.load(str(demo_qdq))
    xs = np.load(DEMO_VAL)["x"][:16].astype(np.float32)
    got, ref, reports = _run_both(demo_qdq, model, int8_target, xs)
    step = _output_step(model)
    assert np.abs(got - ref).max() <= step * 1.0001
    # every conv and the Gemm run integer: a chain of 12 integer layers
    assert len(reports) == 12 and all(r.path == "int8" for r in reports)
    assert reports[0].node == "/stem/stem.0/Conv" and reports[-1].op == "matmul"
    summary = reports_to_json(reports)
    assert summary["int8_layers"] == 12 and summary["float_layers"] == 0


def test_lowered_module_has_no_float_conv(demo_qdq):
    model = onnx.load(str(demo_qdq))
    # without the fused depthwise -> 1x1 kernel (load_target("host") is an AVX2 target)
    mod, _ = lower_qdq(import_onnx(model), load_target("host"), onnx_layer_names(model),
                       fuse_dwpw=False)
    text = mod["main"].script(show_meta=False)
    assert "R.nn.conv2d" not in text and "R.matmul" not in text
    assert text.count("R.call_tir") == 12
    # no float round trip between consecutive convs: the stem's integer output
    # feeds the next integer conv directly
    prims = [gv.name_hint for gv in mod.get_global_vars() if gv.name_hint.startswith("qconv2d")]
    # 11 convs, 9 functions: with the residual adds blocked, layers read and write NCHW8c
    # on both sides and equal ones share (two spatially shared)
    assert len(prims) == 9
    # fused: the model's one depthwise -> 1x1 pair is one call
    mod, _ = lower_qdq(import_onnx(model), load_target("host"), onnx_layer_names(model))
    text = mod["main"].script(show_meta=False)
    assert "R.nn.conv2d" not in text and text.count("R.call_tir") == 11
    assert sum(gv.name_hint.startswith("qdwpw") for gv in mod.get_global_vars()) == 1


def test_int8_activations_resnet_tiny(resnet_tiny_s8, int8_target):
    model = onnx.load(str(resnet_tiny_s8))
    xs = np.random.default_rng(1).standard_normal((8, 1, 16, 16)).astype(np.float32)
    got, ref, reports = _run_both(resnet_tiny_s8, model, int8_target, xs)
    assert np.abs(got - ref).max() <= _output_step(model) * 1.0001
    assert sum(r.path == "int8" for r in reports) == len(reports) >= 7


def test_plain_float_model_is_untouched():
    model = onnx.load(str(DEMO))
    mod = import_onnx(model)
    out, reports = lower_qdq(mod, load_target("host"), onnx_layer_names(model))
    assert out is mod
    assert all(r.path == "float" and r.reason == "not quantised" for r in reports)


def test_float_bias_is_rounded_into_accumulator_units(demo_qdq, tmp_path, int8_target):
    """Float biases (no int32 DQ; what pfcompile's quantize pass wrote before 2026-12-05, and
    what other tools may write): still integer, within 1 step."""
    model = onnx.load(str(demo_qdq))
    init = {i.name: i for i in model.graph.initializer}
    keep = []
    n_folded = 0
    for node in model.graph.node:
        src = init.get(node.input[0]) if node.op_type == "DequantizeLinear" else None
        if src is not None and src.data_type == onnx.TensorProto.INT32:
            q = onnx.numpy_helper.to_array(src).astype(np.float64)
            s = onnx.numpy_helper.to_array(init[node.input[1]]).astype(np.float64)
            model.graph.initializer.append(
                onnx.numpy_helper.from_array((q * s).astype(np.float32), node.output[0]))
            n_folded += 1
        else:
            keep.append(node)
    del model.graph.node[:]
    model.graph.node.extend(keep)
    assert n_folded == 12
    path = tmp_path / "float_bias.onnx"
    onnx.save(model, str(path))
    xs = np.load(DEMO_VAL)["x"][:8].astype(np.float32)
    got, ref, reports = _run_both(path, model, int8_target, xs)
    assert all(r.path == "int8" for r in reports)
    assert np.abs(got - ref).max() <= _output_step(model) * 1.0001
