"""GP Bayesian optimisation: objective / constraints by goal, model screening,
determinism with a fixed seed, a short search on the NULL device, resume."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from pfcompile.search.bo import GPBayesOpt
from pfcompile.search.devices import NullDevice
from pfcompile.search.loop import run_search
from pfcompile.search.space import build_space, config_hash
from pfcompile.search.state import load_strategy_state
from pfcompile.search.strategies import Goal
from pfcompile.targets import load_target

VAL_N = 96   # validation images each candidate is scored on here


@pytest.fixture(scope="module")
def fast(fast_settings):
    return replace(fast_settings, strategy="bo", budget=3, batch=1, pool=4, eval_subset=48)


@pytest.fixture(scope="module")
def space(demo):
    return build_space(demo.model, load_target("host").hardware)


def _synthetic(space):
    """Latency falls and drop rises with the channels pruned (smooth, known)."""
    def frac(cfg):
        return float(np.mean([1 - cfg[k.name] / k.full for k in space.knobs]))
    return (lambda cfg: 1.0 - 0.8 * frac(cfg)), (lambda cfg: 30.0 * frac(cfg) ** 2)


def _drive(strat, latency_of, drop_of, rounds):
    """Propose / tell with the synthetic device (measured = predicted)."""
    told = []
    for _ in range(rounds):
        for c in strat.propose(1):
            ms, drop = latency_of(c.config), drop_of(c.config)
            strat.tell(c.config, {"status": "ok", "latency_ms": ms, "acc_drop": drop,
                                  "size_mb": 1.0, "speedup": 1.0 / ms})
            told.append((c, ms, drop))
    return told


def test_objective_and_constraints_follow_the_goal(space):
    lat, drop = _synthetic(space)
    fast = GPBayesOpt(space, Goal(0.5), 0, lat, drop)
    v, c = fast.objective_and_constraints(2.0, 0.7, 1.0)
    assert v == pytest.approx(math.log(2.0)) and c == {"drop": pytest.approx(0.2)}
    budget = GPBayesOpt(space, Goal(0.5, latency_ms=1.5), 0, lat, drop)
    v, c = budget.objective_and_constraints(2.0, 0.3, 1.0)
    assert v == pytest.approx(0.3) and c == {"drop": pytest.approx(-0.2), "latency": pytest.approx(0.5)}
    size = GPBayesOpt(space, Goal(0.5, size_mb=0.8), 0, lat, drop)
    assert size.objective_and_constraints(1.0, 0.0, 1.0)[1]["size"] == pytest.approx(0.2)
    assert size.objective_and_constraints(1.0, 0.0, None)[1]["size"] == 0.0  # unknown: neutral
    assert fast.objective_and_constraints(math.inf, math.nan, None)[0] == pytest.approx(math.log(1e9))


def test_gp_search_is_deterministic_screens_and_improves(space):
    lat, drop = _synthetic(space)
    goal = Goal(10.0, latency_ms=0.7)  # feasible: a mean pruned fraction in [0.375, 0.577]
    runs = []
    for _ in range(2):
        s = GPBayesOpt(space, goal, 0, lat, drop, n_startup=4, screen=4)
        runs.append((s, _drive(s, lat, drop, 6)))
    (s, told), (_, told2) = runs
    assert [c.config for c, _, _ in told] == [c.config for c, _, _ in told2]
    assert len(told) == 6 and len({str(sorted(c.config.items())) for c, _, _ in told}) == 6
    # screened asks were told from the models, never measured, and were infeasible under them
    assert s.screened and all(max(p["cons"].values()) > 0 for p in s.screened)
    sources = [t.user_attrs.get("source") for t in s.study.trials if t.state.name == "COMPLETE"]
    assert sources.count("device") == 6 and sources.count("model") == len(s.screened)
    assert len({config_hash(s._config(p["params"])) for p in s.screened}) == len(s.screened)
    feasible = [d for _, ms, d in told if ms <= goal.latency_ms and d <= goal.max_acc_drop]
    assert len(feasible) >= 4
    # the least drop meeting 0.7 ms is 4.2 points (a pruned fraction of 0.375); the GP gets near
    assert min(feasible) < 6.0


def test_bo_on_null_device_is_deterministic_and_resumes(tmp_path, demo, fast):
    m, d = demo.model, demo.val.subset(VAL_N)
    host = load_target("host")
    r, again = (run_search(m, host, NullDevice(), d, tmp_path / name, fast,
                           cache_dir=tmp_path / f"c_{name}") for name in ("run", "again"))
    assert [t["config"] for t in r.trials] == [t["config"] for t in again.trials]  # fixed seed
    assert len(r.trials) == 3 and all(t["status"] == "ok" for t in r.trials)
    assert len({t["config_hash"] for t in r.trials}) == 3
    assert all(t["pred_ms"] is not None and t["pred_drop"] is not None for t in r.trials)
    st = load_strategy_state(tmp_path / "run")
    assert st is not None and st["knobs"] == [k.name for k in r.space.knobs]
    r2 = run_search(m, host, NullDevice(), d, tmp_path / "run", replace(fast, budget=4),
                    cache_dir=tmp_path / "c_run")
    assert [t["id"] for t in r2.trials] == [0, 1, 2, 3]
    assert [t["config"] for t in r2.trials[:3]] == [t["config"] for t in r.trials]
    assert len({t["config_hash"] for t in r2.trials}) == 4  # nothing measured twice after resume
