"""The ``pfcompile`` command line: a thin typer layer. Each command parses its
arguments, calls one library function and prints; no logic lives here.

One module per command (or command group) in this package, each with a
``register(app)``; :func:`_register` calls them in the order ``--help`` lists them.
"""

from __future__ import annotations

import importlib
import sys

import typer
from rich.console import Console

from pfcompile.errors import PfcompileError

__all__ = ["app", "main"]

app = typer.Typer(
    name="pfcompile",
    help="Compress an ONNX model and compile it for a device, measured on the device.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err_console = Console(stderr=True)


_COMMAND_MODULES = tuple(f"pfcompile.cli.{m}" for m in (
    "targets", "compile", "device", "measure", "inspect", "prune", "sparsify", "quantize",
    "evaluate", "finetune", "accel", "quant_report", "tune", "run",
))


def _register() -> None:
    # each command module defines register(app)
    for name in _COMMAND_MODULES:
        importlib.import_module(name).register(app)


_register()


def main() -> None:
    """Console-script entry point: PfcompileError -> one clear line, exit 2."""
    try:
        app()
    except PfcompileError as exc:
        err_console.print(f"[bold red]error:[/] {exc}")
        sys.exit(2)


if __name__ == "__main__":
    main()
