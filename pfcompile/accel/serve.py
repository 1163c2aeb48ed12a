"""The simulated accelerator as a TVM RPC device.

:func:`serve_accel` starts a stock TVM RPC server (``tvm.rpc.Server``, the same process
model as ``python -m tvm.exec.rpc_server``) whose processes have two extra global
functions, registered by ``server_init_callback``:

* ``pfcompile.accel.info() -> str``: JSON of the served accelerator configuration;
* ``pfcompile.accel.run(program, inputs, outputs, repeat) -> str``: load the uploaded
  program file (:meth:`AccelProgram.save`) and inputs ``.npz`` (file names in the
  session's work folder), run ``repeat`` times, write the outputs ``.npz``, return JSON
  stats: simulated accelerator cycles / ms and the measured host-op milliseconds of
  every repeat.

:func:`measure_accel` is the client: connect (directly or through a tracker), upload,
call, download, and return an :class:`AccelMeasurement` whose fields say which numbers
are simulated and which measured.

Wiring (for the CLI owner): ``pfcompile device serve --target fpga-vta`` ->
``serve_accel(load_target("fpga-vta"), host, port, tracker=..., key=target.rpc_key)``;
``pfcompile measure`` on a target with ``target.is_accelerator`` ->
``measure_accel(model_or_program, target, inputs, host=..., port=...)``.
"""

from __future__ import annotations

import functools
import json
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pfcompile.errors import DeviceError, MeasureError

__all__ = ["AccelMeasurement", "measure_accel", "register_functions", "serve_accel"]

RUN_FUNC = "pfcompile.accel.run"
INFO_FUNC = "pfcompile.accel.info"


def register_functions(target_name: str) -> None:
    """Register the accelerator's global functions in this process (server side)."""
    import tvm

    from pfcompile.accel.config import load_accel_config
    from pfcompile.accel.program import load_program

    cfg = load_accel_config(target_name)

    def _workpath(name: str) -> str:
        try:
            return str(tvm.get_global_func("tvm.rpc.server.workpath")(name))
        except Exception:  # noqa: BLE001 - not inside an RPC session: a plain path
            return name

    def info() -> str:
        from dataclasses import asdict

        return json.dumps(asdict(cfg))

    def run(program: str, inputs: str, outputs: str, repeat: int) -> str:
        prog = load_program(_workpath(program))
        if prog.cfg.name != cfg.name:
            raise DeviceError(f"program was compiled for '{prog.cfg.name}' but this device "
                              f"serves '{cfg.name}': compile for --target {cfg.name}")
        with np.load(_workpath(inputs), allow_pickle=False) as z:
            feed = {k: z[k] for k in z.files}
        host_ms: list[float] = []
        outs: dict[str, np.ndarray] = {}
        stats = None
        for _ in range(max(1, int(repeat))):
            outs, stats = prog.run(feed)
            host_ms.append(stats.host_ms)
        np.savez(_workpath(outputs), **outs)
        assert stats is not None
        return json.dumps({"accel_cycles": stats.accel_cycles,
                           "accel_ms_simulated": stats.accel_ms,
                           "host_ms_measured": host_ms, "batch": stats.batch,
                           "layer_cycles": stats.layer_cycles, "target": cfg.name})

    tvm.register_global_func(INFO_FUNC, info, override=True)
    tvm.register_global_func(RUN_FUNC, run, override=True)


def serve_accel(target, host: str = "127.0.0.1", port: int = 9350, port_end: int = 9399,
                tracker: str | None = None, key: str | None = None, block: bool = True):
    """Start the simulated-accelerator RPC server for ``target`` (name, path or Target).

    ``tracker``: ``HOST:PORT`` of an RPC tracker to register with (under ``key``,
    default the target's ``rpc_key``). ``block=False`` returns the ``tvm.rpc.Server``
    (call ``.terminate()``); otherwise serves until interrupted."""
    from tvm import rpc

    from pfcompile.targets import Target, load_target

    t = target if isinstance(target, Target) else load_target(str(target))
    if not t.is_accelerator:
        raise DeviceError(f"target '{t.name}' has no [accelerator] table: serve it with the "
                          f"CPU device server instead")
    tracker_addr = None
    if tracker:
        h, _, p = tracker.rpartition(":")
        try:
            tracker_addr = (h, int(p))
        except ValueError as exc:
            raise DeviceError(f"tracker address '{tracker}' is not HOST:PORT") from exc
    try:
        server = rpc.Server(host=host, port=port, port_end=port_end, tracker_addr=tracker_addr,
                            key=key or t.rpc_key,
                            server_init_callback=functools.partial(register_functions, t.path))
    except Exception as exc:
        raise DeviceError(f"could not start the accelerator RPC server for '{t.name}' on "
                          f"{host}:{port}..{port_end}: {exc}") from exc
    if not block:
        return server
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.terminate()
    return server


