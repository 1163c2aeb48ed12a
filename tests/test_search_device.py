"""The search over real TVM RPC (slow): the host device dying mid-run, and the
emulated arm64 device end to end. Ports 9450-9499 only."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pfcompile.data import load_npz
from pfcompile.device import free_port, serve
from pfcompile.model import input_specs, load_onnx
from pfcompile.search.api import demo_paths, run
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
                       SearchSettings(strategy="uniform", budget=3, max_acc_drop=5.0),
                       on_event=kill_after_first)
    finally:
        srv.stop()
    assert r.baseline["latency_ms"] > 0
    assert [t["status"] for t in r.trials] == ["ok", "failed", "failed"]
    assert all("device 127.0.0.1" in t["error"] for t in r.trials[1:])
    assert Path(r.trials[0]["so_path"]).exists()


@pytest.mark.slow
@pytest.mark.skipif(not (ARM64_DIR / ".stamp").exists() or not shutil.which("aarch64-linux-gnu-g++")
                    or not shutil.which("qemu-aarch64"),
                    reason="emulated arm64 device not set up (tools/setup_arm64_device.sh)")
def test_arm64_end_to_end_on_emulated_device(tmp_path):
    srv = serve(load_target("arm64"), "127.0.0.1", free_port("127.0.0.1", 9475, 9499),
                device_dir=ARM64_DIR)
    try:
        rep = run(None, "arm64", device=f"127.0.0.1:{srv.port}", out_dir=tmp_path / "dist",
                  # "most accurate within a latency budget": qemu latencies are functional
                  # only, so the one candidate need not beat the original to be reported
                  settings=SearchSettings(strategy="uniform", budget=1, max_acc_drop=100.0,
                                          latency_ms=1e6),
                  cache_dir=tmp_path / "cache", final_repeats=1)
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
