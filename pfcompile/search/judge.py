"""The accuracy side of a trial: its drop against the original, with an interval
(:mod:`pfcompile.search.stats`), and whether it qualifies under ``--max-acc-drop``.

A candidate qualifies when the upper ``--confidence`` bound of its drop is within the
budget (``--confidence 0``: the plain estimate). It is refused, with the reason in its
record (``acc_refused``, ``acc_verdict``), when

* ``too_wide``: the data cannot resolve the budget: on this many images even a
  candidate that matches the original on every one has an upper bound over the budget
  (a small validation set; the reason says how many images would be needed), or
* ``over_budget``: the upper bound of this candidate's drop is over the budget.

Strategies learn from the same rule: :func:`strategy_view` hands them a trial whose
``acc_drop`` is the upper bound, so a search does not steer towards candidates it
could never deploy.
"""

from __future__ import annotations

import onnx

from pfcompile.search.evaluation import Accuracy, Evaluator
from pfcompile.search.stats import (
    DropInterval,
    images_needed,
    paired_drop_interval,
    zero_discordance_upper,
)

__all__ = ["AccuracyJudge", "strategy_view"]


class AccuracyJudge:
    """Scores models on one data set against the original and judges the drop."""

    def __init__(self, evaluator: Evaluator, budget: float, confidence: float,
                 what: str = "validation") -> None:
        self.evaluator, self.budget, self.confidence, self.what = evaluator, budget, confidence, what
        self._needed: int | None | bool = False   # computed on first use
        self._floor: dict[int, float] = {}

    @property
    def n(self) -> int:
        return len(self.evaluator.data)

    def images_needed(self) -> int | None:
        """Images on which a candidate equal to the original everywhere qualifies."""
        if self._needed is False:
            self._needed = images_needed(self.budget, self.confidence)
        return self._needed  # type: ignore[return-value]

    def judge(self, model: onnx.ModelProto) -> tuple[Accuracy, DropInterval, str | None, str]:
        """``(accuracy, interval, refusal reason or None, verdict)``; verdict is ``ok``,
        ``too_wide`` or ``over_budget``."""
        acc, ref_right, cand_right = self.evaluator.outcomes(model)
        iv = paired_drop_interval(ref_right, cand_right, self.confidence)
        verdict, reason = self.verdict(iv)
        return acc, iv, reason, verdict

    def floor(self, n: int) -> float:
        """The narrowest upper bound ``n`` images give (a candidate equal to the original)."""
        if n not in self._floor:
            self._floor[n] = zero_discordance_upper(n, self.confidence)
        return self._floor[n]

    def too_small(self) -> str | None:
        """Why this data cannot qualify any candidate at this budget, or None."""
        if self.confidence == 0 or self.floor(self.n) <= self.budget + 1e-9:
            return None
        need = self.images_needed()
        need_s = f"about {need:,}" if need else "more than 1,000,000"
        can = "be confirmed" if self.what == "confirmation" else "qualify"
        return (f"the {self.what} part has {self.n} images: even a candidate that matches the "
                f"original on every one has a {self.confidence:.0%} upper bound of "
                f"{self.floor(self.n):.2f} points, more than the {self.budget:g}-point budget, "
                f"so no candidate can {can}; {need_s} images are needed (give more data, a larger "
                f"--max-acc-drop or a lower --confidence)")

    def verdict(self, iv: DropInterval) -> tuple[str, str | None]:
        b, c = self.budget, iv.confidence
        if c > 0 and self.floor(iv.n) > b + 1e-9:
            need = self.images_needed()
            need_s = f"about {need:,}" if need else "more than 1,000,000"
            return "too_wide", (
                f"interval too wide: on {iv.n} {self.what} images even a candidate that matches "
                f"the original on every one has a {c:.0%} upper bound of {self.floor(iv.n):.2f} "
                f"points, more than the {b:g}-point budget (this one: {iv.estimate:.2f}, interval "
                f"[{iv.lower:.2f}, {iv.upper:.2f}]); {need_s} images are needed (give more data, a "
                f"larger --max-acc-drop or a lower --confidence)")
        if iv.upper > b + 1e-9:
            what = (f"{c:.0%} upper bound {iv.upper:.2f}" if c > 0 else f"drop {iv.upper:.2f}")
            return "over_budget", (
                f"{what} points > the {b:g}-point budget (estimate {iv.estimate:.2f}; "
                f"{iv.losses} images lost, {iv.gains} gained of {iv.n} {self.what} images)")
        return "ok", None

    def fields(self, model: onnx.ModelProto) -> dict:
        """What a trial (or confirmation) record carries about accuracy."""
        acc, iv, reason, verdict = self.judge(model)
        return {"top1": acc.top1, "agreement": acc.agreement, "score": acc.score,
                **iv.to_json(), "acc_refused": reason, "acc_verdict": verdict}


def strategy_view(rec: dict) -> dict:
    """The trial as a strategy should learn from it: ``acc_drop`` = the upper bound; in a
    run with fine-tuning to come, ``feasible`` = ``recoverable`` (within the drop it may
    win back: the strategy's goal then, see :class:`~pfcompile.search.loop.SearchSettings`
    ``recover_drop``)."""
    view = rec if "recoverable" not in rec else {**rec, "feasible": rec["recoverable"]}
    if rec.get("acc_drop_upper") is None:
        return view
    return {**view, "acc_drop": rec["acc_drop_upper"], "acc_drop_estimate": rec.get("acc_drop")}
