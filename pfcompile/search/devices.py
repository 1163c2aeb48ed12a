"""Search devices: how the search measures candidates and kernels, as data.

Every call returns a :class:`Measurement`; a failed compile, a dead device, a timeout,
wrong outputs or a NaN is a value with ``error`` set, never an exception that stops a
search. A :class:`SearchDevice` is the loop's only view of a device; every method is
required. The implementations put the device layer together: the build module
(:func:`pfcompile.compiler.compile_model`), a runner (:mod:`pfcompile.runner`, the only
code that talks to a device), the reference and the one output check
(:func:`pfcompile.measure.verify`).

* :class:`RPCDevice`: CPU targets over TVM RPC, a server (``host:port``) or the servers
  a tracker lists under a key: a :class:`~pfcompile.runner.pool.PoolRunner` of one
  session per server (a single server is a pool of one, so the loop has one measuring
  path: :meth:`SearchDevice.measure_many`). Candidates are compiled here, one at a time
  (TVM's ONNX importer is not thread-safe), while earlier ones are measured; with
  ``compile_first`` (servers on this machine, where a compile disturbs a measurement
  beside it) a batch is compiled before any of it is measured.

  **Paired timing.** A shared machine (this project's CI/dev VM: 2 vCPUs with noisy
  neighbours) runs the same library 1.5-2x slower for seconds at a time, so a candidate
  timed alone can look faster or slower than it is. Once the unmodified model is the
  *reference* (:meth:`RPCDevice.set_reference`), every candidate is timed in its session
  alternating with the reference (the runner's ``paired`` option: ABBA rounds of
  >= ``min_repeat_ms`` each): its latency is the reference's latency times the median of
  the per-round ratios (``latency_ms``), and the candidate's own median is kept as
  ``raw_ms``. Slow phases hit both sides of a ratio alike.

  **Kernels** (:mod:`pfcompile.search.kernel_models`) are timed on one session, in
  rounds alternating with a fixed reference kernel, and reported as ratio x the
  reference kernel's time (``kernel_reference_ms``, measured once and kept in the
  latency model's cache so that kernels timed in different runs share one scale).
* :class:`NullDevice`: a :class:`~pfcompile.runner.base.NullRunner` behind the same
  interface: no compile, a deterministic latency from MACs, for fast tests of the
  search logic.
* The simulated accelerator: :class:`pfcompile.search.accel_device.AccelSearchDevice`.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

import numpy as np
import onnx

from pfcompile.compiler import compile_model
from pfcompile.data import random_inputs
from pfcompile.device import parse_addr, query
from pfcompile.errors import DeviceError
from pfcompile.measure import quantized_tolerance, verify
from pfcompile.model import input_specs, model_hash
from pfcompile.reference import reference_outputs
from pfcompile.runner import NullRunner, Paired, PoolRunner, PoolStatus, RPCRunner, RunJob
from pfcompile.runner.base import Runner, RunnerResult
from pfcompile.search.graph import Kernel, extract_kernels
from pfcompile.search.kernel_models import (
    REFERENCE_KERNEL,
    kernel_calls,
    kernel_model,
    kernel_primfuncs,
    qdq_kernel_model,
)
from pfcompile.targets import MeasureSettings, Target

__all__ = [
    "REFERENCE_KERNEL",
    "Measurement",
    "NullDevice",
    "RPCDevice",
    "SearchDevice",
    "count_devices",
    "kernel_model",
    "kernel_primfuncs",
    "open_rpc_device",
    "qdq_kernel_model",
]

#: a batch of candidates to measure: (model, work folder of its compiled artifact)
Jobs = Sequence[tuple[onnx.ModelProto, Path]]


@dataclass(frozen=True)
class Measurement:
    latency_ms: float | None
    error: str | None = None
    so_path: str | None = None
    max_abs_diff: float | None = None
    raw_ms: float | None = None      # the candidate's own median (paired timing)
    paired: bool = False             # latency_ms = reference ms x median ratio
    #: what else the device reports (the accelerator: simulated / measured parts); goes
    #: to the trial record, on failure too
    details: dict = field(default_factory=dict, compare=False)

    @property
    def ok(self) -> bool:
        return self.error is None and self.latency_ms is not None


class SearchDevice(Protocol):
    """What the search loop measures on. Every member is required."""

    name: str
    emulated: bool                      # qemu-user: latencies are functional checks only
    simulated: bool                     # the accelerator simulator's cycle model
    kernel_reference_ms: float | None   # the reference kernel's time: one scale across runs

    def set_reference(self, model: onnx.ModelProto, work_dir: Path,
                      given: float | None = None) -> Measurement:
        """Measure the unmodified ``model`` and time later candidates against it (paired
        timing where the device does it); ``given``: the latency to scale by (a resumed
        run keeps its baseline's)."""

    def measure_many(self, jobs: Jobs,
                     on_result: Callable[[int, Measurement], None] | None = None
                     ) -> list[Measurement]:
        """Measure every ``(model, work_dir)``, in submission order; ``on_result(i, m)``
        in the caller's thread as each one is done."""

    def measure_model(self, model: onnx.ModelProto, work_dir: Path) -> Measurement:
        """One candidate (a batch of one)."""

    def measure_kernels(self, kernels: list[Kernel]) -> list[float | None]:
        """Each kernel's time in ms (None where it could not be built or run)."""

    def status(self) -> str: ...

    def close(self) -> None: ...


def _last_line(exc: BaseException) -> str:
    s = str(exc).strip()
    return s.splitlines()[-1][:300] if s else repr(exc)


def count_devices(tracker: str, key: str, timeout_s: float = 10.0) -> int:
    """How many servers the tracker at ``tracker`` (``host:port``) lists under ``key``
    (0 when none); DeviceError when the tracker does not answer."""
    for info in query(tracker, timeout_s=timeout_s):
        if info.key == key:
            return info.total
    return 0


@dataclass
class _Prepared:
    """A compiled candidate with its inputs, reference outputs and tolerance."""

    artifact: Path
    inputs: dict[str, np.ndarray]
    reference: dict[str, np.ndarray]
    quant_atol: float | None


class RPCDevice:
    """CPU targets over TVM RPC: a server (``host``/``port``) or ``size`` sessions on the
    servers a tracker lists under ``key`` (default: as many as it lists now). See the
    module docstring. ``number`` is unused for whole models (each round is one timed
    evaluation of at least ``min_repeat_ms``, clamped to 5..25 ms); ``repeat`` sets the
    rounds (at least 7). ``on_change(status)`` is told every slot change. ``threads``: the
    device's thread pool for every run (default: each candidate's deployment threads)."""

    simulated = False

    def __init__(self, target: Target, *, host: str = "127.0.0.1", port: int = 9300,
                 tracker: str | None = None, key: str | None = None, size: int | None = None,
                 number: int | None = None, repeat: int | None = None,
                 min_repeat_ms: int | None = None,
                 on_change: Callable[[PoolStatus], None] | None = None,
                 compile_first: bool = False, threads: int | None = None) -> None:
        self.target = target
        self.threads = threads   # None: each artifact's deployment threads (model.json)
        self.host, self.port, self.tracker = host, port, tracker
        self.key = key or target.rpc_key
        m = target.measure
        self.number = number or m.number
        self.repeat = repeat or m.repeat
        self.min_repeat_ms = m.min_repeat_ms if min_repeat_ms is None else min_repeat_ms
        self.timeout_s = m.timeout_s
        self.emulated = target.emulated
        self.compile_first = compile_first
        self.kernel_reference_ms: float | None = None
        self._reference: tuple[Paired, float] | None = None
        if tracker is not None:
            parse_addr(tracker, "--rpc")
            self.size = count_devices(tracker, self.key) if size is None else int(size)
            if self.size < 1:
                raise DeviceError(f"tracker {tracker} lists no device under key '{self.key}': "
                                  f"start servers with `pfcompile device serve --tracker "
                                  f"{tracker} --key {self.key}`")
            self.label = f"{tracker}/{self.key}"
            slots = [self.make_slot(rpc=tracker, key=self.key) for _ in range(self.size)]
            self.runner = PoolRunner(
                slots, self.label if self.size == 1 else f"{self.label} x{self.size}",
                live=lambda: count_devices(tracker, self.key), on_change=on_change,
                no_live=f"tracker {tracker} lists no live device under key '{self.key}'")
        else:
            self.size = 1
            self.label = f"{host}:{port}"
            self.runner = PoolRunner([self.make_slot(device=self.label)], self.label,
                                     on_change=on_change)
        self.name = self.runner.name

    def make_slot(self, *, rpc: str | None = None, key: str | None = None,
                  device: str | None = None) -> Runner:
        """One session's runner (a subclass's device may need another)."""
        return RPCRunner(rpc=rpc, key=key, device=device, threads=self.threads)

    # -- settings -----------------------------------------------------------
    @property
    def _round_ms(self) -> int:
        return max(5, min(int(self.min_repeat_ms), 25))

    @property
    def settings(self) -> MeasureSettings:
        """A whole model's timing: ``max(7, repeat)`` rounds of one evaluation each."""
        return MeasureSettings(number=1, repeat=max(7, int(self.repeat)),
                               min_repeat_ms=self._round_ms, timeout_s=self.timeout_s)

    @property
    def failures(self) -> int:
        return self.runner.failures

    def snapshot(self) -> PoolStatus:
        return self.runner.snapshot()

    # -- the steps of one measurement ---------------------------------------
    def build(self, model: onnx.ModelProto, work_dir: Path) -> Path:
        """Compile to ``work_dir`` (once: a compiled artifact there is reused)."""
        if not (work_dir / "model.so").exists():
            compile_model(model, self.target, work_dir)
        return work_dir

    def prepare(self, model: onnx.ModelProto, work_dir: Path) -> _Prepared | Measurement:
        """Build, inputs, reference outputs: a :class:`_Prepared` or a failed Measurement."""
        work_dir = Path(work_dir)
        try:
            artifact = self.build(model, work_dir)
        except Exception as exc:  # noqa: BLE001 - a failure is a value
            return Measurement(None, f"compile failed: {_last_line(exc)}")
        inputs = random_inputs(input_specs(model), seed=0)
        try:
            ref = reference_outputs(model, inputs, threads=1)
        except Exception as exc:  # noqa: BLE001 - a failure is a value
            return Measurement(None, f"onnxruntime reference failed: {exc}", self._lib(artifact))
        src = work_dir / "source.onnx"
        try:
            atol = quantized_tolerance(src if src.exists() else model, ref)
        except Exception:  # noqa: BLE001 - unreadable source: the float tolerance
            atol = None
        return _Prepared(artifact, inputs, ref, atol)

    def _lib(self, artifact: Path) -> str:
        return str(artifact / "model.so")

    def finish(self, prep: _Prepared, res: RunnerResult) -> Measurement:
        """A runner's result -> Measurement: outputs verified, paired latency scaled."""
        so = self._lib(prep.artifact)
        if not res.ok:
            return Measurement(None, f"device {self.label}: {res.error}", so, details=res.details)
        check = verify(res.outputs or {}, prep.reference, prep.quant_atol)
        if not check.verified:
            return Measurement(None, f"device {self.label}: output differs from the reference: "
                                     f"{check.detail}", so, check.max_abs_err, details=res.details)
        raw = res.median_ms
        ms = res.paired_ms(self._reference[1]) if (res.ratios and self._reference) else raw
        if ms is None or not math.isfinite(ms):
            return Measurement(None, "device returned a non-finite time", so)
        details = {**res.details, "threads": res.threads} if res.threads else res.details
        return Measurement(ms, None, so, check.max_abs_err, raw_ms=raw,
                           paired=res.ratios is not None, details=details)

    # -- SearchDevice -------------------------------------------------------
    def measure_many(self, jobs: Jobs,
                     on_result: Callable[[int, Measurement], None] | None = None
                     ) -> list[Measurement]:
        if self.runner.closed:
            raise DeviceError(f"device {self.name} is closed")
        jobs = [(m, Path(d)) for m, d in jobs]
        results: list[Measurement | None] = [None] * len(jobs)

        def done(i: int, m: Measurement) -> None:
            results[i] = m
            if on_result is not None:
                on_result(i, m)

        limit = self.runner.limit() if jobs else 1
        if limit == 0:
            for i in range(len(jobs)):
                done(i, Measurement(None, f"device {self.label}: {self.runner.no_live}"))
            return [m for m in results if m is not None]
        paired = self._reference[0] if self._reference else None
        preps: dict[int, _Prepared] = {}
        futures: dict[Future, int] = {}

        def submit(i: int) -> None:
            futures[self.runner.submit(RunJob(preps[i].artifact, preps[i].inputs,
                                              self.settings, paired), limit)] = i

        for i, (model, work_dir) in enumerate(jobs):
            prep = self.prepare(model, work_dir)
            if isinstance(prep, Measurement):
                done(i, prep)
                continue
            preps[i] = prep
            if not self.compile_first:
                submit(i)          # measured while the next one compiles
        if self.compile_first:
            for i in preps:
                submit(i)
        self.runner.gather(futures, lambda i, r: done(i, self.finish(preps[i], r)), len(jobs))
        return [m for m in results if m is not None]

    def measure_model(self, model: onnx.ModelProto, work_dir: Path) -> Measurement:
        return self.measure_many([(model, work_dir)])[0]

    def set_reference(self, model: onnx.ModelProto, work_dir: Path,
                      given: float | None = None) -> Measurement:
        self._reference = None
        m = self.measure_model(model, work_dir)
        if not m.ok:
            return m
        ms = m.latency_ms if given is None else float(given)
        self._reference = (Paired(Path(work_dir), random_inputs(input_specs(model), seed=0)),
                           float(ms))
        return replace(m, latency_ms=ms)

    def measure_kernels(self, kernels: list[Kernel]) -> list[float | None]:
        if self.runner.limit() == 0:      # no device left: do not build for nothing
            return [None] * len(kernels)
        tmp = Path(tempfile.mkdtemp(prefix="pfk_"))
        try:
            so, reference, calls = kernel_calls(kernels, self.target, tmp)
            todo = [c for c in calls if c is not None]
            settings = MeasureSettings(1, 1, max(1, self._round_ms // 5), self.timeout_s)
            out = self.runner.time_kernels(so, todo, settings, reference=reference,
                                           reference_ms=self.kernel_reference_ms, rounds=5)
        except Exception:  # noqa: BLE001 - library failure: every kernel is None
            self.runner.failures += 1
            return [None] * len(kernels)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        if out.error is not None:
            return [None] * len(kernels)
        self.kernel_reference_ms = out.reference_ms
        times = iter(out.timings)
        return [next(times).ms if c is not None else None for c in calls]

    def status(self) -> str:
        kind = "emulated" if self.emulated else "real"
        if self.tracker is not None:
            return f"'{self.key}' at {self.tracker} ({kind}): {self.snapshot().text}"
        return f"{self.name} ({kind}; {self.failures} failures)"

    def close(self) -> None:
        self.runner.close()


def open_rpc_device(target: Target, tracker: str, key: str | None = None,
                    on_change: Callable[[PoolStatus], None] | None = None,
                    **measure: int | None) -> RPCDevice:
    """The device for ``--rpc TRACKER --key KEY``: one session per server the tracker
    lists under the key (at least one), ``compile_first`` when all of them are on
    loopback. DeviceError when the tracker does not answer."""
    key = key or target.rpc_key
    info = next((d for d in query(tracker) if d.key == key), None)
    size = max(1, info.total) if info is not None else 1
    # servers on this machine: compile a round before measuring it (compiling beside a
    # measurement disturbs it); remote boards: overlap the two
    local = info is not None and size > 1 and bool(info.servers) and all(
        s.rpartition(":")[0] in ("127.0.0.1", "localhost", "::1") for s in info.servers)
    return RPCDevice(target, tracker=tracker, key=key, size=size, on_change=on_change,
                     compile_first=local, **measure)


class NullDevice:
    """Runs nothing (a :class:`~pfcompile.runner.base.NullRunner`): latency =
    ``fixed_ms`` + ``ms_per_mmac`` x MMACs, no compile (kernel: the same without
    ``fixed_ms``, plus a byte term); deterministic, so search logic tests in ms. Models
    whose hash is in ``fail`` fail."""

    emulated = False
    simulated = False
    name = "null"

    def __init__(self, fixed_ms: float = 0.5, ms_per_mmac: float = 0.05,
                 fail: set[str] | None = None) -> None:
        self.fixed_ms, self.ms_per_mmac = fixed_ms, ms_per_mmac
        self.fail = fail or set()
        self.calls = 0
        self.kernel_reference_ms: float | None = None
        self._ms: dict[Path, float] = {}
        self.runner = NullRunner(lambda p: self._ms[p])

    def set_reference(self, model: onnx.ModelProto, work_dir: Path,
                      given: float | None = None) -> Measurement:
        """No paired timing here: measure the model, or take ``given`` as it is."""
        if given is not None:
            return Measurement(float(given), None, None, 0.0)
        return self.measure_model(model, work_dir)

    def measure_many(self, jobs: Jobs,
                     on_result: Callable[[int, Measurement], None] | None = None
                     ) -> list[Measurement]:
        out = []
        for i, (model, work_dir) in enumerate(jobs):
            out.append(self.measure_model(model, work_dir))
            if on_result is not None:
                on_result(i, out[-1])
        return out

    def measure_model(self, model: onnx.ModelProto, work_dir: Path) -> Measurement:
        self.calls += 1
        h = model_hash(model)
        if h in self.fail:
            return Measurement(None, "null device: configured to fail this model")
        macs = sum(k.macs for k in extract_kernels(model))
        art = Path(work_dir) if work_dir is not None else Path(h)   # nothing is written there
        self._ms[art] = self.fixed_ms + self.ms_per_mmac * macs / 1e6
        res = self.runner.run(art, {}, MeasureSettings(repeat=1))
        return Measurement(res.median_ms, None, None, 0.0)

    def measure_kernels(self, kernels: list[Kernel]) -> list[float | None]:
        # a kernel's cost is not exactly linear in MACs: bytes matter too
        return [self.ms_per_mmac * k.macs / 1e6 + 2e-6 * k.bytes / 4 for k in kernels]

    def status(self) -> str:
        return "null device (no measurement)"

    def close(self) -> None:
        pass
