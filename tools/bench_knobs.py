"""Benchmark: what the search's per-layer knobs do to one model on this machine.

Candidates built with ``pfcompile.search.space.compress`` (the passes the search
uses), compiled with ``pfcompile.compiler.compile_model`` for the host target and
timed in this process with ``time_evaluator`` (batch 1), round-robin over the
candidates, medians over ``--repeat`` rounds, so load from other processes falls on
all alike. Also: stored size (``passes.stats.model_size_mb``), top-1 on the demo's
validation data, and how many layers the compiler lowered to integer kernels.

  python tools/bench_knobs.py                 # the demo model
  python tools/bench_knobs.py --repeat 10 --threads 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import tvm
from tvm import relax

from pfcompile.artifact_size import artifact_size
from pfcompile.compiler import compile_model
from pfcompile.data import load_npz
from pfcompile.deploy import prepare
from pfcompile.model import input_specs, load_onnx
from pfcompile.passes.stats import model_size_mb
from pfcompile.paths import demo_paths
from pfcompile.search.space import build_space, compress
from pfcompile.targets import load_target


def _top1(model, x: np.ndarray, y: np.ndarray) -> float:
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    pred = [int(s.run(None, {"input": x[i:i + 1]})[0].argmax()) for i in range(len(x))]
    return float(np.mean(np.array(pred) == y))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--threads", type=int, default=None, help="TVM_NUM_THREADS for the runs")
    args = ap.parse_args()
    if args.threads:
        import os

        os.environ["TVM_NUM_THREADS"] = str(args.threads)
    model_p, val_p, calib_p = demo_paths()
    m = load_onnx(model_p)
    specs = input_specs(m)
    val = load_npz(val_p, specs).subset(300)
    cal = load_npz(calib_p, specs).subset(32)
    host = load_target("host")
    sp = build_space(m, host.hardware, bits=(32, 8), sparsity=(0.0, 0.5))
    bits = [k for k in sp.knobs if k.kind == "bits"]
    sparse = [k for k in sp.knobs if k.kind == "sparsity"]
    d = sp.default()
    cands = {
        "float (unmodified)": d,
        "int8 every layer": {**d, **{k.name: 8 for k in bits}},
        "int8 all but first/last": {**d, **{k.name: 8 for k in bits[1:-1]}},
        "int8 on 2 of 12 layers": {**d, bits[3].name: 8, bits[7].name: 8},
        "keep 50% (LASSO)": sp.uniform(0.5),
        "keep 50% + int8": {**sp.uniform(0.5), **{k.name: 8 for k in bits}},
        "sparsity 50% every layer": {**d, **{k.name: 0.5 for k in sparse}},
    }
    x = val.inputs["input"][:1]
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        vms = {}
        for i, (name, cfg) in enumerate(cands.items()):
            cm = compress(m, sp, cfg, cal)
            art = compile_model(cm, host, Path(tmp) / str(i))
            layers = json.loads((Path(tmp) / str(i) / "model.json").read_text()).get("layers", [])
            vm = prepare(relax.VirtualMachine(tvm.runtime.load_module(str(art.so_path)), tvm.cpu()))
            vms[name] = (vm, vm.time_evaluator(tvm.cpu(), number=20, repeat=1, min_repeat_ms=50))
            rows[name] = {"size_mb": model_size_mb(cm), "deployed_mb": artifact_size(art.dir).size_mb,
                          "top1": _top1(cm, val.inputs["input"], val.labels),
                          "int8_layers": sum(x["path"] == "int8" for x in layers), "ms": []}
        arg = tvm.runtime.tensor(x)
        for _ in range(args.repeat):
            for name, (_, f) in vms.items():
                rows[name]["ms"].append(f(arg).mean * 1e3)
    base = statistics.median(rows["float (unmodified)"]["ms"])
    print(f"demo model, host target, batch 1, medians of {args.repeat} round-robin rounds "
          f"(TVM_NUM_THREADS={args.threads or 'default'})")
    print(f"{'candidate':28s} {'ms':>8s} {'speedup':>8s} {'ONNX MB':>8s} {'.so MB':>8s} {'top-1':>7s} "
          f"{'int8 layers':>12s}")
    for name, r in rows.items():
        ms = statistics.median(r["ms"])
        print(f"{name:28s} {ms:8.3f} {base / ms:7.2f}x {r['size_mb']:8.4f} {r['deployed_mb']:8.4f} "
              f"{r['top1']:7.3f} {r['int8_layers']:12d}")


if __name__ == "__main__":
    main()
