"""CLI: ``pfcompile device serve|tracker|list``."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

__all__ = ["register"]

console = Console(width=120)
device_app = typer.Typer(help="Start and list devices (TVM RPC servers and trackers).",
                         no_args_is_help=True)


def _run_foreground(proc_handle: object, what: str) -> None:
    """Wait on a started server/tracker until it exits or we are told to stop."""
    from pfcompile.device import DeviceProcess

    assert isinstance(proc_handle, DeviceProcess)

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    console.print(f"{what} (log: {proc_handle.log_path}); Ctrl-C to stop")
    try:
        code = proc_handle.proc.wait()
    except KeyboardInterrupt:
        proc_handle.stop()
        console.print("stopped")
        return
    console.print(f"[red]{proc_handle.kind} exited with code {code}[/]\n{proc_handle.log_tail()}")
    sys.exit(1)


@device_app.command("serve")
def serve_cmd(
    target: Annotated[
        str, typer.Option("--target", "-t",
                          help="host, arm64 (emulated), fpga-vta (simulated), ... or a .toml")
    ] = "host",
    host: Annotated[
        str, typer.Option("--host", help="address to bind (loopback by default)")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="port to bind")] = 9090,
    tracker: Annotated[
        str | None, typer.Option("--tracker", help="register at tracker HOST:PORT")
    ] = None,
    key: Annotated[
        str | None, typer.Option("--key", help="device key at the tracker "
                                 "(default: the target's rpc_key)")
    ] = None,
    device_dir: Annotated[
        Path | None, typer.Option("--device-dir", help="emulated arm64 device folder "
                                  "(default: $PFCOMPILE_CACHE/arm64-device)")
    ] = None,
    threads: Annotated[
        int | None, typer.Option("--threads", help="most TVM threads a run may use "
                                 "(TVM_NUM_THREADS; default: the target's num-cores)")
    ] = None,
) -> None:
    """Start a stock TVM rpc_server for TARGET and keep it in the foreground."""
    from pfcompile.device import serve
    from pfcompile.targets import load_target

    tgt = load_target(target)
    if tgt.is_accelerator:
        console.print(f"serving the SIMULATED accelerator '{tgt.name}' at {host}:{port} "
                      f"(latencies are cycle-model estimates)")
    if tgt.serve == "qemu":
        console.print("starting the emulated device (import tvm under qemu takes ~20-80 s); "
                      "its latencies are functional checks only")
    dp = serve(tgt, host, port, tracker, key, device_dir, threads=threads)
    reg = f", registered as '{dp.key}' at tracker {tracker}" if tracker else ""
    _run_foreground(dp, f"serving target '{tgt.name}' at {dp.addr}{reg}")


@device_app.command("tracker")
def tracker_cmd(
    host: Annotated[
        str, typer.Option("--host", help="address to bind (loopback by default)")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="port to bind")] = 9190,
) -> None:
    """Start a stock TVM rpc_tracker and keep it in the foreground."""
    from pfcompile.device import tracker

    dp = tracker(host, port)
    _run_foreground(dp, f"tracker at {dp.addr}")


@device_app.command("list")
def list_cmd(
    rpc: Annotated[str, typer.Option("--rpc", help="tracker HOST:PORT")] = "127.0.0.1:9190",
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
    timeout: Annotated[
        float, typer.Option("--timeout", help="seconds to wait for the tracker")
    ] = 10.0,
) -> None:
    """List the devices registered at a tracker."""
    from pfcompile.device import query

    infos = query(rpc, timeout_s=timeout)
    if as_json:
        print(json.dumps([{"key": d.key, "free": d.free, "pending": d.pending,
                           "total": d.total, "servers": list(d.servers)} for d in infos]))
        return
    table = Table(title=f"devices at tracker {rpc}")
    for col in ("key", "total", "free", "pending", "servers"):
        table.add_column(col)
    for d in infos:
        table.add_row(d.key, str(d.total), str(d.free), str(d.pending), " ".join(d.servers))
    console.print(table if infos else f"tracker {rpc}: no devices registered")


def register(app: typer.Typer) -> None:
    app.add_typer(device_app, name="device")
