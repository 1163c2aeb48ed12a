"""A/B: whole QDQ models with integer conv kernels shared across spatial sizes vs each
size its own kernel (``pfcompile.quantexec.lower._share_spatial``, docs/storage.md).

Both libraries are built in this process from the same model, their outputs compared bit
for bit, and ``main_lifted`` timed in alternating rounds (so that load from other
processes falls on both alike). Prints per model: code bytes of each (the libraries as
``pfcompile compile`` writes them), medians and the shared / own ratio.

  python tools/bench_spatial.py MODEL.onnx [MODEL.onnx ...] [--target host] [--rounds 15]

e.g. the bench_size models (``tools/bench_size.py`` writes them to
``~/.cache/pfcompile/bench_size/models``). Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path
from unittest import mock

import numpy as np
import onnx


def _build(model: onnx.ModelProto, target, shared: bool):
    from pfcompile.compiler import build
    from pfcompile.quantexec import lower

    if shared:
        return build(model, target)[0]
    with mock.patch.object(lower, "_share_spatial", lambda plans, target: None):
        return build(model, target)[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", type=Path)
    ap.add_argument("--target", default="host")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--number", type=int, default=50)
    ap.add_argument("--threads", type=int, default=0, help="default: the target's num-cores")
    args = ap.parse_args()
    import tvm

    from pfcompile import deploy
    from pfcompile.artifact_size import artifact_size
    from pfcompile.compiler import export
    from pfcompile.model import input_specs
    from pfcompile.targets import cpu_model, load_target

    tgt = load_target(args.target)
    la = os.getloadavg()
    print(f"CPU: {cpu_model()}, {os.cpu_count()} cores, load average {la[0]:.2f} {la[1]:.2f} "
          f"{la[2]:.2f}; target {tgt.name}, {args.rounds} rounds x {args.number} runs")
    deploy.set_threads(args.threads or deploy.deployment_threads(tgt))
    print("| model | code own KB | code shared KB | own ms | shared ms | shared / own | equal |")
    print("|---|---|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    for path in args.models:
        model = onnx.load(str(path))
        spec = input_specs(model)[0]
        x = tvm.runtime.tensor(rng.standard_normal(spec.shape).astype(spec.dtype))
        libs, code, fns = {}, {}, {}
        with tempfile.TemporaryDirectory() as tmp:
            for shared in (False, True):
                ex = _build(model, tgt, shared)
                so = export(ex, tgt, Path(tmp) / f"{shared}.so")
                code[shared] = artifact_size(so).code_bytes
                libs[shared] = deploy.prepare(tvm.relax.VirtualMachine(
                    tvm.runtime.load_module(str(so)), tvm.cpu()))
                fns[shared] = libs[shared].time_evaluator(tvm.cpu(), number=args.number,
                                                          repeat=1)
            equal = np.array_equal(libs[False](x).numpy(), libs[True](x).numpy())
            times: dict = {False: [], True: []}
            for _ in range(args.rounds):
                for shared in (False, True):
                    times[shared].append(fns[shared](x).mean * 1e3)
        own, sh = statistics.median(times[False]), statistics.median(times[True])
        print(f"| {path.stem} | {code[False] / 1e3:.1f} | {code[True] / 1e3:.1f} | {own:.3f} | "
              f"{sh:.3f} | {sh / own:.3f} | {equal} |", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
