"""ONNX -> torch converter and write-back: outputs equal onnxruntime, a round
trip without training reproduces the student (including the pruned, quantized,
sparsified and codebook graphs of pfcompile's passes), QDQ is fake-quant with an STE."""

from __future__ import annotations

import functools

import numpy as np
import onnx
import onnx_ir as ir
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from pfcompile import zoo
from pfcompile.data import Dataset
from pfcompile.errors import ModelError, UnsupportedOpError
from pfcompile.finetune import export_onnx, onnx_to_torch
from pfcompile.measure import quantized_tolerance
from pfcompile.passes.prune import prune
from pfcompile.passes.prune_config import PruneConfig
from pfcompile.passes.quantize import QuantConfig, quantize
from pfcompile.passes.sparsify import SparsifyConfig, sparsify
from pfcompile.paths import demo_paths
from pfcompile.reference import reference_session

DEMO, DEMO_VAL, DEMO_CALIB = demo_paths()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The machine is shared: a single torch thread is faster than two contended ones."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _ort(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return _session(model).run(None, feeds)


def _session(model: onnx.ModelProto):
    return reference_session(model, threads=1)


def _ort_per_sample(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    name, sess = model.graph.input[0].name, _session(model)
    return np.concatenate([sess.run(None, {name: x[i:i + 1]})[0] for i in range(len(x))])


def _torch(model: onnx.ModelProto, *xs: np.ndarray):
    mod = onnx_to_torch(model)
    with torch.no_grad():
        out = mod(*[torch.from_numpy(x) for x in xs])
    return [o.numpy() for o in (out if isinstance(out, tuple) else (out,))]


def _structure(m: onnx.ModelProto):
    g = m.graph
    return ([(n.name, n.op_type, list(n.input), list(n.output), [a.SerializeToString() for a in n.attribute])
             for n in g.node],
            [(i.name, i.type.SerializeToString()) for i in g.input],
            [(o.name, o.type.SerializeToString()) for o in g.output],
            sorted((t.name, t.data_type, tuple(t.dims)) for t in g.initializer))


def test_demo_round_trip_without_training_equals_student():
    student = onnx.load(DEMO)
    x = np.load(DEMO_VAL)["x"][:8]
    mod = onnx_to_torch(student)
    assert len(mod.key_of) == 24  # every Conv/Gemm weight and bias is a trainable parameter
    out = export_onnx(mod, student)
    assert _structure(out) == _structure(student)
    assert out.ir_version == student.ir_version
    assert {(o.domain, o.version) for o in out.opset_import} == {(o.domain, o.version) for o in student.opset_import}
    onnx.checker.check_model(out, full_check=True)
    ref = _ort_per_sample(student, x)
    np.testing.assert_allclose(_ort_per_sample(out, x), ref, atol=1e-5, rtol=0)
    # the torch module runs the whole batch at once (the graph was exported with batch 1)
    np.testing.assert_allclose(_torch(student, x)[0], ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["PlainCNN", "ResNetTiny", "MobileNetV2Tiny", "DenseNetTiny",
                                  "SENetTiny", "FlattenGemmNet", "GroupedConvNet"])
def test_zoo_models_match_onnxruntime(tmp_path, name):
    torch.manual_seed(0)
    net = getattr(zoo, name)()
    for m in net.modules():  # non-trivial BN statistics so folding matters
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    model = onnx.load(zoo.export_onnx(net, tmp_path / f"{name}.onnx", (1, 1, 8, 8)))
    x = np.random.default_rng(0).standard_normal((5, 1, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(_torch(model, x)[0], _ort_per_sample(model, x), atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- single ops vs onnxruntime
def _single(op, inputs, inits=(), attrs=None, n_out=1, opset=17, out_shapes=None):
    """A one-node model: ``inputs`` are (name, array) fed at run time, ``inits`` initializers."""
    ins = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
           for n, a in inputs]
    outs = [helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, None) for i in range(n_out)]
    node = helper.make_node(op, [n for n, _ in inputs] + [n for n, _ in inits],
                            [f"y{i}" for i in range(n_out)], name=f"the_{op.lower()}", **(attrs or {}))
    g = helper.make_graph([node], "g", ins, outs, [numpy_helper.from_array(a, n) for n, a in inits])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


_R = np.random.default_rng(1)
_X = _R.standard_normal((2, 3, 6, 6)).astype(np.float32)
_I64 = np.int64

CASES = {
    "conv_asym_pads_groups": ("Conv", [("x", _X)], [("w", _R.standard_normal((6, 1, 3, 3)).astype(np.float32)),
                                                     ("b", _R.standard_normal(6).astype(np.float32))],
                              {"group": 3, "pads": [0, 1, 1, 2], "strides": [2, 1]}),
    "conv_same_upper": ("Conv", [("x", _X)], [("w", _R.standard_normal((4, 3, 2, 2)).astype(np.float32))],
                        {"auto_pad": "SAME_UPPER"}),
    "matmul": ("MatMul", [("x", _X)], [("w", _R.standard_normal((6, 4)).astype(np.float32))], {}),
    "gemm_trans": ("Gemm", [("x", _R.standard_normal((3, 5)).astype(np.float32))],
                   [("w", _R.standard_normal((4, 5)).astype(np.float32)), ("c", _R.standard_normal(4).astype(np.float32))],
                   {"transB": 1, "alpha": 0.5, "beta": 2.0}),
    "sub": ("Sub", [("x", _X)], [("c", _R.standard_normal((3, 1, 1)).astype(np.float32))], {}),
    "div": ("Div", [("x", _X)], [("c", (_R.random((1, 6)) + 0.5).astype(np.float32))], {}),
    "clip": ("Clip", [("x", _X)], [("lo", np.array(-0.5, np.float32)), ("hi", np.array(0.7, np.float32))], {}),
    "sigmoid": ("Sigmoid", [("x", _X)], [], {}),
    "hardsigmoid": ("HardSigmoid", [("x", _X)], [], {"alpha": 0.3, "beta": 0.4}),
    "hardswish": ("HardSwish", [("x", 3 * _X)], [], {}),
    "batchnorm": ("BatchNormalization", [("x", _X)],
                  [("s", _R.random(3).astype(np.float32)), ("b", _R.random(3).astype(np.float32)),
                   ("m", _R.random(3).astype(np.float32)), ("v", (_R.random(3) + 0.5).astype(np.float32))],
                  {"epsilon": 1e-3}),
    "maxpool_asym_ceil": ("MaxPool", [("x", _X)], [], {"kernel_shape": [3, 3], "strides": [2, 2],
                                                        "pads": [0, 0, 1, 1], "ceil_mode": 1}),
    "avgpool_pad_exclude": ("AveragePool", [("x", _X)], [], {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}),
    "avgpool_pad_include": ("AveragePool", [("x", _X)], [], {"kernel_shape": [2, 2], "strides": [2, 2],
                                                              "pads": [1, 1, 1, 1], "count_include_pad": 1}),
    "gap": ("GlobalAveragePool", [("x", _X)], [], {}),
    "flatten": ("Flatten", [("x", _X)], [], {"axis": 2}),
    "reshape": ("Reshape", [("x", _X)], [("s", np.array([0, -1, 4], _I64))], {}),
    "concat": ("Concat", [("x", _X)], [("c", _R.standard_normal((2, 1, 6, 6)).astype(np.float32))], {"axis": 1}),
    "split": ("Split", [("x", _X)], [("s", np.array([2, 4], _I64))], {"axis": 3}, 2),
    "slice_neg_step": ("Slice", [("x", _X)], [("st", np.array([-1, 1], _I64)), ("en", np.array([-100, 5], _I64)),
                                              ("ax", np.array([3, 1], _I64)), ("sp", np.array([-2, 1], _I64))], {}),
    "slice_big_end": ("Slice", [("x", _X)], [("st", np.array([1], _I64)), ("en", np.array([2**63 - 1], _I64)),
                                             ("ax", np.array([2], _I64))], {}),
    "pad_reflect": ("Pad", [("x", _X)], [("p", np.array([0, 0, 1, 2, 0, 0, 2, 1], _I64))], {"mode": "reflect"}),
    "pad_const": ("Pad", [("x", _X)], [("p", np.array([0, 1, 0, 1, 0, 0, 2, 0], _I64)),
                                       ("v", np.array(0.25, np.float32))], {}),
    "resize_nearest": ("Resize", [("x", _X)], [("roi", np.array([], np.float32)),
                                               ("sc", np.array([1, 1, 2, 2], np.float32))],
                       {"mode": "nearest", "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"}),
    "resize_linear": ("Resize", [("x", _X)], [("roi", np.array([], np.float32)), ("sc", np.array([], np.float32)),
                                              ("sz", np.array([2, 3, 9, 11], _I64))], {"mode": "linear"}),
    "identity": ("Identity", [("x", _X)], [], {}),
    "dropout": ("Dropout", [("x", _X)], [], {}),
    "gather": ("Gather", [("x", _X)], [("i", np.array([[2, -1], [0, 1]], _I64))], {"axis": 2}),
    "unsqueeze": ("Unsqueeze", [("x", _X)], [("a", np.array([0, -1], _I64))], {}),
    "squeeze": ("Squeeze", [("x", _X[:, :1])], [("a", np.array([1], _I64))], {}),
    "transpose": ("Transpose", [("x", _X)], [], {"perm": [0, 2, 3, 1]}),
    "softmax": ("Softmax", [("x", _X)], [], {"axis": 1}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_single_op_matches_onnxruntime(case):
    op, inputs, inits, attrs, *n_out = CASES[case]
    model = _single(op, inputs, inits, attrs, n_out[0] if n_out else 1)
    ref = _ort(model, dict(inputs))
    got = _torch(model, *[a for _, a in inputs])
    assert len(got) == len(ref)
    for g, r in zip(got, ref):
        assert g.shape == r.shape
        np.testing.assert_allclose(g, r, atol=1e-5, rtol=1e-5)


def test_shape_gather_unsqueeze_concat_reshape_chain():
    """The exporter's dynamic flatten: Shape -> Gather -> Unsqueeze -> Concat -> Reshape,
    with Constant nodes; run at a batch other than the traced one."""
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Constant", [], ["i0"], value=numpy_helper.from_array(np.array(0, _I64))),
        helper.make_node("Gather", ["s", "i0"], ["n"], axis=0),
        helper.make_node("Constant", [], ["ax"], value_ints=[0]),
        helper.make_node("Unsqueeze", ["n", "ax"], ["n1"]),
        helper.make_node("Constant", [], ["m1"], value_ints=[-1]),
        helper.make_node("Concat", ["n1", "m1"], ["shape"], axis=0),
        helper.make_node("Reshape", ["x", "shape"], ["y"]),
    ]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 6, 6])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    (got,) = _torch(model, _X)
    np.testing.assert_array_equal(got, _ort(model, {"x": _X})[0])


def test_unsupported_op_names_the_node():
    model = _single("Einsum", [("x", _R.standard_normal((2, 3)).astype(np.float32))], [], {"equation": "ij->ji"})
    with pytest.raises(UnsupportedOpError) as ei:
        onnx_to_torch(model)
    assert ei.value.node == "the_einsum" and ei.value.op_type == "Einsum"
    assert "the_einsum" in str(ei.value) and "Einsum" in str(ei.value)


def test_unsupported_attribute_is_a_clear_error():
    model = _single("Resize", [("x", _X)], [("roi", np.array([], np.float32)), ("sc", np.array([1, 1, 2, 2], np.float32))],
                    {"mode": "cubic"})
    with pytest.raises(UnsupportedOpError, match="the_resize.*cubic"):
        onnx_to_torch(model)


# ---------------------------------------------------------------- graphs from pfcompile's passes
def _calib() -> Dataset:
    return Dataset({"input": np.load(DEMO_CALIB)["x"][:32]}, None, "demo_calib")


def _compressed(kind: str) -> onnx.ModelProto:
    """demo.onnx through the real passes (a fresh copy each call; each pass runs once)."""
    return onnx.load_from_string(_compressed_bytes(kind))


@functools.cache
def _compressed_bytes(kind: str) -> bytes:
    return _run_passes(kind).SerializeToString()


def _run_passes(kind: str) -> onnx.ModelProto:
    demo = onnx.load(DEMO)
    if kind == "pruned":
        return ir.to_proto(prune(demo, PruneConfig(ratio=0.5, criterion="l1")).model)
    if kind == "q8":
        return ir.to_proto(quantize(demo, QuantConfig(bits=8, act_bits=8), _calib()).model)
    if kind == "q4":
        return ir.to_proto(quantize(demo, QuantConfig(bits=4, act_bits=4), _calib()).model)
    if kind == "sparse":
        return ir.to_proto(sparsify(demo, SparsifyConfig(sparsity=0.5, block="1x4")).model)
    if kind == "sparse_q4":
        sparse = sparsify(demo, SparsifyConfig(sparsity=0.5)).model
        return ir.to_proto(quantize(sparse, QuantConfig(bits=4, act_bits=4), _calib()).model)
    if kind == "codebook":
        return ir.to_proto(quantize(demo, QuantConfig(bits=3, act_bits=None, codebook=True), _calib()).model)
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["pruned", "q8", "q4", "sparse", "sparse_q4", "codebook"])
def test_round_trip_of_pass_outputs_without_training(kind):
    """Converter == onnxruntime, and export without training == the student: same graph,
    bit-identical initializers, onnxruntime outputs within 1e-5.

    The converter's float32 convs sum in torch's order, onnxruntime's in MLAS's: where a value
    lands within float rounding of a QuantizeLinear tie the two round it apart by one step, and
    such a flip spreads through the later layers (q8: one element of the second conv on sample
    0, ~0.2 % of the logits' range at the output). So QDQ models are held to the tolerance
    every output check uses (:func:`pfcompile.measure.quantized_tolerance`) and the same
    classes; float ones to 1e-5."""
    student = _compressed(kind)
    x = np.load(DEMO_VAL)["x"][:6]
    ref = _ort_per_sample(student, x)
    got = _torch(student, x)[0]
    atol = quantized_tolerance(student, {"y": ref}) or 1e-5
    assert atol < 0.05 * np.abs(ref).max()
    np.testing.assert_allclose(got, ref, atol=atol, rtol=0)
    assert np.array_equal(got.argmax(1), ref.argmax(1))
    mod = onnx_to_torch(student)
    out = export_onnx(mod, student)
    assert _structure(out) == _structure(student)
    assert [(p.key, p.value) for p in out.metadata_props] == [(p.key, p.value) for p in student.metadata_props]
    for t in student.graph.initializer:
        o = next(u for u in out.graph.initializer if u.name == t.name)
        np.testing.assert_array_equal(numpy_helper.to_array(o), numpy_helper.to_array(t))
    np.testing.assert_allclose(_ort_per_sample(out, x), ref, atol=1e-5, rtol=0)
    weighted = sum(n.op_type in ("Conv", "Gemm") for n in student.graph.node)
    if kind in ("q8", "q4", "sparse_q4"):
        bits = 8 if kind == "q8" else 4
        qmax = (1 << (bits - 1)) - 1
        # the range comes from pfcompile.bits: the pass's symmetric [-qmax, qmax]
        weights = [w for w in mod.quant_weights.values() if w.elem_type != TensorProto.INT32]
        assert {(w.qmin, w.qmax) for w in weights} == {(-qmax, qmax)}
        assert len(weights) == weighted
        # the int32 biases (accumulator units) are trained too, over the int32 range
        biases = [w for w in mod.quant_weights.values() if w.elem_type == TensorProto.INT32]
        assert len(biases) == weighted and {w.qmax for w in biases} == {2**31 - 128}
    if kind == "codebook":  # centroids are parameters, indices are not
        assert sum(n.endswith("_codebook") for n in mod.key_of) == weighted
        assert not any(n.endswith("_idx") for n in mod.key_of)
    if kind.startswith("sparse"):
        assert mod.keep_zeros and len(mod._mask_key) == weighted


