"""The passes' settings, declared once (core of Olive's "one declaration, two uses").

Each pass config is a frozen dataclass whose fields carry their help text and the
values a search may try in ``metadata`` (``"search"``, and ``"per_layer"`` where a
value may differ per layer). :func:`search_fields` reads those declarations (the
search space is built from them: :func:`pfcompile.search.knobs.declared_search_values`),
and :func:`check_keys` is the configs' one check of a JSON object's keys.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import fields
from typing import Any

from pfcompile.errors import ConfigError

__all__ = ["check_keys", "search_fields"]


def search_fields(config_cls: type) -> dict[str, dict[str, Any]]:
    """Field name -> its metadata (``{"search": values, "per_layer": bool, "help": text}``),
    for the fields of the dataclass ``config_cls`` that declare search values."""
    return {f.name: dict(f.metadata) for f in fields(config_cls) if "search" in f.metadata}


def check_keys(d: Mapping[str, Any], known: Iterable[str], where: str) -> None:
    """Raise ConfigError naming ``where`` when ``d`` has a key outside ``known``."""
    known = set(known)
    unknown = sorted(set(d) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(known)}")
