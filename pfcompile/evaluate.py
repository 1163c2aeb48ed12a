"""Accuracy and cost of a model on a data set, run with onnxruntime.

The one way pfcompile runs a model over a data set for accuracy is :func:`model_outputs`:
the exact reference session (:func:`pfcompile.reference.reference_session`), batched
where batching is provably per-sample identical (:func:`pfcompile.batching.batch_free`),
else at the model's fixed batch (one sample at a time). :func:`evaluate` (``pfcompile
evaluate``) and the search's :class:`pfcompile.search.evaluation.Evaluator` both use it.

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

``model`` may also be a compiled artifact folder (``pfcompile compile -o DIR``, or
``artifact=DIR`` with its ``source.onnx`` loaded): the
accuracy figures are then those of ``DIR/source.onnx`` (the exact reference its
library is verified against), and ``size_bytes`` is the bytes of the deployed files
(:func:`pfcompile.artifact_size.artifact_size`), with ``code_bytes`` and
``weight_bytes`` apart.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from pfcompile import ir as pir
from pfcompile.artifact_size import artifact_size
from pfcompile.batching import batch_free
from pfcompile.data import Dataset
from pfcompile.errors import DataError, ModelError
from pfcompile.ir import ModelLike
from pfcompile.passes.calibration import check_calib_data
from pfcompile.passes.qlayers import run_ort
from pfcompile.passes.stats import model_stats

__all__ = ["EVAL_FIELDS", "evaluate", "model_outputs", "output_snr_db", "top1_classes"]

EVAL_FIELDS = ("top1", "agreement", "output_snr_db", "macs", "params", "size_bytes")


def _model(model: ModelLike | str | Path) -> ModelLike:
    if isinstance(model, (str, Path)):
        p = Path(model)
        return pir.load(p / "source.onnx" if p.is_dir() else p)
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


def model_outputs(model: ModelLike, data: Dataset, batch: int = 256, *, n: int | None = None,
                  threads: int = 2) -> np.ndarray:
    """The first output of ``model`` over the first ``n`` samples of ``data`` (all when
    None), from the reference session with ``threads`` intra-op threads. Runs ``batch``
    samples at a time where :func:`pfcompile.batching.batch_free` proves that per-sample
    identical; otherwise at the model's fixed batch (one sample at a time: a graph that
    fixes its batch, e.g. Reshape constants ``[1, 200]``, would fail or mix samples)."""
    inputs = data.inputs if n is None else data.batch(0, min(n, len(data)))
    free = batch_free(pir.to_proto(model))
    if free is None:
        return run_ort(model, inputs, 1, threads)[0]
    return run_ort(free, inputs, batch, threads)[0]


def evaluate(model: ModelLike | str | Path, data: Dataset, reference: ModelLike | str | Path | None = None,
             batch: int = 256, *, artifact: str | Path | None = None) -> dict:
    """Evaluate ``model`` on ``data`` (and against ``reference``); see the module docstring.
    ``artifact``: the compiled folder ``model`` came from (its size is then the files')."""
    m = _model(model)
    check_calib_data(m, data, "evaluation data")
    out = model_outputs(m, data, batch)
    pred = top1_classes(out)
    result: dict = dict.fromkeys(EVAL_FIELDS)
    if data.labels is not None:
        if len(data.labels) != len(pred):
            raise DataError(f"{len(data.labels)} labels for {len(pred)} samples")
        result["top1"] = float(np.mean(pred == data.labels))
    if reference is not None:
        r = _model(reference)
        check_calib_data(r, data, "evaluation data (for the reference model)")
        ref = model_outputs(r, data, batch)
        result["agreement"] = float(np.mean(pred == top1_classes(ref)))
        result["output_snr_db"] = output_snr_db(out, ref)
    stats = model_stats(m)
    result.update(macs=int(stats.macs), params=int(stats.params), size_bytes=int(stats.size_bytes))
    if artifact is None and isinstance(model, (str, Path)) and Path(model).is_dir():
        artifact = model
    if artifact is not None:
        size = artifact_size(artifact)
        result.update(size_bytes=size.size_bytes, code_bytes=size.code_bytes,
                      weight_bytes=size.weight_bytes)
    return result
