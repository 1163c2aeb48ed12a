"""``pfcompile tune``: thin typer layer over :func:`pfcompile.codegen.api.tune_model`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

__all__ = ["register"]

console = Console()


def tune_cmd(
    model: Path = typer.Argument(..., help="ONNX model to tune"),
    target: str = typer.Option("host", "--target", "-t", help="target name or .toml"),
    trials: int = typer.Option(32, "--trials", "-n", help="measured candidates in total"),
    tuner: str = typer.Option("pfcompile", "--tuner", help="pfcompile | metaschedule"),
    device: str = typer.Option(None, "--device", help="RPC server HOST:PORT (direct)"),
    rpc: str = typer.Option(None, "--rpc", help="RPC tracker HOST:PORT"),
    key: str = typer.Option(None, "--key", help="device key at the tracker (default: target's)"),
    records: Path = typer.Option(None, "--records", help="records folder (default: schedules/)"),
    input_shape: list[str] = typer.Option(None, "--input-shape", help="name:1x3x224x224"),
    retune: bool = typer.Option(False, "--retune", help="tune workloads that have records"),
) -> None:
    """Refine schedule-template parameters per workload by measurement; records
    go to schedules/<target>/records.jsonl and serve every later compile."""
    from pfcompile.codegen.api import tune_model

    results = tune_model(model, target, trials=trials, tuner=tuner, device=device, rpc=rpc,
                         key=key, records_dir=records, input_shapes=input_shape, retune=retune,
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
