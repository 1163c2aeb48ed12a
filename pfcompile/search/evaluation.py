"""Accuracy of a candidate on the user's data with onnxruntime: top-1 against
the labels when the data has them, and agreement (same arg-max) with the
original model always; the search uses top-1 when present, else agreement
("fidelity to the original when no labels").

``pfcompile.evaluate.evaluate`` (quant branch) is the shared evaluator; this is
the minimum the search needs until it lands, and the cheap subset estimate the
search uses to rank candidates before measuring them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from pfcompile.batching import batch_free
from pfcompile.data import Dataset
from pfcompile.errors import DataError
from pfcompile.reference import reference_session

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

    def _session(self, model: onnx.ModelProto):
        # the reference session: an int8 candidate is scored as written (as `pfcompile
        # evaluate` scores it), not by onnxruntime's CPU-dependent fused int8 kernels
        return reference_session(model, threads=1)

    def _predict(self, model: onnx.ModelProto, n: int | None = None) -> np.ndarray:
        n = len(self.data) if n is None else min(n, len(self.data))
        # batched only where provably per-sample identical (pfcompile.batching); a graph
        # that fixes its batch (e.g. Reshape constants [1, 200]) runs one sample at a time
        free = batch_free(model)
        s, step = (self._session(free), self.batch) if free is not None \
            else (self._session(model), 1)
        outs = [s.run(None, self.data.batch(i, min(n, i + step)))[0] for i in range(0, n, step)]
        y = np.concatenate(outs)
        if not np.all(np.isfinite(y)):
            return np.full(n, -1)
        return y.reshape(len(y), -1).argmax(1)

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