def test_4bit_activations_saturate_at_the_uint8_container_like_onnxruntime():
    """The pass's 4-bit activations map the calibrated range onto 16 levels of a uint8
    container; inputs beyond that range use higher levels (up to 255), in onnxruntime
    and in the converter alike."""
    q4 = _compressed("q4")
    qs = [n for n in q4.graph.node if n.op_type == "QuantizeLinear"]
    assert qs and all({p.key: p.value for p in n.metadata_props}["pfcompile.bits"] == "4" for n in qs)
    x = 4.0 * np.load(DEMO_VAL)["x"][:4]  # far outside the calibrated range
    mod = onnx_to_torch(q4)
    with torch.no_grad():
        env = mod.run_all(torch.from_numpy(x))
    codes = env[qs[0].output[0]]
    assert codes.max() > 15 and codes.max() <= 255
    np.testing.assert_allclose(_torch(q4, x)[0], _ort_per_sample(q4, x), atol=1e-4, rtol=0)


def test_bits_metadata_that_does_not_fit_the_codes_is_a_clear_error():
    q4 = _compressed("q4")
    dq = next(n for n in q4.graph.node if n.op_type == "DequantizeLinear" and n.input[0].endswith("_q"))
    next(p for p in dq.metadata_props if p.key == "pfcompile.bits").value = "2"
    with pytest.raises(ModelError, match=rf"{dq.name}.*pfcompile.bits=2.*\[-1, 1\]"):
        onnx_to_torch(q4)


