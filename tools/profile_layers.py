"""Per-layer time of pfcompile's library beside onnxruntime's per-op profile.

pfcompile: the model compiled in-process (``pfcompile.codegen.build``, heuristics or
records; a QDQ model first lowered to its integer kernels, ``quantexec.lower_qdq``, as
``pfcompile compile`` builds it), run by a Relax VM whose instrument (``vm.set_instrument``) takes
``time.perf_counter`` before and after every kernel call: kernels timed inside the
model (warm or cold inputs as the model leaves them). The instrument's own cost
(a Python call per kernel, a few µs) is in every figure. onnxruntime: the default
session with ``enable_profiling``; its JSON trace gives each node's kernel time.
Both at ``--threads`` threads, ``--runs`` runs after a warm-up; per kernel the median.

    python tools/profile_layers.py mobilenet_v2 --threads 2 --runs 50 --top 25

Prints both tables, heaviest first, with the CPU and the load average.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_vs_ort beside this file


def _profile_pf(onnx_path: Path, shapes: dict | None, target_name: str, runs: int,
                x: list[np.ndarray], records: Path | None) -> tuple[list, float]:
    import tvm
    from tvm import relax

    from pfcompile import codegen
    from pfcompile.compiler import has_qdq, import_onnx
    from pfcompile.deploy import prepare
    from pfcompile.frontend import import_model
    from pfcompile.model import input_specs
    from pfcompile.quantexec import lower_qdq, onnx_layer_names, prepare_qdq, with_int8_features
    from pfcompile.storage import pack_weights_pass
    from pfcompile.targets import load_target

    tgt = load_target(target_name)
    # the one import front end (shapes bound, Constant weights lifted, shape
    # sub-graphs folded), as `pfcompile compile` does
    proto = import_model(onnx_path, shapes)
    specs = input_specs(proto)
    reports: list = []
    if has_qdq(proto):      # integer kernels, as `pfcompile compile` builds a QDQ model
        prepared, _ = prepare_qdq(proto)
        tgt = with_int8_features(tgt)
        mod, _ = lower_qdq(import_onnx(prepared, specs), tgt, onnx_layer_names(prepared))
    else:
        mod = import_onnx(proto, specs)
    lib = codegen.build(mod, tgt, records_dir=records, report=reports,
                        post_passes=[pack_weights_pass(None)])
    wl = {r.symbol or r.name: r for r in reports}   # the library names its kernels k0, k1..
    dev = tvm.cpu()
    vm = prepare(relax.VirtualMachine(lib, dev))       # weights decoded once, as deployed
    plain = prepare(relax.VirtualMachine(lib, dev))
    args = [tvm.runtime.tensor(a, dev) for a in x]
    times: dict[tuple[int, str], list[float]] = collections.defaultdict(list)
    state = {"i": 0, "t": 0.0, "on": False}

    def instrument(func, name, before, ret, *a):
        if not state["on"] or str(name).startswith("vm."):
            return 0
        if before:
            state["t"] = time.perf_counter()
        else:
            times[(state["i"], str(name))].append(time.perf_counter() - state["t"])
            state["i"] += 1
        return 0

    vm.vm.set_instrument(instrument)
    for _ in range(3):
        vm(*args)
    state["on"] = True
    for _ in range(runs):
        state["i"] = 0
        vm(*args)
    state["on"] = False
    for _ in range(3):
        plain(*args)
    t0 = time.perf_counter()
    for _ in range(runs):
        plain(*args)
    whole = (time.perf_counter() - t0) / runs
    rows = []
    for (i, name), ts in sorted(times.items()):
        r = wl.get(name)
        desc = f"{r.family} {_dims(r.dims)} epi={r.epilogue} {r.params}" if r else ""
        rows.append((statistics.median(ts), i, r.name if r else name, desc))
    return rows, whole


def _dims(d: dict) -> str:
    keys = ("cin", "cout", "ih", "iw", "kh", "sh", "ib", "ob", "m", "n", "k")
    return ",".join(f"{k}={d[k]}" for k in keys if k in d)


def _profile_ort(onnx_path: Path, threads: int, runs: int, x: list[np.ndarray]) -> tuple[list, float]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
    feed = {i.name: a for i, a in zip(sess.get_inputs(), x, strict=True)}
    for _ in range(3):
        sess.run(None, feed)
    t0 = time.perf_counter()
    for _ in range(runs):
        sess.run(None, feed)
    whole = (time.perf_counter() - t0) / runs
    so.enable_profiling = True
    so.profile_file_prefix = str(Path(tempfile.mkdtemp()) / "ort")
    sess = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
    for _ in range(3 + runs):
        sess.run(None, feed)
    trace = json.loads(Path(sess.end_profiling()).read_text())
    per: dict[str, list[float]] = collections.defaultdict(list)
    info: dict[str, str] = {}
    order: dict[str, int] = {}
    for ev in trace:
        if ev.get("cat") != "Node" or not ev.get("name", "").endswith("_kernel_time"):
            continue
        node = ev["name"][: -len("_kernel_time")]
        per[node].append(ev["dur"] * 1e-6)
        order.setdefault(node, len(order))
        a = ev.get("args", {})
        shapes = [next(iter(s.values())) for s in a.get("input_type_shape", [])]
        info[node] = f"{a.get('op_name', '')} in={shapes[:2]}"
    rows = [(statistics.median(ts[3:] or ts), order[n], n, info[n]) for n, ts in per.items()]
    return rows, whole


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--input-shape", action="append")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--target", default="host")
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--records", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None, help="write both tables here")
    args = ap.parse_args(argv)
    os.environ["TVM_NUM_THREADS"] = str(args.threads)
    from bench_vs_ort import cpu_model, resolve_model

    path, shapes = resolve_model(args.model, args.input_shape)
    import onnx

    proto = onnx.load(str(path))
    rng = np.random.default_rng(0)
    x = []
    for inp in proto.graph.input:
        dims = [d.dim_value for d in inp.type.tensor_type.shape.dim]
        if shapes and inp.name in shapes:
            dims = list(shapes[inp.name])
        x.append(rng.standard_normal(dims).astype("float32"))
    pf, pf_whole = _profile_pf(path, shapes, args.target, args.runs, x, args.records)
    ort_rows, ort_whole = _profile_ort(path, args.threads, args.runs, x)
    print(f"# {args.model}, {args.threads} threads, CPU {cpu_model()}, "
          f"load {os.getloadavg()[0]:.2f}")
    for label, rows, whole in (("pfcompile", pf, pf_whole), ("onnxruntime", ort_rows, ort_whole)):
        tot = sum(r[0] for r in rows)
        print(f"\n## {label}: whole model {whole * 1e3:.3f} ms, sum of kernels {tot * 1e3:.3f} ms, "
              f"{len(rows)} kernels")
        for t, i, name, desc in sorted(rows, reverse=True)[: args.top]:
            print(f"{t * 1e6:8.1f} us {100 * t / tot:5.1f}%  #{i:3d} {name[:40]:40s} {desc}")
    if args.json:
        args.json.write_text(json.dumps({"pfcompile": pf, "onnxruntime": ort_rows}, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
