"""The run log: ``RUN_DIR/trials.jsonl``, append-only JSON lines, the search's memory.

Every meta, baseline, trial and kernel-timing record is appended (flushed and fsynced)
the moment it exists; a rerun with the same RUN_DIR (``--resume``) replays it and goes
on, so a kill loses at most the trials in flight. :class:`RunLog` checks that a resumed
run is the same search (model, strategy, target, the knobs that shape the space, the
``--confidence`` that qualifies a candidate, and the confirmation split,
:func:`pfcompile.search.confirm.check_split`).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from pfcompile.data import Dataset
from pfcompile.errors import SearchError
from pfcompile.search.confirm import check_split

__all__ = ["RESUME_KEYS", "RunLog", "TrialLog"]

#: settings a resumed run must keep (they define the search space, and which candidates
#: qualify); a key missing from an older run's log (``confidence``: from before intervals)
#: is not checked
RESUME_KEYS = ("bits", "sparsity", "confidence")


class TrialLog:
    """Append-only JSON lines; each record is on disk before the call returns."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def append(self, record: dict) -> None:
        line = json.dumps(record, sort_keys=True, default=float)
        with open(self.path, "a") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())

    def read(self) -> list[dict]:
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line torn by a kill: that trial was in flight
        return out


def _plain(v: Any) -> Any:
    return list(v) if isinstance(v, (list, tuple)) else v


class RunLog:
    """A run folder's log: what an earlier run left (``past``) and appends from now on."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.file = TrialLog(self.run_dir / "trials.jsonl")
        self.past = self.file.read()

    def append(self, record: dict) -> None:
        self.file.append(record)

    def of_type(self, kind: str) -> list[dict]:
        return [r for r in self.past if r.get("type") == kind]

    @property
    def baseline(self) -> dict | None:
        return next(iter(self.of_type("baseline")), None)

    def start(self, model_hash: str, strategy: str, target: str, settings: Any,
              data: Dataset | None = None, confirm: Dataset | None = None) -> None:
        """Resume the logged run (SearchError when it is another search) or log ``meta``;
        then the confirmation ``split`` record of a new run (``data``: the search part,
        ``confirm``: the confirmation part or None)."""
        meta = next(iter(self.of_type("meta")), None)
        if meta is not None:
            self._check_same(meta, model_hash, strategy, target, settings)
        split_rec = None if data is None else check_split(self.past, data, confirm, self.run_dir)
        if meta is None:
            self.append({"type": "meta", "model_hash": model_hash, "strategy": strategy,
                         "target": target, "settings": asdict(settings), "time": time.time()})
        if split_rec is not None:
            self.append(split_rec)

    def _check_same(self, meta: dict, model_hash: str, strategy: str, target: str,
                    settings: Any) -> None:
        if meta["model_hash"] != model_hash or meta["strategy"] != strategy \
                or meta["target"] != target:
            raise SearchError(f"{self.run_dir} holds a run of model {meta['model_hash']} / "
                              f"strategy {meta['strategy']} / target {meta['target']}; resume it "
                              "with the same model, --strategy and --target, or use a new run "
                              "folder")
        old = meta.get("settings", {})
        for key in RESUME_KEYS:
            if key == "confidence" and key not in old:   # a run from before intervals
                continue
            if _plain(old.get(key)) != _plain(getattr(settings, key)):
                raise SearchError(f"{self.run_dir} holds a run with --{key} {old.get(key)}; "
                                  f"resume it with the same --{key}, or use a new run folder")
