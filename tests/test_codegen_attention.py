"""Attention and normalization on pfcompile's templates: N-D MatMul, Softmax,
LayerNorm (op and decomposition), GELU (erf, tanh), the vectorizable
approximations, and the layout canonicalization around hard-swish; each against
onnxruntime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper
from torch import nn

from pfcompile import codegen, zoo
from pfcompile.codegen.pipeline import fuse_to_tir
from pfcompile.codegen.templates.norm import fuse_layer_norm
from pfcompile.reference import reference_session
from pfcompile.targets import load_target

tvm = pytest.importorskip("tvm")
from tvm import relax, tirx
from tvm.relax.frontend.onnx import from_onnx

AVX2 = load_target("host-avx2")


def _run(path: Path, tmp: Path, x: np.ndarray | None = None, seed: int = 0, scale: float = 1.0):
    model = onnx.load(str(path))
    inp = model.graph.input[0]
    shape = [d.dim_value for d in inp.type.tensor_type.shape.dim]
    if x is None:
        x = (np.random.default_rng(seed).standard_normal(shape) * scale).astype("float32")
    ref = reference_session(path).run(None, {inp.name: x})[0]
    report: list = []
    ex = codegen.build(from_onnx(model, keep_params_in_input=False), AVX2, records_dir=tmp / "rec",
                       report=report)
    out = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    return out, ref, report


def _close(out, ref, rtol=1e-4):
    np.testing.assert_allclose(out, ref, rtol=rtol, atol=rtol * max(1.0, float(np.abs(ref).max())))


class Act(nn.Module):
    def forward(self, x):
        return torch.cat([torch.exp(x * 0.5), torch.erf(x), torch.tanh(x), torch.sigmoid(x),
                          F.silu(x), F.gelu(x), F.gelu(x, approximate="tanh")], dim=-1)


def test_fast_math_matches_onnxruntime(tmp_path):
    path = zoo.export_onnx(Act(), tmp_path / "act.onnx", (4, 64))
    x = np.linspace(-12, 12, 256, dtype="float32").reshape(4, 64)
    out, ref, _ = _run(path, tmp_path, x=x)
    # polynomial approximations: within a few float32 ulps
    np.testing.assert_allclose(out, ref, rtol=2e-6, atol=2e-6)


class DecomposedLN(nn.Module):
    """LayerNorm written out, as PaddlePaddle / opset < 17 exporters write it."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.g = nn.Parameter(torch.rand(c) + 0.5)
        self.b = nn.Parameter(torch.rand(c))

    def forward(self, x):
        m = x.mean(-1, keepdim=True)
        d = x - m
        v = (d ** 2).mean(-1, keepdim=True)
        return d / torch.sqrt(v + 1e-5) * self.g + self.b


def test_layer_norm_decomposition_becomes_the_op(tmp_path):
    path = zoo.export_onnx(DecomposedLN(48), tmp_path / "ln.onnx", (1, 20, 48), opset=13)
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert {"ReduceMean", "Pow", "Sqrt", "Div"} <= ops and "LayerNormalization" not in ops
    mod = from_onnx(onnx.load(str(path)), keep_params_in_input=False)
    text = fuse_layer_norm(mod)["main"].script()
    assert "R.nn.layer_norm" in text and "R.power" not in text and "R.mean" not in text
    out, ref, report = _run(path, tmp_path, scale=3.0)
    _close(out, ref, 1e-5)
    assert [r.family for r in report].count("norm") == 1


