"""Benchmark `pfcompile run` on the host CPU served over TVM RPC, as a user runs it, and
check its accuracy promise on data the search never saw.

Digits images upsampled to 32x32, split once (seed 0) into four disjoint parts: train
(the model is trained on it; fine-tuning data, ``--train``), calib (LASSO pruning and
quantization calibration, ``--calib``), val (``--data``: what the search sees; it splits
it again into its search and confirmation parts) and test (never given to pfcompile).
A CIFAR-style ResNet-20 and a MobileNetV2-style model are trained on train; each
(model, strategy, seed) is one `pfcompile run` (``pfcompile.search.api.run``, its own
RPC server and onnxruntime timing process, ``--threads`` for both).

Columns: the drop the run reports on its search part and on its confirmation part, the
**unseen** drop of the deployed model on the test split (with its 90 % interval) and
whether ``--max-acc-drop`` held there, the paired speedup of the chosen trial, the
round-robin re-measured speedup (raw medians, the report's ``remeasured``), the speedup
against the original in onnxruntime (``speedup_vs_onnxruntime``), refusals, and the
cost model on held-out candidates. A run that deploys nothing holds trivially at 1.00x;
the ``dep`` column says which runs deployed a candidate.

    python tools/bench_search.py [--models resnet20,mobilenet_v2] [--strategies hw]
        [--seeds 0,1,2] [--budget 20] [--max-acc-drop 1.0] [--threads 1]
        [--finetune-epochs 10] [--out bench_search_out] [--ports 9300-9330]

``--strategies hw,flops,uniform`` compares strategies (and checks the final hw latency
model on the other strategies' candidates, which it never saw); ``--strategies
hw,rl,bo`` adds the learning optimisers: the ``inner`` column counts what they
evaluated on the models alone. ``--cold-cache`` gives each strategy its own latency
model cache. ``--finetune-epochs 0`` runs without ``--train``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from pfcompile import zoo
from pfcompile.data import Dataset
from pfcompile.model import load_onnx
from pfcompile.search import DeviceSpec, RunConfig, run
from pfcompile.search.evaluation import Evaluator
from pfcompile.search.graph import extract_kernels
from pfcompile.search.latency_model import LatencyModel, kendall_tau
from pfcompile.search.loop import SearchSettings, TrialLog
from pfcompile.search.report import cost_model_stats
from pfcompile.search.space import build_space, compress
from pfcompile.search.stats import paired_drop_interval
from pfcompile.targets import load_target

MODELS = {"resnet20": lambda: zoo.resnet20(10, 1), "mobilenet_v2": lambda: zoo.mobilenet_v2_cifar(10, 1)}


def splits(n_test: int, n_val: int, n_calib: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Four disjoint parts of the 1,797 digits (32x32), one seeded permutation."""
    d = zoo.digits_splits(size=32, seed=0)           # already permuted with seed 0
    x = np.concatenate([d["x_val"], d["x_train"]])
    y = np.concatenate([d["y_val"], d["y_train"]])
    cuts = np.cumsum([n_test, n_val, n_calib])
    parts = dict(zip(("test", "val", "calib", "train"), np.split(np.arange(len(x)), cuts)))
    return {k: (np.ascontiguousarray(x[i]), y[i]) for k, i in parts.items()}


def prepare(name: str, out: Path, epochs: int, sp: dict) -> Path:
    """The model trained on the train split only (cached under its split sizes)."""
    sizes = "-".join(str(len(sp[k][1])) for k in ("train", "calib", "val", "test"))
    path = out / "models" / f"{name}-{sizes}-e{epochs}.onnx"
    if not path.exists():
        t0 = time.time()
        net = MODELS[name]()
        x, y = sp["train"]
        zoo.train_classifier(net, x, y, epochs=epochs, lr=0.1, augment_shift=2, seed=0)
        acc = zoo.accuracy(net, *sp["test"])
        zoo.export_onnx(net, path, (1, 1, 32, 32))
        print(f"trained {name} on {len(y)} images: test top-1 {acc:.4f} in {time.time() - t0:.0f} s "
              f"-> {path}", flush=True)
    return path


