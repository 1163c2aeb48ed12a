"""The ``pfcompile`` command line: a thin typer layer. Each command parses its
arguments, calls one library function and prints; no logic lives here.

Command groups live beside the code they drive and register themselves in
:func:`_register`.
"""

from __future__ import annotations

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


def _register() -> None:
    # one line per command module; each defines register(app)
    from pfcompile.search.cli import register as _search; _search(app)  # noqa: E702


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
