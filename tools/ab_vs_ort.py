"""In-process A/B: several pfcompile artifacts and onnxruntime, one process, the
same thread count, alternating rounds (each engine in turn, order rotated per
round); per engine the median of round medians and the fastest run, and the
ratio to onnxruntime. For decisions on a loaded machine (load average printed);
the acceptance figure is ``tools/bench_vs_ort.py`` on a quiet machine.

    python tools/ab_vs_ort.py MODEL.onnx out/before out/after --threads 2 --rounds 9
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("onnx", type=Path)
    ap.add_argument("artifacts", nargs="+", type=Path)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--cpu-time", action="store_true",
                    help="time each call by the process's CPU time (one thread: robust to "
                         "other processes' load, which wall time is not)")
    args = ap.parse_args(argv)
    clock = time.process_time if args.cpu_time else time.perf_counter
    os.environ["TVM_NUM_THREADS"] = str(args.threads)
    import json

    import onnxruntime as ort
    import tvm
    from bench_vs_ort import cpu_model
    from tvm import relax

    from pfcompile.deploy import prepare

    dev = tvm.cpu()
    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(args.onnx), so, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    # input shapes as the first artifact was compiled for (dynamic dims fixed there)
    specs = json.loads((args.artifacts[0] / "model.json").read_text())["inputs"]
    xs = [rng.standard_normal(s["shape"]).astype(s["dtype"]) for s in specs]
    feed = {i.name: x for i, x in zip(sess.get_inputs(), xs, strict=True)}
    ref = sess.run(None, feed)[0]
    engines = {"onnxruntime": lambda: sess.run(None, feed)}
    for a in args.artifacts:
        meta = json.loads((a / "model.json").read_text())
        m = prepare(relax.VirtualMachine(tvm.runtime.load_module(str(a / meta.get("library", "model.so"))), dev))
        targs = [tvm.runtime.tensor(x, dev) for x in xs]
        out = m(*targs)
        out = out.numpy() if hasattr(out, "numpy") else out[0].numpy()
        err = float(np.abs(out - ref).max())
        label = f"{a.name}"
        print(f"{label}: max abs diff vs onnxruntime {err:.2e}")
        engines[label] = (lambda m=m, t=targs: m(*t))
    names = list(engines)
    med: dict[str, list[float]] = {n: [] for n in names}
    best: dict[str, float] = dict.fromkeys(names, float("inf"))
    loads = []
    for r in range(args.rounds):
        loads.append(os.getloadavg()[0])
        order = names[r % len(names):] + names[: r % len(names)]
        for n in order:
            f = engines[n]
            for _ in range(3):
                f()
            ts = []
            for _ in range(args.runs):
                t0 = clock()
                f()
                ts.append(clock() - t0)
            med[n].append(statistics.median(ts))
            best[n] = min(best[n], min(ts))
    print(f"# {args.onnx.name}, {args.threads} threads, CPU {cpu_model()}, load "
          f"{min(loads):.2f}-{max(loads):.2f}, {args.rounds} rounds x {args.runs} runs"
          f"{', CPU time' if args.cpu_time else ''}")
    base = statistics.median(med["onnxruntime"])
    bmin = best["onnxruntime"]
    for n in names:
        m = statistics.median(med[n])
        print(f"{n:24s} median {m * 1e3:7.3f} ms  min {best[n] * 1e3:7.3f} ms  "
              f"ratio {m / base:5.2f}x (min {best[n] / bmin:5.2f}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
