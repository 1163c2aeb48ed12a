"""CLI commands ``sparsify``, ``quantize`` and ``evaluate``: parse, call one function, print.

Every check (config, data, model) happens before the output file is written, so
a bad input leaves no output behind.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from pfcompile.errors import ConfigError

__all__ = ["register"]

console = Console()


def _read_json(path: Path, what: str) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"{what} file not found: {path}") from exc
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{what} {path} is not valid JSON: {exc}") from exc


def _load_data(model, path: Path):
    from pfcompile.data import load_npz
    from pfcompile.ir import to_proto
    from pfcompile.model import input_specs

    return load_npz(path, input_specs(to_proto(model)))


def _jsonable(d):
    if isinstance(d, float) and not math.isfinite(d):
        return str(d)
    if isinstance(d, dict):
        return {k: _jsonable(v) for k, v in d.items()}
    if isinstance(d, list):
        return [_jsonable(v) for v in d]
    return d


def sparsify_cmd(
    model: Annotated[Path, typer.Argument(help="input .onnx")],
    output: Annotated[Path, typer.Option("-o", "--output", help="output .onnx")],
    sparsity: Annotated[float | None, typer.Option("--sparsity", help="fraction of weights zeroed, [0, 1)")] = None,
    config: Annotated[Path | None, typer.Option("--config", help="JSON: {sparsity, block, layers: {name: s}}")] = None,
    block: Annotated[str | None, typer.Option("--block", help="1x1 (unstructured) | 1x4 | 4x4")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the sparsity report as JSON")] = False,
) -> None:
    """Magnitude-prune weights (unstructured or in blocks); zeros are stored in the initializers."""
    from pfcompile import ir as pir
    from pfcompile.passes.sparsify import SparsifyConfig, sparsify, sparsity_report

    if (sparsity is None) == (config is None):
        raise ConfigError("give exactly one of --sparsity S or --config FILE")
    if config is not None:
        cfg = SparsifyConfig.from_json(_read_json(config, "sparsify config"))
        if block is not None:
            cfg = SparsifyConfig(cfg.sparsity, block, cfg.layers)
    else:
        cfg = SparsifyConfig(sparsity=sparsity, block=block or "1x1")
    result = sparsify(pir.load(model), cfg)
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
) -> None:
    """Insert QDQ (per-channel int8 weights, calibrated uint8 activations), mixed 2-8 bits."""
    from pfcompile import ir as pir
    from pfcompile.passes.quantize import QuantConfig, quant_report, quantize

    if bits is not None and config is not None:
        raise ConfigError("give --bits or --config, not both")
    d = _read_json(config, "quantize config") if config is not None else {}
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
    m = pir.load(model)
    calib_data = _load_data(m, data) if data is not None else None
    result = quantize(m, qc, calib_data)
    pir.save(result.model, output)
    report = quant_report(result.model)
    if as_json:
        print(json.dumps(report))
        return
    t = Table(title=f"quantized -> {output} (activations: {report['activations']}, "
                    f"{report['act_bits']} bits, calib {report['calib']})")
    for col in ("layer", "op", "bits", "codebook", "weights", "fp32 B", "packed B"):
        t.add_column(col)
    for name, r in report["layers"].items():
        t.add_row(name, r["op"], str(r["bits"]), "yes" if r["codebook"] else "", str(r["numel"]),
                  str(r["fp32_bytes"]), str(r["packed_bytes"]))
    t.add_row("total", "", "", "", "", str(report["fp32_bytes"]), str(report["packed_bytes"]))
    console.print(t)


def evaluate_cmd(
    model: Annotated[Path, typer.Argument(help=".onnx to evaluate, or a compiled artifact "
                                          "folder (its source.onnx; size = the deployed files)")],
    data: Annotated[Path, typer.Option("--data", help="validation .npz (x, optional labels y)")],
    reference: Annotated[Path | None, typer.Option("--reference", help="original .onnx to compare against")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Top-1, agreement and output SNR vs a reference, MACs, params, size."""
    from pfcompile import ir as pir
    from pfcompile.evaluate import evaluate

    m = pir.load(model / "source.onnx" if model.is_dir() else model)
    ref = pir.load(reference) if reference is not None else None
    result = evaluate(model if model.is_dir() else m, _load_data(m, data), ref)
    if as_json:
        print(json.dumps(_jsonable(result)))
        return
    t = Table(title=f"evaluate {model}")
    t.add_column("metric")
    t.add_column("value")
    for k, v in result.items():
        t.add_row(k, "-" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v)))
    console.print(t)


def register(app: typer.Typer) -> None:
    app.command("sparsify")(sparsify_cmd)
    app.command("quantize")(quantize_cmd)
    app.command("evaluate")(evaluate_cmd)
