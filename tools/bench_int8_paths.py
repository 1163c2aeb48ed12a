"""Benchmark: an int8 model through the integer pipeline vs through pfcompile's float code
generation, with the integer kernels marked scheduled the way TVM 0.27 reads it
(``tirx.is_scheduled``) and the old way (``tir.is_scheduled``, which 0.27 ignores).

With the old name the code generation did not see that the integer kernels were
scheduled already and matched its own templates against them; this shows what that
cost. One process, the variants built once and timed round-robin (``time_evaluator``,
``--rounds`` rounds), so load from other processes falls on all alike; medians.

  python tools/bench_int8_paths.py                     # demo, this machine's int8 path
  python tools/bench_int8_paths.py --target host-avx2 --threads 2 --rounds 9
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
from pathlib import Path

import numpy as np
import onnx
import tvm

from pfcompile import codegen
from pfcompile.compiler import import_onnx
from pfcompile.deploy import prepare
from pfcompile.passes.ort_quantize import ort_quantize_qdq
from pfcompile.paths import demo_paths
from pfcompile.quantexec import int8_pipeline, lower_qdq, onnx_layer_names, with_int8_features
from pfcompile.quantexec.onnx_prep import prepare_qdq
from pfcompile.targets import load_target


def _rename_attr(mod: tvm.IRModule, old: str, new: str) -> tvm.IRModule:
    out = tvm.IRModule(dict(mod.functions), attrs=mod.attrs)
    for gv, func in mod.functions.items():
        if isinstance(func, tvm.tirx.PrimFunc) and func.attrs is not None and old in func.attrs:
            out[gv] = func.without_attr(old).with_attr(new, True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default="host")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    os.environ["TVM_NUM_THREADS"] = str(args.threads)
    target = with_int8_features(load_target(args.target))
    demo, _val, calib_npz = demo_paths()
    with tempfile.TemporaryDirectory() as tmp:
        calib = np.load(calib_npz)["x"][:32]
        qdq = onnx.load(str(ort_quantize_qdq(str(demo), Path(tmp) / "demo_qdq.onnx", calib)))
    model, _ = prepare_qdq(qdq)
    lowered, reports = lower_qdq(import_onnx(model), target, onnx_layer_names(model))
    n_int = sum(r.path == "int8" for r in reports)
    variants = {
        "integer pipeline": tvm.compile(lowered, target=target.tvm_target(),
                                        relax_pipeline=int8_pipeline(target.tvm_target())),
        "codegen, tirx.is_scheduled (now)": codegen.build(lowered, target),
        "codegen, tir.is_scheduled (before)": codegen.build(
            _rename_attr(lowered, "tirx.is_scheduled", "tir.is_scheduled"), target),
    }
    dev = tvm.cpu()
    x = tvm.runtime.tensor(np.load(calib_npz)["x"][:1].astype(np.float32), dev)
    outs, timers = {}, {}
    for name, ex in variants.items():
        vm = prepare(tvm.relax.VirtualMachine(ex, dev))  # compact weights decoded once, here
        outs[name] = vm(x).numpy()
        timers[name] = vm.time_evaluator(dev, number=20, repeat=1, min_repeat_ms=50)
    ms: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(args.rounds):
        for name, t in timers.items():
            ms[name].append(t(x).mean * 1e3)
    ref = outs["integer pipeline"]
    load = os.getloadavg()
    print(f"demo int8 ({n_int}/{len(reports)} layers integer), target {target.name} "
          f"(int8 {target.hardware.get('int8_dot')}), {args.threads} TVM threads, "
          f"{platform.processor() or platform.machine()}, load {load[0]:.2f} {load[1]:.2f}")
    print("| build path | median ms | min ms | vs integer pipeline | max abs diff |")
    print("|---|---|---|---|---|")
    base = statistics.median(ms["integer pipeline"])
    for name in variants:
        med = statistics.median(ms[name])
        diff = float(np.abs(outs[name] - ref).max())
        print(f"| {name} | {med:.3f} | {min(ms[name]):.3f} | {med / base:.2f}x | {diff:.2e} |")


if __name__ == "__main__":
    main()
