"""Channel pruning on the seven fixture topologies (8x8 digits): L1 vs LASSO + reconstruction.

Trains each model (or reuses ``--models-dir/<Name>.onnx``), prunes every prunable
group by ``--ratio`` with each criterion (no fine-tuning), and prints one table:
MACs before/after, top-1 on the 540 validation digits, output SNR vs the
original model, and the wall time of the prune call (one run each, on whatever
else this machine is doing: indicative only).

    python tools/bench_prune.py --ratio 0.5 --work out/bench_prune
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from pfcompile import ir as pir
from pfcompile import zoo
from pfcompile.data import Dataset
from pfcompile.passes import PruneConfig, dependency_groups, model_stats
from pfcompile.passes.prune import prune

MODELS = ("PlainCNN", "ResNetTiny", "MobileNetV2Tiny", "DenseNetTiny", "SENetTiny",
          "FlattenGemmNet", "GroupedConvNet")


def _run(model, x: np.ndarray) -> np.ndarray:
    proto = pir.to_proto(model) if not isinstance(model, Path) else None
    src = proto.SerializeToString() if proto is not None else str(model)
    sess = ort.InferenceSession(src, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: xi[None]})[0] for xi in x])


def _snr(ref: np.ndarray, out: np.ndarray) -> float:
    return float(10 * np.log10((ref ** 2).sum() / max(((out - ref) ** 2).sum(), 1e-30)))


def _model_path(name: str, models_dir: Path | None, work: Path, d: dict) -> Path:
    if models_dir is not None and (models_dir / f"{name}.onnx").exists():
        return models_dir / f"{name}.onnx"
    path = work / f"{name}.onnx"
    if not path.exists():
        m = getattr(zoo, name)()
        zoo.train_classifier(m, d["x_train"], d["y_train"], epochs=6, lr=0.05, batch=64, seed=0)
        zoo.export_onnx(m, path, (1, 1, 8, 8))
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--work", type=Path, default=Path("out/bench_prune"))
    ap.add_argument("--models-dir", type=Path, default=None)
    ap.add_argument("--calib", type=int, default=64, help="calibration samples for lasso")
    ap.add_argument("--models", nargs="*", default=list(MODELS))
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    d = zoo.digits_splits(8)
    calib = Dataset({"input": d["x_calib"][:args.calib]}, None)
    xv, yv = d["x_val"], d["y_val"]
    head = (f"{'model':16s} {'groups':>7s} {'MACs':>9s} {'MACs pr':>9s} {'top1':>6s} "
            f"{'top1 L1':>8s} {'top1 LASSO':>10s} {'SNR L1':>7s} {'SNR LASSO':>9s} "
            f"{'t L1 s':>7s} {'t LASSO s':>9s}")
    print(f"ratio {args.ratio}, no fine-tuning, {len(xv)} validation digits, SNR in dB vs the "
          "original model's logits")
    print(head)
    print("-" * len(head))
    for name in args.models:
        path = _model_path(name, args.models_dir, args.work, d)
        model = pir.load(path)
        groups = dependency_groups(model)
        ref = _run(path, xv)
        row = {}
        for crit in ("l1", "lasso"):
            t0 = time.perf_counter()
            res = prune(model, PruneConfig(ratio=args.ratio, criterion=crit,
                                           calib_samples=args.calib),
                        calib if crit == "lasso" else None)
            dt = time.perf_counter() - t0
            out = _run(res.model, xv)
            row[crit] = (float((out.argmax(1) == yv).mean()), _snr(ref, out), dt,
                         model_stats(res.model).macs)
        print(f"{name:16s} {sum(g.prunable for g in groups):>3d}/{len(groups):<3d} "
              f"{model_stats(model).macs:>9,d} {row['l1'][3]:>9,d} "
              f"{float((ref.argmax(1) == yv).mean()):>6.3f} {row['l1'][0]:>8.3f} "
              f"{row['lasso'][0]:>10.3f} {row['l1'][1]:>7.2f} {row['lasso'][1]:>9.2f} "
              f"{row['l1'][2]:>7.2f} {row['lasso'][2]:>9.2f}", flush=True)


if __name__ == "__main__":
    main()
