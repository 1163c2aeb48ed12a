"""Quantize pass: QDQ structure, bit widths, calibration, codebook, bias correction,
accuracy on the trained digits fixtures, bad input (clear error, no output file)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnx_ir as ir
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper
from typer.testing import CliRunner

from pfcompile import ir as pir
from pfcompile.cli import app
from pfcompile.data import Dataset
from pfcompile.errors import ConfigError, DataError, PassError
from pfcompile.passes.calibration import TensorStats, act_range, collect_stats
from pfcompile.passes.codebook import codebook_bytes, kmeans_codebook
from pfcompile.passes.qlayers import run_ort, weighted_layers
from pfcompile.passes.quantize import (
    BITS_KEY,
    QuantConfig,
    _conv2d_shift,
    quant_report,
    quantize,
    quantize_weight,
)

FIXTURES = ("PlainCNN", "ResNetTiny", "MobileNetV2Tiny", "DenseNetTiny", "SENetTiny",
            "FlattenGemmNet", "GroupedConvNet")


def _calib(digits) -> Dataset:
    return Dataset({"input": digits.x_calib}, None)


def _top1(model, digits) -> float:
    out = run_ort(model, {"input": digits.x_val})[0]
    return float(np.mean(out.argmax(1) == digits.y_val))


def _producer_op(v: ir.Value) -> str | None:
    return v.producer().op_type if v.producer() is not None else None


# ----------------------------------------------------------------------------- units
@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 7, 8])
def test_weight_quantization_clips_to_bits_and_reconstructs(bits):
    rng = np.random.default_rng(bits)
    w = rng.standard_normal((6, 3, 3, 3)).astype(np.float32)
    w[2] = 0.0  # an all-zero channel must not divide by zero
    q, scale = quantize_weight(w, bits, axis=0)
    qmax = 2 ** (bits - 1) - 1
    assert q.dtype == np.int8 and scale.shape == (6,)
    assert q.min() >= -qmax and q.max() <= qmax
    assert q[[0, 1, 3, 4, 5]].reshape(5, -1).__abs__().max(axis=1).tolist() == [qmax] * 5
    err = np.abs(q * scale[:, None, None, None] - w)
    assert np.all(err <= scale[:, None, None, None] / 2 + 1e-7)
    assert np.all(q[2] == 0)


def test_kmeans_codebook_beats_its_uniform_initialisation():
    rng = np.random.default_rng(0)
    w = rng.laplace(size=(32, 16, 3, 3)).astype(np.float32)
    for bits in (2, 3, 4):
        cent, idx = kmeans_codebook(w, bits)
        assert cent.shape == (2**bits,) and idx.dtype == np.uint8 and idx.max() < 2**bits
        mse_cb = float(np.mean((cent[idx] - w) ** 2))
        grid = np.linspace(w.min(), w.max(), 2**bits)
        nearest = grid[np.abs(w[..., None] - grid).argmin(-1)]
        assert mse_cb < float(np.mean((nearest - w) ** 2))
    assert codebook_bytes(1000, 4) == 500 + 16 * 4


@pytest.mark.parametrize("cin,cout,k,stride,pad,groups,dil",
                         [(4, 6, 3, 1, 1, 1, 1), (8, 8, 3, 2, 1, 8, 1), (6, 4, 3, 2, 0, 2, 2)])
def test_bias_correction_shift_is_exact_mean_of_conv(cin, cout, k, stride, pad, groups, dil):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((cin, 9, 9))
    w = rng.standard_normal((cout, cin // groups, k, k))
    node = ir.node("Conv", [None, None], {"pads": [pad] * 4, "strides": [stride] * 2,
                                           "dilations": [dil] * 2, "group": groups})
    ref = F.conv2d(torch.from_numpy(x[None]), torch.from_numpy(w), stride=stride, padding=pad,
                   dilation=dil, groups=groups).numpy()[0].mean(axis=(1, 2))
    np.testing.assert_allclose(_conv2d_shift(node, w, x, groups), ref, rtol=1e-10, atol=1e-12)


def test_calibration_methods_order_ranges():
    rng = np.random.default_rng(0)
    v = np.concatenate([rng.standard_normal(100_000), [40.0, -35.0]]).astype(np.float32)
    st = TensorStats("t", float(v.min()), float(v.max()), np.zeros(1, np.float32), v, v.size)
    lo_mm, hi_mm = act_range(st, "minmax", 8)
    lo_p, hi_p = act_range(st, "percentile", 8, 99.9)
    lo_m, hi_m = act_range(st, "mse", 4)
    assert (lo_mm, hi_mm) == (pytest.approx(-35.0), pytest.approx(40.0))
    assert -5 < lo_p < 0 < hi_p < 5  # the two outliers are cut
    assert lo_mm < lo_m <= 0 <= hi_m < hi_mm  # at 4 bits mse clips the outliers
    with pytest.raises(ConfigError, match="calibration method 'kl'"):
        act_range(st, "kl", 8)


def _one_conv_model(rng) -> onnx.ModelProto:
    w = rng.standard_normal((8, 4, 3, 3)).astype(np.float32)
    b = np.zeros(8, np.float32)
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv", pads=[1, 1, 1, 1])
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 6, 6])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 6, 6])],
                          [onnx.numpy_helper.from_array(w, "w"), onnx.numpy_helper.from_array(b, "b")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_bias_correction_removes_mean_output_error():
    rng = np.random.default_rng(0)
    model = _one_conv_model(rng)
    x = (rng.standard_normal((64, 4, 6, 6)) + 2.0).astype(np.float32)  # non-zero mean input
    data = Dataset({"x": x}, None)
    ref = run_ort(model, {"x": x})[0]
    errs = {}
    for bc in (False, True):
        q = quantize(model, QuantConfig(bits=3, act_bits=None, bias_correction=bc), data).model
        out = run_ort(q, {"x": x})[0]
        errs[bc] = np.abs((out - ref).mean(axis=(0, 2, 3))).max()
    assert errs[True] < 1e-4 < errs[False]


def test_bias_is_int32_in_accumulator_units():
    """The bias becomes onnxruntime's QDQ bias: round(b / (sx * sw[c])) as int32, dequantised
    with scale float32(sx * sw[c]); off by at most half an accumulator unit. Codebook layers
    and weights-only quantization keep the float bias."""
    rng = np.random.default_rng(5)
    model = _one_conv_model(rng)
    b = rng.normal(0, 0.5, 8).astype(np.float32)
    model.graph.initializer[1].CopyFrom(onnx.numpy_helper.from_array(b, "b"))
    x = rng.standard_normal((16, 4, 6, 6)).astype(np.float32)
    data = Dataset({"x": x}, None)
    q = quantize(model, QuantConfig(bits=8, bias_correction=False), data).model
    conv = next(n for n in q.graph if n.op_type == "Conv")
    bdq = conv.inputs[2].producer()
    bq = bdq.inputs[0].const_value.numpy()
    scale = bdq.inputs[1].const_value.numpy()
    sx = np.float32(conv.inputs[0].producer().inputs[1].const_value.numpy())
    sw = conv.inputs[1].producer().inputs[1].const_value.numpy()
    assert bq.dtype == np.int32 and scale.dtype == np.float32 and bdq.attributes["axis"].as_int() == 0
    np.testing.assert_array_equal(scale, sx * sw)
    np.testing.assert_array_equal(bq, np.round(b.astype(np.float64) / scale.astype(np.float64)))
    assert np.all(np.abs(bq * scale.astype(np.float64) - b) <= scale / 2 * (1 + 1e-6))
    assert np.abs(bq).min() > 10   # not a trivial bias
    rep = quant_report(q)["layers"]["conv"]
    assert (rep["bias"], rep["bias_bytes"]) == ("int32", 32)
    # onnxruntime runs it, and the float outputs move by less than the activations' rounding
    ref, out = run_ort(model, {"x": x})[0], run_ort(q, {"x": x})[0]
    assert np.abs(out - ref).max() < 0.05 * np.abs(ref).max()
    for cfg in (QuantConfig(bits=4, codebook=True, bias_correction=False),
                QuantConfig(bits=8, act_bits=None, bias_correction=False)):
        qf = quantize(model, cfg, data).model
        conv = next(n for n in qf.graph if n.op_type == "Conv")
        assert conv.inputs[2].producer() is None
        assert conv.inputs[2].const_value.dtype == ir.DataType.FLOAT
        assert quant_report(qf)["layers"]["conv"]["bias"] == "float32"


def test_batchnorm_after_a_conv_is_folded_before_quantizing():
    """A BN node of its own (Paddle2ONNX exports keep it) is folded into the conv, so the
    int8 weights are the conv+BN weights and no float BN runs between DQ and Q."""
    rng = np.random.default_rng(3)
    model = _one_conv_model(rng)
    g = model.graph
    g.node[0].output[0] = "c"
    bn = [np.abs(rng.standard_normal(8)).astype(np.float32) + 0.5, rng.standard_normal(8).astype(np.float32),
          rng.standard_normal(8).astype(np.float32), np.abs(rng.standard_normal(8)).astype(np.float32) + 0.1]
    names = ["bn_scale", "bn_bias", "bn_mean", "bn_var"]
    g.initializer.extend(onnx.numpy_helper.from_array(a, n) for a, n in zip(bn, names))
    g.node.extend([helper.make_node("BatchNormalization", ["c", *names], ["y"], name="bn", epsilon=1e-5)])
    x = rng.standard_normal((32, 4, 6, 6)).astype(np.float32)
    q = quantize(model, QuantConfig(bits=8), Dataset({"x": x}, None)).model
    ops = [n.op_type for n in q.graph]
    assert "BatchNormalization" not in ops and ops.count("Conv") == 1
    assert "BatchNormalization" in [n.op_type for n in model.graph.node]   # input unchanged
    ref, out = run_ort(model, {"x": x})[0], run_ort(q, {"x": x})[0]
    # 8-bit weights over the folded (BN-scaled) weights: a few quantization steps of the range
    assert np.abs(out - ref).max() < 0.03 * np.abs(ref).max()
    rep = quant_report(q)
    assert list(rep["layers"]) == ["conv"] and rep["layers"]["conv"]["bits"] == 8


# ----------------------------------------------------------------------------- structure
def test_qdq_structure_metadata_and_functional(trained, digits):
    path = trained("ResNetTiny").onnx
    model = pir.load(path)
    before = pir.content_hash(model)
    result = quantize(model, QuantConfig(), _calib(digits))
    assert result.modified and result.model is not model
    assert pir.content_hash(model) == before  # functional: input untouched
    q = result.model
    pir.check(q)
    n_layers = 0
    for node in q.graph:
        if node.op_type not in ("Conv", "Gemm"):
            continue
        n_layers += 1
        w, x = node.inputs[1], node.inputs[0]
        dq = w.producer()
        assert dq.op_type == "DequantizeLinear" and dq.metadata_props[BITS_KEY] == "8"
        qw = dq.inputs[0].const_value.numpy()
        assert qw.dtype == np.int8 and np.abs(qw.astype(int)).max() <= 127
        assert dq.attributes["axis"].as_int() == 0
        assert np.all(dq.inputs[2].const_value.numpy() == 0)
        assert dq.inputs[1].const_value.numpy().shape == (qw.shape[0],)
        assert _producer_op(x) == "DequantizeLinear"
        assert x.producer().inputs[0].producer().op_type == "QuantizeLinear"
        assert x.producer().inputs[2].const_value.dtype == ir.DataType.UINT8
        # the bias: int32 in accumulator units, DequantizeLinear scale x_scale * w_scale, no zero point
        bdq = node.inputs[2].producer()
        assert bdq.op_type == "DequantizeLinear" and len(bdq.inputs) == 2
        assert bdq.inputs[0].const_value.dtype == ir.DataType.INT32
        sx = np.float32(x.producer().inputs[1].const_value.numpy())
        np.testing.assert_array_equal(bdq.inputs[1].const_value.numpy(),
                                      sx * dq.inputs[1].const_value.numpy())
    assert n_layers == len(weighted_layers(model))
    assert not any(v.const_value is not None and v.const_value.dtype == ir.DataType.FLOAT
                   and v.const_value.size > 64 for v in q.graph.initializers.values())
    rep = quant_report(q)
    assert rep["act_bits"] == 8 and len(rep["layers"]) == n_layers
    assert {r["bias"] for r in rep["layers"].values()} == {"int32"}
    assert rep["bias_bytes"] == sum(r["bias_bytes"] for r in rep["layers"].values()) > 0
    assert rep["stored_bytes"] == rep["packed_bytes"] + rep["bias_bytes"]
    assert rep["packed_bytes"] < rep["fp32_bytes"] / 3.5
    assert len(pir.to_proto(q).SerializeToString()) < len(path.read_bytes()) / 2.5
    out = run_ort(q, {"input": digits.x_val[:8]})[0]
    assert out.shape == (8, 10)


def test_mixed_precision_per_layer_bits(trained, digits):
    model = pir.load(trained("PlainCNN").onnx)
    names = [x.name for x in weighted_layers(model)]
    cfg = QuantConfig(bits=8, act_bits=4, layers=((names[0], 2), (names[1], 4)))
    q = quantize(model, cfg, _calib(digits)).model
    pir.check(q)
    want = {names[0]: 2, names[1]: 4}
    for node in q.graph:
        if node.op_type in ("Conv", "Gemm"):
            dq = node.inputs[1].producer()
            bits = want.get(node.name, 8)
            assert dq.metadata_props[BITS_KEY] == str(bits)
            qmax = 2 ** (bits - 1) - 1
            qw = dq.inputs[0].const_value.numpy().astype(int)
            assert np.abs(qw).max() == qmax
            act = node.inputs[0].producer()
            assert act.metadata_props[BITS_KEY] == "4"
            assert 0 <= int(act.inputs[2].const_value.numpy()) <= 15
    rep = quant_report(q)
    assert {k: v["bits"] for k, v in rep["layers"].items()} == {n: want.get(n, 8) for n in names}


def test_codebook_weights_have_two_pow_bits_values(trained, digits):
    model = pir.load(trained("SENetTiny").onnx)
    q = quantize(model, QuantConfig(bits=3, codebook=True), _calib(digits)).model
    pir.check(q)
    rep = quant_report(q)
    for node in q.graph:
        if node.op_type in ("Conv", "Gemm") and node.name in rep["layers"]:
            g = node.inputs[1].producer()
            assert g.op_type == "Gather" and g.metadata_props[BITS_KEY] == "3"
            cb = g.inputs[0].const_value.numpy()
            idx = g.inputs[1].producer().inputs[0].const_value.numpy()
            assert cb.shape == (8,) and idx.dtype == np.uint8 and idx.max() < 8
            n = rep["layers"][node.name]["numel"]
            assert rep["layers"][node.name]["packed_bytes"] == codebook_bytes(n, 3)
    assert run_ort(q, {"input": digits.x_val[:4]})[0].shape == (4, 10)


@pytest.mark.parametrize("name", FIXTURES)
def test_int8_top1_drop_at_most_3_images_of_540(trained, digits, name):
    path = trained(name).onnx
    model = pir.load(path)
    q = quantize(model, QuantConfig(bits=8, act_bits=8), _calib(digits)).model
    pir.check(q)
    base, quant = _top1(model, digits), _top1(q, digits)
    assert base > 0.5  # the fixture really learned digits (chance is 0.1)
    # at most 3 of the 540 validation images net (0.56 points): one image is 0.19 points, and
    # a freshly trained PlainCNN lost 2 (0.37) where the cached one lost 1 -- a bound of
    # 0.3 points failed on which training run the fixture cache happened to hold
    assert len(digits.y_val) * (base - quant) <= 3.0 + 1e-9, \
        f"{name}: fp32 {base:.4f} -> int8 {quant:.4f} on {len(digits.y_val)} images"


def test_calibration_methods_all_keep_accuracy(trained, digits):
    model = pir.load(trained("MobileNetV2Tiny").onnx)
    base = _top1(model, digits)
    for method in ("percentile", "mse"):
        q = quantize(model, QuantConfig(calib=method), _calib(digits)).model
        assert json.loads(q.metadata_props["pfcompile.quant"])["calib"] == method
        assert 100 * (base - _top1(q, digits)) <= 1.0, method


def test_collect_stats_min_max_exact(trained, digits):
    model = pir.load(trained("PlainCNN").onnx)
    st = collect_stats(model, _calib(digits), ["input"])["input"]
    assert st.min == pytest.approx(float(digits.x_calib.min()))
    assert st.max == pytest.approx(float(digits.x_calib.max()))
    np.testing.assert_allclose(st.mean, digits.x_calib.mean(axis=0), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- bad input
def test_bad_configs_are_config_errors(trained, digits):
    model = pir.load(trained("PlainCNN").onnx)
    with pytest.raises(ConfigError, match="bit width must be an integer in 2..8"):
        QuantConfig(bits=9)
    with pytest.raises(ConfigError, match="bits of layer 'x'"):
        QuantConfig(layers=(("x", 1),))
    with pytest.raises(ConfigError, match=r"unknown layer\(s\) \['nope'\]"):
        quantize(model, QuantConfig(layers=(("nope", 4),)), _calib(digits))
    with pytest.raises(ConfigError, match="needs calibration data"):
        quantize(model, QuantConfig(), None)
    with pytest.raises(ConfigError, match="unknown key"):
        QuantConfig.from_json({"bits": 8, "bitz": 4})


def test_bad_calibration_data_is_data_error(trained):
    model = pir.load(trained("PlainCNN").onnx)
    with pytest.raises(DataError, match=r"has shape \(4, 1, 16, 16\), the model expects \(N, 1, 8, 8\)"):
        quantize(model, QuantConfig(), Dataset({"input": np.zeros((4, 1, 16, 16), np.float32)}, None))
    with pytest.raises(DataError, match="no array for model input 'input'"):
        quantize(model, QuantConfig(), Dataset({"x": np.zeros((4, 1, 8, 8), np.float32)}, None))


def test_already_quantized_or_no_layers_is_pass_error(trained, digits):
    model = pir.load(trained("PlainCNN").onnx)
    q = quantize(model, QuantConfig(), _calib(digits)).model
    with pytest.raises(PassError, match="already quantized"):
        quantize(q, QuantConfig(), _calib(digits))
    node = helper.make_node("Relu", ["x"], ["y"])
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    relu = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(PassError, match="no Conv / Gemm / MatMul"):
        quantize(relu, QuantConfig(act_bits=None, bias_correction=False))


def test_cli_quantize_writes_model_and_errors_write_nothing(trained, digits, tmp_path):
    path = trained("PlainCNN").onnx
    runner = CliRunner()
    out = tmp_path / "q.onnx"
    res = runner.invoke(app, ["quantize", str(path), "--data", str(digits.calib_npz), "--bits", "8",
                              "--calib", "mse", "-o", str(out), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["calib"] == "mse"
    assert any(n.op_type == "QuantizeLinear" for n in onnx.load(out).graph.node)

    bad_cfg = tmp_path / "bits.json"
    bad_cfg.write_text(json.dumps({"no/such/layer": 4}))
    bad_npz = tmp_path / "bad.npz"
    np.savez(bad_npz, x=np.zeros((3, 1, 7, 7), np.float32))
    cases = [
        (["--data", str(digits.calib_npz), "--bits", "1"], ConfigError),
        (["--data", str(digits.calib_npz), "--config", str(bad_cfg)], ConfigError),
        (["--data", str(bad_npz)], DataError),
        ([], ConfigError),  # activations need calibration data
    ]
    for i, (args, err) in enumerate(cases):
        target = tmp_path / f"bad{i}.onnx"
        res = runner.invoke(app, ["quantize", str(path), *args, "-o", str(target)])
        assert isinstance(res.exception, err), (args, res.exception)
        assert not target.exists()


def _assert_qdq_close(got: np.ndarray, want: np.ndarray) -> None:
    """Two executions of one QDQ graph: float summation order can put an activation on the
    other side of a rounding tie, which moves the logits by a few quantisation steps (it
    depends on the trained weights, so a tight float tolerance is flaky). Most samples
    agree exactly; every element agrees within 2 % of the output range (measure's rule
    for quantized models); the predicted class is the same."""
    rng = float(np.max(np.abs(want)))
    np.testing.assert_allclose(got, want, rtol=0, atol=0.02 * rng)
    exact = np.all(np.abs(got - want) <= 1e-4 * max(rng, 1.0), axis=-1)
    if exact.size >= 4:
        assert exact.mean() >= 0.5, f"only {exact.mean():.0%} of samples agree exactly"
    assert np.array_equal(got.argmax(-1), want.argmax(-1))


def test_ort_runs_the_graph_as_written(trained, digits):
    """Our onnxruntime sessions disable WeightBiasQuantization: optimised run == unoptimised run."""
    import onnxruntime as ort

    model = pir.load(trained("ResNetTiny").onnx)
    q = pir.to_proto(quantize(model, QuantConfig(bits=3, codebook=True), _calib(digits)).model)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    plain = ort.InferenceSession(q.SerializeToString(), so, providers=["CPUExecutionProvider"])
    x = digits.x_val[:8]
    ref = np.concatenate([plain.run(None, {"input": x[i:i + 1]})[0] for i in range(len(x))])
    _assert_qdq_close(run_ort(q, {"input": x})[0], ref)


def test_sparsify_then_quantize_keeps_the_zeros(trained, digits):
    from pfcompile.passes.sparsify import SparsifyConfig, sparsify

    model = pir.load(trained("SENetTiny").onnx)
    sparse = sparsify(model, SparsifyConfig(sparsity=0.5, block="1x4")).model
    zeros = {x.name: x.weight_array == 0 for x in weighted_layers(sparse)}
    total = sum(z.size for z in zeros.values())
    assert sum(int(z.sum()) for z in zeros.values()) / total == pytest.approx(0.5, abs=0.05)
    q = quantize(sparse, QuantConfig(), _calib(digits)).model
    checked = 0
    for node in q.graph:
        if node.name in zeros:
            qw = node.inputs[1].producer().inputs[0].const_value.numpy()
            assert np.all(qw[zeros[node.name]] == 0)
            checked += 1
    assert checked == len(zeros)


@pytest.mark.slow
def test_tvm_imports_our_qdq_and_codebook_models_like_onnxruntime(trained, digits):
    """The QDQ contract as TVM's ONNX importer reads it: same outputs as onnxruntime."""
    import tvm
    from tvm.relax.frontend.onnx import from_onnx

    model = pir.load(trained("ResNetTiny").onnx)
    x = digits.x_val[:1]
    for cfg in (QuantConfig(), QuantConfig(bits=4, act_bits=4), QuantConfig(bits=3, codebook=True)):
        q = pir.to_proto(quantize(model, cfg, _calib(digits)).model)
        ex = tvm.compile(from_onnx(q, keep_params_in_input=False),
                         target=tvm.target.Target({"kind": "llvm", "mcpu": "x86-64-v3"}))
        out = tvm.relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x, tvm.cpu())).numpy()
        _assert_qdq_close(out, run_ort(q, {"input": x})[0])
