"""A QDQ chain with *float* biases (what pfcompile's own quantize pass wrote before
2026-12-05, and other tools may write) runs bit-exact against the exact reference on every
x86 integer path; so does the same chain with int32 biases in accumulator units (what the
quantize pass writes now), whose requantisation offsets are then the zero points alone.

The pattern is a MobileNetV2 block: 3x3 conv + ReLU, depthwise 3x3 + ReLU, 1x1 projection
and a residual Add, each requantised to uint8. Rounding a float bias into accumulator units
(what the kernels did before ``requant.requant_offset``) moved outputs by up to half an
accumulator unit and flipped about 0.5 % of each layer's elements here; through a whole
MobileNetV2 that grew to 3-8 % of the logits' range. Now every quantized value equals the
reference, so the float outputs (``DequantizeLinear`` of uint8) are identical.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import tvm
from onnx import TensorProto, helper, numpy_helper

from pfcompile.compiler import build
from pfcompile.reference import reference_outputs
from pfcompile.targets import host_arch
from tests.device_helpers import x86_target

X86 = pytest.mark.skipif(host_arch() != "x86_64", reason="x86-64 integer kernels need an x86-64 CPU")

C, HW = 16, 10


def _conv_float(x: np.ndarray, w: np.ndarray, b: np.ndarray, groups: int) -> np.ndarray:
    """Float conv (stride 1, 'same' padding) for picking the output scales."""
    k = w.shape[2]
    p = k // 2
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    o, icg = w.shape[:2]
    y = np.zeros((1, o, HW, HW)) + b[None, :, None, None]
    for oc in range(o):
        g = oc // (o // groups)
        for i in range(k):
            for j in range(k):
                y[0, oc] += np.einsum("chw,c->hw", xp[0, g * icg:(g + 1) * icg, i:i + HW, j:j + HW], w[oc, :, i, j])
    return y


def block_model(seed: int = 0) -> onnx.ModelProto:
    """x -> Q -> [conv3x3+ReLU -> Q] -> [dw3x3+ReLU -> Q] -> [1x1 -> Q] -> Add(x) -> Q -> DQ;
    per-channel int8 weights, float32 biases of several accumulator units with fractions."""
    rng = np.random.default_rng(seed)
    inits, nodes = [], []

    def const(name, arr):
        inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    def q_dq(src: str, y: np.ndarray, relu: bool) -> tuple[str, np.ndarray]:
        lo, hi = (0.0, float(y.max())) if relu else (float(y.min()), float(y.max()))
        s = np.float32((hi - lo) / 255.0)
        z = np.uint8(np.clip(np.rint(-lo / s), 0, 255))
        const(f"{src}_s", s), const(f"{src}_z", z)
        nodes.append(helper.make_node("QuantizeLinear", [src, f"{src}_s", f"{src}_z"], [f"{src}_q"]))
        nodes.append(helper.make_node("DequantizeLinear", [f"{src}_q", f"{src}_s", f"{src}_z"], [f"{src}_d"]))
        yq = (np.clip(np.rint(y / s) + z, 0, 255) - float(z)) * s
        return f"{src}_d", yq

    def conv(name: str, src: str, xv: np.ndarray, oc: int, k: int, groups: int, relu: bool):
        icg = xv.shape[1] // groups
        wf = rng.normal(0, 1.0 / np.sqrt(icg * k * k), (oc, icg, k, k))
        sw = (np.abs(wf).reshape(oc, -1).max(1) / 127).astype(np.float32)
        wq = np.clip(np.rint(wf / sw[:, None, None, None]), -127, 127).astype(np.int8)
        b = rng.normal(0, 0.3, oc).astype(np.float32)
        const(f"{name}_wq", wq), const(f"{name}_sw", sw), const(f"{name}_zw", np.zeros(oc, np.int8))
        const(f"{name}_b", b)
        nodes.append(helper.make_node("DequantizeLinear", [f"{name}_wq", f"{name}_sw", f"{name}_zw"],
                                      [f"{name}_wd"], axis=0))
        nodes.append(helper.make_node("Conv", [src, f"{name}_wd", f"{name}_b"], [f"{name}_y"],
                                      pads=[k // 2] * 4, group=groups))
        y = _conv_float(xv, wq * sw[:, None, None, None].astype(np.float64), b, groups)
        out = f"{name}_y"
        if relu:
            nodes.append(helper.make_node("Relu", [out], [f"{name}_r"]))
            out, y = f"{name}_r", np.maximum(y, 0)
        return out, y

    x0 = rng.normal(0, 1, (1, C, HW, HW))
    xd, xv = q_dq("x", x0, relu=False)
    a, av = conv("c1", xd, xv, 6 * C // 2, 3, 1, relu=True)
    ad, av = q_dq(a, av, relu=True)
    d, dv = conv("dw", ad, av, 6 * C // 2, 3, 6 * C // 2, relu=True)
    dd, dv = q_dq(d, dv, relu=True)
    p, pv = conv("pj", dd, dv, C, 1, 1, relu=False)
    pd, pv = q_dq(p, pv, relu=False)
    nodes.append(helper.make_node("Add", [pd, xd], ["sum"]))
    sd, _ = q_dq("sum", pv + xv, relu=False)
    nodes.append(helper.make_node("Identity", [sd], ["y"]))
    g = helper.make_graph(nodes, "qdq_block",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, (1, C, HW, HW))],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, (1, C, HW, HW))], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 19)])
    m.ir_version = 9
    onnx.checker.check_model(m)
    return m


def _offsets_rounded_away(m: onnx.ModelProto) -> int:
    """How many of the first conv's biases are not whole accumulator units (``sx * sw``):
    the model must be one where rounding them away would show (it did: 6 of 1,600 outputs
    one step off on input seed 1, on every x86 path)."""
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    sx = float(inits["x_s"])
    sw = inits["c1_sw"].astype(np.float64)
    frac = inits["c1_b"] / (sx * sw)
    return int(np.sum(np.abs(frac - np.rint(frac)) > 0.05))


@X86
@pytest.mark.parametrize("target_name", ["host-avx2", "host-vnni", "host"])
def test_float_bias_chain_is_bit_exact(target_name):
    target = x86_target(target_name)
    m = block_model()
    assert _offsets_rounded_away(m) > 0
    ex, reports = build(m, target)
    ints = [r for r in reports if r.path == "int8"]
    assert len(ints) == 3, reports  # conv, depthwise, projection all run in integers
    vm = tvm.relax.VirtualMachine(ex, tvm.cpu())
    for seed in range(3):
        x = np.random.default_rng(seed + 1).normal(0, 1, (1, C, HW, HW)).astype(np.float32)
        got = vm["main"](tvm.runtime.tensor(x)).numpy()
        ref = reference_outputs(m, {"x": x}, threads=1)["y"]
        np.testing.assert_array_equal(got, ref, err_msg=f"{target_name}, input seed {seed + 1}")


def int32_bias_model(seed: int = 0) -> onnx.ModelProto:
    """:func:`block_model` with each float bias replaced as the quantize pass does:
    ``DequantizeLinear(int32 round(b / (sx * sw)), float32(sx * sw), axis=0)``."""
    m = block_model(seed)
    inits = {t.name: t for t in m.graph.initializer}
    in_scale = {"c1": "x_s", "dw": "c1_r_s", "pj": "dw_r_s"}
    for name, sx_name in in_scale.items():
        b = numpy_helper.to_array(inits[f"{name}_b"])
        scale = np.float32(numpy_helper.to_array(inits[sx_name])) * numpy_helper.to_array(inits[f"{name}_sw"])
        bq = np.round(b.astype(np.float64) / scale.astype(np.float64)).astype(np.int32)
        m.graph.initializer.extend([numpy_helper.from_array(bq, f"{name}_bq"),
                                    numpy_helper.from_array(scale.astype(np.float32), f"{name}_bs")])
        m.graph.node.insert(0, helper.make_node("DequantizeLinear", [f"{name}_bq", f"{name}_bs"],
                                                [f"{name}_bd"], axis=0))
        conv = next(n for n in m.graph.node if n.op_type == "Conv" and n.input[2] == f"{name}_b")
        conv.input[2] = f"{name}_bd"
    onnx.checker.check_model(m)
    return m


def _requant_offsets(model: onnx.ModelProto, target) -> np.ndarray:
    """The requantising kernels' per-channel offsets (the shared float32 array they read)."""
    from pfcompile.compiler import import_onnx
    from pfcompile.quantexec import lower_qdq, onnx_layer_names

    mod, _ = lower_qdq(import_onnx(model), target, onnx_layer_names(model))
    offsets = []
    for block in mod["main"].body.blocks:
        for b in block.bindings:
            v = b.value
            if isinstance(v, tvm.relax.Call) and v.op.name == "relax.call_tir" \
                    and v.ty_args[0].dtype == "uint8" and len(v.args[1].fields) > 4:
                offsets.append(v.args[1].fields[4].value.numpy())
    assert offsets and all(o is offsets[0] or np.array_equal(o, offsets[0]) for o in offsets)
    return offsets[0]


