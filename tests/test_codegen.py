"""pfcompile.codegen: every template against onnxruntime on random inputs, over
the shapes pruning produces (odd channels, strides 1/2, padding, groups)."""

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
from pfcompile.codegen.pipeline import channel_block
from pfcompile.codegen.records import Record, RecordDB, records_path
from pfcompile.codegen.templates import Hardware
from pfcompile.errors import CompileError
from pfcompile.paths import demo_paths
from pfcompile.reference import reference_session
from pfcompile.targets import load_target

tvm = pytest.importorskip("tvm")
from tvm import relax

from pfcompile.compiler import import_onnx

HOST = load_target("host")


def _export(model: nn.Module, shape: tuple[int, ...], path: Path) -> Path:
    torch.manual_seed(0)
    for p in model.parameters():  # non-trivial weights and biases everywhere
        nn.init.uniform_(p, -0.5, 0.5)
    return zoo.export_onnx(model, path, shape)


def _run_both(path: Path, records_dir: Path, report: list | None = None,
              seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    model = onnx.load(str(path))
    inp = model.graph.input[0]
    shape = [d.dim_value for d in inp.type.tensor_type.shape.dim]
    x = np.random.default_rng(seed).standard_normal(shape).astype("float32")
    ref = reference_session(path).run(
        None, {inp.name: x})[0]
    ex = codegen.build(import_onnx(model), HOST,
                       records_dir=records_dir, report=report)
    dev = tvm.cpu()
    out = relax.VirtualMachine(ex, dev)["main"](tvm.runtime.tensor(x, dev))
    return out.numpy(), ref


class ConvBlock(nn.Module):
    def __init__(self, cin: int, cout: int, k: int, stride: int, pad: int, groups: int,
                 residual: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, pad, groups=groups)
        self.residual = residual

    def forward(self, x):
        y = torch.relu(self.conv(x))
        if self.residual and y.shape == x.shape:
            y = y + x
        return y


@st.composite
def conv_cases(draw):
    kind = draw(st.sampled_from(["dense", "dense", "depthwise", "grouped", "pointwise"]))
    cin = draw(st.sampled_from([1, 3, 8, 16, 24, 37]))
    k = draw(st.sampled_from([1, 3, 5])) if kind != "pointwise" else 1
    stride = draw(st.sampled_from([1, 2]))
    pad = draw(st.integers(0, k // 2))
    hw = draw(st.integers(max(k, 5), 17))
    if kind == "depthwise":
        cout, groups = cin, cin
    elif kind == "grouped":
        cin = draw(st.sampled_from([4, 8, 12, 36]))
        groups = draw(st.sampled_from([2, 4]))
        cout = groups * draw(st.sampled_from([1, 3, 5]))
    else:
        cout, groups = draw(st.sampled_from([5, 8, 16, 37, 40])), 1
    residual = draw(st.booleans())
    return cin, cout, k, stride, pad, groups, hw, residual


@settings(max_examples=12, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(case=conv_cases())
def test_conv_templates_match_onnxruntime(case, tmp_path):
    cin, cout, k, stride, pad, groups, hw, residual = case
    path = _export(ConvBlock(cin, cout, k, stride, pad, groups, residual), (1, cin, hw, hw),
                   tmp_path / f"c_{cin}_{cout}_{k}_{stride}_{pad}_{groups}_{hw}.onnx")
    report: list = []
    out, ref = _run_both(path, tmp_path / "records", report)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4 * max(1.0, float(np.abs(ref).max())))
    fams = {r.family for r in report}
    assert fams & {"conv2d", "conv2d_1x1", "depthwise", "group_conv"}, fams
    assert all(r.source in ("heuristic", "record", "transfer") for r in report), \
        [(r.name, r.source) for r in report]


@pytest.mark.parametrize("net,shape", [
    (zoo.FlattenGemmNet, (1, 1, 8, 8)),
    (zoo.GroupedConvNet, (1, 1, 8, 8)),
    (zoo.MobileNetV2Tiny, (1, 1, 16, 16)),
])
def test_zoo_models_match_onnxruntime(net, shape, tmp_path):
    path = _export(net(), shape, tmp_path / "m.onnx")
    report: list = []
    out, ref = _run_both(path, tmp_path / "records", report)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4 * max(1.0, float(np.abs(ref).max())))
    assert not [r for r in report if r.source in ("fallback", "none")]


class PoolNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Conv2d(3, 16, 3, padding=1)
        self.mp = nn.MaxPool2d(3, 2, 1)
        self.ap = nn.AvgPool2d(2)

    def forward(self, x):
        return self.ap(self.mp(torch.relu(self.c(x)))).mean(dim=(2, 3))


def test_pooling_matches_onnxruntime(tmp_path):
    path = _export(PoolNet(), (1, 3, 20, 20), tmp_path / "p.onnx")
    report: list = []
    out, ref = _run_both(path, tmp_path / "records", report)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
    assert "pool" in {r.family for r in report}


def test_demo_model_and_kernel_workloads(tmp_path):
    demo = demo_paths()[0]
    out, ref = _run_both(demo, tmp_path / "records")
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)
    mod = import_onnx(demo)
    kws = codegen.kernel_workloads(mod, HOST, records_dir=tmp_path / "records")
    convs = [k for k in kws if k.family.startswith("conv2d")]
    assert convs and all(k.macs > 0 and k.layout.startswith("NCHW") for k in convs)
    assert all("ow_tile" in k.params for k in convs)
    fams = {k.family for k in kws}
    # its depthwise conv runs fused with the 1x1 conv after it (templates/dwpw.py)
    assert "dense" in fams and fams & {"depthwise", "dwpw"}


def test_heuristic_reads_the_target_file():
    h_arm = Hardware.from_target(load_target("arm64"))
    assert (h_arm.fp32_lanes, h_arm.vector_registers) == (4, 32)   # from targets/arm64.toml
    h_host = Hardware(fp32_lanes=8, vector_registers=16)             # an AVX2 host
    assert channel_block(h_host) == 8 and channel_block(h_arm) == 8
    assert channel_block(Hardware(fp32_lanes=16, vector_registers=32)) == 16  # AVX-512
    from pfcompile.codegen.templates import Conv2dTemplate, Workload
    from pfcompile.codegen.templates.base import dims_tuple

    dims = {"n": 1, "cin": 64, "cout": 64, "ih": 60, "iw": 60, "kh": 3, "kw": 3, "sh": 1,
            "sw": 1, "dh": 1, "dw": 1, "pt": 1, "pl": 1, "pb": 1, "pr": 1, "groups": 1,
            "ib": 8, "ob": 8, "oh": 60, "ow": 60}
    wl = Workload("conv2d", dims_tuple(dims), 1, "NCHW8c->NCHW8c")
    p_host = Conv2dTemplate().heuristic(wl, h_host)
    p_arm = Conv2dTemplate().heuristic(wl, h_arm)
    # fewest loads per FMA with accumulators + live input broadcasts ≤ the register file
    # and a width tile that divides 60. AVX2 (one vector per 8 channels, 16 registers):
    # 3 columns x 4 channel chunks = 12 accumulators + 3 broadcasts = 15, 7 loads / 12 FMAs
    assert (p_host.ow_tile, p_host.oc_tile) == (3, 4)
    # NEON (two vectors per 8 channels, 32 registers): 6 x 2 = 24 accumulators + 6 = 30
    assert (p_arm.ow_tile, p_arm.oc_tile) == (6, 2)
    for p, h in ((p_host, h_host), (p_arm, h_arm)):
        vpo = 8 // h.fp32_lanes
        assert p.ow_tile * p.oc_tile * vpo + p.ow_tile <= h.vector_registers


def test_records_are_used_and_transferred(tmp_path):
    demo = demo_paths()[0]
    mod = import_onnx(demo)
    rdir = tmp_path / "records"
    kws = codegen.kernel_workloads(mod, HOST, records_dir=rdir)
    def peers(c) -> int:
        return sum(k.family == "conv2d" and all(k.dims[x] == c.dims[x] for x in
                   ("kh", "kw", "sh", "ib", "ob", "groups")) for k in kws)

    # the conv with the most same-shape-class peers (kernel order is not fixed)
    conv = max((k for k in kws if k.family == "conv2d"), key=peers)
    db = RecordDB(records_path(rdir, HOST.name))
    params = dict(conv.params, ow_tile=3)
    db.add(Record(conv.key, conv.family, conv.dims, params, 0.01, HOST.name, trials=4))
    assert records_path(rdir, HOST.name).read_text().count("\n") == 1
    again = {k.key: k for k in codegen.kernel_workloads(mod, HOST, records_dir=rdir)}
    assert again[conv.key].source == "record" and again[conv.key].params["ow_tile"] == 3
    # a same-shape-class conv with other channel counts starts from the record
    others = [k for k in again.values() if k.family == "conv2d" and k.key != conv.key
              and all(k.dims[x] == conv.dims[x] for x in ("kh", "kw", "sh", "ib", "ob", "groups"))]
    assert others and all(k.source == "transfer" for k in others)
    # and the compiled model is still right
    out, ref = _run_both(demo, rdir)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)


