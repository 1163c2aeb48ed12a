"""Two roles of the search loop: the kernel timer and the trial runner.

- :class:`SearchKernelTimer`: which kernels to time (new ones, at most ``limit`` a call,
  a seeded sample), timing them on the device (:meth:`SearchDevice.measure_kernels`),
  feeding the kernel-level latency model and logging them (one scale across runs: the
  reference kernel's time is kept in the latency model's cache).
- :class:`TrialRunner`: a round of proposals -> compressed and scored here (the
  candidate factory; the accuracy judge: the drop with its paired interval and verdict,
  :mod:`pfcompile.search.judge`), measured together on the device
  (:meth:`SearchDevice.measure_many`: a single device is a pool of one), each trial
  logged as its measurement arrives (its ``id``: its place in the log), the strategy
  (which learns from the upper bound of the drop, :func:`~pfcompile.search.judge.strategy_view`)
  and the latency model told, new kernels timed after the round.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from pfcompile.errors import PfcompileError
from pfcompile.model import model_hash
from pfcompile.search.candidates import CandidateFactory
from pfcompile.search.devices import Measurement, SearchDevice
from pfcompile.search.graph import Kernel
from pfcompile.search.judge import AccuracyJudge, strategy_view
from pfcompile.search.latency_model import LatencyModel
from pfcompile.search.runlog import RunLog
from pfcompile.search.sizing import set_measured_size, size_kind
from pfcompile.search.space import config_hash
from pfcompile.search.state import save_strategy_state

__all__ = ["SearchKernelTimer", "TrialRunner", "acc_drop"]

Emit = Callable[[str, dict], None]


def acc_drop(base: float, score: float) -> float:
    """Accuracy points lost (scores are fractions)."""
    return 100.0 * (base - score)


class SearchKernelTimer:
    """Times kernels the latency model does not know yet (see the module docstring);
    ``count``: kernel measurements so far, logged ones included."""

    def __init__(self, lat_model: Any, device: SearchDevice, log: RunLog,
                 cache_path: Path | None, emit: Emit) -> None:
        self.lat_model, self.device, self.log = lat_model, device, log
        self.cache_path, self.emit = cache_path, emit
        self.count = 0
        for r in log.of_type("kernels"):          # a resumed run's kernel timings
            if isinstance(lat_model, LatencyModel):
                ks = [Kernel.from_json(x["kernel"]) for x in r["items"]]
                lat_model.update_kernels(ks, [x["ms"] for x in r["items"]])
                self.count += len(ks)

    def __call__(self, kernels: list[Kernel], limit: int | None) -> None:
        lm = self.lat_model
        if not isinstance(lm, LatencyModel):
            return
        todo, keys = [], set()
        for k in kernels:
            if not lm.known(k) and k.key not in keys:
                todo.append(k)
                keys.add(k.key)
        if limit is not None and len(todo) > limit:
            idx = np.random.default_rng(len(lm.kernels)).choice(len(todo), limit, replace=False)
            todo = [todo[int(i)] for i in sorted(idx)]
        if not todo:
            return
        self.emit("kernels", {"n": len(todo)})
        if lm.reference_ms is not None:
            self.device.kernel_reference_ms = lm.reference_ms  # one scale across runs
        times = self.device.measure_kernels(todo)
        lm.reference_ms = self.device.kernel_reference_ms or lm.reference_ms
        items = [{"key": k.key, "kernel": k.to_json(), "ms": t} for k, t in zip(todo, times)
                 if t is not None]
        lm.update_kernels(todo, times)
        self.count += len(items)
        self.log.append({"type": "kernels", "items": items, "time": time.time()})
        if self.cache_path:
            lm.save(self.cache_path)


class TrialRunner:
    """Runs rounds of proposals (see the module docstring); ``trials``: every trial
    record, the logged ones of a resumed run first."""

    def __init__(self, *, space: Any, candidates: CandidateFactory, judge: AccuracyJudge,
                 device: SearchDevice, log: RunLog, strategy: Any, strategy_name: str,
                 lat_model: Any, kernel_timer: SearchKernelTimer, kernels_per_trial: int,
                 base: dict, goal: Any, emit: Emit, trials: list[dict],
                 steer: Any = None) -> None:
        self.space, self.candidates, self.judge = space, candidates, judge
        self.device, self.log, self.strat, self.strategy_name = device, log, strategy, strategy_name
        self.lat_model, self.kernel_timer = lat_model, kernel_timer
        self.kernels_per_trial = kernels_per_trial
        self.base, self.goal, self.emit = base, goal, emit
        self.steer = steer   # the strategy's goal when fine-tuning may win drops back
        self.trials = trials

    def record(self, c: Any, rec: dict) -> None:
        """Log a finished trial (its id: its place in the log), tell the strategy,
        update the latency model."""
        rec["id"] = len(self.trials)
        if rec.get("size"):
            self.candidates.sizes.observe(rec.get("size_kind", "float"), rec["size"]["code_bytes"])
        self.log.append(rec)
        self.trials.append(rec)
        self.strat.tell(c.config, strategy_view(rec))
        state = self.strat.state_dict()
        if state is not None:
            save_strategy_state(self.log.run_dir, state)
        if rec["status"] == "ok" and self.lat_model is not None:
            self.lat_model.update_model(self.candidates.candidate(c.config)[1], rec["latency_ms"])
        self.emit("trial", rec)

    def round(self, props: list) -> None:
        """Compress and score ``props`` here, measure them together on the device; each
        trial is logged as its measurement arrives, new kernels timed after."""
        ready = []
        for c in props:
            rec, cm, t0 = self.prepare(c)
            if cm is None:
                self.record(c, rec)
            else:
                ready.append((c, rec, cm, t0))
        if not ready:
            return
        self.emit("measuring", {"n": len(ready)})

        def arrived(i: int, m: Measurement) -> None:
            c, rec, _, t0 = ready[i]
            self.record(c, self.finish(rec, m, t0))

        run_dir = self.log.run_dir
        self.device.measure_many([(cm, run_dir / "artifacts" / rec["model_hash"])
                                  for _, rec, cm, _ in ready], on_result=arrived)
        for c, rec, _, _ in ready:
            if rec["status"] == "ok":
                self.kernel_timer(self.candidates.candidate(c.config)[1], self.kernels_per_trial)

    def prepare(self, c: Any) -> tuple[dict, onnx.ModelProto | None, float]:
        """Compress and evaluate (the drop with its interval and verdict, the judge's):
        ``(record, compressed model or None when that failed, t0)``."""
        t0 = time.time()
        rec: dict = {"type": "trial", "id": len(self.trials), "strategy": self.strategy_name,
                     "config": c.config, "config_hash": config_hash(c.config),
                     "status": "failed", "error": None, "latency_ms": None,
                     "pred_ms": c.pred_ms, "pred_drop": c.pred_drop, "measured": False,
                     "feasible": False}
        try:
            cm, kernels = self.candidates.candidate(c.config)
        except PfcompileError as exc:
            rec["error"] = f"compress failed: {exc}"
            return rec, None, t0
        rec.update({"model_hash": model_hash(cm), "macs": sum(k.macs for k in kernels),
                    "size_mb": self.candidates.sizes.predict_mb(cm), "size_kind": size_kind(cm),
                    "keep": self.space.keep_ratios(c.config)})
        for kind in ("bits", "sparsity"):  # the layers moved off their default, when searched
            if kind in self.space.kinds():
                rec[kind] = self.space.layer_values(c.config, kind)
        if rec["pred_ms"] is None and self.lat_model is not None:
            rec["pred_ms"] = self.lat_model.predict(kernels)
        rec.update(self.judge.fields(cm))
        return rec, cm, t0

    def finish(self, rec: dict, m: Measurement, t0: float) -> dict:
        """Fill ``rec`` from the device's measurement ``m``."""
        rec["measured"] = True
        rec["so_path"] = m.so_path
        set_measured_size(rec, m.so_path)
        rec.update(m.details)    # e.g. simulated / measured parts, also on failure
        if not m.ok:
            rec["error"] = m.error
        else:
            rec["status"] = "ok"
            rec["latency_ms"] = m.latency_ms
            rec["raw_ms"] = m.raw_ms
            rec["paired"] = m.paired
            rec["speedup"] = self.base["latency_ms"] / m.latency_ms
            # accuracy: the upper bound of the drop must be within budget and the interval
            # narrow enough to tell (pfcompile.search.judge); latency / size: the goal's budgets
            rec["feasible"] = (self.goal.feasible(m.latency_ms,
                                                  rec.get("acc_drop_upper", rec["acc_drop"]),
                                                  rec["size_mb"]) and not rec.get("acc_refused"))
            if self.steer is not None:   # within the drop fine-tuning may win back
                rec["recoverable"] = self.steer.feasible(
                    m.latency_ms, rec.get("acc_drop_upper", rec["acc_drop"]), rec["size_mb"])
        rec["seconds"] = time.time() - t0
        rec["time"] = time.time()
        return rec
