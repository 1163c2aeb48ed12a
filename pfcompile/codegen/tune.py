"""Measured refinement of template parameters, steered by an XGBoost cost model
on template features; every measurement is appended to the records file the
moment it exists (a killed run keeps what it measured, a rerun skips tuned
workloads).

Per workload: measure the heuristic's params (and a tuned neighbour's) first,
then batches picked by the cost model (fitted on all measurements so far,
across workloads: per-MAC log latency), with a share picked at random.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tvm
from tvm import tirx

from pfcompile.codegen.kernels import KernelTimer
from pfcompile.codegen.pipeline import choose_params, fuse_to_tir
from pfcompile.codegen.records import Record, RecordDB
from pfcompile.codegen.templates import Hardware, Workload, match
from pfcompile.codegen.templates.base import params_to_dict
from pfcompile.errors import ConfigError, SearchError

__all__ = ["CostModel", "TuneSettings", "WorkloadResult", "tunable_workloads", "tune"]

TUNABLE = ("conv2d", "conv2d_1x1", "depthwise", "dense", "winograd", "matmul", "dwpw")
_FAMILY_ID = {f: i for i, f in enumerate(TUNABLE)}


@dataclass(frozen=True)
class TuneSettings:
    trials: int = 64            # measured candidates in total, heuristic included
    batch: int = 4              # candidates per library build (one upload over RPC)
    explore: float = 0.25       # share of each batch picked at random
    min_per_workload: int = 2
    seed: int = 0
    retune: bool = False        # tune workloads that already have records
    time_limit_s: float | None = None  # stop starting new measurements after this long

    def __post_init__(self) -> None:
        if self.trials < 1 or self.batch < 1:
            raise ConfigError(f"--trials and batch must be ≥ 1 (got {self.trials}, {self.batch})")
        if not 0.0 <= self.explore <= 1.0:
            raise ConfigError(f"explore must be within [0, 1] (got {self.explore})")
        if self.time_limit_s is not None and self.time_limit_s <= 0:
            raise ConfigError(f"--time-limit must be > 0 seconds (got {self.time_limit_s})")


@dataclass(frozen=True)
class WorkloadResult:
    key: str
    family: str
    count: int                  # kernels in the model with this workload
    macs: int
    heuristic_ms: float | None
    best_ms: float | None
    best_params: dict
    trials: int
    skipped: str = ""           # why it was not tuned (e.g. already has a record)

    @property
    def speedup(self) -> float | None:
        if self.heuristic_ms and self.best_ms:
            return self.heuristic_ms / self.best_ms
        return None


class CostModel:
    """XGBoost on template features → log(ms per MAC); update/predict (MetaSchedule style)."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self.x: list[list[float]] = []
        self.y: list[float] = []
        self._model = None

    @staticmethod
    def featurize(template: Any, wl: Workload, params: Any, hw: Hardware) -> list[float]:
        return [float(v) for v in template.features(wl, params, hw)] + [
            math.log(max(wl.macs, 1)), float(_FAMILY_ID.get(wl.family, -1))]

    def update(self, feats: list[list[float]], ms: list[float], macs: int) -> None:
        for f, m in zip(feats, ms, strict=True):
            self.x.append(f)
            self.y.append(math.log(m) - math.log(max(macs, 1)))
        if len(self.y) >= 4:
            import xgboost as xgb

            self._model = xgb.XGBRegressor(n_estimators=80, max_depth=4, learning_rate=0.2,
                                           n_jobs=1, random_state=self.seed)
            self._model.fit(np.asarray(self.x), np.asarray(self.y))

    def predict(self, feats: list[list[float]]) -> np.ndarray | None:
        if self._model is None or not feats:
            return None
        return self._model.predict(np.asarray(feats))


def tunable_workloads(mod: tvm.IRModule, target: Any) -> list[tuple[Any, Workload, tirx.PrimFunc, int]]:
    """(template, workload, one PrimFunc, count) per distinct tunable workload,
    heaviest first (MACs × occurrences). Every 3×3 stride-1 conv that Winograd can
    take appears three times — direct, F(2×2,3×3) and F(4×4,3×3) — so that the
    records let the compiler choose the algorithm per layer by measurement
    (:func:`pfcompile.codegen.templates.winograd.choose_algorithm`)."""
    seen: dict[str, list] = {}
    for variant in (None, 0, 2, 4):
        fused = fuse_to_tir(mod, target, winograd=variant)
        found: dict[str, list] = {}
        for f in fused.functions.values():
            if not isinstance(f, tirx.PrimFunc):
                continue
            t, wl = match(f)
            if t is None or wl.family not in TUNABLE:
                continue
            if variant is not None and wl.family not in ("conv2d", "winograd"):
                continue  # only the algorithm alternatives come from the variants
            if wl.key in found:
                found[wl.key][3] += 1
            else:
                found[wl.key] = [t, wl, f, 1]
        for key, v in found.items():
            if key not in seen:
                seen[key] = v
    out = [tuple(v) for v in seen.values()]
    out.sort(key=lambda v: -v[1].macs * v[3])
    return out


def _split_budget(wls: list, settings: TuneSettings) -> list[int]:
    """Measurements per workload, summing to at most ``settings.trials``: the
    heaviest workloads (MACs × occurrences) get ``min_per_workload`` first, the
    rest is shared in proportion to weight; a workload given 0 keeps its
    heuristic (or transferred) params."""
    weights = [wl.macs * count for _t, wl, _f, count in wls]
    order = sorted(range(len(wls)), key=lambda i: -weights[i])
    out = [0] * len(wls)
    left = settings.trials
    for i in order:
        take = min(settings.min_per_workload, left)
        out[i] = take
        left -= take
    total = sum(weights[i] for i in order if out[i]) or 1
    extra = [int(left * weights[i] / total) if out[i] else 0 for i in range(len(wls))]
    return [o + e for o, e in zip(out, extra, strict=True)]


