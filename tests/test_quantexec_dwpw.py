"""The fused integer depthwise -> 1x1 kernel (``pfcompile.quantexec.dwpw``) is bit-exact with
the unfused integer pair and with the exact reference, and replaces each eligible pair by one
kernel call.

The model is a MobileNetV2 inverted-residual block: 1x1 expansion + ReLU, depthwise 3x3
(stride 1 or 2) + ReLU, 1x1 projection, then either nothing, a requantised residual Add
(projection -> Q -> DQ -> Add) or a float one (projection -> Add, what pfcompile's own
quantize pass writes: the projection then has a float epilogue), each activation uint8.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import tvm
from onnx import TensorProto, helper, numpy_helper

from pfcompile.compiler import build, import_onnx
from pfcompile.quantexec import x86
from pfcompile.quantexec.dwpw import dwpw_group
from pfcompile.reference import reference_outputs
from pfcompile.targets import host_arch
from tests.device_helpers import x86_target

X86 = pytest.mark.skipif(host_arch() != "x86_64", reason="x86-64 integer kernels need an x86-64 CPU")

C = 8  # block input / output channels


def _conv(x: np.ndarray, w: np.ndarray, b: np.ndarray, stride: int, groups: int) -> np.ndarray:
    """Float conv, 'same' padding (for picking the output scales)."""
    o, icg, k, _ = w.shape
    p = k // 2
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    oh = (x.shape[2] + 2 * p - k) // stride + 1
    ow = (x.shape[3] + 2 * p - k) // stride + 1
    y = np.zeros((1, o, oh, ow)) + b[None, :, None, None]
    for oc in range(o):
        g = oc // (o // groups)
        for i in range(k):
            for j in range(k):
                patch = xp[0, g * icg:(g + 1) * icg, i:i + stride * oh:stride, j:j + stride * ow:stride]
                y[0, oc] += np.einsum("chw,c->hw", patch, w[oc, :, i, j])
    return y


def block_model(stride: int, residual: str, hw: int, e: int = 64, seed: int = 0) -> onnx.ModelProto:
    """x -> Q -> [1x1 + ReLU] -> Q -> [dw3x3/stride + ReLU] -> Q -> [1x1] -> (Q ->) ...;
    ``residual``: "none" (the projection's Q is the output), "q" (projection -> Q -> DQ ->
    Add(x) -> Q) or "float" (projection -> Add(x) -> Q); ``e`` expanded channels."""
    rng = np.random.default_rng(seed)
    inits, nodes = [], []
    oc_out = C if residual != "none" else 2 * C

    def const(name, arr):
        inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    def q_dq(src: str, y: np.ndarray) -> tuple[str, np.ndarray]:
        lo, hi = min(float(y.min()), 0.0), float(y.max())
        s = np.float32((hi - lo) / 255.0)
        z = np.uint8(np.clip(np.rint(-lo / s), 0, 255))
        const(f"{src}_s", s), const(f"{src}_z", z)
        nodes.append(helper.make_node("QuantizeLinear", [src, f"{src}_s", f"{src}_z"], [f"{src}_q"]))
        nodes.append(helper.make_node("DequantizeLinear", [f"{src}_q", f"{src}_s", f"{src}_z"], [f"{src}_d"]))
        return f"{src}_d", (np.clip(np.rint(y / s) + z, 0, 255) - float(z)) * s

    def conv(name, src, xv, oc, k, groups, s=1, relu=False):
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
                                      pads=[k // 2] * 4, group=groups, strides=[s, s]))
        y = _conv(xv, wq * sw[:, None, None, None].astype(np.float64), b, s, groups)
        out = f"{name}_y"
        if relu:
            nodes.append(helper.make_node("Relu", [out], [f"{name}_r"]))
            out, y = f"{name}_r", np.maximum(y, 0)
        return out, y

    x0 = rng.normal(0, 1, (1, C, hw, hw))
    xd, xv = q_dq("x", x0)
    a, av = conv("ex", xd, xv, e, 1, 1, relu=True)
    ad, av = q_dq(a, av)
    d, dv = conv("dw", ad, av, e, 3, e, s=stride, relu=True)
    dd, dv = q_dq(d, dv)
    p, pv = conv("pj", dd, dv, oc_out, 1, 1)
    if residual == "none":
        out, _ = q_dq(p, pv)
    else:
        if residual == "q":
            p, pv = q_dq(p, pv)
        nodes.append(helper.make_node("Add", [p, xd], ["sum"]))
        out, _ = q_dq("sum", pv + xv)
    nodes.append(helper.make_node("Identity", [out], ["y"]))
    oh = hw // stride
    g = helper.make_graph(nodes, "qdq_ir_block",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, (1, C, hw, hw))],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, (1, oc_out, oh, oh))],
                          inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 19)])
    m.ir_version = 9
    onnx.checker.check_model(m)
    return m


def replace_spec(e: int, hw: int, stride: int):
    """The block's depthwise as a spec (for which variant of the fused kernel it takes)."""
    from pfcompile.quantexec.kernels import QConvSpec

    return QConvSpec(n=1, c=e, h=hw, w=hw, oc=e, kh=3, kw=3, stride=(stride, stride), padding=(1, 1, 1, 1),
                     dilation=(1, 1), groups=e, x_dtype="uint8", y_dtype="uint8", zx=0, zy=0,
                     qmin=0, qmax=255)


