"""Coverage of the 90 % upper bound on an accuracy drop (pfcompile.search.stats) against
the plain paired bootstrap, on simulated paired outcomes with a known drop.

    python tools/sim_drop_interval.py [--draws 300] [--confidence 0.9]

Prints, for n images and true (loss, gain) rates, how often each upper bound was at or
above the true drop (the nominal rate is the confidence). CPU only, no timing.
"""

from __future__ import annotations

import argparse

import numpy as np

from pfcompile.search.stats import paired_drop_interval


def plain_bootstrap_upper(b: int, c: int, t: int, confidence: float, draws: int = 4000) -> float:
    n = b + c + t
    rng = np.random.default_rng([b, c, t])
    k = rng.multinomial(n, [b / n, c / n, t / n], draws)
    return float(np.quantile(100.0 * (k[:, 0] - k[:, 1]) / n, confidence))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--draws", type=int, default=300)
    ap.add_argument("--confidence", type=float, default=0.9)
    args = ap.parse_args()
    rng = np.random.default_rng(7)
    print(f"{'n':>5}{'loss':>7}{'gain':>7}{'true drop':>10}{'jeffreys':>10}{'plain':>8}")
    for n in (20, 60, 120, 247):
        for pl, pg in ((0.0, 0.0), (0.005, 0.0), (0.01, 0.0), (0.02, 0.01), (0.03, 0.0), (0.05, 0.03)):
            true = 100.0 * (pl - pg)
            hit_j = hit_p = 0
            for _ in range(args.draws):
                b, c, t = (int(v) for v in rng.multinomial(n, [pl, pg, 1 - pl - pg]))
                ref = np.array([1] * b + [0] * c + [1] * t, bool)
                cand = np.array([0] * b + [1] * c + [1] * t, bool)
                hit_j += paired_drop_interval(ref, cand, args.confidence).upper >= true - 1e-9
                hit_p += plain_bootstrap_upper(b, c, t, args.confidence) >= true - 1e-9
            print(f"{n:>5}{pl:>7.3f}{pg:>7.3f}{true:>10.2f}{hit_j / args.draws:>10.2f}"
                  f"{hit_p / args.draws:>8.2f}")


if __name__ == "__main__":
    main()
