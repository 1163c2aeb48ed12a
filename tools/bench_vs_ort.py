"""pfcompile against onnxruntime, measured fairly (issue 17's protocol).

Each engine runs in its own long-lived worker process at the same thread count:

- **pfcompile**: the compiled artifact's ``model.so`` loaded with
  ``tvm.runtime.load_module`` and run by a Relax VM through
  ``pfcompile.deploy.prepare`` (the README's loader: compactly stored weights
  decoded once at load, not on every call); the worker's environment
  sets ``TVM_NUM_THREADS=N`` (read when TVM's thread pool starts), and the
  worker reports the pool size TVM actually uses (``runtime.NumThreads``).
- **onnxruntime**: an ``InferenceSession`` on the ONNX file as the user would
  run it (default graph optimizations, CPU provider), ``intra_op_num_threads=N``,
  ``inter_op_num_threads=1``.

Both get the same seeded input; their first outputs are compared (a wrong
kernel is not a fast one). Then ``--rounds`` rounds (>= 3) alternate the two
engines (pf, ort / ort, pf / ...); in each round a worker runs ``--warmup``
untimed calls and ``--runs`` timed calls (``time.perf_counter`` around the call,
the same for both) and the round's median is kept. Per engine the table gives
the median of the round medians and the fastest single run (min); the ratio is
pfcompile / onnxruntime (< 1: pfcompile faster).

Before each round nothing runs for ``--pause`` seconds; the 1-minute load
average is read then, and so is the CPU time the rest of the machine used
during the pause (``/proc/stat``, in cores). A model whose load average before
any round exceeded ``--max-load`` (default 1.5) gets no ratio: the cell reads
``refused (load X)`` unless ``--under-load`` is given, which prints the ratio
marked ``under load``. Rounds are short (seconds), so the benchmark's own
contribution to the 1-minute average stays small (a 4 s burst of 2 threads adds
about 0.13).

Models: ``resnet18`` and ``mobilenet_v2`` (``pfcompile.zoo``, 224x224, exported
once into the cache), any name of the real-model suite (``pfcompile.realmodels``
where that module exists: ``ppocr_cls``, ``ppocr_rec``, ``mobilenetv3_dynamo``,
``attention_dynamo``, ...) or any ONNX path (``--input-shape name:1x3x48x192``
fixes dynamic dims).

    python tools/bench_vs_ort.py resnet18 mobilenet_v2 ppocr_cls ppocr_rec --threads 2
    python tools/bench_vs_ort.py model.onnx --input-shape x:1x3x48x192 --rounds 5 --runs 100
    python tools/bench_vs_ort.py resnet18 --artifact out/resnet18   # an existing artifact

Other tools import :func:`bench_model`, :func:`resolve_model`,
:func:`compile_for_bench` and :func:`render` (``tools/`` is on ``sys.path`` for a
script run from it).
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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pfcompile.targets import cpu_model

__all__ = [
    "BenchRow",
    "EngineStats",
    "bench_model",
    "compile_for_bench",
    "cpu_model",
    "render",
    "resolve_model",
]

ZOO_MODELS = ("resnet18", "mobilenet_v2")
ENGINES = ("pfcompile", "onnxruntime")


def cache_dir() -> Path:
    base = os.environ.get("PFCOMPILE_CACHE") or str(Path.home() / ".cache" / "pfcompile")
    return Path(base) / "bench_vs_ort"


def _cpu_times() -> tuple[float, float]:
    """(busy, total) jiffies over all CPUs from /proc/stat (zeros where absent)."""
    try:
        vals = [float(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0.0, 0.0
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0.0)
    return sum(vals) - idle, sum(vals)


def quiet_check(pause_s: float) -> tuple[float, float]:
    """Sleep ``pause_s`` with nothing of ours running; (1-min load average,
    cores the rest of the machine kept busy during the pause)."""
    b0, t0 = _cpu_times()
    time.sleep(pause_s)
    b1, t1 = _cpu_times()
    ncpu = os.cpu_count() or 1
    busy = (b1 - b0) / (t1 - t0) * ncpu if t1 > t0 else float("nan")
    return os.getloadavg()[0], busy


# ----------------------------------------------------------------------------- models
def resolve_model(name: str, input_shape: list[str] | None = None) -> tuple[Path, dict | None]:
    """(ONNX path, input shapes or None) for a zoo name, a suite name or a path."""
    shapes = _parse_shapes(input_shape)
    p = Path(name)
    if p.suffix == ".onnx" or p.exists():
        if not p.exists():
            raise SystemExit(f"{name}: no such ONNX file")
        return p, shapes
    if name in ZOO_MODELS:
        path = cache_dir() / f"{name}.onnx"
        if not path.exists():
            import torch

            from pfcompile import zoo

            torch.manual_seed(0)
            zoo.export_onnx(getattr(zoo, name)().eval(), path, (1, 3, 224, 224))
        return path, shapes
    try:
        from pfcompile import realmodels  # type: ignore[attr-defined]
    except ImportError as exc:
        raise SystemExit(f"{name}: not a zoo model ({', '.join(ZOO_MODELS)}), not an ONNX path, "
                         "and this checkout has no real-model suite (pfcompile.realmodels)") from exc
    sm = realmodels.suite_model(name)
    path = realmodels.fetch(name)
    return Path(path), shapes or {sm.input_name: tuple(sm.input_shape)}


def _parse_shapes(specs: list[str] | None) -> dict | None:
    if not specs:
        return None
    out = {}
    for s in specs:
        n, _, dims = s.rpartition(":")
        out[n] = tuple(int(v) for v in dims.lower().split("x"))
    return out


def compile_for_bench(onnx_path: Path, target: str, out_dir: Path,
                      input_shapes: dict | None = None) -> Path:
    """``pfcompile compile`` (the library call) into ``out_dir``; returns it."""
    from pfcompile.compiler import compile_model

    compile_model(onnx_path, target, out_dir, input_shapes)
    return out_dir


# ----------------------------------------------------------------------------- workers
def _worker(engine: str, model: str, inputs_npz: str, out_npz: str, threads: int) -> None:
    """Worker loop: load, run once (outputs to ``out_npz``), then one JSON line per
    ``round RUNS WARMUP`` command read from stdin."""
    data = dict(np.load(inputs_npz))
    names = sorted(data, key=lambda k: int(k.split("_", 1)[0]))
    xs = [data[k] for k in names]
    info: dict = {"engine": engine}
    if engine == "pfcompile":
        import tvm
        from tvm import relax

        meta = json.loads((Path(model) / "model.json").read_text())
        lib = tvm.runtime.load_module(str(Path(model) / meta.get("library", "model.so")))
        dev = tvm.cpu()
        from pfcompile.deploy import prepare

        # as deployed (README's loader): weights stored compactly are decoded once,
        # here, not on every call as the library's plain ``main`` does
        model_fn = prepare(relax.VirtualMachine(lib, dev))
        args = [tvm.runtime.tensor(x, dev) for x in xs]

        def call():
            return model_fn(*args)

        def flat(v) -> list[np.ndarray]:
            if hasattr(v, "numpy"):
                return [v.numpy()]
            return [a for item in v for a in flat(item)]

        outs = flat(call())
        info["threads"] = int(tvm.get_global_func("runtime.NumThreads")())
    else:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
        feed = {i.name: x for i, x in zip(sess.get_inputs(), xs, strict=True)}

        def call():
            return sess.run(None, feed)

        outs = list(call())
        info["threads"] = threads
        info["version"] = ort.__version__
    np.savez(out_npz, *outs)
    print(json.dumps({"ready": True, **info}), flush=True)
    for line in sys.stdin:
        cmd = line.split()
        if not cmd or cmd[0] == "quit":
            break
        runs, warmup = int(cmd[1]), int(cmd[2])
        for _ in range(warmup):
            call()
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            call()
            times.append((time.perf_counter() - t0) * 1e3)
        print(json.dumps({"times_ms": times}), flush=True)


class _Worker:
    def __init__(self, engine: str, model: str, inputs_npz: Path, out_npz: Path, threads: int,
                 timeout_s: float) -> None:
        env = dict(os.environ, TVM_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
        self.engine, self.timeout_s = engine, timeout_s
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--worker", engine, "--worker-model",
             model, "--worker-inputs", str(inputs_npz), "--worker-out", str(out_npz),
             "--threads", str(threads)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self.info = self._read()

    def _read(self) -> dict:
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if not line:
            self.proc.wait(timeout=self.timeout_s)
            raise RuntimeError(f"{self.engine} worker ended (exit {self.proc.returncode}); "
                               "its error is printed above")
        return json.loads(line)

    def round(self, runs: int, warmup: int) -> list[float]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"round {runs} {warmup}\n")
        self.proc.stdin.flush()
        return self._read()["times_ms"]

    def close(self) -> None:
        if self.proc.poll() is None and self.proc.stdin is not None:
            try:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()


# ----------------------------------------------------------------------------- protocol
@dataclass
class EngineStats:
    round_medians: list[float] = field(default_factory=list)
    best: float = float("inf")
    threads: int = 0

    @property
    def median(self) -> float:
        return statistics.median(self.round_medians) if self.round_medians else float("nan")


@dataclass
class BenchRow:
    model: str
    threads: int
    rounds: int
    runs: int
    engines: dict[str, EngineStats]
    loads: list[float]              # 1-min load average before each round
    busy: list[float]               # cores the rest of the machine used in each pause
    max_err: float                  # max |pf - ort| / max |ort| over all outputs
    max_load: float

    @property
    def loaded(self) -> bool:
        return any(v > self.max_load for v in self.loads)

    @property
    def ratio(self) -> float:
        return self.engines["pfcompile"].median / self.engines["onnxruntime"].median

    @property
    def ratio_min(self) -> float:
        return self.engines["pfcompile"].best / self.engines["onnxruntime"].best

    def to_json(self) -> dict:
        return {"model": self.model, "threads": self.threads, "rounds": self.rounds,
                "runs": self.runs, "loads": self.loads, "busy": self.busy, "max_err": self.max_err,
                "loaded": self.loaded, "ratio_median": self.ratio, "ratio_min": self.ratio_min,
                **{f"{e}_median_ms": s.median for e, s in self.engines.items()},
                **{f"{e}_min_ms": s.best for e, s in self.engines.items()},
                **{f"{e}_round_medians_ms": s.round_medians for e, s in self.engines.items()}}


def _inputs(artifact: Path, seed: int) -> list[np.ndarray]:
    meta = json.loads((artifact / "model.json").read_text())
    rng = np.random.default_rng(seed)
    out = []
    for spec in meta["inputs"]:
        shape, dtype = [int(v) for v in spec["shape"]], str(spec.get("dtype", "float32"))
        if "float" in dtype:
            out.append(rng.standard_normal(shape).astype(dtype))
        else:
            out.append(rng.integers(0, 2, size=shape).astype(dtype))
    return out


def _compare(pf: Path, ref: Path) -> float:
    a, b = np.load(pf), np.load(ref)
    if len(a.files) != len(b.files):
        return float("inf")
    err = 0.0
    for k in b.files:
        x, y = a[k].astype(np.float64), b[k].astype(np.float64)
        if x.shape != y.shape:
            return float("inf")
        err = max(err, float(np.abs(x - y).max()) / max(float(np.abs(y).max()), 1e-12))
    return err


def bench_model(label: str, onnx_path: Path, artifact: Path, *, threads: int = 2,
                rounds: int = 3, runs: int = 50, warmup: int = 5, pause_s: float = 2.0,
                max_load: float = 1.5, seed: int = 0, timeout_s: float = 600.0,
                log=print) -> BenchRow:
    """The protocol for one model: two workers, ``rounds`` alternating rounds."""
    if rounds < 3:
        raise ValueError("the protocol needs at least 3 alternating rounds")
    with tempfile.TemporaryDirectory(prefix="pf_bench_") as tmp:
        tmpd = Path(tmp)
        xs = _inputs(artifact, seed)
        np.savez(tmpd / "inputs.npz", **{f"{i}_x": x for i, x in enumerate(xs)})
        models = {"pfcompile": str(artifact), "onnxruntime": str(onnx_path)}
        workers: dict[str, _Worker] = {}
        try:
            for e in ENGINES:
                workers[e] = _Worker(e, models[e], tmpd / "inputs.npz", tmpd / f"{e}.npz",
                                     threads, timeout_s)
            err = _compare(tmpd / "pfcompile.npz", tmpd / "onnxruntime.npz")
            stats = {e: EngineStats(threads=int(workers[e].info.get("threads", 0))) for e in ENGINES}
            loads, busy = [], []
            for r in range(rounds):
                load, b = quiet_check(pause_s)
                loads.append(load)
                busy.append(b)
                order = ENGINES if r % 2 == 0 else ENGINES[::-1]
                for e in order:
                    times = workers[e].round(runs, warmup)
                    stats[e].round_medians.append(statistics.median(times))
                    stats[e].best = min(stats[e].best, min(times))
                log(f"  {label} round {r + 1}/{rounds}: load {load:.2f}, others busy {b:.2f} cores, "
                    + ", ".join(f"{e} {stats[e].round_medians[-1]:.3f} ms" for e in ENGINES))
        finally:
            for w in workers.values():
                w.close()
    return BenchRow(label, threads, rounds, runs, stats, loads, busy, err, max_load)


# ----------------------------------------------------------------------------- table
def render(rows: list[BenchRow], under_load: bool = False) -> str:
    """A plain-text table (Markdown) with the CPU, load and verdicts."""
    cpu = cpu_model()
    head = ("| model | threads (pf/ort) | pfcompile median ms (min) | onnxruntime median ms (min) "
            "| ratio median (min) | max rel. error | load before rounds | others busy (cores) |")
    lines = [f"CPU: {cpu} ({os.cpu_count()} logical CPUs); load average now {os.getloadavg()[0]:.2f}",
             "", head,
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        pf, ort_ = r.engines["pfcompile"], r.engines["onnxruntime"]
        if r.loaded and not under_load:
            ratio = f"refused (load {max(r.loads):.2f} > {r.max_load})"
        else:
            ratio = f"{r.ratio:.2f}x ({r.ratio_min:.2f}x)"
            if r.loaded:
                ratio += " **under load**"
        lines.append(
            f"| {r.model} | {pf.threads}/{ort_.threads} | {pf.median:.3f} ({pf.best:.3f}) "
            f"| {ort_.median:.3f} ({ort_.best:.3f}) | {ratio} | {r.max_err:.1e} "
            f"| {' '.join(f'{v:.2f}' for v in r.loads)} | {' '.join(f'{v:.2f}' for v in r.busy)} |")
    lines.append("")
    lines.append("ratio = pfcompile / onnxruntime (median of round medians; min = fastest "
                 "single run); < 1: pfcompile faster.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="*", default=["resnet18", "mobilenet_v2"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--runs", type=int, default=50, help="timed runs per round")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--pause", type=float, default=2.0, help="idle seconds before each round")
    ap.add_argument("--max-load", type=float, default=1.5)
    ap.add_argument("--under-load", action="store_true",
                    help="print ratios measured above --max-load, marked")
    ap.add_argument("--target", default="host")
    ap.add_argument("--input-shape", action="append", help="name:1x3x224x224 (any model)")
    ap.add_argument("--artifact", action="append",
                    help="a compiled artifact folder per model, in order (skips compiling)")
    ap.add_argument("--work", type=Path, default=None, help="where artifacts are compiled")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows here")
    ap.add_argument("--worker", choices=ENGINES, help=argparse.SUPPRESS)
    ap.add_argument("--worker-model", help=argparse.SUPPRESS)
    ap.add_argument("--worker-inputs", help=argparse.SUPPRESS)
    ap.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        _worker(args.worker, args.worker_model, args.worker_inputs, args.worker_out, args.threads)
        return 0
    print(f"CPU: {cpu_model()}; load average {os.getloadavg()[0]:.2f}; threads {args.threads}; "
          f"target {args.target}", flush=True)
    work = args.work or Path(tempfile.mkdtemp(prefix="pf_bench_art_"))
    rows = []
    for i, name in enumerate(args.models):
        path, shapes = resolve_model(name, args.input_shape)
        if args.artifact and i < len(args.artifact):
            art = Path(args.artifact[i])
        else:
            art = work / Path(name).stem
            t0 = time.perf_counter()
            compile_for_bench(path, args.target, art, shapes)
            print(f"{name}: compiled for {args.target} in {time.perf_counter() - t0:.1f} s -> {art}",
                  flush=True)
        rows.append(bench_model(Path(name).stem, path, art, threads=args.threads,
                                rounds=args.rounds, runs=args.runs, warmup=args.warmup,
                                pause_s=args.pause, max_load=args.max_load))
    print()
    print(render(rows, args.under_load))
    if args.json:
        args.json.write_text(json.dumps([r.to_json() for r in rows], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
