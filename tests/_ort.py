"""onnxruntime helpers for the pass tests (models here have a static batch of 1)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir

from pfcompile.reference import reference_session


def run(model: onnx.ModelProto | ir.Model | str | Path, x: np.ndarray) -> np.ndarray:
    """Logits for every sample of ``x`` (N, ...), one sample per run."""
    sess = reference_session(model)
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: xi[None]})[0] for xi in x])


def snr_db(ref: np.ndarray, out: np.ndarray) -> float:
    return float(10 * np.log10((ref ** 2).sum() / max(((out - ref) ** 2).sum(), 1e-30)))


def assert_close_rel(ref: np.ndarray, out: np.ndarray, rel: float = 1e-5) -> None:
    """max |out - ref| <= rel * max |ref| (relative to the output's scale)."""
    assert out.shape == ref.shape
    err = float(np.abs(out - ref).max())
    assert err <= rel * float(np.abs(ref).max()), f"max abs diff {err} vs scale {np.abs(ref).max()}"
