"""Fine-tune the search's candidates (cross-entropy on labels + distillation from the
original, :mod:`pfcompile.finetune`), check that they learned, confirm, deploy.

PocketFlow judges a compressed model after fine-tuning it; a search that judges
candidates before fine-tuning throws away the fast ones that training would win back.
So, in order:

1. the *recoverable* candidates (``SearchResult.recoverable``: measured, faster than the
   best qualifying one, or in the latency / size budget when none qualified, with a drop
   before fine-tuning within ``--finetune-drop``; the search steered towards them), best
   first, at most ``--finetune-candidates`` of them; the first whose fine-tuned model
   qualifies on the search part of the data *and* is confirmed on the confirmation part
   is deployed;
2. otherwise the finalist: the confirmed best candidate, else the top finalist that
   failed confirmation (fine-tuning may win back what pruning lost).

The fine-tuned graph has the same shapes, so the same latency; it is deployed only when

1. training made progress (:func:`pfcompile.finetune.health.check_progress`: a student
   whose loss stays at ``ln(classes)``, whose top-1 is near chance or whose ReLUs are
   dead is reported under ``no_progress``, never kept),
2. it did not lower top-1 on the search part of the data (when it has labels),
3. a recoverable candidate: its drop qualifies on the search part after fine-tuning,
4. its drop qualifies on the confirmation part (the search part without a split), and
5. it compiles and verifies on the device.

Each candidate tried is tested at the ``--confidence`` level on the same confirmation
data, so trying ``k`` of them raises the chance that one over the budget is confirmed to
at most ``k * (1 - confidence)`` (as with ``--finalists``). Whatever happens is returned
as the report's ``finetune`` entry (``tried``: one summary per candidate).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import onnx

from pfcompile.data import Dataset
from pfcompile.search.confirm import confirm_model, confirmation_summary

__all__ = ["finetune_finalist"]

_KEYS = ("trial", "of", "before_top1", "after_top1", "teacher_top1", "search_acc_drop",
         "search_acc_drop_upper", "confirmation", "deployed", "error", "seconds")


def finetune_finalist(result, teacher: onnx.ModelProto, train: Dataset, train_name: str,
                      val: Dataset | None, dev, work: Path, epochs: int, log=None,
                      emit: Callable[[str, dict], None] | None = None,
                      candidates: int = 2) -> dict:
    """Fine-tune, check, confirm and (when all pass) deploy into ``result`` (a
    :class:`~pfcompile.search.loop.SearchResult`: ``best`` / ``best_model`` are
    replaced); returns the ``finetune`` report entry: the deployed candidate's fields
    (else the last tried), and ``tried``."""
    emit = emit or (lambda kind, info: None)
    tries: list[tuple[dict, onnx.ModelProto, str, bool]] = []
    if result.model_of is not None:
        for t in result.recoverable[:max(0, candidates)]:
            tries.append((t, None, (f"recoverable candidate (drop {t['acc_drop']:.2f} before "
                                   "fine-tuning)"), True))
    if result.best is not None:
        tries.append((result.best, result.best_model, "confirmed best candidate", False))
    elif result.finalists and getattr(result, "finalist_model", None) is not None:
        tries.append((result.finalists[0], result.finalist_model,
                      "top finalist (not confirmed before fine-tuning)", False))
    if not tries:
        return {"before_top1": None, "after_top1": None, "teacher_top1": None, "epochs": epochs,
                "train_data": train_name, "deployed": False, "tried": [],
                "error": "no candidate qualified in the search, and none was within the drop "
                         "fine-tuning may win back: nothing to fine-tune"}
    tried, info = [], {}
    for trial, student, of, recover in tries:
        if student is None:
            student = result.model_of(trial["config"])
        info = _finetune_one(result, trial, student, of, recover, teacher, train, train_name,
                             val, dev, work / f"trial{trial['id']}" if recover else work, epochs,
                             log, emit)
        tried.append({k: info.get(k) for k in _KEYS})
        if info["deployed"]:
            break
    info["tried"] = tried
    return info


def _finetune_one(result, trial: dict, student: onnx.ModelProto, of: str, recover: bool,
                  teacher: onnx.ModelProto, train: Dataset, train_name: str, val: Dataset | None,
                  dev, work: Path, epochs: int, log, emit) -> dict:
    from pfcompile.finetune import FinetuneSettings
    from pfcompile.finetune.health import check_progress
    from pfcompile.finetune.train import finetune, onnx_logits

    info: dict = {"before_top1": None, "after_top1": None, "teacher_top1": None, "epochs": epochs,
                  "train_data": train_name, "deployed": False, "trial": trial["id"], "of": of}
    judge = result.confirm_judge or result.judge
    if judge is not None and judge.too_small():
        info["error"] = f"not fine-tuned: {judge.too_small()}"
        return info
    emit("finetune", {"trial": trial["id"], "of": of})
    work.mkdir(parents=True, exist_ok=True)
    val = val if val is not None and val.labels is not None else None
    res = finetune(student, teacher, train, val, FinetuneSettings(epochs=epochs))
    onnx.save(res.model, str(work / "finetuned.onnx"))
    info.update({"before_top1": res.before_top1, "after_top1": res.after_top1,
                 "teacher_top1": res.teacher_top1, "seconds": round(res.seconds, 1),
                 "loss": [round(e.loss, 4) for e in res.epochs],
                 "ce": [None if e.ce is None else round(e.ce, 4) for e in res.epochs]})
    if res.logits:
        info["logits"] = res.logits
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
    search = result.judge.fields(res.model) if result.judge is not None else {}
    if search:
        info["search_acc_drop"] = search.get("acc_drop")
        info["search_acc_drop_upper"] = search.get("acc_drop_upper")
    if recover and search and search.get("acc_verdict") != "ok":
        info["error"] = f"still over the budget after fine-tuning: {search.get('acc_refused')}"
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
    best = {**trial, **search, "so_path": m.so_path, "finetuned": True, "feasible": True}
    if recover:
        best["recovered"] = True
    if judge is not None:
        best["confirmation"] = info["confirmation"]
    result.best, result.best_model = best, res.model
    info["deployed"] = True
    return info
