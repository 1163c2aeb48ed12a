"""Issue 14's last acceptance line, end to end: ``pfcompile run --input-shape ...`` on the
pretrained PP-OCR direction classifier (``ppocr_cls``) with labelled data made for it,
scored on a test split the search never saw.

1. Data (``pfcompile/realdata.py``): rendered text lines, upright (0) or rotated 180
   degrees (1), preprocessed as RapidOCR does; train / calib / val / test ``.npz`` in
   ``WORK/data`` (made once per seed and sizes; the original's top-1 on each split
   printed).
2. The search, as a user runs it (a subprocess; the exact command is printed)::

       python -m pfcompile run MODEL --input-shape x:1x3x48x192 --target host \\
           --data val.npz --calib calib.npz --train train.npz --max-acc-drop 1.0 \\
           --budget N -o WORK/dist [EXTRA]

   ``--data`` is split by ``run`` itself into a search part and a confirmation part;
   ``--train`` fine-tunes the finalist. ``test.npz`` is never given to ``run``.
3. ``pfcompile evaluate WORK/dist/model.onnx --data test.npz --reference MODEL`` and
   ``pfcompile evaluate MODEL --data test.npz``: top-1 of both on the test split.

Prints one table: CPU and load average, re-measured speedup (``report.json``
``remeasured.speedup``), the paired speedup, ``speedup_vs_onnxruntime``, top-1 of the
original and the deployed model on the test split and the drop, and whether the
acceptance line (>= 1.3x re-measured at <= 1 point top-1 drop) holds.

  PYTHONPATH=. python tools/bench_ocr_cls.py --work ~/ocr_cls_bench              # full
  PYTHONPATH=. python tools/bench_ocr_cls.py --work /tmp/w --sizes train=64,calib=16,val=200,test=100 \\
      --budget 2 --finetune-epochs 1                                               # smoke
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from make_ocr_cls_data import split_sizes  # tools/ is on sys.path for a script run from it

from pfcompile.realdata import classifier_top1, make_ocr_cls_splits
from pfcompile.realmodels import fetch, suite_model
from pfcompile.targets import cpu_model


def _load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def make_data(data_dir: Path, sizes: dict[str, int], seed: int, model: Path) -> dict:
    """The splits (reused when ``meta.json`` says they were made with this seed and these
    sizes) and the original classifier's top-1 on each."""
    import numpy as np

    meta_p = data_dir / "meta.json"
    if meta_p.exists():
        meta = json.loads(meta_p.read_text())
        if meta.get("seed") == seed and meta.get("sizes") == sizes and "original_top1" in meta:
            print(f"data: reusing {data_dir}", flush=True)
            return meta
    t0 = time.perf_counter()
    paths = make_ocr_cls_splits(data_dir, sizes, seed)
    meta = json.loads(meta_p.read_text())
    meta["generate_s"] = round(time.perf_counter() - t0, 1)
    meta["original_top1"] = {}
    for split, p in paths.items():
        z = np.load(p)
        meta["original_top1"][split] = classifier_top1(model, z["x"], z["y"])
    meta_p.write_text(json.dumps(meta, indent=1))
    print(f"data: {sizes} in {data_dir} ({meta['generate_s']} s)", flush=True)
    return meta


def _pfcompile(args: list[str], log: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pfcompile", *args]
    print("$ " + shlex.join(["python", "-m", "pfcompile", *args]), flush=True)
    with open(log, "w") as f:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=f, text=True, check=False)
    f_out = log.with_suffix(".stdout")
    f_out.write_text(proc.stdout)
    if proc.returncode != 0:
        tail = log.read_text()[-2000:]
        raise SystemExit(f"pfcompile {args[0]} failed (exit {proc.returncode}); stderr tail:\n{tail}")
    return proc


