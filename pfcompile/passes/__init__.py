"""Compression passes on ``onnx_ir`` models.

Each pass is an ``onnx_ir.passes`` pass (functional unless named otherwise)
returning ``PassResult(model, modified)``; one pass a file.
"""

from __future__ import annotations

from pfcompile.passes.stats import LayerStats, ModelStats, model_stats

__all__ = ["LayerStats", "ModelStats", "model_stats"]
