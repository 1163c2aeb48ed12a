"""``--strategy rl``: an AMC-style DDPG agent (He et al., ECCV 2018) that walks
the channel groups in graph order and picks each one's keep ratio.

Inner loop (cheap, many episodes) and outer loop (the device):

* One *episode* = one action per knob, in order. The state of step ``t`` is
  the knob's position, the anchor kernel's type and shapes, the MACs / bytes /
  predicted-latency share of the kernels the knob touches, the previous
  action, the latency removed so far, the latency share still ahead and the
  budget left (see :data:`STATE_NAMES`). The action is a keep ratio in
  ``[min keep, 1]``, rounded to the knob's vector-friendly choices.
* Budget (``--latency-ms`` / ``--speedup``): as in AMC each action is clipped
  so that, even if every later knob took its smallest choice, the candidate
  would meet the budget -- checked against the learned kernel-level XGBoost
  latency model (the loop's ``LatencyModel``), not FLOPs. Every finished
  episode therefore meets the budget *under the model*.
* Reward, computed without the device: predicted latency from that model and
  the cheap accuracy estimate the ``hw`` strategy ranks by (``drop_of``: top-1
  on a subset, agreement with the original model when there are no labels).
  With a budget: ``r = -drop / 100`` (AMC's ``-error``). Without one ("fastest
  within --max-acc-drop"): ``r = log(base_ms / ms) - 2 * max(0, drop - max_drop)``
  (``drop`` in points) -- AMC's ``-error * log(FLOPs)`` trades error against
  cost at a fixed rate; the hinge instead rewards speed freely until the drop
  allowance is spent, which is the goal the loop ranks by.
* Each step gets the episode's reward (AMC); a moving-average baseline is
  subtracted at update time; exploration is a truncated normal around the
  actor's action whose sigma decays per episode after random warm-up episodes;
  a replay buffer feeds the actor / critic (small MLPs) with soft target updates.
* ``propose(n)`` runs one round of episodes and sends the ``n`` best unseen
  episodes to the device (the loop's measurement budget). Measured results
  come back through ``tell`` and are replayed with the measured reward.
* The agent (networks, optimisers, buffer, noise, RNG, pending proposals) is
  saved in the run folder after every trial (``strategy_state.npz``), so
  ``--resume`` continues it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from pfcompile.errors import ConfigError, PfcompileError, SearchError
from pfcompile.search.space import Knob, SearchSpace, config_hash
from pfcompile.search.strategies import Candidate, Goal, Strategy

__all__ = ["STATE_NAMES", "DDPGStrategy", "LayerTable", "RLSettings", "one_torch_thread"]

_OPS = ("conv", "dwconv", "gconv", "gemm")
STATE_NAMES = ("step", *(f"op_{o}" for o in _OPS), "log_channels", "log_cin", "kernel", "stride",
               "log_hw", "macs_share", "bytes_share", "latency_share", "prev_action",
               "reduced", "rest", "budget_left")


@dataclass(frozen=True)
class RLSettings:
    hidden: int = 64
    lr_actor: float = 1e-4
    lr_critic: float = 1e-3
    tau: float = 0.01                # soft target update
    gamma: float = 1.0               # AMC: no discount over the layers
    batch_size: int = 64
    buffer_size: int = 4000
    episodes_per_round: int = 24     # episodes per propose() (the loop's pool)
    warmup_episodes: int = 24        # random actions before the agent acts
    sigma0: float = 0.5              # exploration noise (AMC's init delta)
    sigma_decay: float = 0.95        # per episode after warm-up
    sigma_min: float = 0.02
    baseline_alpha: float = 0.5      # moving-average reward baseline
    drop_penalty: float = 2.0        # fastest mode: reward lost per point over the allowance

    def __post_init__(self) -> None:
        if self.episodes_per_round < 1 or self.warmup_episodes < 0 or self.batch_size < 1:
            raise ConfigError(f"rl: bad settings {self}")


class LayerTable:
    """Per-knob static facts and the candidate's kernels *without* compressing it.

    Pruning a channel group only rewrites the channel dimensions equal to the
    group's width in the kernels it touches; those positions are found once per
    knob by pruning it alone, then a config's kernels are the base kernels with
    those dimensions substituted. The shortcut is checked against the real
    ``kernels_of`` on random configs and disabled (falling back to compressing)
    when it does not reproduce them exactly.
    """

    def __init__(self, space: SearchSpace, kernels_of: Callable[[dict], list],
                 rng: np.random.Generator, checks: int = 3) -> None:
        self.space, self.kernels_of = space, kernels_of
        default = space.default()
        self.base = list(kernels_of(default))
        self.subs: list[list[tuple[int, str, int]]] = [[] for _ in space.knobs]
        self.touched: list[list[int]] = []
        self.fast = all(k.kind == "keep" for k in space.knobs)
        for i, k in enumerate(space.knobs):
            lo = min(k.choices)
            try:
                ks = list(kernels_of({**default, k.name: lo}))
            except PfcompileError:  # this knob cannot be cut alone: no shortcut, no features
                self.fast = False
                self.touched.append([])
                continue
            if len(ks) != len(self.base):
                self.fast = False
                ks = ks[:len(self.base)]
            touched = []
            for j, (a, b) in enumerate(zip(self.base, ks)):
                if a.key != b.key:
                    touched.append(j)
                self._diff(i, j, a, b, k, lo)
            self.touched.append(touched)
        self.checks = 0
        if self.fast:
            for _ in range(checks):
                cfg = space.sample(rng)
                try:
                    real = [x.key for x in kernels_of(cfg)]
                except PfcompileError:
                    continue
                if [x.key for x in self.kernels(cfg)] != real:
                    self.fast = False
                    break
                self.checks += 1

    def _diff(self, i: int, j: int, a, b, k: Knob, lo: int) -> None:
        if (a.op, a.kernel, a.stride, a.pad, a.epilogue, a.bits) != \
                (b.op, b.kernel, b.stride, b.pad, b.epilogue, b.bits):
            self.fast = False
            return
        for f in ("in_shape", "w_shape", "out_shape"):
            va, vb = getattr(a, f), getattr(b, f)
            if len(va) != len(vb):
                self.fast = False
                return
            for p, (x, y) in enumerate(zip(va, vb)):
                if x != y:
                    if x == k.full and y == lo:
                        self.subs[i].append((j, f, p))
                    else:
                        self.fast = False
        if a.groups != b.groups:
            if a.groups == k.full and b.groups == lo:
                self.subs[i].append((j, "groups", -1))
            else:
                self.fast = False

    def kernels(self, config: dict) -> list:
        if not self.fast:
            return list(self.kernels_of(config))
        edits: dict[int, dict[str, object]] = {}
        for i, k in enumerate(self.space.knobs):
            v = config[k.name]
            if v == k.full:
                continue
            for j, f, p in self.subs[i]:
                e = edits.setdefault(j, {})
                if f == "groups":
                    e["groups"] = v
                else:
                    cur = list(e.get(f, getattr(self.base[j], f)))
                    cur[p] = v
                    e[f] = tuple(cur)
        return [dataclasses.replace(kn, **edits[j]) if j in edits else kn
                for j, kn in enumerate(self.base)]

    def static_features(self, i: int) -> list[float]:
        """op one-hot, log channels, log cin, kernel, stride, log out h*w, MACs / bytes share."""
        k = self.space.knobs[i]
        touched = self.touched[i]
        anchor = next((self.base[j] for j, f, p in self.subs[i] if f == "out_shape"), None)
        if anchor is None:
            anchor = self.base[touched[0]] if touched else self.base[0]
        ins, outs = anchor.in_shape or (1, 1), anchor.out_shape or (1, 1)
        hw = int(np.prod(outs[2:])) if len(outs) > 2 else 1
        macs = sum(x.macs for x in self.base) or 1
        nbytes = sum(x.bytes for x in self.base) or 1
        return [*(1.0 if anchor.op == o else 0.0 for o in _OPS),
                math.log2(max(1, k.full)) / 10, math.log2(max(1, ins[1] if len(ins) > 1 else 1)) / 10,
                anchor.kernel[0] / 7, anchor.stride[0] / 2, math.log2(max(1, hw)) / 12,
                sum(self.base[j].macs for j in touched) / macs,
                sum(self.base[j].bytes for j in touched) / nbytes]


@contextlib.contextmanager
def one_torch_thread():
    """Tiny MLPs: one torch thread is fastest, and spares a shared CPU."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


