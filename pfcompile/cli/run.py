"""``pfcompile run``: parse, call :func:`pfcompile.search.api.run`, print."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Annotated

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
        self.devices: str | None = None  # a device pool's slots (several servers under --key)
        self.refused = {"too_wide": 0, "over_budget": 0}
        self.refusal: str | None = None  # the latest "interval too wide" reason, shown whole
        self.confirm: str | None = None
        self.warnings: list[str] = []
        self._lock = threading.Lock()    # a pool reports from its worker threads
        self.live = Live(self._table(), console=console, refresh_per_second=4, transient=False)

    def _table(self) -> Table:
        t = Table(title="pfcompile run", show_header=False)
        t.add_row("trials", f"{self.done}/{self.budget} ({self.failed} failed)")
        if self.base:
            t.add_row("baseline", f"{self.base['latency_ms']:.3f} ms, acc {100 * self.base['score']:.2f}%")
        if self.best:
            t.add_row("best so far", f"{self.best['latency_ms']:.3f} ms ({self.best['speedup']:.2f}x), "
                                     f"drop {self.best['acc_drop']:.2f} pts")
        for w in self.warnings:
            t.add_row("WARNING", w)
        if any(self.refused.values()):
            t.add_row("refused", f"{self.refused['over_budget']} over budget (upper bound), "
                                 f"{self.refused['too_wide']} interval too wide")
        if self.refusal:
            t.add_row("why", self.refusal)
        if self.confirm:
            t.add_row("confirmation", self.confirm)
        t.add_row("device", self.status)
        if self.devices:
            t.add_row("devices", self.devices)
        return t

    def __call__(self, kind: str, info: dict) -> None:
        with self._lock:
            self._on_event(kind, info)

    def _on_event(self, kind: str, info: dict) -> None:
        if kind == "devices":
            self.devices = info["text"]
        elif kind == "warning":
            self.warnings.append(info["text"])
        elif kind == "measuring":
            self.status = f"measuring {info['n']} candidates at once"
        elif kind == "baseline":
            self.status = "measuring the unmodified model"
        elif kind == "baseline_done":
            self.base = info
            self.status = "searching"
        elif kind == "final":
            self.status = "re-measuring baseline and best, round-robin"
        elif kind == "finetune":
            self.status = "fine-tuning the finalist (CE + distillation)"
        elif kind == "confirm":
            self.status = (f"confirming {'the fine-tuned ' if info.get('finetuned') else ''}"
                           f"trial {info['trial']} on {info['n']} unseen images")
        elif kind == "confirmed":
            tag = " (fine-tuned)" if info.get("finetuned") else ""
            self.confirm = (f"trial {info.get('trial')}{tag}: drop {info['acc_drop']:.2f} "
                            f"[{info['acc_drop_lower']:.2f}, {info['acc_drop_upper']:.2f}] on "
                            f"{info['acc_n']} images: "
                            + ("confirmed" if info["confirmed"] else str(info.get("acc_refused"))))
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
                verdict = info.get("acc_verdict")
                if verdict in self.refused:
                    self.refused[verdict] += 1
                    self.status += f", refused: {info['acc_refused']}"[:160]
                    if verdict == "too_wide":
                        self.refusal = info["acc_refused"]
                if info["feasible"] and (self.best is None or info["latency_ms"] < self.best["latency_ms"]):
                    self.best = info
        self.live.update(self._table())


def register(app: typer.Typer) -> None:
    @app.command("run")
    def run_cmd(
        model: Annotated[Path | None, typer.Argument(
            help="ONNX model; the built-in demo when omitted")] = None,
        target: Annotated[str, typer.Option("--target", "-t", help="target name or .toml")] = "host",
        data: Annotated[Path | None, typer.Option(help="validation .npz (x, y)")] = None,
        calib: Annotated[Path | None, typer.Option(
            help="calibration .npz for LASSO pruning (default: the first samples of --data; "
                 "L1 pruning when neither is given)")] = None,
        calib_samples: Annotated[int, typer.Option(
            help="calibration samples for LASSO pruning")] = 32,
        speedup: Annotated[float | None, typer.Option(help="most accurate at >= X speedup")] = None,
        latency_ms: Annotated[float | None, typer.Option(help="most accurate within L ms")] = None,
        size_mb: Annotated[float | None, typer.Option(help="most accurate within S MB")] = None,
        max_acc_drop: Annotated[float, typer.Option(help="accuracy points allowed to drop")] = 0.5,
        budget: Annotated[int, typer.Option(help="candidate measurements on the device")] = 12,
        strategy: Annotated[str, typer.Option(help="hw | flops | uniform | random | tpe | rl | bo")] = "hw",
        rpc: Annotated[str | None, typer.Option(help="tracker HOST:PORT")] = None,
        key: Annotated[str | None, typer.Option(help="device key at the tracker")] = None,
        device: Annotated[str | None, typer.Option(help="rpc_server HOST:PORT")] = None,
        out: Annotated[Path, typer.Option("-o", "--out", help="output folder DIST")] = Path("dist"),
        resume: Annotated[Path | None, typer.Option(help="RUN_DIR of a killed run")] = None,
        seed: int = 0,
        cache_dir: Annotated[Path | None, typer.Option(
            help="latency models per target (default $PFCOMPILE_CACHE or ~/.cache/pfcompile)")] = None,
        null_device: Annotated[bool, typer.Option(help="measure nothing (testing)")] = False,
        threads: Annotated[int | None, typer.Option(
            help="TVM threads of every run on the device (default: the target's num-cores, "
                 "recorded in model.json as its deployment threads); onnxruntime gets the "
                 "same")] = None,
        finetune: Annotated[bool | None, typer.Option(
            "--finetune/--no-finetune", help="fine-tune the finalist (CE + distillation from "
            "MODEL) and re-confirm it before the final compile (default: on when --train is "
            "given)")] = None,
        train: Annotated[Path | None, typer.Option(
            "--train", help="training data for fine-tuning the finalist (turns --finetune on; "
            "--finetune alone uses --calib, else the search part of --data)")] = None,
        confidence: Annotated[float, typer.Option(
            help="a candidate qualifies when the upper bound of its accuracy drop at this "
                 "confidence (paired, per image vs the original) is within --max-acc-drop; "
                 "0: the plain estimate")] = 0.9,
        confirm_fraction: Annotated[float, typer.Option(
            help="fraction of --data split off (seeded, stratified) to confirm the finalists "
                 "on images the search never saw; 0: no confirmation split")] = 0.3,
        finalists: Annotated[int, typer.Option(
            help="top candidates re-scored on the confirmation part")] = 3,
        finetune_epochs: Annotated[int, typer.Option(help="epochs of --finetune")] = 10,
        bits: Annotated[str | None, typer.Option(
            "--bits", help="also search a bit width per layer: 'auto' (the target's widths; "
            "host: 32,8, and 4 with --size-mb) or a list such as 8,32 (32 = float, always "
            "included)")] = None,
        sparsity: Annotated[str | None, typer.Option(
            "--sparsity", help="also search a weight sparsity per layer: 'auto' (the sparsify "
            "pass's values) or a list such as 0,0.5,0.75 (0 always included)")] = None,
        accel_latency: Annotated[str, typer.Option(
            help="accelerator targets: optimize 'total' (simulated accelerator + measured host "
                 "ops) or 'accel' (simulated accelerator only)")] = "total",
        input_shape: Annotated[list[str] | None, typer.Option(
            "--input-shape", help="static shape for a dynamic input: name:1x3x224x224 "
            "(a dynamic batch alone defaults to 1)")] = None,
    ) -> None:
        """Search compressed variants of MODEL for the fastest (or most accurate) one,
        measured on the target device."""
        from pfcompile.model import parse_input_shapes
        from pfcompile.search.api import run
        from pfcompile.search.loop import SearchSettings

        console = Console()
        settings = SearchSettings(strategy=strategy, budget=budget, max_acc_drop=max_acc_drop,
                                  speedup=speedup, latency_ms=latency_ms, size_mb=size_mb, seed=seed,
                                  calib_samples=calib_samples, bits=bits, sparsity=sparsity,
                                  confidence=confidence, confirm_fraction=confirm_fraction,
                                  finalists=finalists)
        prog = _Progress(budget, console)
        with prog.live:
            rep = run(model, target, data=data, calib=calib, settings=settings, device=device,
                      rpc=rpc, key=key, out_dir=out, resume=resume, cache_dir=cache_dir,
                      null_device=null_device, threads=threads, finetune=finetune, train=train,
                      finetune_epochs=finetune_epochs, on_event=prog, accel_latency=accel_latency,
                      input_shapes=parse_input_shapes(input_shape))
        b, best = rep["baseline"], rep["best"]
        tag = " [EMULATED: functional only]" if rep["emulated"] else ""
        if rep.get("simulated"):
            tag = " [SIMULATED: accelerator cycle model + host ops]"
        console.print(f"baseline {b['latency_ms']:.3f} ms{tag}, {b.get('size_mb') or 0:.3f} MB")
        if best:
            console.print(f"best {best['latency_ms']:.3f} ms ({best['speedup']:.2f}x), accuracy drop "
                          f"{best['acc_drop']:.2f} points [{best['acc_drop_lower']:.2f}, "
                          f"{best['acc_drop_upper']:.2f}] on the search part -> {out}/")
            cf = best.get("confirmation")
            if cf:
                console.print(f"confirmed on {cf['acc_n']} images the search never saw: drop "
                              f"{cf['acc_drop']:.2f} [{cf['acc_drop_lower']:.2f}, "
                              f"{cf['acc_drop_upper']:.2f}] points")
        else:
            console.print(f"nothing deployed: {rep.get('why_no_candidate')}; {out}/model.onnx is "
                          "the original model")
        if rep.get("deployed"):
            d = rep["deployed"]
            console.print(f"deployed {out}/: {d['size_bytes'] / 1e6:.3f} MB (code "
                          f"{d['code_bytes'] / 1e6:.3f}, weights {d['weight_bytes'] / 1e6:.3f})")
        ft = rep.get("finetune")
        if ft:
            console.print(f"fine-tuned the best candidate: top-1 {ft['before_top1']} -> "
                          f"{ft['after_top1']} ({ft['epochs']} epochs on {ft['train_data']}"
                          f"{'' if ft['deployed'] else '; NOT deployed: ' + str(ft.get('error'))})")
        rm = rep.get("remeasured")
        if rm and rm.get("speedup"):
            console.print(f"re-measured round-robin ({rm['repeats']}x, medians): baseline "
                          f"{rm['baseline_ms']:.3f} ms, best {rm['best_ms']:.3f} ms, "
                          f"{rm['speedup']:.2f}x{tag}")
        ort = rep.get("onnxruntime") or {}
        if ort.get("ms") is not None and ort.get("speedup"):
            console.print(f"original in onnxruntime ({ort['threads']} threads, own process): "
                          f"{ort['ms']:.3f} ms; deployed model {ort['speedup']:.2f}x vs onnxruntime"
                          + (" (SLOWER than onnxruntime)" if ort["speedup"] < 1 else "") + tag)
        cm = rep["cost_model"]
        console.print(f"cost model: within 10% {cm['within_10pct']}, Kendall tau {cm['kendall_tau']} "
                      f"(n={cm['n_heldout']})")