def write_files(out: Path, sp: dict) -> dict[str, Path]:
    files = {}
    for k in ("train", "calib", "val"):
        files[k] = out / "data" / f"{k}.npz"
        files[k].parent.mkdir(parents=True, exist_ok=True)
        x, y = sp[k]
        if k == "calib":
            np.savez(files[k], x=x)                  # calibration needs no labels
        else:
            np.savez(files[k], x=x, y=y)
    return files


def run_one(args, mname: str, path: Path, strat: str, seed: int, files: dict, test: Dataset,
            lo: int, hi: int, cache: Path) -> dict:
    out = Path(args.out) / "runs" / f"{mname}-{strat}-s{seed}"
    t0 = time.time()
    settings = SearchSettings(strategy=strat, budget=args.budget, max_acc_drop=args.max_acc_drop,
                              speedup=args.speedup, seed=seed, kernels_per_trial=args.kernels_per_trial,
                              confidence=args.confidence, confirm_fraction=args.confirm_fraction)
    resume = out / "run" if (out / "run" / "trials.jsonl").exists() else None
    config = RunConfig(path, "host", data=files["val"], calib=files["calib"], settings=settings,
                       out_dir=out, resume=resume, cache_dir=cache,
                       device=DeviceSpec(port_range=(lo, hi), threads=args.threads),
                       final_repeats=args.final_repeats,
                       train=files["train"] if args.finetune_epochs > 0 else None,
                       finetune_epochs=max(1, args.finetune_epochs))
    rep = run(config, on_event=lambda k, i: print(
                  f"  {mname}/{strat}/s{seed} trial {i['id']}: {i['status']} "
                  f"{i.get('latency_ms') or 0:.3f} ms drop {i.get('acc_drop', 0):.2f} "
                  f"[{i.get('acc_drop_lower', 0):.2f}, {i.get('acc_drop_upper', 0):.2f}] "
                  f"{i.get('acc_verdict') or ''}", flush=True) if k == "trial" else None)
    original = load_onnx(path)
    _, ref_right, dep_right = Evaluator(original, test).outcomes(load_onnx(out / "model.onnx"))
    unseen = paired_drop_interval(ref_right, dep_right, 0.9)
    best = rep.get("best") or {}
    rm = rep.get("remeasured") or {}
    conf = best.get("confirmation") or {}
    trials = [t for t in TrialLog(out / "run" / "trials.jsonl").read() if t.get("type") == "trial"]
    cm = cost_model_stats(trials)
    return {
        "model": mname, "strategy": strat, "seed": seed, "deployed": bool(rep.get("best")),
        "finetuned": bool(best.get("finetuned")),
        "search_drop": best.get("acc_drop"), "search_upper": best.get("acc_drop_upper"),
        "confirm_drop": conf.get("acc_drop"), "confirm_upper": conf.get("acc_drop_upper"),
        "unseen_drop": unseen.estimate, "unseen_lower": unseen.lower, "unseen_upper": unseen.upper,
        "unseen_n": unseen.n, "holds": unseen.estimate <= args.max_acc_drop + 1e-9,
        "speedup_paired": best.get("speedup") or 1.0,
        "speedup_remeasured": rm.get("speedup") or 1.0,
        "speedup_vs_ort": rep.get("speedup_vs_onnxruntime"),
        "ort_ms": (rep.get("onnxruntime") or {}).get("ms"), "baseline_ms": rm.get("baseline_ms"),
        "best_ms": rm.get("best_ms"), "trials": rep["trials"], "failed": rep["failed_trials"],
        "refused_wide": rep["refused"]["too_wide"], "refused_over": rep["refused"]["over_budget"],
        "why_none": rep.get("why_no_candidate"),
        "cm_within_10pct": cm["within_10pct"], "cm_tau": cm["kendall_tau"], "cm_n": cm["n_heldout"],
        "seconds": time.time() - t0, "inner": _inner(out / "run"), "run_dir": str(out / "run"),
    }


