"""One call for the search (``pfcompile run --finetune``): fine-tune a candidate
ONNX file against its teacher, write the result beside it, return a JSON-ready report.

    report = run_finetune("cand/model.onnx", "teacher.onnx", "train.npz", "val.npz",
                          FinetuneSettings(epochs=5))
    report["model_path"], report["before_top1"], report["after_top1"]
"""

from __future__ import annotations

from pathlib import Path

import onnx

from pfcompile.data import load_npz
from pfcompile.errors import ModelError
from pfcompile.finetune.settings import FinetuneSettings
from pfcompile.finetune.train import data_specs, finetune
from pfcompile.model import load_onnx

__all__ = ["run_finetune"]


def run_finetune(candidate_path: str | Path, teacher_path: str | Path | None,
                 train_npz: str | Path, val_npz: str | Path | None = None,
                 settings: FinetuneSettings | None = None,
                 out_path: str | Path | None = None) -> dict:
    """Fine-tune the model at ``candidate_path`` (distilling from ``teacher_path``
    unless it is ``None``) on ``train_npz``, measure top-1 on ``val_npz``, and save
    the fine-tuned graph to ``out_path`` (default: ``<candidate>_ft.onnx`` beside it).

    Returns :meth:`FinetuneResult.to_json` plus ``model_path`` (where the model was
    written) and ``candidate_path``. Bad files raise :class:`ModelError` /
    :class:`DataError` naming the file; nothing is written on error.
    """
    cand = Path(candidate_path)
    student = load_onnx(cand)
    teacher = load_onnx(teacher_path) if teacher_path is not None else None
    specs = data_specs(student)
    train = load_npz(train_npz, specs)
    val = load_npz(val_npz, specs) if val_npz is not None else None
    result = finetune(student, teacher, train, val, settings)
    out = Path(out_path) if out_path is not None else cand.with_name(f"{cand.stem}_ft.onnx")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(result.model, str(out))
    except OSError as exc:
        raise ModelError(f"cannot write the fine-tuned model to {out}: {exc}") from exc
    return {**result.to_json(), "candidate_path": str(cand), "model_path": str(out)}
