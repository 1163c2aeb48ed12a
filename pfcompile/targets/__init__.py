"""Targets are data: ``pfcompile/targets/*.toml`` (TVM target dict, cross compiler, RPC
key, measurement settings, hardware facts), shipped with the package. A new board is a
new file (or a ``.toml`` anywhere, passed by path)."""

from __future__ import annotations

import os
import platform
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pfcompile.errors import ConfigError

__all__ = [
    "MeasureSettings",
    "Target",
    "cpu_flags",
    "host_arch",
    "host_hardware",
    "host_mcpu",
    "list_targets",
    "load_target",
    "targets_dir",
]


def targets_dir() -> Path:
    """The folder of the shipped target files: this package (``pfcompile/targets/``)."""
    return Path(__file__).resolve().parent


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
    #: the one meaning of "emulated": the target's code runs under qemu-user on this
    #: machine (``device.serve = "qemu"`` and another architecture), so its latencies are
    #: functional checks only. An accelerator target is *simulated* (:attr:`simulated`),
    #: not emulated.
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
    #: CPU features (``/proc/cpuinfo`` flag names) the code needs: a host-served target
    #: whose CPU lacks one is refused before anything runs (see :meth:`missing_cpu_features`).
    requires: tuple[str, ...] = ()

    @property
    def is_host(self) -> bool:
        return not self.cross_compiler

    @property
    def is_accelerator(self) -> bool:
        """True for FPGA-style targets served by the accelerator simulator."""
        return bool(self.accelerator)

    @property
    def simulated(self) -> bool:
        """True when latencies come from the accelerator simulator's cycle model."""
        return self.is_accelerator

    @property
    def runs_here(self) -> bool:
        """True when this machine runs the target's code natively (same architecture)."""
        return self.arch == host_arch()

    def missing_cpu_features(self) -> list[str]:
        """The required CPU features this machine lacks (empty when it has them all, or
        when the target is not run on this machine)."""
        if not self.requires or not self.runs_here:
            return []
        have = cpu_flags()
        return [f for f in self.requires if f not in have]

    def tvm_target(self):
        """The ``tvm.target.Target`` for this target (imports tvm lazily)."""
        import tvm

        try:
            return tvm.target.Target(dict(self.tvm))
        except Exception as exc:
            raise ConfigError(f"target '{self.name}' ({self.path}): TVM rejects {self.tvm}: {exc}") from exc

    def to_json(self) -> dict:
        return {"name": self.name, "tvm": dict(self.tvm), "cross_compiler": self.cross_compiler,
                "rpc_key": self.rpc_key, "emulated": self.emulated,
                "simulated": self.simulated,
                "int8_dot": self.hardware.get("int8_dot", "")}


def host_arch() -> str:
    """This machine's architecture as the targets spell it: ``x86_64`` or ``aarch64``."""
    m = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(m, m)


