"""Tuning records: append-only JSON lines ``<target>/records.jsonl``, keyed by workload
(MetaSchedule-database style), read by every compile: those shipped with the package
(``pfcompile/records/``, read only) and those measured here (the cache's ``records/``,
where new records are appended; see :mod:`pfcompile.paths`).

A lookup returns the best record for the exact workload; failing that,
:meth:`RecordDB.nearest` returns the record of the nearest tuned workload of the
same family and kernel shape (a pruned layer with 37 instead of 64 channels
starts from what its 64-channel neighbour learnt).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pfcompile import paths
from pfcompile.errors import ConfigError

__all__ = ["Record", "RecordDB", "default_records_dir", "records_path"]

#: dims that must be equal for a record to transfer (kernel shape, stride, grouping)
_SHAPE_CLASS = ("kh", "kw", "sh", "sw", "dh", "dw", "groups", "ob", "ib")


def default_records_dir() -> Path:
    """Where measured records are appended: the cache's ``records/`` folder."""
    return paths.records_dir()


def records_path(records_dir: Path, target_name: str) -> Path:
    return Path(records_dir) / target_name / "records.jsonl"


@dataclass(frozen=True)
class Record:
    workload: str                 # Workload.key
    family: str
    dims: dict[str, int]
    params: dict[str, Any]
    ms: float                     # median kernel latency measured for these params
    target: str
    tuner: str = "pfcompile"
    trials: int = 0
    heuristic_ms: float | None = None
    created: float = 0.0

    def to_json(self) -> str:
        return json.dumps({"workload": self.workload, "family": self.family, "dims": self.dims,
                           "params": self.params, "ms": self.ms, "target": self.target,
                           "tuner": self.tuner, "trials": self.trials,
                           "heuristic_ms": self.heuristic_ms,
                           "created": self.created or time.time()}, sort_keys=True)

    @classmethod
    def from_json(cls, line: str) -> Record:
        d = json.loads(line)
        return cls(workload=d["workload"], family=d["family"], dims=dict(d["dims"]),
                   params=dict(d["params"]), ms=float(d["ms"]), target=d.get("target", ""),
                   tuner=d.get("tuner", "pfcompile"), trials=int(d.get("trials", 0)),
                   heuristic_ms=d.get("heuristic_ms"), created=float(d.get("created", 0.0)))


class RecordDB:
    """Best record per workload for one target, backed by a JSON-lines file (appended
    to) and any number of read-only ones (``also_read``: the records shipped)."""

    def __init__(self, path: Path | None, also_read: tuple[Path, ...] = ()) -> None:
        self.path = Path(path) if path is not None else None
        self.best: dict[str, Record] = {}
        for src in (*also_read, *([self.path] if self.path is not None else [])):
            if not Path(src).exists():
                continue
            for i, line in enumerate(Path(src).read_text().splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    self._keep(Record.from_json(line))
                except (KeyError, ValueError, TypeError) as exc:
                    raise ConfigError(f"{src}:{i}: not a tuning record: {exc}") from exc

    @classmethod
    def for_target(cls, records_dir: Path | None, target_name: str) -> RecordDB:
        """``records_dir`` given: that folder only. None: the records shipped with the
        package plus the cache's, new ones appended to the cache's."""
        if records_dir is not None:
            return cls(records_path(records_dir, target_name))
        return cls(records_path(default_records_dir(), target_name),
                   also_read=(records_path(paths.shipped_records_dir(), target_name),))

    def _keep(self, rec: Record) -> None:
        old = self.best.get(rec.workload)
        if old is None or rec.ms < old.ms:
            self.best[rec.workload] = rec

    def __len__(self) -> int:
        return len(self.best)

    def add(self, rec: Record) -> None:
        """Append to the file at once (a killed run keeps what it measured)."""
        self._keep(rec)
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as f:
                f.write(rec.to_json() + "\n")

    def get(self, key: str) -> Record | None:
        return self.best.get(key)

    def nearest(self, family: str, dims: dict[str, int]) -> Record | None:
        """Nearest record of the same family and kernel shape (log-distance on the rest)."""
        best, best_d = None, math.inf
        for rec in self.best.values():
            if rec.family != family:
                continue
            if any(rec.dims.get(k) != dims.get(k) for k in _SHAPE_CLASS if k in dims):
                continue
            dist = 0.0
            for k, v in dims.items():
                if k in _SHAPE_CLASS:
                    continue
                w = rec.dims.get(k)
                if w is None:
                    dist += 10.0
                else:
                    dist += abs(math.log((abs(v) + 1) / (abs(w) + 1)))
            if dist < best_d:
                best, best_d = rec, dist
        return best
