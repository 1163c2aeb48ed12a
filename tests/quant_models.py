"""Trained digits models for the quantize / sparsify / evaluate tests.

Each topology of the pass fixtures (zoo.PlainCNN ... zoo.GroupedConvNet) is
trained for a few epochs on 8x8 digits (seconds) and exported once per test
session under pytest's session temp dir; test modules share the files through
:func:`trained_onnx` (a second request in the same session reuses the file).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pfcompile import zoo

__all__ = ["TOPOLOGIES", "digits", "trained_onnx", "write_npz"]

TOPOLOGIES = {
    "plain": zoo.PlainCNN,
    "resnet": zoo.ResNetTiny,
    "mobilenetv2": zoo.MobileNetV2Tiny,
    "densenet": zoo.DenseNetTiny,
    "senet": zoo.SENetTiny,
    "flattengemm": zoo.FlattenGemmNet,
    "grouped": zoo.GroupedConvNet,
}

_DIGITS: dict | None = None


def digits() -> dict:
    global _DIGITS
    if _DIGITS is None:
        _DIGITS = zoo.digits_splits(8)
    return _DIGITS


def trained_onnx(root: Path, name: str, epochs: int = 12) -> Path:
    """Path of the trained, exported model ``name`` (trained on first use in ``root``)."""
    path = Path(root) / f"{name}.onnx"
    if not path.exists():
        import torch

        torch.manual_seed(0)
        d = digits()
        model = TOPOLOGIES[name]()
        zoo.train_classifier(model, d["x_train"], d["y_train"], epochs=epochs, lr=0.05)
        zoo.export_onnx(model, path, (1, 1, 8, 8))
    return path


def write_npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path
