"""CLI: ``pfcompile evaluate``: parse, call one function, print."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from pfcompile.cli._common import jsonable, load_data

__all__ = ["register"]

console = Console()


def evaluate_cmd(
    model: Annotated[Path, typer.Argument(help=".onnx to evaluate")],
    data: Annotated[Path, typer.Option("--data", help="validation .npz (x, optional labels y)")],
    reference: Annotated[Path | None, typer.Option("--reference", help="original .onnx to compare against")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Top-1, agreement and output SNR vs a reference, MACs, params, size."""
    from pfcompile import ir as pir
    from pfcompile.evaluate import evaluate

    m = pir.load(model)
    ref = pir.load(reference) if reference is not None else None
    result = evaluate(m, load_data(m, data), ref)
    if as_json:
        print(json.dumps(jsonable(result)))
        return
    t = Table(title=f"evaluate {model}")
    t.add_column("metric")
    t.add_column("value")
    for k, v in result.items():
        t.add_row(k, "-" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v)))
    console.print(t)



def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate_cmd)