def evaluate_json(model: Path, data: Path, work: Path, tag: str, shape_arg: str,
                  reference: Path | None = None) -> dict:
    args = ["evaluate", str(model), "--data", str(data), "--input-shape", shape_arg, "--json"]
    if reference is not None:
        args += ["--reference", str(reference)]
    proc = _pfcompile(args, work / f"evaluate_{tag}.log")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, required=True, help="data, DIST and logs go here")
    ap.add_argument("--seed", type=int, default=0, help="data seed (the search keeps --seed 0)")
    ap.add_argument("--sizes", default="", help="e.g. train=2000,calib=64,val=1000,test=2000")
    ap.add_argument("--budget", type=int, default=12)
    ap.add_argument("--max-acc-drop", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=None, help="TVM threads of the host device")
    ap.add_argument("--finetune-epochs", type=int, default=None)
    ap.add_argument("--extra", default="", help="more `pfcompile run` flags, e.g. '--bits auto'")
    args = ap.parse_args()

    work = args.work.expanduser().resolve()
    work.mkdir(parents=True, exist_ok=True)
    sm = suite_model("ppocr_cls")
    model = fetch("ppocr_cls")
    load0 = _load()
    meta = make_data(work / "data", split_sizes(args.sizes), args.seed, model)
    d = work / "data"
    dist = work / "dist"
    if (dist / "run" / "trials.jsonl").exists():
        raise SystemExit(f"{dist} holds a run already: remove it (or use another --work)")
    run_args = ["run", str(model), "--input-shape", sm.shape_arg, "--target", "host",
                "--data", str(d / "val.npz"), "--calib", str(d / "calib.npz"),
                "--train", str(d / "train.npz"), "--max-acc-drop", str(args.max_acc_drop),
                "--budget", str(args.budget), "-o", str(dist)]
    if args.threads is not None:
        run_args += ["--threads", str(args.threads)]
    if args.finetune_epochs is not None:
        run_args += ["--finetune-epochs", str(args.finetune_epochs)]
    run_args += shlex.split(args.extra)
    t0 = time.perf_counter()
    _pfcompile(run_args, work / "run.log")
    run_s = time.perf_counter() - t0
    rep = json.loads((dist / "report.json").read_text())
    deployed = evaluate_json(dist / "model.onnx", d / "test.npz", work, "deployed", sm.shape_arg,
                             reference=model)
    original = evaluate_json(model, d / "test.npz", work, "original", sm.shape_arg)
    load1 = _load()

    best, rm, base = rep.get("best") or {}, rep.get("remeasured") or {}, rep["baseline"]
    ft = rep.get("finetune") or {}
    ort = rep.get("onnxruntime") or {}
    t_orig, t_dep = original["top1"], deployed["top1"]
    drop = 100 * (t_orig - t_dep)
    speed = rm.get("speedup") if best else 1.0
    ok = best and speed is not None and speed >= 1.3 and drop <= args.max_acc_drop
    f = (lambda v, p=3: "-" if v is None else f"{v:.{p}f}")
    print(f"\nCPU: {cpu_model()}, {os.cpu_count()} cores; load average before {load0}, after {load1}; "
          f"search {run_s / 60:.1f} min, budget {args.budget}, --max-acc-drop {args.max_acc_drop}"
          f"{' ' + args.extra if args.extra else ''}")
    print(f"data (seed {args.seed}): " + ", ".join(
        f"{k} {n} (original top-1 {100 * meta['original_top1'][k]:.2f} %)"
        for k, n in meta["sizes"].items()))
    print("\n| what | value |\n|---|---|")
    rows = [
        ("deployed", f"compressed candidate (trial {best.get('trial')})" if best
         else f"the original (nothing qualified: {rep.get('why_no_candidate')})"),
        ("fine-tuned", f"{bool(best.get('finetuned'))} ("
                       + "; ".join(f"trial {t.get('trial')}: {t.get('of')}, "
                                   + ("deployed" if t.get("deployed") else f"not deployed: {t.get('error')}")
                                   for t in ft.get("tried") or []) + ")"),
        ("baseline ms (paired scale)", f(base.get("latency_ms"))),
        ("deployed ms (paired)", f(best.get("latency_ms"))),
        ("speedup, paired", f(best.get("speedup"), 2)),
        ("speedup, re-measured (report remeasured.speedup)", f(speed, 2)),
        ("onnxruntime ms (original, same threads)", f(ort.get("ms"))),
        ("speedup_vs_onnxruntime", f(rep.get("speedup_vs_onnxruntime"), 2)),
        ("MACs original / deployed", f"{base.get('macs')} / {best.get('macs', base.get('macs'))}"),
        ("search-part drop (pts, upper bound)",
         f"{f(best.get('acc_drop'), 2)} ({f(best.get('acc_drop_upper'), 2)})"),
        ("test top-1 original", f"{100 * t_orig:.2f} %"),
        ("test top-1 deployed", f"{100 * t_dep:.2f} %"),
        ("test drop (pts)", f"{drop:.2f}"),
        ("test agreement with the original", f"{100 * deployed['agreement']:.2f} %"),
        ("acceptance (>= 1.3x re-measured, <= 1 pt drop on test)", "PASS" if ok else "FAIL"),
    ]
    for k, v in rows:
        print(f"| {k} | {v} |")
    (work / "summary.json").write_text(json.dumps(
        {"rows": dict(rows), "cpu": cpu_model(), "load_before": load0, "load_after": load1,
         "run_args": run_args, "test_original": original, "test_deployed": deployed}, indent=1))


if __name__ == "__main__":
    main()
