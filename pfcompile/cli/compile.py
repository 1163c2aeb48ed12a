"""CLI: ``pfcompile compile``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

__all__ = ["register"]

console = Console(width=120)


def compile_cmd(
    model: Annotated[Path, typer.Argument(help="ONNX model to compile")],
    target: Annotated[str, typer.Option("--target", "-t",
                                        help="target name (see `pfcompile targets`) or a .toml path")] = "host",
    out: Annotated[Path, typer.Option("-o", "--out",
                                      help="output folder (model.so, model.json)")] = Path("out"),
    input_shape: Annotated[list[str] | None, typer.Option(
        "--input-shape", help="static shape for a dynamic input: name:1x3x224x224")] = None,
    float_only: Annotated[bool, typer.Option("--float",
                                             help="keep QDQ models on the float path")] = False,
) -> None:
    """Compile MODEL for TARGET into OUT/model.so + OUT/model.json."""
    from pfcompile.compiler import compile_model
    from pfcompile.model import parse_input_shapes

    art = compile_model(model, target, out, parse_input_shapes(input_shape), integer=not float_only)
    ins = ", ".join(f"{d['name']}:{'x'.join(map(str, d['shape']))}" for d in art.meta["inputs"])
    console.print(f"compiled {model} for [bold]{art.meta['target']['name']}[/] in "
                  f"{art.meta['compile_seconds']:.1f} s -> {art.so_path} (inputs {ins})")


def register(app: typer.Typer) -> None:
    app.command("compile")(compile_cmd)
