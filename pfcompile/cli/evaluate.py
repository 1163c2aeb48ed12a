"""CLI: ``pfcompile evaluate``: parse, call one function, print."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from pfcompile.cli._common import import_ir, jsonable, load_data

__all__ = ["register"]

console = Console()


def evaluate_cmd(
    model: Annotated[Path, typer.Argument(help=".onnx to evaluate")],
    data: Annotated[Path, typer.Option("--data", help="validation .npz (x, optional labels y)")],
    reference: Annotated[Path | None, typer.Option("--reference", help="original .onnx to compare against")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
    input_shape: Annotated[list[str] | None, typer.Option(
        "--input-shape", help="static shape for a dynamic input: name:1x3x224x224 "
        "(a dynamic batch alone defaults to the data's batch)")] = None,
) -> None:
    """Top-1, agreement and output SNR vs a reference, MACs, params, size."""
    from pfcompile.evaluate import evaluate

    # evaluation keeps a dynamic batch free (the data is run in batches)
    m = import_ir(model, input_shape, batch=None)
    ref = import_ir(reference, input_shape, batch=None) if reference is not None else None
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
