"""Benchmark: is a sparse conv kernel faster than pfcompile's dense one at the
sparsity the sparsify pass gives (unstructured, 1x1 blocks)?

For conv layers of the digits ResNet-20 / MobileNetV2-style models (16x16 input),
this times, on this machine, one kernel each:

- ``dense``: pfcompile's float conv, as the compiler schedules it (the search's
  ``kernel_primfuncs``: blocked layout, template schedule);
- ``csr``: a direct sparse conv of our own (TIR): CSR over the (out channel,
  in channel x kh x kw) weight matrix, one output row at a time, each non-zero a
  broadcast multiply-add over the row (vectorized), parallel over output channels.

It prints dense / csr time per layer and sparsity (> 1: the sparse kernel wins) and
checks the sparse kernel's output against numpy. pfcompile expands sparse weights
at load (dense kernels) unless a sparse kernel wins at the model's sparsity.

  python tools/bench_sparse.py [--threads 2] [--sparsity 0.5,0.75,0.9]
"""

from __future__ import annotations

import argparse
import os
import statistics

import numpy as np

LAYERS = [  # (name, C, O, H(=W), k)
    ("r20 s1 3x3 16->16 @16", 16, 16, 16, 3),
    ("r20 s2 3x3 32->32 @8", 32, 32, 8, 3),
    ("r20 s3 3x3 64->64 @4", 64, 64, 4, 3),
    ("mbv2 1x1 64->384 @4", 64, 384, 4, 1),
    ("mbv2 1x1 384->96 @4", 384, 96, 4, 1),
    ("mbv2 1x1 24->144 @8", 24, 144, 8, 1),
]


def sparse_conv(c: int, o: int, h: int, k: int, nnz: int):
    """CSR direct conv, stride 1, 'same' padding, NCHW batch 1 (TIR)."""
    from tvm.script import tirx as T

    p = k // 2
    hp = h + 2 * p
    kk = k * k

    @T.prim_func
    def spconv(x: T.Buffer((c, h, h), "float32"), rowptr: T.Buffer((o + 1,), "int32"),
               col: T.Buffer((nnz,), "int32"), val: T.Buffer((nnz,), "float32"),
               y: T.Buffer((o, h, h), "float32")):
        T.func_attr({"global_symbol": "spconv", "tir.noalias": True})
        xp = T.decl_buffer((c, hp, hp), "float32")
        for ci in T.parallel(c):
            for i, j in T.grid(hp, hp):
                xp[ci, i, j] = T.if_then_else(
                    p <= i < h + p and p <= j < h + p,
                    x[ci, i - p, j - p], T.float32(0))
        for oc in T.parallel(o):
            acc = T.decl_buffer((h,), "float32", scope="local")
            for i in range(h):
                for j in T.vectorized(h):
                    acc[j] = T.float32(0)
                for e in range(rowptr[oc], rowptr[oc + 1]):
                    for j in T.vectorized(h):
                        acc[j] = acc[j] + val[e] * xp[col[e] // kk, i + col[e] % kk // k,
                                                      j + col[e] % k]
                for j in T.vectorized(h):
                    y[oc, i, j] = acc[j]

    return spconv


def _time(f, args, dev, reps: int = 15) -> float:
    t = f.time_evaluator(f.entry_name, dev, number=50, repeat=1, min_repeat_ms=20)
    return statistics.median(t(*args).mean * 1e3 for _ in range(reps))


def _args(func, dev, arg_specs) -> list:
    """Random float / zero integer buffers for ``func``'s parameters."""
    import tvm

    rng = np.random.default_rng(0)
    out = []
    for shape, dtype in arg_specs(func):
        arr = (rng.standard_normal(shape).astype(dtype) if "float" in dtype
               else np.zeros(shape, dtype=dtype))
        out.append(tvm.runtime.tensor(arr, dev))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--sparsity", default="0.5,0.75,0.9")
    ap.add_argument("--target", default="host")
    args = ap.parse_args()
    os.environ["TVM_NUM_THREADS"] = str(args.threads)
    import tvm

    from pfcompile.codegen.kernels import arg_specs
    from pfcompile.search.devices import kernel_primfuncs
    from pfcompile.search.graph import Kernel
    from pfcompile.targets import load_target

    tgt = load_target(args.target)
    dev = tvm.cpu()
    rng = np.random.default_rng(0)
    print(f"load average {os.getloadavg()[0]:.2f}, target {tgt.name}, {args.threads} thread(s)")
    print("| layer | dense ms | " + " | ".join(f"csr ms @{s} (dense/csr)" for s in args.sparsity.split(","))
          + " |")
    print("|---|---|" + "---|" * len(args.sparsity.split(",")))
    for name, c, o, h, k in LAYERS:
        p = k // 2
        kern = Kernel("conv", (1, c, h, h), (o, c, k, k), (1, o, h, h), (k, k), (1, 1),
                      (p, p, p, p))
        funcs = kernel_primfuncs(kern, tgt)
        lib = tvm.compile(tvm.IRModule({f"k{i}": f.with_attr("global_symbol", f"k{i}")
                                        for i, f in enumerate(funcs)}), target=tgt.tvm_target())
        dense = 0.0
        for i, f in enumerate(funcs):
            bufs = _args(f, dev, arg_specs)
            fk = lib.mod.time_evaluator(f"k{i}", dev, number=50, repeat=1, min_repeat_ms=20)
            dense += statistics.median(fk(*bufs).mean * 1e3 for _ in range(15))
        cells = []
        for s in (float(v) for v in args.sparsity.split(",")):
            w = rng.standard_normal((o, c * k * k)).astype(np.float32)
            w[rng.random(w.shape) < s] = 0
            rowptr = np.concatenate([[0], np.cumsum((w != 0).sum(1))]).astype(np.int32)
            cols = np.nonzero(w)[1].astype(np.int32)
            vals = w[w != 0].astype(np.float32)
            x = rng.standard_normal((c, h, h)).astype(np.float32)
            sp = tvm.compile(tvm.IRModule({"spconv": sparse_conv(c, o, h, k, max(1, vals.size))}),
                             target=tgt.tvm_target())
            y = tvm.runtime.empty((o, h, h), "float32", dev)
            a = [tvm.runtime.tensor(v, dev) for v in (x, rowptr, cols, vals)] + [y]
            sp["spconv"](*a)
            xp = np.pad(x, ((0, 0), (p, p), (p, p)))
            cols4 = np.stack([xp[:, i:i + h, j:j + h] for i in range(k) for j in range(k)], 1)
            ref = np.einsum("ok,khw->ohw", w, cols4.reshape(c * k * k, h, h))
            assert np.allclose(y.numpy(), ref, rtol=1e-4, atol=1e-4), name
            t = sp.mod.time_evaluator("spconv", dev, number=50, repeat=1, min_repeat_ms=20)
            ms = statistics.median(t(*a).mean * 1e3 for _ in range(15))
            cells.append(f"{ms:.4f} ({dense / ms:.2f}x)")
        print(f"| {name} | {dense:.4f} | " + " | ".join(cells) + " |", flush=True)
    print(f"load average after {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