def _run(ex, x: np.ndarray) -> np.ndarray:
    vm = tvm.relax.VirtualMachine(ex, tvm.cpu())
    return vm["main"](tvm.runtime.tensor(x)).numpy()


#: (stride, residual, size, expanded channels); AVX2 takes the grouped depthwise taps here
#: (``dwpw.dwpw_group``; VNNI the in-register interleave, as the unfused kernel)
CASES = [(1, "none", 16, 64), (1, "q", 16, 64), (1, "float", 16, 64), (2, "none", 28, 64),
         (1, "q", 16, 48), (2, "none", 28, 48)]


@X86
@pytest.mark.parametrize("target_name", ["host-avx2", "host"])
@pytest.mark.parametrize(("stride", "residual", "hw", "e"), CASES)
def test_fused_block_is_bit_exact(target_name, stride, residual, hw, e, monkeypatch):
    target = x86_target(target_name)
    monkeypatch.setattr("pfcompile.quantexec.lower.DWPW_ON_VNNI", True)  # off by default there
    m = block_model(stride, residual, hw, e)
    ex, reports = build(m, target)
    ints = [r for r in reports if r.path == "int8"]
    assert len(ints) == 3, reports
    fused = [r for r in ints if "-dwpw-" in r.kernel]
    assert [r.op for r in fused] == ["conv2d", "conv2d"], reports  # the depthwise and projection
    monkeypatch.setenv("PFCOMPILE_INT8_DWPW", "0")
    ex0, reports0 = build(m, target)
    assert not any("-dwpw-" in r.kernel for r in reports0)
    grouped = dwpw_group(replace_spec(e, hw, stride), x86.AVX2 if target_name == "host-avx2"
                         else x86.VNNI)
    assert grouped == (target_name == "host-avx2")
    for seed in range(2):
        x = np.random.default_rng(seed + 1).normal(0, 1, (1, C, hw, hw)).astype(np.float32)
        got, unfused = _run(ex, x), _run(ex0, x)
        np.testing.assert_array_equal(got, unfused, err_msg=f"{target_name} fused vs unfused")
        if residual != "float":  # a float residual sum may round a tie either way (docs/int8.md)
            ref = reference_outputs(m, {"x": x}, threads=1)["y"]
            np.testing.assert_array_equal(got, ref, err_msg=f"{target_name} vs the reference")