def test_codebook_training_moves_centroids_and_keeps_indices():
    cb = _compressed("codebook")
    mod = onnx_to_torch(cb)
    x = torch.from_numpy(np.load(DEMO_VAL)["x"][:16])
    opt = torch.optim.SGD(mod.parameters(), lr=1e-2)
    mod(x).square().mean().backward()
    opt.step()
    out = export_onnx(mod, cb)
    before = {t.name: numpy_helper.to_array(t) for t in cb.graph.initializer}
    after = {t.name: numpy_helper.to_array(t) for t in out.graph.initializer}
    books = [n for n in before if n.endswith("_codebook")]
    assert books and all(not np.array_equal(after[n], before[n]) for n in books)
    assert all(np.array_equal(after[n], before[n]) for n in before if n.endswith("_idx"))
    with torch.no_grad():
        np.testing.assert_allclose(_ort_per_sample(out, x.numpy()[:4]), mod(x[:4]).numpy(), atol=1e-5)


@pytest.mark.parametrize("kind", ["sparse", "sparse_q4"])
def test_training_a_sparsified_model_keeps_its_zeros(kind):
    student = _compressed(kind)
    mod = onnx_to_torch(student)
    x = torch.from_numpy(np.load(DEMO_VAL)["x"][:16])
    opt = torch.optim.SGD(mod.parameters(), lr=1e-3)
    for _ in range(2):
        opt.zero_grad()
        mod(x).square().mean().backward()
        opt.step()
    out = export_onnx(mod, student)
    before = {t.name: numpy_helper.to_array(t) for t in student.graph.initializer}
    after = {t.name: numpy_helper.to_array(t) for t in out.graph.initializer}
    weights = [n for n in before if n.endswith("_q")] if kind == "sparse_q4" else \
        [n for n in before if before[n].ndim in (2, 4)]
    assert weights
    changed = 0
    for n in weights:
        zero = before[n] == 0
        assert zero.mean() > 0.3 and np.all(after[n][zero] == 0), n
        changed += int(not np.array_equal(after[n], before[n]))
    # the non-zero weights did train (a few 4-bit codes move after two small steps)
    assert changed == len(weights) if kind == "sparse" else changed > 0
    with torch.no_grad():
        np.testing.assert_allclose(_ort_per_sample(out, x.numpy()[:4]), mod(x[:4]).numpy(), atol=1e-4)


