"""Kernels that change what the graph computes per kernel: a one-row dense reading its
weight packed in vector strips, a conv reading an RGB input in NCHW (the input layout
transform folded into its padding stage), a depthwise conv fused with the 1x1 conv that
reads it. Each checked against onnxruntime on small shapes, and for its structure."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from pfcompile import codegen, zoo
from pfcompile.codegen.templates import Hardware
from pfcompile.reference import reference_session
from pfcompile.targets import load_target

tvm = pytest.importorskip("tvm")
from tvm import relax

from pfcompile.compiler import import_onnx

HOST = load_target("host")
HW = Hardware.from_target(HOST)


def _export(model: nn.Module, shape: tuple[int, ...], path: Path) -> Path:
    torch.manual_seed(0)
    for p in model.parameters():
        nn.init.uniform_(p, -0.5, 0.5)
    return zoo.export_onnx(model.eval(), path, shape)


def _run(path: Path, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, list]:
    import onnx

    x = np.random.default_rng(0).standard_normal(shape).astype("float32")
    sess = reference_session(path)
    ref = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    report: list = []
    ex = codegen.build(import_onnx(onnx.load(str(path))), HOST, records_dir=None, report=report)
    dev = tvm.cpu()
    out = relax.VirtualMachine(ex, dev)["main"](tvm.runtime.tensor(x, dev)).numpy()
    return out, ref, report


def _close(out: np.ndarray, ref: np.ndarray, rel: float = 1e-5) -> None:
    assert out.shape == ref.shape
    err = float(np.abs(out - ref).max())
    assert err <= rel * max(1.0, float(np.abs(ref).max())), err


# ----------------------------------------------------------------------------- dense
class Head(nn.Module):
    def __init__(self, k: int, n: int) -> None:
        super().__init__()
        self.fc = nn.Linear(k, n)

    def forward(self, x):
        return torch.relu(self.fc(torch.flatten(x, 1)))


@pytest.mark.parametrize("n", [37, 64])
def test_one_row_dense_reads_its_weight_in_vector_strips(n, tmp_path):
    """Linear 80 -> N on one row: the weight is packed (N/v, K, v) at compile time (N=37
    padded to whole vectors first); outputs equal onnxruntime's."""
    shape = (1, 5, 4, 4)
    out, ref, report = _run(_export(Head(80, n), shape, tmp_path / "h.onnx"), shape)
    _close(out, ref)
    dense = [r for r in report if r.family == "dense"]
    assert len(dense) == 1
    assert dense[0].layout == f"N{HW.fp32_lanes}KN"
    assert dense[0].dims["k"] == 80 and dense[0].dims["n"] % HW.fp32_lanes == 0
    assert dense[0].params["n_tile"] % HW.fp32_lanes == 0


def test_pack_dense_weights_packs_strips_and_leaves_other_products():
    from pfcompile.codegen.templates.dense import pack_dense_weights

    lanes = HW.fp32_lanes
    w = np.arange(6 * 2 * lanes, dtype="float32").reshape(6, 2 * lanes)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 6), "float32"))
    x2 = relax.Var("x2", relax.TensorType((3, 6), "float32"))
    with bb.function("main", [x, x2]):
        with bb.dataflow():
            a = bb.emit(relax.op.matmul(x, relax.const(w)))
            b = bb.emit(relax.op.matmul(x2, relax.const(w)))   # three rows: not a GEMV
            o = bb.emit_output(relax.Tuple([a, b]))
        bb.emit_func_output(o)
    mod = pack_dense_weights(bb.get(), HW)
    prims = [f for f in mod.functions.values() if isinstance(f, tvm.tirx.PrimFunc)]
    assert len(prims) == 1
    calls = [b.value for blk in mod["main"].body.blocks for b in blk.bindings
             if isinstance(b.value, relax.Call) and b.value.op.name == "relax.call_tir"]
    assert len(calls) == 1
    packed = calls[0].args[1].fields[1].value.numpy()
    assert packed.shape == (2, 6, lanes)
    np.testing.assert_array_equal(packed[1, :, 3], w[:, lanes + 3])   # wp[j//v, k, j%v] = w[k, j]
    assert mod["main"].script().count("R.matmul") == 1


# ----------------------------------------------------------------------------- RGB stem
class Stem(nn.Module):
    def __init__(self, cin: int, pad: int) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(cin, 16, 3, 2, pad)
        self.c2 = nn.Conv2d(16, 16, 1)

    def forward(self, x):
        return self.c2(torch.relu(self.c1(x)))


