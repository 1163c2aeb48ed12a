"""CLI: ``pfcompile targets`` and ``pfcompile compile``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

__all__ = ["register"]

console = Console(width=120)


def targets_cmd() -> None:
    """List the targets in targets/*.toml."""
    from pfcompile.targets import list_targets

    table = Table(title="pfcompile targets")
    for col in ("name", "TVM target", "fp32 lanes", "int8", "cross compiler", "RPC key",
                "measure n/rep/min_ms", "emulated"):
        table.add_column(col, overflow="fold")
    notes = []
    for t in list_targets():
        tvm_s = " ".join(f"{k}={','.join(v) if isinstance(v, list) else v}"
                         for k, v in t.tvm.items() if k != "kind")
        m = t.measure
        missing = t.missing_cpu_features()
        notes.append(f"[bold]{t.name}[/]: {t.description}"
                     + (f" [red](not on this CPU: lacks {', '.join(missing)})[/]" if missing else ""))
        table.add_row(t.name, tvm_s, str(t.hardware.get("fp32_lanes", "-")),
                      str(t.hardware.get("int8_dot", "-")), t.cross_compiler or "(host)",
                      t.rpc_key, f"{m.number}/{m.repeat}/{m.min_repeat_ms}",
                      "yes" if t.emulated else "no")
    console.print(table)
    for line in notes:
        console.print(line)


def compile_cmd(
    model: Annotated[Path, typer.Argument(help="ONNX model to compile")],
    target: Annotated[str, typer.Option("--target", "-t",
                                        help="target name (targets/NAME.toml) or a .toml path")] = "host",
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
    app.command("targets")(targets_cmd)
    app.command("compile")(compile_cmd)
