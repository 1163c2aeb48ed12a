"""CLI: ``pfcompile measure``."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

__all__ = ["register"]

console = Console(width=120)


def measure_cmd(
    artifact: Annotated[
        Path, typer.Argument(help="compiled artifact folder (model.so or program.npz, "
                             "model.json): `pfcompile compile -o DIR`, or `pfcompile run`'s DIST")
    ],
    target: Annotated[str | None, typer.Option(
        "--target", "-t", help="target name or .toml (default: the artifact's)")] = None,
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
    threads: Annotated[
        int | None, typer.Option("--threads", help="the device's TVM threads for the run "
                                 "(default: the artifact's deployment threads, model.json)")
    ] = None,
) -> None:
    """Run ARTIFACT on a device, verify it against the reference and time it. Without
    --rpc/--device, the target's own device is started (a host server, the emulated arm64
    server, the accelerator simulator). Exit code 1 when the outputs do not match the
    reference, 2 on an error (unreachable device, ...)."""
    from dataclasses import replace

    from pfcompile.measure import append_jsonl, artifact_target, measure
    from pfcompile.targets import load_target

    tgt = load_target(target or artifact_target(artifact))
    over = {k: v for k, v in {"number": number, "repeat": repeat, "min_repeat_ms": min_repeat_ms,
                              "timeout_s": timeout}.items() if v is not None}
    res = measure(artifact, tgt, rpc=rpc, key=key, device=device,
                  settings=replace(tgt.measure, **over), threads=threads)
    if log is not None:
        append_jsonl(log, {"time": time.time(), "artifact": str(artifact), **res})
    if as_json:
        print(json.dumps(res))
    elif res["simulated"]:
        console.print(f"{tgt.name}: accelerator {res['accel_ms_simulated']:.3f} ms (SIMULATED, "
                      f"cycle model); host ops {res['host_ms_measured_median']:.3f} ms "
                      f"(measured); verified={res['verified']} "
                      f"(max abs err {res['max_abs_err']:.3g})")
    else:
        table = Table(title=f"{artifact} on {res['device']} (target {res['target']})")
        table.add_column("field")
        table.add_column("value", overflow="fold")
        table.add_row("median ms", f"{res['median_ms']:.4f}")
        table.add_row("threads", f"{res['threads']}" + (
            f" (deployment: {res['deployment_threads']})"
            if res.get("deployment_threads") and res["deployment_threads"] != res["threads"]
            else ""))
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
    app.command("measure")(measure_cmd)
