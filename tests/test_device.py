"""Devices, runners and measurement on the host over loopback RPC (ports 9100-9199).

Real processes throughout: a tracker + server (LocalRPC), a LocalRunner's own
server, and a server started through ``pfcompile device serve``. Bad input: an
unreachable tracker, a device killed mid-measurement, a hung device.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from pfcompile.device import LocalRPC, connect, free_port, query
from pfcompile.errors import ConfigError, DeviceError, ModelError
from pfcompile.measure import measure, verify
from pfcompile.runner import LocalRunner, NullRunner, RPCRunner, RunnerResult
from pfcompile.targets import MeasureSettings, load_target
from tests.device_helpers import compile_tiny, tiny_model

JSON_FIELDS = {"median_ms", "latencies_ms", "verified", "max_abs_err", "device", "target",
               "emulated"}


@pytest.fixture(scope="module")
def host_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return compile_tiny(tiny_model(), load_target("host"),
                        tmp_path_factory.mktemp("tiny") / "host")


@pytest.fixture(scope="module")
def local_runner():
    with LocalRunner() as r:
        yield r


def _wait_log(path: Path, needle: str, timeout_s: float, count: int = 1) -> None:
    """Wait until *needle* occurs *count* times in the log at *path*."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.read_text(errors="replace").count(needle) >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"'{needle}' not {count}x in {path} after {timeout_s} s")


def _loads(server) -> int:
    return server.log_path.read_text(errors="replace").count("load_module")


# -- the real RPC path ----------------------------------------------------------------------

def test_measure_via_tracker_verified(host_artifact: Path, fast_measure) -> None:
    with LocalRPC(key="pfc-test", n_servers=1) as lrpc:
        devices = query(lrpc.tracker_addr)
        assert [(d.key, d.total) for d in devices] == [("pfc-test", 1)]
        listed = subprocess.run([sys.executable, "-m", "pfcompile", "device", "list", "--rpc",
                                 lrpc.tracker_addr, "--json"], capture_output=True, text=True,
                                timeout=120, check=False)
        assert listed.returncode == 0, listed.stderr
        assert [(d["key"], d["total"], d["servers"]) for d in json.loads(listed.stdout)] == [
            ("pfc-test", 1, [lrpc.servers[0].addr])]
        res = measure(host_artifact, "host", rpc=lrpc.tracker_addr, key="pfc-test",
                      settings=fast_measure)
    assert JSON_FIELDS <= set(res)
    assert res["verified"] is True, res["detail"]
    assert 0.0 <= res["max_abs_err"] < 1e-4
    assert len(res["latencies_ms"]) == fast_measure.repeat
    assert all(x > 0 for x in res["latencies_ms"])
    assert res["median_ms"] == sorted(res["latencies_ms"])[1]
    assert res["target"] == "host" and res["emulated"] is False
    assert res["device"] == f"pfc-test@{lrpc.tracker_addr}"
    # the context tore its processes down
    assert not any(s.alive() for s in lrpc.servers) and not lrpc.tracker.alive()


def test_local_runner_outputs_match_onnxruntime(host_artifact: Path, local_runner,
                                                fast_measure) -> None:
    """No --rpc/--device: a host server of its own; outputs by name, equal to ORT."""
    res = measure(host_artifact, "host", settings=fast_measure, runner=local_runner)
    assert res["verified"] is True and res["max_abs_err"] < 1e-4
    raw = local_runner.run(host_artifact, {"x": np.zeros((1, 3, 8, 8), np.float32)}, fast_measure)
    assert raw.ok and set(raw.outputs) == {"y", "p"}
    np.testing.assert_allclose(raw.outputs["p"].sum(), 1.0, rtol=1e-5)  # softmax row
    # a run that fails on the device is an error value; the same server serves the next run
    server = local_runner.server
    bad = local_runner.run(host_artifact, {"x": np.zeros((1, 3, 4, 4), np.float32)}, fast_measure)
    assert bad.error_kind == "run" and "step 'run'" in bad.error and "mismatch" in bad.error
    assert local_runner.run(host_artifact, {"x": np.ones((1, 3, 8, 8), np.float32)},
                            fast_measure).ok
    assert local_runner.server is server and server.alive()


