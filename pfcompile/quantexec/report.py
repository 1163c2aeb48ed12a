"""Which layers of a QDQ model run on integer kernels on a target, and why the others
stay float (``pfcompile quant-report``), without building."""

from __future__ import annotations

import warnings
from pathlib import Path

__all__ = ["quant_report"]


def quant_report(model: str | Path, target: str = "host") -> dict:
    """Per-layer integer/float decision for ``model`` on ``target`` (no build)."""
    from pfcompile.model import load_onnx
    from pfcompile.quantexec.build import import_onnx, onnx_layer_names
    from pfcompile.quantexec.lower import lower_qdq, reports_to_json
    from pfcompile.quantexec.onnx_prep import prepare_qdq
    from pfcompile.quantexec.x86 import with_int8_features
    from pfcompile.targets import load_target

    tgt = with_int8_features(load_target(target))  # the kernels `build` would pick
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the report itself says what falls back and why
        proto, folded = prepare_qdq(load_onnx(model))
        _, layers = lower_qdq(import_onnx(proto), tgt, onnx_layer_names(proto))
    out = reports_to_json(folded + layers)
    out["target"] = tgt.name
    return out
