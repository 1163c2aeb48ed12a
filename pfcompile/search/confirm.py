"""A confirmation split: choosing the best of many candidates by their scores on one data
set selects the lucky ones (the winner's curse), so the data given is split once into a
*search* part, which every trial is scored on, and a *confirmation* part, which only
the finalists see. A finalist is deployed only when its drop, re-scored on the
confirmation part, qualifies by the same rule as in the search
(:class:`~pfcompile.search.judge.AccuracyJudge`: upper bound within the budget).

* :func:`split_for_confirmation`: seeded, stratified by label when there are labels;
  within each part the samples keep their order in the file.
* :func:`select_finalists`: the feasible measured trials, best first by the goal.
* :func:`confirm_finalists`: re-score the top few in that order on the confirmation
  part; the first that qualifies is the answer. Each finalist is tested at the
  ``--confidence`` level on the same data, so with ``k`` finalists the chance that
  one over the budget is confirmed is at most ``k * (1 - confidence)``; the records
  of all finalists go to the trial log (``type: confirm``) and to the report.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable

import numpy as np
import onnx

from pfcompile.data import Dataset
from pfcompile.errors import DataError, SearchError
from pfcompile.model import model_hash
from pfcompile.search.judge import AccuracyJudge

__all__ = ["check_split", "confirm_finalists", "confirm_model", "confirmation_summary",
           "select_finalists", "select_recoverable", "split_for_confirmation"]


def _take(data: Dataset, idx: np.ndarray, tag: str) -> Dataset:
    return Dataset({k: np.ascontiguousarray(v[idx]) for k, v in data.inputs.items()},
                   None if data.labels is None else data.labels[idx],
                   f"{data.path}[{tag}]" if data.path else tag)


def split_for_confirmation(data: Dataset, fraction: float, seed: int = 0
                           ) -> tuple[Dataset, Dataset | None]:
    """``(search part, confirmation part)``; ``fraction`` of the samples (of each label,
    rounded; a label with one sample stays in the search part) go to confirmation.
    ``fraction == 0``: ``(data, None)``. Written here rather than with scikit-learn's
    ``train_test_split``, which refuses a label with a single sample."""
    if fraction == 0:
        return data, None
    if not 0 < fraction < 1:
        raise SearchError(f"--confirm-fraction must be in [0, 1), got {fraction}")
    n = len(data)
    rng = np.random.default_rng([seed, 18])
    if data.labels is None:
        perm = rng.permutation(n)
        take = perm[:round(fraction * n)]
    else:
        take_parts = []
        for label in np.unique(data.labels):
            idx = np.flatnonzero(data.labels == label)
            k = round(fraction * len(idx))
            k = min(k, len(idx) - 1)      # every label keeps a sample in the search part
            take_parts.append(rng.permutation(idx)[:k])
        take = np.concatenate(take_parts) if take_parts else np.zeros(0, int)
    mask = np.zeros(n, bool)
    mask[take] = True
    if mask.all() or not mask.any():
        raise DataError(f"{data.path or 'the data'} has {n} samples: too few to split "
                        f"{fraction:g} of them off for confirmation (pass --confirm-fraction 0 "
                        "to search and deploy without a confirmation split, or give more data)")
    return _take(data, np.flatnonzero(~mask), "search"), _take(data, np.flatnonzero(mask), "confirm")


def _digest(d: Dataset) -> str:
    h = hashlib.sha256()
    for k in sorted(d.inputs):
        h.update(k.encode())
        h.update(np.ascontiguousarray(d.inputs[k]).tobytes())
    if d.labels is not None:
        h.update(np.ascontiguousarray(d.labels).tobytes())
    return h.hexdigest()[:16]


def check_split(past: list[dict], data: Dataset, confirm: Dataset | None, run_dir) -> dict | None:
    """The ``split`` record to log for a new run (None: nothing to log); a resumed run
    must have been split the same way (same data, ``--seed``, ``--confirm-fraction``)."""
    rec = None if confirm is None else {
        "type": "split", "search_n": len(data), "confirm_n": len(confirm),
        "search_digest": _digest(data), "confirm_digest": _digest(confirm)}
    old = next((r for r in past if r.get("type") == "split"), None)
    started = any(r.get("type") in ("baseline", "trial") for r in past)
    if old is None:
        if started and rec is not None:
            raise SearchError(f"{run_dir} was searched without a confirmation split; resume it "
                              "with --confirm-fraction 0, or use a new run folder")
        return rec
    if rec is None or any(old.get(k) != rec[k] for k in ("search_n", "confirm_n", "search_digest",
                                                          "confirm_digest")):
        raise SearchError(f"{run_dir} was searched on a {old['search_n']} / {old['confirm_n']} "
                          "search / confirmation split of other data; resume it with the same "
                          "--data, --seed and --confirm-fraction, or use a new run folder")
    return None


def select_finalists(trials: list[dict], base: dict, goal) -> list[dict]:
    """Feasible measured trials, best first by ``goal.cost``; in ``fastest`` mode only
    those measured faster than the original (slower is never the answer)."""
    feas = [t for t in trials if t.get("status") == "ok" and t.get("feasible")]
    if goal.mode == "fastest" and base.get("latency_ms"):
        feas = [t for t in feas if t["latency_ms"] < base["latency_ms"]]
    return sorted(feas, key=lambda t: (goal.cost(t["latency_ms"], t["acc_drop"], t["size_mb"]), t["id"]))


def select_recoverable(trials: list[dict], base: dict, goal, steer, best: dict | None) -> list[dict]:
    """Measured trials that did not qualify but whose drop is within ``steer``'s (the
    drop fine-tuning may win back) and that would beat ``best`` if it did: in ``fastest``
    mode faster than ``best`` (else than the original); with a latency / size budget,
    within it (only when no candidate qualified). Best first by ``steer.cost``: the
    fastest, or the most accurate in budget."""
    if goal.mode != "fastest" and best is not None:
        return []
    bar = best["latency_ms"] if best is not None else base.get("latency_ms")
    out = []
    for t in trials:
        if t.get("status") != "ok" or t.get("feasible"):
            continue
        if not steer.feasible(t["latency_ms"], t.get("acc_drop_upper", t["acc_drop"]), t["size_mb"]):
            continue
        if goal.mode == "fastest" and bar and t["latency_ms"] >= bar:
            continue
        out.append(t)
    return sorted(out, key=lambda t: (steer.cost(t["latency_ms"], t.get("acc_drop_upper", t["acc_drop"]),
                                                 t["size_mb"]), t["id"]))


def confirm_model(judge: AccuracyJudge, model: onnx.ModelProto, **extra) -> dict:
    """A ``confirm`` record: ``model`` re-scored on the confirmation part."""
    f = judge.fields(model)
    return {"type": "confirm", **extra, "model_hash": model_hash(model), **f,
            "confirmed": f["acc_verdict"] == "ok", "time": time.time()}


def confirmation_summary(rec: dict) -> dict:
    """The fields of a ``confirm`` record that a report shows beside the search's."""
    keys = ("top1", "agreement", "acc_drop", "acc_drop_lower", "acc_drop_upper", "acc_confidence",
            "acc_n", "acc_losses", "acc_gains", "confirmed", "acc_refused", "model_hash")
    return {k: rec.get(k) for k in keys}


def confirm_finalists(finalists: list[dict], model_of: Callable[[dict], onnx.ModelProto],
                      judge: AccuracyJudge, log, past: list[dict],
                      emit: Callable[[str, dict], None]) -> tuple[dict | None, list[dict]]:
    """Re-score ``finalists`` (best first) on the confirmation part until one qualifies;
    ``(the confirmed trial with its ``confirmation`` summary, or None; the confirm records)``. Records already in the
    log (a resumed run) are reused."""
    done = {(r.get("trial"), r.get("model_hash")): r for r in past
            if r.get("type") == "confirm" and not r.get("finetuned")
            and r.get("acc_confidence") == judge.confidence}
    records: list[dict] = []
    for t in finalists:
        rec = done.get((t["id"], t.get("model_hash")))
        if rec is None:
            emit("confirm", {"trial": t["id"], "n": judge.n})
            rec = confirm_model(judge, model_of(t["config"]), trial=t["id"],
                                search_acc_drop=t["acc_drop"],
                                search_acc_drop_upper=t.get("acc_drop_upper"))
            log.append(rec)
        records.append(rec)
        emit("confirmed", rec)
        if rec["confirmed"]:
            return {**t, "confirmation": confirmation_summary(rec)}, records
    return None, records
