"""A candidate's deployed size: measured from its compiled files when it has them,
predicted before that.

The prediction is the weights at the encoding the library will store them in
(:func:`pfcompile.storage.predict.stored_weight_bytes`, exact up to layout padding)
plus the code bytes of artifacts already measured in this run of the same kind
(float, or with integer kernels: those carry more code); before any such
measurement, the baseline's. Rankings (``--size-mb`` with hw / bo / tpe) use the
prediction; feasibility and the answer use the measurement.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import onnx

from pfcompile.artifact_size import ArtifactSize, artifact_size
from pfcompile.errors import PfcompileError
from pfcompile.storage.predict import stored_weight_bytes

__all__ = ["SizeModel", "measured_size", "set_measured_size", "size_kind"]


def size_kind(model: onnx.ModelProto) -> str:
    """``"int8"`` for a model with quantized layers (integer kernels), else ``"float"``."""
    return "int8" if any(n.op_type in ("QuantizeLinear", "DequantizeLinear")
                         for n in model.graph.node) else "float"


def measured_size(so_path: str | None) -> ArtifactSize | None:
    """The artifact's deployed size (the folder of ``so_path``), or None without one."""
    if not so_path or not Path(so_path).exists():
        return None
    try:
        return artifact_size(Path(so_path).parent)
    except PfcompileError:
        return None


class SizeModel:
    """Code bytes seen per kind; predicts a model's deployed MB."""

    def __init__(self) -> None:
        self.code: dict[str, list[int]] = {}

    def observe(self, kind: str, code_bytes: int) -> None:
        self.code.setdefault(kind, []).append(int(code_bytes))

    def code_bytes(self, kind: str) -> int:
        seen = self.code.get(kind) or self.code.get("float") or [0]
        return int(statistics.median(seen))

    def predict_mb(self, model: onnx.ModelProto) -> float:
        return (stored_weight_bytes(model) + self.code_bytes(size_kind(model))) / 1e6


def set_measured_size(rec: dict, so_path: str | None) -> None:
    """``size_mb`` of a trial or baseline record from its compiled files when there are
    some (``size``: the bytes, code and weights apart; the prediction kept as
    ``size_predicted_mb``); else it stays the prediction (``size_measured`` False)."""
    size = measured_size(so_path)
    rec["size_measured"] = size is not None
    if size is not None:
        rec["size_predicted_mb"] = rec.get("size_mb")
        rec["size_mb"] = size.size_mb
        rec["size"] = size.to_json()
