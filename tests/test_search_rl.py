"""The AMC-style DDPG strategy on the NULL device: fast kernels equal the real
ones, clipped actions meet the budget under the latency model, a short search
is deterministic, and --resume continues the agent."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from pfcompile.errors import ConfigError, SearchError
from pfcompile.search import graph
from pfcompile.search.devices import NullDevice
from pfcompile.search.latency_model import LatencyModel
from pfcompile.search.loop import run_search
from pfcompile.search.rl import STATE_NAMES, DDPGStrategy, LayerTable, RLSettings
from pfcompile.search.space import build_space, compress
from pfcompile.search.state import STATE_FILE, load_strategy_state, save_strategy_state
from pfcompile.search.strategies import Goal, make_strategy

VAL_N = 96   # validation images each candidate is scored on here


@pytest.fixture(scope="module")
def fast(fast_settings):
    return replace(fast_settings, strategy="rl", pool=5, eval_subset=48)


@pytest.fixture(scope="module")
def setup(demo):
    """Space, real kernels_of and a kernel-level latency model trained on the null device."""
    m = demo.model
    from pfcompile.targets import load_target

    space = build_space(m, load_target("host").hardware)
    cache: dict = {}

    def kernels_of(cfg):
        key = tuple(sorted(cfg.items()))
        if key not in cache:
            cache[key] = graph.extract_kernels(compress(m, space, cfg))
        return cache[key]

    rng = np.random.default_rng(1)
    lm = LatencyModel("host", 8)
    dev = NullDevice()
    for _ in range(12):
        ks = kernels_of(space.sample(rng))
        lm.update_kernels(ks, dev.measure_kernels(ks))
    base = kernels_of(space.default())
    lm.update_model(base, dev.measure_model(m, None).latency_ms)
    return space, kernels_of, lm


def _drop_of(space):
    # a cheap stand-in for the subset accuracy: pruning more loses more (points)
    return lambda cfg: 40.0 * float(np.mean([1 - cfg[k.name] / k.full for k in space.knobs]))


def test_layer_table_kernels_equal_compressed_ones(setup):
    space, kernels_of, lm = setup
    rng = np.random.default_rng(7)
    table = LayerTable(space, kernels_of, rng)
    assert table.fast and table.checks == 3
    assert all(table.touched[i] for i in range(len(space)))  # every knob changes some kernel
    for _ in range(5):
        cfg = space.sample(rng)
        assert [k.key for k in table.kernels(cfg)] == [k.key for k in kernels_of(cfg)]
    feats = table.static_features(0)
    assert len(feats) == 11 and abs(sum(feats[:4]) - 1.0) < 1e-9  # one op one-hot
    strat = DDPGStrategy(space, Goal(3.0), 0, lambda c: lm.predict(kernels_of(c)), _drop_of(space),
                         latency_model=lm, kernels_of=kernels_of)
    for _ in range(5):
        cfg = space.sample(rng)
        assert strat.predict_ms(cfg) == pytest.approx(lm.predict(kernels_of(cfg)), rel=1e-9)


def test_clipped_actions_meet_the_budget_under_the_latency_model(setup):
    space, kernels_of, lm = setup
    base_ms = lm.predict(kernels_of(space.default()))
    target = 0.45 * base_ms
    settings = RLSettings(episodes_per_round=12, warmup_episodes=6, batch_size=16, hidden=16)
    strat = DDPGStrategy(space, Goal(3.0, latency_ms=target), 0, lambda c: lm.predict(kernels_of(c)),
                         _drop_of(space), latency_model=lm, kernels_of=kernels_of, settings=settings)
    eps = strat.run_round(12)  # 6 random warm-up episodes, 6 explored by the agent, 1 greedy
    assert len(eps) == 13 and strat.episodes == 12
    for e in eps:
        real = lm.predict(kernels_of(e.config))  # compress for real, predict with the model
        assert real <= target * (1 + 1e-9), (real, target, e.config)
        assert len(e.states) == len(space) and all(len(s) == len(STATE_NAMES) for s in e.states)
        assert all(0.0 <= a <= 1.0 for a in e.actions)
    # the budget binds: without clipping the same agent's episodes go over it
    free = DDPGStrategy(space, Goal(3.0), 0, lambda c: lm.predict(kernels_of(c)), _drop_of(space),
                        latency_model=lm, kernels_of=kernels_of, settings=settings)
    assert any(lm.predict(kernels_of(e.config)) > target for e in free.run_round(12))
    assert strat.buffer.n == 12 * len(space)  # one transition per knob per episode
    # a target below the smallest candidate cannot be met: a clear error
    tiny = DDPGStrategy(space, Goal(3.0, latency_ms=1e-6), 0, lambda c: lm.predict(kernels_of(c)),
                        _drop_of(space), latency_model=lm, kernels_of=kernels_of, settings=settings)
    with pytest.raises(SearchError, match="below the latency model's prediction"):
        tiny.run_round(2)


def test_rl_rejects_a_size_budget(setup):
    space, _kernels_of, _lm = setup
    with pytest.raises(ConfigError, match="size-mb"):
        make_strategy("rl", space, Goal(3.0, size_mb=0.1), 0, 4, lambda c: 1.0, lambda c: 0.0)


def test_rl_search_on_null_device_is_deterministic(tmp_path, demo, fast):
    from pfcompile.targets import load_target

    m, d = demo.model, demo.val.subset(VAL_N)
    host = load_target("host")
    runs = [run_search(m, host, NullDevice(), d, tmp_path / f"r{i}", fast,
                       cache_dir=tmp_path / f"c{i}") for i in range(2)]
    r = runs[0]
    assert [t["config"] for t in r.trials] == [t["config"] for t in runs[1].trials]
    assert len(r.trials) == 4 and all(t["status"] == "ok" for t in r.trials)
    assert len({t["config_hash"] for t in r.trials}) == 4
    assert all(t["pred_ms"] is not None and t["pred_drop"] is not None for t in r.trials)
    assert r.kernel_measurements > 0  # rl trains the kernel-level latency model like hw
    st = load_strategy_state(tmp_path / "r0")
    assert st["episodes"] == 2 * 5 and st["told"] == 4  # two rounds of 5 episodes
    assert st["buf_n"] > 0


def test_rl_budget_mode_trials_meet_the_target_under_the_model(tmp_path, demo, fast):
    from pfcompile.targets import load_target

    m, d = demo.model, demo.val.subset(VAL_N)
    r = run_search(m, load_target("host"), NullDevice(), d, tmp_path / "run",
                   replace(fast, speedup=1.6), cache_dir=tmp_path / "c")
    assert r.goal.latency_ms == pytest.approx(r.baseline["latency_ms"] / 1.6)
    for t in r.trials:  # predicted when proposed, with the model of that round
        assert t["pred_ms"] <= r.goal.latency_ms * (1 + 1e-9)


class _Killed(Exception):
    pass


def test_resume_continues_the_agent(tmp_path, demo, fast):
    from pfcompile.targets import load_target

    m, d = demo.model, demo.val.subset(VAL_N)
    host = load_target("host")
    seen = []

    def kill_after_two(kind, info):
        if kind == "trial":
            seen.append(info["id"])
            if len(seen) == 2:
                raise _Killed

    with pytest.raises(_Killed):
        run_search(m, host, NullDevice(), d, tmp_path / "run", fast,
                   cache_dir=tmp_path / "c", on_event=kill_after_two)
    mid = load_strategy_state(tmp_path / "run")
    assert mid["episodes"] == 5 and mid["told"] == 2  # one round of the agent, saved
    n = int(mid["buf_n"])
    assert n == 5 * 7 + 2 * 7  # 5 episodes and 2 measured trials, 7 knobs each
    r = run_search(m, host, NullDevice(), d, tmp_path / "run", fast,
                   cache_dir=tmp_path / "c")
    end = load_strategy_state(tmp_path / "run")
    assert [t["id"] for t in r.trials] == [0, 1, 2, 3]
    assert end["episodes"] == 10 and end["told"] == 4  # continued from 5, not restarted
    assert int(end["buf_n"]) == n + 5 * 7 + 2 * 7
    assert np.array_equal(end["buf_s"][:n], mid["buf_s"][:n])  # its memory came back
    assert end["history"][0] == mid["history"][0] and len(end["history"]) == 2
    assert end["sigma"] < mid["sigma"]  # exploration kept decaying
    a, b = (_weights(x["agent"]) for x in (end, mid))
    assert any(not np.array_equal(a[k], b[k]) for k in a)  # and it kept learning


def _weights(blob: np.ndarray) -> dict:
    import io

    import torch

    d = torch.load(io.BytesIO(blob.tobytes()), weights_only=True)
    return {f"{net}.{k}": v.numpy() for net in ("actor", "critic") for k, v in d[net].items()}


def test_state_file_round_trip_and_errors(tmp_path):
    st = {"a": np.arange(4, dtype=np.float32), "n": 3, "rng": {"s": 2 ** 80}, "l": [[1.0, 2.0]]}
    p = save_strategy_state(tmp_path, st)
    assert p.name == STATE_FILE
    back = load_strategy_state(tmp_path)
    assert np.array_equal(back["a"], st["a"]) and back["n"] == 3 and back["rng"]["s"] == 2 ** 80
    assert load_strategy_state(tmp_path / "none") is None
    p.write_bytes(b"not a zip")
    with pytest.raises(SearchError, match="unreadable strategy state"):
        load_strategy_state(tmp_path)
