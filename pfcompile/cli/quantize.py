"""CLI: ``pfcompile quantize``: parse, call one function, print.

Every check (config, data, model) happens before the output file is written, so
a bad input leaves no output behind.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from pfcompile.cli._common import import_ir, load_data, read_json
from pfcompile.errors import ConfigError

__all__ = ["register"]

console = Console()


def quantize_cmd(
    model: Annotated[Path, typer.Argument(help="input .onnx (float)")],
    output: Annotated[Path, typer.Option("-o", "--output", help="output .onnx (QDQ)")],
    data: Annotated[Path | None, typer.Option("--data", help="calibration .npz (x, or one array per input)")] = None,
    bits: Annotated[int | None, typer.Option("--bits", help="weight bits for every layer, 2..8 (default 8)")] = None,
    config: Annotated[Path | None, typer.Option("--config", help="JSON: {bits, act_bits, layers: {name: bits}, ...}")] = None,
    act_bits: Annotated[int | None, typer.Option("--act-bits", help="activation bits 2..8 (default 8)")] = None,
    weights_only: Annotated[bool, typer.Option("--weights-only", help="leave activations in float")] = False,
    calib: Annotated[str | None, typer.Option("--calib", help="minmax | percentile | mse")] = None,
    codebook: Annotated[bool, typer.Option("--codebook", help="k-means codebook weights (2^bits centroids)")] = False,
    no_bias_correction: Annotated[bool, typer.Option("--no-bias-correction")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the quantization report as JSON")] = False,
    input_shape: Annotated[list[str] | None, typer.Option(
        "--input-shape", help="static shape for a dynamic input: name:1x3x224x224 "
        "(a dynamic batch alone defaults to 1)")] = None,
) -> None:
    """Insert QDQ (per-channel int8 weights, calibrated uint8 activations), mixed 2-8 bits."""
    from pfcompile import ir as pir
    from pfcompile.passes.quantize import QuantConfig, quant_report, quantize

    if bits is not None and config is not None:
        raise ConfigError("give --bits or --config, not both")
    d = read_json(config, "quantize config") if config is not None else {}
    cfg = QuantConfig.from_json(d).to_json()
    if bits is not None:
        cfg["bits"] = bits
    if act_bits is not None:
        cfg["act_bits"] = act_bits
    if weights_only:
        cfg["act_bits"] = None
    if calib is not None:
        cfg["calib"] = calib
    if codebook:
        cfg["codebook"] = True
    if no_bias_correction:
        cfg["bias_correction"] = False
    qc = QuantConfig.from_json(cfg)
    m = import_ir(model, input_shape)
    calib_data = load_data(m, data) if data is not None else None
    result = quantize(m, qc, calib_data)
    pir.save(result.model, output)
    report = quant_report(result.model)
    if as_json:
        print(json.dumps(report))
        return
    t = Table(title=f"quantized -> {output} (activations: {report['activations']}, "
                    f"{report['act_bits']} bits, calib {report['calib']})")
    for col in ("layer", "op", "bits", "codebook", "weights", "fp32 B", "packed B", "bias B"):
        t.add_column(col)
    for name, r in report["layers"].items():
        t.add_row(name, r["op"], str(r["bits"]), "yes" if r["codebook"] else "", str(r["numel"]),
                  str(r["fp32_bytes"]), str(r["packed_bytes"]), str(r.get("bias_bytes", "")))
    t.add_row("total", "", "", "", "", str(report["fp32_bytes"]), str(report["packed_bytes"]),
              str(report.get("bias_bytes", "")))
    console.print(t)
    if "stored_bytes" in report:
        console.print(f"stored: {report['stored_bytes']} bytes (weights and scales "
                      f"{report['packed_bytes']} + biases {report['bias_bytes']})")
    for name, why in report.get("float_layers", {}).items():
        console.print(f"left in float: {name} ({why})")


def register(app: typer.Typer) -> None:
    app.command("quantize")(quantize_cmd)
