"""Save and restore a strategy's own state in the run folder (``--resume``).

A strategy that learns (the RL agent) returns ``state_dict()``: a flat dict
whose values are numpy arrays or JSON-able objects. It is written to
``RUN_DIR/strategy_state.npz`` atomically (temp file, then rename): arrays as
they are, everything else in one JSON entry, so loading needs no pickle.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from pfcompile.errors import SearchError

__all__ = ["STATE_FILE", "load_strategy_state", "save_strategy_state"]

STATE_FILE = "strategy_state.npz"
_JSON_KEY = "__json__"


def save_strategy_state(run_dir: str | Path, state: dict) -> Path:
    path = Path(run_dir) / STATE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {k: v for k, v in state.items() if isinstance(v, np.ndarray)}
    if _JSON_KEY in arrays:
        raise SearchError(f"strategy state may not use the key '{_JSON_KEY}'")
    rest = {k: v for k, v in state.items() if k not in arrays}
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays, **{_JSON_KEY: np.array(json.dumps(rest))})
    os.replace(tmp, path)
    return path


def load_strategy_state(run_dir: str | Path) -> dict | None:
    """The saved state, or None when the run folder holds none."""
    path = Path(run_dir) / STATE_FILE
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            out = {k: z[k] for k in z.files if k != _JSON_KEY}
            out.update(json.loads(str(z[_JSON_KEY])))
    except (OSError, ValueError, KeyError) as exc:
        raise SearchError(f"{path}: unreadable strategy state ({exc}); delete it to restart the "
                          "strategy from the trial log alone") from exc
    return out
