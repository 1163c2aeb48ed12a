"""Per-layer benchmark: each integer conv kernel vs pfcompile's fp32 kernel for the same layer.

For every distinct conv layer of MobileNetV2 / ResNet-18 (224x224, batch 1) it builds
the integer kernel that :func:`pfcompile.quantexec.kernel_choice.select_conv_kernel` picks
(with the layouts :func:`pfcompile.quantexec.lower_qdq` gives that layer in the network)
and the float kernel pfcompile's code generation makes for ``conv2d + bias + ReLU``,
each on its own, and times them in ONE process in alternating rounds (so that load
from other processes falls on both alike). Prints per-layer min / median and the
int8 / fp32 ratio, and the network total (each layer times its count). Conv layers
only: the float leftovers (residual adds, pooling, quantize) are not in it; use
``tools/bench_int8.py`` for whole models.

  python tools/bench_int8_kernels.py                         # both nets, this CPU's paths
  python tools/bench_int8_kernels.py --nets mobilenet_v2 --targets host-avx2 --rounds 5
  python tools/bench_int8_kernels.py --static                # + each layer's fixed-channel kernel
  python tools/bench_int8_kernels.py --nets resnet18 --targets host-avx2 --threads 2 --winograd

The integer kernels are the ones a compiled model runs: shared across channel counts
(:func:`pfcompile.quantexec.blocked.conv_func` ``shared``), timed with this layer's
arguments. ``--static`` also times the kernel built for this layer's channel counts only
(what every layer had before the sharing) in the same rounds, and prints shared / fixed.
``--winograd`` instead times, for each layer that runs the integer Winograd kernel
(``x86-avx2-wino-pmaddwd``), the direct kernel it replaced, and prints wino / direct.
"""

from __future__ import annotations

import argparse
import os
import statistics
from dataclasses import dataclass

import numpy as np

# (c, hw, oc, k, stride, groups, x_layout, y_layout, y_dtype, count)
B, P = "NCHW8c", "NCHW"
MBV2 = [
    (3, 224, 32, 3, 2, 1, P, B, "uint8", 1),       # stem
    (32, 112, 32, 3, 1, 32, B, B, "uint8", 1),
    (32, 112, 16, 1, 1, 1, B, B, "uint8", 1),
    (16, 112, 96, 1, 1, 1, B, B, "uint8", 1),
    (96, 112, 96, 3, 2, 96, B, B, "uint8", 1),
    (96, 56, 24, 1, 1, 1, B, P, "float32", 1),     # project: float out (residual)
    (24, 56, 144, 1, 1, 1, P, B, "uint8", 2),      # expand after a residual add
    (144, 56, 144, 3, 1, 144, B, B, "uint8", 1),
    (144, 56, 24, 1, 1, 1, B, P, "float32", 1),
    (144, 56, 144, 3, 2, 144, B, B, "uint8", 1),
    (144, 28, 32, 1, 1, 1, B, P, "float32", 1),
    (32, 28, 192, 1, 1, 1, P, B, "uint8", 3),
    (192, 28, 192, 3, 1, 192, B, B, "uint8", 2),
    (192, 28, 32, 1, 1, 1, B, P, "float32", 2),
    (192, 28, 192, 3, 2, 192, B, B, "uint8", 1),
    (192, 14, 64, 1, 1, 1, B, P, "float32", 1),
    (64, 14, 384, 1, 1, 1, P, B, "uint8", 4),
    (384, 14, 384, 3, 1, 384, B, B, "uint8", 4),
    (384, 14, 64, 1, 1, 1, B, P, "float32", 3),
    (384, 14, 96, 1, 1, 1, B, P, "float32", 1),
    (96, 14, 576, 1, 1, 1, P, B, "uint8", 3),
    (576, 14, 576, 3, 1, 576, B, B, "uint8", 2),
    (576, 14, 96, 1, 1, 1, B, P, "float32", 2),
    (576, 14, 576, 3, 2, 576, B, B, "uint8", 1),
    (576, 7, 160, 1, 1, 1, B, P, "float32", 1),
    (160, 7, 960, 1, 1, 1, P, B, "uint8", 3),
    (960, 7, 960, 3, 1, 960, B, B, "uint8", 3),
    (960, 7, 160, 1, 1, 1, B, P, "float32", 2),
    (960, 7, 320, 1, 1, 1, B, B, "uint8", 1),
    (320, 7, 1280, 1, 1, 1, B, P, "float32", 1),
]
RESNET18 = [
    (3, 224, 64, 7, 2, 1, P, B, "uint8", 1),
    (64, 56, 64, 3, 1, 1, B, B, "uint8", 2),       # first conv of a block: input from ReLU(add)
    (64, 56, 64, 3, 1, 1, B, P, "float32", 2),     # second: float out into the residual add
    (64, 56, 128, 3, 2, 1, B, B, "uint8", 1),
    (64, 56, 128, 1, 2, 1, B, P, "float32", 1),
    (128, 28, 128, 3, 1, 1, B, P, "float32", 2),
    (128, 28, 128, 3, 1, 1, B, B, "uint8", 1),
    (128, 28, 256, 3, 2, 1, B, B, "uint8", 1),
    (128, 28, 256, 1, 2, 1, B, P, "float32", 1),
    (256, 14, 256, 3, 1, 1, B, P, "float32", 2),
    (256, 14, 256, 3, 1, 1, B, B, "uint8", 1),
    (256, 14, 512, 3, 2, 1, B, B, "uint8", 1),
    (256, 14, 512, 1, 2, 1, B, P, "float32", 1),
    (512, 7, 512, 3, 1, 1, B, P, "float32", 2),
    (512, 7, 512, 3, 1, 1, B, B, "uint8", 1),
]
NETS = {"mobilenet_v2": MBV2, "resnet18": RESNET18}