def test_int4_typed_weights_opset21_round_trip():
    w = _R.standard_normal((4, 3, 3, 3)).astype(np.float32)
    scale = (np.abs(w).max(axis=(1, 2, 3)) / 7).astype(np.float32)
    q = np.clip(np.round(w / scale[:, None, None, None]), -8, 7).astype(np.int8)
    qt = helper.make_tensor("wq", TensorProto.INT4, q.shape, q.reshape(-1).tolist())
    zp = helper.make_tensor("wz", TensorProto.INT4, [4], [0, 0, 0, 0])
    nodes = [helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["w"], axis=0, name="dq"),
             helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1], name="conv")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 6, 6])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          [qt, numpy_helper.from_array(scale, "ws"), zp])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])
    mod = onnx_to_torch(model)
    assert [(v.qmin, v.qmax, v.axis) for v in mod.quant_weights.values()] == [(-8, 7, 0)]
    ref = _ort(model, {"x": _X})[0]
    with torch.no_grad():
        np.testing.assert_allclose(mod(torch.from_numpy(_X)).numpy(), ref, atol=1e-5, rtol=0)
    with torch.no_grad():  # move the shadow weight by ~1 step on one channel: the export follows
        mod.params[mod.quant_weights["wq"].key][0] += torch.from_numpy(scale[0:1]).reshape(1, 1, 1) * 0.9
    out = export_onnx(mod, model)
    assert next(t for t in out.graph.initializer if t.name == "wq").data_type == TensorProto.INT4
    new = numpy_helper.to_array(next(t for t in out.graph.initializer if t.name == "wq")).astype(int)
    assert np.array_equal(new[1:], q[1:]) and (new[0] != q[0]).any()
    assert new.min() >= -8 and new.max() <= 7
    with torch.no_grad():
        np.testing.assert_allclose(mod(torch.from_numpy(_X)).numpy(), _ort(out, {"x": _X})[0], atol=1e-5)


