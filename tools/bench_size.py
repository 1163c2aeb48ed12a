"""Benchmark: what ships, against what the passes' size reports say.

For a CIFAR-style ResNet-20 and a MobileNetV2-style model trained on the digits
(upsampled to --size), five builds each: float, `quantize --bits 8`, `--bits 4`,
`--bits 4 --codebook`, `sparsify --sparsity 0.75`; compiled with
`pfcompile compile` for the host and for arm64 (cross-compiled). Per build:

- ``report MB``: the pass's size report (float: the ONNX constants; quantize:
  ``stored_bytes``, its weights with their scales and its biases; sparsify: ``csr_bytes``);
- ``before MB``: the ``model.so`` built by another pfcompile checkout (``--before
  /path/to/checkout``, e.g. main before this change; blank without it);
- ``after MB`` = ``code`` + ``weights``: the deployed files of this checkout,
  measured from the files (:func:`pfcompile.artifact_size.artifact_size`);
- ``limit MB`` = 1.15 x report + the float build's code bytes (issue 16's
  acceptance), and whether ``after`` is within it;
- ``top-1``: the compiled library's own outputs (host, in process) on the 540
  validation digits;
- ``ms`` (and ``before ms``): `pfcompile measure` median on this machine (host rows),
  and ``verified``
  against the exact reference (host; arm64 on the emulated device with
  ``--arm64-verify``: functional only, its latency is not reported).

Also prints the load-time step: the lifted library's latency vs ``main`` decoding
the weights on every call, and the decode time itself.

  python tools/bench_size.py                           # after only
  python tools/bench_size.py --before /work/main --arm64-verify
  python tools/bench_size.py --quick                   # tiny settings: does it run

Run it on a quiet machine: latencies are medians of ``measure``, not paired.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx

from pfcompile.targets import cpu_model

CACHE = Path(os.environ.get("PFCOMPILE_CACHE", Path.home() / ".cache" / "pfcompile")) / "bench_size"
VARIANTS = ("float", "q8", "q4", "cb4", "sp75")


def build_models(size: int, epochs: int, names: list[str], work: Path) -> dict:
    """Train (cached), then write the five variants; returns {model: {variant: path}}
    plus the data."""
    from pfcompile import zoo
    from pfcompile.data import Dataset
    from pfcompile.passes.qlayers import as_proto
    from pfcompile.passes.quantize import QuantConfig, quantize
    from pfcompile.passes.sparsify import SparsifyConfig, sparsify

    d = zoo.digits_splits(size)
    calib = Dataset({"input": d["x_calib"]}, None, "digits-calib")
    nets = {"resnet20": zoo.resnet20, "mobilenet_v2": zoo.mobilenet_v2_cifar}
    out: dict = {}
    for name in names:
        base = work / f"{name}_{size}_e{epochs}"
        paths = {v: base.with_name(f"{base.name}_{v}.onnx") for v in VARIANTS}
        if not paths["float"].exists():
            t0 = time.time()
            net = zoo.train_classifier(nets[name](10, 1), d["x_train"], d["y_train"],
                                       epochs=epochs, lr=0.05, seed=0)
            zoo.export_onnx(net, paths["float"], (1, 1, size, size))
            print(f"trained {name} in {time.time() - t0:.0f} s", flush=True)
        m = onnx.load(str(paths["float"]))
        for v, cfg in (("q8", QuantConfig(bits=8)), ("q4", QuantConfig(bits=4)),
                       ("cb4", QuantConfig(bits=4, codebook=True))):
            if not paths[v].exists():
                onnx.save(as_proto(quantize(m, cfg, calib).model), paths[v])
        if not paths["sp75"].exists():
            onnx.save(as_proto(sparsify(m, SparsifyConfig(sparsity=0.75)).model), paths["sp75"])
        out[name] = paths
    return {"models": out, "x_val": d["x_val"], "y_val": d["y_val"]}


def report_bytes(variant: str, path: Path) -> int:
    from pfcompile.passes.quantize import quant_report
    from pfcompile.passes.sparsify import sparsity_report
    from pfcompile.passes.stats import model_stats

    m = onnx.load(str(path))
    if variant == "float":
        return model_stats(m).size_bytes
    if variant == "sp75":
        return int(sparsity_report(m)["total"]["csr_bytes"])
    rep = quant_report(m)
    # weights, scales and biases, as the float row's report counts every constant
    # (models of a quantize pass before the int32 biases: weights and scales only)
    return int(rep.get("stored_bytes", rep["packed_bytes"]))


def compile_before(checkout: Path, model: Path, target: str, out: Path) -> None:
    if (out / "model.so").exists():
        return
    env = dict(os.environ, PYTHONPATH=str(checkout))
    subprocess.run([sys.executable, "-m", "pfcompile", "compile", str(model), "--target", target,
                    "-o", str(out)], env=env, check=True, capture_output=True, text=True,
                   cwd=str(checkout))


def top1(art: Path, x: np.ndarray, y: np.ndarray) -> float:
    import tvm

    from pfcompile.deploy import load

    model = load(art)
    pred = [int(model(tvm.runtime.tensor(x[i:i + 1])).numpy().argmax()) for i in range(len(x))]
    return float(np.mean(np.array(pred) == y))


def load_time_step(art: Path, x: np.ndarray) -> dict:
    """Lifted vs decoding on every call, and the decode itself (ms, medians)."""
    import tvm

    from pfcompile.deploy import TRANSFORM_FUNC, load

    model = load(art)
    if model.name == "main":
        return {}
    dev = tvm.cpu()
    xi = tvm.runtime.tensor(x[:1], dev)
    fl = model.time_evaluator(dev, number=20, repeat=1, min_repeat_ms=20)
    fm = model.vm.time_evaluator("main", dev, number=20, repeat=1, min_repeat_ms=20)
    ft = model.vm.time_evaluator(TRANSFORM_FUNC, dev, number=5, repeat=1, min_repeat_ms=20)
    lifted, every, decode = [], [], []
    for _ in range(9):  # round robin: load from other processes falls on all alike
        lifted.append(fl(xi).mean * 1e3)
        every.append(fm(xi).mean * 1e3)
        decode.append(ft().mean * 1e3)
    return {"lifted_ms": float(np.median(lifted)), "main_ms": float(np.median(every)),
            "decode_ms": float(np.median(decode))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="resnet20,mobilenet_v2")
    ap.add_argument("--size", type=int, default=16, help="input side (digits upsampled)")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--targets", default="host,arm64")
    ap.add_argument("--before", type=Path, default=None,
                    help="a pfcompile checkout whose `compile` gives the 'before' column")
    ap.add_argument("--arm64-verify", action="store_true",
                    help="run the arm64 builds on the emulated device (slow) and verify them")
    ap.add_argument("--quick", action="store_true", help="8x8, 1 epoch, resnet20, host only")
    ap.add_argument("--out", type=Path, default=CACHE)
    ap.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = ap.parse_args()
    if args.quick:
        args.size, args.epochs, args.models, args.targets = 8, 1, "resnet20", "host"
    from pfcompile.artifact_size import artifact_size
    from pfcompile.compiler import compile_model
    from pfcompile.measure import measure
    from pfcompile.runner import LocalRunner
    from pfcompile.targets import MeasureSettings, load_target

    args.out.mkdir(parents=True, exist_ok=True)
    print(f"CPU: {cpu_model()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} "
          f"{os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}", flush=True)
    data = build_models(args.size, args.epochs, args.models.split(","), args.out / "models")
    rows = []
    for tname in args.targets.split(","):
        tgt = load_target(tname)
        runner = LocalRunner(tgt) if tgt.is_host else None
        lrpc = None
        if not tgt.is_host and args.arm64_verify:
            from pfcompile.device import LocalRPC, default_device_dir

            lrpc = LocalRPC(target=tgt, key=tgt.rpc_key, device_dir=default_device_dir()).__enter__()
        try:
            for mname, paths in data["models"].items():
                float_code = None
                for v in VARIANTS:
                    tag = f"{mname}_{args.size}_e{args.epochs}_{v}_{tname}"
                    art = compile_model(paths[v], tgt, args.out / "after" / tag)
                    size = artifact_size(art.dir)
                    if v == "float":
                        float_code = size.code_bytes
                    rep = report_bytes(v, paths[v])
                    limit = 1.15 * rep + float_code
                    row = {"model": mname, "variant": v, "target": tname, "report": rep,
                           "after": size.size_bytes, "code": size.code_bytes,
                           "weights": size.weight_bytes, "limit": limit,
                           "within": size.size_bytes <= limit,
                           "packed": sorted({p["encoding"] for p in art.meta["storage"]["packed"]})}
                    bdir = None
                    if args.before is not None:
                        bdir = args.out / "before" / tag
                        compile_before(args.before, paths[v], tname, bdir)
                        row["before"] = (bdir / "model.so").stat().st_size
                    if tgt.is_host:
                        if bdir is not None:
                            res = measure(bdir, tgt, runner=runner, settings=MeasureSettings(
                                number=20, repeat=7, min_repeat_ms=20))
                            row["before_ms"] = res["median_ms"]
                        row["top1"] = top1(art.dir, data["x_val"], data["y_val"])
                        res = measure(art.dir, tgt, runner=runner,
                                      settings=MeasureSettings(number=20, repeat=7, min_repeat_ms=20))
                        row["ms"], row["verified"] = res["median_ms"], res["verified"]
                        if v == "q4":
                            row["load_step"] = load_time_step(art.dir, data["x_val"])
                    elif lrpc is not None:
                        res = measure(art.dir, tgt, rpc=lrpc.tracker_addr, key=tgt.rpc_key,
                                      settings=MeasureSettings(number=1, repeat=1, min_repeat_ms=0,
                                                               timeout_s=600))
                        row["verified"] = res["verified"]
                    rows.append(row)
                    print(json.dumps(row), flush=True)
        finally:
            if runner is not None:
                runner.close()
            if lrpc is not None:
                lrpc.__exit__(None, None, None)
    mb = lambda b: "" if b is None else f"{b / 1e6:.3f}"
    print("\n| model | build | target | report MB | before MB | after MB (code + weights) | "
          "limit MB | within | top-1 | before ms | ms | verified |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ms = f"{r['ms']:.3f}" if "ms" in r else ("emulated" if r["target"] != "host" else "")
        t1 = f"{r['top1']:.4f}" if "top1" in r else ""
        bms = f"{r['before_ms']:.3f}" if "before_ms" in r else ""
        print(f"| {r['model']} | {r['variant']} | {r['target']} | {mb(r['report'])} | "
              f"{mb(r.get('before'))} | {mb(r['after'])} ({mb(r['code'])} + {mb(r['weights'])}) | "
              f"{mb(r['limit'])} | {'yes' if r['within'] else 'NO'} | {t1} | {bms} | {ms} | "
              f"{r.get('verified', '')} |")
    for r in rows:
        if r.get("load_step"):
            s = r["load_step"]
            print(f"load-time step, {r['model']} q4 ({r['target']}): lifted {s['lifted_ms']:.3f} ms, "
                  f"main decoding every call {s['main_ms']:.3f} ms, decode alone {s['decode_ms']:.3f} ms")
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
