"""A/B: the latency of compiled artifacts of the same models, before and after a change.

Each pair of artifact folders (``pfcompile compile`` output: ``model.so`` + ``model.json``,
e.g. ``tools/bench_size.py``'s ``before/`` and ``after/`` folders) is loaded in this
process, both are run on the same random input (outputs compared: max abs difference) and
the lifted model (``pfcompile.deploy.load``) is timed in alternating rounds (each round
the other one first), so that load from other processes falls on both alike. Prints per pair: the deployed bytes, the medians
and after / before, and the minima (on a loaded machine the min is the steadier figure).

  python tools/bench_ab.py BEFORE_DIR AFTER_DIR [BEFORE_DIR AFTER_DIR ...] [--rounds 15]
  python tools/bench_ab.py --pairs ROOT_BEFORE ROOT_AFTER   # every sub-folder in both

Host artifacts only. Run it on a quiet machine (and say which CPU: it prints it).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dirs", nargs="*", type=Path)
    ap.add_argument("--pairs", nargs=2, type=Path, default=None,
                    help="two roots: the sub-folders present in both, matched by name")
    ap.add_argument("--match", default="_host", help="with --pairs: sub-folders containing this")
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--number", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    import tvm

    from pfcompile import deploy
    from pfcompile.artifact_size import artifact_size
    from pfcompile.targets import cpu_model

    pairs = list(zip(args.dirs[0::2], args.dirs[1::2], strict=False))
    if args.pairs is not None:
        a, b = args.pairs
        pairs += [(a / d.name, d) for d in sorted(b.iterdir())
                  if args.match in d.name and (a / d.name / "model.so").exists()
                  and (d / "model.so").exists()]
    la = os.getloadavg()
    print(f"CPU: {cpu_model()}, {os.cpu_count()} cores, load average {la[0]:.2f} {la[1]:.2f} "
          f"{la[2]:.2f}; {args.threads} thread(s), {args.rounds} rounds x {args.number} runs")
    print("| artifact | before KB | after KB | before ms | after ms | after / before "
          "| before min | after min | min ratio | max abs diff |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    dev = tvm.cpu()
    for before, after in pairs:
        models = [deploy.load(d, threads=args.threads) for d in (before, after)]
        meta = json.loads((before / "model.json").read_text())
        spec = meta["inputs"][0]
        shape = tuple(int(s) for s in spec["shape"])
        x = tvm.runtime.tensor(rng.standard_normal(shape).astype(spec.get("dtype", "float32")), dev)
        outs = [m(x).numpy() for m in models]
        diff = float(np.max(np.abs(outs[0].astype(np.float64) - outs[1])))
        fns = [m.time_evaluator(dev, number=args.number, repeat=1) for m in models]
        times: list[list[float]] = [[], []]
        for r in range(args.rounds):  # alternate which goes first: no order bias
            for k in ((0, 1) if r % 2 == 0 else (1, 0)):
                times[k].append(fns[k](x).mean * 1e3)
        b_ms, a_ms = statistics.median(times[0]), statistics.median(times[1])
        kb = [artifact_size(d).size_bytes / 1e3 for d in (before, after)]
        b_min, a_min = min(times[0]), min(times[1])
        print(f"| {after.name} | {kb[0]:.1f} | {kb[1]:.1f} | {b_ms:.3f} | {a_ms:.3f} | "
              f"{a_ms / b_ms:.3f} | {b_min:.3f} | {a_min:.3f} | {a_min / b_min:.3f} | {diff:.3g} |",
              flush=True)
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
