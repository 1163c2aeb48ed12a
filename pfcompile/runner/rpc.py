"""Runners over a TVM RPC session: a device via a tracker or direct, this process, or a
device of our own.

- :class:`RPCRunner`: a device via a tracker (``rpc`` + ``key``) or direct (``device``).
  Its steps are methods that a subclass may replace: ``create_session``,
  ``configure_threads``, ``upload``, ``load``, ``set_inputs``, ``run_once``, ``evaluate``
  (``evaluate_paired`` when paired), ``cleanup``; kernels: :meth:`RPCRunner.time_kernels`.
  The device's thread pool is set to ``threads``, else to the artifact's deployment
  threads (``model.json``), before anything runs: what is timed is what is deployed.
- :class:`InProcessRunner`: the same steps on this process's CPU (TVM's
  ``LocalSession``): kernel timing on the host without a server.
- :class:`LocalRunner`: starts (and restarts, after a failure) the target's own device:
  a host server, the emulated arm64 server (qemu-user) or the accelerator simulator.
"""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pfcompile.deploy import prepare, set_threads
from pfcompile.errors import DeviceError, PfcompileError
from pfcompile.runner.base import (
    Artifact,
    KernelCall,
    KernelTimes,
    KernelTiming,
    Paired,
    Runner,
    RunnerResult,
    resolve_artifact,
)
from pfcompile.targets import MeasureSettings, Target

__all__ = ["InProcessRunner", "LocalRunner", "RPCRunner", "read_outputs"]


def read_outputs(value: Any, sess: Any = None) -> list[np.ndarray]:
    """A VM result (a tensor, or a nested tuple of tensors; over RPC a remote array read
    item by item with the runtime's ``ffi.Array*`` functions) as a flat list of arrays."""
    if hasattr(value, "numpy"):
        return [value.numpy()]
    if sess is not None and type(value).__name__ == "RPCObjectRef":
        size, item = sess.get_function("ffi.ArraySize"), sess.get_function("ffi.ArrayGetItem")
        out: list[np.ndarray] = []
        for i in range(int(size(value))):
            out.extend(read_outputs(item(value, i), sess))
        return out
    out = []
    for v in value:
        out.extend(read_outputs(v, sess))
    return out


def _arg(spec: tuple[tuple[int, ...], str], rng: np.random.Generator) -> np.ndarray:
    shape, dtype = spec
    if "float" in dtype:
        return rng.standard_normal(shape).astype(dtype)
    return np.zeros(shape, dtype=dtype)


