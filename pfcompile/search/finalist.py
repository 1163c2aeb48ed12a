"""Fine-tune the search's finalist (cross-entropy on labels + distillation from the
original, :mod:`pfcompile.finetune`), check that it learned, re-confirm it, deploy it.

The finalist is the confirmed best candidate, else the top finalist that failed
confirmation (fine-tuning may win back what pruning lost). The fine-tuned graph has
the same shapes, so the same latency; it is deployed only when

1. training made progress (:func:`pfcompile.finetune.health.check_progress`: a student
   whose loss stays at ``ln(classes)``, whose top-1 is near chance or whose ReLUs are
   dead is reported under ``no_progress``, never kept),
2. it did not lower top-1 on the search part of the data (when it has labels),
3. its drop qualifies on the confirmation part (the search part without a split), and
4. it compiles and verifies on the device.

Whatever happens is returned as the report's ``finetune`` entry.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import onnx

from pfcompile.data import Dataset
from pfcompile.search.confirm import confirm_model, confirmation_summary

__all__ = ["finetune_finalist"]


def finetune_finalist(result, teacher: onnx.ModelProto, train: Dataset, train_name: str,
                      val: Dataset | None, dev, work: Path, epochs: int, log=None,
                      emit: Callable[[str, dict], None] | None = None) -> dict:
    """Fine-tune, check, re-confirm and (when all pass) deploy into ``result`` (a
    :class:`~pfcompile.search.loop.SearchResult`: ``best`` / ``best_model`` are
    replaced); returns the ``finetune`` report entry."""
    from pfcompile.finetune import FinetuneSettings
    from pfcompile.finetune.health import check_progress
    from pfcompile.finetune.train import finetune, onnx_logits

    emit = emit or (lambda kind, info: None)
    info: dict = {"before_top1": None, "after_top1": None, "teacher_top1": None, "epochs": epochs,
                  "train_data": train_name, "deployed": False}
    if result.best is not None:
        trial, student, info["of"] = result.best, result.best_model, "confirmed best candidate"
    elif result.finalists and getattr(result, "finalist_model", None) is not None:
        trial, student = result.finalists[0], result.finalist_model
        info["of"] = "top finalist (not confirmed before fine-tuning)"
    else:
        info["error"] = "no candidate qualified in the search: nothing to fine-tune"
        return info
    info["trial"] = trial["id"]
    judge = result.confirm_judge or result.judge
    if judge is not None and judge.too_small():
        info["error"] = f"not fine-tuned: {judge.too_small()}"
        return info
    work.mkdir(parents=True, exist_ok=True)
    val = val if val is not None and val.labels is not None else None
    res = finetune(student, teacher, train, val, FinetuneSettings(epochs=epochs))
    onnx.save(res.model, str(work / "finetuned.onnx"))
    info.update({"before_top1": res.before_top1, "after_top1": res.after_top1,
                 "teacher_top1": res.teacher_top1,
                 "loss": [round(e.loss, 4) for e in res.epochs],
                 "ce": [None if e.ce is None else round(e.ce, 4) for e in res.epochs]})
    classes = int(onnx_logits(res.model, train.subset(min(2, len(train))), "student").reshape(
        min(2, len(train)), -1).shape[1])
    progress = check_progress(res, train, classes)
    info["progress"] = progress.to_json()
    if progress.stuck:
        info["no_progress"] = list(progress.reasons)
        info["error"] = "the student made no progress: " + "; ".join(progress.reasons)
        return info
    before, after = res.before_top1, res.after_top1
    if before is not None and after is not None and after < before:
        info["error"] = "fine-tuning lowered top-1 on the validation data; kept the candidate"
        return info
    if judge is not None:
        emit("confirm", {"trial": trial["id"], "n": judge.n, "finetuned": True})
        rec = confirm_model(judge, res.model, trial=trial["id"], finetuned=True)
        if log is not None:
            log.append(rec)
        if result.confirmation is not None:
            result.confirmation.append(rec)
        info["confirmation"] = confirmation_summary(rec)
        emit("confirmed", rec)
        if not rec["confirmed"]:
            info["error"] = f"the fine-tuned model was not confirmed: {rec['acc_refused']}"
            return info
    m = dev.measure_model(res.model, work / "compiled")
    if not m.ok:
        info["error"] = m.error
        return info
    search = result.judge.fields(res.model) if result.judge is not None else {}
    best = {**trial, **search, "so_path": m.so_path, "finetuned": True}
    if judge is not None:
        best["confirmation"] = info["confirmation"]
    result.best, result.best_model = best, res.model
    info["deployed"] = True
    return info