@X86
@pytest.mark.parametrize("target_name", ["host-avx2", "host-vnni"])
def test_int32_bias_chain_is_bit_exact_with_zero_point_offsets(target_name):
    target = x86_target(target_name)
    m = int32_bias_model()
    ex, reports = build(m, target)
    assert [r.path for r in reports] == ["int8"] * 3
    vm = tvm.relax.VirtualMachine(ex, tvm.cpu())
    for seed in range(3):
        x = np.random.default_rng(seed + 1).normal(0, 1, (1, C, HW, HW)).astype(np.float32)
        got = vm["main"](tvm.runtime.tensor(x)).numpy()
        ref = reference_outputs(m, {"x": x}, threads=1)["y"]
        np.testing.assert_array_equal(got, ref, err_msg=f"{target_name}, input seed {seed + 1}")
    # nothing of the bias is left per channel: each layer's offsets are its output zero point
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    zps = {float(inits[n]) for n in ("c1_r_z", "dw_r_z", "pj_y_z")}
    got = _requant_offsets(m, target)
    assert got.dtype == np.float32 and got.size == 6 * C // 2 * 2 + C
    assert set(got.tolist()) <= zps
    # with the float biases the offsets carry their remainders: all but a few distinct
    assert len(set(_requant_offsets(block_model(), target).tolist())) > 2 * C