class RPCRunner(Runner):
    """A device over TVM RPC: via a tracker (``rpc="H:P"``, ``key``) or direct
    (``device="H:P"``). The whole run is bounded by ``connect_timeout_s +
    settings.timeout_s``; the server is also told to end the session after
    ``settings.timeout_s + 30`` s so that it frees itself if we give up on it.
    ``on_step(name)`` (optional) is told each step as it starts, and ``"done"``.
    ``threads``: the device's thread pool for every run (default: each artifact's
    deployment threads; kernels: left as the device has it)."""

    def __init__(self, rpc: str | None = None, key: str | None = None,
                 device: str | None = None, connect_timeout_s: float = 30.0,
                 fetch_outputs: bool = True,
                 on_step: Callable[[str], None] | None = None,
                 threads: int | None = None) -> None:
        self.rpc, self.key, self.device = rpc, key, device
        self.connect_timeout_s = connect_timeout_s
        self.fetch_outputs = fetch_outputs
        self.on_step = on_step
        self.threads = threads

    @property
    def name(self) -> str:  # type: ignore[override]
        return f"{self.device}" if self.device else f"{self.key}@{self.rpc}"

    # -- steps (replaceable) -------------------------------------------------
    def create_session(self, settings: MeasureSettings) -> Any:
        from pfcompile.device import connect

        return connect(rpc=self.rpc, key=self.key, device=self.device,
                       timeout_s=self.connect_timeout_s,
                       session_timeout_s=float(settings.timeout_s) + 30.0)

    def configure_threads(self, sess: Any, n: int) -> int:
        """Set the session's thread pool to ``n``; the count in effect."""
        return set_threads(n, sess)

    def upload(self, sess: Any, path: Path) -> str:
        name = f"pfc_{time.time_ns()}_{path.name}"
        sess.upload(str(path), target=name)
        return name

    def load(self, sess: Any, remote_name: str) -> tuple[Any, Any]:
        """``(model, dev)``: the library loaded and its load-time step run
        (:func:`pfcompile.deploy.prepare`)."""
        from tvm import relax

        rmod = sess.load_module(remote_name)
        dev = sess.cpu()
        return prepare(relax.VirtualMachine(rmod, dev)), dev

    def set_inputs(self, vm: Any, dev: Any, art: Artifact,
                   inputs: dict[str, np.ndarray]) -> None:
        import tvm

        names = list(art.input_names) or list(inputs)
        missing = [n for n in names if n not in inputs]
        if missing:
            raise PfcompileError(f"inputs lack {missing} (the model takes {names})")
        args = [tvm.runtime.tensor(np.ascontiguousarray(inputs[n]), dev) for n in names]
        vm.set_input(*args)

    def run_once(self, sess: Any, vm: Any, art: Artifact) -> dict[str, np.ndarray]:
        vm.invoke_stateful()
        arrays = read_outputs(vm.get_outputs(), sess)
        names = list(art.output_names)
        if len(names) != len(arrays):
            names = [f"output_{i}" for i in range(len(arrays))]
        return dict(zip(names, arrays, strict=True))

    def evaluate(self, vm: Any, dev: Any, settings: MeasureSettings) -> list[float]:
        ftimer = vm.stateful_timer(dev, number=settings.number, repeat=settings.repeat,
                                   min_repeat_ms=settings.min_repeat_ms)
        return [float(s) * 1e3 for s in ftimer().results]

    def evaluate_paired(self, vm: Any, ref_vm: Any, dev: Any,
                        settings: MeasureSettings) -> tuple[list[float], list[float]]:
        """``settings.repeat`` ABBA rounds of the candidate and the reference, each side
        ``settings.min_repeat_ms`` long: (candidate ms per round, ratios per round)."""
        fc = vm.stateful_timer(dev, number=1, repeat=1, min_repeat_ms=settings.min_repeat_ms)
        fr = ref_vm.stateful_timer(dev, number=1, repeat=1, min_repeat_ms=settings.min_repeat_ms)
        raw, ratios = [], []
        for i in range(max(1, settings.repeat)):
            if i % 2 == 0:
                tr, tc = fr().mean, fc().mean
            else:
                tc, tr = fc().mean, fr().mean
            ratios.append(tc / tr)
            raw.append(tc * 1e3)
        return raw, ratios

    def cleanup(self, sess: Any, remote_names: list[str]) -> None:
        # best effort: the server's workspace is temporary anyway
        for name in remote_names:
            with contextlib.suppress(Exception):
                sess.remove(name)

    # -- the pipeline --------------------------------------------------------
    def _step(self, stage: list[str], name: str) -> None:
        stage[0] = name
        if self.on_step is not None:
            self.on_step(name)

    def _steps(self, art: Artifact, inputs: dict[str, np.ndarray], settings: MeasureSettings,
               paired: Paired | None, stage: list[str]) -> tuple:
        self._step(stage, "connect")
        sess = self.create_session(settings)
        threads = self.threads or art.threads
        if threads:
            self._step(stage, "threads")
            threads = self.configure_threads(sess, threads)
        self._step(stage, "upload")
        names = [self.upload(sess, art.so_path)]
        try:
            self._step(stage, "load")
            vm, dev = self.load(sess, names[0])
            self._step(stage, "set inputs")
            self.set_inputs(vm, dev, art, inputs)
            self._step(stage, "run")
            outputs = self.run_once(sess, vm, art) if self.fetch_outputs else None
            if paired is None:
                self._step(stage, "time_evaluator")
                return outputs, self.evaluate(vm, dev, settings), None, threads
            self._step(stage, "load reference")
            ref = resolve_artifact(paired.artifact)
            names.append(self.upload(sess, ref.so_path))
            ref_vm, _ = self.load(sess, names[-1])
            self.set_inputs(ref_vm, dev, ref, paired.inputs)
            ref_vm.invoke_stateful()
            self._step(stage, "paired time_evaluator")
            raw, ratios = self.evaluate_paired(vm, ref_vm, dev, settings)
            return outputs, raw, ratios, threads
        finally:
            self.cleanup(sess, names)

    def _pipeline(self, art: Artifact, inputs: dict[str, np.ndarray],
                  settings: MeasureSettings, paired: Paired | None, stage: list[str]) -> tuple:
        """``("ok", outputs, latencies, ratios, threads)`` or ``("error", kind, message)``. An
        exception is turned into a message *here*, so that its traceback (whose frames
        hold the session) is gone when the thread ends."""
        try:
            return ("ok", *self._steps(art, inputs, settings, paired, stage))
        except Exception as exc:  # noqa: BLE001 - a failed run is data
            return ("error", *_classify(exc, stage[0], self.name))

    def _bounded(self, fn: Callable[..., tuple], deadline_s: float, stage: list[str],
                 *args: Any) -> tuple:
        """``fn(*args)`` within the deadline: its outcome, or ``("error", "timeout", ...)``."""
        from pfcompile.device import call_with_deadline

        try:
            return call_with_deadline(fn, deadline_s, f"run on {self.name}", *args)
        except DeviceError as exc:  # the deadline passed: the thread is left behind
            msg = (f"{exc} (stuck in step '{stage[0]}'; the device may be hung or too slow: "
                   f"raise timeout_s)")
            return ("error", "timeout", msg)
        finally:
            # remote handles (device, module, VM) form reference cycles, and a TVM server
            # serves one session at a time: free the session now, not at some later gc
            gc.collect()
            if self.on_step is not None:
                self.on_step("done")

    def run(self, artifact: str | Path, inputs: dict[str, np.ndarray],
            settings: MeasureSettings | None = None, *,
            paired: Paired | None = None) -> RunnerResult:
        settings = settings or MeasureSettings()
        t0 = time.monotonic()
        try:
            art = resolve_artifact(artifact)
        except PfcompileError as exc:
            return RunnerResult.failure(str(exc), "artifact", self.name, 0.0, settings)
        stage = ["start"]
        deadline = self.connect_timeout_s + float(settings.timeout_s) * (2 if paired else 1)
        outcome = self._bounded(self._pipeline, deadline, stage, art, inputs, settings, paired,
                                stage)
        if outcome[0] == "error":
            return RunnerResult.failure(outcome[2], outcome[1], self.name,
                                        time.monotonic() - t0, settings)
        _, outputs, lat, ratios, threads = outcome
        return RunnerResult(lat, None, outputs, self.name, "", time.monotonic() - t0,
                            settings, ratios, threads=threads)

    # -- kernels -------------------------------------------------------------
    def _kernel_steps(self, library: Path | None, calls: Sequence[KernelCall],
                      settings: MeasureSettings, reference: KernelCall | None,
                      reference_ms: float | None, rounds: int, fetch_outputs: bool,
                      stage: list[str]) -> tuple:
        import tvm

        self._step(stage, "connect")
        kernel_settings = MeasureSettings(settings.number, settings.repeat,
                                          settings.min_repeat_ms,
                                          settings.timeout_s * max(1, len(calls)))
        sess = self.create_session(kernel_settings)
        if self.threads:
            self.configure_threads(sess, self.threads)
        names: list[str] = []
        try:
            self._step(stage, "upload")
            dev = sess.cpu()
            rmod = None
            if library is not None:
                names.append(self.upload(sess, Path(library)))
                rmod = sess.load_module(names[-1])
            number, repeat, min_ms = ((1, 1, settings.min_repeat_ms) if reference is not None
                                      else (settings.number, settings.repeat,
                                            settings.min_repeat_ms))

            def timer(call: KernelCall) -> tuple[Callable[[], float], Callable[[], Any]]:
                """(seconds of one timed evaluation, a run that returns the output)."""
                if call.module is not None:
                    names.append(self.upload(sess, Path(call.module)))
                    vm, _ = self.load(sess, names[-1])
                    vargs = [tvm.runtime.tensor(np.ascontiguousarray(v), dev)
                             for v in (call.inputs or {}).values()]
                    fe = vm.time_evaluator(dev, number=number, repeat=repeat,
                                           min_repeat_ms=min_ms)
                    return (lambda: float(np.median(fe(*vargs).results))), (
                        lambda: read_outputs(vm(*vargs), sess)[-1])
                assert rmod is not None, "functions to time need a library"
                parts = []
                for fname, specs in call.functions:
                    rng = np.random.default_rng(0)
                    args = [tvm.runtime.tensor(_arg(s, rng), dev) for s in specs]
                    fe = rmod.time_evaluator(fname, dev, number=number, repeat=repeat,
                                             min_repeat_ms=min_ms)
                    parts.append((rmod[fname], fe, args))

                def run_all() -> Any:
                    for f, _, args in parts:
                        f(*args)
                    return parts[-1][2][-1].numpy() if parts and parts[-1][2] else None

                return (lambda: sum(float(np.median(fe(*a).results)) for _, fe, a in parts),
                        run_all)

            self._step(stage, "time kernels")
            ref_timed = None
            if reference is not None:
                ref_timed, _ = timer(reference)
                if reference_ms is None:
                    ref_timed()  # warm-up
                    reference_ms = 1e3 * float(np.median([ref_timed() for _ in range(9)]))
            out: list[KernelTiming] = []
            for call in calls:
                try:
                    timed, run_all = timer(call)
                    output = run_all()
                    if ref_timed is None:
                        out.append(KernelTiming(1e3 * timed(), "",
                                                output if fetch_outputs else None))
                        continue
                    timed()  # warm-up
                    ratios = []
                    for r in range(rounds):
                        if r % 2 == 0:
                            tr, tk = ref_timed(), timed()
                        else:
                            tk, tr = timed(), ref_timed()
                        ratios.append(tk / tr)
                    out.append(KernelTiming(float(np.median(ratios)) * reference_ms, "",
                                            output if fetch_outputs else None))
                except Exception as exc:  # noqa: BLE001 - a kernel that fails to run is data
                    out.append(KernelTiming(None, f"run: {type(exc).__name__}: "
                                                  f"{str(exc)[-200:]}"))
            return ("ok", out, reference_ms)
        finally:
            self.cleanup(sess, names)

    def _kernel_pipeline(self, *args: Any) -> tuple:
        stage = args[-1]
        try:
            return self._kernel_steps(*args)
        except Exception as exc:  # noqa: BLE001 - a failed batch is data
            return ("error", *_classify(exc, stage[0], self.name))

    def time_kernels(self, library: str | Path | None, calls: Sequence[KernelCall],
                     settings: MeasureSettings, *, reference: KernelCall | None = None,
                     reference_ms: float | None = None, rounds: int = 5,
                     fetch_outputs: bool = False) -> KernelTimes:
        stage = ["start"]
        deadline = self.connect_timeout_s + float(settings.timeout_s) * max(1, len(calls))
        outcome = self._bounded(self._kernel_pipeline, deadline, stage,
                                Path(library) if library is not None else None, list(calls),
                                settings, reference, reference_ms, rounds, fetch_outputs, stage)
        if outcome[0] == "error":
            msg = outcome[2]
            return KernelTimes([KernelTiming(None, msg) for _ in calls], reference_ms, msg)
        return KernelTimes(outcome[1], outcome[2])


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


