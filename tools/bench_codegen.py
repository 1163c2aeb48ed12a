"""Side-by-side latency on the host, one run: TVM untuned, pfcompile heuristic
(0 measurements), pfcompile tuned (budget stated), MetaSchedule (same budget),
onnxruntime, torch. Medians over interleaved rounds (all variants of a model
are timed round-robin so that load drift hits them alike), ratio to onnxruntime.

    python tools/bench_codegen.py                      # all models
    python tools/bench_codegen.py --models demo --metaschedule demo --ms-trials 8

Also prints compile times, and compiles a pruned ResNet-18 (0.75× widths: new
channel counts) against the records tuned here to show record transfer and
compile time.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import tvm
from rich.console import Console
from rich.table import Table
from torch import nn
from tvm import relax

from pfcompile import codegen, zoo
from pfcompile.codegen.metaschedule import metaschedule_dir, tune_metaschedule
from pfcompile.codegen.tune import TuneSettings, tune
from pfcompile.compiler import import_onnx
from pfcompile.runner.kernels import LocalKernelTimer
from pfcompile.targets import load_target

console = Console(width=160)


def pruned_resnet18() -> nn.Module:
    """ResNet-18 with 0.75× channels (48/96/192/384): a pruned candidate."""
    stem = nn.Sequential(nn.Conv2d(3, 48, 7, 2, 3, bias=False), nn.BatchNorm2d(48),
                         nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
    return zoo._ResNet(stem, [(48, 2, 1), (96, 2, 2), (192, 2, 2), (384, 2, 2)], 48, 1000)


def models(names: list[str], work: Path) -> dict[str, tuple[Path, nn.Module | None, tuple]]:
    out = {}
    torch.manual_seed(0)
    for name in names:
        if name == "demo":
            out[name] = (Path(zoo.__file__).parent / "data" / "demo.onnx", None, (1, 1, 32, 32))
            continue
        net = {"resnet18": zoo.resnet18, "mobilenet_v2": zoo.mobilenet_v2,
               "resnet18_pruned": pruned_resnet18}[name]().eval()
        path = work / f"{name}.onnx"
        if not path.exists():
            zoo.export_onnx(net, path, (1, 3, 224, 224))
        out[name] = (path, net, (1, 3, 224, 224))
    return out


def bench_model(name: str, path: Path, net: nn.Module | None, shape: tuple, target, args,
                records: Path, run_metaschedule: bool) -> tuple[dict, dict, dict]:
    """Compile (and tune) every variant of one model, then time them round-robin."""
    mod = import_onnx(path)
    in_name = onnx.load(str(path)).graph.input[0].name
    x = np.random.default_rng(0).standard_normal(shape).astype("float32")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ref = sess.run(None, {in_name: x})[0]
    variants: dict[str, object] = {}
    compile_s: dict[str, float] = {}
    errors: dict[str, float] = {}
    empty = Path(tempfile.mkdtemp(prefix="pfc-empty-"))

    def add(label: str, build) -> None:
        t0 = time.perf_counter()
        ex = build()
        compile_s[label] = time.perf_counter() - t0
        dev = tvm.cpu()
        vm = relax.VirtualMachine(ex, dev)
        xt = tvm.runtime.tensor(x, dev)
        errors[label] = float(np.abs(vm["main"](xt).numpy() - ref).max())
        if errors[label] > 1e-3 * max(1.0, float(np.abs(ref).max())):
            console.print(f"[red]{name} {label}: max error {errors[label]:.2e} vs onnxruntime[/]")
        variants[label] = lambda: vm["main"](xt)

    trials = args.ms_trials if run_metaschedule else args.trials
    console.print(f"[bold]{name}[/]: compiling ...")
    if name != "resnet18_pruned":
        add("TVM untuned", lambda: tvm.compile(mod, target=target.tvm_target()))
    add("pfcompile heuristic", lambda: codegen.build(mod, target, records_dir=empty))
    if name == "resnet18_pruned":
        report: list = []
        add("pfcompile tuned", lambda: codegen.build(mod, target, records_dir=records,
                                                     report=report))
        srcs: dict[str, int] = {}
        for r in report:
            srcs[r.source] = srcs.get(r.source, 0) + 1
        console.print(f"  pruned candidate, records of resnet18: compile "
                      f"{compile_s['pfcompile tuned']:.1f} s, params from {srcs}")
    else:
        t0 = time.perf_counter()
        res = tune(mod, target, LocalKernelTimer(number=3, repeat=3, min_repeat_ms=10),
                   settings=TuneSettings(trials=trials, batch=4), records_dir=records)
        console.print(f"  pfcompile tuning: {sum(r.trials for r in res)} measurements, "
                      f"{time.perf_counter() - t0:.0f} s")
        add("pfcompile tuned", lambda: codegen.build(mod, target, records_dir=records))
        if run_metaschedule:
            t0 = time.perf_counter()
            tune_metaschedule(mod, target, trials=trials, records_dir=records)
            console.print(f"  MetaSchedule tuning: {trials} trials, "
                          f"{time.perf_counter() - t0:.0f} s")
            add("MetaSchedule", lambda: codegen.build(
                mod, target, records_dir=empty,
                metaschedule_dir=metaschedule_dir(records, target.name)))
    variants["onnxruntime"] = lambda: sess.run(None, {in_name: x})
    if net is not None:
        xt_torch = torch.from_numpy(x)

        def torch_run():
            with torch.no_grad():
                return net(xt_torch)
        variants["torch"] = torch_run
    for fn in variants.values():   # warm-up
        fn()
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(args.rounds):
        for label, fn in variants.items():
            for _ in range(args.untuned_runs if label == "TVM untuned" else args.runs):
                t0 = time.perf_counter()
                fn()
                times[label].append(time.perf_counter() - t0)
    med = {k: 1e3 * float(np.median(v)) for k, v in times.items()}
    console.print({k: round(v, 2) for k, v in med.items()})
    return med, compile_s, errors, trials


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--models", nargs="+",
                    default=["resnet18", "resnet18_pruned", "mobilenet_v2", "demo"])
    ap.add_argument("--trials", type=int, default=48, help="tuning budget per model (both tuners)")
    ap.add_argument("--metaschedule", nargs="*", default=[],
                    help="models to tune with MetaSchedule too (slow: 4 MetaSchedule trials "
                         "took 17 min on the loaded 2-core machine)")
    ap.add_argument("--ms-trials", type=int, default=8,
                    help="budget of BOTH tuners on the models tuned with MetaSchedule")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--runs", type=int, default=2, help="runs per variant per round")
    ap.add_argument("--untuned-runs", type=int, default=1)
    ap.add_argument("--records", type=Path, default=None,
                    help="records folder (default: a fresh temporary one)")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "pfcompile-bench")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    records = args.records or Path(tempfile.mkdtemp(prefix="pfc-records-"))
    target = load_target("host")
    threads = int(target.tvm.get("num-cores", os.cpu_count() or 1))
    torch.set_num_threads(threads)
    console.print(f"host: {target.tvm}, threads {threads}, records {records}, "
                  f"tuning budget {args.trials} measured kernels per model, load "
                  f"{os.getloadavg()[0]:.1f}")
    rows = []
    for name, (path, net, shape) in models(args.models, args.work).items():
        med, cs, err, trials = bench_model(name, path, net, shape, target, args, records,
                                           name in set(args.metaschedule or []))
        rows.append((name, med, cs, err, trials))
    cols = ["TVM untuned", "pfcompile heuristic", "pfcompile tuned", "MetaSchedule",
            "onnxruntime", "torch"]
    table = Table(title=f"batch-1 latency on this host, median ms (× onnxruntime); "
                        f"budget = measured kernels per tuner; load at end "
                        f"{os.getloadavg()[0]:.1f}")
    table.add_column("model")
    table.add_column("budget", justify="right")
    for c in cols:
        table.add_column(c, justify="right")
    for name, med, _cs, _err, trials in rows:
        ortm = med["onnxruntime"]
        table.add_row(name, "records" if name == "resnet18_pruned" else str(trials), *[f"{med[c]:.2f} ({med[c] / ortm:.2f}×)" if c in med else "-"
                              for c in cols])
    console.print(table)
    ct = Table(title="compile seconds (max |error| vs onnxruntime)")
    ct.add_column("model")
    for c in cols[:4]:
        ct.add_column(c, justify="right")
    for name, _med, cs, err, _t in rows:
        ct.add_row(name, *[f"{cs[c]:.1f} ({err[c]:.1e})" if c in cs else "-" for c in cols[:4]])
    console.print(ct)


if __name__ == "__main__":
    main()
