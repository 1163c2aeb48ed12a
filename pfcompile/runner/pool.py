"""A device pool: one runner over N sessions. A single device is a pool of one.

:class:`PoolRunner` holds ``size`` slots, each a runner of its own (for N servers behind
one tracker key: N :class:`~pfcompile.runner.rpc.RPCRunner` asking the tracker for a
session each; the tracker hands concurrent requests to different free servers). It
runs up to ``size`` jobs at once, one worker thread per slot:

* :meth:`PoolRunner.submit` queues one run and returns a future;
  :meth:`PoolRunner.run_many` runs a batch and calls ``on_result(i, result)`` in the
  caller's thread as each one completes; :meth:`PoolRunner.run` is a batch of one.
* ``live()`` (optional) says how many servers are alive now (a tracker's count): a
  batch runs at most that many at once, and with none left every job fails at once (a
  tracker would queue a request for a key with no server forever).
* ``on_change(status)`` (optional) is called, from worker threads, whenever a slot
  changes stage (idle, waiting for its session, on the device).
* Kernel timing (:meth:`PoolRunner.time_kernels`) runs on one slot.

Several servers on one machine share its cores: their latencies measured at the same
time disturb each other. A pool of servers on one host checks the parallel path; it is
no way to speed up latency measurement on a 2-core machine.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pfcompile.runner.base import (
    KernelCall,
    KernelTimes,
    KernelTiming,
    Paired,
    Runner,
    RunnerResult,
)
from pfcompile.targets import MeasureSettings

__all__ = ["IDLE", "ON_DEVICE", "WAITING", "PoolRunner", "PoolStatus", "RunJob"]

_log = logging.getLogger(__name__)

#: stages a slot goes through for one run
IDLE, WAITING, ON_DEVICE = "idle", "waiting", "on device"


@dataclass(frozen=True)
class PoolStatus:
    """A snapshot of the pool: slots per stage, devices alive, failed runs."""

    size: int
    stages: tuple[str, ...]
    live: int | None
    failures: int

    @property
    def busy(self) -> int:
        return sum(s != IDLE for s in self.stages)

    @property
    def idle(self) -> int:
        return self.size - self.busy

    @property
    def text(self) -> str:
        live = "" if self.live is None or self.live == self.size else f", {self.live} alive"
        return (f"{self.size} devices{live}: {self.busy} busy, {self.idle} idle; "
                f"{self.failures} failures")

    def to_json(self) -> dict:
        return {"size": self.size, "busy": self.busy, "idle": self.idle, "live": self.live,
                "stages": list(self.stages), "failures": self.failures}


@dataclass(frozen=True)
class RunJob:
    """One run for :meth:`PoolRunner.run_many`."""

    artifact: str | Path
    inputs: dict[str, np.ndarray]
    settings: MeasureSettings | None = None
    paired: Paired | None = None


class PoolRunner(Runner):
    """``slots`` (runners) used at once; see the module docstring. ``no_live`` is the
    error a job gets when ``live()`` says no device is left."""

    def __init__(self, slots: Sequence[Runner], name: str = "", *,
                 live: Callable[[], int | None] | None = None,
                 on_change: Callable[[PoolStatus], None] | None = None,
                 no_live: str = "no live device left") -> None:
        if not slots:
            raise ValueError("a pool needs at least one runner")
        self.slots = list(slots)
        self.size = len(self.slots)
        self._name = name or (self.slots[0].name if self.size == 1
                              else f"{self.slots[0].name} x{self.size}")
        self.live = live
        self.on_change = on_change
        self.no_live = no_live
        self.failures = 0
        self._live: int | None = self.size
        self._stages = [IDLE] * self.size
        self._free = list(range(self.size))
        self._state = threading.Lock()
        self._slot_ready = threading.Condition(self._state)
        self._executor = ThreadPoolExecutor(max_workers=self.size,
                                            thread_name_prefix="pfcompile-pool")
        self._closed = False
        for i, s in enumerate(self.slots):
            s.on_step = self._step_reporter(i)    # RPC runners report their steps

    @property
    def name(self) -> str:  # type: ignore[override]
        return self._name

    # -- state --------------------------------------------------------------
    def _step_reporter(self, index: int) -> Callable[[str], None]:
        def report(step: str) -> None:
            stage = WAITING if step == "connect" else IDLE if step == "done" else ON_DEVICE
            if stage == IDLE:
                return                     # the slot goes idle when it is released
            if self._stages[index] != stage:
                self.set_stage(index, stage)
        return report

    def set_stage(self, index: int, stage: str) -> None:
        with self._state:
            self._stages[index] = stage
        if self.on_change is not None:
            try:
                self.on_change(self.snapshot())
            except Exception:  # noqa: BLE001 - a display's error must not fail a run
                _log.exception("device pool %s: on_change failed", self.name)

    def snapshot(self) -> PoolStatus:
        with self._state:
            stages = tuple(self._stages)
        return PoolStatus(self.size, stages, self._live, self.failures)

    def live_devices(self) -> int | None:
        """Devices alive now (``live()``; None when it cannot tell)."""
        if self.live is None:
            return None
        try:
            n = self.live()
        except Exception:  # noqa: BLE001 - a tracker that does not answer: unknown
            n = None
        self._live = n
        return n

    def _acquire(self, limit: int) -> int:
        """A free slot, waiting while ``limit`` slots are busy."""
        with self._slot_ready:
            while not self._free or self.size - len(self._free) >= limit:
                self._slot_ready.wait()
            return self._free.pop(0)

    def _release(self, index: int) -> None:
        with self._slot_ready:
            self._free.append(index)
            self._slot_ready.notify_all()
        self.set_stage(index, IDLE)

    # -- running ------------------------------------------------------------
    def _run_one(self, job: RunJob, limit: int) -> RunnerResult:
        index = self._acquire(limit)
        slot = self.slots[index]
        try:
            if self._closed:  # a caller gave up on this batch (an exception, a kill)
                return RunnerResult.failure(f"device pool {self.name} was closed before this "
                                            f"job ran", "device", self.name)
            self.set_stage(index, WAITING)
            if self.live is not None and self.live_devices() == 0:
                res = RunnerResult.failure(self.no_live, "device", self.name)
            else:
                res = slot.run(job.artifact, job.inputs, job.settings, paired=job.paired)
        except Exception as exc:  # noqa: BLE001 - a failure is a value, never a crash
            res = RunnerResult.failure(f"device pool {self.name}, slot {index}: {exc!r}",
                                       "device", self.name)
        finally:
            self._release(index)
        if not res.ok and res.error_kind in ("device", "timeout"):
            with self._state:
                self.failures += 1
        return res

    @property
    def closed(self) -> bool:
        return self._closed

    def limit(self) -> int:
        """How many jobs may run at once now (0: no device left)."""
        live = self.live_devices()
        if live == 0:
            return 0
        return self.size if live is None else max(1, min(self.size, live))

    def submit(self, job: RunJob, limit: int | None = None) -> Future:
        """Queue one run; a future of its :class:`RunnerResult`."""
        if self._closed:
            from pfcompile.errors import DeviceError

            raise DeviceError(f"device pool {self.name} is closed")
        return self._executor.submit(self._run_one, job, limit or self.size)

    def run_many(self, jobs: Sequence[RunJob],
                 on_result: Callable[[int, RunnerResult], None] | None = None
                 ) -> list[RunnerResult]:
        """Run every job, up to as many at once as there are live devices; the results in
        submission order. ``on_result(i, r)`` runs in this thread as soon as job ``i`` is
        done; an exception from it cancels the jobs not yet started and propagates."""
        if self._closed:
            from pfcompile.errors import DeviceError

            raise DeviceError(f"device pool {self.name} is closed")
        if not jobs:
            return []
        limit = self.limit()
        if limit == 0:
            out = [RunnerResult.failure(self.no_live, "device", self.name) for _ in jobs]
            if on_result is not None:
                for i, r in enumerate(out):
                    on_result(i, r)
            return out
        futures = {self.submit(j, limit): i for i, j in enumerate(jobs)}
        return self.gather(futures, on_result, len(jobs))

    def gather(self, futures: dict[Future, int],
               on_result: Callable[[int, RunnerResult], None] | None,
               n: int) -> list[RunnerResult]:
        """Wait for ``futures`` (future -> job index), reporting each as it completes."""
        results: list[RunnerResult | None] = [None] * n
        pending = set(futures)
        try:
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for f in sorted(done, key=futures.__getitem__):
                    i = futures[f]
                    results[i] = f.result()
                    if on_result is not None:
                        on_result(i, results[i])
        except BaseException:
            for f in pending:
                f.cancel()
            raise
        return [r for r in results if r is not None]

    def run(self, artifact: str | Path, inputs: dict[str, np.ndarray],
            settings: MeasureSettings | None = None, *,
            paired: Paired | None = None) -> RunnerResult:
        return self.run_many([RunJob(artifact, inputs, settings, paired)])[0]

    def time_kernels(self, library: str | Path | None, calls: Sequence[KernelCall],
                     settings: MeasureSettings, *, reference: KernelCall | None = None,
                     reference_ms: float | None = None, rounds: int = 5,
                     fetch_outputs: bool = False) -> KernelTimes:
        if self.limit() == 0:
            return KernelTimes([KernelTiming(None, self.no_live) for _ in calls],
                               reference_ms, self.no_live)
        index = self._acquire(self.size)
        try:
            out = self.slots[index].time_kernels(library, calls, settings, reference=reference,
                                                 reference_ms=reference_ms, rounds=rounds,
                                                 fetch_outputs=fetch_outputs)
        finally:
            self._release(index)
        if out.error is not None:
            with self._state:
                self.failures += 1
        return out

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._executor.shutdown(wait=False, cancel_futures=True)
            for s in self.slots:
                s.close()