class InProcessRunner(RPCRunner):
    """The RPC steps on this process's CPU (TVM's ``LocalSession``: no server, no
    socket): host kernel timing without starting a device."""

    def __init__(self, fetch_outputs: bool = True, threads: int | None = None) -> None:
        super().__init__(device="this process", fetch_outputs=fetch_outputs, threads=threads)

    def create_session(self, settings: MeasureSettings) -> Any:
        from tvm import rpc

        return rpc.LocalSession()

    def configure_threads(self, sess: Any, n: int) -> int:
        return set_threads(n)   # this process's pool (TVM_NUM_THREADS before its first use)


class LocalRunner(Runner):
    """Starts the target's own device on loopback (a free port in 9100..9199) on first
    use, and a fresh one after a run that failed for a device reason: a host
    ``rpc_server``, the emulated arm64 server (qemu-user, ready in minutes) or the
    accelerator simulator (:func:`pfcompile.device.serve`). Runs go through
    :class:`RPCRunner` (CPU targets) or :class:`~pfcompile.runner.accel.AccelRunner`."""

    def __init__(self, target: Target | None = None, host: str = "127.0.0.1",
                 connect_timeout_s: float = 30.0, threads: int | None = None,
                 port_range: tuple[int, int] | None = None) -> None:
        from pfcompile.targets import load_target

        self.target = target or load_target("host")
        self.host = host
        self.connect_timeout_s = connect_timeout_s
        self.threads = threads
        self.port_range = port_range
        self.server: Any = None

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.server.addr if self.server is not None else f"{self.target.name} (not started)"

    def _ensure_server(self) -> str:
        from pfcompile.device import PORT_RANGE, free_port, serve

        if self.server is None or not self.server.alive():
            if self.server is not None:
                self.server.stop()
            lo, hi = self.port_range or PORT_RANGE
            self.server = serve(self.target, self.host, free_port(self.host, lo, hi),
                                threads=self.threads)
        return self.server.addr

    def _inner(self, addr: str) -> Runner:
        if self.target.is_accelerator:
            from pfcompile.runner.accel import AccelRunner

            return AccelRunner(self.target, device=addr)
        return RPCRunner(device=addr, connect_timeout_s=self.connect_timeout_s,
                         threads=self.threads)

    def _settle(self, res: Any) -> None:
        kind = getattr(res, "error_kind", "") or ("device" if getattr(res, "error", None)
                                                 else "")
        if kind in ("device", "timeout") and self.server is not None:
            self.server.stop()  # hung or dead: the next run gets a fresh server
            self.server = None

    def run(self, artifact: str | Path, inputs: dict[str, np.ndarray],
            settings: MeasureSettings | None = None, *,
            paired: Paired | None = None) -> RunnerResult:
        try:
            addr = self._ensure_server()
        except PfcompileError as exc:
            return RunnerResult.failure(str(exc), "device", self.name, 0.0, settings)
        res = self._inner(addr).run(artifact, inputs, settings, paired=paired)
        self._settle(res)
        return res

    def time_kernels(self, library: str | Path | None, calls: Sequence[KernelCall],
                     settings: MeasureSettings, *, reference: KernelCall | None = None,
                     reference_ms: float | None = None, rounds: int = 5,
                     fetch_outputs: bool = False) -> KernelTimes:
        try:
            addr = self._ensure_server()
        except PfcompileError as exc:
            return KernelTimes([KernelTiming(None, str(exc)) for _ in calls], reference_ms,
                               str(exc))
        out = self._inner(addr).time_kernels(library, calls, settings, reference=reference,
                                             reference_ms=reference_ms, rounds=rounds,
                                             fetch_outputs=fetch_outputs)
        if out.error is not None and self.server is not None and not self.server.alive():
            self.server.stop()
            self.server = None
        return out

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None