class _Buffer:
    """Replay buffer of (s, a, r, s', done); a ring of fixed capacity."""

    def __init__(self, cap: int, dim: int) -> None:
        self.cap, self.n, self.i = cap, 0, 0
        self.s = np.zeros((cap, dim), np.float32)
        self.a = np.zeros(cap, np.float32)
        self.r = np.zeros(cap, np.float32)
        self.s2 = np.zeros((cap, dim), np.float32)
        self.d = np.zeros(cap, np.float32)

    def add(self, s, a, r, s2, d) -> None:
        self.s[self.i], self.a[self.i], self.r[self.i], self.s2[self.i], self.d[self.i] = s, a, r, s2, d
        self.i = (self.i + 1) % self.cap
        self.n = min(self.cap, self.n + 1)

    def state(self) -> dict:
        return {"buf_s": self.s, "buf_a": self.a, "buf_r": self.r, "buf_s2": self.s2, "buf_d": self.d,
                "buf_n": self.n, "buf_i": self.i}

    def load(self, st: dict) -> None:
        if st["buf_s"].shape != self.s.shape:
            raise SearchError("rl: saved replay buffer does not match this search space")
        self.s, self.a, self.r = st["buf_s"].copy(), st["buf_a"].copy(), st["buf_r"].copy()
        self.s2, self.d = st["buf_s2"].copy(), st["buf_d"].copy()
        self.n, self.i = int(st["buf_n"]), int(st["buf_i"])


