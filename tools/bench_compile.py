"""Baseline latency table on host: TVM untuned (plain ``tvm.compile``) vs
onnxruntime vs torch eager, batch 1, medians over repeats, measured side by side
in one run.

    python tools/bench_compile.py [--repeat 5] [--models resnet18,demo]

ResNet-18 is pfcompile.zoo's own definition (224x224, random weights: latency
does not depend on the values). The demo model is pfcompile/data/demo.onnx.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from pfcompile import zoo
from pfcompile.compiler import import_onnx
from pfcompile.model import input_specs, load_onnx
from pfcompile.targets import load_target

ROOT = Path(__file__).resolve().parents[1]


def _median_ms(fn, repeat: int, min_s: float = 0.2) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        n, t0 = 0, time.perf_counter()
        while True:
            fn()
            n += 1
            if time.perf_counter() - t0 >= min_s:
                break
        times.append((time.perf_counter() - t0) / n * 1e3)
    return statistics.median(times)


def bench_tvm_untuned(path: Path, x: np.ndarray, repeat: int) -> float:
    import tvm
    from tvm import relax

    model = load_onnx(path)
    mod = import_onnx(model, input_specs(model))
    ex = tvm.compile(mod, target=load_target("host").tvm_target())
    dev = tvm.cpu()
    vm = relax.VirtualMachine(ex, dev)
    inp = tvm.runtime.tensor(x, dev)
    fe = vm.time_evaluator("main", dev, number=1, repeat=repeat, min_repeat_ms=0)
    return float(np.median(fe(inp).results) * 1e3)


def bench_ort(path: Path, x: np.ndarray, repeat: int) -> float:
    so = ort.SessionOptions()
    so.intra_op_num_threads = os.cpu_count() or 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return _median_ms(lambda: sess.run(None, {name: x}), repeat)


def bench_torch(model: torch.nn.Module, x: np.ndarray, repeat: int) -> float:
    model.eval()
    xt = torch.from_numpy(x)
    with torch.inference_mode():
        return _median_ms(lambda: model(xt), repeat)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--models", default="resnet18,demo")
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            if name == "resnet18":
                torch.manual_seed(0)
                m = zoo.resnet18()
                shape = (1, 3, 224, 224)
                path = zoo.export_onnx(m, Path(tmp) / "resnet18.onnx", shape)
            elif name == "demo":
                path = ROOT / "pfcompile" / "data" / "demo.onnx"
                m = None
                shape = (1, 1, 32, 32)
            else:
                raise SystemExit(f"unknown model {name}")
            x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
            t_tvm = bench_tvm_untuned(path, x, args.repeat)
            t_ort = bench_ort(path, x, args.repeat)
            if m is None:
                from pfcompile.zoo import DemoNet  # demo weights only live in the ONNX file
                m = DemoNet()
            t_torch = bench_torch(m, x, args.repeat)
            rows.append((name, t_tvm, t_ort, t_torch))
            print(f"  measured {name}", flush=True)
    print(f"\nhost: {load_target('host').tvm}, {os.cpu_count()} cores, batch 1, median of "
          f"{args.repeat} repeats (ms)\n")
    hdr = f"| {'model':<10} | {'TVM untuned':>12} | {'onnxruntime':>12} | {'torch eager':>12} | " \
          f"{'TVM/ORT':>8} | {'torch/ORT':>9} |"
    print(hdr)
    print("|" + "|".join("-" * (len(c)) for c in hdr.split("|")[1:-1]) + "|")
    for name, a, b, c in rows:
        print(f"| {name:<10} | {a:12.2f} | {b:12.2f} | {c:12.2f} | {a / b:8.1f} | {c / b:9.2f} |")


if __name__ == "__main__":
    main()
