"""The ``pfcompile`` command line: a thin typer layer. Each command parses its
arguments, calls one library function and prints; no logic lives here.

Command groups live beside the code they drive and register themselves in
:func:`_register`.
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


_COMMAND_MODULES = (
    "pfcompile.compile_cli",
    "pfcompile.device_cli",
    "pfcompile.passes.cli_prune",
    "pfcompile.passes.cli_quant",
    "pfcompile.finetune.cli",
    "pfcompile.accel.cli",
    "pfcompile.quantexec.cli",
    "pfcompile.codegen.cli",
    "pfcompile.search.cli",
)


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
