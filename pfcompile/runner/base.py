"""The runner protocol: what every device looks like to the rest of pfcompile.

A :class:`Runner` takes a compiled artifact (a folder with ``model.so`` + ``model.json``,
a ``.so``, or an accelerator ``program.npz``), inputs and
:class:`~pfcompile.targets.MeasureSettings`, and returns a :class:`RunnerResult`: per-repeat
latencies and outputs, or an error. A failed, hung or killed device is a result with
``error`` set; a runner never raises for a device problem and never blocks past its
deadline. Verifying the outputs is the caller's (:func:`pfcompile.measure.verify`).

Options of a run:

- ``paired``: time the artifact in the same session alternating with a reference
  artifact (ABBA rounds of ``settings.min_repeat_ms`` each, ``settings.repeat`` rounds):
  ``RunnerResult.ratios`` holds the per-round ratios candidate / reference, and
  :meth:`RunnerResult.paired_ms` scales them to the reference's latency. On a shared
  machine whose speed drifts for seconds at a time, drift hits both sides of a ratio.
- :meth:`Runner.time_kernels`: PrimFuncs of one library (and whole one-kernel model
  libraries) timed one by one, optionally paired with a reference kernel.
"""

from __future__ import annotations

import json
import statistics
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import numpy as np

from pfcompile.deploy import meta_threads
from pfcompile.errors import ModelError
from pfcompile.targets import MeasureSettings

__all__ = [
    "Artifact",
    "KernelCall",
    "KernelTimes",
    "KernelTiming",
    "NullRunner",
    "Paired",
    "Runner",
    "RunnerResult",
    "resolve_artifact",
]


@dataclass(frozen=True)
class KernelTiming:
    """One kernel's time: ms (None when it failed, then ``error`` says why) and its
    output (the last argument after a run) when asked for."""

    ms: float | None
    error: str = ""
    output: Any = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class RunnerResult:
    """What one run gave: per-repeat latencies (ms) and outputs, or an error.

    ``error_kind`` is one of ``""`` (success), ``"artifact"``, ``"device"`` (session,
    connection or a device that died), ``"timeout"``, ``"run"`` (load or execution).
    ``ratios``: paired timing's per-round candidate / reference ratios (None unpaired).
    ``details``: what a device reports beyond latencies (the accelerator simulator:
    simulated cycles and ms, measured host-op ms). ``threads``: the size of the device's
    thread pool the run had (None: not set by the runner, e.g. the simulator).
    """

    latencies_ms: list[float] | None
    error: str | None = None
    outputs: dict[str, np.ndarray] | None = None
    device: str = ""
    error_kind: str = ""
    elapsed_s: float = 0.0
    settings: MeasureSettings = field(default_factory=MeasureSettings)
    ratios: list[float] | None = None
    details: dict[str, Any] = field(default_factory=dict)
    threads: int | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def median_ms(self) -> float | None:
        return statistics.median(self.latencies_ms) if self.latencies_ms else None

    def paired_ms(self, reference_ms: float) -> float | None:
        """Paired timing: the reference's latency times the median per-round ratio."""
        return reference_ms * float(np.median(self.ratios)) if self.ratios else None

    @staticmethod
    def failure(error: str, kind: str, device: str = "", elapsed_s: float = 0.0,
                settings: MeasureSettings | None = None,
                details: dict[str, Any] | None = None) -> RunnerResult:
        return RunnerResult(None, error, None, device, kind, elapsed_s,
                            settings or MeasureSettings(), None, dict(details or {}))


@dataclass(frozen=True)
class Artifact:
    """A compiled model on disk: the library and its input/output names in call order, and
    its deployment thread count (``model.json``'s ``threads``; None when not recorded)."""

    so_path: Path
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    threads: int | None = None


def resolve_artifact(artifact: str | Path) -> Artifact:
    """A folder with ``model.so`` or ``program.npz`` (+ ``model.json``), or the library
    file itself (names then come from a ``model.json`` beside it if there is one). Raises
    ModelError naming the path."""
    p = Path(artifact)
    so = p
    if p.is_dir():
        so = p / "model.so"
        if not so.is_file() and (p / "program.npz").is_file():
            so = p / "program.npz"
    if not so.is_file():
        raise ModelError(f"no compiled model at {so} (expected a folder with model.so, "
                         f"made by `pfcompile compile`, or a .so file)")
    meta_path = so.parent / "model.json"
    ins: tuple[str, ...] = ()
    outs: tuple[str, ...] = ()
    threads = None
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
            ins = tuple(str(d["name"]) for d in meta.get("inputs", []))
            outs = tuple(str(d["name"]) for d in meta.get("outputs", []))
            threads = meta_threads(meta)
        except (ValueError, KeyError, TypeError) as exc:
            raise ModelError(f"{meta_path}: unreadable artifact metadata: {exc}") from exc
    return Artifact(so, ins, outs, threads)