def test_bad_record_file_names_the_line(tmp_path):
    p = records_path(tmp_path, "host")
    p.parent.mkdir(parents=True)
    p.write_text('{"workload": "x"}\n')
    from pfcompile.errors import ConfigError

    with pytest.raises(ConfigError, match="records.jsonl:1"):
        RecordDB(p)


def test_arm64_cross_build_compiles():
    """The same templates compile for NEON (4 lanes); run on the emulated device in
    tests/test_codegen_device.py."""
    path = demo_paths()[0]
    mod = import_onnx(path)
    report: list = []
    ex = codegen.build(mod, load_target("arm64"), report=report, records_dir=None)
    assert ex is not None
    assert not [r for r in report if r.source in ("fallback", "none")]


def test_build_error_is_compile_error():
    mod = tvm.IRModule()
    with pytest.raises(CompileError, match="Relax IRModule"):
        codegen.build(mod, HOST)


def test_half_vector_channel_chunks_stay_vectorized_on_wide_targets():
    """A pruned 8-channel layer on a 16-lane AVX-512 target: the channel chunk
    (NCHW8c) is vectorized as a half vector, not by gathering along the width
    (that schedule was measured 20x slower than the half-vector one)."""
    from pfcompile.codegen.templates import Conv2dTemplate, Workload
    from pfcompile.codegen.templates.base import dims_tuple, vector_chunk

    avx512 = Hardware(fp32_lanes=16, vector_registers=32)
    assert vector_chunk(8, avx512) and vector_chunk(4, avx512) and vector_chunk(32, avx512)
    assert not vector_chunk(2, avx512) and not vector_chunk(12, avx512)
    dims = {"n": 1, "cin": 8, "cout": 8, "ih": 32, "iw": 32, "kh": 3, "kw": 3, "sh": 1,
            "sw": 1, "dh": 1, "dw": 1, "pt": 1, "pl": 1, "pb": 1, "pr": 1, "groups": 1,
            "ib": 8, "ob": 8, "oh": 32, "ow": 32}
    wl = Workload("conv2d", dims_tuple(dims), 1, "NCHW8c->NCHW8c")
    # one (half) vector per accumulator: the register budget bounds the width tile
    assert Conv2dTemplate().heuristic(wl, avx512).ow_tile <= 30