class _Agent:
    """DDPG: actor s -> a in [0, 1], critic (s, a) -> Q, target copies of both."""

    def __init__(self, dim: int, cfg: RLSettings, seed: int) -> None:
        import torch
        from torch import nn

        self.torch, self.cfg = torch, cfg
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)

            def mlp(i: int, out_act: nn.Module | None) -> nn.Sequential:
                layers = [nn.Linear(i, cfg.hidden), nn.ReLU(), nn.Linear(cfg.hidden, cfg.hidden),
                          nn.ReLU(), nn.Linear(cfg.hidden, 1)]
                return nn.Sequential(*layers, *([out_act] if out_act is not None else []))

            self.actor, self.critic = mlp(dim, nn.Sigmoid()), mlp(dim + 1, None)
            self.actor_t, self.critic_t = mlp(dim, nn.Sigmoid()), mlp(dim + 1, None)
        self.actor_t.load_state_dict(self.actor.state_dict())
        self.critic_t.load_state_dict(self.critic.state_dict())
        self.opt_a = torch.optim.Adam(self.actor.parameters(), lr=cfg.lr_actor)
        self.opt_c = torch.optim.Adam(self.critic.parameters(), lr=cfg.lr_critic)
        self.baseline: float | None = None

    def act(self, s: np.ndarray) -> float:
        with self.torch.no_grad():
            return float(self.actor(self.torch.as_tensor(s[None], dtype=self.torch.float32))[0, 0])

    def update(self, buf: _Buffer, rng: np.random.Generator) -> None:
        torch, cfg = self.torch, self.cfg
        idx = rng.integers(0, buf.n, size=min(cfg.batch_size, buf.n))
        s, a, s2 = (torch.as_tensor(x[idx]) for x in (buf.s, buf.a[:, None], buf.s2))
        r = buf.r[idx].astype(np.float64)
        mean = float(r.mean())
        self.baseline = mean if self.baseline is None else \
            self.baseline + cfg.baseline_alpha * (mean - self.baseline)
        r_t = torch.as_tensor((r - self.baseline)[:, None], dtype=torch.float32)
        d = torch.as_tensor(buf.d[idx][:, None])
        with torch.no_grad():
            q2 = self.critic_t(torch.cat([s2, self.actor_t(s2)], 1))
            target = r_t + cfg.gamma * (1 - d) * q2
        q = self.critic(torch.cat([s, a], 1))
        loss_c = torch.nn.functional.mse_loss(q, target)
        self.opt_c.zero_grad()
        loss_c.backward()
        self.opt_c.step()
        loss_a = -self.critic(torch.cat([s, self.actor(s)], 1)).mean()
        self.opt_a.zero_grad()
        loss_a.backward()
        self.opt_a.step()
        with torch.no_grad():
            for net, tgt in ((self.actor, self.actor_t), (self.critic, self.critic_t)):
                for p, pt in zip(net.parameters(), tgt.parameters()):
                    pt.mul_(1 - cfg.tau).add_(cfg.tau * p)

    def state(self) -> np.ndarray:
        f = io.BytesIO()
        self.torch.save({k: getattr(self, k).state_dict() for k in
                         ("actor", "critic", "actor_t", "critic_t", "opt_a", "opt_c")}, f)
        return np.frombuffer(f.getvalue(), dtype=np.uint8).copy()

    def load(self, blob: np.ndarray) -> None:
        d = self.torch.load(io.BytesIO(blob.tobytes()), weights_only=True)
        for k, v in d.items():
            getattr(self, k).load_state_dict(v)


