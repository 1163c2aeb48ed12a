"""The fused integer depthwise -> 1x1 kernel (``pfcompile.quantexec.dwpw``) against the
unfused pair (the depthwise kernel, then the 1x1 kernel), on MobileNetV2's pair shapes.

One process, alternating rounds, ``TVM_NUM_THREADS`` threads; prints per shape the min of
the rounds for the unfused pair (dw + pw) and each fused variant (rows per task, depthwise
columns per tile, the 1x1 register tile), with the CPU and the load average.

    python tools/bench_int8_dwpw.py --target host-avx2 --rounds 9 --number 20
    python tools/bench_int8_dwpw.py --target host --shapes 0,2 --variants default
"""

from __future__ import annotations

import argparse
import os

import numpy as np

#: (channels, input size, stride, 1x1 outputs) of MobileNetV2's depthwise -> 1x1 pairs
#: at 224x224 with at least 14 output rows (how often each occurs)
SHAPES = [(32, 112, 1, 16, 1), (96, 112, 2, 24, 1), (144, 56, 1, 24, 1), (144, 56, 2, 32, 1),
          (192, 28, 1, 32, 2), (192, 28, 2, 64, 1), (384, 14, 1, 64, 3), (384, 14, 1, 96, 1),
          (576, 14, 1, 96, 2)]


def _specs(c: int, hw: int, s: int, oc: int):
    from pfcompile.quantexec.kernels import QConvSpec

    b = "NCHW8c"
    d = QConvSpec(n=1, c=c, h=hw, w=hw, oc=c, kh=3, kw=3, stride=(s, s), padding=(1, 1, 1, 1),
                  dilation=(1, 1), groups=c, x_dtype="uint8", y_dtype="uint8", zx=3, zy=0,
                  qmin=0, qmax=255, x_layout=b, y_layout=b)
    p = QConvSpec(n=1, c=c, h=d.oh, w=d.ow, oc=oc, kh=1, kw=1, stride=(1, 1),
                  padding=(0, 0, 0, 0), dilation=(1, 1), groups=1, x_dtype="uint8",
                  y_dtype="uint8", zx=0, zy=128, qmin=0, qmax=255, x_layout=b, y_layout=b)
    return d, p


def _timer(func, target, number: int):
    import tvm

    from pfcompile.codegen.pipeline import build_context

    with build_context():
        ex = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}),
                         target=target.tvm_target())
    dev = tvm.cpu()
    args = [tvm.runtime.tensor(np.zeros([int(v) for v in p.shape], str(p.dtype)), dev)
            for p in func.params]
    fe = ex.mod.time_evaluator("main", dev, number=number, repeat=1)
    return lambda: fe(*args).mean * 1e6


VARIANTS = {"default": {}, "group": {"group": True}, "nogroup": {"group": False},
            "group_rows2": {"group": True, "rows": 2}, "group_dw4": {"group": True, "dw_tile": 4},
            "group_pw4x2": {"group": True, "tile_ow": 4, "tile_oc": 2},
            "rows1": {"rows": 1}, "rows2": {"rows": 2}, "rows4": {"rows": 4},
            "dw4": {"dw_tile": 4}, "pw4x2": {"tile_ow": 4, "tile_oc": 2},
            "pw2x3": {"tile_ow": 2, "tile_oc": 3}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", default="host-avx2")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--number", type=int, default=20)
    ap.add_argument("--shapes", default="", help="indices into SHAPES, comma-separated")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    args = ap.parse_args()
    from pfcompile.quantexec import dwpw, with_int8_features, x86
    from pfcompile.quantexec.blocked import conv_func, depthwise_func
    from pfcompile.targets import cpu_model, load_target

    target = with_int8_features(load_target(args.target))
    isa = x86.VNNI if x86.has_vnni(target) else x86.AVX2
    idx = [int(i) for i in args.shapes.split(",")] if args.shapes else range(len(SHAPES))
    la = os.getloadavg()
    print(f"CPU: {cpu_model()}, load average {la[0]:.2f}; {args.target} ({isa.conv_name}), "
          f"TVM_NUM_THREADS={os.environ.get('TVM_NUM_THREADS', 'default')}, min of "
          f"{args.rounds} rounds x {args.number} runs, us")
    names = [v for v in args.variants.split(",") if v]
    print("| dw c @ hw / s -> oc | n | dw | pw | dw + pw | " + " | ".join(names) + " |")
    print("|---" * (5 + len(names)) + "|")
    for k in idx:
        c, hw, s, oc, count = SHAPES[k]
        d, p = _specs(c, hw, s, oc)
        timers = {"dw": _timer(depthwise_func(d, isa), target, args.number),
                  "pw": _timer(conv_func(p, isa), target, args.number)}
        for v in names:
            timers[v] = _timer(dwpw.dwpw_func(d, p, isa, **VARIANTS[v]), target, args.number)
        best = {n: float("inf") for n in timers}
        for r in range(args.rounds):
            order = list(timers) if r % 2 == 0 else list(reversed(timers))
            for n in order:
                best[n] = min(best[n], timers[n]())
        pair = best["dw"] + best["pw"]
        cells = " | ".join(f"{best[v]:.1f} ({best[v] / pair:.2f})" for v in names)
        print(f"| dw{c} @{hw}/{s} -> {oc} | {count} | {best['dw']:.1f} | {best['pw']:.1f} | "
              f"{pair:.1f} | {cells} |", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