class Encoder(nn.Module):
    """A ViT-style block: LayerNorm op, 2-head attention (MatMul / Softmax), GELU MLP."""

    def __init__(self, dim: int = 32, heads: int = 2, tanh: bool = False) -> None:
        super().__init__()
        self.heads, self.tanh = heads, tanh
        self.n1, self.n2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.fc1, self.fc2 = nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        qkv = self.qkv(self.n1(x)).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        att = (q @ k.transpose(-2, -1)) * (c // self.heads) ** -0.5
        x = x + self.proj((att.softmax(-1) @ v).transpose(1, 2).reshape(b, n, c))
        h = F.gelu(self.fc1(self.n2(x)), approximate="tanh" if self.tanh else "none")
        return x + self.fc2(h)


@pytest.mark.parametrize("tanh", [False, True])
def test_attention_block_runs_on_templates(tanh, tmp_path):
    torch.manual_seed(0)
    path = zoo.export_onnx(Encoder(tanh=tanh).eval(), tmp_path / "enc.onnx", (1, 16, 32), opset=17)
    out, ref, report = _run(path, tmp_path)
    _close(out, ref)
    fams = [r.family for r in report]
    assert fams.count("matmul") >= 5, fams       # qkv, scores, context, proj, fc1, fc2
    norms = {r.dims["softmax"] for r in report if r.family == "norm"}
    assert norms == {0, 1}, fams                 # the LayerNorm kernel and the softmax
    # no softmax / layer-norm / matmul kernel left to the generic (unscheduled-style) path
    generic = [r.name for r in report if r.family in ("reduction",)]
    assert not [n for n in generic if "softmax" in n or "layer_norm" in n or "matmul" in n], generic
    assert not [r for r in report if r.source in ("fallback", "none")]


def _matmul_model(path: Path, batch: int, m: int, k: int, n: int, shared: bool) -> Path:
    rng = np.random.default_rng(0)
    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, [batch, m, k])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    if shared:
        w = rng.standard_normal((k, n)).astype("float32")
        inits = [onnx.numpy_helper.from_array(w, "w")]
        nodes = [helper.make_node("MatMul", ["a", "w"], ["y"])]
    else:
        # B from the input itself (an activation, as in attention): a · aᵀ-like product
        inits = [onnx.numpy_helper.from_array(rng.standard_normal((k, n)).astype("float32"), "w")]
        nodes = [helper.make_node("MatMul", ["a", "w"], ["t"]),
                 helper.make_node("Transpose", ["a"], ["at"], perm=[0, 2, 1]),
                 helper.make_node("MatMul", ["at", "t"], ["y"])]
    g = helper.make_graph(nodes, "mm", [a], [y], inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))
    return path


@settings(max_examples=8, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(batch=st.sampled_from([1, 2, 3]), m=st.integers(2, 21), k=st.integers(1, 40),
       n=st.sampled_from([3, 8, 15, 20, 37, 64]), shared=st.booleans())
def test_matmul_matches_onnxruntime(batch, m, k, n, shared, tmp_path):
    path = _matmul_model(tmp_path / "mm.onnx", batch, m, k, n, shared)
    out, ref, report = _run(path, tmp_path)
    _close(out, ref, 1e-5)
    assert "matmul" in {r.family for r in report}
    assert not [r for r in report if r.source in ("fallback", "none")]


def test_constant_weight_columns_are_padded_to_whole_vectors(tmp_path):
    path = _matmul_model(tmp_path / "mm.onnx", 1, 20, 24, 37, True)
    out, ref, report = _run(path, tmp_path)
    _close(out, ref, 1e-5)
    mm = [r for r in report if r.family == "matmul"]
    assert [r.dims["n"] for r in mm] == [48]     # 37 → a multiple of 2 x 8 lanes


class HardSwishNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(16, 16, 1), nn.Conv2d(16, 16, 1)

    def forward(self, x):
        y = self.c1(x)
        y = y * torch.clamp(y + 3.0, 0.0, 6.0) / 6.0      # Clip with input bounds (opset 11+)
        y = F.hardswish(self.c2(y)) * 0.5
        return F.hardsigmoid(y)


def test_hard_swish_keeps_the_blocked_layout(tmp_path):
    torch.manual_seed(0)
    path = zoo.export_onnx(HardSwishNet(), tmp_path / "hs.onnx", (1, 16, 6, 6), opset=17)
    mod = from_onnx(onnx.load(str(path)), keep_params_in_input=False)
    fused = fuse_to_tir(mod, AVX2)
    layout = [gv.name_hint for gv, f in fused.functions.items()
              if isinstance(f, tirx.PrimFunc) and "layout_transform" in gv.name_hint]
    assert len(layout) == 2, layout      # the graph's input and output edges only
    out, ref, _ = _run(path, tmp_path, scale=4.0)
    _close(out, ref, 1e-5)
