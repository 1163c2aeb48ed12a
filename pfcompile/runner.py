"""Runners: run a compiled artifact on a device and time it. Results are data.

MetaSchedule-style narrow roles: a :class:`Runner` takes an artifact (a folder
with ``model.so`` + ``model.json``, or a ``.so``), inputs and
:class:`~pfcompile.targets.MeasureSettings`, and returns a :class:`RunnerResult`.
A failed, hung or killed device gives a result with ``error`` set; ``run`` never
raises for a device problem and never blocks past its deadline.

- :class:`RPCRunner`: a device via a tracker (``rpc`` + ``key``) or direct (``device``).
  Its steps are methods that a subclass may replace: ``create_session``, ``upload``,
  ``load``, ``run_once``, ``evaluate``, ``cleanup``.
- :class:`LocalRunner`: starts (and restarts, after a failure) its own host server.
- :class:`NullRunner`: no device, fixed timings; for search and scheduling tests.
"""

from __future__ import annotations

import contextlib
import gc
import json
import statistics
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import numpy as np

from pfcompile.deploy import prepare
from pfcompile.errors import DeviceError, PfcompileError
from pfcompile.targets import MeasureSettings, Target

__all__ = [
    "Artifact",
    "LocalRunner",
    "NullRunner",
    "RPCRunner",
    "Runner",
    "RunnerResult",
    "resolve_artifact",
]


@dataclass(frozen=True)
class RunnerResult:
    """What one run gave: per-repeat latencies (ms) and outputs, or an error.

    ``error_kind`` is one of ``""`` (success), ``"artifact"``, ``"device"`` (session,
    connection or a device that died), ``"timeout"``, ``"run"`` (load or execution).
    """

    latencies_ms: list[float] | None
    error: str | None = None
    outputs: dict[str, np.ndarray] | None = None
    device: str = ""
    error_kind: str = ""
    elapsed_s: float = 0.0
    settings: MeasureSettings = field(default_factory=MeasureSettings)

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def median_ms(self) -> float | None:
        return statistics.median(self.latencies_ms) if self.latencies_ms else None

    @staticmethod
    def failure(error: str, kind: str, device: str = "", elapsed_s: float = 0.0,
                settings: MeasureSettings | None = None) -> RunnerResult:
        return RunnerResult(None, error, None, device, kind, elapsed_s,
                            settings or MeasureSettings())


@dataclass(frozen=True)
class Artifact:
    """A compiled model on disk: the ``.so`` and its input/output names in call order."""

    so_path: Path
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]


def resolve_artifact(artifact: str | Path) -> Artifact:
    """A folder with ``model.so`` (+ ``model.json``), or a ``.so`` (names then come
    from a ``model.json`` beside it if there is one). Raises ModelError naming the path."""
    from pfcompile.errors import ModelError

    p = Path(artifact)
    so = p / "model.so" if p.is_dir() else p
    if not so.is_file():
        raise ModelError(f"no compiled model at {so} (expected a folder with model.so, "
                         f"made by `pfcompile compile`, or a .so file)")
    meta_path = so.parent / "model.json"
    ins: tuple[str, ...] = ()
    outs: tuple[str, ...] = ()
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
            ins = tuple(str(d["name"]) for d in meta.get("inputs", []))
            outs = tuple(str(d["name"]) for d in meta.get("outputs", []))
        except (ValueError, KeyError, TypeError) as exc:
            raise ModelError(f"{meta_path}: unreadable artifact metadata: {exc}") from exc
    return Artifact(so, ins, outs)


