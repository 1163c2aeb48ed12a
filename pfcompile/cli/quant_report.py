"""CLI: ``pfcompile quant-report MODEL`` — which layers of a QDQ model run integer."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from pfcompile.quantexec.report import quant_report

__all__ = ["register"]

console = Console(width=140)


def quant_report_cmd(
    model: Path = typer.Argument(..., help="ONNX model (QDQ format)"),
    target: str = typer.Option("host", "--target", "-t", help="target name or .toml path"),
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
) -> None:
    """Show which Conv/MatMul/Gemm layers run on integer kernels and why others stay float."""
    rep = quant_report(model, target)
    if as_json:
        print(json.dumps(rep, indent=2))
        return
    table = Table(title=f"{model} on {rep['target']}: {rep['int8_layers']} integer, "
                        f"{rep['float_layers']} float")
    for col in ("node", "op", "path", "kernel", "reason"):
        table.add_column(col, overflow="fold")
    for r in rep["layers"]:
        table.add_row(r["node"], r["op"], r["path"], r["kernel"], r["reason"])
    console.print(table)


def register(app: typer.Typer) -> None:
    app.command("quant-report")(quant_report_cmd)