@dataclass(frozen=True)
class Paired:
    """The reference of paired timing: an artifact and its inputs."""

    artifact: str | Path
    inputs: dict[str, np.ndarray]


#: one argument of a PrimFunc: (shape, dtype); floats get random normal values, others zeros
ArgSpec = tuple[tuple[int, ...], str]


@dataclass(frozen=True)
class KernelCall:
    """One kernel to time: functions of the uploaded library (name and argument specs
    each; a kernel of several functions is timed as their sum), or a whole one-kernel
    model library (``module``, a VM library) run on ``inputs``."""

    functions: tuple[tuple[str, tuple[ArgSpec, ...]], ...] = ()
    module: Path | None = None
    inputs: dict[str, np.ndarray] | None = None


@dataclass(frozen=True)
class KernelTimes:
    """:meth:`Runner.time_kernels`' answer: one timing per call, the reference kernel's
    time (paired timing), and an error when the whole batch failed (session, upload)."""

    timings: list[KernelTiming]
    reference_ms: float | None = None
    error: str | None = None


class Runner(ABC):
    """Runs an artifact on a device: ``run(artifact, inputs, settings) -> RunnerResult``."""

    #: what the device is called in results and messages
    name: str = "runner"
    #: told each step of a run as it starts, then ``"done"`` (runners with steps call it)
    on_step: Callable[[str], None] | None = None

    @abstractmethod
    def run(self, artifact: str | Path, inputs: dict[str, np.ndarray],
            settings: MeasureSettings | None = None, *,
            paired: Paired | None = None) -> RunnerResult:
        """Never raises for a device problem: the result carries the error."""

    def time_kernels(self, library: str | Path | None, calls: Sequence[KernelCall],
                     settings: MeasureSettings, *, reference: KernelCall | None = None,
                     reference_ms: float | None = None, rounds: int = 5,
                     fetch_outputs: bool = False) -> KernelTimes:
        """Time each call (see :class:`KernelCall`). Unpaired (``reference`` None): the
        median of ``settings.repeat`` repeats of ``settings.number`` runs each. Paired:
        ``rounds`` ABBA rounds against ``reference`` (timed first, median of 9, unless
        ``reference_ms`` is given), each kernel's time is the median ratio times the
        reference's. Never raises for a device problem."""
        msg = f"{self.name}: this device does not time kernels"
        return KernelTimes([KernelTiming(None, msg) for _ in calls], reference_ms, msg)

    def close(self) -> None:
        """Release what the runner holds (servers it started). Idempotent."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class NullRunner(Runner):
    """No device: every run 'takes' ``fixed_ms`` (a number, or a function of the
    artifact path), ``settings.repeat`` times; outputs are None (paired: ratio
    ``fixed_ms(artifact) / fixed_ms(reference)``). Kernels take ``kernel_ms`` of their
    call. ``calls`` records the artifacts run, in order."""

    name = "null"

    def __init__(self, fixed_ms: float | Callable[[Path], float] = 1.0,
                 kernel_ms: Callable[[KernelCall], float] | None = None) -> None:
        self.fixed_ms = fixed_ms
        self.kernel_ms = kernel_ms
        self.calls: list[Path] = []

    def _ms(self, p: Path) -> float:
        return float(self.fixed_ms(p) if callable(self.fixed_ms) else self.fixed_ms)

    def run(self, artifact: str | Path, inputs: dict[str, np.ndarray],
            settings: MeasureSettings | None = None, *,
            paired: Paired | None = None) -> RunnerResult:
        settings = settings or MeasureSettings()
        p = Path(artifact)
        self.calls.append(p)
        ms = self._ms(p)
        ratios = None
        if paired is not None:
            ratios = [ms / self._ms(Path(paired.artifact))] * max(1, settings.repeat)
        return RunnerResult([ms] * max(1, settings.repeat), None, None, self.name, "",
                            0.0, settings, ratios)

    def time_kernels(self, library: str | Path | None, calls: Sequence[KernelCall],
                     settings: MeasureSettings, *, reference: KernelCall | None = None,
                     reference_ms: float | None = None, rounds: int = 5,
                     fetch_outputs: bool = False) -> KernelTimes:
        fn = self.kernel_ms or (lambda call: 1.0)
        return KernelTimes([KernelTiming(float(fn(c))) for c in calls], reference_ms)
