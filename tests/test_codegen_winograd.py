"""Winograd F(2x2,3x3) / F(4x4,3x3): the transforms' algebra, the per-layer choice
(heuristic and records), and whole models against onnxruntime on random shapes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from pfcompile import codegen, zoo
from pfcompile.codegen.records import Record, RecordDB, records_path
from pfcompile.codegen.templates import Hardware
from pfcompile.codegen.templates.winograd import (
    at_rows,
    bt_rows,
    choose_algorithm,
    direct_key,
    heuristic_algorithm,
    transform_weights,
    wino_key,
    winograd_matrices,
)
from pfcompile.reference import reference_session
from pfcompile.targets import load_target

tvm = pytest.importorskip("tvm")
from tvm import relax
from tvm.relax.frontend.onnx import from_onnx

AVX2 = load_target("host-avx2")     # runs on every x86-64 CPU the suite supports
HW8 = Hardware(fp32_lanes=8, vector_registers=16)


def _correlate(d: np.ndarray, g: np.ndarray) -> np.ndarray:
    a = d.shape[0]
    m = a - 2
    return np.array([[np.sum(d[i:i + 3, j:j + 3] * g) for j in range(m)] for i in range(m)])


@pytest.mark.parametrize("m", [2, 4])
def test_transforms_compute_a_3x3_correlation(m):
    at, bt, g = winograd_matrices(m)
    rng = np.random.default_rng(m)
    d = rng.standard_normal((m + 2, m + 2))
    w = rng.standard_normal((3, 3))
    y = at @ ((g @ w @ g.T) * (bt @ d @ bt.T)) @ at.T
    np.testing.assert_allclose(y, _correlate(d, w), rtol=1e-12, atol=1e-12)
    # the explicit rows (shared sub-expressions) equal the matrices
    cols = [d[:, j] for j in range(m + 2)]
    np.testing.assert_allclose(np.array([bt_rows(m, list(c)) for c in cols]).T, bt @ d, atol=1e-12)
    np.testing.assert_allclose(np.array([at_rows(m, list(c)) for c in cols]).T, at @ d, atol=1e-12)


def test_weight_transform_layout():
    rng = np.random.default_rng(0)
    k = rng.standard_normal((2, 3, 3, 3, 8, 8)).astype("float32")   # OIHW8i8o
    u = transform_weights(k, 4)
    assert u.shape == (6, 6, 2, 3, 8, 8) and u.dtype == np.float32
    _at, _bt, g = winograd_matrices(4)
    np.testing.assert_allclose(u[:, :, 1, 2, 5, 7], g @ k[1, 2, :, :, 5, 7] @ g.T, rtol=1e-5, atol=1e-6)


def _dims(cin, cout, hw, ib=8, ob=8):
    return {"cin": cin, "cout": cout, "ih": hw, "iw": hw, "kh": 3, "kw": 3, "sh": 1, "sw": 1,
            "dh": 1, "dw": 1, "pt": 1, "pl": 1, "pb": 1, "pr": 1, "groups": 1, "ib": ib, "ob": ob,
            "n": 1, "kib": ib, "oh": hw, "ow": hw}


def test_heuristic_choice():
    assert heuristic_algorithm(_dims(64, 64, 56), HW8) == 4       # many tiles, little waste
    assert heuristic_algorithm(_dims(512, 512, 7), HW8) == 2      # 4 tiles of 4x4: F(2x2)
    assert heuristic_algorithm(_dims(160, 160, 10), HW8) == 2     # 44 % waste with 4x4 tiles
    assert heuristic_algorithm(_dims(8, 8, 16), HW8) == 0         # too small to pay back
    assert heuristic_algorithm(dict(_dims(64, 64, 56), sh=2, sw=2), HW8) == 0
    assert heuristic_algorithm(_dims(37, 40, 28, ib=1, ob=8), HW8) == 0  # chunks not vectors


def test_records_choose_the_algorithm(tmp_path):
    d = _dims(64, 64, 56)
    db = RecordDB(records_path(tmp_path, "t"))
    assert choose_algorithm(d, HW8, db) == (4, "heuristic")     # no records yet
    for key, fam, ms in ((direct_key(d), "conv2d", 1.0), (wino_key(d, 2), "winograd", 0.5)):
        db.add(Record(key, fam, {}, {}, ms, "t", trials=1))
    assert choose_algorithm(d, HW8, db) == (4, "heuristic")     # F(4x4) not measured
    db.add(Record(wino_key(d, 4), "winograd", {}, {}, 0.7, "t", trials=1))
    assert choose_algorithm(d, HW8, db) == (2, "record")        # the fastest measured
    db.add(Record(direct_key(d), "conv2d", {}, {}, 0.1, "t", trials=1))
    assert choose_algorithm(d, HW8, db) == (0, "record")


class Block(nn.Module):
    def __init__(self, cin: int, cout: int, pad: int, residual: bool) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(cin, cout, 3, 1, pad)
        self.c2 = nn.Conv2d(cout, cout, 3, 1, 1)
        self.residual = residual

    def forward(self, x):
        y = torch.relu(self.c1(x))
        z = self.c2(y)
        return torch.relu(z + y) if self.residual else z


def _export(net: nn.Module, shape, path: Path) -> Path:
    torch.manual_seed(0)
    for p in net.parameters():
        nn.init.uniform_(p, -0.3, 0.3)
    return zoo.export_onnx(net, path, shape)


def _compare(path: Path, target, records: Path, winograd: int | None, seed: int = 0):
    model = onnx.load(str(path))
    inp = model.graph.input[0]
    shape = [d.dim_value for d in inp.type.tensor_type.shape.dim]
    x = np.random.default_rng(seed).standard_normal(shape).astype("float32")
    ref = reference_session(path).run(None, {inp.name: x})[0]
    report: list = []
    ex = codegen.build(from_onnx(model, keep_params_in_input=False), target, records_dir=records,
                       report=report, winograd=winograd)
    out = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    return out, ref, report


@settings(max_examples=8, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(cin=st.sampled_from([8, 16, 24, 40]), cout=st.sampled_from([8, 16, 32]),
       hw=st.integers(3, 13), pad=st.sampled_from([0, 1]), residual=st.booleans(),
       m=st.sampled_from([2, 4]))
def test_winograd_matches_onnxruntime(cin, cout, hw, pad, residual, m, tmp_path):
    path = _export(Block(cin, cout, pad, residual), (1, cin, hw, hw), tmp_path / "b.onnx")
    out, ref, report = _compare(path, AVX2, tmp_path / "rec", winograd=m)
    # F(4x4) sums 36 products per transform: a few float32 ulps of the output range
    np.testing.assert_allclose(out, ref, rtol=2e-4, atol=2e-5 * max(1.0, float(np.abs(ref).max())))
    wino = [r for r in report if r.family == "winograd"]
    assert len(wino) == 2 and all(r.dims["m"] == m for r in wino)
    assert not [r for r in report if r.source in ("fallback", "none")]


def test_default_choice_on_resnet_stage_shapes(tmp_path):
    """The compiler's own choice (no records) on a small ResNet: Winograd where the
    heuristic says so, direct elsewhere, output equal to onnxruntime."""
    path = _export(zoo.resnet20(classes=10, in_ch=3), (1, 3, 64, 64), tmp_path / "r20.onnx")
    out, ref, report = _compare(path, AVX2, tmp_path / "rec", winograd=None)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4 * max(1.0, float(np.abs(ref).max())))
    fams = [r.family for r in report]
    assert "winograd" in fams and "conv2d" in fams
    for r in report:   # AVX2: accumulators + live broadcasts within 16 registers
        if r.family == "winograd":
            p = r.params
            assert p["p_tile"] * p["oc_tile"] + p["p_tile"] <= 16, p


def test_winograd_builds_for_arm64():
    """Cross-compiles (NEON, 4 lanes, chunk 8); runs on the emulated device in
    tests/test_codegen_device.py (slow)."""
    import tempfile

    from pfcompile.compiler import export

    arm = load_target("arm64")
    with tempfile.TemporaryDirectory() as tmp:
        path = _export(Block(16, 16, 1, True), (1, 16, 12, 12), Path(tmp) / "b.onnx")
        report: list = []
        ex = codegen.build(from_onnx(onnx.load(str(path)), keep_params_in_input=False), arm,
                           records_dir=Path(tmp) / "rec", report=report, winograd=4)
        assert [r.family for r in report].count("winograd") == 2
        import shutil

        if shutil.which(arm.cross_compiler or "") is None:
            pytest.skip(f"cross compiler {arm.cross_compiler} missing")
        so = Path(tmp) / "m.so"
        export(ex, arm, so)
        assert so.stat().st_size > 0