def tune(mod: tvm.IRModule, target: Any, timer: KernelTimer, *, settings: TuneSettings,
         records_dir: Path | None = None,
         log: Callable[[str], None] | None = None) -> list[WorkloadResult]:
    """Tune every conv/depthwise/dense/Winograd/matmul workload of ``mod``, heaviest
    first; returns one result per workload. With ``settings.time_limit_s`` no new
    measurement starts after the limit (the heuristic of a workload already begun
    is always measured); the rest keep their heuristic (or transferred) params."""
    hw = Hardware.from_target(target)
    db = RecordDB.for_target(records_dir, target.name)
    rng = random.Random(settings.seed)
    cost = CostModel(settings.seed)
    say = log or (lambda _m: None)
    deadline = (time.monotonic() + settings.time_limit_s) if settings.time_limit_s else None
    wls = tunable_workloads(mod, target)
    if not wls:
        raise SearchError("no tunable kernel (conv2d, depthwise, dense, winograd, matmul) in "
                          "this model")
    budgets = _split_budget(wls, settings)
    results: list[WorkloadResult] = []
    for (template, wl, func, count), budget in zip(wls, budgets, strict=True):
        if budget == 0:
            results.append(WorkloadResult(wl.key, wl.family, count, wl.macs, None, None, {}, 0,
                                          "no budget left"))
            continue
        if deadline is not None and time.monotonic() >= deadline:
            results.append(WorkloadResult(wl.key, wl.family, count, wl.macs, None, None, {}, 0,
                                          "time limit reached"))
            continue
        old = db.get(wl.key)
        if old is not None and old.trials > 0 and not settings.retune:
            results.append(WorkloadResult(wl.key, wl.family, count, wl.macs, old.heuristic_ms,
                                          old.ms, old.params, 0, "has a record"))
            continue
        results.append(_tune_one(template, wl, func, count, budget, hw, target, timer, db, cost,
                                 rng, settings, say, deadline))
    return results


def _same(ref: Any, out: Any) -> bool:
    """A candidate's output against the heuristic's (same inputs)."""
    if ref is None or out is None:
        return True
    scale = max(1.0, float(np.abs(ref).max()))
    return bool(np.allclose(out, ref, rtol=1e-3, atol=1e-4 * scale))


def _tune_one(template: Any, wl: Workload, func: tirx.PrimFunc, count: int, budget: int,
              hw: Hardware, target: Any, timer: KernelTimer, db: RecordDB, cost: CostModel,
              rng: random.Random, settings: TuneSettings, say: Callable[[str], None],
              deadline: float | None = None) -> WorkloadResult:
    space = template.space(wl, hw)
    heur = template.heuristic(wl, hw)
    first = [heur]
    start, _src = choose_params(template, wl, hw, db)
    if start != heur:
        first.append(start)
    measured: dict[Any, float | None] = {}
    ref = None
    heur_ms: float | None = None
    best: tuple[float, Any] | None = None
    trials = 0
    while trials < budget:
        if deadline is not None and time.monotonic() >= deadline and heur_ms is not None:
            break
        todo = [p for p in first if p not in measured]
        first = []
        left = [p for p in space if p not in measured and p not in todo]
        n_more = min(settings.batch, budget - trials) - len(todo)
        if n_more > 0 and left:
            n_rand = round(n_more * settings.explore)
            feats = [CostModel.featurize(template, wl, p, hw) for p in left]
            pred = cost.predict(feats)
            if pred is None:
                picks = rng.sample(left, min(n_more, len(left)))
            else:
                order = list(np.argsort(pred))
                greedy = [left[i] for i in order[:max(0, n_more - n_rand)]]
                rest = [p for p in left if p not in greedy]
                picks = greedy + rng.sample(rest, min(n_rand, len(rest)))
            todo += picks
        if not todo:
            break
        funcs, ok = [], []
        for p in todo:
            try:
                funcs.append(template.apply(func, wl, p, hw))
                ok.append(p)
            except Exception:  # noqa: BLE001 - an unschedulable candidate is skipped
                measured[p] = None
                trials += 1
        timings = timer.time(funcs, target) if funcs else []
        good_f, good_ms = [], []
        for p, t in zip(ok, timings, strict=True):
            trials += 1
            measured[p] = t.ms
            if t.ms is None:
                continue
            if p == heur:
                heur_ms, ref = t.ms, t.output
            elif not _same(ref, t.output):
                say(f"{wl.key}: params {params_to_dict(p)} give a wrong result; dropped")
                measured[p] = None
                continue
            good_f.append(CostModel.featurize(template, wl, p, hw))
            good_ms.append(t.ms)
            if best is None or t.ms < best[0]:
                best = (t.ms, p)
            db.add(Record(wl.key, wl.family, wl.d, params_to_dict(p), t.ms, target.name,
                          trials=trials, heuristic_ms=heur_ms))
        if good_ms:
            cost.update(good_f, good_ms, wl.macs)
    say(f"{wl.key}: heuristic {heur_ms} ms, best {best[0] if best else None} ms, {trials} trials")
    return WorkloadResult(wl.key, wl.family, count, wl.macs, heur_ms,
                          best[0] if best else None,
                          params_to_dict(best[1]) if best else {}, trials)
