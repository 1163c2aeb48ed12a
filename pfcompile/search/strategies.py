"""Search strategies: each proposes configs and is told results, nothing more.

* ``hw``: sample a pool, rank by the kernel-level latency model and a cheap
  accuracy estimate, propose the most promising (AutoTVM's loop one level up).
* ``flops``: the same loop with FLOPs as the latency model (PocketFlow / AMC).
* ``uniform``: one keep ratio everywhere, swept from light to heavy.
* ``random``: configs drawn at random.
* ``tpe``: optuna's TPE sampler on the measured objective.
* ``rl``: an AMC-style DDPG agent (``pfcompile.search.rl``).
* ``bo``: Gaussian-process Bayesian optimisation (``pfcompile.search.bo``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from pfcompile.errors import ConfigError, SearchError
from pfcompile.search.knobs import default_min_keep
from pfcompile.search.space import SearchSpace, config_hash

__all__ = [
    "STRATEGIES",
    "TPE",
    "AskTellStrategy",
    "Candidate",
    "Goal",
    "ModelGuided",
    "RandomSearch",
    "Strategy",
    "Uniform",
    "make_strategy",
]

STRATEGIES = ("hw", "flops", "uniform", "random", "tpe", "rl", "bo")


@dataclass(frozen=True)
class Goal:
    """Fastest within ``max_acc_drop`` (points), or — when a latency / size budget
    is set — most accurate within it (and within ``max_acc_drop``)."""

    max_acc_drop: float = 0.5
    latency_ms: float | None = None
    size_mb: float | None = None

    @property
    def mode(self) -> str:
        return "accurate" if (self.latency_ms or self.size_mb) else "fastest"

    def feasible(self, latency_ms: float, acc_drop: float, size_mb: float) -> bool:
        if acc_drop > self.max_acc_drop + 1e-9:
            return False
        if self.latency_ms is not None and latency_ms > self.latency_ms:
            return False
        return not (self.size_mb is not None and size_mb > self.size_mb)

    def cost(self, latency_ms: float, acc_drop: float, size_mb: float) -> float:
        """Lower is better; infeasible points rank after every feasible one."""
        penalty = 0.0 if self.feasible(latency_ms, acc_drop, size_mb) else 1e6 + 1e3 * max(0.0, acc_drop)
        return penalty + (latency_ms if self.mode == "fastest" else acc_drop)


@dataclass(frozen=True)
class Candidate:
    """A proposed config with what the strategy predicted for it."""

    config: dict
    pred_ms: float | None = None
    pred_drop: float | None = None


class Strategy:
    name = "base"

    def __init__(self, space: SearchSpace, goal: Goal, seed: int = 0) -> None:
        self.space, self.goal = space, goal
        self.rng = np.random.default_rng(seed)
        self.seen: set[str] = set()
        self.results: list[tuple[dict, dict]] = []

    def propose(self, n: int) -> list[Candidate]:
        raise NotImplementedError

    def tell(self, config: dict, result: dict) -> None:
        self.seen.add(config_hash(config))
        self.results.append((config, result))

    def _fresh(self, cfg: dict) -> bool:
        return config_hash(cfg) not in self.seen

    def state_dict(self) -> dict | None:
        """What ``--resume`` must restore beyond the trial log (numpy arrays or
        JSON-able values); None for strategies that rebuild from the log alone."""
        return None

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`; called before the logged trials are replayed."""


class AskTellStrategy(Strategy):
    """A strategy over an optuna study: proposals are asked trials kept in ``pending`` by
    config hash until the device result comes back. :meth:`tell` ends the pending trial
    (a failed trial as FAIL); ``_tell_ok(trial, config, result)`` records a measured one
    (``trial`` None: a trial replayed from the log on ``--resume``)."""

    study: Any
    pending: dict[str, object]

    def tell(self, config: dict, result: dict) -> None:
        super().tell(config, result)
        t = self.pending.pop(config_hash(config), None)
        if result.get("status") == "ok":
            self._tell_ok(t, config, result)
        elif t is not None:
            import optuna

            self.study.tell(t, state=optuna.trial.TrialState.FAIL)

    def _tell_ok(self, trial: Any, config: dict, result: dict) -> None:
        raise NotImplementedError


