"""CLI: ``pfcompile inspect``: parse, call one function, print."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from pfcompile.frontend import import_model
from pfcompile.model import parse_input_shapes
from pfcompile.passes.report import inspect_model

__all__ = ["register"]

console = Console()


def inspect_cmd(
    model: Annotated[Path, typer.Argument(help="ONNX model, or a compiled artifact folder")],
    as_json: Annotated[bool, typer.Option("--json", help="print JSON (usable as a prune "
                                          "config)")] = False,
    input_shape: Annotated[list[str] | None, typer.Option(
        "--input-shape", help="static shape for a dynamic input: name:1x3x224x224 "
        "(a dynamic batch alone defaults to 1)")] = None,
) -> None:
    """List layers, channel groups (prunable or frozen and why), MACs, params, bytes.
    On a compiled artifact folder: which layers run integer / on the accelerator and
    which fell back to float, and why."""
    if model.is_dir():
        _inspect_artifact(model, as_json)
        return
    rep = inspect_model(import_model(model, parse_input_shapes(input_shape)))
    if as_json:
        typer.echo(json.dumps(rep, indent=1))
        return
    lt = Table("layer", "op", "MACs", "params", "bytes", "out shape", title=str(model))
    for row in rep["layers"]:
        lt.add_row(row["name"], row["op_type"], f"{row['macs']:,}", f"{row['params']:,}",
                   f"{row['bytes']:,}", "x".join(map(str, row["out_shape"] or [])))
    console.print(lt)
    gt = Table("group id", "channels", "prunable", "frozen because", "sources", title="groups")
    for g in rep["groups"]:
        gt.add_row(g["id"], str(g["channels"]) + (f" ({g['partitions']} parts)"
                                                  if g["partitions"] > 1 else ""),
                   "yes" if g["prunable"] else "no", g["frozen_reason"] or "",
                   ", ".join(g["sources"]))
    console.print(gt)
    console.print(f"MACs {rep['macs']:,}  params {rep['params']:,}  bytes {rep['size_bytes']:,}")


def _inspect_artifact(artifact: Path, as_json: bool) -> None:
    from pfcompile.compiler import read_meta

    meta = read_meta(artifact)
    rep = {"artifact": str(artifact), "target": meta["target"]["name"],
           "library": meta.get("library"), "layers": meta.get("layers", [])}
    if as_json:
        typer.echo(json.dumps(rep, indent=1))
        return
    t = Table("node", "path", "reason / kernel", title=f"{artifact} (target {rep['target']})")
    for la in rep["layers"]:
        t.add_row(la.get("node", ""), la.get("path", ""),
                  la.get("reason") or la.get("kernel") or "")
    console.print(t if rep["layers"] else f"{artifact}: float model, no quantized layers")



def register(app: typer.Typer) -> None:
    app.command("inspect")(inspect_cmd)
