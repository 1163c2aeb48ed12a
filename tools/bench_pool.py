"""Measuring K candidates with a device pool of 1 vs 2 devices: a FUNCTIONAL check
of the parallel path, not a speedup claim.

    PYTHONPATH=. python tools/bench_pool.py [--k 4] [--rounds 3] [--with-compile]
        [--compile-first] [--paired]

Starts a tracker and two host ``rpc_server`` processes (one TVM thread each)
under one key on ports 9600-9649, compresses the model (default: the demo) at K
uniform keep ratios, and measures the K candidates with
``RPCDevice(size=1).measure_many`` and ``RPCDevice(size=2).measure_many``,
interleaved round by round so that machine load hits both alike. Both pools use
the same two servers; size 1 measures one candidate at a time, size 2 two.

By default the candidates are compiled once before the first round (wall time =
RPC + verification + timing only); ``--with-compile`` gives every round fresh
work folders, so each measurement compiles too (compiles run one at a time in
the pool, overlapping the other slot's measurement; ``--compile-first``: all of
a round's compiles before its measurements, what ``pfcompile run`` does when the
servers are on this machine). ``--paired`` sets the
unmodified model as the reference first (``RPCDevice.set_reference``, outside
the timed part; the second slot pairs with it inside ``measure_many``, timed), so
candidates are timed alternating with the reference (RPCDevice's paired timing).

Both servers run on THIS machine and share its cores (2 here, also used by other
jobs): two measurements at once disturb each other, and the wall-time ratio says
how the parallel path behaves here, not what N real boards would give. The
second table gives each candidate's measured latency per mode, so the
disturbance is visible.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from pfcompile.compiler import compile_model
from pfcompile.device import free_port, query, serve, tracker, wait_ready
from pfcompile.model import load_onnx, model_hash
from pfcompile.paths import demo_paths
from pfcompile.search.devices import RPCDevice
from pfcompile.search.space import build_space, compress
from pfcompile.targets import load_target

PORTS = (9600, 9649)
KEY = "bench-pool"


def candidates(model_path: Path, k: int, target) -> list:
    model = load_onnx(model_path)
    space = build_space(model, target.hardware)
    out, seen = [], set()
    for i in range(4 * k):
        ratio = 1.0 - 0.75 * i / max(1, 4 * k - 1)
        cm = compress(model, space, space.uniform(ratio))
        h = model_hash(cm)
        if h not in seen:
            seen.add(h)
            out.append(cm)
        if len(out) == k:
            break
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=demo_paths()[0])
    ap.add_argument("--k", type=int, default=4, help="candidates per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--number", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--min-repeat-ms", type=int, default=100)
    ap.add_argument("--with-compile", action="store_true",
                    help="fresh work folders each round: every measurement compiles")
    ap.add_argument("--compile-first", action="store_true",
                    help="with --with-compile: compile a round's candidates before measuring any")
    ap.add_argument("--paired", action="store_true",
                    help="time candidates against the unmodified model (set_reference)")
    args = ap.parse_args()

    host = load_target("host")
    models = candidates(args.model, args.k, host)
    original = load_onnx(args.model)
    print(f"{len(models)} candidates of {args.model.name}; starting a tracker and 2 servers ...")
    used: list[int] = []

    def port() -> int:
        used.append(free_port("127.0.0.1", *PORTS, exclude=tuple(used)))
        return used[-1]

    trk = tracker("127.0.0.1", port(), wait=False)
    servers = [serve(host, "127.0.0.1", port(), trk.addr, KEY, wait=False, threads=1)
               for _ in range(2)]
    try:
        for p in [trk, *servers]:
            wait_ready(p)
        deadline = time.monotonic() + 60
        while not any(d.key == KEY and d.free >= 2 for d in query(trk.addr)):
            if time.monotonic() > deadline:
                raise SystemExit("servers did not register at the tracker")
            time.sleep(0.2)
        with tempfile.TemporaryDirectory(prefix="bench_pool_") as tmp:
            root = Path(tmp)
            if not args.with_compile:
                t0 = time.perf_counter()
                for i, m in enumerate(models):
                    compile_model(m, host, root / "shared" / str(i))
                print(f"compiled {len(models)} candidates once in {time.perf_counter() - t0:.1f} s")
            walls: dict[int, list[float]] = {1: [], 2: []}
            per: dict[int, dict[int, list[float]]] = {1: {}, 2: {}}
            fails = {1: 0, 2: 0}
            for r in range(args.rounds):
                for size in (1, 2) if r % 2 == 0 else (2, 1):
                    base = root / f"r{r}-n{size}" if args.with_compile else root / "shared"
                    jobs = [(m, base / str(i)) for i, m in enumerate(models)]
                    pool = RPCDevice(host, tracker=trk.addr, key=KEY, size=size,
                                      number=args.number, repeat=args.repeat,
                                      min_repeat_ms=args.min_repeat_ms,
                                      compile_first=args.compile_first)
                    try:
                        if args.paired:
                            ref = pool.set_reference(original, root / "reference")
                            if not ref.ok:
                                raise SystemExit(f"reference failed: {ref.error}")
                        t0 = time.perf_counter()
                        res = pool.measure_many(jobs)
                        walls[size].append(time.perf_counter() - t0)
                    finally:
                        pool.close()
                    fails[size] += sum(not m.ok for m in res)
                    for i, m in enumerate(res):
                        if m.ok:
                            per[size].setdefault(i, []).append(m.latency_ms)
                    print(f"  round {r} devices {size}: {walls[size][-1]:.2f} s")
    finally:
        for s in servers:
            s.stop()
        trk.stop()

    mode = "compile + measure" if args.with_compile else "measure only (precompiled)"
    mode += ", paired with the unmodified model" if args.paired else ", unpaired"
    mode += ", compile first" if args.compile_first else ""
    print(f"\nK={len(models)} candidates, {args.rounds} rounds, {mode}; "
          f"number={args.number} repeat={args.repeat} min_repeat_ms={args.min_repeat_ms}")
    print("FUNCTIONAL CHECK: both servers share this machine's cores; not a speedup claim.\n")
    print("| devices | wall s median | min | max | failed |")
    print("|---|---|---|---|---|")
    for size in (1, 2):
        w = walls[size]
        print(f"| {size} | {statistics.median(w):.2f} | {min(w):.2f} | {max(w):.2f} | "
              f"{fails[size]} |")
    print("\nper candidate, latency ms over rounds: median (min-max); like with like\n")
    print("| candidate | 1 device | 2 devices | 2 / 1 (medians) |")
    print("|---|---|---|---|")

    def cell(v: list[float]) -> str:
        return f"{statistics.median(v):.3f} ({min(v):.3f}-{max(v):.3f})"

    for i in range(len(models)):
        a, b = per[1].get(i), per[2].get(i)
        if a and b:
            ratio = statistics.median(b) / statistics.median(a)
            print(f"| c{i} | {cell(a)} | {cell(b)} | {ratio:.2f} |")
    if walls[1] and walls[2]:
        print(f"\nwall-time ratio 1 device / 2 devices (medians): "
              f"{statistics.median(walls[1]) / statistics.median(walls[2]):.2f}")


if __name__ == "__main__":
    main()
