"""Settings of the channel-pruning pass, declared once: validation + search space."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from pfcompile.errors import ConfigError
from pfcompile.passes.declared import check_keys

__all__ = ["CRITERIA", "PruneConfig"]

CRITERIA = ("l1", "bn", "lasso")


@dataclass(frozen=True)
class PruneConfig:
    """How much to prune and how to choose channels.

    ``ratio`` applies to every prunable group not named in ``group_ratios``
    (a mapping group id -> ratio, stored as a sorted tuple of pairs so the
    config is hashable). Each field's ``metadata["search"]`` lists the values
    a search may try.
    """

    ratio: float = field(default=0.0, metadata={
        "help": "fraction of each prunable group's channels to remove, 0 <= r < 1",
        "search": (0.0, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75)})
    group_ratios: tuple[tuple[str, float], ...] = field(default=(), metadata={
        "help": "per-group ratios keyed by group id (see `pfcompile inspect --json`)",
        "search": "per group id: the values of `ratio`"})
    criterion: str = field(default="l1", metadata={
        "help": "channel importance: l1 (weight L1 norm), bn (|BN gamma|), lasso (He et al. "
                "2017 channel selection + least-squares reconstruction; needs calibration data)",
        "search": CRITERIA})
    round_to: int = field(default=1, metadata={
        "help": "keep channel counts a multiple of this (vector-friendly shapes)",
        "search": (1, 4, 8)})
    calib_samples: int = field(default=64, metadata={
        "help": "calibration samples used by the lasso criterion", "search": (32, 64, 128)})

    def __post_init__(self) -> None:
        gr = self.group_ratios
        if isinstance(gr, Mapping):
            gr = tuple(sorted((str(k), float(v)) for k, v in gr.items()))
            object.__setattr__(self, "group_ratios", gr)
        _check_ratio(self.ratio, "ratio")
        for gid, r in self.group_ratios:
            _check_ratio(r, f"ratio for group '{gid}'")
        if self.criterion not in CRITERIA:
            raise ConfigError(f"unknown pruning criterion '{self.criterion}'; use one of "
                              f"{', '.join(CRITERIA)}")
        if int(self.round_to) != self.round_to or self.round_to < 1:
            raise ConfigError(f"round must be a positive integer, got {self.round_to}")
        if self.calib_samples < 1:
            raise ConfigError(f"calib_samples must be >= 1, got {self.calib_samples}")

    def ratio_for(self, group_id: str) -> float:
        return dict(self.group_ratios).get(group_id, self.ratio)

    def to_json(self) -> dict[str, Any]:
        return {"ratio": self.ratio, "ratios": dict(self.group_ratios),
                "criterion": self.criterion, "round": self.round_to,
                "calib_samples": self.calib_samples}

    @staticmethod
    def from_json(d: Mapping[str, Any], where: str = "config") -> PruneConfig:
        """``{"ratio": .., "ratios": {group_id: r}, "criterion": .., "round": ..}``;
        a flat ``{group_id: r}`` mapping is read as per-group ratios."""
        if not isinstance(d, Mapping):
            raise ConfigError(f"{where}: expected a JSON object")
        if "groups" in d and isinstance(d.get("config"), Mapping):
            d = d["config"]  # a whole `pfcompile inspect --json` report
        known = {"ratio", "ratios", "criterion", "round", "calib_samples"}
        if d and not (set(d) & known) and all(isinstance(v, int | float) for v in d.values()):
            return PruneConfig(group_ratios=dict(d))
        check_keys(d, known, where)
        ratios = d.get("ratios", {})
        if not isinstance(ratios, Mapping):
            raise ConfigError(f"{where}: 'ratios' must map group ids to numbers")
        try:
            return PruneConfig(ratio=float(d.get("ratio", 0.0)), group_ratios=dict(ratios),
                               criterion=str(d.get("criterion", "l1")),
                               round_to=int(d.get("round", 1)),
                               calib_samples=int(d.get("calib_samples", 64)))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: {exc}") from exc

    @staticmethod
    def load(path: str | Path) -> PruneConfig:
        p = Path(path)
        if not p.exists():
            raise ConfigError(f"prune config not found: {p}")
        try:
            d = json.loads(p.read_text())
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{p} is not valid JSON: {exc}") from exc
        return PruneConfig.from_json(d, where=str(p))

    @staticmethod
    def search_space() -> dict[str, Any]:
        """Field name -> values a search may try (from the field declarations)."""
        return {f.name: f.metadata.get("search") for f in fields(PruneConfig)}


def _check_ratio(r: float, what: str) -> None:
    try:
        ok = 0.0 <= float(r) < 1.0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ConfigError(f"{what} must be in [0, 1), got {r!r}")
