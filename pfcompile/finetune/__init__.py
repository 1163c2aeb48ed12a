"""Distillation fine-tuning of compressed ONNX models (PocketFlow's network
distillation): convert the student graph to torch, train it with labels and the
teacher's softened outputs, write the trained weights back into the same graph.

    from pfcompile.finetune import FinetuneSettings, finetune
    result = finetune(student, teacher, train, val, FinetuneSettings(epochs=5))
    onnx.save(result.model, "student_ft.onnx"); result.before_top1, result.after_top1
"""

from pfcompile.finetune.convert import SUPPORTED_OPS, OnnxModule, QuantWeight, onnx_to_torch
from pfcompile.finetune.export import export_onnx, requantize
from pfcompile.finetune.train import (
    EpochStats,
    FinetuneResult,
    FinetuneSettings,
    data_specs,
    finetune,
    kd_loss,
    onnx_logits,
    onnx_top1,
)

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
