"""`pfcompile run` on the FPGA-style targets: the accelerator deployer, the simulator as a
search device over real TVM RPC (ports 9550-9599), and the loop end to end on the demo."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest

from pfcompile.accel import compile_accel, load_accel_config
from pfcompile.accel.mixed import set_layer_bits
from pfcompile.errors import SearchError
from pfcompile.search.accel_device import (
    AccelDeployer,
    AccelSearchDevice,
    accel_kernels,
    bits_of_config,
)
from pfcompile.search.graph import Kernel
from pfcompile.search.space import Knob, SearchSpace, build_space
from pfcompile.targets import load_target

TARGET = "fpga-bitfusion"


@pytest.fixture(scope="module")
def deployer(demo):
    calib = demo.calib
    return AccelDeployer(load_target(TARGET), calib, calib_samples=16)


@pytest.fixture(scope="module")
def qdq8(demo, deployer):
    model = demo.model
    space = build_space(model, load_target(TARGET).hardware)
    return deployer.candidate(model, space, space.default(), None, 16)


@pytest.fixture(scope="module")
def server():
    from pfcompile.device import free_port, serve
    from pfcompile.targets import load_target

    srv = serve(load_target(TARGET), "127.0.0.1", free_port("127.0.0.1", 9550, 9569))
    yield srv
    srv.stop()


@pytest.fixture(autouse=True)
def _records_in_tmp(tmp_path, monkeypatch):
    """Tiling records of pruned workloads go to a temporary cache folder."""
    monkeypatch.setenv("PFCOMPILE_CACHE", str(tmp_path / "cache"))


def test_kernels_carry_widths_and_unsupported_layers_leave(demo):
    model = demo.model
    cfg = load_accel_config(TARGET)
    ks = accel_kernels(model, {}, cfg)
    assert [k.op for k in ks].count("gemm") == 1 and len(ks) == 11   # dw conv stays on host
    assert all(k.bits == 8 and k.abits == 8 for k in ks)
    first, second = ks[0].nodes[0], ks[1].nodes[0]
    mixed = accel_kernels(model, {first: (4, 2), second: (16, 8)}, cfg)
    assert len(mixed) == 10 and second not in {k.nodes[0] for k in mixed}
    assert (mixed[0].bits, mixed[0].abits) == (4, 2) and mixed[0].key != ks[0].key
    assert Kernel.from_json(mixed[0].to_json()).key == mixed[0].key
    # kernels without abits keep their old workload keys (CPU runs resume unchanged)
    assert "|a" not in Kernel.from_json({**ks[0].to_json(), "abits": None}).key


def test_bits_knobs_of_a_config(deployer):
    knobs = (Knob("keep:g", "keep", "g", (8, 16), 16, 16),
             Knob("bits:c1", "bits", "c1", (2, 4, 8), 8),
             Knob("bits:c2", "bits", "c2", ((4, 8), (8, 8)), (8, 8)),
             Knob("bits:c3", "bits", "c3", (32, 8, 4, 2), 32))
    space = SearchSpace(knobs)
    assert bits_of_config(space, {**space.default(), "bits:c3": 8}) == {}
    assert bits_of_config(space, {"keep:g": 8, "bits:c1": 4, "bits:c2": (4, 8)}) == \
        {"c1": (4, 4), "c2": (4, 8)}
    # on the accelerator every layer is quantized: the float choice goes, 8 is the default
    adapted = deployer.adapt_space(space)
    c3 = next(k for k in adapted.knobs if k.name == "bits:c3")
    assert c3.choices == (8, 4, 2) and c3.default == 8
    assert adapted.knobs[:3] == space.knobs[:3]
    with pytest.raises(SearchError, match="bits:c4"):
        deployer.adapt_space(SearchSpace((Knob("bits:c4", "bits", "c4", (32, 16), 32),)))


def test_kernel_times_are_the_programs_simulated_cycles(demo, deployer, qdq8):
    """Per-layer kernel times from the device sum to the compiled program's simulated
    accelerator time, for the 8-bit baseline and for a mixed-width candidate."""
    model = demo.model
    tgt = load_target(TARGET)
    dev = AccelSearchDevice(tgt)
    cfg = load_accel_config(TARGET)
    ks = accel_kernels(model, {}, cfg)
    times = dev.measure_kernels(ks)
    assert all(t is not None and t > 0 for t in times)
    assert sum(times) == pytest.approx(compile_accel(qdq8, cfg).accel_ms, rel=1e-9)
    bits = {ks[1].nodes[0]: (2, 4), ks[4].nodes[0]: (4, 8)}
    low = accel_kernels(model, bits, cfg)
    prog = compile_accel(set_layer_bits(qdq8, bits, model), cfg)
    assert sum(dev.measure_kernels(low)) == pytest.approx(prog.accel_ms, rel=1e-9)
    assert prog.accel_ms < compile_accel(qdq8, cfg).accel_ms
    assert dev.measure_kernels([Kernel("maxpool", (1, 8, 8, 8), (), (1, 8, 4, 4))]) == [None]


def test_device_measures_and_verifies_over_rpc(server, qdq8, tmp_path):
    dev = AccelSearchDevice(load_target(TARGET), port=server.port)
    m = dev.measure_model(qdq8, tmp_path / "a")
    assert m.ok, m.error
    d = m.details
    assert d["simulated"] is True and dev.simulated and not dev.emulated
    assert d["layers_on_accel"] == 11 and d["host_fallbacks"] == {
        "/dw/dw.0/dw.0.0/Conv": "grouped / depthwise conv"}
    assert m.latency_ms == pytest.approx(d["accel_ms_simulated"] + d["host_ms_measured"])
    assert d["accel_ms_simulated"] == pytest.approx(
        compile_accel(qdq8, load_accel_config(TARGET)).accel_ms)
    assert m.max_abs_diff <= d["tolerance"]
    assert Path(m.so_path).name == "program.npz" and Path(m.so_path).exists()
    only = AccelSearchDevice(load_target(TARGET), port=server.port, latency="accel")
    assert only.measure_model(qdq8, tmp_path / "a").latency_ms == d["accel_ms_simulated"]


def test_unsupported_width_falls_back_to_host_with_a_warning(server, demo, qdq8, tmp_path):
    """Issue 8's bad-input rule inside the search: a 16-bit layer runs on the host, the
    run says so, and the candidate still verifies against onnxruntime."""
    model = demo.model
    layer = "/b1/c1/c1.0/Conv"
    cand = set_layer_bits(qdq8, {layer: (16, 8)}, model)
    dev = AccelSearchDevice(load_target(TARGET), port=server.port)
    with pytest.warns(UserWarning, match=f"layer '{layer}'.*runs on the host"):
        m = dev.measure_model(cand, tmp_path / "b")
    assert m.ok, m.error
    assert m.details["layers_on_accel"] == 10 and layer in m.details["host_fallbacks"]
    assert layer not in {k.nodes[0] for k in accel_kernels(model, {layer: (16, 8)},
                                                           load_accel_config(TARGET))}


def test_dead_device_is_a_failed_measurement(qdq8, tmp_path):
    dev = AccelSearchDevice(load_target(TARGET), port=9598)
    m = dev.measure_model(qdq8, tmp_path / "c")
    assert not m.ok and "is unreachable" in m.error and dev.failures == 1


def test_run_on_fpga_bitfusion_end_to_end(tmp_path):
    """`pfcompile run --target fpga-bitfusion --bits auto` (api.run, demo, budget 2):
    starts its own simulator server, searches channels and per-layer widths, writes DIST
    with the QDQ model and program.npz, and every latency is labelled simulated."""
    from pfcompile.search import DeviceSpec, RunConfig, SearchSettings, run

    out = tmp_path / "dist"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rep = run(RunConfig(target=TARGET,
                            settings=SearchSettings(budget=2, batch=2, pool=4, bits="auto"),
                            out_dir=out, cache_dir=tmp_path / "cache",
                            device=DeviceSpec(port_range=(9570, 9599)), final_repeats=1))
    assert rep["simulated"] is True and rep["emulated"] is False
    assert "SIMULATED" in rep["note"]
    b = rep["baseline"]
    assert b["accel_ms_simulated"] > 0 and b["host_ms_measured"] > 0
    assert b["latency_ms"] == pytest.approx(b["accel_ms_simulated"] + b["host_ms_measured"])
    trials = [json.loads(x) for x in (out / "run" / "trials.jsonl").read_text().splitlines()]
    done = [t for t in trials if t["type"] == "trial"]
    assert len(done) == 2 and all(t["status"] == "ok" and t["simulated"] for t in done)
    # bits knobs: one per Conv/Gemm, only the widths the accelerator runs (no float 32)
    bits_knobs = {k: v for t in done for k, v in t["config"].items() if k.startswith("bits:")}
    assert len(bits_knobs) == 12 and set(bits_knobs.values()) <= {2, 4, 8}
    assert rep["search_space"]["knobs"] == 7 + 12
    # kernels timed on the simulator carry both widths (the loop seeds the narrowest, 2x2)
    kern = [k["kernel"] for t in trials if t["type"] == "kernels" for k in t["items"]]
    assert {(k["bits"], k["abits"]) for k in kern} >= {(8, 8), (2, 2)}
    files = {p.name for p in out.iterdir()}
    assert {"model.onnx", "program.npz", "model.json", "report.json", "report.html"} <= files
    assert "model.so" not in files
    deployed = onnx.load(str(out / "model.onnx"))
    assert any(n.op_type == "QuantizeLinear" for n in deployed.graph.node)
    meta = json.loads((out / "model.json").read_text())
    assert meta["library"] == "program.npz" and meta["target"]["name"] == TARGET
    assert "SIMULATED" in (out / "report.html").read_text()
    x = np.zeros((1, 1, 32, 32), np.float32)
    from pfcompile.accel import load_program

    y, stats = load_program(out / "program.npz").run({"input": x})
    assert stats.accel_cycles > 0 and next(iter(y.values())).shape == (1, 10)
