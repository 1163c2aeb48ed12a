"""Accuracy and cost of a model on a data set, run with onnxruntime.

:func:`evaluate` returns ``{"top1", "agreement", "output_snr_db", "macs",
"params", "size_bytes"}``:

- ``top1``: fraction of samples whose arg-max over the first output (flattened
  per sample) equals the label ``y``; None when the data has no labels.
- ``agreement``: fraction of samples whose top-1 class equals the reference
  model's; None without a reference.
- ``output_snr_db``: ``10 log10(sum(ref^2) / sum((out - ref)^2))`` over the
  whole first output; ``inf`` when the outputs are identical; None without a
  reference.
- ``macs``, ``params``, ``size_bytes``: :func:`pfcompile.passes.stats.model_stats`.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from pfcompile import ir as pir
from pfcompile.batching import batch_free
from pfcompile.data import Dataset
from pfcompile.errors import DataError, ModelError
from pfcompile.ir import ModelLike
from pfcompile.passes.calibration import check_calib_data
from pfcompile.passes.qlayers import run_ort
from pfcompile.passes.stats import model_stats

__all__ = ["EVAL_FIELDS", "evaluate", "output_snr_db", "top1_classes"]

EVAL_FIELDS = ("top1", "agreement", "output_snr_db", "macs", "params", "size_bytes")


def _model(model: ModelLike | str | Path) -> ModelLike:
    if isinstance(model, (str, Path)):
        return pir.load(model)
    return model


def top1_classes(logits: np.ndarray) -> np.ndarray:
    """Arg-max class of each sample over its flattened output (``(N, C)`` or ``(N, C, 1, 1)``)."""
    if logits.ndim < 2:
        raise ModelError(f"top-1 needs an output with a class axis (N, C), got shape {logits.shape}")
    return logits.reshape(logits.shape[0], -1).argmax(axis=1)


def output_snr_db(out: np.ndarray, ref: np.ndarray) -> float:
    """Signal-to-noise ratio of ``out`` against ``ref`` in dB (``inf`` if equal)."""
    if out.shape != ref.shape:
        raise ModelError(f"output shape {out.shape} differs from the reference's {ref.shape}")
    noise = float(np.sum((out.astype(np.float64) - ref) ** 2))
    signal = float(np.sum(ref.astype(np.float64) ** 2))
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def _batched(model: ModelLike) -> ModelLike:
    """``model`` with a free batch where provably safe (pfcompile.batching); otherwise
    ``model`` itself, which ``run_ort`` runs at its fixed batch (one sample at a time)."""
    return batch_free(pir.to_proto(model)) or model


def evaluate(model: ModelLike | str | Path, data: Dataset, reference: ModelLike | str | Path | None = None,
             batch: int = 256) -> dict:
    """Evaluate ``model`` on ``data`` (and against ``reference``); see the module docstring."""
    m = _model(model)
    check_calib_data(m, data, "evaluation data")
    out = run_ort(_batched(m), data.inputs, batch)[0]
    pred = top1_classes(out)
    result: dict = dict.fromkeys(EVAL_FIELDS)
    if data.labels is not None:
        if len(data.labels) != len(pred):
            raise DataError(f"{len(data.labels)} labels for {len(pred)} samples")
        result["top1"] = float(np.mean(pred == data.labels))
    if reference is not None:
        r = _model(reference)
        check_calib_data(r, data, "evaluation data (for the reference model)")
        ref = run_ort(_batched(r), data.inputs, batch)[0]
        result["agreement"] = float(np.mean(pred == top1_classes(ref)))
        result["output_snr_db"] = output_snr_db(out, ref)
    stats = model_stats(m)
    result.update(macs=int(stats.macs), params=int(stats.params), size_bytes=int(stats.size_bytes))
    return result
