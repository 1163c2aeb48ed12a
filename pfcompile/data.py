"""Data files: ``.npz`` with ``x`` (N, ...) float32, or one array per input name,
and optional integer labels ``y``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pfcompile.errors import DataError
from pfcompile.model import TensorSpec

__all__ = ["Dataset", "load_npz", "random_inputs"]


@dataclass
class Dataset:
    """Inputs keyed by model input name, plus optional labels."""

    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None
    path: str = ""

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values())))

    def batch(self, start: int, stop: int) -> dict[str, np.ndarray]:
        return {k: v[start:stop] for k, v in self.inputs.items()}

    def subset(self, n: int) -> Dataset:
        return Dataset({k: v[:n] for k, v in self.inputs.items()},
                       None if self.labels is None else self.labels[:n], self.path)


def load_npz(path: str | Path, specs: list[TensorSpec]) -> Dataset:
    """Load an ``.npz`` and check it against the model's inputs.

    A single input may be stored as ``x``; several inputs by their names. The
    per-sample shape must equal the model input shape without its batch dim.
    """
    p = Path(path)
    if not p.exists():
        raise DataError(f"data file not found: {p}")
    try:
        z = np.load(p, allow_pickle=False)
        arrays = {k: z[k] for k in z.files}
    except Exception as exc:
        raise DataError(f"{p} is not a readable .npz file: {exc}") from exc
    labels = arrays.pop("y", None)
    inputs: dict[str, np.ndarray] = {}
    for i, spec in enumerate(specs):
        if spec.name in arrays:
            arr = arrays[spec.name]
        elif len(specs) == 1 and "x" in arrays:
            arr = arrays["x"]
        else:
            raise DataError(
                f"{p} has no array for model input '{spec.name}' (found {sorted(arrays)}; "
                f"use 'x' for a single-input model)"
            )
        want = tuple(spec.shape[1:])
        if arr.ndim != len(spec.shape) or tuple(arr.shape[1:]) != want:
            raise DataError(
                f"{p}: array for input '{spec.name}' has shape {tuple(arr.shape)}, the model expects "
                f"(N, {', '.join(map(str, want))})"
            )
        inputs[spec.name] = np.ascontiguousarray(arr.astype(spec.dtype, copy=False))
    n = {len(v) for v in inputs.values()}
    if len(n) != 1 or 0 in n:
        raise DataError(f"{p}: inputs must have the same, non-zero number of samples (got {n})")
    if labels is not None:
        labels = np.asarray(labels)
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise DataError(f"{p}: labels 'y' must be a 1-D integer array, got {labels.dtype}{labels.shape}")
        if len(labels) != next(iter(n)):
            raise DataError(f"{p}: {len(labels)} labels for {next(iter(n))} samples")
    return Dataset(inputs, labels, str(p))


def random_inputs(specs: list[TensorSpec], seed: int = 0) -> dict[str, np.ndarray]:
    """A fixed random input per spec (used to verify a compiled model)."""
    rng = np.random.default_rng(seed)
    out = {}
    for s in specs:
        if np.issubdtype(np.dtype(s.dtype), np.floating):
            out[s.name] = rng.standard_normal(s.shape).astype(s.dtype)
        else:
            out[s.name] = rng.integers(0, 10, size=s.shape).astype(s.dtype)
    return out
