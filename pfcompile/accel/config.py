"""The accelerator configuration: the ``[accelerator]`` table of a ``targets/fpga-*.toml``
as a frozen dataclass (one declaration: defaults, validation, the numbers the tiler
and the cycle model read)."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

from pfcompile.errors import ConfigError
from pfcompile.targets import Target, load_target

__all__ = ["AccelConfig", "load_accel_config"]


@dataclass(frozen=True)
class AccelConfig:
    """Shape, buffers, clock and cost figures of a VTA-like GEMM accelerator."""

    name: str = "fpga-vta"
    kind: str = "vta"
    batch: int = 1
    block_in: int = 16
    block_out: int = 16
    gemm_per_cycle: float = 1.0
    inp_buffer_kb: int = 32
    wgt_buffer_kb: int = 256
    acc_buffer_kb: int = 128
    uop_buffer_kb: int = 32
    acc_bits: int = 32
    clock_mhz: float = 100.0
    dram_bytes_per_cycle: float = 8.0
    weight_bits: tuple[int, ...] = (2, 3, 4, 5, 6, 7, 8)
    act_bits: tuple[int, ...] = (2, 3, 4, 5, 6, 7, 8)
    bit_flexible: bool = False
    brick_bits: int = 2
    alu_ii: int = 2
    requant_alu_ops: int = 6
    load_overhead: int = 32
    store_overhead: int = 32
    gemm_overhead: int = 4
    alu_overhead: int = 4

    def __post_init__(self) -> None:
        for f in ("batch", "block_in", "block_out", "inp_buffer_kb", "wgt_buffer_kb",
                  "acc_buffer_kb", "alu_ii", "requant_alu_ops", "brick_bits"):
            if int(getattr(self, f)) <= 0:
                raise ConfigError(f"accelerator '{self.name}': {f} must be > 0")
        if self.gemm_per_cycle <= 0 or self.clock_mhz <= 0 or self.dram_bytes_per_cycle <= 0:
            raise ConfigError(f"accelerator '{self.name}': gemm_per_cycle, clock_mhz and "
                              f"dram_bytes_per_cycle must be > 0")
        if self.batch != 1:
            raise ConfigError(f"accelerator '{self.name}': only batch = 1 GEMM cores are "
                              f"modelled (got {self.batch})")
        if not self.weight_bits or not self.act_bits or max(self.weight_bits) > 8 \
                or max(self.act_bits) > 8:
            raise ConfigError(f"accelerator '{self.name}': weight_bits / act_bits must list "
                              f"widths of 1..8 bits")

    # ------------------------------------------------------------------ buffers
    @property
    def inp_bytes(self) -> int:
        return self.inp_buffer_kb * 1024

    @property
    def wgt_bytes(self) -> int:
        return self.wgt_buffer_kb * 1024

    @property
    def acc_bytes(self) -> int:
        return self.acc_buffer_kb * 1024

    # ------------------------------------------------------------------ bit widths
    def operand_bits(self, wbits: int, abits: int) -> tuple[int, int] | None:
        """The widths the core runs a (wbits, abits) layer at, or None if unsupported.

        A width is run at the smallest supported width >= it (BitFusion rounds up to
        whole bricks; VTA's int8 core runs anything up to 8 bits)."""
        w = next((b for b in sorted(self.weight_bits) if b >= wbits), None)
        a = next((b for b in sorted(self.act_bits) if b >= abits), None)
        if w is None or a is None:
            return None
        return w, a

    def gemm_cycles_per_uop(self, wbits: int, abits: int) -> float:
        """Cycles of one BLOCK_IN x BLOCK_OUT matrix-vector product at these widths."""
        base = 1.0 / self.gemm_per_cycle
        if not self.bit_flexible:
            return base
        bricks = self.brick_bits
        full = (8 // bricks) ** 2
        used = math.ceil(wbits / bricks) * math.ceil(abits / bricks)
        return base * used / full

    @property
    def freq_hz(self) -> float:
        return self.clock_mhz * 1e6

    def cycles_to_ms(self, cycles: float) -> float:
        return cycles / self.freq_hz * 1e3

    @classmethod
    def from_target(cls, target: Target) -> AccelConfig:
        if not target.accelerator:
            raise ConfigError(f"target '{target.name}' ({target.path}) has no [accelerator] "
                              f"table: it is not an FPGA-style target")
        return cls.from_dict(target.accelerator, name=target.name, where=target.path)

    @classmethod
    def from_dict(cls, d: dict[str, Any], name: str = "custom", where: str = "") -> AccelConfig:
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise ConfigError(f"{where or name}: unknown [accelerator] keys {unknown}; "
                              f"known: {sorted(known)}")
        kw: dict[str, Any] = {"name": name}
        for k, v in d.items():
            if k in ("weight_bits", "act_bits"):
                kw[k] = tuple(int(b) for b in v)
            elif k in ("kind",):
                kw[k] = str(v)
            elif k == "bit_flexible":
                kw[k] = bool(v)
            elif k in ("gemm_per_cycle", "clock_mhz", "dram_bytes_per_cycle"):
                kw[k] = float(v)
            else:
                kw[k] = int(v)
        return cls(**kw)


def load_accel_config(target: str | Target | AccelConfig) -> AccelConfig:
    """An AccelConfig from a target name, a .toml path, a Target or itself."""
    if isinstance(target, AccelConfig):
        return target
    if isinstance(target, str):
        target = load_target(target)
    return AccelConfig.from_target(target)