def test_straight_through_estimator_reaches_quantized_weights():
    q = _compressed("q4")
    mod = onnx_to_torch(q)
    out = mod(torch.from_numpy(_calib().inputs["input"][:8]))
    out.square().mean().backward()
    grads = [mod.params[w.key].grad for w in mod.quant_weights.values()]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)


def test_training_step_changes_exported_initializers_only():
    student = onnx.load(DEMO)
    mod = onnx_to_torch(student)
    opt = torch.optim.SGD(mod.parameters(), lr=1e-3)
    x = torch.from_numpy(np.load(DEMO_VAL)["x"][:16])
    mod(x).square().mean().backward()
    opt.step()
    out = export_onnx(mod, student)
    assert _structure(out) == _structure(student)
    before = {t.name: numpy_helper.to_array(t) for t in student.graph.initializer}
    changed = [t.name for t in out.graph.initializer
               if not np.array_equal(numpy_helper.to_array(t), before[t.name])]
    assert len(changed) == 24
    with torch.no_grad():
        np.testing.assert_allclose(_ort_per_sample(out, x.numpy()[:4]), mod(x[:4]).numpy(), atol=1e-5)


def test_float_weight_through_quantizelinear_is_trained_and_exported_as_float():
    """Weight QDQ on a float initializer (W -> Q -> DQ -> Conv): W is the parameter, the
    Q node re-quantizes it every step, and the export writes the trained float W."""
    w = _R.standard_normal((4, 3, 3, 3)).astype(np.float32)
    scale = (np.abs(w).max(axis=(1, 2, 3)) / 127).astype(np.float32)
    nodes = [helper.make_node("QuantizeLinear", ["w", "ws", "wz"], ["wq"], axis=0, name="q"),
             helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wd"], axis=0, name="dq"),
             helper.make_node("Conv", ["x", "wd"], ["y"], name="conv")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 6, 6])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(w, "w"), numpy_helper.from_array(scale, "ws"),
                           numpy_helper.from_array(np.zeros(4, np.int8), "wz")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    mod = onnx_to_torch(model)
    assert list(mod.key_of) == ["w"] and not mod.quant_weights
    np.testing.assert_allclose(_torch(model, _X)[0], _ort(model, {"x": _X})[0], atol=1e-5)
    out = mod(torch.from_numpy(_X))
    out.sum().backward()
    assert mod.params[mod.key_of["w"]].grad.abs().sum() > 0
    with torch.no_grad():
        mod.params[mod.key_of["w"]].mul_(0.5)
    new = export_onnx(mod, model)
    np.testing.assert_allclose(numpy_helper.to_array(new.graph.initializer[0]), 0.5 * w, rtol=1e-6)
    with torch.no_grad():
        np.testing.assert_allclose(_ort(new, {"x": _X})[0], mod(torch.from_numpy(_X)).numpy(), atol=1e-5)
