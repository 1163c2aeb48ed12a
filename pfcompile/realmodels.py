"""The real-model suite: externally trained ONNX models that ship inside registry
packages, plus two PyTorch models of our own exported with the dynamo exporter.

==========================  =========  ====================================================
name                        kind       what
==========================  =========  ====================================================
``ppocr_cls``               classifier PP-OCR mobile v2.0 text-direction classifier
                                       (MobileNetV3-style: hard-swish as Clip/Div/Mul, SE
                                       with HardSigmoid), Paddle2ONNX opset 11, dynamic
                                       batch/height/width, weights in ``Constant`` nodes
``ppocr_det``               detector   PP-OCRv4 DB text detector (ConvTranspose, Resize,
                                       Concat, SE), opset 12
``ppocr_rec``               recognizer PP-OCRv4 SVTR recogniser: conv body + transformer
                                       neck (LayerNorm as ReduceMean/Sub/Pow/Sqrt,
                                       MatMul/Softmax attention), CTC head, opset 12
``mobilenetv3_dynamo``      classifier :class:`pfcompile.zoo_modern.MobileNetV3Tiny` on 16x16
                                       digits, ``torch.onnx.export(dynamo=True)``, opset 20
``attention_dynamo``        classifier :class:`pfcompile.zoo_modern.AttentionNetTiny` (LayerNorm
                                       op, Gelu op, attention), dynamo, opset 20
==========================  =========  ====================================================

The PP-OCR models are the files inside the ``rapidocr-onnxruntime`` wheel on PyPI
(Apache-2.0): :func:`fetch` downloads the wheel with pip (``--no-deps``: none of its
dependencies is needed) into ``<cache>/models/wheels`` and unpacks the one file;
afterwards everything runs offline. The dynamo models are trained on sklearn's
digits (a few epochs, seeded) and cached under a hash of their source and settings.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pfcompile.errors import PfcompileError

__all__ = ["SUITE", "ModelUnavailable", "SuiteModel", "fetch", "fetch_all", "models_dir", "suite_data",
           "suite_model"]

_RAPIDOCR = "rapidocr-onnxruntime==1.4.4"


class ModelUnavailable(PfcompileError):
    """A suite model could not be fetched (no registry and no cached copy)."""


@dataclass(frozen=True)
class SuiteModel:
    """One model of the suite. ``input_shape`` is the compile shape (batch 1)."""

    name: str
    kind: str                  # classifier | detector | recognizer
    source: str                # "pypi:<requirement>:<path in the wheel>" | "dynamo:<zoo_modern class>"
    input_name: str
    input_shape: tuple[int, ...]
    attention: bool = False

    @property
    def shape_arg(self) -> str:
        """The ``--input-shape`` argument for this model."""
        return f"{self.input_name}:{'x'.join(map(str, self.input_shape))}"


SUITE: tuple[SuiteModel, ...] = (
    SuiteModel("ppocr_cls", "classifier",
               f"pypi:{_RAPIDOCR}:rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
               "x", (1, 3, 48, 192)),
    SuiteModel("ppocr_det", "detector",
               f"pypi:{_RAPIDOCR}:rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
               "x", (1, 3, 64, 64)),
    SuiteModel("ppocr_rec", "recognizer",
               f"pypi:{_RAPIDOCR}:rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
               "x", (1, 3, 48, 160), attention=True),
    SuiteModel("mobilenetv3_dynamo", "classifier", "dynamo:MobileNetV3Tiny", "x", (1, 1, 16, 16)),
    SuiteModel("attention_dynamo", "classifier", "dynamo:AttentionNetTiny", "x", (1, 1, 16, 16),
               attention=True),
)

# training settings of the dynamo models (part of their cache key)
_TRAIN = {"MobileNetV3Tiny": {"epochs": 6, "lr": 0.05, "batch": 64, "seed": 0},
          "AttentionNetTiny": {"epochs": 12, "lr": 0.05, "batch": 64, "seed": 0}}


def models_dir(root: str | Path | None = None) -> Path:
    """``root``, else ``$PFCOMPILE_CACHE/models``, else ``~/.cache/pfcompile/models``."""
    from pfcompile.paths import cache_dir

    return Path(root) if root is not None else cache_dir() / "models"


def suite_model(name: str) -> SuiteModel:
    for m in SUITE:
        if m.name == name:
            return m
    raise KeyError(f"no suite model '{name}' (have {[m.name for m in SUITE]})")


def fetch(name: str, root: str | Path | None = None) -> Path:
    """The ONNX file of suite model ``name`` (downloaded / exported on first use)."""
    sm = suite_model(name)
    base = models_dir(root)
    kind, _, rest = sm.source.partition(":")
    if kind == "pypi":
        req, _, member = rest.partition(":")
        return _from_wheel(req, member, base)
    if kind == "dynamo":
        return _dynamo(rest, base)
    raise ValueError(f"unknown source {sm.source}")


def _from_wheel(requirement: str, member: str, base: Path) -> Path:
    pkg, _, version = requirement.partition("==")
    out = base / f"{pkg}-{version}" / Path(member).name
    if out.exists():
        return out
    wheels = base / "wheels"
    wheel = _find_wheel(wheels, pkg, version)
    if wheel is None:
        wheels.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "-q", "-d", str(wheels), requirement]
        try:
            proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ModelUnavailable(f"could not download {requirement} with pip: {exc}") from exc
        wheel = _find_wheel(wheels, pkg, version)
        if proc.returncode != 0 or wheel is None:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            raise ModelUnavailable(f"could not download {requirement} with pip (no registry "
                                   f"and no cached wheel in {wheels}): {tail[0]}")
    out.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as z:
        tmp = out.with_name(out.name + f".{os.getpid()}.tmp")
        with z.open(member) as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst)
        tmp.replace(out)
    return out


def _find_wheel(wheels: Path, pkg: str, version: str) -> Path | None:
    stem = pkg.replace("-", "_")
    found = sorted(wheels.glob(f"{stem}-{version}-*.whl")) if wheels.exists() else []
    return found[0] if found else None


def _dynamo(cls_name: str, base: Path) -> Path:
    from pfcompile import zoo_modern

    src = Path(zoo_modern.__file__).read_bytes()
    import torch

    key = hashlib.sha256(src + json.dumps([cls_name, _TRAIN[cls_name],
                                           torch.__version__]).encode()).hexdigest()[:12]
    out = base / "dynamo" / f"{cls_name}-{key}.onnx"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    model = _train(cls_name)
    tmp = out.with_name(out.name + f".{os.getpid()}.tmp")
    export_dynamo(model, tmp, (2, 1, 16, 16))
    tmp.replace(out)
    (out.with_suffix(".json")).write_text(json.dumps(
        {"val_top1": _accuracy(model), "train": _TRAIN[cls_name]}))
    return out


def _train(cls_name: str):
    import torch

    from pfcompile import zoo, zoo_modern

    torch.manual_seed(_TRAIN[cls_name]["seed"])
    model = getattr(zoo_modern, cls_name)()
    d = zoo.digits_splits(16)
    zoo.train_classifier(model, d["x_train"], d["y_train"], **_TRAIN[cls_name])
    return model


def _accuracy(model) -> float:
    from pfcompile import zoo

    d = zoo.digits_splits(16)
    return zoo.accuracy(model, d["x_val"], d["y_val"])


def export_dynamo(model, path: str | Path, example_shape: tuple[int, ...],
                  input_name: str = "x", output_name: str = "logits") -> Path:
    """``torch.onnx.export(..., dynamo=True)`` with a dynamic batch dim."""
    import torch

    model.eval()
    prog = torch.onnx.export(model, (torch.zeros(*example_shape),), dynamo=True,
                             input_names=[input_name], output_names=[output_name],
                             dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False)
    prog.save(str(path))
    return Path(path)


def fetch_all(root: str | Path | None = None) -> dict[str, Path]:
    """Fetch every suite model (``python -m pfcompile.realmodels``; ``make models``)."""
    return {sm.name: fetch(sm.name, root) for sm in SUITE}


def suite_data(name: str, n: int, seed: int = 0, split: str = "val") -> dict[str, np.ndarray]:
    """``{"x": (n, *shape), ["y": labels]}`` for suite model ``name``.

    The dynamo classifiers get 16x16 digits (``split`` "val" or "calib"; labelled);
    the OCR models get rendered text, preprocessed as RapidOCR feeds each of them
    (:func:`pfcompile.realdata.ocr_suite_inputs`; no labels: accuracy there means
    agreement with the original).
    """
    sm = suite_model(name)
    if sm.source.startswith("dynamo:"):
        from pfcompile import zoo

        d = zoo.digits_splits(16)
        if split == "calib":
            return {"x": d["x_calib"][:n]}
        return {"x": d["x_val"][:n], "y": d["y_val"][:n]}
    from pfcompile.realdata import ocr_suite_inputs

    return {"x": ocr_suite_inputs(sm.kind, n, sm.input_shape[1:],
                                  seed + (0 if split == "val" else 1000))}


if __name__ == "__main__":
    for _name, _path in fetch_all().items():
        print(f"{_name}: {_path}")
