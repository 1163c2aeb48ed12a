"""Measured refinement: budget, records written as they are measured, reuse,
wrong candidates dropped, cost model, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from pfcompile import zoo
from pfcompile.codegen.kernels import time_kernels
from pfcompile.codegen.records import RecordDB, records_path
from pfcompile.codegen.tune import CostModel, TuneSettings, tunable_workloads, tune
from pfcompile.compiler import import_onnx
from pfcompile.errors import ConfigError
from pfcompile.paths import demo_paths
from pfcompile.runner import KernelTiming
from pfcompile.runner.kernels import LocalKernelTimer
from pfcompile.targets import load_target

HOST = load_target("host")
DEMO = demo_paths()[0]


class FakeTimer:
    """A NULL device: no build; latency grows with the scheduled code size."""

    def __init__(self) -> None:
        self.calls = 0

    def time(self, funcs, target):
        self.calls += 1
        out = []
        for f in funcs:
            text = f.script()
            # the unrolled width tile shows up in the scheduled loop nest
            ms = 1.0 + 0.01 * len(text) / 1000.0
            out.append(KernelTiming(ms, "", np.zeros(3)))
        return out


@pytest.fixture(scope="module")
def demo_mod():
    return import_onnx(DEMO)


def test_tunable_workloads_are_distinct(demo_mod):
    wls = tunable_workloads(demo_mod, HOST)
    keys = [wl.key for _t, wl, _f, _c in wls]
    assert len(keys) == len(set(keys)) > 3
    assert sum(c for *_x, c in wls) >= len(wls)
    fams = {wl.family for _t, wl, _f, _c in wls}
    assert fams >= {"conv2d", "dense"} and fams & {"depthwise", "dwpw"}


def test_tune_writes_records_then_reuses_them(demo_mod, tmp_path):
    timer = FakeTimer()
    # enough for every workload (Winograd alternatives included) to get 2 or more
    trials = 2 * len(tunable_workloads(demo_mod, HOST)) + 4
    settings = TuneSettings(trials=trials, batch=3)
    res = tune(demo_mod, HOST, timer, settings=settings, records_dir=tmp_path)
    assert sum(r.trials for r in res) >= trials - len(res)
    assert all(r.best_ms is not None and r.best_ms <= r.heuristic_ms for r in res)
    path = records_path(tmp_path, HOST.name)
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert len(lines) == sum(r.trials for r in res)          # one line per measurement
    db = RecordDB(path)
    assert len(db) == len(res)
    # a rerun skips tuned workloads and measures nothing
    calls = timer.calls
    again = tune(demo_mod, HOST, timer, settings=settings, records_dir=tmp_path)
    assert timer.calls == calls and all(r.skipped == "has a record" for r in again)


def test_wrong_candidate_is_dropped(demo_mod, tmp_path):
    class WrongTimer(FakeTimer):
        def time(self, funcs, target):
            out = super().time(funcs, target)
            # first of each batch (the heuristic in batch one) is the reference; others differ
            return [out[0]] + [KernelTiming(0.001, "", np.ones(3)) for _ in out[1:]]

    msgs: list[str] = []
    res = tune(demo_mod, HOST, WrongTimer(), settings=TuneSettings(trials=12, batch=3),
               records_dir=tmp_path, log=msgs.append)
    assert any("wrong result" in m for m in msgs)
    assert all(r.best_ms is None or r.best_ms >= 0.5 for r in res)


def test_cost_model_learns_an_order():
    cm = CostModel()
    xs = [[float(i), 1.0] for i in range(12)]
    ms = [1.0 + abs(i - 4) for i in range(12)]
    cm.update(xs, ms, macs=1000)
    pred = cm.predict([[4.0, 1.0], [11.0, 1.0]])
    assert pred is not None and pred[0] < pred[1]


def test_settings_are_checked():
    with pytest.raises(ConfigError, match="trials"):
        TuneSettings(trials=0)


def test_local_tuning_measures_real_kernels(tmp_path):
    """A real (small) tuning run on this CPU: kernels built, run, checked, timed."""
    path = zoo.export_onnx(zoo.PlainCNN(), tmp_path / "plain.onnx", (1, 1, 8, 8))
    mod = import_onnx(path)
    trials = 2 * len(tunable_workloads(mod, HOST))
    res = tune(mod, HOST, LocalKernelTimer(number=2, repeat=2, min_repeat_ms=0),
               settings=TuneSettings(trials=trials, batch=4), records_dir=tmp_path)
    assert res and all(r.best_ms and r.best_ms > 0 for r in res)
    timings = time_kernels(mod, HOST, LocalKernelTimer(number=2, repeat=1, min_repeat_ms=0),
                           records_dir=tmp_path)
    assert timings and all(t.ms and t.ms > 0 for t in timings.values()), timings


def test_cli_tune(tmp_path):
    from pfcompile.cli.tune import register

    app = typer.Typer()

    @app.callback()
    def _root() -> None:
        pass

    register(app)
    r = CliRunner().invoke(app, ["tune", str(DEMO), "--trials", "12", "--records",
                                 str(tmp_path), "--target", "host"])
    assert r.exit_code == 0, r.output
    assert "tuned workloads" in r.output and "conv2d" in r.output
    assert records_path(tmp_path, "host").exists()
    bad = CliRunner().invoke(app, ["tune", str(DEMO), "--tuner", "nope", "--records", str(tmp_path)])
    assert isinstance(bad.exception, ConfigError)


def test_budget_is_a_hard_limit(demo_mod, tmp_path):
    timer = FakeTimer()
    res = tune(demo_mod, HOST, timer, settings=TuneSettings(trials=5, batch=2),
               records_dir=tmp_path)
    assert sum(r.trials for r in res) <= 5
    assert any(r.skipped == "no budget left" for r in res)
    tuned = [r for r in res if r.trials]
    # the heaviest workloads are the ones measured
    assert max(r.macs * r.count for r in tuned) == max(r.macs * r.count for r in res)


def test_time_limit_stops_new_measurements(demo_mod, tmp_path):
    timer = FakeTimer()
    res = tune(demo_mod, HOST, timer, settings=TuneSettings(trials=100, time_limit_s=1e-3),
               records_dir=tmp_path)
    # the limit had passed before the first measurement: nothing measured, all said why
    assert timer.calls == 0 and sum(r.trials for r in res) == 0
    assert {r.skipped for r in res} == {"time limit reached"}
    with pytest.raises(ConfigError, match="time-limit"):
        TuneSettings(time_limit_s=0)


def test_winograd_alternatives_are_tunable(demo_mod):
    wls = tunable_workloads(demo_mod, HOST)
    fams = [wl.family for _t, wl, _f, _c in wls]
    # every Winograd-eligible 3x3 conv appears as direct, F(2x2) and F(4x4)
    wino = [wl for _t, wl, _f, _c in wls if wl.family == "winograd"]
    assert {wl.d["m"] for wl in wino} == {2, 4} and fams.count("conv2d") >= len(wino) // 2
    weights = [wl.macs * c for _t, wl, _f, c in wls]
    assert weights == sorted(weights, reverse=True)          # heaviest first