def test_narrow_biases_get_their_own_array():
    """Layers whose integer biases need fewer bits share a second set of arrays where that
    saves ``SPLIT_MIN_BYTES`` (one array stores every value at its widest one's width)."""
    from pfcompile.quantexec.lower import SPLIT_MIN_BYTES, _narrow_biases

    class Plan:
        pass

    rng = np.random.default_rng(0)
    wide, narrow = [Plan() for _ in range(2)], [Plan() for _ in range(3)]
    totals = {id(p): rng.integers(-2**19, 2**19, 1000) for p in wide}     # 20 bits
    totals.update({id(p): rng.integers(-2**13, 2**13, 1000) for p in narrow})  # 14 bits
    assert 3000 * 6 // 8 >= SPLIT_MIN_BYTES
    assert _narrow_biases(wide + narrow, totals) == {id(p) for p in narrow}
    few = {k: v[:300] for k, v in totals.items()}   # 900 * 6 bits: less than a decoder
    assert _narrow_biases(wide + narrow, few) == set()
    assert _narrow_biases(narrow, totals) == set()


@X86
def test_split_bias_arrays_are_bit_exact(monkeypatch):
    """The block with its narrow-bias layers forced into their own arrays: the requantising
    kernels read two sets of arrays, and the outputs still equal the reference."""
    from pfcompile.compiler import import_onnx
    from pfcompile.quantexec import lower as lower_mod
    from pfcompile.quantexec import lower_qdq, onnx_layer_names

    monkeypatch.setattr(lower_mod, "SPLIT_MIN_BYTES", 1)
    target = x86_target("host-vnni")
    m = int32_bias_model()
    mod, _ = lower_qdq(import_onnx(m), target, onnx_layer_names(m))
    biases = set()
    for block in mod["main"].body.blocks:
        for b in block.bindings:
            v = b.value
            if isinstance(v, tvm.relax.Call) and v.op.name == "relax.call_tir" \
                    and v.ty_args[0].dtype == "uint8" and len(v.args[1].fields) > 4:
                biases.add(v.args[1].fields[2].value.numpy().tobytes())
    assert len(biases) == 2
    ex, _ = build(m, target)
    vm = tvm.relax.VirtualMachine(ex, tvm.cpu())
    x = np.random.default_rng(1).normal(0, 1, (1, C, HW, HW)).astype(np.float32)
    np.testing.assert_array_equal(vm["main"](tvm.runtime.tensor(x)).numpy(),
                                  reference_outputs(m, {"x": x}, threads=1)["y"])