@X86
@pytest.mark.parametrize("target_name", ["host-avx2", "host"])
def test_one_fused_kernel_per_pair(target_name, monkeypatch):
    """The lowered module: one fused call for the pair, no separate depthwise kernel."""
    monkeypatch.setattr("pfcompile.quantexec.lower.DWPW_ON_VNNI", True)
    from pfcompile.quantexec import lower_qdq, onnx_layer_names, with_int8_features
    from pfcompile.quantexec.onnx_prep import prepare_qdq

    target = with_int8_features(x86_target(target_name))
    m = block_model(1, "q", 16)
    proto, _ = prepare_qdq(m)
    mod, reports = lower_qdq(import_onnx(proto), target, onnx_layer_names(proto))
    names = [gv.name_hint for gv in mod.get_global_vars()]
    calls = [c for c in tvm.relax.analysis.all_global_vars(mod["main"]) if c.name_hint.startswith("q")]
    assert sum(n.startswith("qdwpw") for n in names) == 1, names
    assert sorted(c.name_hint.rstrip("0123456789").rstrip("_") for c in calls) == ["qconv2d", "qdwpw"]
    kinds = {r.node: r.kernel for r in reports}
    assert sum("-dwpw-" in k for k in kinds.values()) == 2, reports
    mod0, _ = lower_qdq(import_onnx(proto), target, onnx_layer_names(proto), fuse_dwpw=False)
    assert not any(gv.name_hint.startswith("qdwpw") for gv in mod0.get_global_vars())


@X86
def test_vnni_keeps_the_unfused_pair():
    """On a VNNI target the pair stays unfused by default (no gain measured there)."""
    from pfcompile.quantexec import lower_qdq, onnx_layer_names, with_int8_features
    from pfcompile.quantexec.onnx_prep import prepare_qdq

    target = with_int8_features(x86_target("host"))
    proto, _ = prepare_qdq(block_model(1, "q", 16))
    mod, reports = lower_qdq(import_onnx(proto), target, onnx_layer_names(proto))
    assert not any(gv.name_hint.startswith("qdwpw") for gv in mod.get_global_vars())
    assert [r.kernel for r in reports] == ["x86-vnni-vpdpbusd", "x86-vnni-dw-vpdpbusd",
                                           "x86-vnni-vpdpbusd"]


@X86
@pytest.mark.parametrize("stride", [1, 2])
def test_grouped_and_interleaved_taps_agree(stride):
    """The fused kernel's two depthwise forms (``dwpw_group``) give the same bits on AVX2:
    random inputs, weights and per-channel parameters, outputs requantised to uint8."""
    from pfcompile.codegen.pipeline import build_context
    from pfcompile.quantexec.dwpw import dwpw_func
    from pfcompile.quantexec.kernels import QConvSpec

    target = x86_target("host-avx2")
    b = "NCHW8c"
    d = replace_spec(24, 16, stride)
    d = QConvSpec(**{**d.__dict__, "zx": 7, "x_layout": b, "y_layout": b})
    p = QConvSpec(n=1, c=24, h=d.oh, w=d.ow, oc=16, kh=1, kw=1, stride=(1, 1),
                  padding=(0, 0, 0, 0), dilation=(1, 1), groups=1, x_dtype="uint8",
                  y_dtype="uint8", zx=0, zy=100, qmin=0, qmax=255, x_layout=b, y_layout=b)
    rng = np.random.default_rng(stride)
    outs = []
    for group in (True, False):
        f = dwpw_func(d, p, x86.AVX2, group=group)
        with build_context():
            ex = tvm.compile(tvm.IRModule({"main": f.with_attr("global_symbol", "main")}),
                             target=target.tvm_target())
        rng = np.random.default_rng(stride)
        args = []
        for prm in f.params:
            shape, dt = [int(v) for v in prm.shape], str(prm.dtype)
            if dt == "float32":
                a = rng.uniform(0.002, 0.02, shape).astype(dt)
            elif dt == "int32":
                a = rng.integers(-3000, 3000, shape).astype(dt)
            elif dt == "int16":
                a = rng.integers(-127, 128, shape).astype(dt)
            else:
                a = rng.integers(0, 256, shape).astype(dt)
            args.append(tvm.runtime.tensor(a))
        ex["main"](*args)
        outs.append(args[-1].numpy())
    assert outs[0].std() > 1  # not saturated to one value
    np.testing.assert_array_equal(outs[0], outs[1])