class Runner(ABC):
    """Runs an artifact on a device: ``run(artifact, inputs, settings) -> RunnerResult``."""

    @abstractmethod
    def run(self, artifact: str | Path, inputs: dict[str, np.ndarray],
            settings: MeasureSettings | None = None) -> RunnerResult:
        """Never raises for a device problem: the result carries the error."""

    def close(self) -> None:
        """Release what the runner holds (servers it started). Idempotent."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _to_numpy(value: Any) -> list[np.ndarray]:
    """A VM result (a tensor, or a nested tuple of tensors) as a flat list of arrays."""
    if hasattr(value, "numpy"):
        return [value.numpy()]
    out: list[np.ndarray] = []
    for v in value:
        out.extend(_to_numpy(v))
    return out


class RPCRunner(Runner):
    """A device over TVM RPC: via a tracker (``rpc="H:P"``, ``key``) or direct
    (``device="H:P"``). The whole run is bounded by ``connect_timeout_s +
    settings.timeout_s``; the server is also told to end the session after
    ``settings.timeout_s + 30`` s so that it frees itself if we give up on it."""

    def __init__(self, rpc: str | None = None, key: str | None = None,
                 device: str | None = None, connect_timeout_s: float = 30.0,
                 fetch_outputs: bool = True) -> None:
        self.rpc, self.key, self.device = rpc, key, device
        self.connect_timeout_s = connect_timeout_s
        self.fetch_outputs = fetch_outputs

    @property
    def device_name(self) -> str:
        return f"{self.device}" if self.device else f"{self.key}@{self.rpc}"

    # -- steps (replaceable) -------------------------------------------------
    def create_session(self, settings: MeasureSettings) -> Any:
        from pfcompile.device import connect

        return connect(rpc=self.rpc, key=self.key, device=self.device,
                       timeout_s=self.connect_timeout_s,
                       session_timeout_s=float(settings.timeout_s) + 30.0)

    def upload(self, sess: Any, art: Artifact) -> str:
        name = f"pfc_{time.time_ns()}_{art.so_path.name}"
        sess.upload(str(art.so_path), target=name)
        return name

    def load(self, sess: Any, remote_name: str) -> tuple[Any, Any]:
        """``(model, dev)``: the library loaded and its load-time step run
        (:func:`pfcompile.deploy.prepare`)."""
        from tvm import relax

        rmod = sess.load_module(remote_name)
        dev = sess.cpu()
        return prepare(relax.VirtualMachine(rmod, dev)), dev

    def _set_inputs(self, vm: Any, dev: Any, art: Artifact,
                    inputs: dict[str, np.ndarray]) -> None:
        import tvm

        names = list(art.input_names) or list(inputs)
        missing = [n for n in names if n not in inputs]
        if missing:
            raise PfcompileError(f"inputs lack {missing} (the model takes {names})")
        args = [tvm.runtime.tensor(np.ascontiguousarray(inputs[n]), dev) for n in names]
        vm.set_input(*args)

    def run_once(self, vm: Any, art: Artifact) -> dict[str, np.ndarray]:
        vm.invoke_stateful()
        arrays = _to_numpy(vm.get_outputs())
        names = list(art.output_names)
        if len(names) != len(arrays):
            names = [f"output_{i}" for i in range(len(arrays))]
        return dict(zip(names, arrays, strict=True))

    def evaluate(self, vm: Any, dev: Any, settings: MeasureSettings) -> list[float]:
        ftimer = vm.stateful_timer(dev, number=settings.number, repeat=settings.repeat,
                                   min_repeat_ms=settings.min_repeat_ms)
        return [float(s) * 1e3 for s in ftimer().results]

    def cleanup(self, sess: Any, remote_name: str) -> None:
        # best effort: the server's workspace is temporary anyway
        with contextlib.suppress(Exception):
            sess.remove(remote_name)

    # -- the pipeline --------------------------------------------------------
    def _steps(self, art: Artifact, inputs: dict[str, np.ndarray], settings: MeasureSettings,
               stage: list[str]) -> tuple[dict[str, np.ndarray] | None, list[float]]:
        stage[0] = "connect"
        sess = self.create_session(settings)
        stage[0] = "upload"
        name = self.upload(sess, art)
        try:
            stage[0] = "load"
            vm, dev = self.load(sess, name)
            stage[0] = "set inputs"
            self._set_inputs(vm, dev, art, inputs)
            stage[0] = "run"
            outputs = self.run_once(vm, art) if self.fetch_outputs else None
            stage[0] = "time_evaluator"
            lat = self.evaluate(vm, dev, settings)
        finally:
            self.cleanup(sess, name)
        return outputs, lat

    def _pipeline(self, art: Artifact, inputs: dict[str, np.ndarray],
                  settings: MeasureSettings, stage: list[str]) -> tuple:
        """``("ok", outputs, latencies)`` or ``("error", kind, message)``. An exception
        is turned into a message *here*, so that its traceback (whose frames hold the
        session) is gone when the thread ends."""
        try:
            return ("ok", *self._steps(art, inputs, settings, stage))
        except Exception as exc:  # noqa: BLE001 - a failed run is data
            return ("error", *_classify(exc, stage[0], self.device_name))

    def run(self, artifact: str | Path, inputs: dict[str, np.ndarray],
            settings: MeasureSettings | None = None) -> RunnerResult:
        from pfcompile.device import call_with_deadline

        settings = settings or MeasureSettings()
        t0 = time.monotonic()
        try:
            art = resolve_artifact(artifact)
        except PfcompileError as exc:
            return RunnerResult.failure(str(exc), "artifact", self.device_name, 0.0, settings)
        stage = ["start"]
        deadline = self.connect_timeout_s + float(settings.timeout_s)
        try:
            outcome = call_with_deadline(self._pipeline, deadline, f"run on {self.device_name}",
                                         art, inputs, settings, stage)
        except DeviceError as exc:  # the deadline passed: the thread is left behind
            return RunnerResult.failure(
                f"{exc} (stuck in step '{stage[0]}'; the device may be hung or too slow: "
                f"raise timeout_s)", "timeout", self.device_name, time.monotonic() - t0,
                settings)
        finally:
            # remote handles (device, module, VM) form reference cycles, and a TVM server
            # serves one session at a time: free the session now, not at some later gc
            gc.collect()
        if outcome[0] == "error":
            return RunnerResult.failure(outcome[2], outcome[1], self.device_name,
                                        time.monotonic() - t0, settings)
        _, outputs, lat = outcome
        return RunnerResult(lat, None, outputs, self.device_name, "",
                            time.monotonic() - t0, settings)


#: words in a client-side error that mean the connection to the device is gone
_LOST = ("kshutdown", "connection", "socket", "broken pipe", "reset by peer", "eof", "closed")


def _classify(exc: BaseException, stage: str, device: str) -> tuple[str, str]:
    """``(error_kind, message)`` for an exception raised during step *stage*."""
    if isinstance(exc, DeviceError):  # from connect: unreachable, or no answer in time
        return ("timeout" if "no answer within" in str(exc) else "device"), str(exc)
    raw = str(exc).strip()
    remote = "Error caught from RPC call" in raw  # the device answered with an error
    lines = [ln.strip() for ln in raw.replace("Error caught from RPC call:", "").splitlines()
             if ln.strip() and not ln.strip().startswith("RPCError:")]
    summary = " | ".join(lines[-2:])[:600] or type(exc).__name__
    if isinstance(exc, PfcompileError):
        return "run", f"{device}: step '{stage}': {summary}"
    if not remote and any(w in raw.lower() for w in _LOST):
        return "device", (f"device {device} went away during step '{stage}' "
                          f"({type(exc).__name__}: {summary})")
    return "run", f"{device}: step '{stage}' failed on the device: {summary}"


class LocalRunner(Runner):
    """Starts its own host ``rpc_server`` on loopback (a free port in 9100..9199) on
    first use, and a fresh one after a run that failed for a device reason."""

    def __init__(self, target: Target | None = None, host: str = "127.0.0.1",
                 connect_timeout_s: float = 30.0) -> None:
        from pfcompile.targets import load_target

        self.target = target or load_target("host")
        if self.target.serve != "local":
            raise DeviceError(f"LocalRunner serves this machine only; target "
                              f"'{self.target.name}' needs `pfcompile device serve --target "
                              f"{self.target.name}` and --rpc/--device")
        self.host = host
        self.connect_timeout_s = connect_timeout_s
        self.server: Any = None

    def _ensure_server(self) -> str:
        from pfcompile.device import free_port, serve

        if self.server is None or not self.server.alive():
            if self.server is not None:
                self.server.stop()
            self.server = serve(self.target, self.host, free_port(self.host))
        return self.server.addr

    def run(self, artifact: str | Path, inputs: dict[str, np.ndarray],
            settings: MeasureSettings | None = None) -> RunnerResult:
        try:
            addr = self._ensure_server()
        except PfcompileError as exc:
            return RunnerResult.failure(str(exc), "device", "local", 0.0, settings)
        res = RPCRunner(device=addr, connect_timeout_s=self.connect_timeout_s).run(
            artifact, inputs, settings)
        if res.error_kind in ("device", "timeout") and self.server is not None:
            self.server.stop()  # hung or dead: the next run gets a fresh server
            self.server = None
        return res

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None


class NullRunner(Runner):
    """No device: every run 'takes' ``fixed_ms`` (a number, or a function of the
    artifact path), ``settings.repeat`` times; outputs are None. ``calls`` records
    the artifacts run, in order."""

    def __init__(self, fixed_ms: float | Callable[[Path], float] = 1.0) -> None:
        self.fixed_ms = fixed_ms
        self.calls: list[Path] = []

    def run(self, artifact: str | Path, inputs: dict[str, np.ndarray],
            settings: MeasureSettings | None = None) -> RunnerResult:
        settings = settings or MeasureSettings()
        p = Path(artifact)
        self.calls.append(p)
        ms = self.fixed_ms(p) if callable(self.fixed_ms) else self.fixed_ms
        return RunnerResult([float(ms)] * max(1, settings.repeat), None, None, "null", "",
                            0.0, settings)
