"""int8 against pfcompile's own fp32, as deployed: each model compiled by `pfcompile compile`
(`compile_model`: the import front end, codegen, compact weights, `model.so`) for each
target, loaded with `pfcompile.deploy.load` at the same thread count, then timed
round-robin in one process (TVM only: no other engine's thread pool in the process).

    PYTHONPATH=. python tools/bench_int8_fp32.py [--models resnet18,mobilenet_v2]
        [--targets host-avx2,host] [--threads 2] [--rounds 7] [--runs 5] [--direct]

Models: the fp32 ONNX files and their pfcompile QDQ copies that ``tools/bench_int8.py``
writes to ``$PFCOMPILE_CACHE/bench_int8/`` (run it once first). Per (model, target) the
table gives the median over rounds of each round's mean of ``--runs`` calls, and
int8 / fp32 (issue 17: <= 0.6 ResNet-18, <= 0.8 MobileNetV2 on AVX2).

``--direct`` adds an int8 build with integer Winograd off (every conv on the direct
kernels, ``pfcompile.quantexec.winograd.MIN_MACS`` raised while it compiles), timed in the
same rounds: the column ``int8 direct``.

Why not ``bench_int8.py``'s fp32 column: on 2026-12-05 it read 39-52 ms for models this
script runs in 4-12 ms (its in-memory fp32 executables next to onnxruntime sessions in
the same process); its int8 column agrees with this one.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from pfcompile.targets import cpu_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet18,mobilenet_v2")
    ap.add_argument("--targets", default="host-avx2,host")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--direct", action="store_true",
                    help="also time int8 with integer Winograd off (direct kernels only)")
    args = ap.parse_args()
    os.environ["TVM_NUM_THREADS"] = str(args.threads)   # before TVM's pool starts

    import tvm

    from pfcompile import deploy
    from pfcompile.compiler import compile_model
    from pfcompile.paths import cache_dir
    from pfcompile.quantexec import winograd

    src = cache_dir() / "bench_int8"
    x = tvm.runtime.tensor(np.random.default_rng(1).standard_normal((1, 3, 224, 224))
                           .astype("float32"))
    libs = {}
    with tempfile.TemporaryDirectory(prefix="pfc-int8-fp32-") as tmp:
        for name in args.models.split(","):
            files = {"fp32": src / f"{name}.onnx", "int8": src / f"{name}_pfcompile_qdq.onnx"}
            missing = [str(f) for f in files.values() if not f.exists()]
            if missing:
                raise SystemExit(f"missing {missing}: run tools/bench_int8.py --models {name} first")
            if args.direct:
                files["int8 direct"] = files["int8"]
            for t in args.targets.split(","):
                for kind, f in files.items():
                    d = Path(tmp) / f"{name}-{t}-{kind.replace(' ', '-')}"
                    keep = winograd.MIN_MACS
                    if kind == "int8 direct":
                        winograd.MIN_MACS = 10**18
                    try:
                        compile_model(f, t, d)
                    finally:
                        winograd.MIN_MACS = keep
                    libs[(name, t, kind)] = deploy.load(d, threads=args.threads)
        loads = []
        times: dict = {k: [] for k in libs}
        for _ in range(args.rounds):
            loads.append(os.getloadavg()[0])
            for k, m in libs.items():
                m(x)
                t0 = time.perf_counter()
                for _ in range(args.runs):
                    m(x)
                times[k].append((time.perf_counter() - t0) / args.runs * 1e3)
    print(f"CPU: {cpu_model()} x{os.cpu_count()}; {args.threads} TVM threads; batch 1; "
          f"load average before the rounds {min(loads):.2f}-{max(loads):.2f}")
    extra = " int8 direct ms | direct / fp32 |" if args.direct else ""
    print(f"| model | target | fp32 ms | int8 ms | int8 / fp32 |{extra}")
    print("|---|---|---|---|---|" + ("---|---|" if args.direct else ""))
    for name in args.models.split(","):
        for t in args.targets.split(","):
            a = float(np.median(times[(name, t, "fp32")]))
            b = float(np.median(times[(name, t, "int8")]))
            row = f"| {name} | {t} | {a:.2f} | {b:.2f} | {b / a:.2f} |"
            if args.direct:
                c = float(np.median(times[(name, t, "int8 direct")]))
                row += f" {c:.2f} | {c / a:.2f} |"
            print(row)


if __name__ == "__main__":
    main()
