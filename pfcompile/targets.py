"""Targets are data: ``targets/*.toml`` (TVM target dict, cross compiler, RPC key,
measurement settings, hardware facts). A new board is a new file."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pfcompile.errors import ConfigError

__all__ = ["MeasureSettings", "Target", "host_hardware", "host_mcpu", "list_targets", "load_target", "targets_dir"]


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
    #: ``[accelerator]`` table of an FPGA-style target (see pfcompile.accel.config); empty
    #: for CPU targets.
    accelerator: dict[str, Any] = field(default_factory=dict)

    @property
    def is_host(self) -> bool:
        return not self.cross_compiler

    @property
    def is_accelerator(self) -> bool:
        """True for FPGA-style targets served by the accelerator simulator."""
        return bool(self.accelerator)

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


def _cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def host_mcpu() -> str:
    """An LLVM cpu name for this machine (LLVM 22 refuses ``native``)."""
    flags = _cpu_flags()
    if {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags:
        return "x86-64-v4"
    if {"avx2", "fma"} <= flags:
        return "x86-64-v3"
    if "sse4_2" in flags:
        return "x86-64-v2"
    return "x86-64-v3" if not flags else "x86-64"


def host_hardware() -> dict[str, Any]:
    """Vector width and int8 dot-product support of this machine's CPU."""
    flags = _cpu_flags()
    bits = 512 if {"avx512f", "avx512bw"} <= flags else 256 if "avx2" in flags else 128
    if "avx512_vnni" in flags:
        dot = "avx512-vnni"
    elif "avx_vnni" in flags:
        dot = "avx-vnni"
    else:
        dot = "avx2" if "avx2" in flags else "none"
    return {"vector_bits": bits, "fp32_lanes": bits // 32,
            "vector_registers": 32 if bits == 512 else 16, "int8_dot": dot}


def _resolve_auto(tvm_dict: dict[str, Any]) -> dict[str, Any]:
    out = dict(tvm_dict)
    if out.get("mcpu") == "auto":
        out["mcpu"] = host_mcpu()
    if out.get("num-cores") == "auto":
        out["num-cores"] = os.cpu_count() or 1
    return out


def _resolve_hardware(hw: dict[str, Any]) -> dict[str, Any]:
    out = dict(hw)
    detected = None
    for k, v in hw.items():
        if v == "auto":
            detected = detected or host_hardware()
            out[k] = detected.get(k, v)
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
            hardware=_resolve_hardware(d.get("hardware", {})),
            path=str(p),
            accelerator=dict(d.get("accelerator", {})),
        )
    except (KeyError, TypeError) as exc:
        raise ConfigError(f"{p}: missing or invalid field: {exc}") from exc


def list_targets() -> list[Target]:
    return [load_target(str(p)) for p in sorted(targets_dir().glob("*.toml"))]
