"""Everything no specialised template takes: pooling and other reductions
(spatial-outer parallel, channel chunk vectorized), grouped convolutions,
elementwise and layout transforms (fused loops, vectorized by lanes, parallel).
No parameters: the heuristic is the schedule."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from tvm import s_tir, tirx

from pfcompile.codegen.te_ops import GCONV_BLOCK
from pfcompile.codegen.templates.base import (
    Hardware,
    Workload,
    block_iter_kinds,
    conv_info,
    dims_tuple,
    root_blocks,
    schedule_rest,
)

__all__ = ["GenericParams", "GenericTemplate"]


@dataclass(frozen=True)
class GenericParams:
    pass


def _shape(buf) -> list[int]:
    out = []
    for v in buf.shape:
        try:
            out.append(int(v))
        except TypeError:
            out.append(-1)
    return out


class GenericTemplate:
    family = "generic"
    params_type = GenericParams

    def match(self, func: tirx.PrimFunc) -> Workload | None:
        sch = s_tir.Schedule(func)
        blocks = root_blocks(sch)
        if not blocks:
            return None
        fam, macs, dims = "elementwise", 0, {}
        for b in blocks:
            s = sch.get(b)
            name = str(s.name_hint)
            if name == GCONV_BLOCK:
                info = conv_info(sch, b) or {}
                fam, dims = "group_conv", dict(info)
            elif any(k == 2 for k in block_iter_kinds(sch, b)) and fam == "elementwise":
                fam = "pool" if "pool" in name else "reduction"
            if s.writes:
                n_out = 1
                for v in _shape(s.writes[0].source):
                    n_out *= max(v, 1)
                red = 1
                for iv in s.iter_vars:
                    if int(iv.iter_type) == 2:
                        try:
                            red *= int(iv.dom.extent)
                        except TypeError:
                            pass
                macs += n_out * red
        last = sch.get(blocks[-1])
        if last.writes and not dims:
            for i, v in enumerate(_shape(last.writes[0].source)):
                dims[f"o{i}"] = v
        return Workload(fam, dims_tuple(dims), macs, "", len(blocks) - 1)

    def heuristic(self, wl: Workload, hw: Hardware) -> GenericParams:
        return GenericParams()

    def space(self, wl: Workload, hw: Hardware) -> list[GenericParams]:
        return [GenericParams()]

    def features(self, wl: Workload, p: GenericParams, hw: Hardware) -> list[float]:
        return [0.0] * 19

    def apply(self, func: tirx.PrimFunc, wl: Workload, p: GenericParams,
              hw: Hardware) -> tirx.PrimFunc:
        sch = s_tir.Schedule(func)
        blocks = root_blocks(sch)
        # inline elementwise producers into their consumers where TVM allows it
        for b in blocks[:-1]:
            if all(k == 0 for k in block_iter_kinds(sch, b)):
                with contextlib.suppress(Exception):  # not inlinable: scheduled on its own
                    sch.compute_inline(b)
        schedule_rest(sch, hw, set())
        return sch.mod["main"]
