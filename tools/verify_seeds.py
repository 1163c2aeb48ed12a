"""Verify compiled artifacts against the reference on several random inputs, not one.

``pfcompile measure`` checks an artifact on one fixed random input (seed 0). A deep
quantized model can fail that check on a float near-tie rather than a kernel error: one
requantised element whose exact value is within float32 rounding of a half step rounds one
way in the integer kernel and the other in the reference's float32 conv, and the one-step
flip spreads through later layers (docs/storage.md, "Integer biases": MobileNetV2 8-bit,
an element at 8.5000006 steps, 2.2 % of the largest logit at the output against measure's
2 %). A kernel error fails on every input; a near-tie on a few. This tool runs
``pfcompile.measure.measure`` with ``seed`` = 0 .. ``--seeds`` - 1 (one timed call each)
and prints, per artifact, how many inputs verify, the largest error of each and the
tolerance.

    PYTHONPATH=. python tools/verify_seeds.py DIR [DIR ...] --target host --seeds 10
    PYTHONPATH=. python tools/verify_seeds.py DIR --target arm64 --seeds 5   # emulated device
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("artifacts", nargs="+", type=Path)
    ap.add_argument("--target", default="host")
    ap.add_argument("--seeds", type=int, default=10)
    args = ap.parse_args()

    from pfcompile.measure import measure, quantized_tolerance, read_artifact, reference_outputs
    from pfcompile.runner import LocalRunner
    from pfcompile.targets import MeasureSettings, load_target

    tgt = load_target(args.target)
    settings = MeasureSettings(number=1, repeat=1, min_repeat_ms=0, timeout_s=600)
    print(f"# target {tgt.name}{' (emulated: functional check)' if tgt.emulated else ''}, "
          f"seeds 0-{args.seeds - 1}, load {os.getloadavg()[0]:.2f}")
    print("| artifact | verified | max abs error per seed | tolerance (seed 0) |")
    print("|---|---|---|---|")
    lrpc = runner = None
    if tgt.is_host:
        runner = LocalRunner(tgt)
    else:
        from pfcompile.device import LocalRPC, default_device_dir

        lrpc = LocalRPC(target=tgt, key=tgt.rpc_key, device_dir=default_device_dir()).__enter__()
    try:
        for art in args.artifacts:
            errs, ok = [], 0
            for seed in range(args.seeds):
                if runner is not None:
                    res = measure(art, tgt, runner=runner, settings=settings, seed=seed)
                else:
                    res = measure(art, tgt, rpc=lrpc.tracker_addr, key=tgt.rpc_key,
                                  settings=settings, seed=seed)
                ok += bool(res["verified"])
                errs.append(res["max_abs_err"])
            _, specs, source = read_artifact(art)
            from pfcompile.data import random_inputs

            tol = quantized_tolerance(source, reference_outputs(source, random_inputs(specs, 0)))
            tol_s = "float rule" if tol is None else f"{tol:.3g}"
            es = " ".join("nan" if e is None else f"{e:.3g}" for e in errs)
            print(f"| {art.name} | {ok}/{args.seeds} | {es} | {tol_s} |", flush=True)
    finally:
        if runner is not None:
            runner.close()
        if lrpc is not None:
            lrpc.__exit__(None, None, None)


if __name__ == "__main__":
    main()
