"""The uncertainty of an accuracy drop, from paired per-image outcomes.

Method (what :func:`paired_drop_interval` computes). On the same ``n`` images the
original model is right or wrong, and so is the candidate. Each image is one of three
paired outcomes: a *loss* (original right, candidate wrong), a *gain* (original wrong,
candidate right) or a *tie* (both right or both wrong). The drop in accuracy points is
``100 * (losses - gains) / n``; only the discordant images carry information about it,
which is why the paired drop is far less noisy than the difference of two top-1
estimates (their image-to-image noise cancels). Without labels, "right" means "the
same arg-max as the original": the original is always right, a disagreement is a loss,
and the drop is ``100 * (1 - agreement)``.

The interval is a **Bayesian paired bootstrap** (Rubin 1981) with a Jeffreys prior:
resampling the images with Dirichlet weights is, summed per outcome, a draw of the
outcome probabilities from ``Dirichlet(losses + 1/2, gains + 1/2, ties + 1/2)``; the
drop of each draw is ``100 * (p_loss - p_gain)``, and the one-sided bounds are its
quantiles (``upper``: the ``confidence`` quantile; ``lower``: the ``1 - confidence``
one; so ``[lower, upper]`` is a central ``2 * confidence - 1`` interval). Draws come
from a generator seeded by the counts, so the same outcomes give the same interval.

Why not the plain paired bootstrap (resample images with replacement): with few
discordant images it collapses. A candidate that agrees with the original on all of 20
images gets the interval [0, 0], and one whose true drop is 1 point is certified within
budget far too often. Simulated (``tools/sim_drop_interval.py``; 90 % upper bound, 300
draws per cell, n = 20 / 60 / 120 / 247 images, true drops 0-3 points): with a 1 % loss
rate and no gains the plain bootstrap's bound covered the true drop in 17 / 48 / 70 / 75 %
of draws, this one in 100 / 100 / 70 / 93 %; over all cells this one covered 84-100 %
except where the true rate gives about one expected loss (70-74 %: discreteness, which
no bootstrap escapes). When nothing differs its margin shrinks as ``1/n`` (90 %: 4.8
points at n = 20, 1.0 at n = 100, 0.41 at n = 247). scipy's
``stats.bootstrap(paired=True)`` is the plain bootstrap (and returns NaN on all-equal
data), so this is written here: a few lines of numpy.

``confidence = 0`` asks for the plain estimate: ``lower == upper == estimate``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pfcompile.errors import SearchError

__all__ = ["DropInterval", "check_confidence", "images_needed", "paired_drop_interval",
           "zero_discordance_upper"]

_DRAWS = 20000


@dataclass(frozen=True)
class DropInterval:
    """An accuracy drop in points (positive: the candidate is worse), with bounds."""

    estimate: float
    lower: float
    upper: float
    confidence: float     # one-sided level of each bound; 0: the plain estimate
    n: int                # images
    losses: int           # original right, candidate wrong
    gains: int            # original wrong, candidate right

    @property
    def margin(self) -> float:
        """How far the upper bound lies above the estimate (points)."""
        return self.upper - self.estimate

    def to_json(self) -> dict:
        return {"acc_drop": self.estimate, "acc_drop_lower": self.lower,
                "acc_drop_upper": self.upper, "acc_confidence": self.confidence,
                "acc_n": self.n, "acc_losses": self.losses, "acc_gains": self.gains}


def check_confidence(confidence: float) -> float:
    """``confidence`` if usable (0, or in [0.5, 1)), else a :class:`SearchError`."""
    c = float(confidence)
    if not (c == 0.0 or 0.5 <= c < 1.0):
        raise SearchError(f"--confidence must be 0 (the plain estimate) or in [0.5, 1), got {confidence}")
    return c


def _bounds(losses: int, gains: int, ties: int, confidence: float, seed: int) -> tuple[float, float]:
    rng = np.random.default_rng([seed, losses, gains, ties])
    g = rng.standard_gamma(np.array([losses, gains, ties], dtype=float) + 0.5, size=(_DRAWS, 3))
    drop = 100.0 * (g[:, 0] - g[:, 1]) / g.sum(axis=1)
    lo, hi = np.quantile(drop, [1.0 - confidence, confidence])
    return float(lo), float(hi)


def paired_drop_interval(reference_correct: np.ndarray, candidate_correct: np.ndarray,
                         confidence: float = 0.9, seed: int = 0) -> DropInterval:
    """The drop of the candidate against the original on the same images, with its
    one-sided ``confidence`` bounds (see the module docstring for the method).

    ``reference_correct`` / ``candidate_correct``: one bool per image (right or wrong;
    without labels, the reference is all True and the candidate's entry is whether it
    agrees with the original)."""
    r = np.asarray(reference_correct, dtype=bool).ravel()
    c = np.asarray(candidate_correct, dtype=bool).ravel()
    if r.shape != c.shape:
        raise SearchError(f"paired outcomes differ in length: {r.size} vs {c.size} images")
    if r.size == 0:
        raise SearchError("no images to estimate an accuracy drop from")
    confidence = check_confidence(confidence)
    losses, gains = int(np.sum(r & ~c)), int(np.sum(~r & c))
    n = int(r.size)
    est = 100.0 * (losses - gains) / n
    if confidence == 0.0:
        return DropInterval(est, est, est, 0.0, n, losses, gains)
    lo, hi = _bounds(losses, gains, n - losses - gains, confidence, seed)
    # the quantiles of a smooth posterior can sit a hair inside the estimate; never report
    # bounds on the wrong side of it
    return DropInterval(est, min(lo, est), max(hi, est), confidence, n, losses, gains)


def zero_discordance_upper(n: int, confidence: float) -> float:
    """The upper bound (points) on ``n`` images for a candidate that matches the original
    on every one: the narrowest interval ``n`` images can give."""
    confidence = check_confidence(confidence)
    return 0.0 if confidence == 0.0 else _bounds(0, 0, int(n), confidence, 0)[1]


def images_needed(budget: float, confidence: float, limit: int = 1_000_000) -> int | None:
    """The fewest images on which a candidate that differs from the original on none of
    them has its upper bound within ``budget`` points (None: more than ``limit``)."""
    confidence = check_confidence(confidence)
    if confidence == 0.0:
        return 1
    ok = lambda n: zero_discordance_upper(n, confidence) <= budget
    if budget <= 0 or not ok(limit):
        return None
    lo, hi = 1, limit
    while lo < hi:
        mid = (lo + hi) // 2
        if ok(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo
