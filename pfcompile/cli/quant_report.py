"""CLI: ``pfcompile quant-report MODEL`` — which layers of a QDQ model run integer."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

__all__ = ["quant_report", "register"]

console = Console(width=140)


def quant_report(model: str | Path, target: str = "host") -> dict:
    """Per-layer integer/float decision for ``model`` on ``target`` (no build)."""
    from pfcompile.model import load_onnx
    from pfcompile.quantexec.build import import_onnx, onnx_layer_names
    from pfcompile.quantexec.lower import lower_qdq, reports_to_json
    from pfcompile.quantexec.onnx_prep import prepare_qdq
    from pfcompile.quantexec.x86 import with_int8_features
    from pfcompile.targets import load_target

    tgt = with_int8_features(load_target(target))  # the kernels `build` would pick
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the report itself says what falls back and why
        proto, folded = prepare_qdq(load_onnx(model))
        _, layers = lower_qdq(import_onnx(proto), tgt, onnx_layer_names(proto))
    out = reports_to_json(folded + layers)
    out["target"] = tgt.name
    return out


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
