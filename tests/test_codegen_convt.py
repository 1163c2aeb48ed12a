"""Transposed convolutions run as a conv + depth-to-space + crop (``pfcompile.codegen.convt``):
checked against onnxruntime (kernel == stride, larger kernels, pads, output_padding,
non-square kernels, one output channel, a BatchNorm + ReLU after it) and for the structure
(pfcompile's templates, no ``conv2d_transpose`` kernel left); grouped ones keep TVM's."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from pfcompile import codegen
from pfcompile.compiler import import_onnx
from pfcompile.reference import reference_session
from pfcompile.targets import load_target

tvm = pytest.importorskip("tvm")
from tvm import relax

HOST = load_target("host")


def _model(cin: int, cout: int, k: tuple[int, int], s: tuple[int, int],
           pads: tuple[int, int, int, int], h: int = 5, w: int = 7, opad: int = 0,
           group: int = 1) -> onnx.ModelProto:
    rng = np.random.default_rng(cin * 100 + cout)
    wt = rng.standard_normal((cin, cout // group, *k)).astype(np.float32)
    b = rng.standard_normal(cout).astype(np.float32)
    scale = rng.uniform(0.5, 1.5, cout).astype(np.float32)
    mean = rng.standard_normal(cout).astype(np.float32)
    var = rng.uniform(0.5, 1.5, cout).astype(np.float32)
    oh = (h - 1) * s[0] + k[0] - pads[0] - pads[2] + opad
    ow = (w - 1) * s[1] + k[1] - pads[1] - pads[3] + opad
    nodes = [helper.make_node("ConvTranspose", ["x", "W", "B"], ["y"], kernel_shape=list(k),
                              strides=list(s), pads=list(pads), output_padding=[opad, opad],
                              group=group),
             helper.make_node("BatchNormalization", ["y", "sc", "bi", "mu", "va"], ["z"]),
             helper.make_node("Relu", ["z"], ["out"])]
    inits = [numpy_helper.from_array(a, n) for a, n in
             ((wt, "W"), (b, "B"), (scale, "sc"), (b[::-1].copy(), "bi"), (mean, "mu"),
              (var, "va"))]
    g = helper.make_graph(nodes, "convt",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, h, w])],
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT,
                                                         [1, cout, oh, ow])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _run(m: onnx.ModelProto) -> tuple[np.ndarray, np.ndarray, list]:
    x = np.random.default_rng(1).standard_normal(
        [d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim]).astype(np.float32)
    sess = reference_session(m)
    ref = sess.run(None, {"x": x})[0]
    report: list = []
    ex = codegen.build(import_onnx(m), HOST, records_dir=None, report=report)
    dev = tvm.cpu()
    out = relax.VirtualMachine(ex, dev)["main"](tvm.runtime.tensor(x, dev)).numpy()
    return out, ref, report


def _close(out: np.ndarray, ref: np.ndarray) -> None:
    assert out.shape == ref.shape
    assert float(np.abs(out - ref).max()) <= 1e-5 * max(1.0, float(np.abs(ref).max()))


@pytest.mark.parametrize("cin,cout,k,pads", [
    (16, 8, (2, 2), (0, 0, 0, 0)),     # PP-OCR det head, 2x up-sampling
    (24, 1, (2, 2), (0, 0, 0, 0)),     # one output channel
    (8, 12, (3, 2), (1, 0, 2, 1)),     # non-square, cropped by pads
])
def test_kernel_equal_stride_is_pointwise(cin, cout, k, pads) -> None:
    out, ref, report = _run(_model(cin, cout, k, k, pads))
    _close(out, ref)
    fams = [r.family for r in report]
    assert "conv2d_1x1" in fams, fams
    assert not any("conv2d_transpose" in r.name for r in report), [r.name for r in report]


@pytest.mark.parametrize("cin,cout,k,s,pads,opad", [
    (8, 8, (4, 4), (2, 2), (1, 1, 1, 1), 0),     # DCGAN / U-Net style 2x up-sampling
    (8, 16, (3, 3), (2, 2), (1, 1, 1, 1), 1),    # output_padding 1
    (16, 8, (3, 3), (1, 1), (1, 1, 1, 1), 0),    # stride 1: a flipped-kernel conv
    (8, 8, (5, 3), (2, 3), (2, 0, 1, 2), 0),     # kernel shorter than a stride on one axis
])
def test_overlapping_kernel_is_a_conv(cin, cout, k, s, pads, opad) -> None:
    out, ref, report = _run(_model(cin, cout, k, s, pads, opad=opad))
    _close(out, ref)
    assert "conv2d" in [r.family for r in report], [(r.name, r.family) for r in report]
    assert not any("conv2d_transpose" in r.name for r in report), [r.name for r in report]


def test_grouped_keeps_tvm_kernel() -> None:
    out, ref, report = _run(_model(8, 8, (2, 2), (2, 2), (0, 0, 0, 0), group=2))
    _close(out, ref)
    assert any("conv2d_transpose" in r.name for r in report), [r.name for r in report]