@dataclass
class AccelMeasurement:
    """One measurement on the simulated accelerator device."""

    target: str
    accel_cycles: int
    accel_ms_simulated: float                  # from the cycle model
    host_ms_measured: list[float]              # wall clock of host ops, per repeat, per image
    outputs: dict[str, np.ndarray] = field(default_factory=dict)
    layer_cycles: dict[str, int] = field(default_factory=dict)

    @property
    def host_ms_median(self) -> float:
        return statistics.median(self.host_ms_measured)

    def to_json(self) -> dict:
        return {"target": self.target, "accel_cycles": self.accel_cycles,
                "accel_ms_simulated": self.accel_ms_simulated,
                "host_ms_measured_median": self.host_ms_median,
                "host_ms_measured": self.host_ms_measured,
                "label": "accelerator latency simulated (cycle model); host ops measured on "
                         "the machine serving the simulator"}


def measure_accel(model_or_program, target, inputs: dict[str, np.ndarray], *,
                  host: str = "127.0.0.1", port: int = 9350, tracker: str | None = None,
                  key: str | None = None, repeat: int = 3, records=None,
                  timeout_s: int = 300) -> AccelMeasurement:
    """Compile (unless given an AccelProgram or a program file), upload and run on the
    accelerator RPC device at ``host:port`` (or from ``tracker`` under ``key``)."""
    from tvm import rpc

    from pfcompile.accel.program import AccelProgram, compile_accel
    from pfcompile.targets import Target, load_target

    t = target if isinstance(target, Target) else load_target(str(target))
    with tempfile.TemporaryDirectory(prefix="pfaccel_") as tmp:
        prog_path = Path(tmp) / "program.npz"
        if isinstance(model_or_program, AccelProgram):
            model_or_program.save(prog_path)
        elif isinstance(model_or_program, (str, Path)) and str(model_or_program).endswith(".npz"):
            prog_path = Path(model_or_program)
        else:
            compile_accel(model_or_program, t, records=records).save(prog_path)
        in_path = Path(tmp) / "inputs.npz"
        np.savez(in_path, **inputs)
        try:
            if tracker:
                h, _, p = tracker.rpartition(":")
                sess = rpc.connect_tracker(h, int(p)).request(key or t.rpc_key,
                                                              session_timeout=timeout_s)
            else:
                sess = rpc.connect(host, port, key=key or t.rpc_key, session_timeout=timeout_s)
        except Exception as exc:
            raise DeviceError(f"cannot reach the accelerator device for '{t.name}' at "
                              f"{tracker or f'{host}:{port}'}: {exc}; start it with "
                              f"`pfcompile device serve --target {t.name}`") from exc
        try:
            sess.upload(str(prog_path), "program.npz")
            sess.upload(str(in_path), "inputs.npz")
            try:
                f = sess.get_function(RUN_FUNC)
            except Exception as exc:
                raise DeviceError(f"the RPC server at {host}:{port} is not an accelerator "
                                  f"device (no '{RUN_FUNC}'): {exc}") from exc
            try:
                stats = json.loads(str(f("program.npz", "inputs.npz", "outputs.npz", repeat)))
            except Exception as exc:
                raise MeasureError(f"accelerator run on '{t.name}' failed: {exc}") from exc
            out_bytes = sess.download("outputs.npz")
        finally:
            del sess
    import io

    with np.load(io.BytesIO(bytes(out_bytes)), allow_pickle=False) as z:
        outs = {k: z[k] for k in z.files}
    return AccelMeasurement(target=stats["target"], accel_cycles=int(stats["accel_cycles"]),
                            accel_ms_simulated=float(stats["accel_ms_simulated"]),
                            host_ms_measured=[float(v) for v in stats["host_ms_measured"]],
                            outputs=outs, layer_cycles=stats["layer_cycles"])
