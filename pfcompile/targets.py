"""Targets are data: ``targets/*.toml`` (TVM target dict, cross compiler, RPC key,
measurement settings, hardware facts). A new board is a new file."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pfcompile.errors import ConfigError

__all__ = ["Target", "MeasureSettings", "load_target", "list_targets", "targets_dir", "host_mcpu"]


def targets_dir() -> Path:
    """``targets/`` beside the package (source checkout) or inside it (installed)."""
    here = Path(__file__).resolve().parent
    for cand in (here.parent / "targets", here / "targets"):
        if cand.is_dir():
            return cand
    raise ConfigError(f"no targets/ folder found beside {here}")


@dataclass(frozen=True)
class MeasureSettings:
    number: int = 10
    repeat: int = 5
    min_repeat_ms: int = 50
    timeout_s: int = 120


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    arch: str
    emulated: bool
    tvm: dict[str, Any]
    cross_compiler: str
    rpc_key: str
    serve: str
    measure: MeasureSettings
    hardware: dict[str, Any] = field(default_factory=dict)
    path: str = ""

    @property
    def is_host(self) -> bool:
        return not self.cross_compiler

    def tvm_target(self):
        """The ``tvm.target.Target`` for this target (imports tvm lazily)."""
        import tvm

        try:
            return tvm.target.Target(dict(self.tvm))
        except Exception as exc:
            raise ConfigError(f"target '{self.name}' ({self.path}): TVM rejects {self.tvm}: {exc}") from exc

    def to_json(self) -> dict:
        return {"name": self.name, "tvm": dict(self.tvm), "cross_compiler": self.cross_compiler,
                "rpc_key": self.rpc_key, "emulated": self.emulated}


def host_mcpu() -> str:
    """An LLVM cpu name for this machine (LLVM 22 refuses ``native``)."""
    try:
        flags = ""
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = line
                break
        if " avx512f " in flags + " " and " avx512bw " in flags + " " and " avx512vl " in flags + " ":
            return "x86-64-v4"
        if " avx2 " in flags + " " and " fma " in flags + " ":
            return "x86-64-v3"
        if " sse4_2 " in flags + " ":
            return "x86-64-v2"
    except OSError:
        pass
    return "x86-64-v3"


def _resolve_auto(tvm_dict: dict[str, Any]) -> dict[str, Any]:
    out = dict(tvm_dict)
    if out.get("mcpu") == "auto":
        out["mcpu"] = host_mcpu()
    if out.get("num-cores") == "auto":
        out["num-cores"] = os.cpu_count() or 1
    return out


def load_target(name_or_path: str) -> Target:
    """Load a target by name (``targets/NAME.toml``) or by path to a .toml."""
    p = Path(name_or_path)
    if p.suffix != ".toml":
        p = targets_dir() / f"{name_or_path}.toml"
    if not p.exists():
        known = ", ".join(sorted(x.stem for x in targets_dir().glob("*.toml")))
        raise ConfigError(f"unknown target '{name_or_path}' (no {p}); known targets: {known}")
    try:
        d = tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: invalid TOML: {exc}") from exc
    try:
        m = d.get("measure", {})
        return Target(
            name=d.get("name", p.stem),
            description=d.get("description", ""),
            arch=d["arch"],
            emulated=bool(d.get("emulated", False)),
            tvm=_resolve_auto(d["tvm"]),
            cross_compiler=d.get("compile", {}).get("cross_compiler", ""),
            rpc_key=d.get("device", {}).get("rpc_key", p.stem),
            serve=d.get("device", {}).get("serve", "local"),
            measure=MeasureSettings(**{k: int(v) for k, v in m.items()}),
            hardware=dict(d.get("hardware", {})),
            path=str(p),
        )
    except (KeyError, TypeError) as exc:
        raise ConfigError(f"{p}: missing or invalid field: {exc}") from exc


def list_targets() -> list[Target]:
    return [load_target(str(p)) for p in sorted(targets_dir().glob("*.toml"))]
