"""``--strategy bo``: Gaussian-process Bayesian optimisation over the search
space, with the budget as a constraint (optuna's ``GPSampler``: a GP on the
objective, one GP per constraint, constrained log-EI).

* Initial design (the first ``n_startup`` points): small steps from the
  unpruned model and samples around keep ratios in [0.5, 1], as ``hw`` draws its
  pool; then the GP chooses.
* Each keep knob is an ordinal integer (the index of its vector-friendly
  choice), so the GP sees "more / fewer channels" as a distance.
* Objective: ``log(latency_ms)`` in the fastest-within-drop mode; the accuracy
  drop (points) when a ``--latency-ms`` / ``--speedup`` / ``--size-mb`` budget
  is set. Constraints (``<= 0`` is feasible): ``drop - max_acc_drop``, plus
  ``latency - target`` or ``size - size_mb`` for a budget.
* Hardware-aware screening: before a proposal spends a device measurement, its
  latency is predicted with the learned kernel-level latency model and its
  accuracy with the cheap estimate the ``hw`` strategy uses. An ask that the
  models call infeasible (latency over the target, or a drop over the
  allowance plus ``drop_margin``) is not measured: it is told to the GP with
  the predicted values (marked ``source=model``) and another ask is made, up to
  ``screen`` per proposal; after that the screened point nearest the goal is
  measured anyway (so a proposal always comes back, and it is the most useful
  infeasible one rather than a fresh random ask). Measured candidates enter the GP with the device's
  latency and the full evaluation's drop (``source=device``).
* ``--resume``: measured trials come back from the trial log; the screened
  (model) points are saved in the run folder (``strategy_state.npz``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

from pfcompile.search.space import SearchSpace, config_hash
from pfcompile.search.strategies import AskTellStrategy, Candidate, Goal

__all__ = ["GPBayesOpt"]


class GPBayesOpt(AskTellStrategy):
    name = "bo"

    def __init__(self, space: SearchSpace, goal: Goal, seed: int,
                 latency_of: Callable[[dict], float], drop_of: Callable[[dict], float], *,
                 n_startup: int = 8, screen: int = 6, drop_margin: float = 0.5) -> None:
        super().__init__(space, goal, seed)
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.optuna = optuna
        self.latency_of, self.drop_of = latency_of, drop_of
        self.screen, self.drop_margin, self.n_startup = screen, drop_margin, n_startup
        self.sampler = optuna.samplers.GPSampler(seed=seed, n_startup_trials=n_startup,
                                                 warn_independent_sampling=False)
        self.study = optuna.create_study(direction="minimize", sampler=self.sampler)
        self.dist = {k.name: optuna.distributions.IntDistribution(0, len(k.choices) - 1)
                     for k in space.knobs}
        self.pending: dict[str, object] = {}
        self.screened: list[dict] = []     # points told from the models, not the device
        self._screened_hashes: set[str] = set()
        self._drop: dict[str, float] = {}

    # ------------------------------------------------------------------ encoding
    def _config(self, params: dict) -> dict:
        return {k.name: k.choices[int(params[k.name])] for k in self.space.knobs}

    def _params(self, config: dict) -> dict:
        return {k.name: k.choices.index(config[k.name]) for k in self.space.knobs}

    def objective_and_constraints(self, latency_ms: float, acc_drop: float,
                                  size_mb: float | None) -> tuple[float, dict[str, float]]:
        g = self.goal
        lat = latency_ms if math.isfinite(latency_ms) and latency_ms > 0 else 1e9
        drop = acc_drop if math.isfinite(acc_drop) else 100.0
        cons = {"drop": drop - g.max_acc_drop}
        if g.latency_ms is not None:
            cons["latency"] = lat - g.latency_ms
        if g.size_mb is not None:
            cons["size"] = 0.0 if size_mb is None else size_mb - g.size_mb  # None: not known yet
        value = math.log(lat) if g.mode == "fastest" else drop
        return value, cons

    def _tell_point(self, trial, value: float, cons: dict[str, float]) -> None:
        for k, v in cons.items():
            trial.set_constraint(k, v)
        self.study.tell(trial, value)

    def _add_point(self, params: dict, value: float, cons: dict[str, float], source: str) -> None:
        self.study.add_trial(self.optuna.trial.create_trial(
            params=params, distributions=self.dist, value=value, user_attrs={"source": source},
            system_attrs={f"constraints:{k}": v for k, v in cons.items()}))

    def _cheap_drop(self, config: dict) -> float:
        h = config_hash(config)
        if h not in self._drop:
            self._drop[h] = float(self.drop_of(config))
        return self._drop[h]

    # ------------------------------------------------------------------ Strategy
    def propose(self, n: int) -> list[Candidate]:
        from pfcompile.search.rl import one_torch_thread

        with one_torch_thread():  # the GP fits are small: one thread, on a shared CPU
            return self._propose(n)

    def _startup_point(self) -> dict:
        """The initial design: like ``hw``'s pool, half small steps from the unpruned
        model, half broad samples around a random keep ratio in [0.5, 1] (uniform
        choice indices would mostly prune far too much to stay accurate)."""
        if len(self.study.trials) % 2 == 0:
            return self.space.mutate(self.space.default(), self.rng, n=int(self.rng.integers(1, 4)))
        return self.space.sample_around(self.rng, float(self.rng.uniform(0.5, 1.0)), 0.12)

    def _violation(self, ms: float, drop: float) -> float:
        """How far the models put a config outside the goal (0: inside)."""
        g = self.goal
        v = max(0.0, drop - g.max_acc_drop) / max(1.0, g.max_acc_drop)
        if g.latency_ms is not None:
            v += max(0.0, ms - g.latency_ms) / g.latency_ms
        return v if math.isfinite(v) else math.inf

    def _propose(self, n: int) -> list[Candidate]:
        out: list[Candidate] = []
        for _ in range(n):
            screened: list[tuple[float, dict, float, float]] = []
            for _ in range(20 + self.screen):
                if len(self.study.trials) < self.n_startup:
                    self.study.enqueue_trial(self._params(self._startup_point()), skip_if_exists=True)
                t = self.study.ask(self.dist)
                cfg = self._config(t.params)
                h = config_hash(cfg)
                if (not self._fresh(cfg) or h in self.pending or h in self._screened_hashes
                        or any(c.config == cfg for c in out)):
                    # the GP's optimum is a point it has: ask a random fresh one next
                    self.study.tell(t, state=self.optuna.trial.TrialState.PRUNED)
                    fresh = self.space.sample_around(self.rng, float(self.rng.uniform(0.4, 1.0)), 0.12)
                    self.study.enqueue_trial(self._params(fresh), skip_if_exists=True)
                    continue
                ms, drop = float(self.latency_of(cfg)), self._cheap_drop(cfg)
                lat_bad = self.goal.latency_ms is not None and ms > self.goal.latency_ms
                drop_bad = drop > self.goal.max_acc_drop + self.drop_margin
                if lat_bad or drop_bad:
                    value, cons = self.objective_and_constraints(ms, drop, None)
                    t.set_user_attr("source", "model")
                    self._tell_point(t, value, cons)
                    self.screened.append({"params": t.params, "value": value, "cons": cons})
                    self._screened_hashes.add(h)
                    screened.append((self._violation(ms, drop), cfg, ms, drop))
                    if len(screened) < self.screen:
                        continue
                    # screening gave up: measure the screened point nearest the goal
                    # (already in the GP as a model point; tell() adds the device one)
                    _, cfg, ms, drop = min(screened, key=lambda x: x[0])
                    self.pending[config_hash(cfg)] = None
                    out.append(Candidate(cfg, ms, drop))
                    break
                self.pending[h] = t
                out.append(Candidate(cfg, ms, drop))
                break
        return out

    def _tell_ok(self, trial, config: dict, result: dict) -> None:
        value, cons = self.objective_and_constraints(result["latency_ms"], result["acc_drop"],
                                                     result.get("size_mb"))
        if trial is None:  # replayed from the log on --resume
            self._add_point(self._params(config), value, cons, "device")
        else:
            trial.set_user_attr("source", "device")
            self._tell_point(trial, value, cons)

    def state_dict(self) -> dict:
        return {"screened": self.screened, "knobs": [k.name for k in self.space.knobs]}

    def load_state_dict(self, state: dict) -> None:
        if state.get("knobs") != [k.name for k in self.space.knobs]:
            return  # another space: start the GP from the log alone
        for p in state.get("screened", []):
            self._add_point(p["params"], p["value"], p["cons"], "model")
            self._screened_hashes.add(config_hash(self._config(p["params"])))
        self.screened = list(state.get("screened", []))
