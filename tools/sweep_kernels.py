"""Time a model's fused kernels under candidate template parameters, one process,
alternating rounds (what a heuristic rule is decided on).

For each fused kernel of the model whose family is given (and whose key contains
``--match``), the heuristic's params and every candidate of the template's
``space`` that passes ``--filter`` (a Python expression over the params' fields,
e.g. ``"oc_tile in (2, 3, 4) and ow_tile >= 4"``) are built into one library;
``--rounds`` alternating rounds of ``time_evaluator`` (``--number`` calls) each;
per candidate the fastest (``--stat min``, default: robust under load) or median of the rounds, relative to the heuristic.
Output rows are checked against the heuristic's on a seeded input.

    python tools/sweep_kernels.py mobilenet_v2 --family conv2d_1x1 --threads 1 --top 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--input-shape", action="append")
    ap.add_argument("--family", default="conv2d_1x1")
    ap.add_argument("--match", default="", help="substring of the workload key")
    ap.add_argument("--filter", default="True")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--target", default="host")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--number", type=int, default=20)
    ap.add_argument("--top", type=int, default=5)
    ap.add_argument("--stat", choices=("min", "median"), default="min",
                    help="per candidate over rounds (each round: the fastest of 3 x --number "
                         "calls); min is the robust one on a loaded machine")
    ap.add_argument("--max-candidates", type=int, default=40)
    args = ap.parse_args(argv)
    os.environ["TVM_NUM_THREADS"] = str(args.threads)
    import dataclasses

    import tvm
    from bench_vs_ort import cpu_model, resolve_model

    from pfcompile.codegen.kernels import arg_specs
    from pfcompile.codegen.pipeline import fuse_to_tir
    from pfcompile.codegen.templates import Hardware, match
    from pfcompile.compiler import build_primfuncs, import_onnx
    from pfcompile.frontend import import_model
    from pfcompile.model import input_specs
    from pfcompile.targets import load_target

    path, shapes = resolve_model(args.model, args.input_shape)
    # the one import front end (shapes bound, Constant weights lifted, shape sub-graphs
    # folded), as `pfcompile compile` does: PP-OCR's classifier has Shape -> Reshape chains
    proto = import_model(path, shapes)
    specs = input_specs(proto)
    tgt = load_target(args.target)
    hw = Hardware.from_target(tgt)
    mod = fuse_to_tir(import_onnx(proto, specs), tgt)
    seen: set[str] = set()
    dev = tvm.cpu()
    rng = np.random.default_rng(0)
    print(f"# {args.model} {args.family} {args.threads} thread(s), CPU {cpu_model()}, "
          f"load {os.getloadavg()[0]:.2f}")
    for func in mod.functions.values():
        if not isinstance(func, tvm.tirx.PrimFunc):
            continue
        template, wl = match(func)
        if template is None or wl.family != args.family or wl.key in seen or args.match not in wl.key:
            continue
        seen.add(wl.key)
        heur = template.heuristic(wl, hw)
        cands = [heur] + [p for p in template.space(wl, hw) if p != heur and
                          eval(args.filter, {}, dataclasses.asdict(p))]
        cands = cands[: args.max_candidates] + [heur]   # the heuristic again, last: a check
        funcs, kept = [], []
        for p in cands:
            try:
                funcs.append(template.apply(func, wl, p, hw))
                kept.append(p)
            except Exception as exc:  # noqa: BLE001 - a candidate that does not apply
                print(f"  skipped {dataclasses.asdict(p)}: {type(exc).__name__}")
        lib = build_primfuncs(funcs, tgt)
        arrs = [tvm.runtime.tensor(rng.standard_normal(shape).astype(dt), dev)
                for shape, dt in arg_specs(func)]
        ref = None
        times: list[list[float]] = [[] for _ in kept]
        ok = [True] * len(kept)
        for i in range(len(kept)):
            out = tvm.runtime.tensor(np.zeros(arrs[-1].shape, "float32"), dev)
            lib.mod[f"k{i}"](*arrs[:-1], out)
            if ref is None:
                ref = out.numpy()
            else:
                ok[i] = bool(np.allclose(out.numpy(), ref, rtol=1e-4, atol=1e-4))
        for _ in range(args.rounds):
            for i in range(len(kept)):
                f = lib.mod.time_evaluator(f"k{i}", dev, number=args.number, repeat=3)
                times[i].append(min(f(*arrs).results))
        med = [min(t) if args.stat == 'min' else statistics.median(t) for t in times]
        order = sorted(range(len(kept)), key=lambda i: med[i])
        print(f"\n{wl.key}  ({wl.macs / 1e6:.1f} MMAC) heuristic {dataclasses.asdict(heur)}: "
              f"{med[0] * 1e6:.1f} us (again, last: {med[-1] * 1e6:.1f} us)")
        for i in order[: args.top]:
            print(f"  {med[i] * 1e6:8.1f} us {med[i] / med[0]:5.2f}x {'' if ok[i] else 'WRONG '}"
                  f"{dataclasses.asdict(kept[i])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
