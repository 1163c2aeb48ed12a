"""Benchmark: fp32 pfcompile vs int8 pfcompile vs onnxruntime fp32 vs onnxruntime QDQ int8.

One run on the host, batch 1, medians over repeats; the four engines run round-robin
(one inference each per round) in the same process, so load from other processes
falls on all of them alike. QDQ models come from pfcompile's own quantize pass
(``--quantizer pfcompile``, the product path: per-channel s8 weights, u8 layer
inputs, float layer outputs unless the next layer quantizes them) or from
onnxruntime's static quantiser (``--quantizer ort``, which also quantizes Add
outputs), calibrated on random inputs (the demo model: its calibration set); the
zoo models have random weights (speed, not accuracy, is measured here). Both
onnxruntime columns use its default session options. Also prints the largest
difference between the int8 pfcompile output and onnxruntime running the same QDQ
graph as written (``pfcompile.passes.qlayers.ort_session``), relative to the
output range.

  python tools/bench_int8.py                       # demo, resnet18, mobilenet_v2
  python tools/bench_int8.py --models demo --repeat 20
  python tools/bench_int8.py --models resnet18 --threads 1 --int8-dot avx512-vnni
  python tools/bench_int8.py --quantizer ort        # onnxruntime's quantiser instead
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import tvm

from pfcompile.compiler import build
from pfcompile.passes.ort_quantize import ort_quantize_qdq
from pfcompile.targets import load_target

CACHE = Path(os.environ.get("PFCOMPILE_CACHE", Path.home() / ".cache" / "pfcompile")) / "bench_int8"


def _fp32_model(name: str) -> tuple[Path, tuple[int, ...]]:
    if name == "demo":
        return Path("pfcompile/data/demo.onnx"), (1, 1, 32, 32)
    import torch

    from pfcompile import zoo

    shape = (1, 3, 224, 224)
    path = CACHE / f"{name}.onnx"
    if not path.exists():
        torch.manual_seed(0)
        net = {"resnet18": zoo.resnet18, "mobilenet_v2": zoo.mobilenet_v2}[name]()
        zoo.export_onnx(net, path, shape)
    return path, shape


def _qdq_model(name: str, fp32: Path, shape: tuple[int, ...], quantizer: str) -> Path:
    path = CACHE / f"{name}_{quantizer}_qdq.onnx"
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        calib = np.random.default_rng(0).standard_normal((8, *shape[1:])).astype(np.float32)
        if quantizer == "ort":
            ort_quantize_qdq(fp32, path, calib)
        else:
            from pfcompile.data import Dataset, load_npz
            from pfcompile.model import input_specs, load_onnx
            from pfcompile.passes.qlayers import as_proto
            from pfcompile.passes.quantize import QuantConfig, quantize

            m = load_onnx(fp32)
            specs = input_specs(m)
            if name == "demo":
                ds = load_npz("pfcompile/data/demo_calib.npz", specs)
            else:
                ds = Dataset({specs[0].name: calib}, None)
            onnx.save(as_proto(quantize(m, QuantConfig(bits=8), ds).model), path)
    return path


def _tvm_runner(ex, x: np.ndarray):
    dev = tvm.cpu()
    from pfcompile.deploy import prepare

    f = prepare(tvm.relax.VirtualMachine(ex, dev))  # compact weights decoded once, here
    arg = tvm.runtime.tensor(x, dev)
    return lambda: f(arg).numpy()


def _ort_runner(path: Path, x: np.ndarray, threads: int):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return lambda: sess.run(None, {name: x})[0]


def _round_robin(runners: list, repeat: int) -> tuple[list[float], list[np.ndarray]]:
    """One warm-up each, then ``repeat`` rounds running every engine once per round,
    so that load from other processes falls on all engines alike; medians in ms."""
    outs = [r() for r in runners]
    times: list[list[float]] = [[] for _ in runners]
    for _ in range(repeat):
        for i, r in enumerate(runners):
            t0 = time.perf_counter()
            r()
            times[i].append((time.perf_counter() - t0) * 1e3)
    return [statistics.median(t) for t in times], outs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="demo,resnet18,mobilenet_v2")
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--target", default="host")
    ap.add_argument("--quantizer", choices=("pfcompile", "ort"), default="pfcompile",
                    help="who writes the QDQ model (default: pfcompile's quantize pass)")
    ap.add_argument("--threads", type=int, default=0,
                    help="threads for TVM and onnxruntime (default: the target's num-cores)")
    ap.add_argument("--int8-dot", default="",
                    help="override the target's hardware.int8_dot (avx2 | avx-vnni | avx512-vnni)")
    args = ap.parse_args()
    target = load_target(args.target)
    if args.int8_dot:
        target = replace(target, hardware={**target.hardware, "int8_dot": args.int8_dot})
    threads = args.threads or int(target.tvm.get("num-cores", os.cpu_count() or 1))
    os.environ["TVM_NUM_THREADS"] = str(threads)  # read when TVM's thread pool first starts
    rows = []
    for name in args.models.split(","):
        fp32, shape = _fp32_model(name)
        qdq = _qdq_model(name, fp32, shape, args.quantizer)
        x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
        t0 = time.perf_counter()
        # pfcompile's float path: codegen schedule templates (heuristic, plus any records)
        ex32, _ = build(onnx.load(str(fp32)), target, integer=False)
        c32 = time.perf_counter() - t0
        t0 = time.perf_counter()
        qmodel = onnx.load(str(qdq))
        ex8, reports = build(qmodel, target)
        c8 = time.perf_counter() - t0
        n_int = sum(r.path == "int8" for r in reports)
        kernels = sorted({r.kernel for r in reports if r.kernel})
        runners = [_tvm_runner(ex32, x), _tvm_runner(ex8, x), _ort_runner(fp32, x, threads),
                   _ort_runner(qdq, x, threads)]
        (t_tvm32, t_tvm8, t_ort32, t_ort8), (_, y8, _, _) = _round_robin(runners, args.repeat)
        from pfcompile.passes.qlayers import ort_session

        sess = ort_session(qmodel)
        yref = sess.run(None, {sess.get_inputs()[0].name: x})[0]
        steps = float(np.abs(y8 - yref).max() / np.ptp(yref))
        rows.append((name, t_tvm32, t_tvm8, t_ort32, t_ort8, n_int, len(reports), steps, c32, c8))
        print(f"# {name}: compiled fp32 in {c32:.0f} s, int8 in {c8:.0f} s; "
              f"{n_int}/{len(reports)} layers integer ({', '.join(kernels)})", flush=True)
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = float("nan")
    print(f"\nhost {target.tvm.get('mcpu')} (int8_dot={target.hardware.get('int8_dot')}), "
          f"{threads} threads, batch 1, median of {args.repeat} round-robin rounds (ms); "
          f"load average {load:.1f} on {os.cpu_count()} cores; QDQ by {args.quantizer}")
    hdr = ("model", "pfc fp32", "pfc int8", "ort fp32", "ort qdq", "int8/fp32", "int8/ort32",
           "int layers", "max |diff| / range vs ort as written")
    print("| " + " | ".join(hdr) + " |")
    print("|" + "---|" * len(hdr))
    for name, a, b, c, d, ni, nl, st, _, _ in rows:
        print(f"| {name} | {a:.2f} | {b:.2f} | {c:.2f} | {d:.2f} | {b / a:.3f} | {b / c:.2f} | "
              f"{ni}/{nl} | {st:.1e} |")


if __name__ == "__main__":
    main()
