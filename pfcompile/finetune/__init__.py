"""Distillation fine-tuning of compressed ONNX models (PocketFlow's network
distillation): convert the student graph to torch, train it with labels and the
teacher's softened outputs, write the trained weights back into the same graph.

    from pfcompile.finetune import FinetuneSettings, finetune
    result = finetune(student, teacher, train, val, FinetuneSettings(epochs=5))
    onnx.save(result.model, "student_ft.onnx"); result.before_top1, result.after_top1
"""

from __future__ import annotations

import importlib
from typing import Any

from pfcompile.finetune.settings import FinetuneSettings

# torch is imported on first use of anything but the settings (keeps `pfcompile --help` fast)
_LAZY = {
    "SUPPORTED_OPS": "convert", "OnnxModule": "convert", "QuantWeight": "convert",
    "onnx_to_torch": "convert", "export_onnx": "export", "requantize": "export",
    "EpochStats": "train", "FinetuneResult": "train", "data_specs": "train", "finetune": "train",
    "kd_loss": "train", "onnx_logits": "train", "onnx_top1": "train",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"pfcompile.finetune.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'pfcompile.finetune' has no attribute '{name}'")


__all__ = [
    "SUPPORTED_OPS",
    "EpochStats",
    "FinetuneResult",
    "FinetuneSettings",
    "OnnxModule",
    "QuantWeight",
    "data_specs",
    "export_onnx",
    "finetune",
    "kd_loss",
    "onnx_logits",
    "onnx_to_torch",
    "onnx_top1",
    "requantize",
]
