"""Does measuring over loopback RPC change the number? One model, one run, four ways.

    PYTHONPATH=. python tools/bench_measure.py [--model pfcompile/data/demo.onnx] [--rounds 5]
        [--threads N]

Compiles the model for ``host`` (``pfcompile compile``), then, interleaved
round by round so that machine load hits all alike, all at the same thread count
(``--threads``, default: the artifact's deployment threads, ``model.json``):

- ``tvm in-process``: the same ``model.so`` loaded here (:func:`pfcompile.deploy.load`,
  which sets this process's pool), ``time_evaluator``;
- ``tvm over RPC``: ``LocalRunner`` (a local ``rpc_server``, upload, load, time_evaluator);
- ``pfcompile measure``: the command a user runs (its own process and server, the
  target's measure settings), its ``median_ms``;
- ``onnxruntime``: the source model, default graph optimizations, the same intra-op
  threads (a reference point).

With more than one thread the ``tvm over RPC`` row shares the cores with this
process's own thread pools (TVM's and onnxruntime's, which spin for a while after
each run) and can read up to 2x in rounds that follow them; ``pfcompile measure``
runs alone, as a user runs it (measured 2026-12-05, AMD EPYC 2 vCPU, load 0.8,
demo: in-process 0.155 ms, measure 0.163 ms at 2 threads; 0.278 / 0.277 ms at 1).

Each round gives one median over ``--repeat`` repeats of ``--number`` runs; the
table shows the median, min and max of the round medians, in ms, batch 1, and each
way's ratio to in-process (issue 17: ``pfcompile measure`` within 10 %).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pfcompile.targets import cpu_model


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
    ap.add_argument("--threads", type=int, default=None,
                    help="threads of every way (default: the artifact's deployment threads)")
    args = ap.parse_args()

    import onnxruntime as ort
    import tvm
    from rich.console import Console
    from rich.table import Table

    from pfcompile.data import random_inputs
    from pfcompile.deploy import artifact_threads, load
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

        threads = args.threads or artifact_threads(art) or 1
        dev = tvm.cpu()
        vm = load(art / "model.so", dev, threads=threads)  # pool + load-time step, once
        vm.set_input(*[tvm.runtime.tensor(inputs[s.name], dev) for s in specs])
        ftimer = vm.stateful_timer(dev, number=args.number, repeat=args.repeat, min_repeat_ms=0)
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
        sess = ort.InferenceSession(str(source), so, providers=["CPUExecutionProvider"])

        def measure_cli() -> float:
            env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
            out = subprocess.run([sys.executable, "-m", "pfcompile", "measure", str(art),
                                  "--json", "--threads", str(threads)],
                                 capture_output=True, text=True, timeout=600, env=env,
                                 check=False)
            if out.returncode != 0:
                raise SystemExit(f"pfcompile measure failed: {out.stderr[-2000:]}")
            res = json.loads(out.stdout)
            if res.get("threads") != threads:
                raise SystemExit(f"pfcompile measure ran {res.get('threads')} threads, "
                                 f"not {threads}")
            return float(res["median_ms"])

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
                                        "pfcompile measure": [], "onnxruntime": []}
        verified = []
        loads = []
        with LocalRunner(threads=threads) as runner:
            for _ in range(args.rounds):
                loads.append(float(Path("/proc/loadavg").read_text().split()[0]))
                rows["tvm in-process"].append(
                    statistics.median(x * 1e3 for x in ftimer().results))
                res = runner.run(art, inputs, settings)
                if not res.ok:
                    raise SystemExit(f"RPC run failed: {res.error}")
                if res.threads != threads:
                    raise SystemExit(f"the RPC run had {res.threads} threads, not {threads}")
                rows["tvm over RPC (loopback)"].append(res.median_ms)
                verified.append(verify(res.outputs, ref).verified)
                rows["pfcompile measure"].append(measure_cli())
                rows["onnxruntime"].append(ort_median())

    table = Table(title=f"{args.model.name}, host, batch 1, {threads} thread(s): median of "
                        f"{args.rounds} round medians ({args.repeat} repeats x {args.number} "
                        f"runs each), ms")
    for col in ("how", "median", "min", "max", "/ in-process"):
        table.add_column(col)
    base = statistics.median(rows["tvm in-process"])
    for name, vals in rows.items():
        med = statistics.median(vals)
        table.add_row(name, f"{med:.3f}", f"{min(vals):.3f}", f"{max(vals):.3f}",
                      f"{med / base:.2f}x")
    Console().print(table)
    print(f"CPU: {cpu_model()}; load average before the rounds: "
          f"{', '.join(f'{x:.2f}' for x in loads)}")
    print(f"RPC outputs verified against onnxruntime in {sum(verified)}/{len(verified)} rounds")
    print(f"input shapes: {[(s.name, s.shape) for s in specs]}; "
          f"tvm {tvm.__version__}, onnxruntime {ort.__version__}; "
          f"machine load average now: {Path('/proc/loadavg').read_text().split()[:3]}")


if __name__ == "__main__":
    main()