@dataclass
class Row:
    layer: str
    count: int
    macs: int
    kernel: str
    fp32: list[float]
    int8: list[float]
    fixed: list[float]


def _spec(layer, blocked: bool):
    from pfcompile.quantexec.kernels import QConvSpec

    c, hw, oc, k, s, g, xl, yl, ydt, _ = layer
    if not blocked:
        xl = yl = "NCHW"
    return QConvSpec(1, c, hw, hw, oc, k, k, (s, s), (k // 2,) * 4, (1, 1), g, "uint8", ydt,
                     3, 0, 0, 255, x_layout=xl, y_layout=yl)


def _fp32_func(layer, target):
    """pfcompile's scheduled float kernel for conv2d + bias + ReLU of this layer."""
    from tvm import relax, tirx

    from pfcompile.codegen.pipeline import fuse_to_tir, schedule_module

    c, hw, oc, k, s, g, *_ = layer
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, c, hw, hw), "float32"))
    rng = np.random.default_rng(0)
    w = relax.const(rng.standard_normal((oc, c // g, k, k)).astype(np.float32))
    b = relax.const(rng.standard_normal((1, oc, 1, 1)).astype(np.float32))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.nn.conv2d(x, w, strides=s, padding=k // 2, groups=g))
            y = bb.emit(relax.op.nn.relu(relax.op.add(y, b)))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    mod = schedule_module(fuse_to_tir(bb.get(), target), target)
    convs = [(gv.name_hint, f) for gv, f in mod.functions.items()
             if isinstance(f, tirx.PrimFunc) and "conv2d" in gv.name_hint]
    if len(convs) != 1:
        raise RuntimeError(f"expected one fused conv kernel, got {[n for n, _ in convs]}")
    return convs[0][1]


def _int8_args(sp, kern) -> list[np.ndarray]:
    """Zero arguments of the shapes a network passes the integer kernel of layer ``sp``
    (its shared kernels take any channel count, so they come from the layer, not the
    function)."""
    from pfcompile.quantexec.kernels import act_shape

    w = np.zeros((sp.oc, sp.c // sp.groups, sp.kh, sp.kw), np.int8)
    ch = np.zeros(sp.oc, np.float32)
    return [np.zeros(act_shape(sp.n, sp.c, sp.h, sp.w, sp.x_layout), sp.x_dtype),
            kern.pack_weight(w), np.zeros(sp.oc, np.int32), ch, ch.copy(),
            np.zeros(act_shape(sp.n, sp.oc, sp.oh, sp.ow, sp.y_layout), sp.y_dtype)]


def _timer(func, target, number: int, arrays: list[np.ndarray] | None = None):
    import tvm

    from pfcompile.codegen.pipeline import build_context

    with build_context():  # as a library ships it (no argument asserts)
        ex = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}),
                         target=target.tvm_target())
    dev = tvm.cpu()
    if arrays is None:
        arrays = [np.zeros([int(v) for v in p.shape], str(p.dtype)) for p in func.params]
    args = [tvm.runtime.tensor(a, dev) for a in arrays]
    fe = ex.mod.time_evaluator("main", dev, number=number, repeat=1)
    return lambda: fe(*args).mean * 1e3


def run(net: str, target_name: str, rounds: int, number: int, blocked: bool = True,
        static: bool = False, winograd: bool = False) -> list[Row]:
    from pfcompile.quantexec import with_int8_features
    from pfcompile.quantexec.kernel_choice import select_conv_kernel
    from pfcompile.quantexec.winograd import WINO_NAME
    from pfcompile.targets import load_target

    target = load_target(target_name)
    t8 = with_int8_features(target)
    rows, timers = [], []
    for layer in NETS[net]:
        sp = _spec(layer, blocked)
        kern = select_conv_kernel(sp, t8)
        fixed = None
        if static:
            fk = select_conv_kernel(sp, t8, shared=False)
            fixed = _timer(fk.func, t8, number, _int8_args(sp, fk))
        elif winograd and kern.name == WINO_NAME:
            fk = select_conv_kernel(sp, t8, winograd=False)
            fixed = _timer(fk.func, t8, number, _int8_args(sp, fk))
        timers.append((_timer(_fp32_func(layer, target), target, number),
                       _timer(kern.func, t8, number, _int8_args(sp, kern)), fixed))
        c, hw, oc, k, s, g, xl, yl, ydt, count = layer
        name = f"{'dw' if g > 1 else 'conv'}{k}x{k}/{s} {c}->{oc} @{hw} {xl}->{yl} {ydt}"
        rows.append(Row(name, count, sp.macs, kern.name, [], [], []))
    for _ in range(rounds):
        for row, (f32, i8, fx) in zip(rows, timers, strict=True):
            row.fp32.append(f32())
            row.int8.append(i8())
            if fx is not None:
                row.fixed.append(fx())
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nets", default="mobilenet_v2,resnet18")
    ap.add_argument("--targets", default="",
                    help="comma-separated (default: host-avx2, plus host-vnni where the CPU has it)")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--number", type=int, default=10, help="runs per timing")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--plain", action="store_true", help="NCHW in and out for every layer")
    ap.add_argument("--static", action="store_true",
                    help="also time each layer's fixed-channel integer kernel (shared / fixed)")
    ap.add_argument("--winograd", action="store_true",
                    help="also time the direct kernel of each integer-Winograd layer "
                         "(wino / direct); not with --static")
    args = ap.parse_args()
    if args.static and args.winograd:
        ap.error("--static and --winograd share a column: pick one")
    os.environ["TVM_NUM_THREADS"] = str(args.threads)
    from pfcompile.targets import load_target

    targets = [t for t in args.targets.split(",") if t] or [
        t for t in ("host-avx2", "host-vnni") if not load_target(t).missing_cpu_features()]
    for tname in targets:
        for net in args.nets.split(","):
            rows = run(net, tname, args.rounds, args.number, not args.plain, args.static,
                       args.winograd)
            try:
                load = os.getloadavg()[0]
            except OSError:
                load = float("nan")
            print(f"\n{net} on {tname}, {args.threads} thread(s), min / median of {args.rounds} "
                  f"alternating rounds of {args.number} runs (ms); load average {load:.1f} on "
                  f"{os.cpu_count()} cores")
            cmp = args.static or args.winograd
            fx_head = (" int8 fixed min | shared/fixed (median) |" if args.static else
                       " int8 direct min | wino/direct (median) |" if args.winograd else "")
            print("| layer | x | int8 kernel | fp32 min | int8 min | int8/fp32 (min) | "
                  "int8/fp32 (median) | int8 GMAC/s |" + fx_head)
            print("|---|---|---|---|---|---|---|---|" + ("---|---|" if cmp else ""))
            tot32 = tot8 = totfx = 0.0
            for r in rows:
                a, b = min(r.fp32), min(r.int8)
                am, bm = statistics.median(r.fp32), statistics.median(r.int8)
                tot32 += r.count * a
                tot8 += r.count * b
                fx = ""
                if r.fixed or (cmp and not args.static):
                    totfx += r.count * (min(r.fixed) if r.fixed else b)
                if r.fixed:
                    fx = (f" {min(r.fixed):.3f} | "
                          f"{statistics.median(r.int8) / statistics.median(r.fixed):.2f} |")
                elif cmp:
                    fx = " - | - |"
                print(f"| {r.layer} | {r.count} | {r.kernel} | {a:.3f} | {b:.3f} | {b / a:.2f} | "
                      f"{bm / am:.2f} | {r.macs / b / 1e6:.1f} |" + fx)
            fx = f" {totfx:.2f} | {tot8 / totfx:.2f} (min) |" if cmp else ""
            print(f"| total (x count) | | | {tot32:.2f} | {tot8:.2f} | {tot8 / tot32:.2f} | | |"
                  + fx)


if __name__ == "__main__":
    main()