def heldout(rows: list[dict], model_path: Path, cache_of, target) -> dict:
    """The final hw latency model on the other strategies' candidates (never measured by it)."""
    hw = next((r for r in rows if r["strategy"] == "hw"), None)
    if hw is None:
        return {}
    model = load_onnx(model_path)
    space = build_space(model, target.hardware)
    lm = LatencyModel.load(LatencyModel.path_for(cache_of("hw"), "host"), "host",
                           int(target.hardware["fp32_lanes"]))
    log = lambda r: TrialLog(Path(r["run_dir"]) / "trials.jsonl").read()
    base = lambda r: next(x for x in log(r) if x.get("type") == "baseline")["latency_ms"]
    shapes = lambda t: extract_kernels(compress(model, space, t["config"]))   # L1: same shapes
    lm.update_model(extract_kernels(model), base(hw))
    for t in log(hw):
        if t.get("type") == "trial" and t["status"] == "ok":
            lm.update_model(shapes(t), t["latency_ms"])
    pts = []
    for r in rows:
        if r["strategy"] == "hw":
            continue
        scale = base(hw) / base(r)   # paired latencies are ratios to that run's baseline
        for t in log(r):
            if t.get("type") == "trial" and t["status"] == "ok":
                pts.append((lm.predict(shapes(t)), t["latency_ms"] * scale))
    if not pts:
        return {}
    p, m = np.array(pts).T
    return {"within_10pct": float(np.mean(np.abs(p - m) / m <= 0.1)),
            "kendall_tau": kendall_tau(p, m), "n_heldout": len(pts)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet20,mobilenet_v2")
    ap.add_argument("--strategies", default="hw")
    ap.add_argument("--seeds", default="0,1,2", help="search seeds (also seed the confirmation split)")
    ap.add_argument("--budget", type=int, default=20)
    ap.add_argument("--max-acc-drop", type=float, default=1.0)
    ap.add_argument("--speedup", type=float, default=None, help="most accurate at >= X speedup")
    ap.add_argument("--confidence", type=float, default=0.9)
    ap.add_argument("--confirm-fraction", type=float, default=0.3)
    ap.add_argument("--finetune-epochs", type=int, default=10, help="0: no --train")
    ap.add_argument("--epochs", type=int, default=10, help="training epochs of the models")
    ap.add_argument("--test-size", type=int, default=247)
    ap.add_argument("--val-size", type=int, default=247)
    ap.add_argument("--calib-size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1, help="TVM threads on the device and "
                    "onnxruntime intra-op threads (1: steadiest on a shared CPU)")
    ap.add_argument("--kernels-per-trial", type=int, default=6)
    ap.add_argument("--final-repeats", type=int, default=3)
    ap.add_argument("--out", default="bench_search_out")
    ap.add_argument("--ports", default="9300-9330", help="LO-HI for the local RPC servers")
    ap.add_argument("--cold-cache", action="store_true", help="a latency-model cache per strategy")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    target = load_target("host")
    lo, hi = (int(x) for x in args.ports.split("-"))
    cache_of = (lambda s: out / "cache" / s) if args.cold_cache else (lambda s: out / "cache")
    sp = splits(args.test_size, args.val_size, args.calib_size)
    files = write_files(out, sp)
    test = Dataset({"input": sp["test"][0]}, sp["test"][1], "digits32-test")
    rows, held = [], {}
    for mname in args.models.split(","):
        path = prepare(mname, out, args.epochs, sp)
        mrows = []
        for strat in args.strategies.split(","):
            for seed in (int(s) for s in args.seeds.split(",")):
                mrows.append(run_one(args, mname, path, strat, seed, files, test, lo, hi,
                                     cache_of(strat)))
        held[mname] = heldout([r for r in mrows if r["seed"] == mrows[0]["seed"]], path,
                              cache_of, target) if len(args.strategies.split(",")) > 1 else {}
        rows += mrows
    (out / "bench.json").write_text(json.dumps({"rows": rows, "heldout": held, "args": vars(args)},
                                               indent=1, default=float))
    _print(rows, held, args)


def _print(rows: list[dict], held: dict, args) -> None:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() \
        else platform.processor()
    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"\nCPU: {cpu}, {os.cpu_count()} logical; load average {load}")
    print(f"host CPU over TVM RPC, {args.threads} TVM thread(s) = onnxruntime threads; budget "
          f"{args.budget}; max accuracy drop {args.max_acc_drop} points at confidence "
          f"{args.confidence}; val {args.val_size} images (confirmation {args.confirm_fraction:g} of "
          f"it), unseen test {args.test_size}; fine-tune epochs {args.finetune_epochs}")
    print("drops in points: search / confirmation parts as the run reported them; unseen = the "
          "deployed model on the test split (90 % interval); x: paired (search), re-measured "
          "round-robin, vs onnxruntime")
    hdr = (f"{'model':<13}{'strat':<7}{'seed':>4}{'dep':>4}{'search':>8}{'confirm':>8}"
           f"{'unseen [90% interval]':>23}{'holds':>6}{'x pair':>7}{'x re':>6}{'x ort':>6}"
           f"{'ort ms':>8}{'trials':>7}{'wide':>5}{'over':>5}{'cm<=10%':>8}{'tau':>6}{'sec':>6}"
           f"{'inner':>6}")
    print(hdr)
    print("-" * len(hdr))
    f = lambda v, p=2: "-" if v is None else f"{v:.{p}f}"
    for r in rows:
        unseen = f"{r['unseen_drop']:.2f} [{r['unseen_lower']:.2f}, {r['unseen_upper']:.2f}]"
        dep = ("ft" if r["finetuned"] else "yes") if r["deployed"] else "no"
        print(f"{r['model']:<13}{r['strategy']:<7}{r['seed']:>4}{dep:>4}{f(r['search_drop']):>8}"
              f"{f(r['confirm_drop']):>8}{unseen:>23}{'yes' if r['holds'] else 'NO':>6}"
              f"{f(r['speedup_paired']):>7}{f(r['speedup_remeasured']):>6}{f(r['speedup_vs_ort']):>6}"
              f"{f(r['ort_ms'], 3):>8}{r['trials']:>7}{r['refused_wide']:>5}{r['refused_over']:>5}"
              f"{f(r['cm_within_10pct']):>8}{f(r['cm_tau']):>6}{r['seconds']:>6.0f}"
              f"{f(r.get('inner'), 0):>6}")
    for m in dict.fromkeys(r["model"] for r in rows):
        mr = [r for r in rows if r["model"] == m]
        print(f"{m}: --max-acc-drop {args.max_acc_drop} held on the unseen test split in "
              f"{sum(r['holds'] for r in mr)} of {len(mr)} runs; deployed a candidate in "
              f"{sum(r['deployed'] for r in mr)}")
    print(f"all: held in {sum(r['holds'] for r in rows)} of {len(rows)} runs")
    for m, h in held.items():
        if h.get("n_heldout"):
            print(f"{m}: final hw latency model on the other strategies' {h['n_heldout']} "
                  f"candidates: within 10% {h['within_10pct']:.2f}, Kendall tau {h['kendall_tau']:.2f}")


def _inner(run_dir: Path) -> int | None:
    """rl: agent episodes; bo: points screened by the models (from the run's strategy state)."""
    from pfcompile.search.state import load_strategy_state

    st = load_strategy_state(run_dir)
    if st is None:
        return None
    return int(st["episodes"]) if "episodes" in st else len(st.get("screened", []))


if __name__ == "__main__":
    main()
