"""Kernel-level latency model (nn-Meter's idea on TVM-compiled kernels).

Features per fused kernel: op kind, shapes after pruning, MACs, bytes, bits,
channel multiples of the vector width, layout. An XGBoost regressor on
log(ms) is trained on kernel times measured on the device; a model's latency
is the sum over its kernels, mapped through a linear fit ``a * sum + b`` of
whole-model measurements (``b`` is the VM's per-call overhead). Kernels already
measured use their measured time. The model is updated online and saved per
target (``<cache_dir>/<target>/latency_model.json``) so a later run starts warm.

:class:`FlopsModel` is the baseline PocketFlow and AMC used: latency
proportional to MACs, with the same linear fit to measurements.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from pfcompile.search.graph import Kernel

__all__ = ["FEATURE_NAMES", "FlopsModel", "LatencyModel", "codegen_fingerprint", "kendall_tau",
           "kernel_features"]

_OPS = ("conv", "dwconv", "gconv", "gemm", "maxpool", "avgpool", "gpool", "ew")
FEATURE_NAMES = [f"op_{o}" for o in _OPS] + [
    "log_macs", "log_bytes", "log_in", "log_out", "log_w", "cin", "cout", "h", "w", "oh", "ow",
    "kh", "kw", "stride", "groups_log", "n_epilogue", "residual", "bits", "abits",
    "cout_mod_lanes", "cin_mod_lanes", "cout_lanes_frac", "cin_lanes_frac", "ow_mod_lanes",
    "layout_nchw", "arith_intensity"]


_FINGERPRINT: str | None = None


def codegen_fingerprint() -> str:
    """Hash of the code that decides what a kernel costs (schedules, codegen,
    integer lowering, the kernel timing protocol, the accelerator's cycle model):
    cached kernel times measured with other code are stale (a schedule fix changed
    some kernels 20x)."""
    global _FINGERPRINT
    if _FINGERPRINT is None:
        import hashlib

        root = Path(__file__).resolve().parents[1]
        h = hashlib.sha256()
        files = sorted([*root.glob("codegen/templates/*.py"), *root.glob("codegen/*.py"),
                        *root.glob("quantexec/*.py"), root / "search" / "devices.py",
                        *root.glob("accel/*.py"), root / "search" / "accel_device.py"])
        for f in files:
            h.update(f.name.encode())
            h.update(f.read_bytes())
        _FINGERPRINT = h.hexdigest()[:16]
    return _FINGERPRINT


def _l(x: float) -> float:
    return math.log1p(max(0.0, float(x)))


def kernel_features(k: Kernel, lanes: int = 8) -> list[float]:
    ins = k.in_shape if k.in_shape else (1,)
    outs = k.out_shape if k.out_shape else (1,)
    cin = ins[1] if len(ins) > 1 else ins[0]
    cout = outs[1] if len(outs) > 1 else outs[0]
    h, w = (ins[2], ins[3]) if len(ins) == 4 else (1, 1)
    oh, ow = (outs[2], outs[3]) if len(outs) == 4 else (1, 1)
    one_hot = [1.0 if k.op == o else 0.0 for o in _OPS]
    wsz = int(np.prod(k.w_shape)) if k.w_shape else 0
    return one_hot + [
        _l(k.macs), _l(k.bytes), _l(np.prod(ins)), _l(np.prod(outs)), _l(wsz),
        float(cin), float(cout), float(h), float(w), float(oh), float(ow),
        float(k.kernel[0]), float(k.kernel[1]), float(k.stride[0]), _l(k.groups),
        float(len(k.epilogue)), float(any(e.endswith("_t") for e in k.epilogue)), float(k.bits),
        float(k.abits if k.abits is not None else k.bits),
        float(cout % lanes), float(cin % lanes), float(cout / lanes - cout // lanes),
        float(cin / lanes - cin // lanes), float(ow % lanes), 1.0,
        float(k.macs) / max(1.0, float(k.bytes)),
    ]


def kendall_tau(a, b) -> float:
    """Kendall's tau-b of two sequences (no scipy)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    n = len(a)
    if n < 2:
        return float("nan")
    conc = disc = ta = tb = 0
    for i in range(n):
        da = np.sign(a[i + 1:] - a[i])
        db = np.sign(b[i + 1:] - b[i])
        conc += int(np.sum(da * db > 0))
        disc += int(np.sum(da * db < 0))
        ta += int(np.sum((da == 0) & (db != 0)))
        tb += int(np.sum((db == 0) & (da != 0)))
    den = math.sqrt((conc + disc + ta) * (conc + disc + tb))
    return float((conc - disc) / den) if den else float("nan")


class _LinearFit:
    """measured ≈ a * predicted_sum + b, refitted on every whole-model point."""

    def __init__(self) -> None:
        self.points: list[tuple[float, float]] = []
        self.a, self.b = 1.0, 0.0

    def add(self, pred_sum: float, measured: float) -> None:
        self.points.append((float(pred_sum), float(measured)))
        xs = np.array([p[0] for p in self.points])
        ys = np.array([p[1] for p in self.points])
        if len(xs) >= 3 and np.ptp(xs) > 1e-9:
            a, b = np.polyfit(xs, ys, 1)
            if a > 0:
                self.a, self.b = float(a), float(b)
                return
        self.a = float(np.median(ys / np.maximum(xs, 1e-9))) if len(xs) else 1.0
        self.b = 0.0

    def __call__(self, s: float) -> float:
        return max(1e-6, self.a * s + self.b)


class LatencyModel:
    """Per-kernel XGBoost regressor; ``predict(kernels)`` -> model latency in ms."""

    kind = "kernel-xgboost"

    def __init__(self, target: str, lanes: int = 8, seed: int = 0) -> None:
        self.target, self.lanes, self.seed = target, lanes, seed
        self.kernels: dict[str, tuple[dict, float]] = {}   # workload key -> (kernel json, ms)
        self.reference_ms: float | None = None  # the device's reference-kernel time (scale)
        self.fit_ = _LinearFit()
        self._booster = None
        self._dirty = True

    # -- data ----------------------------------------------------------------
    def known(self, k: Kernel) -> bool:
        return k.key in self.kernels

    def update_kernels(self, kernels: list[Kernel], times_ms: list[float | None]) -> int:
        n = 0
        for k, t in zip(kernels, times_ms):
            if t is not None and math.isfinite(t) and t > 0:
                self.kernels[k.key] = (k.to_json(), float(t))
                n += 1
        self._dirty = self._dirty or n > 0
        return n

    def update_model(self, kernels: list[Kernel], measured_ms: float) -> None:
        self.fit_.add(self.kernel_sum(kernels), measured_ms)

    # -- fit / predict -------------------------------------------------------
    def _train(self) -> None:
        if not self._dirty:
            return
        self._dirty = False
        if len(self.kernels) < 8:
            self._booster = None
            return
        import xgboost as xgb

        X = np.array([kernel_features(Kernel.from_json(j), self.lanes) for j, _ in self.kernels.values()])
        y = np.log(np.array([t for _, t in self.kernels.values()]))
        self._booster = xgb.XGBRegressor(n_estimators=300, max_depth=5, learning_rate=0.08,
                                         subsample=0.9, min_child_weight=1, random_state=self.seed,
                                         n_jobs=1)
        self._booster.fit(X, y)

    def predict_kernels(self, kernels: list[Kernel], use_measured: bool = True) -> np.ndarray:
        self._train()
        out = np.zeros(len(kernels))
        todo = []
        for i, k in enumerate(kernels):
            if use_measured and k.key in self.kernels:
                out[i] = self.kernels[k.key][1]
            else:
                todo.append(i)
        if todo:
            if self._booster is not None:
                X = np.array([kernel_features(kernels[i], self.lanes) for i in todo])
                out[todo] = np.exp(self._booster.predict(X))
            else:  # too few points for a tree model: time per MAC+byte from what we have
                rate = self._rate()
                out[todo] = [rate * (kernels[i].macs + kernels[i].bytes / 4) for i in todo]
        return out

    def _rate(self) -> float:
        if not self.kernels:
            return 1e-6
        r = [t / max(1.0, Kernel.from_json(j).macs + Kernel.from_json(j).bytes / 4)
             for j, t in self.kernels.values()]
        return float(np.median(r))

    def kernel_sum(self, kernels: list[Kernel], use_measured: bool = True) -> float:
        return float(self.predict_kernels(kernels, use_measured).sum())

    def predict(self, kernels: list[Kernel], use_measured: bool = True) -> float:
        return self.fit_(self.kernel_sum(kernels, use_measured))

    # -- persistence -------------------------------------------------------------
    def to_json(self) -> dict:
        return {"kind": self.kind, "target": self.target, "lanes": self.lanes,
                "fingerprint": codegen_fingerprint(), "reference_ms": self.reference_ms,
                "kernels": {k: {"kernel": j, "ms": t} for k, (j, t) in self.kernels.items()},
                "fit": {"a": self.fit_.a, "b": self.fit_.b, "points": self.fit_.points}}

    def save(self, path: str | Path) -> Path:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.to_json()))
        tmp.replace(p)
        return p

    @classmethod
    def load(cls, path: str | Path, target: str, lanes: int = 8) -> LatencyModel:
        """A model warm from ``path`` if it exists, belongs to ``target`` and was
        measured with this code generator (:func:`codegen_fingerprint`); else cold.

        Whole-model fit points are not carried over: they depend on the model."""
        m = cls(target, lanes)
        p = Path(path)
        if p.exists():
            try:
                d = json.loads(p.read_text())
            except (OSError, json.JSONDecodeError):
                return m
            if (d.get("target") == target and d.get("kind") == cls.kind
                    and d.get("fingerprint") == codegen_fingerprint()):
                m.kernels = {k: (v["kernel"], float(v["ms"])) for k, v in d.get("kernels", {}).items()}
                m.reference_ms = d.get("reference_ms")
        return m

    @staticmethod
    def path_for(cache_dir: str | Path, target: str) -> Path:
        return Path(cache_dir) / target / "latency_model.json"


class FlopsModel:
    """Latency ∝ MACs (the FLOPs proxy), with the same linear fit to measurements."""

    kind = "flops"

    def __init__(self) -> None:
        self.fit_ = _LinearFit()

    def known(self, k: Kernel) -> bool:
        return True

    def update_kernels(self, kernels, times_ms) -> int:
        return 0

    def kernel_sum(self, kernels: list[Kernel], use_measured: bool = True) -> float:
        return float(sum(k.macs for k in kernels)) / 1e6

    def update_model(self, kernels: list[Kernel], measured_ms: float) -> None:
        self.fit_.add(self.kernel_sum(kernels), measured_ms)

    def predict(self, kernels: list[Kernel], use_measured: bool = True) -> float:
        return self.fit_(self.kernel_sum(kernels))