@dataclass
class _Episode:
    config: dict
    states: list[list[float]]
    actions: list[float]
    pred_ms: float
    pred_drop: float
    reward: float


class DDPGStrategy(Strategy):
    """AMC-style DDPG over the keep knobs; see the module docstring."""

    name = "rl"

    def __init__(self, space: SearchSpace, goal: Goal, seed: int,
                 latency_of: Callable[[dict], float], drop_of: Callable[[dict], float], *,
                 latency_model=None, kernels_of: Callable[[dict], list] | None = None,
                 episodes_per_round: int | None = None,
                 settings: RLSettings | None = None) -> None:
        super().__init__(space, goal, seed)
        if goal.size_mb is not None:
            raise ConfigError("strategy 'rl' supports --latency-ms / --speedup budgets and the "
                              "fastest-within-drop goal, not --size-mb; use hw, bo or tpe")
        other = sorted({k.kind for k in space.knobs} - {"keep"})
        if other:
            raise SearchError(f"strategy 'rl' (AMC-style, one keep ratio per channel group) cannot "
                              f"search {'/'.join(other)} knobs; use --strategy hw, flops, random, "
                              "tpe or bo with --bits / --sparsity")
        if not space.knobs:
            raise ConfigError("strategy 'rl' needs a space of keep knobs (prunable channel groups)")
        cfg = settings or RLSettings()
        if episodes_per_round is not None and settings is None:
            cfg = dataclasses.replace(cfg, episodes_per_round=max(1, episodes_per_round),
                                      warmup_episodes=max(1, episodes_per_round))
        self.cfg = cfg
        self.latency_of, self.drop_of = latency_of, drop_of
        self.lat_model = latency_model
        self.table = LayerTable(space, kernels_of, self.rng) if kernels_of is not None else None
        self.static = [self.table.static_features(i) if self.table else [0.0] * 11
                       for i in range(len(space))]
        self.dim = len(STATE_NAMES)
        self.agent = _Agent(self.dim, cfg, seed)
        self.buffer = _Buffer(cfg.buffer_size, self.dim)
        self.episodes = 0
        self.sigma = cfg.sigma0
        self.pending: dict[str, dict] = {}    # proposed, not yet told: candidate + trajectory
        self._skip_tells = 0
        self._drop: dict[str, float] = {}
        self._ktime: dict[str, float] = {}
        self.history: list[dict] = []          # per round: episodes, best inner reward

    # ----------------------------------------------------------------- latency under the model
    def predict_ms(self, config: dict) -> float:
        """The latency model's prediction; kernel times cached per round (keys are
        exact workloads), so this equals ``latency_model.predict(kernels)``."""
        if self.lat_model is None or self.table is None:
            return float(self.latency_of(config))
        try:
            ks = self.table.kernels(config)
        except PfcompileError:  # a config the compressor refuses: never within a budget
            return math.inf
        new = [k for k in ks if k.key not in self._ktime]
        if new:
            uniq = list({k.key: k for k in new}.values())
            if hasattr(self.lat_model, "predict_kernels"):
                times = self.lat_model.predict_kernels(uniq)
            else:
                times = [self.lat_model.kernel_sum([k]) for k in uniq]
            self._ktime.update({k.key: float(t) for k, t in zip(uniq, times)})
        return float(self.lat_model.fit_(float(np.sum([self._ktime[k.key] for k in ks]))))

    def _drop_of(self, config: dict) -> float:
        h = config_hash(config)
        if h not in self._drop:
            self._drop[h] = float(self.drop_of(config))
        return self._drop[h]

    # ----------------------------------------------------------------- episodes
    def _lo(self, k: Knob) -> float:
        return min(k.choices) / k.full

    def _value(self, k: Knob, a: float) -> int:
        r = self._lo(k) + (1 - self._lo(k)) * a
        return min(k.choices, key=lambda c: (abs(c - r * k.full), -c))

    def _action_of(self, k: Knob, value: int) -> float:
        lo = self._lo(k)
        return float((value / k.full - lo) / (1 - lo)) if lo < 1 else 1.0

    def _clip(self, t: int, cfg: dict, value: int, target: float) -> int:
        """Largest choice <= value such that the config meets ``target`` even if
        every later knob takes its smallest choice (AMC's clipping)."""
        knobs = self.space.knobs
        tail = {k.name: min(k.choices) for k in knobs[t + 1:]}
        k = knobs[t]
        for c in sorted((c for c in k.choices if c <= value), reverse=True):
            if self.predict_ms({**cfg, k.name: c, **tail}) <= target:
                return c
        return min(k.choices)  # feasible by induction (checked at the round's start)

    def _state(self, t: int, cfg: dict, prev: float, base_ms: float, shares: list[float]) -> list[float]:
        n = len(self.space)
        now = self.predict_ms(cfg)  # knobs >= t still at full width
        now = now if math.isfinite(now) else base_ms
        left = 0.0
        if self.goal.latency_ms is not None:
            left = max(0.0, now - self.goal.latency_ms) / base_ms
        return [t / max(1, n - 1), *self.static[t], shares[t], prev, (base_ms - now) / base_ms,
                float(sum(shares[t + 1:])), left]

    def _reward(self, ms: float, drop: float, base_ms: float, measured: bool = False) -> float:
        if not math.isfinite(ms) or not math.isfinite(drop):
            return -10.0
        if self.goal.latency_ms is not None:
            r = -drop / 100.0
            if measured and ms > self.goal.latency_ms:
                r -= 1.0  # met under the model, missed on the device
            return r
        return math.log(base_ms / ms) - self.cfg.drop_penalty * max(0.0, drop - self.goal.max_acc_drop)

    def _episode(self, mode: str, base_ms: float, shares: list[float]) -> _Episode:
        cfg = self.space.default()
        states, actions = [], []
        prev = 1.0
        center = float(self.rng.uniform(0, 1))  # warm-up: light and heavy episodes alike
        for t, k in enumerate(self.space.knobs):
            s = self._state(t, cfg, prev, base_ms, shares)
            if mode == "random":
                a = float(np.clip(center + 0.15 * self.rng.standard_normal(), 0, 1))
            else:
                a = self.agent.act(np.asarray(s, np.float32))
                if mode == "explore":  # truncated normal around the actor's action
                    for _ in range(100):
                        x = a + self.sigma * float(self.rng.standard_normal())
                        if 0 <= x <= 1:
                            break
                    a = float(np.clip(x, 0, 1))
            v = self._value(k, a)
            if self.goal.latency_ms is not None:
                v = self._clip(t, cfg, v, self.goal.latency_ms)
            cfg[k.name] = v
            states.append(s)
            actions.append(self._action_of(k, v))
            prev = v / k.full
        ms, drop = self.predict_ms(cfg), self._drop_of(cfg)
        return _Episode(cfg, states, actions, ms, drop, self._reward(ms, drop, base_ms))

    def _learn(self, states: list, actions: list, reward: float, updates: bool) -> None:
        n = len(states)
        for t in range(n):
            s2 = states[t + 1] if t + 1 < n else states[t]
            self.buffer.add(np.asarray(states[t], np.float32), actions[t], reward,
                            np.asarray(s2, np.float32), float(t + 1 == n))
            if updates:
                self.agent.update(self.buffer, self.rng)

    def run_round(self, n_episodes: int) -> list[_Episode]:
        """Episodes on the latency model and the cheap accuracy estimate."""
        self._ktime.clear()  # the latency model may have learnt since the last round
        default = self.space.default()
        base_ms = self.predict_ms(default)
        shares = []
        for k in self.space.knobs:
            shares.append(max(0.0, base_ms - self.predict_ms({**default, k.name: min(k.choices)})) / base_ms)
        if self.goal.latency_ms is not None:
            smallest = self.predict_ms({k.name: min(k.choices) for k in self.space.knobs})
            if smallest > self.goal.latency_ms:
                raise SearchError(
                    f"rl: the latency target {self.goal.latency_ms:.4g} ms is below the latency "
                    f"model's prediction for the smallest candidate ({smallest:.4g} ms); raise the "
                    "target (or lower --speedup) or allow smaller keep ratios (min_keep)")
        with one_torch_thread():
            return self._round(n_episodes, base_ms, shares)

    def _round(self, n_episodes: int, base_ms: float, shares: list[float]) -> list[_Episode]:
        eps = []
        for _ in range(n_episodes):
            warm = self.episodes < self.cfg.warmup_episodes
            ep = self._episode("random" if warm else "explore", base_ms, shares)
            self._learn(ep.states, ep.actions, ep.reward, updates=not warm)
            if not warm:
                self.sigma = max(self.cfg.sigma_min, self.sigma * self.cfg.sigma_decay)
            self.episodes += 1
            eps.append(ep)
        greedy = self._episode("greedy", base_ms, shares)  # the policy without noise
        eps.append(greedy)
        self.history.append({"episodes": self.episodes, "sigma": self.sigma,
                             "best_reward": max(e.reward for e in eps),
                             "greedy_reward": greedy.reward})
        return eps

    # ----------------------------------------------------------------- Strategy
    def propose(self, n: int) -> list[Candidate]:
        if self.pending:  # proposals of a round cut short by a kill: measure those first
            return [Candidate(p["config"], p["pred_ms"], p["pred_drop"])
                    for p in list(self.pending.values())[:n]]
        eps = self.run_round(self.cfg.episodes_per_round)
        best: dict[str, _Episode] = {}
        for e in eps:
            h = config_hash(e.config)
            if self._fresh(e.config) and (h not in best or e.reward > best[h].reward):
                best[h] = e
        picks = sorted(best.values(), key=lambda e: -e.reward)[:n]
        for e in picks:
            self.pending[config_hash(e.config)] = {
                "config": e.config, "states": e.states, "actions": e.actions,
                "pred_ms": e.pred_ms, "pred_drop": e.pred_drop}
        return [Candidate(e.config, e.pred_ms, e.pred_drop) for e in picks]

    def tell(self, config: dict, result: dict) -> None:
        super().tell(config, result)
        if len(self.results) <= self._skip_tells:
            return  # replayed from the log: already in the saved agent
        p = self.pending.pop(config_hash(config), None)
        if p is None or result.get("status") != "ok":
            return
        base_ms = result["latency_ms"] * result.get("speedup", 1.0)
        r = self._reward(result["latency_ms"], result["acc_drop"], base_ms, measured=True)
        with one_torch_thread():
            self._learn(p["states"], p["actions"], r, updates=self.episodes >= self.cfg.warmup_episodes)

    def state_dict(self) -> dict:
        return {"agent": self.agent.state(), **self.buffer.state(),
                "episodes": self.episodes, "sigma": self.sigma, "baseline": self.agent.baseline,
                "rng": self.rng.bit_generator.state, "told": len(self.results),
                "pending": list(self.pending.values()), "history": self.history,
                "dim": self.dim, "knobs": [k.name for k in self.space.knobs]}

    def load_state_dict(self, state: dict) -> None:
        if state.get("knobs") != [k.name for k in self.space.knobs] or state.get("dim") != self.dim:
            raise SearchError("rl: the saved agent in this run folder belongs to another search "
                              "space; resume with the same model and settings")
        self.agent.load(state["agent"])
        self.buffer.load(state)
        self.episodes, self.sigma = int(state["episodes"]), float(state["sigma"])
        self.agent.baseline = state["baseline"]
        self.rng.bit_generator.state = state["rng"]
        self._skip_tells = int(state["told"])
        self.pending = {config_hash(p["config"]): p for p in state["pending"]}
        self.history = list(state["history"])