def test_device_killed_mid_measurement_is_an_error_result(host_artifact: Path, local_runner,
                                                          fast_measure) -> None:
    local_runner.run(host_artifact, {"x": np.zeros((1, 3, 8, 8), np.float32)}, fast_measure)
    server = local_runner.server
    long = MeasureSettings(number=1, repeat=1, min_repeat_ms=20_000, timeout_s=60)
    box: dict[str, RunnerResult] = {}
    th = threading.Thread(target=lambda: box.update(r=local_runner.run(
        host_artifact, {"x": np.ones((1, 3, 8, 8), np.float32)}, long)))
    t0 = time.monotonic()
    seen = _loads(server)
    th.start()
    _wait_log(server.log_path, "load_module", 30, seen + 1)  # uploaded and loaded: kill it
    time.sleep(1.0)
    server.kill()
    th.join(30)
    assert not th.is_alive(), "the caller was left hanging by a dead device"
    res = box["r"]
    assert res.error is not None and res.latencies_ms is None
    assert res.error_kind == "device", res.error
    assert server.addr in res.error and "went away during step" in res.error
    assert time.monotonic() - t0 < 30
    # the runner survives and serves the next run on a fresh server
    again = local_runner.run(host_artifact, {"x": np.ones((1, 3, 8, 8), np.float32)}, fast_measure)
    assert again.ok, again.error
    assert local_runner.server.port != server.port or local_runner.server is not server


def test_hung_device_times_out_as_an_error_result(host_artifact: Path, local_runner,
                                                  fast_measure) -> None:
    local_runner.run(host_artifact, {"x": np.zeros((1, 3, 8, 8), np.float32)}, fast_measure)
    server = local_runner.server
    long = MeasureSettings(number=1, repeat=1, min_repeat_ms=20_000, timeout_s=4)
    box: dict[str, RunnerResult] = {}
    th = threading.Thread(target=lambda: box.update(r=local_runner.run(
        host_artifact, {"x": np.ones((1, 3, 8, 8), np.float32)}, long)))
    seen = _loads(server)
    local_runner.connect_timeout_s = 5.0  # deadline = 5 + 4 s
    th.start()
    try:
        _wait_log(server.log_path, "load_module", 30, seen + 1)
        os.killpg(server.proc.pid, signal.SIGSTOP)  # the device hangs (our own process group)
        th.join(60)
        assert not th.is_alive()
    finally:
        local_runner.connect_timeout_s = 30.0
        server.stop()  # SIGTERM + SIGCONT, then SIGKILL
    res = box["r"]
    assert res.error_kind == "timeout", res.error
    assert "within" in res.error and res.latencies_ms is None
    assert res.elapsed_s < 5.0 + long.timeout_s + 5


def test_runs_use_the_deployment_threads_unless_told(host_artifact: Path, local_runner,
                                                     fast_measure) -> None:
    """model.json records the target's num-cores as the deployment threads; every run
    sets the device's pool to them (or to ``threads``), and the result says how many ran."""
    from pfcompile.deploy import deployment_threads

    meta = json.loads((host_artifact / "model.json").read_text())
    assert meta["threads"] == deployment_threads(load_target("host")) == (os.cpu_count() or 1)
    assert deployment_threads(load_target("arm64")) == min(4, os.cpu_count() or 1)  # emulated
    res = measure(host_artifact, "host", settings=fast_measure, runner=local_runner)
    assert res["verified"] and res["threads"] == res["deployment_threads"] == meta["threads"]
    one = measure(host_artifact, "host", settings=fast_measure,
                  runner=RPCRunner(device=local_runner.server.addr, threads=1))
    assert one["verified"] and one["threads"] == 1 and one["deployment_threads"] == meta["threads"]
    # this process: TVM sizes its pool at first use, so the variable is set before that
    code = ("from pfcompile.deploy import set_threads; import tvm; "
            "print(set_threads(2), tvm.get_global_func('runtime.NumThreads')())")
    env = {k: v for k, v in os.environ.items() if k != "TVM_NUM_THREADS"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True, env=env)
    assert out.stdout.split() == ["2", "2"]


