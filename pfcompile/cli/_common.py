"""Helpers shared by the command modules: read a JSON file, load a data file, JSON-safe
numbers. Errors are ConfigError naming the file."""

from __future__ import annotations

import json
import math
from pathlib import Path

from pfcompile.errors import ConfigError

__all__ = ["import_ir", "jsonable", "load_data", "read_json"]


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
    from pfcompile.model import sample_specs

    return load_npz(path, sample_specs(to_proto(model)))


def import_ir(path: Path, input_shape: list[str] | None, batch: int | None = 1):
    """The import front end (pfcompile.frontend) as an ``onnx_ir.Model``."""
    from pfcompile.frontend import import_ir as _import_ir
    from pfcompile.model import parse_input_shapes

    return _import_ir(path, parse_input_shapes(input_shape), batch=batch)


def jsonable(d):
    if isinstance(d, float) and not math.isfinite(d):
        return str(d)
    if isinstance(d, dict):
        return {k: jsonable(v) for k, v in d.items()}
    if isinstance(d, list):
        return [jsonable(v) for v in d]
    return d
