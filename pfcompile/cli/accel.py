"""CLI: ``pfcompile accel compile|serve|measure`` for the FPGA-style targets (thin: parse,
call one function, print). Accelerator latencies printed here are simulated."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

__all__ = ["register"]

console = Console(width=140)
accel_app = typer.Typer(help="FPGA-style accelerator targets (simulated): compile, serve, measure.",
                        no_args_is_help=True)


@accel_app.command("compile")
def compile_cmd(
    model: Path = typer.Argument(..., help="QDQ ONNX model"),
    target: str = typer.Option("fpga-vta", "--target", "-t", help="fpga-vta | fpga-bitfusion | a .toml"),
    out: Path = typer.Option(Path("out/accel_program.npz"), "-o", "--out", help="program file"),
    records: Path | None = typer.Option(None, "--records",
                                           help="tiling records folder (default: shipped records + the cache's records/)"),
) -> None:
    """Partition, tile and emit MODEL for TARGET; print the per-layer plan."""
    from pfcompile.accel import compile_accel, load_accel_config
    from pfcompile.accel.tiling import TilingDB

    cfg = load_accel_config(target)
    prog = compile_accel(model, cfg, records=TilingDB.for_target(cfg, records))
    prog.save(out)
    table = Table(title=f"{model} on {cfg.name} (cycles simulated at {cfg.clock_mhz:g} MHz)")
    for col in ("layer", "w/a bits", "tiling (oc,ic blk x rows, order)", "insns", "cycles"):
        table.add_column(col, overflow="fold")
    for c in prog.layers:
        t = c.tiling
        table.add_row(c.layer.name, f"{c.layer.wbits}/{c.layer.abits}",
                      f"{t.oc_blocks},{t.ic_blocks} x {t.rows}, {t.order}", str(len(c.insns)),
                      str(c.timing.cycles))
    console.print(table)
    for name, why in prog.fallbacks.items():
        console.print(f"host: {name}: {why}")
    console.print(f"accelerator: {prog.accel_cycles} cycles = {prog.accel_ms:.3f} ms "
                  f"(simulated); program -> {out}")


@accel_app.command("serve")
def serve_cmd(
    target: str = typer.Option("fpga-vta", "--target", "-t"),
    host: str = typer.Option("127.0.0.1", "--host"),
    port: int = typer.Option(9350, "--port"),
    port_end: int = typer.Option(9399, "--port-end"),
    tracker: str | None = typer.Option(None, "--tracker", help="HOST:PORT of an RPC tracker"),
) -> None:
    """Serve the simulated accelerator over TVM RPC until interrupted."""
    from pfcompile.accel.serve import serve_accel

    console.print(f"serving simulated {target} on {host}:{port}..{port_end} (Ctrl-C to stop)")
    serve_accel(target, host, port, port_end, tracker=tracker, block=True)


@accel_app.command("measure")
def measure_cmd(
    model: Path = typer.Argument(..., help="QDQ ONNX model or a program .npz"),
    data: Path = typer.Option(..., "--data", help=".npz with the model input (x or by name)"),
    target: str = typer.Option("fpga-vta", "--target", "-t"),
    host: str = typer.Option("127.0.0.1", "--host"),
    port: int = typer.Option(9350, "--port"),
    tracker: str | None = typer.Option(None, "--tracker"),
    repeat: int = typer.Option(3, "--repeat"),
    batch: int = typer.Option(1, "--batch", help="images per run"),
) -> None:
    """Run on the accelerator RPC device: simulated accelerator ms + measured host-op ms."""
    import numpy as np

    from pfcompile.accel.serve import measure_accel
    from pfcompile.errors import DataError

    with np.load(data) as z:
        arrays = {k: z[k] for k in z.files if k != "y"}
    if not arrays:
        raise DataError(f"{data} holds no input arrays")
    if list(arrays) == ["x"]:                 # a single-input model's data stored as x
        if str(model).endswith(".npz"):
            from pfcompile.accel import load_program

            names = load_program(model).graph_inputs
        else:
            from pfcompile.model import load_onnx

            m = load_onnx(model)
            inits = {t.name for t in m.graph.initializer}
            names = [i.name for i in m.graph.input if i.name not in inits]
        if len(names) != 1:
            raise DataError(f"{data} stores one array 'x' but the model has inputs {names}")
        arrays = {names[0]: arrays["x"]}
    feed = {k: v[:batch] for k, v in arrays.items()}
    m = measure_accel(str(model), target, feed, host=host, port=port, tracker=tracker,
                      repeat=repeat)
    console.print(f"{m.target}: accelerator {m.accel_cycles} cycles = {m.accel_ms_simulated:.3f} ms "
                  f"(SIMULATED); host ops {m.host_ms_median:.3f} ms per image (measured, median "
                  f"of {len(m.host_ms_measured)})")


def register(app: typer.Typer) -> None:
    app.add_typer(accel_app, name="accel")