@pytest.mark.slow  # three more Python processes that import tvm (~7 s each on an idle core)
def test_cli_serve_and_measure_direct_device(host_artifact: Path, tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "serve.log"
    with open(log, "wb") as fh:
        cli = subprocess.Popen([sys.executable, "-m", "pfcompile", "device", "serve",
                                "--target", "host", "--port", str(port)],
                               stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_log(log, "serving target 'host' at 127.0.0.1:", 90)
        out = subprocess.run(
            [sys.executable, "-m", "pfcompile", "measure", str(host_artifact), "--target",
             "host", "--device", f"127.0.0.1:{port}", "--json", "--number", "1", "--repeat",
             "2", "--min-repeat-ms", "0", "--log", str(tmp_path / "m.jsonl")],
            capture_output=True, text=True, timeout=120, check=False)
        assert out.returncode == 0, out.stderr
        res = json.loads(out.stdout)
        logged = [json.loads(ln) for ln in (tmp_path / "m.jsonl").read_text().splitlines()]
        assert len(logged) == 1 and logged[0]["artifact"] == str(host_artifact)
        assert logged[0]["latencies_ms"] == res["latencies_ms"]
        assert JSON_FIELDS <= set(res)
        assert res["verified"] is True and res["device"] == f"127.0.0.1:{port}"
        assert len(res["latencies_ms"]) == 2 and res["median_ms"] > 0
    finally:
        cli.send_signal(signal.SIGTERM)
        code = cli.wait(30)
    assert code == 0 and "stopped" in log.read_text()
    with pytest.raises(DeviceError, match=f"127.0.0.1:{port}"):  # its rpc_server is gone too
        connect(device=f"127.0.0.1:{port}", timeout_s=5)


# -- bad input ------------------------------------------------------------------------------

def test_unreachable_tracker_is_a_clear_error_within_bounded_time(host_artifact: Path,
                                                                  fast_measure) -> None:
    port = free_port()
    t0 = time.monotonic()
    with pytest.raises(DeviceError, match=f"tracker 127.0.0.1:{port} is unreachable"):
        connect(rpc=f"127.0.0.1:{port}", key="host", timeout_s=5)
    with pytest.raises(DeviceError, match=f"127.0.0.1:{port}"):
        query(f"127.0.0.1:{port}", timeout_s=5)
    res = RPCRunner(rpc=f"127.0.0.1:{port}", key="host").run(host_artifact, {}, fast_measure)
    assert res.error_kind == "device" and f"127.0.0.1:{port}" in res.error
    assert time.monotonic() - t0 < 15


def test_blackholed_tracker_times_out_within_bound() -> None:
    t0 = time.monotonic()
    with pytest.raises(DeviceError, match="10.255.255.1:9190"):
        connect(rpc="10.255.255.1:9190", key="host", timeout_s=2)
    assert time.monotonic() - t0 < 6


def test_cli_device_list_unreachable_exits_2() -> None:
    port = free_port()
    out = subprocess.run([sys.executable, "-m", "pfcompile", "device", "list", "--rpc",
                          f"127.0.0.1:{port}", "--timeout", "3"],
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 2
    assert f"127.0.0.1:{port}" in out.stderr and "unreachable" in out.stderr


def test_bad_addresses_and_arguments() -> None:
    with pytest.raises(ConfigError, match="HOST:PORT"):
        connect(device="localhost")
    with pytest.raises(ConfigError, match="exactly one"):
        connect(rpc="127.0.0.1:9190", device="127.0.0.1:9090")
    with pytest.raises(ConfigError, match="needs --key"):
        connect(rpc="127.0.0.1:9190")


def test_measure_rejects_bad_artifacts_and_targets(host_artifact: Path, tmp_path: Path,
                                                   fast_measure) -> None:
    with pytest.raises(ModelError, match="no model.json"):
        measure(tmp_path, "host")
    with pytest.raises(ConfigError, match="compiled for target 'host'"):
        measure(host_artifact, "arm64", runner=NullRunner())
    meta = json.loads((host_artifact / "model.json").read_text())
    (tmp_path / "model.json").write_text(json.dumps({**meta, "target": {"name": "arm64"}}))
    (tmp_path / "source.onnx").write_bytes((host_artifact / "source.onnx").read_bytes())
    with pytest.raises(ModelError, match="no compiled model"):
        measure(tmp_path, "arm64")  # no library: refused before any device is started
    res = RPCRunner(device="127.0.0.1:9").run(tmp_path / "nothing", {}, fast_measure)
    assert res.error_kind == "artifact" and "model.so" in res.error


# -- NULL runner and verification (no device) ------------------------------------------------

def test_null_runner_fixed_timings(host_artifact: Path) -> None:
    r = NullRunner(fixed_ms=2.5)
    res = r.run(host_artifact, {}, MeasureSettings(repeat=4))
    assert res.ok and res.latencies_ms == [2.5] * 4 and res.median_ms == 2.5
    r2 = NullRunner(fixed_ms=lambda p: float(len(p.name)))
    assert r2.run(Path("abc"), {}).median_ms == 3.0
    assert r2.calls == [Path("abc")]
    out = measure(host_artifact, "host", runner=r)
    assert out["median_ms"] == 2.5 and out["verified"] is False  # no outputs: not verified
    assert "no outputs" in out["detail"]


def test_verify_tolerance_and_nan() -> None:
    ref = {"y": np.array([1.0, 2.0, -3.0], np.float32)}
    ok = verify({"y": ref["y"] + np.float32(5e-5)}, ref)
    assert ok.verified and math.isclose(ok.max_abs_err, 5e-5, rel_tol=0.05)
    bad = verify({"y": ref["y"] + np.float32(1e-2)}, ref)
    assert not bad.verified and "'y'" in bad.detail and "exceeds" in bad.detail
    nan = verify({"y": np.array([1.0, np.nan, -3.0], np.float32)}, ref)
    assert not nan.verified and "1 NaN" in nan.detail and math.isnan(nan.max_abs_err)
    shape = verify({"y": np.zeros(2, np.float32)}, ref)
    assert not shape.verified and "shape" in shape.detail
    by_position = verify({"output_0": ref["y"].copy()}, ref)
    assert by_position.verified and by_position.max_abs_err == 0.0
