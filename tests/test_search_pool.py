"""The device pool over real TVM RPC: a tracker and two host servers under one key
(ports 9600-9649 only). measure_many spreads candidates over both servers, the
search loop measures a round on the pool and logs every trial, and a server
killed mid-run yields a failed trial, not a crash."""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from pfcompile.data import Dataset
from pfcompile.device import DeviceProcess, LocalRPC
from pfcompile.errors import DeviceError
from pfcompile.runner import PoolStatus
from pfcompile.runner.pool import ON_DEVICE
from pfcompile.search.devices import NullDevice, RPCDevice, count_devices, open_rpc_device
from pfcompile.search.graph import extract_kernels
from pfcompile.search.loop import SearchSettings, TrialLog, run_search
from pfcompile.targets import load_target

PORTS = (9600, 9649)
KEY = "pooltest"


def small_cnn(seed: int = 0, ch: int = 16) -> onnx.ModelProto:
    """x[1,3,8,8] -> Conv(ch) -> Relu -> Conv(ch) -> Relu -> GlobalAveragePool -> Flatten -> Gemm(10)."""
    rng = np.random.default_rng(seed)

    def w(name, *shape):
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.3).astype(np.float32), name)

    nodes = [
        helper.make_node("Conv", ["x", "w0", "b0"], ["c0"], name="conv0", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c0"], ["r0"], name="relu0"),
        helper.make_node("Conv", ["r0", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("GlobalAveragePool", ["r1"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten", axis=1),
        helper.make_node("Gemm", ["f", "fw", "fb"], ["y"], name="fc", transB=1),
    ]
    inits = [w("w0", ch, 3, 3, 3), w("b0", ch), w("w1", ch, ch, 3, 3), w("b1", ch),
             w("fw", 10, ch), w("fb", 10)]
    graph = helper.make_graph(
        nodes, "small_cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


# ----------------------------------------------------------------------------- the loop, no RPC
class _ReversedPool(NullDevice):
    """A NULL device with ``measure_many`` that answers a batch last job first, as a
    pool does when a later candidate finishes before an earlier one."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[int] = []

    def measure_many(self, jobs, on_result=None):
        self.batches.append(len(jobs))
        out = [self.measure_model(m, d) for m, d in jobs]
        for i in reversed(range(len(jobs))):
            if on_result is not None:
                on_result(i, out[i])
        return out


VAL_N = 64   # validation images each candidate is scored on here


@pytest.fixture(scope="module")
def fast(fast_settings):
    return replace(fast_settings, strategy="random", batch=3)


def test_loop_measures_rounds_on_a_pool_and_logs_in_arrival_order(tmp_path, demo, fast):
    m, d = demo.model, demo.val.subset(VAL_N)
    host = load_target("host")
    pool = _ReversedPool()
    r = run_search(m, host, pool, d, tmp_path / "pool", replace(fast, budget=5))
    seq = run_search(m, host, NullDevice(), d, tmp_path / "seq", replace(fast, budget=5))
    assert pool.batches == [3, 2]                    # rounds of <= 3 (the baseline: measure_model)
    assert [t["id"] for t in r.trials] == [0, 1, 2, 3, 4]
    assert all(t["status"] == "ok" for t in r.trials)
    # the same candidates as one at a time (random proposals do not depend on results),
    # each round logged last-proposed first
    cfgs = [t["config_hash"] for t in seq.trials]
    assert [t["config_hash"] for t in r.trials] == cfgs[2::-1] + cfgs[:2:-1]
    for t in r.trials:
        assert t["latency_ms"] == pytest.approx(0.5 + 0.05 * t["macs"] / 1e6)
    logged = [x for x in TrialLog(tmp_path / "pool" / "trials.jsonl").read() if x["type"] == "trial"]
    assert [x["id"] for x in logged] == [0, 1, 2, 3, 4]


def test_hw_strategy_on_a_pool_times_kernels_after_each_round(tmp_path, demo, fast):
    m, d = demo.model, demo.val.subset(VAL_N)
    pool = _ReversedPool()
    r = run_search(m, load_target("host"), pool, d, tmp_path / "run",
                   replace(fast, budget=4, strategy="hw", batch=2),
                   cache_dir=tmp_path / "cache")
    assert pool.batches == [2, 2] and [t["id"] for t in r.trials] == [0, 1, 2, 3]
    assert all(t["status"] == "ok" and t["pred_ms"] is not None for t in r.trials)
    kinds = [x["type"] for x in TrialLog(tmp_path / "run" / "trials.jsonl").read()]
    # each round: two trials logged as they arrive, then the new kernels of the round
    first = kinds.index("trial")
    assert kinds[first:first + 3] == ["trial", "trial", "kernels"]
    assert r.kernel_measurements > 0


class _Killed(Exception):
    pass


def test_resume_after_a_kill_mid_round_loses_only_the_trials_in_flight(tmp_path, demo, fast):
    m, d = demo.model, demo.val.subset(VAL_N)
    host = load_target("host")
    settings = replace(fast, budget=5)

    def kill_at_second_trial(kind, info):
        if kind == "trial" and info["id"] == 1:
            raise _Killed

    with pytest.raises(_Killed):
        run_search(m, host, _ReversedPool(), d, tmp_path / "run", settings,
                   on_event=kill_at_second_trial)
    logged = [x for x in TrialLog(tmp_path / "run" / "trials.jsonl").read() if x["type"] == "trial"]
    assert [x["id"] for x in logged] == [0, 1]       # the third of the round was lost
    pool = _ReversedPool()
    r = run_search(m, host, pool, d, tmp_path / "run", settings)
    assert [t["id"] for t in r.trials] == [0, 1, 2, 3, 4]
    assert len({t["config_hash"] for t in r.trials}) == 5
    assert pool.calls == 3 and pool.batches == [3]   # no baseline again; 3 new trials


# ----------------------------------------------------------------------------- over RPC
@pytest.fixture(scope="module")
def cluster():
    """A tracker and two host servers (one TVM thread each: they share this machine's
    cores) under KEY; tests call ``cluster.ensure()`` to restart one a test killed."""
    with LocalRPC(load_target("host"), key=KEY, n_servers=2, threads=1, ports=PORTS) as c:
        yield c


def _sessions(server: DeviceProcess) -> int:
    """Models a server loaded (its log has a ``load_module`` line per upload)."""
    return server.log_path.read_text(errors="replace").count("load_module")


def test_count_devices_and_open_rpc_device(cluster):
    host = load_target("host")
    cluster.ensure()
    assert count_devices(cluster.tracker_addr, KEY) == 2
    assert count_devices(cluster.tracker_addr, "no-such-key") == 0
    dev = open_rpc_device(host, cluster.tracker_addr, KEY)
    try:
        assert dev.size == 2 and len(dev.runner.slots) == 2
        assert dev.compile_first  # servers on loopback: compile a round, then measure it
        assert dev.status() == f"'pooltest' at {cluster.tracker_addr} (real): 2 devices: 0 busy, 2 idle; 0 failures"
    finally:
        dev.close()
    one = open_rpc_device(host, cluster.tracker_addr, "no-such-key")
    assert one.size == 1 and not one.compile_first   # a single device: a pool of one
    one.close()
    with pytest.raises(DeviceError, match="lists no device under key 'no-such-key'"):
        RPCDevice(host, tracker=cluster.tracker_addr, key="no-such-key")
    # a pool whose servers are all gone fails every job at once (a tracker would queue
    # a request for a key with no server forever)
    empty = RPCDevice(host, tracker=cluster.tracker_addr, key="no-such-key", size=2)
    try:
        t0 = time.monotonic()
        res = empty.measure_many([(small_cnn(), Path("unused0")), (small_cnn(1), Path("unused1"))])
        kernels = empty.measure_kernels(extract_kernels(small_cnn()))
    finally:
        empty.close()
    assert time.monotonic() - t0 < 10
    assert [m.ok for m in res] == [False, False]
    assert all("lists no live device under key 'no-such-key'" in m.error for m in res)
    assert kernels == [None] * len(extract_kernels(small_cnn()))


def test_measure_many_uses_both_servers_in_submission_order(cluster, tmp_path):
    host = load_target("host")
    servers = cluster.ensure()
    before = [_sessions(s) for s in servers]
    seen: list[PoolStatus] = []
    pool = RPCDevice(host, tracker=cluster.tracker_addr, key=KEY, number=2, repeat=2, min_repeat_ms=0,
                     on_change=seen.append, compile_first=True)
    jobs = [(small_cnn(seed=i, ch=8 * (1 + i % 2)), tmp_path / f"job{i}") for i in range(4)]
    arrived: list[int] = []
    try:
        res = pool.measure_many(jobs, on_result=lambda i, m: arrived.append(i))
    finally:
        pool.close()
    assert len(res) == 4 and sorted(arrived) == [0, 1, 2, 3]
    for (_, work_dir), m in zip(jobs, res):
        assert m.ok, m.error
        assert m.latency_ms > 0
        assert m.max_abs_diff is not None and m.max_abs_diff < 1e-3  # verified against onnxruntime
        assert Path(m.so_path).parent == work_dir                    # submission order
    used = [_sessions(s) - b for s, b in zip(servers, before)]
    assert sum(used) == 4 and all(u >= 1 for u in used), used
    assert max(s.busy for s in seen) == 2          # two slots worked at the same time
    assert seen[-1].busy == 0 and seen[-1].failures == 0
    kernels = extract_kernels(small_cnn())
    times = RPCDevice(host, tracker=cluster.tracker_addr, key=KEY, number=2, repeat=2,
                       min_repeat_ms=0).measure_kernels(kernels)
    assert len(times) == len(kernels) and all(t is not None and t > 0 for t in times)
    with pytest.raises(DeviceError, match="closed"):
        pool.measure_many(jobs[:1])


def test_run_search_on_the_pool_logs_every_trial(cluster, tmp_path):
    host = load_target("host")
    cluster.ensure()
    model = small_cnn(seed=3, ch=48)
    x = np.random.default_rng(0).standard_normal((32, 3, 8, 8)).astype(np.float32)
    data = Dataset({"x": x}, None, "random")
    pool = RPCDevice(host, tracker=cluster.tracker_addr, key=KEY, number=2, repeat=2, min_repeat_ms=0,
                      compile_first=True)
    events: list[str] = []
    try:
        r = run_search(model, host, pool, data, tmp_path / "run",
                       SearchSettings(strategy="random", budget=4, batch=2, max_acc_drop=100.0,
                                      eval_subset=32, min_keep=0.25),
                       on_event=lambda kind, info: events.append(kind))
    finally:
        pool.close()
    assert len(r.trials) == 4 and r.device_measurements == 4
    assert all(t["status"] == "ok" for t in r.trials), [t["error"] for t in r.trials]
    assert [t["id"] for t in r.trials] == [0, 1, 2, 3]
    # paired timing on every session: each candidate timed against the reference
    assert all(t["paired"] and t["raw_ms"] > 0 for t in r.trials)
    assert len({t["config_hash"] for t in r.trials}) == 4
    logged = [x for x in TrialLog(tmp_path / "run" / "trials.jsonl").read() if x["type"] == "trial"]
    assert [x["id"] for x in logged] == [0, 1, 2, 3]
    assert all(x["latency_ms"] > 0 and Path(x["so_path"]).exists() for x in logged)
    assert events.count("measuring") == 2 and events.count("trial") == 4


def test_api_run_with_rpc_uses_the_pool_and_shows_device_status(cluster, tmp_path):
    import io

    from rich.console import Console

    from pfcompile.cli.run import _Progress
    from pfcompile.search import DeviceSpec, RunConfig, run

    cluster.ensure()
    onnx.save(small_cnn(seed=7, ch=48), str(tmp_path / "m.onnx"))
    events: list[tuple[str, dict]] = []
    config = RunConfig(tmp_path / "m.onnx", "host", out_dir=tmp_path / "dist",
                       device=DeviceSpec(rpc=cluster.tracker_addr, key=KEY),
                       settings=SearchSettings(strategy="random", budget=2, batch=2,
                                               max_acc_drop=100.0, eval_subset=32),
                       cache_dir=tmp_path / "cache", final_repeats=0)
    rep = run(config, on_event=lambda kind, info: events.append((kind, info)))
    assert rep["trials"] == 2 and rep["device_measurements"] == 2
    assert (tmp_path / "dist" / "report.json").exists()
    pool_events = [info for kind, info in events if kind == "devices"]
    assert pool_events and all(e["size"] == 2 for e in pool_events)
    assert max(e["busy"] for e in pool_events) == 2 and pool_events[-1]["busy"] == 0
    out = io.StringIO()
    prog = _Progress(2, Console(file=out, width=120))
    for kind, info in events:
        prog(kind, info)
    Console(file=out, width=120).print(prog._table())
    assert "2 devices: 0 busy, 2 idle; 0 failures" in out.getvalue()
    assert "trials" in out.getvalue() and "2/2" in out.getvalue()


def test_a_server_killed_mid_run_fails_its_trial_and_the_run_goes_on(cluster, tmp_path):
    host = load_target("host")
    key = KEY
    victims = cluster.ensure()  # one is killed here: later tests restart it
    model = small_cnn(seed=5, ch=48)
    x = np.random.default_rng(1).standard_normal((32, 3, 8, 8)).astype(np.float32)
    data = Dataset({"x": x}, None, "random")
    killed = threading.Event()

    def kill_when_both_on_device(s: PoolStatus) -> None:
        # two sessions at once are on two different servers: kill one of them
        if not killed.is_set() and s.stages.count(ON_DEVICE) == 2:
            killed.set()
            victims[0].kill()

    # a candidate's measurement lasts >= 60 rounds x 25 ms (x 2 when paired with the
    # reference), longer than compiling the next candidate
    pool = RPCDevice(host, tracker=cluster.tracker_addr, key=key, number=1, repeat=60,
                      min_repeat_ms=25, on_change=kill_when_both_on_device)
    try:
        r = run_search(model, host, pool, data, tmp_path / "run",
                       SearchSettings(strategy="random", budget=4, batch=2, max_acc_drop=100.0,
                                      eval_subset=32))
        status = pool.snapshot()
    finally:
        pool.close()
    assert killed.is_set()
    assert len(r.trials) == 4
    failed = [t for t in r.trials if t["status"] == "failed"]
    assert len(failed) == 1, [t["error"] for t in r.trials]
    assert failed[0]["measured"] and f"device {cluster.tracker_addr}/{key}" in failed[0]["error"]
    assert all(t["latency_ms"] > 0 for t in r.trials if t["status"] == "ok")
    assert status.live == 1 and status.failures == 1
    logged = [x for x in TrialLog(tmp_path / "run" / "trials.jsonl").read() if x["type"] == "trial"]
    assert [x["status"] for x in logged] == [t["status"] for t in r.trials]