@pytest.mark.parametrize("cin,hw,pad", [(3, 17, 1), (3, 16, 0), (1, 12, 1), (4, 9, 1)])
def test_rgb_input_conv_reads_nchw_without_a_transform_kernel(cin, hw, pad, tmp_path):
    """A conv on a <= 4-channel NCHW input reads it directly (its padding stage writes
    the padded rows channel-last): no layout-transform kernel for the input, outputs
    equal onnxruntime's (odd sizes, no padding, one and four channels)."""
    import onnx

    from pfcompile.codegen.layout import convert_layout_pass, fold_input_transforms
    from pfcompile.codegen.pipeline import channel_block

    shape = (1, cin, hw, hw)
    path = _export(Stem(cin, pad), shape, tmp_path / "s.onnx")
    out, ref, report = _run(path, shape)
    _close(out, ref)
    stem = [r for r in report if r.family == "conv2d"]
    assert len(stem) == 1 and stem[0].dims["ib"] == cin
    mod = import_onnx(onnx.load(str(path)))
    mod = relax.transform.DecomposeOpsForInference()(mod)
    folded = fold_input_transforms(convert_layout_pass(channel_block(HW))(mod))
    text = folded["main"].script()
    assert 'data_layout="NCHW",' in text
    # the only layout transforms left are the weights' (folded at compile time) and
    # the output's back to NCHW: none reads the input
    inp = folded["main"].params[0]
    readers = [b.value.op.name for blk in folded["main"].body.blocks for b in blk.bindings
               if isinstance(b.value, relax.Call) and any(a.same_as(inp) for a in b.value.args)]
    assert readers == ["relax.nn.conv2d"], readers


def test_avx512_rgb_stem_tile_is_4x1_with_padding_inlined():
    from pfcompile.codegen.templates import Conv2dTemplate, Workload
    from pfcompile.codegen.templates.base import dims_tuple

    dims = {"n": 1, "cin": 3, "cout": 32, "ih": 224, "iw": 224, "kh": 3, "kw": 3, "sh": 2,
            "sw": 2, "dh": 1, "dw": 1, "pt": 1, "pl": 1, "pb": 1, "pr": 1, "groups": 1,
            "ib": 3, "ob": 16, "oh": 112, "ow": 112}
    wl = Workload("conv2d", dims_tuple(dims), 1, "NCHW3c->NCHW16c")
    p = Conv2dTemplate().heuristic(wl, Hardware(fp32_lanes=16, vector_registers=32))
    assert (p.ow_tile, p.oc_tile, p.pad_stage) == (4, 1, False)
    wl8 = Workload("conv2d", dims_tuple(dict(dims, ob=8)), 1, "NCHW3c->NCHW8c")
    q = Conv2dTemplate().heuristic(wl8, Hardware(fp32_lanes=8, vector_registers=16))
    assert q.pad_stage  # AVX2: unchanged (the padding stage)


# ----------------------------------------------------------------------------- dw + 1x1
class InvertedResidual(nn.Module):
    def __init__(self, cin: int, mid: int, cout: int, stride: int, act: str) -> None:
        super().__init__()
        self.expand = nn.Conv2d(cin, mid, 1)
        self.dw = nn.Conv2d(mid, mid, 3, stride, 1, groups=mid)
        self.project = nn.Conv2d(mid, cout, 1)
        self.act = nn.ReLU6() if act == "relu6" else nn.ReLU()
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        y = self.project(self.act(self.dw(self.act(self.expand(x)))))
        return x + y if self.residual else y


class TwoReaders(nn.Module):
    """The depthwise output is read by the 1x1 conv and by a second branch."""

    def __init__(self) -> None:
        super().__init__()
        self.dw = nn.Conv2d(16, 16, 3, 1, 1, groups=16)
        self.project = nn.Conv2d(16, 8, 1)

    def forward(self, x):
        d = torch.relu(self.dw(x))
        return torch.cat([self.project(d), d[:, :8] * 2.0], dim=1)


@pytest.mark.parametrize("cin,mid,cout,stride,act", [
    (8, 32, 8, 1, "relu"),      # residual add fused too
    (8, 48, 16, 2, "relu6"),    # stride 2, ReLU6 (min/max), 16 -> NCHW16c out
    (16, 24, 24, 1, "relu"),    # 24 channels: chunks of 8
    (16, 16, 16, 1, "relu"),    # one channel chunk (AVX-512): unit loops in the row
])
def test_depthwise_and_pointwise_run_as_one_kernel(cin, mid, cout, stride, act, tmp_path):
    hw_ = 64
    shape = (1, cin, hw_, hw_)
    path = _export(InvertedResidual(cin, mid, cout, stride, act), shape, tmp_path / "ir.onnx")
    out, ref, report = _run(path, shape)
    _close(out, ref)
    rows = hw_ // stride
    fams = [r.family for r in report]
    from pfcompile.codegen.templates.dwpw import DWPW_MIN_ROWS_PER_CORE

    if rows >= DWPW_MIN_ROWS_PER_CORE * HW.cores:
        assert fams.count("dwpw") == 1 and "depthwise" not in fams, fams
        (f,) = [r for r in report if r.family == "dwpw"]
        assert f.dims["mid"] == mid and f.dims["cout"] == cout and f.dims["sh"] == stride
        assert f.source == "heuristic"
        # the residual add is inside the fused kernel: the elementwise kernels left are
        # the input's and output's layout transforms
        assert [r.name for r in report if r.family == "elementwise" and "add" in r.name] == []
    else:
        assert "dwpw" not in fams


def test_depthwise_output_read_twice_is_not_fused(tmp_path):
    shape = (1, 16, 64, 64)
    out, ref, report = _run(_export(TwoReaders(), shape, tmp_path / "t.onnx"), shape)
    _close(out, ref)
    fams = [r.family for r in report]
    assert "dwpw" not in fams and "depthwise" in fams and "conv2d_1x1" in fams
