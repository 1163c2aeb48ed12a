"""``pfcompile tune``: thin typer layer over :func:`pfcompile.tuning.tune_model`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

__all__ = ["register"]

console = Console()


def tune_cmd(
    model: Annotated[Path, typer.Argument(help="ONNX model to tune")],
    target: Annotated[str, typer.Option("--target", "-t", help="target name or .toml")] = "host",
    trials: Annotated[int, typer.Option("--trials", "-n", help="measured candidates in total")] = 64,
    tuner: Annotated[str, typer.Option(help="pfcompile | metaschedule")] = "pfcompile",
    device: Annotated[str | None, typer.Option(help="RPC server HOST:PORT (direct)")] = None,
    rpc: Annotated[str | None, typer.Option(help="RPC tracker HOST:PORT")] = None,
    key: Annotated[str | None, typer.Option(help="device key at the tracker")] = None,
    records: Annotated[Path | None, typer.Option(
        help="records folder (default: the cache's records/, the shipped ones read too)")] = None,
    input_shape: Annotated[list[str] | None, typer.Option(help="name:1x3x224x224")] = None,
    retune: Annotated[bool, typer.Option(help="tune workloads that have records")] = False,
    time_limit: Annotated[float, typer.Option(
        "--time-limit", help="seconds after which no new measurement starts (0: none)")] = 90.0,
) -> None:
    """Refine schedule-template parameters per workload by measurement; records
    go to RECORDS/TARGET/records.jsonl (default: $PFCOMPILE_CACHE/records) and serve every
    later compile."""
    from pfcompile.tuning import tune_model

    results = tune_model(model, target, trials=trials, tuner=tuner, device=device, rpc=rpc,
                         key=key, records_dir=records, input_shapes=input_shape, retune=retune,
                         time_limit_s=time_limit or None,
                         log=lambda m: console.print(f"[dim]{m}[/]"))
    table = Table(title=f"tuned workloads ({tuner}, {trials} trials)")
    for col in ("workload", "n", "heuristic ms", "tuned ms", "speedup", "trials", "note"):
        table.add_column(col)
    for r in results:
        table.add_row(r.key[:70], str(r.count),
                      f"{r.heuristic_ms:.3f}" if r.heuristic_ms else "-",
                      f"{r.best_ms:.3f}" if r.best_ms else "-",
                      f"{r.speedup:.2f}x" if r.speedup else "-", str(r.trials), r.skipped)
    console.print(table)


def register(app: typer.Typer) -> None:
    app.command("tune")(tune_cmd)
