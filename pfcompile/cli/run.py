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
            self.status = f"fine-tuning trial {info['trial']}, {info['of']} (CE + distillation)"
        elif kind == "confirm":
            self.status = (f"confirming {'the fine-tuned ' if info.get('finetuned') else ''}"
                           f"trial {info['trial']} on {info['n']} unseen images")
        elif kind == "confirmed":
            tag = " (fine-tuned)" if info.get("finetuned") else ""
            self.confirm = (f"trial {info.get('trial')}{tag}: drop {_drop(info)} on "
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


# the help of each `run` flag, by parameter name: one table, so that the signature below
# reads as the list of flags it is
_HELP = {
    "model": "ONNX model; the built-in demo when omitted",
    "target": "target name or .toml",
    "data": "validation .npz (x, y)",
    "calib": "calibration .npz for LASSO pruning (default: the first samples of --data; "
             "L1 pruning when neither is given)",
    "calib_samples": "calibration samples for LASSO pruning",
    "speedup": "most accurate at >= X speedup",
    "latency_ms": "most accurate within L ms",
    "size_mb": "most accurate within S MB",
    "max_acc_drop": "accuracy points allowed to drop",
    "budget": "candidate measurements on the device",
    "strategy": "hw | flops | uniform | random | tpe | rl | bo",
    "rpc": "tracker HOST:PORT",
    "key": "device key at the tracker",
    "device": "rpc_server HOST:PORT",
    "out": "output folder DIST",
    "resume": "RUN_DIR of a killed run",
    "cache_dir": "latency models per target (default $PFCOMPILE_CACHE or ~/.cache/pfcompile)",
    "null_device": "measure nothing (testing)",
    "threads": "TVM threads of every run on the device (default: the target's num-cores, "
               "recorded in model.json as its deployment threads); onnxruntime gets the same",
    "finetune": "fine-tune the finalist (CE + distillation from MODEL) and re-confirm it "
                "before the final compile (default: on when --train is given)",
    "train": "training data for fine-tuning the finalist (turns --finetune on; --finetune "
             "alone uses --calib, else the search part of --data)",
    "confidence": "a candidate qualifies when the upper bound of its accuracy drop at this "
                  "confidence (paired, per image vs the original) is within --max-acc-drop; "
                  "0: the plain estimate",
    "confirm_fraction": "fraction of --data split off (seeded, stratified) to confirm the "
                        "finalists on images the search never saw; 0: no confirmation split",
    "finalists": "top candidates re-scored on the confirmation part",
    "finetune_epochs": "epochs of --finetune",
    "finetune_drop": "with --finetune: steer the search towards candidates whose accuracy drop "
                     "before fine-tuning is within this many points, and fine-tune the best of "
                     "them that beat the best qualifying candidate (each judged and confirmed "
                     "again after fine-tuning)",
    "finetune_candidates": "with --finetune: such candidates fine-tuned at most (0: only the "
                           "finalist, as judged before fine-tuning)",
    "bits": "also search a bit width per layer: 'auto' (the target's widths; host: 32,8, and "
            "4 with --size-mb) or a list such as 8,32 (32 = float, always included)",
    "sparsity": "also search a weight sparsity per layer: 'auto' (the sparsify pass's "
                "values) or a list such as 0,0.5,0.75 (0 always included)",
    "accel_latency": "accelerator targets: optimize 'total' (simulated accelerator + "
                     "measured host ops) or 'accel' (simulated accelerator only)",
    "input_shape": "static shape for a dynamic input: name:1x3x224x224 (a dynamic batch "
                   "alone defaults to 1)",
}


def _opt(name: str, *decls: str):
    """``typer.Option(*decls)`` with ``name``'s help from :data:`_HELP`."""
    return typer.Option(*decls, help=_HELP[name])


def register(app: typer.Typer) -> None:
    @app.command("run")
    def run_cmd(
        model: Annotated[Path | None, typer.Argument(help=_HELP["model"])] = None,
        target: Annotated[str, _opt("target", "--target", "-t")] = "host",
        data: Annotated[Path | None, _opt("data")] = None,
        calib: Annotated[Path | None, _opt("calib")] = None,
        calib_samples: Annotated[int, _opt("calib_samples")] = 32,
        speedup: Annotated[float | None, _opt("speedup")] = None,
        latency_ms: Annotated[float | None, _opt("latency_ms")] = None,
        size_mb: Annotated[float | None, _opt("size_mb")] = None,
        max_acc_drop: Annotated[float, _opt("max_acc_drop")] = 0.5,
        budget: Annotated[int, _opt("budget")] = 12,
        strategy: Annotated[str, _opt("strategy")] = "hw",
        rpc: Annotated[str | None, _opt("rpc")] = None,
        key: Annotated[str | None, _opt("key")] = None,
        device: Annotated[str | None, _opt("device")] = None,
        out: Annotated[Path, _opt("out", "-o", "--out")] = Path("dist"),
        resume: Annotated[Path | None, _opt("resume")] = None,
        seed: int = 0,
        cache_dir: Annotated[Path | None, _opt("cache_dir")] = None,
        null_device: Annotated[bool, _opt("null_device")] = False,
        threads: Annotated[int | None, _opt("threads")] = None,
        finetune: Annotated[bool | None, _opt("finetune", "--finetune/--no-finetune")] = None,
        train: Annotated[Path | None, _opt("train", "--train")] = None,
        confidence: Annotated[float, _opt("confidence")] = 0.9,
        confirm_fraction: Annotated[float, _opt("confirm_fraction")] = 0.3,
        finalists: Annotated[int, _opt("finalists")] = 3,
        finetune_epochs: Annotated[int, _opt("finetune_epochs")] = 10,
        finetune_drop: Annotated[float, _opt("finetune_drop")] = 15.0,
        finetune_candidates: Annotated[int, _opt("finetune_candidates")] = 2,
        bits: Annotated[str | None, _opt("bits", "--bits")] = None,
        sparsity: Annotated[str | None, _opt("sparsity", "--sparsity")] = None,
        accel_latency: Annotated[str, _opt("accel_latency")] = "total",
        input_shape: Annotated[list[str] | None, _opt("input_shape", "--input-shape")] = None,
    ) -> None:
        """Search compressed variants of MODEL for the fastest (or most accurate) one,
        measured on the target device."""
        from pfcompile.model import parse_input_shapes
        from pfcompile.search import DeviceSpec, RunConfig, SearchSettings, run

        config = RunConfig(
            model=model, target=target, data=data, calib=calib, train=train,
            settings=SearchSettings(strategy=strategy, budget=budget, max_acc_drop=max_acc_drop,
                                    speedup=speedup, latency_ms=latency_ms, size_mb=size_mb,
                                    seed=seed, calib_samples=calib_samples, bits=bits,
                                    sparsity=sparsity, confidence=confidence,
                                    confirm_fraction=confirm_fraction, finalists=finalists),
            device=DeviceSpec(device=device, rpc=rpc, key=key, null=null_device, threads=threads,
                              accel_latency=accel_latency),
            out_dir=out, resume=resume, cache_dir=cache_dir, finetune=finetune,
            finetune_epochs=finetune_epochs, finetune_drop=finetune_drop,
            finetune_candidates=finetune_candidates, input_shapes=parse_input_shapes(input_shape))
        console = Console()
        prog = _Progress(budget, console)
        with prog.live:
            rep = run(config, on_event=prog)
        _print_report(rep, out, console)


def _drop(d: dict, sep: str = " ") -> str:
    """An accuracy drop and its interval: ``1.23 [0.50, 2.00]``."""
    return f"{d['acc_drop']:.2f}{sep}[{d['acc_drop_lower']:.2f}, {d['acc_drop_upper']:.2f}]"


def _print_report(rep: dict, out: Path, console: Console) -> None:
    """The run's outcome under the live table: baseline, best, confirmation, DIST."""
    b, best = rep["baseline"], rep["best"]
    tag = " [EMULATED: functional only]" if rep["emulated"] else ""
    if rep.get("simulated"):
        tag = " [SIMULATED: accelerator cycle model + host ops]"
    console.print(f"baseline {b['latency_ms']:.3f} ms{tag}, {b.get('size_mb') or 0:.3f} MB")
    if best:
        console.print(f"best {best['latency_ms']:.3f} ms ({best['speedup']:.2f}x), accuracy drop "
                      f"{_drop(best, ' points ')} on the search part -> {out}/")
        cf = best.get("confirmation")
        if cf:
            console.print(f"confirmed on {cf['acc_n']} images the search never saw: drop "
                          f"{_drop(cf)} points")
    else:
        console.print(f"nothing deployed: {rep.get('why_no_candidate')}; {out}/model.onnx is "
                      "the original model")
    if rep.get("deployed"):
        d = rep["deployed"]
        console.print(f"deployed {out}/: {d['size_bytes'] / 1e6:.3f} MB (code "
                      f"{d['code_bytes'] / 1e6:.3f}, weights {d['weight_bytes'] / 1e6:.3f})")
    ft = rep.get("finetune")
    if ft:
        for t in ft.get("tried") or [ft]:
            console.print(f"fine-tuned trial {t.get('trial')} ({t.get('of')}): top-1 "
                          f"{t['before_top1']} -> {t['after_top1']} ({ft['epochs']} epochs on "
                          f"{ft['train_data']}"
                          f"{'; deployed' if t['deployed'] else '; NOT deployed: ' + str(t.get('error'))})")
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
    console.print(f"cost model: within 10% {_fraction(cm['within_10pct'])}, Kendall tau "
                  f"{_fraction(cm['kendall_tau'])} (n={cm['n_heldout']})")


def _fraction(v: object) -> str:
    """A report's ratio for a person: two decimals, or n/a when it was not computed."""
    return f"{v:.2f}" if isinstance(v, (int, float)) else "n/a"
