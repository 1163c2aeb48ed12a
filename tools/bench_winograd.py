"""Direct vs Winograd F(2x2,3x3) vs F(4x4,3x3), per layer and per model, in ONE
process with alternating rounds (ratios, not absolute ms, are the result on a
shared machine). The per-layer table is the evidence behind
:func:`pfcompile.codegen.templates.winograd.heuristic_algorithm`.

Layers: each conv (3x3, stride 1, pad 1, + bias + ReLU, fused as in a model)
built three ways with the templates' heuristic parameters, outputs checked
against torch, timed round-robin (``--rounds`` rounds of ``time_evaluator``),
median per variant, ratio to direct; the column ``heuristic`` says what the
compiler would pick.

Models: a model compiled with Winograd off (``winograd=0``) and with the
per-layer choice (default), run round-robin in this process.

    python tools/bench_winograd.py layers --target host-avx2 --threads 2
    python tools/bench_winograd.py layers --shapes 64,64,56 128,128,28 --threads 1
    python tools/bench_winograd.py models resnet18 --target host-avx2 --threads 2
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

from pfcompile.targets import cpu_model

#: ResNet-18/34 stages, VGG-style, a few small / odd ones (pruned channel counts)
DEFAULT_SHAPES = ["64,64,56", "128,128,28", "256,256,14", "512,512,7", "32,32,56", "16,16,32",
                  "24,24,28", "48,48,28", "96,96,14", "40,40,20", "160,160,10", "384,384,14",
                  "8,8,16"]


def _layer_funcs(cin: int, cout: int, hh: int, hw, tgt):
    import torch
    import tvm
    from tvm import te, topi

    from pfcompile.codegen.layout import channel_chunk
    from pfcompile.codegen.pipeline import channel_block
    from pfcompile.codegen.te_ops import conv2d_nchwc
    from pfcompile.codegen.templates import Conv2dTemplate, WinogradTemplate
    from pfcompile.codegen.templates.winograd import conv2d_winograd_nchwc, transform_weights

    blk = channel_block(hw)
    ib, ob = channel_chunk(cin, blk), channel_chunk(cout, blk)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, cin, hh, hh)).astype("float32")
    w = (rng.standard_normal((cout, cin, 3, 3)) / np.sqrt(9 * cin)).astype("float32")
    bias = rng.standard_normal(cout).astype("float32")
    ref = torch.relu(torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w),
                                                torch.from_numpy(bias), padding=1)).numpy()
    xb = np.ascontiguousarray(x.reshape(1, cin // ib, ib, hh, hh).transpose(0, 1, 3, 4, 2))
    wb = np.ascontiguousarray(w.reshape(cout // ob, ob, cin // ib, ib, 3, 3).transpose(0, 2, 4, 5, 3, 1))
    bb = np.ascontiguousarray(bias.reshape(1, cout // ob, 1, 1, ob))
    d = te.placeholder(xb.shape, name="data")
    b = te.placeholder(bb.shape, name="bias")
    out = {}
    k = te.placeholder(wb.shape, name="w")
    y = topi.nn.relu(conv2d_nchwc(d, k, (1, 1), (1, 1, 1, 1), (1, 1), 1, "float32") + b)
    oshape = [int(v) for v in y.shape]
    out["direct"] = (te.create_prim_func([d, k, b, y]), Conv2dTemplate(), [xb, wb, bb])
    if ib % hw.fp32_lanes == 0 and ob % hw.fp32_lanes == 0:
        for m in (2, 4):
            u = transform_weights(wb, m)
            k = te.placeholder(u.shape, name="u")
            y = topi.nn.relu(conv2d_winograd_nchwc(d, k, (1, 1, 1, 1), m, "float32") + b)
            out[f"F({m}x{m},3x3)"] = (te.create_prim_func([d, k, b, y]), WinogradTemplate(), [xb, u, bb])
    built = {}
    dev = tvm.cpu()
    for name, (f, t, arrs) in out.items():
        wl = t.match(f)
        p = t.heuristic(wl, hw)
        ex = tvm.compile(tvm.IRModule({"main": t.apply(f, wl, p, hw)}), target=tgt.tvm_target())
        args = [tvm.runtime.tensor(a, dev) for a in arrs]
        args.append(tvm.runtime.tensor(np.zeros(oshape, "float32"), dev))
        ex.mod["main"](*args)
        got = args[-1].numpy().transpose(0, 1, 4, 2, 3).reshape(ref.shape)
        err = float(np.abs(got - ref).max() / np.abs(ref).max())
        built[name] = (ex.mod, args, err, p)
    return built


def _time(mod, dev, a: list, args) -> float:
    """ms per call: wall clock (``time_evaluator``) or, with ``--cpu-time``, this
    process's CPU time over ``--number`` calls (one thread: immune to the waits a
    loaded machine adds, which wall clock is not)."""
    if not args.cpu_time:
        fe = mod.time_evaluator("main", dev, number=args.number, repeat=1, min_repeat_ms=20)
        return fe(*a).mean * 1e3
    f = mod["main"]
    f(*a)
    n, t0 = 0, time.process_time()
    while True:
        for _ in range(args.number):
            f(*a)
        n += args.number
        el = time.process_time() - t0
        if el > 0.05:
            return el / n * 1e3


def _time_py(call, args) -> float:
    """ms per call of a Python callable, measured as :func:`_time` does."""
    if not args.cpu_time:
        call()
        t0 = time.perf_counter()
        for _ in range(args.number):
            call()
        return (time.perf_counter() - t0) / args.number * 1e3
    call()
    n, t0 = 0, time.process_time()
    while True:
        for _ in range(args.number):
            call()
        n += args.number
        el = time.process_time() - t0
        if el > 0.05:
            return el / n * 1e3


def layers(args) -> None:
    import tvm

    import pfcompile.codegen  # noqa: F401 - before pfcompile.codegen.templates (import order)
    from pfcompile.codegen.templates import Hardware
    from pfcompile.codegen.templates.winograd import heuristic_algorithm
    from pfcompile.targets import load_target

    tgt = load_target(args.target)
    hw = Hardware.from_target(tgt)
    dev = tvm.cpu()
    print("| cin,cout,hw | direct ms | F(2x2) ms (ratio) | F(4x4) ms (ratio) | max rel err F2/F4 "
          "| best | heuristic |\n|---|---|---|---|---|---|---|", flush=True)
    for spec in args.shapes:
        cin, cout, hh = (int(v) for v in spec.split(","))
        built = _layer_funcs(cin, cout, hh, hw, tgt)
        times: dict[str, list[float]] = {k: [] for k in built}
        for _ in range(args.rounds):
            for name, (mod, a, _e, _p) in built.items():
                times[name].append(_time(mod, dev, a, args))
        med = {k: float(np.median(v)) for k, v in times.items()}
        best = min(med, key=med.get)
        d = {"cin": cin, "cout": cout, "ih": hh, "iw": hh, "kh": 3, "kw": 3, "sh": 1, "sw": 1, "dh": 1,
             "dw": 1, "pt": 1, "pl": 1, "pb": 1, "pr": 1, "groups": 1, "n": 1, "oh": hh, "ow": hh,
             "ib": 0, "ob": 0, "kib": 0}
        from pfcompile.codegen.layout import channel_chunk
        from pfcompile.codegen.pipeline import channel_block

        d["ib"] = d["kib"] = channel_chunk(cin, channel_block(hw))
        d["ob"] = channel_chunk(cout, channel_block(hw))
        h = heuristic_algorithm(d, hw)
        cells = []
        for k in ("F(2x2,3x3)", "F(4x4,3x3)"):
            cells.append(f"{med[k]:.3f} ({med[k] / med['direct']:.2f}x)" if k in med else "-")
        errs = "/".join(f"{built[k][2]:.0e}" for k in built if k != "direct") or "-"
        print(f"| {spec} | {med['direct']:.3f} | {cells[0]} | {cells[1]} | {errs} | {best} "
              f"| {'direct' if h == 0 else f'F({h}x{h},3x3)'} |", flush=True)


def models(args) -> None:
    import tvm
    from bench_vs_ort import resolve_model
    from tvm import relax

    from pfcompile import codegen
    from pfcompile.compiler import import_relax
    from pfcompile.frontend import import_model
    from pfcompile.model import input_specs
    from pfcompile.targets import load_target

    tgt = load_target(args.target)
    dev = tvm.cpu()
    for name in args.models:
        path, shapes = resolve_model(name, args.input_shape)
        model = import_model(path, shapes)     # the compiler's front end
        specs = input_specs(model)
        mod = import_relax(model, specs)
        variants = {"direct only": 0, "per-layer choice": None}
        vms, xs = {}, None
        for label, wino in variants.items():
            t0 = time.perf_counter()
            rep: list = []
            ex = codegen.build(mod, tgt, report=rep, winograd=wino)
            n_wino = sum(r.family == "winograd" for r in rep)
            print(f"{name} {label}: built in {time.perf_counter() - t0:.1f} s, {n_wino} Winograd kernels",
                  flush=True)
            vms[label] = relax.VirtualMachine(ex, dev)
        rng = np.random.default_rng(0)
        xs = [tvm.runtime.tensor(rng.standard_normal(s.shape).astype(s.dtype), dev) for s in specs]
        outs = {k: vm["main"](*xs) for k, vm in vms.items()}
        ref = None
        for k, o in outs.items():
            o = o.numpy() if hasattr(o, "numpy") else o[0].numpy()
            if ref is None:
                ref = o
            print(f"  {k}: max |diff| to direct {np.abs(o - ref).max():.2e}")
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = args.threads
        so.inter_op_num_threads = 1
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        feed = {i.name: x.numpy() for i, x in zip(sess.get_inputs(), xs, strict=True)}
        times: dict[str, list[float]] = {k: [] for k in vms}
        times["onnxruntime"] = []
        for _ in range(args.rounds):
            for k, vm in vms.items():
                times[k].append(_time(vm.module, dev, xs, args))
            times["onnxruntime"].append(_time_py(lambda s=sess, f=feed: s.run(None, f), args))
        base = float(np.median(times["direct only"]))
        for k, v in times.items():
            print(f"  {k}: median {np.median(v):.2f} ms, min {min(v):.2f} ms, "
                  f"ratio {np.median(v) / base:.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("layers", "models"):
        p = sub.add_parser(name)
        p.add_argument("--target", default="host")
        p.add_argument("--threads", type=int, default=2)
        p.add_argument("--rounds", type=int, default=7)
        p.add_argument("--number", type=int, default=5)
        p.add_argument("--cpu-time", action="store_true",
                       help="CPU time instead of wall clock (use with --threads 1 on a busy machine)")
    sub.choices["layers"].add_argument("--shapes", nargs="*", default=DEFAULT_SHAPES)
    sub.choices["models"].add_argument("models", nargs="*", default=["resnet18"])
    sub.choices["models"].add_argument("--input-shape", action="append")
    args = ap.parse_args()
    if "tvm" in sys.modules:
        raise SystemExit("set TVM_NUM_THREADS before importing tvm")
    os.environ["TVM_NUM_THREADS"] = str(args.threads)  # read when TVM's thread pool starts
    print(f"CPU: {cpu_model()}; load average {os.getloadavg()[0]:.2f}; threads {args.threads}; "
          f"target {args.target}", flush=True)
    {"layers": layers, "models": models}[args.cmd](args)
    print(f"load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
