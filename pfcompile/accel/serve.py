"""The simulated accelerator as a TVM RPC device (the server side).

:func:`serve_accel` starts a stock TVM RPC server (``tvm.rpc.Server``, the same process
model as ``python -m tvm.exec.rpc_server``) whose processes have two extra global
functions, registered by ``server_init_callback``:

* ``pfcompile.accel.info() -> str``: JSON of the served accelerator configuration;
* ``pfcompile.accel.run(program, inputs, outputs, repeat) -> str``: load the uploaded
  program file (:meth:`AccelProgram.save`) and inputs ``.npz`` (file names in the
  session's work folder), run ``repeat`` times, write the outputs ``.npz``, return JSON
  stats: simulated accelerator cycles / ms and the measured host-op milliseconds of
  every repeat.

The client is a runner: :class:`pfcompile.runner.accel.AccelRunner` (upload, call,
download; its result says which numbers are simulated and which measured).
``python -m pfcompile.accel.serve`` runs :func:`serve_accel` as a process: what
:func:`pfcompile.device.serve` starts for an accelerator target (under its guard, so
that it ends with the process that started it).
"""

from __future__ import annotations

import functools
import json
import time

import numpy as np

from pfcompile.errors import DeviceError

__all__ = ["INFO_FUNC", "RUN_FUNC", "main", "register_functions", "serve_accel"]

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
    from pfcompile.device import parse_tracker

    tracker_addr = parse_tracker(tracker, "--tracker")
    try:
        server = rpc.Server(host=host, port=port, port_end=port_end, tracker_addr=tracker_addr,
                            # a key only with a tracker, as the stock rpc_server
                            key=(key or t.rpc_key) if tracker_addr else "",
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


def main(argv: list[str] | None = None) -> None:
    """``python -m pfcompile.accel.serve --target T --host H --port P [--tracker H:P
    --key K]``: the simulator device as a process (what :func:`pfcompile.device.serve`
    starts for an accelerator target)."""
    import argparse
    import logging

    ap = argparse.ArgumentParser(description="the simulated accelerator over TVM RPC")
    ap.add_argument("--target", required=True, help="target name or .toml path")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=9350)
    ap.add_argument("--tracker", default=None)
    ap.add_argument("--key", default=None)
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    serve_accel(a.target, a.host, a.port, a.port + 1, tracker=a.tracker, key=a.key, block=True)


if __name__ == "__main__":
    main()
