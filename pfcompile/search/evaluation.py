"""Accuracy of a candidate on the user's data: top-1 against the labels when the
data has them, and agreement (same arg-max) with the original model always; the
search uses top-1 when present, else agreement ("fidelity to the original when no
labels").

The outputs come from :func:`pfcompile.evaluate.model_outputs` (the exact reference
session, batched where provably safe), the same as ``pfcompile evaluate``; what this
adds is the search's view: the original's predictions held once, scores on the first
``n`` samples (the cheap subset estimate that ranks candidates before measuring them),
per-image outcomes for the paired statistics, and a model with non-finite outputs
scored as wrong everywhere. Its sessions use one intra-op thread, as the search always has.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from pfcompile.data import Dataset
from pfcompile.errors import DataError
from pfcompile.evaluate import model_outputs, top1_classes

__all__ = ["Accuracy", "Evaluator"]


@dataclass(frozen=True)
class Accuracy:
    top1: float | None        # None without labels
    agreement: float          # fraction with the original model's arg-max
    n: int

    @property
    def score(self) -> float:
        return self.top1 if self.top1 is not None else self.agreement


class Evaluator:
    """Holds the data and the original model's outputs; scores candidates."""

    def __init__(self, reference: onnx.ModelProto, data: Dataset, batch: int = 128) -> None:
        if len(data) == 0:
            raise DataError("evaluation data is empty")
        self.data, self.batch = data, batch
        self.ref_pred = self._predict(reference)
        self.reference = self.score(reference)

    def _predict(self, model: onnx.ModelProto, n: int | None = None) -> np.ndarray:
        y = model_outputs(model, self.data, self.batch, n=n, threads=1)
        if not np.all(np.isfinite(y)):
            return np.full(len(y), -1)
        return top1_classes(y)

    def score(self, model: onnx.ModelProto, n: int | None = None) -> Accuracy:
        pred = self._predict(model, n)
        k = len(pred)
        agree = float((pred == self.ref_pred[:k]).mean())
        top1 = None
        if self.data.labels is not None:
            top1 = float((pred == self.data.labels[:k]).mean())
        return Accuracy(top1, agree, k)

    def outcomes(self, model: onnx.ModelProto, n: int | None = None
                 ) -> tuple[Accuracy, np.ndarray, np.ndarray]:
        """``(accuracy, reference right, candidate right)``: one bool per image for the
        paired statistics of :mod:`pfcompile.search.stats`. Right = the label when the
        data has labels; without labels the original is always right and the candidate
        is right where it agrees with the original's arg-max."""
        pred = self._predict(model, n)
        k = len(pred)
        agree = pred == self.ref_pred[:k]
        if self.data.labels is None:
            return Accuracy(None, float(agree.mean()), k), np.ones(k, bool), agree
        y = self.data.labels[:k]
        right = pred == y
        return (Accuracy(float(right.mean()), float(agree.mean()), k),
                self.ref_pred[:k] == y, right)
