"""``pfcompile run``: parse, call :func:`pfcompile.search.api.run`, print."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.live import Live
from rich.table import Table

__all__ = ["register"]


class _Progress:
    """A live table: trials done, best so far, device status."""

    def __init__(self, budget: int, console: Console) -> None:
        self.budget, self.console = budget, console
        self.done = self.failed = 0
        self.best: dict | None = None
        self.base: dict | None = None
        self.status = "starting"
        self.live = Live(self._table(), console=console, refresh_per_second=4, transient=False)

    def _table(self) -> Table:
        t = Table(title="pfcompile run", show_header=False)
        t.add_row("trials", f"{self.done}/{self.budget} ({self.failed} failed)")
        if self.base:
            t.add_row("baseline", f"{self.base['latency_ms']:.3f} ms, acc {100 * self.base['score']:.2f}%")
        if self.best:
            t.add_row("best so far", f"{self.best['latency_ms']:.3f} ms ({self.best['speedup']:.2f}x), "
                                     f"drop {self.best['acc_drop']:.2f} pts")
        t.add_row("device", self.status)
        return t

    def __call__(self, kind: str, info: dict) -> None:
        if kind == "baseline":
            self.status = "measuring the unmodified model"
        elif kind == "baseline_done":
            self.base = info
            self.status = "searching"
        elif kind == "kernels":
            self.status = f"timing {info['n']} kernels"
        elif kind == "resumed":
            self.done = info["trials"]
        elif kind == "trial":
            self.done += 1
            if info["status"] != "ok":
                self.failed += 1
                self.status = f"trial {info['id']} failed: {str(info.get('error'))[:80]}"
            else:
                self.status = f"trial {info['id']}: {info['latency_ms']:.3f} ms"
                if info["feasible"] and (self.best is None or info["latency_ms"] < self.best["latency_ms"]):
                    self.best = info
        self.live.update(self._table())


def register(app: typer.Typer) -> None:
    @app.command("run")
    def run_cmd(
        model: Path | None = typer.Argument(None, help="ONNX model; the built-in demo when omitted"),
        target: str = typer.Option("host", "--target", "-t", help="target name or .toml path"),
        data: Path | None = typer.Option(None, "--data", help="validation .npz (x, y)"),
        calib: Path | None = typer.Option(None, "--calib", help="calibration .npz"),
        speedup: float | None = typer.Option(None, "--speedup", help="most accurate at >= X speedup"),
        latency_ms: float | None = typer.Option(None, "--latency-ms", help="most accurate within L ms"),
        size_mb: float | None = typer.Option(None, "--size-mb", help="most accurate within S MB"),
        max_acc_drop: float = typer.Option(0.5, "--max-acc-drop", help="accuracy points allowed to drop"),
        budget: int = typer.Option(12, "--budget", help="candidate measurements on the device"),
        strategy: str = typer.Option("hw", "--strategy", help="hw | flops | uniform | random | tpe"),
        rpc: str | None = typer.Option(None, "--rpc", help="tracker HOST:PORT"),
        key: str | None = typer.Option(None, "--key", help="device key at the tracker"),
        device: str | None = typer.Option(None, "--device", help="rpc_server HOST:PORT"),
        out: Path = typer.Option(Path("dist"), "-o", "--out", help="output folder DIST"),
        resume: Path | None = typer.Option(None, "--resume", help="RUN_DIR of a killed run"),
        seed: int = typer.Option(0, "--seed"),
        cache_dir: Path | None = typer.Option(None, "--cache-dir",
                                                 help="latency models per target (~/.cache/pfcompile)"),
        null_device: bool = typer.Option(False, "--null-device", help="measure nothing (testing)"),
        threads: int | None = typer.Option(None, "--threads",
                                              help="TVM threads of the local host device"),
    ) -> None:
        """Search compressed variants of MODEL for the fastest (or most accurate) one,
        measured on the target device."""
        from pfcompile.search.api import run
        from pfcompile.search.loop import SearchSettings

        console = Console()
        settings = SearchSettings(strategy=strategy, budget=budget, max_acc_drop=max_acc_drop,
                                  speedup=speedup, latency_ms=latency_ms, size_mb=size_mb, seed=seed)
        prog = _Progress(budget, console)
        with prog.live:
            rep = run(model, target, data=data, calib=calib, settings=settings, device=device,
                      rpc=rpc, key=key, out_dir=out, resume=resume, cache_dir=cache_dir,
                      null_device=null_device, threads=threads, on_event=prog)
        b, best = rep["baseline"], rep["best"]
        tag = " [EMULATED: functional only]" if rep["emulated"] else ""
        console.print(f"baseline {b['latency_ms']:.3f} ms{tag}")
        if best:
            console.print(f"best {best['latency_ms']:.3f} ms ({best['speedup']:.2f}x), accuracy drop "
                          f"{best['acc_drop']:.2f} points -> {out}/")
        else:
            console.print(f"no candidate met the goal; {out}/model.onnx is the original model")
        cm = rep["cost_model"]
        console.print(f"cost model: within 10% {cm['within_10pct']}, Kendall tau {cm['kendall_tau']} "
                      f"(n={cm['n_heldout']})")
