"""Does measuring over loopback RPC change the number? One model, one run, three ways.

    PYTHONPATH=. python tools/bench_measure.py [--model pfcompile/data/demo.onnx] [--rounds 5]

Compiles the model for ``host`` (``pfcompile compile``), then, interleaved
round by round so that machine load hits all alike:

- ``tvm in-process``: the same ``model.so`` loaded here, ``time_evaluator``;
- ``tvm over RPC``: ``LocalRunner`` (a local ``rpc_server``, upload, load, time_evaluator);
- ``onnxruntime``: the source model, default session options (a reference point).

Each round gives one median over ``--repeat`` repeats of ``--number`` runs; the
table shows the median, min and max of the round medians, in ms, batch 1.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


def compile_host(model_path: Path, out: Path) -> Path:
    """The model compiled for ``host`` (:func:`pfcompile.compiler.compile_model`)."""
    from pfcompile.compiler import compile_model

    return compile_model(model_path, "host", out).dir


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path,
                    default=Path(__file__).resolve().parent.parent / "pfcompile/data/demo.onnx")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--number", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=10)
    args = ap.parse_args()

    import onnxruntime as ort
    import tvm
    from rich.console import Console
    from rich.table import Table

    from pfcompile.data import random_inputs
    from pfcompile.deploy import load
    from pfcompile.measure import read_artifact, reference_outputs, verify
    from pfcompile.runner import LocalRunner
    from pfcompile.targets import MeasureSettings

    settings = MeasureSettings(number=args.number, repeat=args.repeat, min_repeat_ms=0,
                               timeout_s=300)
    with tempfile.TemporaryDirectory(prefix="pfc-bench-") as tmp:
        art = compile_host(args.model, Path(tmp) / "art")
        _, specs, source = read_artifact(art)
        inputs = random_inputs(specs, seed=0)
        ref = reference_outputs(source, inputs)

        dev = tvm.cpu()
        vm = load(art / "model.so", dev)  # the load-time step (compact weights), once
        vm.set_input(*[tvm.runtime.tensor(inputs[s.name], dev) for s in specs])
        ftimer = vm.stateful_timer(dev, number=args.number, repeat=args.repeat, min_repeat_ms=0)
        sess = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"])

        def ort_median() -> float:
            sess.run(None, inputs)
            per = []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                for _ in range(args.number):
                    sess.run(None, inputs)
                per.append((time.perf_counter() - t0) / args.number * 1e3)
            return statistics.median(per)

        rows: dict[str, list[float]] = {"tvm in-process": [], "tvm over RPC (loopback)": [],
                                        "onnxruntime": []}
        verified = []
        with LocalRunner() as runner:
            for _ in range(args.rounds):
                rows["tvm in-process"].append(
                    statistics.median(x * 1e3 for x in ftimer().results))
                res = runner.run(art, inputs, settings)
                if not res.ok:
                    raise SystemExit(f"RPC run failed: {res.error}")
                rows["tvm over RPC (loopback)"].append(res.median_ms)
                verified.append(verify(res.outputs, ref).verified)
                rows["onnxruntime"].append(ort_median())

    table = Table(title=f"{args.model.name}, host, batch 1: median of {args.rounds} round "
                        f"medians ({args.repeat} repeats x {args.number} runs each), ms")
    for col in ("how", "median", "min", "max"):
        table.add_column(col)
    for name, vals in rows.items():
        table.add_row(name, f"{statistics.median(vals):.3f}", f"{min(vals):.3f}",
                      f"{max(vals):.3f}")
    Console().print(table)
    print(f"RPC outputs verified against onnxruntime in {sum(verified)}/{len(verified)} rounds")
    print(f"input shapes: {[(s.name, s.shape) for s in specs]}; "
          f"tvm {tvm.__version__}, onnxruntime {ort.__version__}; "
          f"machine load average now: {Path('/proc/loadavg').read_text().split()[:3]}")


if __name__ == "__main__":
    main()
