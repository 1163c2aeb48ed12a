"""A pool of devices behind one tracker key: measure several candidates at once.

When ``N`` servers are registered at a TVM tracker under one key, a
:class:`DevicePool` measures up to ``N`` candidates at the same time: one worker
thread per slot, each slot an :class:`~pfcompile.search.devices.RPCDevice` that
asks the tracker for its own session for every measurement (the tracker hands
concurrent requests to different free servers). The pool *composes*
``RPCDevice``: verification, timing and error handling are RPCDevice's own, so a
change to its measurement protocol applies here unchanged.

* :meth:`DevicePool.measure_many` takes ``[(model, work_dir), ...]`` and returns
  the :class:`~pfcompile.search.devices.Measurement` of each in submission order;
  ``on_result(index, measurement)`` is called in the caller's thread as each one
  completes, so the caller can log it the moment it exists.
* Compilation runs in the workers, one at a time (TVM's ONNX importer is not
  thread-safe: two ``from_onnx`` calls in two threads fail), so the compile of
  one candidate overlaps the measurement of another; with ``compile_first``
  (servers on this machine, where a compile disturbs a measurement beside it)
  :meth:`DevicePool.measure_many` compiles every job before measuring any. Kernel timing
  (:meth:`DevicePool.measure_kernels`) builds the kernels inside RPCDevice, so
  it runs on one slot, under the same lock; ``kernel_reference_ms`` is one value
  for all slots.
* Paired timing (:meth:`RPCDevice.set_reference`) carries over: the pool
  measures the reference on one slot, and each other slot measures it (scaled to
  the first one's latency) before its first candidate.
* A server that dies mid-measurement fails the measurement in flight on it (a
  value with ``error`` set, as RPCDevice returns); the tracker drops the dead
  server, and :meth:`measure_many` asks the tracker how many servers are alive
  before each batch, and again before each session, and runs at most that many
  at once (a request for a key with no server would wait at the tracker
  forever). With none left, every job fails at once with an error naming the
  tracker and key.

Several servers on one machine share its cores: their latencies measured at the
same time disturb each other. A pool of servers on one host checks the parallel
path; it is no way to speed up latency measurement on a 2-core machine.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import onnx

from pfcompile.compiler import compile_model
from pfcompile.device import query
from pfcompile.errors import DeviceError
from pfcompile.search.devices import Measurement, RPCDevice
from pfcompile.search.graph import Kernel
from pfcompile.targets import Target

__all__ = ["DevicePool", "PoolStatus", "count_devices", "open_rpc_device"]

_log = logging.getLogger(__name__)

#: stages a slot goes through for one measurement
IDLE, COMPILING, WAITING, ON_DEVICE = "idle", "compiling", "waiting", "on device"


def count_devices(tracker: str, key: str, timeout_s: float = 10.0) -> int:
    """How many servers the tracker at ``tracker`` (``host:port``) lists under ``key``
    (0 when none); DeviceError when the tracker does not answer."""
    for info in query(tracker, timeout_s=timeout_s):
        if info.key == key:
            return info.total
    return 0


@dataclass(frozen=True)
class PoolStatus:
    """A snapshot of the pool: slots per stage, devices the tracker lists, failures."""

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


class _Slot(RPCDevice):
    """An RPCDevice that tells its pool when it holds a session on the device."""

    def __init__(self, pool: DevicePool, index: int, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._pool, self._index = pool, index

    def _session(self, seconds: float):
        self._pool._set_stage(self._index, WAITING)
        # a tracker queues a request for a key with no server forever: ask first
        if self._pool.live_devices() == 0:
            raise DeviceError(f"tracker {self.tracker} lists no live device under key '{self.key}'")
        sess = super()._session(seconds)
        self._pool._set_stage(self._index, ON_DEVICE)
        return sess


class DevicePool:
    """``size`` concurrent measurement slots on the devices a tracker lists under
    ``key`` (default: as many as it lists now). Same interface as
    :class:`~pfcompile.search.devices.RPCDevice` plus :meth:`measure_many`.

    ``on_change(status)`` (optional) is called, from worker threads, whenever a
    slot changes stage; ``number`` / ``repeat`` / ``min_repeat_ms`` / ``rtol`` go
    to each slot's RPCDevice. ``compile_first``: :meth:`measure_many` compiles
    every job before measuring any (servers on the compiling machine: a compile
    beside a measurement disturbs it); otherwise compiles overlap measurements.
    """

    def __init__(self, target: Target, *, tracker: str, key: str | None = None,
                 size: int | None = None, number: int | None = None, repeat: int | None = None,
                 min_repeat_ms: int | None = None, rtol: float = 1e-3,
                 on_change: Callable[[PoolStatus], None] | None = None,
                 compile_first: bool = False) -> None:
        self.target = target
        self.compile_first = compile_first
        self.tracker = tracker
        self.key = key or target.rpc_key
        self.size = count_devices(tracker, self.key) if size is None else int(size)
        if self.size < 1:
            raise DeviceError(f"tracker {tracker} lists no device under key '{self.key}': start "
                              f"servers with `pfcompile device serve --tracker {tracker} --key {self.key}`")
        self.emulated = target.emulated
        self.name = f"{tracker}/{self.key} x{self.size}"
        self.on_change = on_change
        self.slots = [_Slot(self, i, target, tracker=tracker, key=self.key, number=number,
                            repeat=repeat, min_repeat_ms=min_repeat_ms, rtol=rtol)
                      for i in range(self.size)]
        self._stages = [IDLE] * self.size
        self._live: int | None = self.size
        self._state = threading.Lock()        # guards _stages, _free
        self._compile = threading.Lock()      # one TVM compile at a time
        self._free = list(range(self.size))
        self._slot_ready = threading.Condition(self._state)
        self._executor = ThreadPoolExecutor(max_workers=self.size,
                                            thread_name_prefix="pfcompile-pool")
        self._closed = False
        self._reference: tuple[onnx.ModelProto, Path, float] | None = None  # set_reference
        self._has_reference = [False] * self.size
        self._kernel_reference_ms: float | None = None

    # -- state --------------------------------------------------------------
    def _set_stage(self, index: int, stage: str) -> None:
        with self._state:
            self._stages[index] = stage
        if self.on_change is not None:
            try:
                self.on_change(self.snapshot())
            except Exception:  # noqa: BLE001 - a display's error must not fail a measurement
                _log.exception("device pool %s: on_change failed", self.name)

    def snapshot(self) -> PoolStatus:
        with self._state:
            stages = tuple(self._stages)
        return PoolStatus(self.size, stages, self._live, sum(s.failures for s in self.slots))

    def status(self) -> str:
        kind = "emulated" if self.emulated else "real"
        return f"'{self.key}' at {self.tracker} ({kind}): {self.snapshot().text}"

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
        self._set_stage(index, IDLE)

    # -- measuring ----------------------------------------------------------
    def _measure_one(self, model: onnx.ModelProto, work_dir: Path, limit: int) -> Measurement:
        index = self._acquire(limit)
        slot = self.slots[index]
        try:
            if self._closed:  # a caller gave up on this batch (an exception, a kill)
                return Measurement(None, f"device pool {self.name} was closed before this job ran")
            self._set_stage(index, COMPILING)
            failed = self._compile_job(model, work_dir)
            if failed is not None:
                return failed
            ref = self._reference
            if ref is not None and not self._has_reference[index]:
                # this slot's first job since set_reference: pair it with the same
                # reference, on the scale of the one measured first
                m = slot.set_reference(ref[0], ref[1], given=ref[2])
                if not m.ok:
                    return m
                self._has_reference[index] = True
            return slot.measure_model(model, work_dir)
        except Exception as exc:  # noqa: BLE001 - a failure is a value, never a crash
            return Measurement(None, f"device pool {self.name}, slot {index}: {exc!r}")
        finally:
            self._release(index)

    def _compile_job(self, model: onnx.ModelProto, work_dir: Path) -> Measurement | None:
        """Compile to ``work_dir/model.so`` unless it is there (RPCDevice then skips
        its own compile), one compile at a time; a failed Measurement or None."""
        with self._compile:
            if (work_dir / "model.so").exists():
                return None
            try:
                compile_model(model, self.target, work_dir)
            except Exception as exc:  # noqa: BLE001 - a failure is a value
                msg = str(exc).strip().splitlines()[-1][:300] if str(exc).strip() else repr(exc)
                return Measurement(None, f"compile failed: {msg}")
        return None

    def live_devices(self) -> int | None:
        """Servers the tracker lists under the key now (None when it does not answer)."""
        try:
            n = count_devices(self.tracker, self.key)
        except DeviceError:
            n = None
        self._live = n
        return n

    def measure_many(self, jobs: Sequence[tuple[onnx.ModelProto, Path]],
                     on_result: Callable[[int, Measurement], None] | None = None) -> list[Measurement]:
        """Measure every ``(model, work_dir)``, up to as many at once as the tracker
        lists live devices; the measurements in submission order.

        ``on_result(i, m)`` runs in this thread as soon as job ``i`` is done. An
        exception from it cancels the jobs not yet started and propagates (those in
        flight finish in the background)."""
        if self._closed:
            raise DeviceError(f"device pool {self.name} is closed")
        jobs = [(m, Path(d)) for m, d in jobs]
        if not jobs:
            return []
        live = self.live_devices()
        if live == 0:
            out = [Measurement(None, f"device {self.name}: the tracker lists no live device under "
                                     f"key '{self.key}'") for _ in jobs]
            if on_result is not None:
                for i, m in enumerate(out):
                    on_result(i, m)
            return out
        limit = self.size if live is None else max(1, min(self.size, live))
        results: list[Measurement | None] = [None] * len(jobs)
        todo = list(range(len(jobs)))
        if self.compile_first:
            todo = []
            for i, (m, d) in enumerate(jobs):
                results[i] = self._compile_job(m, d)
                if results[i] is None:
                    todo.append(i)
                elif on_result is not None:
                    on_result(i, results[i])
        futures: dict[Future, int] = {
            self._executor.submit(self._measure_one, jobs[i][0], jobs[i][1], limit): i for i in todo}
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

    def measure_model(self, model: onnx.ModelProto, work_dir: Path) -> Measurement:
        return self.measure_many([(model, work_dir)])[0]

    def set_reference(self, model: onnx.ModelProto, work_dir: Path,
                      given: float | None = None) -> Measurement:
        """RPCDevice's paired timing across the pool: measure the reference (the
        unmodified model) on one slot now; every other slot measures it too before
        its first candidate, with ``given`` = the first one's latency, so that all
        candidates share one scale. Candidates are then timed alternating with the
        reference in their own session, on whichever server they get."""
        work_dir = Path(work_dir)
        index = self._acquire(self.size)
        try:
            self._set_stage(index, COMPILING)
            failed = self._compile_job(model, work_dir)
            if failed is not None:
                return failed
            m = self.slots[index].set_reference(model, work_dir, given=given)
        finally:
            self._release(index)
        if m.ok:
            self._reference = (model, work_dir, float(m.latency_ms))
            self._has_reference = [i == index for i in range(self.size)]
        return m

    @property
    def kernel_reference_ms(self) -> float | None:
        """The reference kernel's time, one value for every slot (RPCDevice's)."""
        return self._kernel_reference_ms

    @kernel_reference_ms.setter
    def kernel_reference_ms(self, value: float | None) -> None:
        self._kernel_reference_ms = value
        for s in self.slots:
            s.kernel_reference_ms = value

    def measure_kernels(self, kernels: list[Kernel], work_dir: Path | None = None) -> list[float | None]:
        """Time ``kernels`` on one slot (RPCDevice builds them into one library there,
        and TVM compiles one model at a time); all None when no device is left."""
        if self.live_devices() == 0:
            return [None] * len(kernels)
        index = self._acquire(self.size)
        try:
            self._set_stage(index, COMPILING)
            with self._compile:
                out = self.slots[index].measure_kernels(kernels, work_dir)
            if self._kernel_reference_ms is None:  # measured by this slot: share it
                self.kernel_reference_ms = self.slots[index].kernel_reference_ms
            return out
        finally:
            self._release(index)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._executor.shutdown(wait=False, cancel_futures=True)
            for s in self.slots:
                s.close()


def open_rpc_device(target: Target, tracker: str, key: str | None = None,
                    on_change: Callable[[PoolStatus], None] | None = None,
                    **measure: int | None) -> RPCDevice | DevicePool:
    """The device for ``--rpc TRACKER --key KEY``: a :class:`DevicePool` when the
    tracker lists more than one server under the key (``compile_first`` when all
    of them are on loopback), else one RPCDevice. DeviceError when the tracker
    does not answer."""
    key = key or target.rpc_key
    info = next((d for d in query(tracker) if d.key == key), None)
    if info is not None and info.total > 1:
        # servers on this machine: compile a round before measuring it (compiling
        # beside a measurement disturbs it); remote boards: overlap the two
        local = bool(info.servers) and all(
            s.rpartition(":")[0] in ("127.0.0.1", "localhost", "::1") for s in info.servers)
        return DevicePool(target, tracker=tracker, key=key, size=info.total, on_change=on_change,
                          compile_first=local, **measure)
    return RPCDevice(target, tracker=tracker, key=key, **measure)
