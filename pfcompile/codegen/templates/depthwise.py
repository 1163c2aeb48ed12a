"""Depthwise conv2d in NCHW[x]c: one channel chunk per vector, a row of
``ow_tile`` outputs in registers, kernel window unrolled."""

from __future__ import annotations

from dataclasses import dataclass

from tvm import s_tir, tirx

from pfcompile.codegen.te_ops import DWCONV_BLOCK, PAD_BLOCK
from pfcompile.codegen.templates.base import (
    Hardware,
    Workload,
    dims_tuple,
    inline_epilogue,
    match_conv_block,
    schedule_pad_rows,
    schedule_rest,
    vector_chunk,
)

__all__ = ["DepthwiseParams", "DepthwiseTemplate"]


@dataclass(frozen=True)
class DepthwiseParams:
    ow_tile: int = 8
    pad_stage: bool = True


class DepthwiseTemplate:
    family = "depthwise"
    params_type = DepthwiseParams

    def match(self, func: tirx.PrimFunc) -> Workload | None:
        found = match_conv_block(func, DWCONV_BLOCK)
        if found is None:
            return None
        d, epi = found
        macs = d["n"] * d["cout"] * d["oh"] * d["ow"] * d["kh"] * d["kw"]
        return Workload(self.family, dims_tuple(d), macs, f"NCHW{d['ib']}c", epi)

    def heuristic(self, wl: Workload, hw: Hardware) -> DepthwiseParams:
        """A row of ``ow_tile`` outputs whose accumulators and the input vectors one
        kernel row touches (``(ow_tile - 1)·stride + kw``) fit the register file;
        the widest such tile (at most 8) that divides the output width (measured:
        7-wide tiles 0.8x the earlier 8-wide ones on 56/112-wide stride-1 rows)."""
        d = wl.d
        vpo = max(1, d["ob"] // hw.fp32_lanes)
        cap = max(1, (hw.vector_registers // vpo - d["kw"] + d["sw"]) // (1 + d["sw"]))
        cap = min(cap, 8)   # wider rows measured slower on AVX-512 too (14: 1.2-1.4x of 7)
        divs = [t for t in range(1, d["ow"] + 1) if d["ow"] % t == 0 and t <= cap]
        t = max(divs)
        if t < cap // 2:
            t = min(cap, d["ow"])
        if hw.fp32_lanes >= 16 and d["ow"] % 4 == 0 and t > 4:
            # AVX-512, rows of 28-112 outputs: 4-wide tiles measured 0.78-0.97x the
            # 8-wide ones in isolation and 0.77-0.89x inside MobileNetV2 (one thread;
            # 32x112², 144x56² stride 1 and 2, 192x28²)
            t = 4
        # padding inlined into the conv (bounds checks on the loads) rather than a
        # per-row padded copy: 1.2-3x faster on every MobileNetV2 / PP-OCR depthwise
        # shape measured (one thread, CPU time, tools/bench_winograd.py-style sweep)
        return DepthwiseParams(ow_tile=t, pad_stage=False)

    def space(self, wl: Workload, hw: Hardware) -> list[DepthwiseParams]:
        d = wl.d
        pad = d["pt"] + d["pl"] + d["pb"] + d["pr"] > 0
        return [DepthwiseParams(t, pr) for t in range(1, min(d["ow"], 28) + 1)
                for pr in ((True, False) if pad else (False,))]

    def features(self, wl: Workload, p: DepthwiseParams, hw: Hardware) -> list[float]:
        d = wl.d
        tail = (-d["ow"]) % p.ow_tile
        return [p.ow_tile, 1, p.ow_tile * max(1, d["ob"] // hw.fp32_lanes), 0.0, float(tail == 0),
                tail / max(1, d["ow"]), float(p.pad_stage), 1.0, d["cin"], d["cout"], d["oh"],
                d["ow"], d["kh"], d["sh"], d["ib"], d["ob"], hw.fp32_lanes, hw.vector_registers,
                d["cout"] // d["ob"] * d["oh"]]

    def apply(self, func: tirx.PrimFunc, wl: Workload, p: DepthwiseParams,
              hw: Hardware) -> tirx.PrimFunc:
        d = wl.d
        sch = s_tir.Schedule(func)
        conv = sch.get_sblock(DWCONV_BLOCK)
        last, _ = inline_epilogue(sch, DWCONV_BLOCK)
        if last is not None:
            sch.set_scope(conv, 0, "local")
        else:
            last = sch.cache_write(conv, 0, "local")
        b, c, y, x, o, rkh, rkw = sch.get_loops(conv)
        xo, xi = sch.split(x, [None, max(1, min(p.ow_tile, d["ow"]))])
        vec_o = vector_chunk(d["ob"], hw) or d["ob"] >= hw.fp32_lanes
        if vec_o:
            sch.reorder(b, c, y, xo, rkh, rkw, xi, o)
            sch.vectorize(o)
        else:
            sch.reorder(b, c, y, xo, rkh, rkw, o, xi)
        sch.unroll(xi)
        sch.unroll(rkw)
        sch.unroll(rkh)
        sch.reverse_compute_at(last, xo)
        done = {DWCONV_BLOCK, str(sch.get(last).name_hint)}
        try:
            pad = sch.get_sblock(PAD_BLOCK)
        except Exception:  # noqa: BLE001
            pad = None
        if pad is not None:
            if not p.pad_stage:
                sch.compute_inline(pad)
                pad = None
            done.add(PAD_BLOCK)
        par = sch.fuse(b, c, y)
        sch.parallel(par)
        if pad is not None:   # the input rows one output row needs, padded, per task
            sch.compute_at(pad, par)
            schedule_pad_rows(sch, pad, hw)
        if vec_o:
            sch.vectorize(sch.get_loops(last)[-1])
        sch.decompose_reduction(conv, rkh)
        schedule_rest(sch, hw, done | {str(sch.get(conv).name_hint) + "_init"})
        return sch.mod["main"]
