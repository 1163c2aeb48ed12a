"""The real-model suite on the host: pfcompile fp32 vs onnxruntime latency side by
side, and what `pfcompile run` finds at <= 1 point accuracy drop.

Latency: each model is compiled once (``pfcompile compile`` path, host target);
then, for ``--rounds`` rounds, one fresh process runs pfcompile's library and one
runs onnxruntime on the original file (alternating, the order flipping every
round), each with ``--threads`` threads (TVM_NUM_THREADS / intra_op_num_threads),
batch 1, median over ``--number`` runs after warm-up. The table gives the median
over rounds, the CPU and the load average before and after.

Search: ``pfcompile run`` on the host device with ``--budget`` candidates and
``--max-acc-drop 1`` on the suite's validation data (labelled digits for the
dynamo classifiers; agreement with the original for the OCR models), and the
re-measured speedup of its answer. ``--budget 0`` skips it.

  python tools/bench_real.py                                  # everything (long)
  python tools/bench_real.py --models ppocr_cls --rounds 2 --number 5 --budget 0
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from pfcompile.realmodels import SUITE, fetch, suite_data, suite_model
from pfcompile.targets import cpu_model


def _load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


# ----------------------------------------------------------------------------- children
def _child_tvm(artifact: str, shape: list[int], number: int) -> float:
    import tvm

    lib = tvm.runtime.load_module(str(Path(artifact) / "model.so"))
    dev = tvm.cpu()
    vm = tvm.relax.VirtualMachine(lib, dev)
    x = tvm.runtime.tensor(np.random.default_rng(0).uniform(-1, 1, shape).astype("float32"), dev)
    fe = vm.time_evaluator("main", dev, number=1, repeat=number, min_repeat_ms=0)
    vm["main"](x)
    return float(np.median(fe(x).results) * 1e3)


def _child_ort(path: str, shape: list[int], number: int, threads: int) -> float:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    feed = {sess.get_inputs()[0].name:
            np.random.default_rng(0).uniform(-1, 1, shape).astype("float32")}
    for _ in range(3):
        sess.run(None, feed)
    times = []
    for _ in range(number):
        t0 = time.perf_counter()
        sess.run(None, feed)
        times.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(times))


def _spawn(kind: str, target: str, shape: tuple[int, ...], number: int, threads: int) -> float:
    env = dict(os.environ, TVM_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
    out = subprocess.run([sys.executable, __file__, "--child", kind, "--child-target", target,
                          "--child-shape", "x".join(map(str, shape)), "--number", str(number),
                          "--threads", str(threads)],
                         env=env, capture_output=True, text=True, check=False, timeout=900)
    if out.returncode != 0:
        raise SystemExit(f"{kind} child failed: {out.stderr.strip()[-600:]}")
    return float(json.loads(out.stdout.strip().splitlines()[-1])["ms"])


# ----------------------------------------------------------------------------- parts
def latency_table(names: list[str], rounds: int, number: int, threads: int, work: Path) -> list:
    from pfcompile.compiler import compile_model

    rows = []
    for name in names:
        sm = suite_model(name)
        path = fetch(name)
        art = work / name
        t0 = time.perf_counter()
        compile_model(path, "host", art, {sm.input_name: sm.input_shape})
        compile_s = time.perf_counter() - t0
        pf, rt = [], []
        for r in range(rounds):
            order = [("tvm", str(art), pf), ("ort", str(path), rt)]
            for kind, target, acc in (order if r % 2 == 0 else order[::-1]):
                acc.append(_spawn(kind, target, sm.input_shape, number, threads))
        rows.append((name, "x".join(map(str, sm.input_shape)), statistics.median(pf),
                     statistics.median(rt), compile_s))
        print(f"  measured {name}: pfcompile {pf} ms, onnxruntime {rt} ms", flush=True)
    return rows


def search_table(names: list[str], budget: int, threads: int, work: Path) -> list:
    from pfcompile.search import DeviceSpec, RunConfig, SearchSettings, run

    rows = []
    for name in names:
        sm = suite_model(name)
        data = work / f"{name}_val.npz"
        np.savez(data, **suite_data(name, 400))
        t0 = time.perf_counter()
        rep = run(RunConfig(fetch(name), "host", data=data, out_dir=work / f"{name}_dist",
                            settings=SearchSettings(budget=budget, max_acc_drop=1.0),
                            device=DeviceSpec(threads=threads),
                            input_shapes={sm.input_name: sm.input_shape}))
        best, rm = rep.get("best") or {}, rep.get("remeasured") or {}
        rows.append((name, rep["baseline"]["latency_ms"], best.get("latency_ms"),
                     best.get("speedup"), rm.get("speedup"), best.get("acc_drop"),
                     "top-1" if rep["baseline"].get("top1") is not None else "agreement",
                     time.perf_counter() - t0))
        print(f"  searched {name}", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(m.name for m in SUITE))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--number", type=int, default=30, help="runs per process (median)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--budget", type=int, default=12, help="pfcompile run budget; 0 = skip")
    ap.add_argument("--child", choices=("tvm", "ort"), help=argparse.SUPPRESS)
    ap.add_argument("--child-target", help=argparse.SUPPRESS)
    ap.add_argument("--child-shape", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        shape = [int(d) for d in args.child_shape.split("x")]
        ms = (_child_tvm(args.child_target, shape, args.number) if args.child == "tvm"
              else _child_ort(args.child_target, shape, args.number, args.threads))
        print(json.dumps({"ms": ms}))
        return
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    load0 = _load()
    with tempfile.TemporaryDirectory() as tmp:
        lat = latency_table(names, args.rounds, args.number, args.threads, Path(tmp))
        srch = search_table(names, args.budget, args.threads, Path(tmp)) if args.budget else []
    print(f"\nCPU: {cpu_model()}, {os.cpu_count()} cores; threads {args.threads} each; batch 1; "
          f"load average before {load0}, after {_load()}")
    print(f"latency: median over {args.rounds} alternating process rounds of the median of "
          f"{args.number} runs (ms)\n")
    print("| model | input | pfcompile fp32 | onnxruntime | pfcompile/ORT | compile s |")
    print("|---|---|---|---|---|---|")
    for name, shape, a, b, cs in lat:
        print(f"| {name} | {shape} | {a:.3f} | {b:.3f} | {a / b:.2f} | {cs:.0f} |")
    if srch:
        print(f"\n`pfcompile run` on host, budget {args.budget}, --max-acc-drop 1\n")
        print("| model | baseline ms | best ms | speedup | re-measured | drop (pts) | metric "
              "| search s |")
        print("|---|---|---|---|---|---|---|---|")
        for name, base, best, sp, rsp, drop, metric, secs in srch:
            f = (lambda v, p=3: "-" if v is None else f"{v:.{p}f}")
            print(f"| {name} | {base:.3f} | {f(best)} | {f(sp, 2)} | {f(rsp, 2)} | "
                  f"{f(drop, 2)} | {metric} | {secs:.0f} |")


if __name__ == "__main__":
    main()
