"""The same templates for NEON (4 fp32 lanes), run on the emulated arm64 device
(qemu-user, TVM RPC) and compared with onnxruntime. Functional checks only:
latencies under qemu are not ARM latencies."""

from __future__ import annotations

import gc
import tempfile
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from pfcompile import codegen, zoo
from pfcompile.codegen.kernels import time_kernels
from pfcompile.compiler import import_onnx
from pfcompile.paths import demo_paths
from pfcompile.reference import reference_session
from pfcompile.runner.kernels import RPCKernelTimer
from pfcompile.targets import load_target

pytestmark = pytest.mark.slow

class OddNet(nn.Module):
    """Shapes pruning produces: 37 channels, stride 2, depthwise, a dense head."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 37, 3, 2, 1)
        self.dw = nn.Conv2d(37, 37, 3, 1, 1, groups=37)
        self.c2 = nn.Conv2d(37, 24, 1)
        self.c3 = nn.Conv2d(24, 24, 3, 1, 1)
        self.fc = nn.Linear(24, 10)

    def forward(self, x):
        y = torch.relu(self.c1(x))
        y = torch.relu(self.dw(y))
        y = self.c2(y)
        y = torch.relu(self.c3(y)) + y
        return self.fc(y.mean(dim=(2, 3)))


def _run_remote(addr: str, ex, target, x: np.ndarray) -> np.ndarray:
    from tvm import relax, rpc

    from pfcompile.compiler import export

    host, port = addr.rsplit(":", 1)
    with tempfile.TemporaryDirectory() as tmp:
        so = export(ex, target, Path(tmp) / "model_arm64.so")
        gc.collect()  # a server serves one session at a time: free the last one first
        sess = rpc.connect(host, int(port), session_timeout=600)
        sess.upload(str(so))
        rmod = sess.load_module(so.name)
    import tvm

    dev = sess.cpu()
    vm = relax.VirtualMachine(rmod, dev)
    return vm["main"](tvm.runtime.tensor(x, dev)).numpy()


@pytest.mark.parametrize("which", ["oddnet", "demo"])
def test_arm64_model_matches_onnxruntime(arm_device, which, tmp_path):
    arm = load_target("arm64")
    if which == "oddnet":
        torch.manual_seed(0)
        path = zoo.export_onnx(OddNet(), tmp_path / "odd.onnx", (1, 3, 15, 15))
    else:
        path = demo_paths()[0]
    model = onnx.load(str(path))
    inp = model.graph.input[0]
    shape = [d.dim_value for d in inp.type.tensor_type.shape.dim]
    x = np.random.default_rng(1).standard_normal(shape).astype("float32")
    ref = reference_session(path).run(None, {inp.name: x})[0]
    report: list = []
    ex = codegen.build(import_onnx(path), arm, records_dir=tmp_path, report=report)
    assert {"conv2d", "depthwise", "dense"} <= {r.family for r in report}
    assert not [r for r in report if r.source in ("fallback", "none")]
    out = _run_remote(arm_device, ex, arm, x)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4 * max(1.0, float(np.abs(ref).max())))


def test_arm64_kernels_time_over_rpc(arm_device, tmp_path):
    """Per-kernel timing over RPC works (the number is functional only under qemu)."""
    torch.manual_seed(0)
    path = zoo.export_onnx(OddNet(), tmp_path / "odd.onnx", (1, 3, 15, 15))
    timer = RPCKernelTimer(device=arm_device, number=1, repeat=1, min_repeat_ms=0)
    res = time_kernels(import_onnx(path), load_target("arm64"), timer, records_dir=tmp_path)
    assert res and all(t.ms is not None and t.ms > 0 for t in res.values()), res


class WinoNet(nn.Module):
    """Two 3x3 stride-1 convs (Winograd-eligible with 8-channel NEON chunks) and a residual."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(16, 16, 3, 1, 1), nn.Conv2d(16, 16, 3, 1, 1)

    def forward(self, x):
        return torch.relu(self.c2(torch.relu(self.c1(x))) + x)


class TinyEncoder(nn.Module):
    """LayerNorm, one attention head (MatMul / Softmax), GELU MLP."""

    def __init__(self, dim: int = 16) -> None:
        super().__init__()
        self.n = nn.LayerNorm(dim)
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.fc = nn.Linear(dim, dim)

    def forward(self, x):
        h = self.n(x)
        att = torch.softmax(self.q(h) @ self.k(h).transpose(-2, -1) * 0.25, -1)
        return x + self.fc(torch.nn.functional.gelu(att @ self.v(h)))


@pytest.mark.parametrize("which", ["winograd2", "winograd4", "encoder"])
def test_arm64_winograd_and_attention_match_onnxruntime(arm_device, which, tmp_path):
    arm = load_target("arm64")
    torch.manual_seed(0)
    if which == "encoder":
        path = zoo.export_onnx(TinyEncoder().eval(), tmp_path / "enc.onnx", (1, 12, 16), opset=17)
        wino, want = None, {"matmul", "norm"}
    else:
        path = zoo.export_onnx(WinoNet(), tmp_path / "w.onnx", (1, 16, 10, 10))
        wino, want = int(which[-1]), {"winograd"}
    model = onnx.load(str(path))
    inp = model.graph.input[0]
    shape = [d.dim_value for d in inp.type.tensor_type.shape.dim]
    x = np.random.default_rng(1).standard_normal(shape).astype("float32")
    ref = reference_session(path).run(None, {inp.name: x})[0]
    report: list = []
    ex = codegen.build(import_onnx(path), arm, records_dir=tmp_path, report=report, winograd=wino)
    assert want <= {r.family for r in report}
    out = _run_remote(arm_device, ex, arm, x)
    np.testing.assert_allclose(out, ref, rtol=2e-4, atol=2e-4 * max(1.0, float(np.abs(ref).max())))
