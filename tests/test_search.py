"""The search on the NULL device (fast, deterministic): space, pruner, latency
model, loop, resume after a kill, a device that dies, report, CLI."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from pfcompile.errors import ConfigError, SearchError
from pfcompile.passes.depgraph import dependency_groups
from pfcompile.paths import demo_paths
from pfcompile.reference import reference_session
from pfcompile.search import graph
from pfcompile.search.devices import Measurement, NullDevice, kernel_model
from pfcompile.search.evaluation import Evaluator
from pfcompile.search.latency_model import FlopsModel, LatencyModel, kendall_tau
from pfcompile.search.loop import SearchSettings, TrialLog, run_search
from pfcompile.search.report import build_report, render_html
from pfcompile.search.space import build_space, compress, prune_config
from pfcompile.targets import load_target

VAL_N = 160   # validation images each candidate is scored on here


@pytest.fixture(scope="module")
def host():
    return load_target("host")


def _ort(model, x, name="input"):
    return reference_session(model).run(None, {name: x})[0]


# ----------------------------------------------------------------------------- space / pruner
def test_space_knobs_are_vector_multiples(demo, host):
    m = demo.model
    space = build_space(m, host.hardware, min_keep=0.25)
    assert len(space) == 7  # DemoNet: 7 channel groups, all prunable
    for k in space.knobs:
        assert k.default == k.full and k.full in k.choices
        step = 8 if k.full >= 32 else 4
        assert all(c % step == 0 for c in k.choices), (k.name, k.choices)
        assert min(k.choices) >= 0.25 * k.full
    cfg = space.uniform(0.5)
    assert all(cfg[k.name] == k.full // 2 for k in space.knobs)
    with pytest.raises(ConfigError, match="not one of"):
        space.validate({space.knobs[0].name: 3})
    with pytest.raises(ConfigError, match="unknown knob"):
        space.validate({"keep:nope": 8})


def test_prune_full_is_identity_and_half_runs(demo, host):
    m, d = demo.model, demo.val.subset(VAL_N)
    space = build_space(m, host.hardware)
    assert {k.target for k in space.knobs} == {g.id for g in dependency_groups(m) if g.prunable}
    x = d.inputs["input"][:1]
    same = compress(m, space, space.default())
    np.testing.assert_allclose(_ort(same, x), _ort(m, x), atol=1e-5)
    half = compress(m, space, space.uniform(0.5))  # no calibration data: L1
    ks0, ks1 = graph.extract_kernels(m), graph.extract_kernels(half)
    assert len(ks0) == len(ks1) == 13
    ratio = sum(k.macs for k in ks1) / sum(k.macs for k in ks0)
    assert 0.2 < ratio < 0.35  # ~quarter of the MACs when both sides of a conv halve
    assert _ort(half, x).shape == (1, 10)
    pc = prune_config(space, space.uniform(0.5))
    assert pc.criterion == "l1" and dict(pc.group_ratios) == {
        k.target: pytest.approx(0.5) for k in space.knobs}
    with pytest.raises(ConfigError, match="unknown knob"):
        compress(m, space, {"keep:nope": 4})


def test_lasso_candidate_has_l1_shapes_and_better_accuracy(demo, host):
    m, d = demo.model, demo.val.subset(VAL_N)
    calib = demo.calib
    space = build_space(m, host.hardware)
    cfg = space.uniform(0.5)
    l1 = compress(m, space, cfg)
    lasso = compress(m, space, cfg, calib, calib_samples=32)
    assert [k.key for k in graph.extract_kernels(lasso)] == [k.key for k in graph.extract_kernels(l1)]
    ev = Evaluator(m, d)
    s_l1, s_lasso = ev.score(l1).top1, ev.score(lasso).top1
    assert s_lasso > s_l1 + 0.05, (s_lasso, s_l1)


def test_kernel_keys_and_single_kernel_models(demo):
    m = demo.model
    ks = graph.extract_kernels(m)
    conv = ks[1]
    assert conv.op == "conv" and conv.epilogue == ("Relu",)
    assert conv.macs == 16 * 32 * 32 * 16 * 9
    km = kernel_model(conv)
    out = _ort(km, np.random.default_rng(0).standard_normal(conv.in_shape).astype(np.float32), "x")
    assert out.shape == conv.out_shape and (out >= 0).all()  # the Relu epilogue is there
    residual = next(k for k in ks if "Add_t" in k.epilogue)
    km2 = kernel_model(residual)
    assert len(km2.graph.input) == 2


# ----------------------------------------------------------------------------- latency model
def test_latency_model_learns_kernels_and_saves(tmp_path, demo, host):
    m = demo.model
    space = build_space(m, host.hardware)
    rng = np.random.default_rng(0)
    dev = NullDevice()
    train, test = [], []
    for i in range(30):
        ks = graph.extract_kernels(compress(m, space, space.sample(rng)))
        (train if i < 24 else test).extend(ks)
    lm = LatencyModel("host", 8)
    assert lm.update_kernels(train, dev.measure_kernels(train)) > 20
    truth = np.array(dev.measure_kernels(test))
    pred = lm.predict_kernels(test, use_measured=False)
    rel = np.abs(pred - truth) / truth
    assert np.median(rel) < 0.25
    assert kendall_tau(pred, truth) > 0.7
    p = lm.save(LatencyModel.path_for(tmp_path, "host"))
    warm = LatencyModel.load(p, "host", 8)
    assert len(warm.kernels) == len(lm.kernels)
    assert warm.kernel_sum(train[:5]) == pytest.approx(sum(dev.measure_kernels(train[:5])))
    assert len(LatencyModel.load(p, "arm64", 4).kernels) == 0  # another target starts cold
    stale = json.loads(p.read_text())
    stale["fingerprint"] = "measured-with-other-code"
    p.write_text(json.dumps(stale))
    assert len(LatencyModel.load(p, "host", 8).kernels) == 0  # other codegen: times are stale


def test_kendall_tau_and_flops_model():
    assert kendall_tau([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0)
    assert kendall_tau([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    fm = FlopsModel()
    k = graph.Kernel("conv", (1, 8, 8, 8), (8, 8, 3, 3), (1, 8, 8, 8), (3, 3))
    for s in (1.0, 2.0, 3.0):
        fm.fit_.add(s, 2 * s + 1)
    assert fm.fit_.a == pytest.approx(2.0) and fm.fit_.b == pytest.approx(1.0)
    assert fm.predict([k]) == pytest.approx(2 * k.macs / 1e6 + 1)


# ----------------------------------------------------------------------------- loop
@pytest.mark.parametrize("strategy", ["hw", "flops", "uniform", "random", "tpe"])
def test_loop_on_null_device(tmp_path, demo, host, strategy, fast_settings):
    m, d = demo.model, demo.val.subset(VAL_N)
    r = run_search(m, host, NullDevice(), d, tmp_path / "run",
                   replace(fast_settings, strategy=strategy), cache_dir=tmp_path / "cache")
    assert len(r.trials) == 4 and r.device_measurements == 4
    assert all(t["status"] == "ok" for t in r.trials)
    assert len({t["config_hash"] for t in r.trials}) == 4  # no config measured twice
    base = r.baseline
    for t in r.trials:  # the null device's latency: 0.5 ms + 0.05 ms per MMAC
        assert t["latency_ms"] == pytest.approx(0.5 + 0.05 * t["macs"] / 1e6)
        # qualified by the upper bound of the drop (90 %), not by its estimate
        assert t["acc_drop_lower"] <= t["acc_drop"] <= t["acc_drop_upper"]
        assert t["acc_n"] == len(d) and t["acc_confidence"] == 0.9
        assert t["feasible"] == (t["acc_drop_upper"] <= 3.0 and t["acc_refused"] is None)
        assert t["speedup"] == pytest.approx(base["latency_ms"] / t["latency_ms"])
    recs = TrialLog(tmp_path / "run" / "trials.jsonl").read()
    assert [x["type"] for x in recs].count("trial") == 4
    if strategy == "hw":
        assert r.kernel_measurements > 0
        assert (tmp_path / "cache" / "host" / "latency_model.json").exists()
        assert all(t["pred_ms"] is not None for t in r.trials)
    rep = build_report(r)
    assert set(rep) >= {"baseline", "best", "trials", "device_measurements", "cost_model", "emulated"}
    assert rep["emulated"] is False and rep["trials"] == 4


def test_loop_prunes_with_lasso_when_given_calibration_data(tmp_path, demo, host, fast_settings):
    m, d = demo.model, demo.val.subset(VAL_N)
    calib = demo.calib.subset(32)
    settings = replace(fast_settings, strategy="uniform", budget=3)
    runs = {name: run_search(m, host, NullDevice(), d, tmp_path / name, settings, calib=c)
            for name, c in (("l1", None), ("lasso", calib))}
    l1, lasso = runs["l1"].trials, runs["lasso"].trials
    assert [t["config"] for t in l1] == [t["config"] for t in lasso]  # same candidates
    assert [t["macs"] for t in l1] == [t["macs"] for t in lasso]      # same shapes
    assert all(b["top1"] >= a["top1"] - 0.02 for a, b in zip(l1, lasso))
    assert sum(t["top1"] for t in lasso) > sum(t["top1"] for t in l1) + 0.05


def test_loop_is_deterministic(tmp_path, demo, host, fast_settings):
    m, d = demo.model, demo.val.subset(VAL_N)
    runs = [run_search(m, host, NullDevice(), d, tmp_path / f"r{i}", fast_settings)
            for i in range(2)]
    assert [t["config"] for t in runs[0].trials] == [t["config"] for t in runs[1].trials]


class _Killed(Exception):
    pass


def test_resume_after_kill_loses_at_most_the_trial_in_flight(tmp_path, demo, host, fast_settings):
    m, d = demo.model, demo.val.subset(VAL_N)
    settings = replace(fast_settings, strategy="random", budget=5)
    seen = []

    def kill_after_two(kind, info):
        if kind == "trial":
            seen.append(info["id"])
            if len(seen) == 2:
                raise _Killed

    with pytest.raises(_Killed):
        run_search(m, host, NullDevice(), d, tmp_path / "run", settings, on_event=kill_after_two)
    log = tmp_path / "run" / "trials.jsonl"
    with open(log, "a") as f:  # a record torn by the kill
        f.write('{"type": "trial", "id": 2, "conf')
    dev = NullDevice()
    r = run_search(m, host, dev, d, tmp_path / "run", settings)
    assert [t["id"] for t in r.trials] == [0, 1, 2, 3, 4]
    assert dev.calls == 3  # trials 0 and 1 came from the log; the baseline too
    with pytest.raises(SearchError, match="strategy"):
        run_search(m, host, NullDevice(), d, tmp_path / "run",
                   replace(fast_settings, strategy="hw"))


class _DyingDevice(NullDevice):
    """Answers two measurements, then every call fails like a dead RPC server."""

    def __init__(self) -> None:
        super().__init__()
        self.alive = 3  # baseline + two candidates

    def measure_model(self, model, work_dir):
        self.alive -= 1
        if self.alive < 0:
            return Measurement(None, "device 127.0.0.1:9300: connection refused")
        return super().measure_model(model, work_dir)

    def measure_kernels(self, kernels):
        return [None] * len(kernels) if self.alive < 0 else super().measure_kernels(kernels)


def test_dead_device_gives_failed_trials_not_a_crash(tmp_path, demo, host, fast_settings):
    m, d = demo.model, demo.val.subset(VAL_N)
    r = run_search(m, host, _DyingDevice(), d, tmp_path / "run", replace(fast_settings, budget=5))
    status = [t["status"] for t in r.trials]
    assert status == ["ok", "ok", "failed", "failed", "failed"]
    assert all("connection refused" in t["error"] for t in r.trials[2:])
    assert build_report(r)["failed_trials"] == 3


def test_report_html_is_self_contained(tmp_path, demo, host, fast_settings):
    m, d = demo.model, demo.val.subset(VAL_N)
    r = run_search(m, host, NullDevice(), d, tmp_path / "run",
                   replace(fast_settings, max_acc_drop=100.0))
    assert r.best is not None
    rep = build_report(r)
    page = render_html(rep, {"hw": r.trials, "uniform": r.trials[:2]})
    assert page.count("<svg") == 3 and "<script" not in page
    assert "Predicted vs measured" in page and "uniform" in page


def test_remeasure_round_robin_medians(tmp_path, demo, host):
    from pfcompile.search.api import remeasure

    m = demo.model
    half = compress(m, build_space(m, host.hardware), build_space(m, host.hardware).uniform(0.5))
    dev = NullDevice()
    r = remeasure(dev, {"baseline": m, "best": half}, tmp_path, 3)
    assert dev.calls == 6 and r["repeats"] == 3
    macs = [sum(k.macs for k in graph.extract_kernels(x)) for x in (m, half)]
    assert r["baseline_ms"] == pytest.approx(0.5 + 0.05 * macs[0] / 1e6)
    assert r["speedup"] == pytest.approx(r["baseline_ms"] / r["best_ms"]) and r["speedup"] > 1.5


# ----------------------------------------------------------------------------- CLI
def _app() -> typer.Typer:
    from pfcompile.cli.run import register

    app = typer.Typer()
    app.callback()(lambda: None)  # a group, so the command keeps its name `run`
    register(app)
    return app


def test_cli_run_null_device_writes_dist(tmp_path):
    out = tmp_path / "dist"
    res = CliRunner().invoke(_app(), ["run", "--null-device", "--budget", "3", "--max-acc-drop", "3", "--strategy", "uniform",
                                      "-o", str(out), "--cache-dir", str(tmp_path / "c")])
    assert res.exit_code == 0, res.output
    rep = json.loads((out / "report.json").read_text())
    assert rep["trials"] == 3 and rep["baseline"]["top1"] > 0.9
    assert (out / "model.onnx").exists() and (out / "report.html").exists()
    again = CliRunner().invoke(_app(), ["run", "--null-device", "--budget", "3", "-o", str(out)])
    assert isinstance(again.exception, SearchError) and "--resume" in str(again.exception)


def test_cli_rejects_bad_settings(tmp_path):
    res = CliRunner().invoke(_app(), ["run", "--null-device", "--strategy", "bogus", "-o", str(tmp_path)])
    assert isinstance(res.exception, SearchError) and "bogus" in str(res.exception)
    res = CliRunner().invoke(_app(), ["run", "--null-device", "--resume", str(tmp_path / "none")])
    assert isinstance(res.exception, SearchError) and "no trials.jsonl" in str(res.exception)
    res = CliRunner().invoke(_app(), ["run", str(Path(tmp_path) / "missing.onnx"), "--null-device"])
    assert "not found" in str(res.exception)


def test_run_finetune_records_before_and_after(tmp_path):
    """`run --train T` fine-tunes the finalist by default (distillation from the original,
    here on the demo's calibration data), records top-1 before and after, checks that it
    learned and re-confirms it on the confirmation part before deploying it."""
    from pfcompile.search import DeviceSpec, RunConfig, run

    rep = run(RunConfig(settings=SearchSettings(budget=3, max_acc_drop=3.0),
                        device=DeviceSpec(null=True), out_dir=tmp_path / "dist",
                        train=demo_paths()[2], finetune_epochs=2, cache_dir=tmp_path / "cache"))
    ft = rep["finetune"]
    assert rep["best"] is not None
    assert 0.0 < ft["before_top1"] <= 1.0 and 0.0 < ft["after_top1"] <= 1.0
    assert ft["progress"]["stuck"] is False and ft["progress"]["relu_channels"] > 0
    # deployed only when it did not lose top-1 and its drop qualified on the confirmation part
    assert ft["deployed"] is (ft["after_top1"] >= ft["before_top1"]
                              and ft["confirmation"]["confirmed"])
    assert ft["deployed"] or "lowered top-1" in ft["error"] or "not confirmed" in ft["error"]
    assert ft["confirmation"]["acc_n"] == rep["accuracy"]["confirm_n"] == 162  # 30 % of 540
    assert rep["best"]["finetuned"] is ft["deployed"]
    assert ft["train_data"].endswith("demo_calib.npz")
    saved = json.loads((tmp_path / "dist" / "report.json").read_text())
    assert saved["finetune"] == ft
    assert (tmp_path / "dist" / "run" / "finetune" / "finetuned.onnx").exists()
