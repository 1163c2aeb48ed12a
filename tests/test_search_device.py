"""The search over real TVM RPC (slow): the host device dying mid-run, and the
emulated arm64 device end to end. Ports 9450-9499 only."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from pfcompile.data import load_npz
from pfcompile.device import free_port, serve
from pfcompile.model import input_specs, load_onnx
from pfcompile.paths import demo_paths
from pfcompile.search import DeviceSpec, RunConfig, run
from pfcompile.search.devices import RPCDevice
from pfcompile.search.loop import SearchSettings, run_search
from pfcompile.targets import load_target

ARM64_DIR = Path.home() / ".cache" / "pfcompile" / "arm64-device"


@pytest.mark.slow
def test_rpc_device_killed_mid_run_gives_failed_trials(tmp_path):
    m = load_onnx(demo_paths()[0])
    d = load_npz(demo_paths()[1], input_specs(m)).subset(64)
    host = load_target("host")
    srv = serve(host, "127.0.0.1", free_port("127.0.0.1", 9450, 9474))
    dev = RPCDevice(host, port=srv.port, number=2, repeat=2, min_repeat_ms=0)

    def kill_after_first(kind, info):
        if kind == "trial" and info["id"] == 0:
            srv.stop()

    try:
        r = run_search(m, host, dev, d, tmp_path / "run",
                       # one candidate a round: the kill lands between two measurements
                       SearchSettings(strategy="uniform", budget=3, batch=1, max_acc_drop=5.0),
                       on_event=kill_after_first)
    finally:
        srv.stop()
    assert r.baseline["latency_ms"] > 0
    assert [t["status"] for t in r.trials] == ["ok", "failed", "failed"]
    assert all("device 127.0.0.1" in t["error"] for t in r.trials[1:])
    assert Path(r.trials[0]["so_path"]).exists()


def test_paired_timing_and_kernel_primfuncs(tmp_path):
    """Candidates are timed alternating with the reference (the unmodified model) in
    one session; kernels are their fused PrimFuncs, timed against the reference kernel."""
    from pfcompile.search.devices import REFERENCE_KERNEL, kernel_primfuncs
    from pfcompile.search.graph import extract_kernels
    from pfcompile.search.space import build_space, compress

    m = load_onnx(demo_paths()[0])
    host = load_target("host")
    space = build_space(m, host.hardware)
    small = compress(m, space, space.uniform(0.5))
    ks = extract_kernels(small)
    conv = next(k for k in ks if k.op == "conv" and k.kernel == (3, 3))
    assert len(kernel_primfuncs(conv, host)) == 1   # conv + bias + ReLU fused, no edge transforms
    srv = serve(host, "127.0.0.1", free_port("127.0.0.1", 9450, 9474))
    try:
        dev = RPCDevice(host, port=srv.port, repeat=3, min_repeat_ms=5)
        unpaired = dev.measure_model(small, tmp_path / "a")
        assert unpaired.ok and not unpaired.paired
        ref = dev.set_reference(m, tmp_path / "ref")
        assert ref.ok and ref.latency_ms == ref.raw_ms
        paired = dev.measure_model(small, tmp_path / "a")
        assert paired.ok and paired.paired and paired.raw_ms > 0
        assert paired.max_abs_diff is not None          # verified against onnxruntime
        again = dev.measure_model(m, tmp_path / "ref")  # the reference against itself
        # structure only: paired, scaled by the reference, a finite positive ratio. How close
        # the ratio is to 1 is a timing on a shared machine (tools/bench_measure.py), not a test
        assert again.ok and again.paired
        assert math.isfinite(again.latency_ms / ref.latency_ms) and again.latency_ms > 0
        times = dev.measure_kernels([conv, REFERENCE_KERNEL])
        assert dev.kernel_reference_ms > 0 and math.isfinite(dev.kernel_reference_ms)
        assert all(t is not None and t > 0 and math.isfinite(t) for t in times)
    finally:
        srv.stop()


def test_paired_rounds_alternate_reference_and_candidate():
    """ABBA rounds: the reference first in even rounds, the candidate first in odd ones;
    each round gives the candidate's ms and its ratio to the reference."""
    from pfcompile.runner import RPCRunner
    from pfcompile.targets import MeasureSettings

    calls: list[str] = []

    class _Timed:
        def __init__(self, mean: float) -> None:
            self.mean = mean

    class _VM:
        def __init__(self, tag: str, secs: float) -> None:
            self.tag, self.secs = tag, secs

        def stateful_timer(self, *args, **kwargs):   # as pfcompile.deploy.Deployed
            def run() -> _Timed:
                calls.append(self.tag)
                return _Timed(self.secs)
            return run

    raw, ratios = RPCRunner(device="127.0.0.1:1").evaluate_paired(
        _VM("c", 0.002), _VM("r", 0.004), None, MeasureSettings(repeat=4, min_repeat_ms=0))
    assert calls == ["r", "c", "c", "r", "r", "c", "c", "r"]
    assert raw == pytest.approx([2.0] * 4) and ratios == pytest.approx([0.5] * 4)


def test_rpc_device_verifies_every_output_of_a_two_output_model(tmp_path):
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 8]) for n in ("y1", "y2")]
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y1"]),
                           helper.make_node("Neg", ["x"], ["y2"])], "two", [x], outs)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    host = load_target("host")
    srv = serve(host, "127.0.0.1", free_port("127.0.0.1", 9450, 9474))
    try:
        r = RPCDevice(host, port=srv.port, repeat=2, min_repeat_ms=1).measure_model(m, tmp_path / "a")
    finally:
        srv.stop()
    assert r.ok, r.error
    assert r.max_abs_diff == 0.0   # both outputs read back over RPC and compared


@pytest.mark.slow
@pytest.mark.skipif(not (ARM64_DIR / ".stamp").exists() or not shutil.which("aarch64-linux-gnu-g++")
                    or not shutil.which("qemu-aarch64"),
                    reason="emulated arm64 device not set up (tools/setup_arm64_device.sh)")
def test_arm64_end_to_end_on_emulated_device(tmp_path):
    srv = serve(load_target("arm64"), "127.0.0.1", free_port("127.0.0.1", 9475, 9499),
                device_dir=ARM64_DIR)
    try:
        rep = run(RunConfig(
            target="arm64", device=DeviceSpec(device=f"127.0.0.1:{srv.port}"),
            out_dir=tmp_path / "dist",
            # "most accurate within a latency budget": qemu latencies are functional
            # only, so the one candidate need not beat the original to be reported
            settings=SearchSettings(strategy="uniform", budget=1, max_acc_drop=100.0,
                                    latency_ms=1e6),
            cache_dir=tmp_path / "cache", final_repeats=1))
    finally:
        srv.stop()
    saved = json.loads((tmp_path / "dist" / "report.json").read_text())
    assert saved == json.loads(json.dumps(rep))
    assert rep["emulated"] is True and "emulated" in rep["note"]
    assert rep["trials"] == 1 and rep["device_measurements"] == 1
    assert rep["remeasured"]["repeats"] == 1 and rep["remeasured"]["best_ms"] > 0
    assert rep["best"] is not None and rep["best"]["latency_ms"] > 0
    so = (tmp_path / "dist" / "model.so").read_bytes()
    assert so[:4] == b"\x7fELF" and so[18] == 183  # e_machine = EM_AARCH64
    assert "EMULATED" in (tmp_path / "dist" / "report.html").read_text()