class Uniform(Strategy):
    """One ratio everywhere: ``budget`` ratios from 0.95 down to ``min_keep`` (None: the
    passes' declared minimum, :func:`pfcompile.search.knobs.default_min_keep`)."""

    name = "uniform"

    def __init__(self, space: SearchSpace, goal: Goal, seed: int = 0, budget: int = 20,
                 min_keep: float | None = None) -> None:
        other = sorted({k.kind for k in space.knobs} - {"keep"})
        if other:
            raise SearchError(f"strategy 'uniform' sweeps one keep ratio and cannot search "
                              f"{'/'.join(other)} knobs; use --strategy hw, flops, random, tpe or bo")
        super().__init__(space, goal, seed)
        lo = default_min_keep() if min_keep is None else min_keep
        self.ratios = list(np.linspace(0.95, lo, max(2, budget * 2)))

    def propose(self, n: int) -> list[Candidate]:
        out: list[Candidate] = []
        while self.ratios and len(out) < n:
            cfg = self.space.uniform(float(self.ratios.pop(0)))
            if self._fresh(cfg) and all(c.config != cfg for c in out):
                out.append(Candidate(cfg))
        return out


class RandomSearch(Strategy):
    name = "random"

    def propose(self, n: int) -> list[Candidate]:
        out = []
        for _ in range(50 * n):
            cfg = self.space.sample_around(self.rng, float(self.rng.uniform(0.3, 1.0)))
            if self._fresh(cfg) and all(c.config != cfg for c in out):
                out.append(Candidate(cfg))
            if len(out) == n:
                break
        return out