def test_avx512_1x1_tiles_count_weight_registers_and_short_reductions():
    """AVX-512 (32 registers): a 1x1 conv's tile leaves room for the oc_tile weight
    vectors (6 x 4 = 24 accumulators + 6 broadcasts + 4 weights spilled: 1.1-1.7x the
    7 x 2 tile), and a short reduction (≤ 32 input channels) takes 4 x 1; AVX2's
    choices for the same convs stay as measured there (3 x 4, 4 x 2)."""
    from pfcompile.codegen.templates import Conv2dTemplate, Workload
    from pfcompile.codegen.templates.base import dims_tuple

    def wl(cin: int, cout: int, hw_: int, blk: int) -> Workload:
        dims = {"n": 1, "cin": cin, "cout": cout, "ih": hw_, "iw": hw_, "kh": 1, "kw": 1,
                "sh": 1, "sw": 1, "dh": 1, "dw": 1, "pt": 0, "pl": 0, "pb": 0, "pr": 0,
                "groups": 1, "ib": blk, "ob": blk, "oh": hw_, "ow": hw_}
        return Workload("conv2d_1x1", dims_tuple(dims), 1, f"NCHW{blk}c->NCHW{blk}c")

    t = Conv2dTemplate()
    avx512 = Hardware(fp32_lanes=16, vector_registers=32)
    avx2 = Hardware(fp32_lanes=8, vector_registers=16)
    for cin, cout, hw_ in ((960, 320, 7), (384, 64, 14)):
        p = t.heuristic(wl(cin, cout, hw_, 16), avx512)
        assert (p.ow_tile, p.oc_tile) == (7, 2)
        assert p.ow_tile * p.oc_tile + p.ow_tile + p.oc_tile <= avx512.vector_registers
    p = t.heuristic(wl(16, 96, 112, 16), avx512)
    assert (p.ow_tile, p.oc_tile) == (4, 1)
    for (cin, cout, hw_), tile in (((960, 320, 7), (3, 4)), ((16, 96, 112), (4, 2))):
        q = t.heuristic(wl(cin, cout, hw_, 8), avx2)
        assert (q.ow_tile, q.oc_tile) == tile


