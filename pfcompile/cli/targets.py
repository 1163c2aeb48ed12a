"""CLI: ``pfcompile targets``."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

__all__ = ["register"]

console = Console(width=120)


def targets_cmd() -> None:
    """List the targets shipped with pfcompile (pfcompile/targets/*.toml)."""
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



def register(app: typer.Typer) -> None:
    app.command("targets")(targets_cmd)
