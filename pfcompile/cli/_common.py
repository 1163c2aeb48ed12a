"""Helpers shared by the command modules: read a JSON file, load a data file, JSON-safe
numbers. Errors are ConfigError naming the file."""

from __future__ import annotations

import json
import math
from pathlib import Path

from pfcompile.errors import ConfigError

__all__ = ["jsonable", "load_data", "read_json"]


def read_json(path: Path, what: str) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"{what} file not found: {path}") from exc
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{what} {path} is not valid JSON: {exc}") from exc


def load_data(model, path: Path):
    from pfcompile.data import load_npz
    from pfcompile.ir import to_proto
    from pfcompile.model import input_specs

    return load_npz(path, input_specs(to_proto(model)))


def jsonable(d):
    if isinstance(d, float) and not math.isfinite(d):
        return str(d)
    if isinstance(d, dict):
        return {k: jsonable(v) for k, v in d.items()}
    if isinstance(d, list):
        return [jsonable(v) for v in d]
    return d