def cpu_model() -> str:
    """This CPU's model name (``/proc/cpuinfo``), for the tables benchmarks print."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.split(":", 1)[0].strip() in ("model name", "Model"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    """This CPU's feature flags from /proc/cpuinfo (``flags`` on x86, ``Features`` on ARM)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key = line.split(":", 1)[0].strip()
            if key in ("flags", "Features"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def host_mcpu(arch: str | None = None, flags: set[str] | None = None) -> str:
    """An LLVM cpu name for this machine (LLVM 22 refuses ``native``)."""
    arch = arch or host_arch()
    flags = cpu_flags() if flags is None else flags
    if arch == "aarch64":
        return "generic"  # the features go in mattr (see host_hardware)
    if {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags:
        return "x86-64-v4"
    if {"avx2", "fma"} <= flags:
        return "x86-64-v3"
    if "sse4_2" in flags:
        return "x86-64-v2"
    return "x86-64-v3" if not flags else "x86-64"


def host_hardware(arch: str | None = None, flags: set[str] | None = None) -> dict[str, Any]:
    """Vector width, registers and int8 dot-product support of this machine's CPU.

    x86: AVX-512 -> 512 bits / 32 registers, AVX2 -> 256 / 16; ``int8_dot`` is
    ``avx512-vnni``, ``avx-vnni`` or ``avx2`` (``vpmaddwd``). aarch64: NEON, 128 bits / 32
    registers; ``int8_dot`` is ``sdot`` with the dot-product extension (``asimddp``), else
    ``neon``; ``mattr`` lists the LLVM features found (+neon, +dotprod, +sve).
    """
    arch = arch or host_arch()
    flags = cpu_flags() if flags is None else flags
    if arch == "aarch64":
        mattr = ["+neon"] + (["+dotprod"] if "asimddp" in flags else []) + (
            ["+sve"] if "sve" in flags else [])
        return {"vector_bits": 128, "fp32_lanes": 4, "vector_registers": 32,
                "int8_dot": "sdot" if "asimddp" in flags else "neon", "mattr": mattr}
    bits = 512 if {"avx512f", "avx512bw"} <= flags else 256 if "avx2" in flags else 128
    if "avx512_vnni" in flags:
        dot = "avx512-vnni"
    elif "avx_vnni" in flags:
        dot = "avx-vnni"
    else:
        dot = "avx2" if "avx2" in flags else "none"
    return {"vector_bits": bits, "fp32_lanes": bits // 32,
            "vector_registers": 32 if bits == 512 else 16, "int8_dot": dot}


def _host_description(tvm: dict[str, Any], hw: dict[str, Any]) -> str:
    arch = host_arch()
    isa = ("NEON" if arch == "aarch64" else
           "AVX-512" if hw.get("vector_bits") == 512 else "AVX2" if hw.get("vector_bits") == 256
           else "SSE")
    return (f"this machine's {arch} CPU, detected: mcpu={tvm.get('mcpu')} {isa} "
            f"({hw.get('fp32_lanes')} fp32 lanes), int8 by {hw.get('int8_dot')}, "
            f"{tvm.get('num-cores')} cores")


def _resolve_auto(tvm_dict: dict[str, Any]) -> dict[str, Any]:
    out = dict(tvm_dict)
    if out.get("mcpu") == "auto":
        out["mcpu"] = host_mcpu()
        if host_arch() == "aarch64":
            out.setdefault("mtriple", "aarch64-linux-gnu")
            out["mattr"] = list(out.get("mattr", [])) + [
                a for a in host_hardware()["mattr"] if a not in out.get("mattr", [])]
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
    """Load a target by name (``pfcompile/targets/NAME.toml``) or by path to a .toml."""
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
        arch = host_arch() if d["arch"] == "auto" else d["arch"]
        tvm = _resolve_auto(d["tvm"])
        hardware = _resolve_hardware(d.get("hardware", {}))
        hardware.pop("mattr", None)
        hardware.pop("requires", None)
        description = d.get("description", "")
        if description == "auto":
            description = _host_description(tvm, hardware)
        cross = d.get("compile", {}).get("cross_compiler", "")
        serve = d.get("device", {}).get("serve", "local")
        if serve == "qemu" and arch == host_arch():
            # an ARM board's target on an ARM machine: its code runs natively, no emulator
            serve, cross = "local", ""
        emulated = serve == "qemu"
        return Target(
            name=d.get("name", p.stem),
            description=description,
            arch=arch,
            emulated=emulated,
            tvm=tvm,
            cross_compiler=cross,
            rpc_key=d.get("device", {}).get("rpc_key", p.stem),
            serve=serve,
            measure=MeasureSettings(**{k: int(v) for k, v in m.items()}),
            hardware=hardware,
            path=str(p),
            accelerator=dict(d.get("accelerator", {})),
            requires=tuple(str(f) for f in d.get("hardware", {}).get("requires", ())),
        )
    except (KeyError, TypeError) as exc:
        raise ConfigError(f"{p}: missing or invalid field: {exc}") from exc


def list_targets() -> list[Target]:
    return [load_target(str(p)) for p in sorted(targets_dir().glob("*.toml"))]
