"""Activation calibration: run the float model on calibration data, collect
statistics of chosen tensors, and turn them into quantization ranges.

Methods (per tensor):

- ``minmax``: the observed minimum and maximum.
- ``percentile``: the ``p``-th and ``(100-p)``-th percentiles (p = 99.99 by default).
- ``mse``: the range ``alpha * [min, max]`` (alpha in 0.2 ... 1.0) whose
  quantize-dequantize at the layer's bit width has the least squared error on
  the observed values.

Every range is widened to include 0 so that zero is exactly representable.
Values are subsampled (at most ``max_samples`` per tensor) for percentile and
mse; min, max and the per-position batch mean are exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnx_ir as ir

from pfcompile.data import Dataset
from pfcompile.errors import ConfigError, DataError
from pfcompile.passes.qlayers import as_proto, iter_ort

__all__ = [
    "CALIB_METHODS",
    "TensorStats",
    "act_range",
    "check_calib_data",
    "collect_stats",
    "fake_quant_uint",
    "uint8_qparams",
]

CALIB_METHODS = ("minmax", "percentile", "mse")


@dataclass
class TensorStats:
    """What calibration saw of one tensor."""

    name: str
    min: float
    max: float
    mean: np.ndarray  # mean over the batch axis only: the per-position mean, shape = tensor[1:]
    samples: np.ndarray  # a uniform subsample of the values (float32, 1-D)
    count: int


def check_calib_data(model: ir.Model | onnx.ModelProto, data: Dataset, where: str = "calibration data") -> None:
    """Raise DataError unless ``data`` has one array per model input, of the input's per-sample shape."""
    proto = as_proto(model)
    inits = {t.name for t in proto.graph.initializer}
    where = f"{where} ({data.path})" if data.path else where
    if len(data) == 0:
        raise DataError(f"{where} is empty")
    for vi in proto.graph.input:
        if vi.name in inits:
            continue
        if vi.name not in data.inputs:
            raise DataError(f"{where} has no array for model input '{vi.name}' "
                            f"(has {sorted(data.inputs)})")
        dims = [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]
        arr = data.inputs[vi.name]
        ok = arr.ndim == len(dims) and all(
            want is None or want == have for want, have in zip(dims[1:], arr.shape[1:]))
        if not ok:
            want = "x".join("?" if d is None else str(d) for d in dims[1:])
            raise DataError(f"{where}: array for model input '{vi.name}' has shape {tuple(arr.shape)}, "
                            f"the model expects (N, {want.replace('x', ', ')})")


def collect_stats(model: ir.Model | onnx.ModelProto, data: Dataset, names: list[str],
                  max_samples: int = 1 << 20, seed: int = 0) -> dict[str, TensorStats]:
    """Run ``model`` (onnxruntime) over ``data`` and collect stats of the tensors ``names``."""
    check_calib_data(model, data)
    rng = np.random.default_rng(seed)
    n = len(data)
    proto = as_proto(model)
    n_out = len(proto.graph.output)
    mins = {k: np.inf for k in names}
    maxs = {k: -np.inf for k in names}
    sums: dict[str, np.ndarray] = {}
    picks: dict[str, list[np.ndarray]] = {k: [] for k in names}
    counts = dict.fromkeys(names, 0)
    seen = 0
    for outs in iter_ort(proto, data.inputs, extra_outputs=names):
        got = len(outs[0]) if outs else 0
        seen += got
        for k, arr in zip(names, outs[n_out:]):
            arr = np.asarray(arr, dtype=np.float32)
            mins[k] = min(mins[k], float(arr.min()))
            maxs[k] = max(maxs[k], float(arr.max()))
            s = arr.sum(axis=0, dtype=np.float64)
            sums[k] = s if k not in sums else sums[k] + s
            flat = arr.ravel()
            counts[k] += flat.size
            budget = max(1, int(max_samples * got / n))
            picks[k].append(flat if flat.size <= budget else rng.choice(flat, budget, replace=False))
    return {k: TensorStats(k, mins[k], maxs[k], (sums[k] / seen).astype(np.float32),
                           np.concatenate(picks[k]), counts[k]) for k in names}


def uint8_qparams(lo: float, hi: float, bits: int) -> tuple[float, int]:
    """Scale and zero point mapping [lo, hi] (widened to hold 0) onto 2**bits uint levels."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    levels = (1 << bits) - 1
    if hi - lo <= 0:
        return 1.0, 0
    scale = (hi - lo) / levels
    zp = int(np.clip(np.round(-lo / scale), 0, levels))
    return float(scale), zp


def fake_quant_uint(x: np.ndarray, scale: float, zp: int, bits: int) -> np.ndarray:
    q = np.clip(np.round(x / scale) + zp, 0, (1 << bits) - 1)
    return ((q - zp) * scale).astype(np.float32)


def act_range(stats: TensorStats, method: str, bits: int, percentile: float = 99.99) -> tuple[float, float]:
    """The (lo, hi) range of a tensor for ``method`` at ``bits``; always lo <= 0 <= hi."""
    if method not in CALIB_METHODS:
        raise ConfigError(f"calibration method '{method}' is not one of {', '.join(CALIB_METHODS)}")
    lo, hi = min(stats.min, 0.0), max(stats.max, 0.0)
    if method == "percentile":
        if not 50.0 < percentile <= 100.0:
            raise ConfigError(f"percentile must be in (50, 100], got {percentile}")
        v = stats.samples
        lo = min(float(np.percentile(v, 100.0 - percentile)), 0.0)
        hi = max(float(np.percentile(v, percentile)), 0.0)
    elif method == "mse":
        v = stats.samples
        if v.size > 200_000:
            v = v[np.random.default_rng(1).choice(v.size, 200_000, replace=False)]
        best, best_err = (lo, hi), np.inf
        for alpha in np.linspace(0.2, 1.0, 33):
            s, zp = uint8_qparams(alpha * lo, alpha * hi, bits)
            err = float(np.mean((fake_quant_uint(v, s, zp, bits) - v) ** 2))
            if err < best_err:
                best, best_err = (alpha * lo, alpha * hi), err
        lo, hi = best
    return lo, hi