class ModelGuided(Strategy):
    """Pool -> predicted latency (``latency_of``) and cheap accuracy drop
    (``drop_of``) -> the best by the goal, one in four picked to explore."""

    def __init__(self, space: SearchSpace, goal: Goal, seed: int, name: str,
                 latency_of: Callable[[dict], float], drop_of: Callable[[dict], float],
                 pool: int = 32, drop_margin: float = 0.5,
                 size_of: Callable[[dict], float] | None = None) -> None:
        super().__init__(space, goal, seed)
        self.name = name
        self.latency_of, self.drop_of = latency_of, drop_of
        self.size_of = size_of  # predicted stored MB (a --size-mb goal); None: not ranked by size
        self.pool, self.drop_margin = pool, drop_margin
        self._drop_cache: dict[str, float] = {}

    def _pool(self) -> list[dict]:
        """Half: small steps from the best feasible candidates so far (from the
        unpruned model while there are none); half: broad samples."""
        cfgs: list[dict] = []
        ok = sorted((self.goal.cost(r["latency_ms"], r["acc_drop"], r["size_mb"]), i)
                    for i, (c, r) in enumerate(self.results)
                    if r.get("status") == "ok" and r.get("feasible"))
        parents = [self.results[i][0] for _, i in ok[:4]] or [self.space.default()]
        for j in range(self.pool * 4):
            if j % 2 == 0:
                cfg = self.space.mutate(parents[(j // 2) % len(parents)], self.rng,
                                        n=int(self.rng.integers(1, 4)))
            else:
                cfg = self.space.sample_around(self.rng, float(self.rng.uniform(0.5, 1.0)), 0.12)
            if self._fresh(cfg) and cfg not in cfgs:
                cfgs.append(cfg)
            if len(cfgs) >= self.pool:
                break
        return cfgs

    def propose(self, n: int) -> list[Candidate]:
        scored = []
        for cfg in self._pool():
            h = config_hash(cfg)
            ms = self.latency_of(cfg)
            if h not in self._drop_cache:
                self._drop_cache[h] = self.drop_of(cfg)
            drop = self._drop_cache[h]
            # the cheap accuracy is an estimate: allow a margin, then rank by the goal
            relaxed = Goal(self.goal.max_acc_drop + self.drop_margin, self.goal.latency_ms,
                           self.goal.size_mb)
            size = self.size_of(cfg) if self.size_of is not None else 0.0
            cost = relaxed.cost(ms, drop, size)
            if self.size_of is not None and self.goal.size_mb:  # over the size budget: nearer is better
                cost += 1e4 * max(0.0, size / self.goal.size_mb - 1.0)
            scored.append((cost, cfg, ms, drop))
        scored.sort(key=lambda t: t[0])
        picks = scored[:n]
        if n >= 2 and len(scored) > n:  # explore: swap the last pick for a random feasible one
            rest = [s for s in scored[n:] if s[0] < 1e6] or scored[n:]
            picks[-1] = rest[int(self.rng.integers(len(rest)))]
        return [Candidate(c, ms, d) for _, c, ms, d in picks]


class TPE(AskTellStrategy):
    """optuna TPE on the measured goal cost (one categorical per knob)."""

    name = "tpe"

    def __init__(self, space: SearchSpace, goal: Goal, seed: int = 0) -> None:
        super().__init__(space, goal, seed)
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=seed))
        self.pending: dict[str, object] = {}
        self._dist = {k.name: optuna.distributions.CategoricalDistribution(list(k.choices))
                      for k in space.knobs}

    def propose(self, n: int) -> list[Candidate]:
        out = []
        for _ in range(n * 10):
            t = self.study.ask(self._dist)
            cfg = {k: t.params[k] for k in self._dist}
            h = config_hash(cfg)
            if self._fresh(cfg) and h not in self.pending:
                self.pending[h] = t
                out.append(Candidate(cfg))
            else:
                self.study.tell(t, state=__import__("optuna").trial.TrialState.PRUNED)
            if len(out) == n:
                break
        return out

    def _tell_ok(self, trial: Any, config: dict, result: dict) -> None:
        import optuna

        v = self.goal.cost(result["latency_ms"], result["acc_drop"], result["size_mb"])
        if trial is None:
            self.study.add_trial(optuna.trial.create_trial(
                params=config, distributions=self._dist, value=v))
        else:
            self.study.tell(trial, v)


def make_strategy(name: str, space: SearchSpace, goal: Goal, seed: int, budget: int,
                  latency_of: Callable[[dict], float] | None = None,
                  drop_of: Callable[[dict], float] | None = None, pool: int = 32,
                  min_keep: float | None = None, latency_model=None,
                  kernels_of: Callable[[dict], list] | None = None,
                  size_of: Callable[[dict], float] | None = None) -> Strategy:
    if name in ("hw", "flops"):
        if latency_of is None or drop_of is None:
            raise ConfigError(f"strategy '{name}' needs a latency model and an accuracy estimate")
        return ModelGuided(space, goal, seed, name, latency_of, drop_of, pool, size_of=size_of)
    if name == "uniform":
        return Uniform(space, goal, seed, budget, min_keep)
    if name == "random":
        return RandomSearch(space, goal, seed)
    if name == "tpe":
        return TPE(space, goal, seed)
    if name in ("rl", "bo") and (latency_of is None or drop_of is None):
        raise ConfigError(f"strategy '{name}' needs a latency model and an accuracy estimate")
    if name == "rl":
        from pfcompile.search.rl import DDPGStrategy

        return DDPGStrategy(space, goal, seed, latency_of, drop_of, latency_model=latency_model,
                            kernels_of=kernels_of, episodes_per_round=pool)
    if name == "bo":
        from pfcompile.search.bo import GPBayesOpt

        return GPBayesOpt(space, goal, seed, latency_of, drop_of)
    raise ConfigError(f"unknown strategy '{name}'; choose one of {', '.join(STRATEGIES)}")
