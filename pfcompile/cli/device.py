"""CLI: ``pfcompile device serve|tracker|list`` and ``pfcompile measure``."""

from __future__ import annotations

import json
import signal
import sys
import time
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
        str, typer.Option("--target", "-t", help="host, arm64 (emulated) or a .toml")
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
) -> None:
    """Start a stock TVM rpc_server for TARGET and keep it in the foreground."""
    from pfcompile.device import serve
    from pfcompile.targets import load_target

    tgt = load_target(target)
    if tgt.is_accelerator:
        from pfcompile.accel.serve import serve_accel

        console.print(f"serving the SIMULATED accelerator '{tgt.name}' at {host}:{port} "
                      f"(latencies are cycle-model estimates)")
        serve_accel(tgt, host, port, port + 1, tracker=tracker, key=key, block=True)
        return
    if tgt.serve == "qemu":
        console.print("starting the emulated device (import tvm under qemu takes ~20-80 s); "
                      "its latencies are functional checks only")
    dp = serve(tgt, host, port, tracker, key, device_dir)
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


def measure_cmd(
    artifact: Annotated[
        Path, typer.Argument(help="compiled artifact folder (model.so, model.json)")
    ],
    target: Annotated[str, typer.Option("--target", "-t", help="target name or .toml")] = "host",
    rpc: Annotated[str | None, typer.Option("--rpc", help="tracker HOST:PORT (with --key)")] = None,
    key: Annotated[
        str | None, typer.Option("--key", help="device key at the tracker "
                                 "(default: the target's rpc_key)")
    ] = None,
    device: Annotated[str | None, typer.Option("--device", help="a server's HOST:PORT")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the result as JSON")] = False,
    number: Annotated[int | None, typer.Option("--number", help="runs per repeat")] = None,
    repeat: Annotated[int | None, typer.Option("--repeat", help="repeats")] = None,
    min_repeat_ms: Annotated[
        int | None, typer.Option("--min-repeat-ms", help="min ms per repeat")
    ] = None,
    timeout: Annotated[
        int | None, typer.Option("--timeout", help="seconds before giving up")
    ] = None,
    log: Annotated[
        Path | None, typer.Option("--log", help="append the result as a JSON line to this file")
    ] = None,
) -> None:
    """Run ARTIFACT on a device, verify it against onnxruntime and time it. Without
    --rpc/--device, a host target gets a local server started for it. Exit code 1 when
    the outputs do not match onnxruntime, 2 on an error (unreachable device, ...)."""
    from dataclasses import replace

    from pfcompile.measure import append_jsonl, measure, measure_accelerator
    from pfcompile.targets import load_target

    tgt = load_target(target)
    if tgt.is_accelerator:
        res = measure_accelerator(artifact, tgt, rpc=rpc, key=key, device=device)
        if log is not None:
            append_jsonl(log, {"time": time.time(), "artifact": str(artifact), **res})
        if as_json:
            print(json.dumps(res))
        else:
            console.print(f"{tgt.name}: accelerator {res['accel_ms_simulated']:.3f} ms (SIMULATED, "
                          f"cycle model); host ops {res['host_ms_measured_median']:.3f} ms "
                          f"(measured); verified={res['verified']} "
                          f"(max abs err {res['max_abs_err']:.3g})")
        if not res["verified"]:
            sys.exit(1)
        return
    over = {k: v for k, v in {"number": number, "repeat": repeat, "min_repeat_ms": min_repeat_ms,
                              "timeout_s": timeout}.items() if v is not None}
    res = measure(artifact, tgt, rpc=rpc, key=key, device=device,
                  settings=replace(tgt.measure, **over))
    if log is not None:
        append_jsonl(log, {"time": time.time(), "artifact": str(artifact), **res})
    if as_json:
        print(json.dumps(res))
    else:
        table = Table(title=f"{artifact} on {res['device']} (target {res['target']})")
        table.add_column("field")
        table.add_column("value", overflow="fold")
        table.add_row("median ms", f"{res['median_ms']:.4f}")
        table.add_row("latencies ms", ", ".join(f"{x:.4f}" for x in res["latencies_ms"]))
        table.add_row("verified", "[green]yes[/]" if res["verified"] else "[red]NO[/]")
        table.add_row("max abs err", "n/a" if res["max_abs_err"] is None
                      else f"{res['max_abs_err']:.3g}")
        table.add_row("detail", res["detail"])
        if res["emulated"]:
            table.add_row("note", f"[yellow]{res['latency_note']}[/]")
        console.print(table)
    if not res["verified"]:
        sys.exit(1)


def register(app: typer.Typer) -> None:
    app.add_typer(device_app, name="device")
    app.command("measure")(measure_cmd)
