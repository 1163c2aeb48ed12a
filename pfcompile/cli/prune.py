"""CLI: ``pfcompile prune``: parse, call one function, print."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from pfcompile.errors import ConfigError
from pfcompile.model import parse_input_shapes
from pfcompile.passes.prune_config import CRITERIA, PruneConfig
from pfcompile.passes.report import prune_file

__all__ = ["register"]

console = Console()


def prune_cmd(
    model: Annotated[Path, typer.Argument(help="ONNX model")],
    output: Annotated[Path, typer.Option("-o", "--output", help="pruned ONNX file to write")],
    ratio: Annotated[float | None, typer.Option(
        "--ratio", help="fraction of every prunable group's channels to remove, "
        "0 <= R < 1")] = None,
    config: Annotated[Path | None, typer.Option(
        "--config", help="JSON: {group_id: ratio} or {ratio, ratios, criterion, round}, "
        "or the output of `inspect --json`")] = None,
    criterion: Annotated[str | None, typer.Option(
        "--criterion", help=f"one of {', '.join(CRITERIA)} (default: lasso with --data, as "
        "`pfcompile run` prunes, else l1)")] = None,
    data: Annotated[Path | None, typer.Option(
        "--data", help="calibration .npz (needed by lasso, the default criterion with it)")] = None,
    round_to: Annotated[int | None, typer.Option(
        "--round", help="keep channel counts multiples of M")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the summary as JSON")] = False,
    input_shape: Annotated[list[str] | None, typer.Option(
        "--input-shape", help="static shape for a dynamic input: name:1x3x224x224 "
        "(a dynamic batch alone defaults to 1)")] = None,
) -> None:
    """Remove channels (structured pruning); the output is a smaller, valid ONNX graph."""
    if config is None and ratio is None:
        raise ConfigError("give --ratio R or --config ratios.json")
    cfg = PruneConfig.load(config) if config is not None else PruneConfig()
    fields = cfg.to_json()
    if ratio is not None:
        fields["ratio"] = ratio
    if criterion is not None:
        fields["criterion"] = criterion
    elif data is not None and not _config_sets_criterion(config):
        fields["criterion"] = "lasso"   # calibration data given: prune as `pfcompile run` does
    if round_to is not None:
        fields["round"] = round_to
    cfg = PruneConfig.from_json(fields, where="command line")
    summary = prune_file(model, output, cfg, data, parse_input_shapes(input_shape))
    if as_json:
        typer.echo(json.dumps(summary, indent=1))
        return
    console.print(f"wrote {summary['output']}: MACs {summary['macs_before']:,} -> "
                  f"{summary['macs_after']:,}, params {summary['params_before']:,} -> "
                  f"{summary['params_after']:,}")
    for gid, n in summary["removed_channels"].items():
        if n:
            console.print(f"  {gid}: removed {n} channels")


def _config_sets_criterion(config: Path | None) -> bool:
    """Whether the --config file names a criterion itself (then it is kept)."""
    if config is None:
        return False
    try:
        d = json.loads(config.read_text())
    except (OSError, ValueError):
        return False
    if isinstance(d, dict) and "groups" in d and isinstance(d.get("config"), dict):
        return False        # a whole `inspect --json` report: its skeleton says l1, not the user
    return isinstance(d, dict) and "criterion" in d


def register(app: typer.Typer) -> None:
    app.command("prune")(prune_cmd)
