"""The accuracy side under noise: the paired drop interval on synthetic outcomes with a
known drop, the judge's verdicts, and the seeded, stratified confirmation split."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from pfcompile.data import Dataset
from pfcompile.errors import DataError, SearchError
from pfcompile.search.confirm import split_for_confirmation
from pfcompile.search.stats import (
    images_needed,
    paired_drop_interval,
    zero_discordance_upper,
)


def _outcomes(losses: int, gains: int, both_right: int, both_wrong: int):
    """Per-image (reference right, candidate right) with the given paired counts."""
    ref = np.array([1] * losses + [0] * gains + [1] * both_right + [0] * both_wrong, bool)
    cand = np.array([0] * losses + [1] * gains + [1] * both_right + [0] * both_wrong, bool)
    return ref, cand


def test_paired_interval_on_a_known_drop():
    # 2,000 images, the candidate loses 40 and gains 10: a drop of exactly 1.5 points
    ref, cand = _outcomes(40, 10, 1850, 100)
    iv = paired_drop_interval(ref, cand, confidence=0.9)
    assert iv.estimate == pytest.approx(1.5) and (iv.losses, iv.gains, iv.n) == (40, 10, 2000)
    assert iv.lower < 1.5 < iv.upper
    # the normal approximation of the paired difference: sd = sqrt((pl + pg - d^2) / n)
    sd = 100 * np.sqrt((0.02 + 0.005 - 0.015 ** 2) / 2000)
    assert iv.upper == pytest.approx(1.5 + 1.2816 * sd, abs=0.06)
    assert iv.lower == pytest.approx(1.5 - 1.2816 * sd, abs=0.06)
    # deterministic: the same outcomes (in any order) give the same interval
    perm = np.random.default_rng(3).permutation(2000)
    assert paired_drop_interval(ref[perm], cand[perm], 0.9) == iv
    # 0 = the plain estimate
    plain = paired_drop_interval(ref, cand, confidence=0)
    assert plain.lower == plain.upper == plain.estimate == pytest.approx(1.5)


def test_upper_bound_covers_a_known_drop_at_about_its_confidence():
    """Data drawn from known per-image rates (loss 2 %, gain 0.5 %: a 1.5-point drop) on
    300 images: the 90 % upper bound is at or above the true drop in about 90 % of draws,
    and far more often than the estimate alone (about half)."""
    rng = np.random.default_rng(0)
    hits = est_hits = 0
    for _ in range(200):
        b, c, t = (int(v) for v in rng.multinomial(300, [0.02, 0.005, 0.975]))
        iv = paired_drop_interval(*_outcomes(b, c, t, 0), confidence=0.9)
        hits += iv.upper >= 1.5
        est_hits += iv.estimate >= 1.5
    assert 0.84 <= hits / 200 <= 0.97
    assert est_hits / 200 < 0.65


def test_without_labels_the_drop_is_disagreement_with_the_original():
    agree = np.array([True] * 95 + [False] * 5)
    iv = paired_drop_interval(np.ones(100, bool), agree, 0.9)
    assert iv.estimate == pytest.approx(5.0) and iv.gains == 0 and iv.losses == 5
    assert iv.upper > 5.0


def test_zero_discordance_still_has_a_width_that_shrinks_with_n():
    ups = [zero_discordance_upper(n, 0.9) for n in (20, 100, 247, 1000)]
    assert ups[0] > 4.0 and all(a > b for a, b in itertools.pairwise(ups))
    assert ups[2] == pytest.approx(0.41, abs=0.05)
    need = images_needed(1.0, 0.9)
    assert 90 <= need <= 115
    assert zero_discordance_upper(need, 0.9) <= 1.0 < zero_discordance_upper(need - 5, 0.9)
    assert images_needed(1.0, 0) == 1


def test_bad_confidence_and_mismatched_outcomes_are_errors():
    ref, cand = _outcomes(1, 0, 9, 0)
    for bad in (0.3, 1.0, -0.1):
        with pytest.raises(SearchError, match="--confidence"):
            paired_drop_interval(ref, cand, bad)
    with pytest.raises(SearchError, match="differ in length"):
        paired_drop_interval(ref, cand[:-1])


# ----------------------------------------------------------------------------- split
def _labelled(n_per_class: list[int]) -> Dataset:
    y = np.concatenate([np.full(k, c) for c, k in enumerate(n_per_class)]).astype(np.int64)
    x = np.arange(len(y), dtype=np.float32).reshape(-1, 1, 1, 1)
    return Dataset({"input": x}, y, "d.npz")


def test_confirmation_split_is_stratified_seeded_and_disjoint():
    d = _labelled([50, 30, 20, 1])
    search, confirm = split_for_confirmation(d, 0.3, seed=0)
    assert np.bincount(confirm.labels, minlength=4).tolist() == [15, 9, 6, 0]  # a lone label stays
    assert len(search) + len(confirm) == len(d)
    xs, xc = search.inputs["input"].ravel(), confirm.inputs["input"].ravel()
    assert not set(xs) & set(xc)
    assert np.all(np.diff(xs) > 0) and np.all(np.diff(xc) > 0)      # file order kept
    assert (search.labels == d.labels[xs.astype(int)]).all()
    again = split_for_confirmation(d, 0.3, seed=0)[1].inputs["input"].ravel()
    other = split_for_confirmation(d, 0.3, seed=1)[1].inputs["input"].ravel()
    assert (again == xc).all() and not (other == xc).all()
    assert split_for_confirmation(d, 0.0)[1] is None


def test_split_without_labels_and_too_little_data():
    d = Dataset({"input": np.zeros((10, 1), np.float32)}, None, "u.npz")
    s, c = split_for_confirmation(d, 0.3, seed=0)
    assert (len(s), len(c)) == (7, 3) and c.labels is None
    with pytest.raises(DataError, match="--confirm-fraction 0"):
        split_for_confirmation(Dataset({"input": np.zeros((1, 1), np.float32)}, None), 0.3)