def test_rgb_input_conv_reads_nchw3c_and_avx512_depthwise_rows_of_four():
    """A 3-channel first conv takes NCHW3c (NCHW1c left the PP-OCR classifier's convs
    unblocked, see codegen.layout); AVX-512 depthwise rows whose width divides by 4 use
    4-wide tiles."""
    from pfcompile.codegen.layout import conv_layouts
    from pfcompile.codegen.templates import Workload
    from pfcompile.codegen.templates.base import dims_tuple
    from pfcompile.codegen.templates.depthwise import DepthwiseTemplate

    assert conv_layouts(3, 32, 1, 16) == ["NCHW3c", "OIHW3i16o", "NCHW16c"]
    assert conv_layouts(16, 32, 1, 16) == ["NCHW16c", "OIHW16i16o", "NCHW16c"]
    dims = {"n": 1, "cin": 144, "cout": 144, "ih": 56, "iw": 56, "kh": 3, "kw": 3, "sh": 1,
            "sw": 1, "dh": 1, "dw": 1, "pt": 1, "pl": 1, "pb": 1, "pr": 1, "groups": 144,
            "ib": 16, "ob": 16, "oh": 56, "ow": 56}
    wl = Workload("depthwise", dims_tuple(dims), 1, "NCHW16c")
    assert DepthwiseTemplate().heuristic(wl, Hardware(fp32_lanes=16, vector_registers=32)).ow_tile == 4
    wl8 = Workload("depthwise", dims_tuple(dict(dims, ib=8, ob=8)), 1, "NCHW8c")
    assert DepthwiseTemplate().heuristic(wl8, Hardware(fp32_lanes=8, vector_registers=16)).ow_tile == 7
    seven = Workload("depthwise", dims_tuple(dict(dims, ih=7, iw=7, oh=7, ow=7)), 1, "NCHW16c")
    assert DepthwiseTemplate().heuristic(seven, Hardware(fp32_lanes=16, vector_registers=32)).ow_tile == 7
