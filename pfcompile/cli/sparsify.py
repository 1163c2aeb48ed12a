"""CLI: ``pfcompile sparsify``: parse, call one function, print.

Every check (config, model) happens before the output file is written, so a bad input
leaves no output behind.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from pfcompile.cli._common import import_ir, read_json
from pfcompile.errors import ConfigError

__all__ = ["register"]

console = Console()


def sparsify_cmd(
    model: Annotated[Path, typer.Argument(help="input .onnx")],
    output: Annotated[Path, typer.Option("-o", "--output", help="output .onnx")],
    sparsity: Annotated[float | None, typer.Option("--sparsity", help="fraction of weights zeroed, [0, 1)")] = None,
    config: Annotated[Path | None, typer.Option("--config", help="JSON: {sparsity, block, layers: {name: s}}")] = None,
    block: Annotated[str | None, typer.Option("--block", help="1x1 (unstructured) | 1x4 | 4x4")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the sparsity report as JSON")] = False,
    input_shape: Annotated[list[str] | None, typer.Option(
        "--input-shape", help="static shape for a dynamic input: name:1x3x224x224 "
        "(a dynamic batch alone defaults to 1)")] = None,
) -> None:
    """Magnitude-prune weights (unstructured or in blocks); zeros are stored in the initializers."""
    from pfcompile import ir as pir
    from pfcompile.passes.sparsify import SparsifyConfig, sparsify, sparsity_report

    if (sparsity is None) == (config is None):
        raise ConfigError("give exactly one of --sparsity S or --config FILE")
    if config is not None:
        cfg = SparsifyConfig.from_json(read_json(config, "sparsify config"))
        if block is not None:
            cfg = SparsifyConfig(cfg.sparsity, block, cfg.layers)
    else:
        cfg = SparsifyConfig(sparsity=sparsity, block=block or "1x1")
    result = sparsify(import_ir(model, input_shape), cfg)
    pir.save(result.model, output)
    report = sparsity_report(result.model)
    if as_json:
        print(json.dumps(report))
        return
    t = Table(title=f"sparsity ({report['block']} blocks) -> {output}")
    for col in ("layer", "shape", "nonzeros", "sparsity", "dense B", "CSR B", "BSR B"):
        t.add_column(col)
    for r in report["layers"] + [dict(report["total"], layer="total", shape=[])]:
        t.add_row(r["layer"], "x".join(map(str, r["shape"])), str(r["nonzeros"]), f"{r['sparsity']:.3f}",
                  str(r["dense_bytes"]), str(r["csr_bytes"]), str(r["bsr_bytes"]))
    console.print(t)



def register(app: typer.Typer) -> None:
    app.command("sparsify")(sparsify_cmd)
