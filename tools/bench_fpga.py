"""Mixed precision on the FPGA-style targets (issue 8): uniform 8-bit vs a searched
per-layer bit policy, digits-trained ResNet-20 (32x32), same accuracy constraint.

    /work/main/.venv/bin/python tools/bench_fpga.py [--work out/bench_fpga] [--epochs 12]

Steps: train ResNet-20 on sklearn digits upsampled to 32x32 (cached in --work),
quantize with onnxruntime (static QDQ, per-channel int8 weights, uint8 activations),
search per-layer bits on fpga-bitfusion and on fpga-vta (tools/fpga_greedy_bits.py:
greedy, sensitivity-ranked; latency = the simulator's cycle model, accuracy =
onnxruntime on the fake-quant QDQ model over the 540 validation images; constraint:
within --max-drop points of the float model), cross-run each target's policy on the
other target, then compile every policy and run the bit-exact integer simulator over
the validation set for its accuracy. Tiling records go to the cache's records/<target>/ (pfcompile.paths).

Then the same question through ``pfcompile run --target fpga-bitfusion`` (the search
loop every target uses: kernel-level XGBoost cost model, ``hw`` strategy, keep knobs =
channels and, when the search space has them, ``bits`` knobs = per-layer widths;
candidates quantized by onnxruntime's static QDQ; measured on the simulator device
over TVM RPC; optimizing the simulated accelerator time, ``--accel-latency accel``,
so that it is comparable with the greedy rows; same accuracy constraint). Its best
model is compiled and run like the policies above (row "searched by pfcompile run").
Skip it with ``--run-budget 0``.

Every accelerator latency here is SIMULATED (cycle model at the target's clock): no FPGA
was run. Host-op times are measured on this CPU (onnxruntime, batch 1, median of 5).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from fpga_greedy_bits import (  # tools/ is on sys.path for a script run from it
    AccelCostModel,
    BitSearchSettings,
    search_bits,
)

from pfcompile.accel import compile_accel, load_accel_config
from pfcompile.accel.mixed import set_layer_bits
from pfcompile.accel.tiling import TilingDB
from pfcompile.batching import require_batch_free, set_batch
from pfcompile.passes.ort_quantize import ort_quantize_qdq

TARGETS = ("fpga-bitfusion", "fpga-vta")


def _session(m: onnx.ModelProto) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _prepare(work: Path, epochs: int) -> tuple[onnx.ModelProto, onnx.ModelProto, dict]:
    import torch

    from pfcompile import zoo

    data = zoo.digits_splits(32)
    fpath = work / "resnet20_digits32.onnx"
    if not fpath.exists():
        torch.set_num_threads(1)        # the machine is shared: one thread wastes least
        t0 = time.perf_counter()
        net = zoo.train_classifier(zoo.resnet20(), data["x_train"], data["y_train"],
                                   epochs=epochs, lr=0.05, augment_shift=2)
        print(f"trained ResNet-20 for {epochs} epochs in {time.perf_counter() - t0:.0f} s; "
              f"torch val accuracy {zoo.accuracy(net, data['x_val'], data['y_val']):.4f}")
        tmp = work / "resnet20_b1.onnx"
        zoo.export_onnx(net, tmp, (1, 1, 32, 32))
        onnx.save(require_batch_free(onnx.load(tmp), str(tmp)), fpath)
    qpath = work / "resnet20_digits32_qdq.onnx"
    if not qpath.exists():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ort_quantize_qdq(fpath, qpath, data["x_calib"], preprocess=False)
    return onnx.load(fpath), onnx.load(qpath), data


RUN_POLICY = "searched by pfcompile run"


def _pfcompile_run(args, fmodel: onnx.ModelProto, data: dict, xv: np.ndarray,
                   yv: np.ndarray) -> dict:
    """``pfcompile run --target fpga-bitfusion`` on the float ResNet-20 (the same loop as
    every target); returns its best QDQ model (None if nothing met the constraint), the
    model's per-layer widths as built, and the run's numbers."""
    import dataclasses

    from pfcompile.accel.qgraph import partition_model
    from pfcompile.search import DeviceSpec, RunConfig, SearchSettings, run

    fpath = args.work / "resnet20_digits32_b1.onnx"     # `pfcompile run` wants static shapes
    b1 = onnx.ModelProto.FromString(fmodel.SerializeToString())
    for v in list(b1.graph.input) + list(b1.graph.output):
        set_batch(v, 1)
    onnx.save(b1, str(fpath))
    val, calib = args.work / "val.npz", args.work / "calib.npz"
    np.savez(val, x=xv, y=yv)
    np.savez(calib, x=data["x_calib"])
    out = args.work / "run_fpga-bitfusion"
    if out.exists():
        import shutil

        shutil.rmtree(out)
    kw = {"strategy": "hw", "budget": args.run_budget, "max_acc_drop": 100 * args.max_drop}
    bits_knobs = "off (keep knobs only: this checkout's search space has no bits knobs)"
    if "bits" in {f.name for f in dataclasses.fields(SearchSettings)} and args.run_bits != "off":
        kw["bits"] = args.run_bits
        bits_knobs = args.run_bits
    lo, hi = (int(v) for v in args.port_range.split("-"))
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rep = run(RunConfig(fpath, "fpga-bitfusion", data=val, calib=calib,
                            settings=SearchSettings(**kw), out_dir=out,
                            cache_dir=args.work / "cache", final_repeats=0,
                            device=DeviceSpec(port_range=(lo, hi + 1), accel_latency="accel")))
    seconds = time.perf_counter() - t0
    model = require_batch_free(onnx.load(str(out / "model.onnx")), "the run's model.onnx") \
        if rep["best"] is not None else None
    bits = {}
    if model is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            part = partition_model(model, load_accel_config("fpga-bitfusion"))
        bits = {lay.name: (lay.wbits, lay.abits) for lay in part.layers}
    return {"model": model, "bits": bits, "bits_knobs": bits_knobs, "seconds": seconds,
            "out": str(out), "best": rep["best"], "baseline": rep["baseline"],
            "cost_model": rep["cost_model"], "trials": rep["trials"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("out/bench_fpga"))
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--max-drop", type=float, default=0.01, help="accuracy budget (fraction)")
    ap.add_argument("--schedules", type=Path, default=None,
                    help="root for tiling records (default: the cache's records/)")
    ap.add_argument("--val-images", type=int, default=0,
                    help="use only the first N validation images (smoke runs; 0 = all 540)")
    ap.add_argument("--run-budget", type=int, default=24,
                    help="device measurements of the `pfcompile run` search (0 = skip it)")
    ap.add_argument("--run-bits", default="auto",
                    help="bits knobs of the `pfcompile run` search ('auto', a list, or 'off')")
    ap.add_argument("--port-range", default="9300-9349",
                    help="ports for the simulator server the run starts")
    args = ap.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    fmodel, qdq, data = _prepare(args.work, args.epochs)
    xv, yv = data["x_val"], data["y_val"]
    if args.val_images:
        xv, yv = xv[:args.val_images], yv[:args.val_images]

    def evaluate(m: onnx.ModelProto) -> float:
        return float((_session(m).run(None, {"input": xv})[0].argmax(1) == yv).mean())

    float_acc = evaluate(fmodel)
    print(f"float accuracy {float_acc:.4f} on {len(yv)} validation images; constraint: "
          f">= {float_acc - args.max_drop:.4f}")
    cfgs = {t: load_accel_config(t) for t in TARGETS}
    dbs = {t: TilingDB.for_target(cfgs[t], args.schedules) for t in TARGETS}
    costs = {t: AccelCostModel(qdq, cfgs[t], dbs[t]) for t in TARGETS}
    log = args.work / "bitsearch.jsonl"
    results = {}
    for t in TARGETS:
        r = search_bits(qdq, cfgs[t], evaluate, float_acc, float_model=fmodel,
                        settings=BitSearchSettings(max_drop=args.max_drop), log_path=log,
                        db=dbs[t])
        results[t] = r
        print(f"[{t}] search: {r.evaluations} evaluations in {r.seconds:.0f} s; "
              f"uniform-8 {r.uniform8.cycles} cycles acc {r.uniform8.accuracy:.4f}; "
              f"best {r.best.cycles} cycles acc {r.best.accuracy:.4f}")
    policies = {"uniform 8/8": {n: (8, 8) for n in costs[TARGETS[0]].layers}}
    for t in TARGETS:
        policies[f"searched on {t}"] = results[t].best.bits
    models = {p: set_layer_bits(qdq, {k: v for k, v in b.items() if v != (8, 8)}, fmodel)
              for p, b in policies.items()}
    run_info = None
    if args.run_budget > 0:
        run_info = _pfcompile_run(args, fmodel, data, xv, yv)
        if run_info["model"] is not None:
            models[RUN_POLICY] = run_info["model"]
            policies[RUN_POLICY] = run_info["bits"]

    rows = []
    for pname, bits in policies.items():
        model = models[pname]
        acc_ort = evaluate(model)
        for t in TARGETS:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                prog = compile_accel(model, cfgs[t], records=dbs[t])
            predicted = costs[t].cycles(bits) if pname != RUN_POLICY else prog.accel_cycles
            if prog.accel_cycles != predicted:
                print(f"note: {pname} on {t}: compiled program {prog.accel_cycles} cycles, "
                      f"search cost model {predicted}")
            pred = np.concatenate([prog.run({"input": xv[i:i + 60]})[0]["logits"].argmax(1)
                                   for i in range(0, len(xv), 60)])
            acc_sim = float((pred == yv).mean())
            host = []
            for i in range(5):
                host.append(prog.run({"input": xv[i:i + 1]})[1].host_ms)
            rows.append({"policy": pname, "target": t, "cycles": prog.accel_cycles,
                         "accel_ms_simulated": prog.accel_ms, "acc_ort_fakequant": acc_ort,
                         "acc_integer_sim": acc_sim, "host_ms_measured": statistics.median(host),
                         "layers_on_accel": len(prog.layers),
                         "mean_wbits": float(np.mean([w for w, _ in bits.values()])),
                         "mean_abits": float(np.mean([a for _, a in bits.values()])),
                         "macs": int(sum(c.layer.macs for c in prog.layers))})
    base = {r["target"]: r["cycles"] for r in rows if r["policy"] == "uniform 8/8"}
    print()
    print("Simulated accelerator latency (cycle model, 100 MHz; NOT measured on an FPGA); "
          "host ops measured on this CPU, batch 1")
    hdr = (f"{'policy':<34} {'run on':<15} {'cycles':>9} {'accel ms':>9} {'vs 8/8':>7} "
           f"{'acc ORT':>8} {'acc sim':>8} {'host ms':>8} {'w bits':>6} {'a bits':>6} "
           f"{'MMACs':>6}")
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        print(f"{r['policy']:<34} {r['target']:<15} {r['cycles']:>9} "
              f"{r['accel_ms_simulated']:>9.3f} {base[r['target']] / r['cycles']:>6.2f}x "
              f"{r['acc_ort_fakequant']:>8.4f} {r['acc_integer_sim']:>8.4f} "
              f"{r['host_ms_measured']:>8.3f} {r['mean_wbits']:>6.2f} {r['mean_abits']:>6.2f} "
              f"{r['macs'] / 1e6:>6.2f}")
    cyc = {(r["policy"], r["target"]): r["cycles"] for r in rows}
    print()
    for t in TARGETS:
        other = next(o for o in TARGETS if o != t)
        native = cyc[(f"searched on {t}", t)]
        foreign = cyc[(f"searched on {other}", t)]
        print(f"on {t}: native policy {native} cycles, {other}'s policy {foreign} cycles "
              f"({(foreign / native - 1) * 100:+.1f} %)")
    print(f"\nbest mixed policy on fpga-bitfusion vs uniform 8/8: "
          f"{base['fpga-bitfusion'] / cyc[('searched on fpga-bitfusion', 'fpga-bitfusion')]:.2f}x "
          f"(goal >= 1.4x; HAQ reports 1.4-1.95x)")
    if run_info is not None:
        ri = {k: v for k, v in run_info.items() if k not in ("model",)}
        if run_info["model"] is None:
            print(f"\npfcompile run (budget {args.run_budget}, bits {run_info['bits_knobs']}): "
                  f"no candidate met the constraint; see {run_info['out']}")
        else:
            r = cyc[(RUN_POLICY, "fpga-bitfusion")]
            print(f"\n{RUN_POLICY} (budget {args.run_budget}, bits knobs: "
                  f"{run_info['bits_knobs']}, {run_info['seconds']:.0f} s): "
                  f"{base['fpga-bitfusion'] / r:.2f}x vs uniform 8/8 on fpga-bitfusion; the "
                  f"greedy bit search: "
                  f"{base['fpga-bitfusion'] / cyc[('searched on fpga-bitfusion', 'fpga-bitfusion')]:.2f}x; "
                  f"cost model within 10 %: {ri['cost_model'].get('within_10pct')}, "
                  f"Kendall tau {ri['cost_model'].get('kendall_tau')}")
    summary = {"float_accuracy": float_acc, "max_drop": args.max_drop, "rows": rows,
               "policies": {k: {n: list(v) for n, v in b.items()} for k, b in policies.items()},
               "pfcompile_run": None if run_info is None else
               {k: v for k, v in run_info.items() if k != "model"}}
    (args.work / "bench_fpga.json").write_text(json.dumps(summary, indent=1))
    print(f"wrote {args.work / 'bench_fpga.json'}; search log {log}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
