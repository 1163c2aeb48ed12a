"""Benchmark the search strategies on the host CPU served over TVM RPC.

Digits images upsampled to 32x32; a CIFAR-style ResNet-20 and a MobileNetV2-style
model trained on them; strategies (default hw, flops, uniform) each with the same
number of candidate measurements on the device. Prints a table: best measured
speedup at <= --max-acc-drop points, and the cost model's accuracy on held-out
candidates (predictions made before the candidate was measured, and the final
hw model on the other strategies' candidates, which it never saw).

The best model of every strategy and the baseline are re-measured at the end,
interleaved, in one session (medians over --final-repeats): those speedups are
the like-with-like comparison.

    python tools/bench_search.py [--models resnet20,mobilenet_v2] [--budget 30]
        [--strategies hw,flops,uniform] [--threads 1] [--out bench_search_out]
        [--ports 9300-9330] [--cold-cache]

``--strategies hw,rl,bo`` adds the learning optimisers: the ``inner`` column
counts what they evaluated on the models alone (rl: agent episodes on the
latency model + cheap accuracy; bo: GP points screened by the models) beside
the device measurements. ``--cold-cache`` gives each strategy its own latency
model cache, so none starts warm from kernels another strategy measured.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from pfcompile import zoo
from pfcompile.data import Dataset
from pfcompile.device import free_port, serve
from pfcompile.model import load_onnx
from pfcompile.search.devices import RPCDevice
from pfcompile.search.graph import extract_kernels
from pfcompile.search.latency_model import LatencyModel, kendall_tau
from pfcompile.search.loop import SearchSettings, run_search
from pfcompile.search.report import cost_model_stats, write_report
from pfcompile.targets import load_target

MODELS = {"resnet20": lambda: zoo.resnet20(10, 1), "mobilenet_v2": lambda: zoo.mobilenet_v2_cifar(10, 1)}


def prepare(name: str, out: Path, epochs: int) -> tuple[Path, Dataset, Dataset]:
    """The trained model, its validation set and 32 training samples (LASSO calibration)."""
    d = zoo.digits_splits(size=32, seed=0)
    path = out / "models" / f"{name}.onnx"
    if not path.exists():
        t0 = time.time()
        net = MODELS[name]()
        zoo.train_classifier(net, d["x_train"], d["y_train"], epochs=epochs, lr=0.1,
                             augment_shift=2, seed=0)
        acc = zoo.accuracy(net, d["x_val"], d["y_val"])
        zoo.export_onnx(net, path, (1, 1, 32, 32))
        print(f"trained {name}: val top-1 {acc:.4f} in {time.time() - t0:.0f} s -> {path}", flush=True)
    return (path, Dataset({"input": d["x_val"]}, d["y_val"], "digits32-val"),
            Dataset({"input": d["x_train"][:32]}, None, "digits32-train[:32]"))


def remeasure(dev: RPCDevice, models: dict[str, object], art: Path, repeats: int
              ) -> tuple[dict[str, float], dict[str, float]]:
    """(paired, raw) medians: every model timed alternating with the baseline in one
    session (paired: baseline ms x median ratio), ``repeats`` interleaved rounds."""
    dev.set_reference(models["baseline"], art / "baseline")
    paired: dict[str, list[float]] = {k: [] for k in models}
    raw: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(repeats):
        for name, m in models.items():  # interleaved: drift hits all alike
            r = dev.measure_model(m, art / name)
            if r.ok:
                paired[name].append(r.latency_ms)
                raw[name].append(r.raw_ms)
    med = lambda d: {k: float(np.median(v)) if v else float("nan") for k, v in d.items()}
    return med(paired), med(raw)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet20,mobilenet_v2")
    ap.add_argument("--strategies", default="hw,flops,uniform")
    ap.add_argument("--budget", type=int, default=30)
    ap.add_argument("--max-acc-drop", type=float, default=0.5)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1, help="TVM threads on the device (1: steadiest "
                    "on a shared CPU)")
    ap.add_argument("--number", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--kernels-per-trial", type=int, default=6)
    ap.add_argument("--final-repeats", type=int, default=3)
    ap.add_argument("--out", default="bench_search_out")
    ap.add_argument("--ports", default="9300-9330", help="LO-HI for the local RPC server")
    ap.add_argument("--cold-cache", action="store_true", help="a latency-model cache per strategy")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    target = load_target("host")
    rows = []
    lo, hi = (int(x) for x in args.ports.split("-"))
    cache_of = (lambda s: out / "cache" / s) if args.cold_cache else (lambda s: out / "cache")
    with serve(target, "127.0.0.1", free_port("127.0.0.1", lo, hi), threads=args.threads) as srv:
        dev = RPCDevice(target, port=srv.port, number=args.number, repeat=args.repeat)
        for mname in args.models.split(","):
            path, data, calib = prepare(mname, out, args.epochs)
            model = load_onnx(path)
            results = {}
            for strat in args.strategies.split(","):
                t0 = time.time()
                settings = SearchSettings(strategy=strat, budget=args.budget,
                                          max_acc_drop=args.max_acc_drop,
                                          kernels_per_trial=args.kernels_per_trial)
                r = run_search(model, target, dev, data, out / "runs" / f"{mname}-{strat}", settings,
                               cache_dir=cache_of(strat), calib=calib,
                               on_event=lambda k, i, mname=mname, strat=strat: print(
                                   f"  {mname}/{strat} trial {i['id']}: {i['status']} "
                                   f"{i.get('latency_ms') or 0:.3f} ms drop {i.get('acc_drop', 0):.2f}",
                                   flush=True) if k == "trial" else None)
                results[strat] = (r, time.time() - t0)
            # held-out check of the final hw model on candidates it never measured
            held = {}
            if "hw" in results:
                lm = LatencyModel.load(LatencyModel.path_for(cache_of("hw"), "host"), "host",
                                       int(target.hardware["fp32_lanes"]))
                hw_r = results["hw"][0]
                lm.update_model(extract_kernels(model), hw_r.baseline["latency_ms"])
                for t in hw_r.trials:
                    if t["status"] == "ok":
                        lm.update_model(extract_kernels(_model_of(hw_r, t, model)), t["latency_ms"])
                pts = []
                for s, (r, _) in results.items():
                    if s == "hw":
                        continue
                    # paired latencies are ratios to that run's baseline: put them on hw's scale
                    scale = hw_r.baseline["latency_ms"] / r.baseline["latency_ms"]
                    for t in r.trials:
                        if t["status"] == "ok":
                            pts.append((lm.predict(extract_kernels(_model_of(r, t, model))),
                                        t["latency_ms"] * scale))
                if pts:
                    p, m = np.array(pts).T
                    held = {"within_10pct": float(np.mean(np.abs(p - m) / m <= 0.1)),
                            "kendall_tau": kendall_tau(p, m), "n_heldout": len(pts)}
            # like with like: baseline and each best, re-measured interleaved
            finals = {"baseline": model}
            for s, (r, _) in results.items():
                if r.best_model is not None:
                    finals[s] = r.best_model
            med, raw = remeasure(dev, finals, out / "final" / mname, args.final_repeats)
            for s, (r, secs) in results.items():
                cm = cost_model_stats(r.trials)
                rows.append({
                    "model": mname, "strategy": s, "baseline_ms": med["baseline"],
                    "best_ms": med.get(s), "speedup": med["baseline"] / med[s] if s in med else 1.0,
                    "raw_speedup": raw["baseline"] / raw[s] if s in raw else 1.0,
                    "acc_drop": r.best["acc_drop"] if r.best else None,
                    "trials": len(r.trials), "failed": sum(t["status"] != "ok" for t in r.trials),
                    "device_measurements": r.device_measurements,
                    "kernel_measurements": r.kernel_measurements,
                    "cm_within_10pct": cm["within_10pct"], "cm_tau": cm["kendall_tau"], "cm_n": cm["n_heldout"],
                    "seconds": secs, "inner": _inner(out / "runs" / f"{mname}-{s}")})
            if "hw" in results:
                others = {s: r.trials for s, (r, _) in results.items() if s != "hw"}
                write_report(results["hw"][0], out / "reports" / mname, others)
            rows.append({"model": mname, "strategy": "hw-model on others' candidates", **held})
    (out / "bench.json").write_text(json.dumps(rows, indent=1, default=float))
    print(f"\nhost CPU over TVM RPC, {args.threads} TVM thread(s), budget {args.budget} candidate "
          f"measurements per strategy, max accuracy drop {args.max_acc_drop} points; latencies are "
          f"medians of {args.final_repeats} interleaved re-measurements, each paired with the "
          f"baseline in one session (speedup: paired ratio; raw x: ratio of the raw medians)")
    hdr = (f"{'model':<13}{'strategy':<10}{'base ms':>9}{'best ms':>9}{'speedup':>8}{'drop':>7}"
           f"{'raw x':>7}{'trials':>7}{'fail':>5}{'kern':>6}{'cm<=10%':>8}{'tau':>7}{'n':>4}{'sec':>6}"
           f"{'inner':>6}")
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        if "baseline_ms" not in r:
            continue
        f = lambda v, p=2: "-" if v is None else f"{v:.{p}f}"
        print(f"{r['model']:<13}{r['strategy']:<10}{f(r['baseline_ms'])+'':>9}{f(r['best_ms']):>9}"
              f"{f(r['speedup']):>8}{f(r['acc_drop']):>7}{f(r['raw_speedup']):>7}{r['trials']:>7}"
              f"{r['failed']:>5}"
              f"{r['kernel_measurements']:>6}{f(r['cm_within_10pct']):>8}{f(r['cm_tau']):>7}"
              f"{r['cm_n']:>4}{r['seconds']:>6.0f}{f(r.get('inner'), 0):>6}")
    for r in rows:
        if "baseline_ms" not in r and r.get("n_heldout"):
            print(f"{r['model']}: final hw latency model on the other strategies' {r['n_heldout']} "
                  f"candidates: within 10% {r['within_10pct']:.2f}, Kendall tau {r['kendall_tau']:.2f}")


def _inner(run_dir: Path) -> int | None:
    """rl: agent episodes; bo: points screened by the models (from the run's strategy state)."""
    from pfcompile.search.state import load_strategy_state

    st = load_strategy_state(run_dir)
    if st is None:
        return None
    return int(st["episodes"]) if "episodes" in st else len(st.get("screened", []))


def _model_of(result, trial, model):
    from pfcompile.search.space import compress

    return compress(model, result.space, trial["config"])


if __name__ == "__main__":
    main()
