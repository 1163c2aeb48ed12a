"""Direct conv2d in NCHW[x]c (NeoCPU style), and 1×1 conv as a GEMM with the
same register-tile structure.

Loop nest after scheduling (one output row ``y`` of one oc-chunk per parallel
task)::

    parallel n·oc_outer·y
      for ow_outer                       # register tile: oc_tile × ow_tile × ob
        for ic_chunk, kh, kw(unrolled), ic_inner
          for oc_inner(unrolled), ow_inner(unrolled), ob(vectorized)
            acc[...] += in[...] * w[...]
        epilogue (bias, relu, residual add) on the tile, vectorized

The accumulators live in a ``local`` buffer that LLVM keeps in registers when
``oc_tile · ow_tile · ob / lanes`` fits the register file.
"""

from __future__ import annotations

from dataclasses import dataclass

from tvm import s_tir, tirx

from pfcompile.codegen.te_ops import CONV_BLOCK, PAD_BLOCK
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

__all__ = ["Conv2dTemplate", "ConvParams"]


@dataclass(frozen=True)
class ConvParams:
    ow_tile: int = 8        # output columns per register tile
    oc_tile: int = 1        # output-channel chunks per register tile
    pad_stage: bool = True  # padded input rows per task (True) or padding inlined in the conv
    unroll_kw: bool = True  # unroll the kernel-width loop


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


class Conv2dTemplate:
    """Template for ``pf_conv2d_nchwc`` (groups == 1)."""

    family = "conv2d"
    params_type = ConvParams

    def match(self, func: tirx.PrimFunc) -> Workload | None:
        found = match_conv_block(func, CONV_BLOCK)
        if found is None:
            return None
        d, epi = found
        macs = d["n"] * d["cout"] * d["oh"] * d["ow"] * d["cin"] * d["kh"] * d["kw"]
        one = d["kh"] == d["kw"] == 1 and d["pt"] + d["pl"] + d["pb"] + d["pr"] == 0
        fam = "conv2d_1x1" if one else "conv2d"
        return Workload(fam, dims_tuple(d), macs, f"NCHW{d['ib']}c->NCHW{d['ob']}c", epi)

    # ------------------------------------------------------------------ parameters
    def _acc_budget(self, hw: Hardware) -> int:
        return max(4, hw.vector_registers - 2)

    def _vec_per_oc(self, wl: Workload, hw: Hardware) -> int:
        return max(1, wl.d["ob"] // hw.fp32_lanes)

    def heuristic(self, wl: Workload, hw: Hardware) -> ConvParams:
        """Zero-measurement parameters: the register tile (``ow_tile`` columns ×
        ``oc_tile`` channel chunks) with the fewest loads per FMA — per input
        channel, ``ow_tile`` broadcasts and ``oc_tile`` weight vectors feed
        ``ow_tile · oc_tile`` FMAs — within the accumulator budget, a width tile
        that divides the output width preferred (a tail adds a predicated pass).
        Measured against the earlier widest-row rule (``oc_tile`` 1, ``ow_tile``
        up to 14) on MobileNetV2 / ResNet / PP-OCR shapes: see docs/codegen.md."""
        d = wl.d
        ow, occ = d["ow"], d["cout"] // d["ob"]
        budget = self._acc_budget(hw)
        vpo = self._vec_per_oc(wl, hw)
        pad = d["pt"] + d["pl"] + d["pb"] + d["pr"] > 0
        unroll_kw = d["kw"] <= 3
        if not vector_chunk(d["ob"], hw):  # vectorized along the width instead
            cap = max(hw.fp32_lanes, budget // vpo)
            divs = [t for t in _divisors(ow) if t <= cap]
            best = max(divs)
            if best < max(2, cap // 2):
                best = min(cap, ow)
            return ConvParams(ow_tile=best, oc_tile=1, pad_stage=pad, unroll_kw=unroll_kw)
        # a width tail costs little in a 1x1 conv (measured: 4-wide tiles on 7-wide
        # rows, 0.8x the 7x1 tile) and much in a kxk one (up to 2x)
        one = d["kh"] == d["kw"] == 1
        wide = hw.fp32_lanes >= 16   # AVX-512: rules measured there only
        if wide and one and d["cin"] <= 32 and ow % 4 == 0 and d["ob"] >= hw.fp32_lanes:
            # a short reduction (≤ 32 input channels per output) on AVX-512: the
            # tile's loads and stores dominate, and one channel chunk per task writes
            # one contiguous row; 4 x 1 measured 0.74-0.93x the register-optimal tile
            # (16→96 at 112², 24→144 at 56², 32→16 at 112², 32→192 at 28², one
            # thread). On AVX2 the same tile measured 1.5x slower than 4 x 2.
            return ConvParams(ow_tile=4, oc_tile=1, pad_stage=pad, unroll_kw=unroll_kw)
        if wide and d["ib"] < 4 and ow % 4 == 0 and d["ob"] >= hw.fp32_lanes:
            # an input chunk of fewer than 4 channels (the RGB stem, read from NCHW or
            # NCHW3c): 4 x 1 tiles, padding inlined, measured 0.81x (MobileNetV2 3→32
            # 3x3/2 at 224²), 0.73x (PP-OCR det 3→16 at 64²), 0.98x (ResNet-18 3→64 7x7/2)
            # the register-optimal tile with a padding stage (one thread,
            # tools/sweep_kernels.py); on AVX2 that tile is within 3 % of the best
            return ConvParams(ow_tile=4, oc_tile=1, pad_stage=False, unroll_kw=unroll_kw)
        choice: tuple[float, ConvParams] | None = None
        for oc_tile in (1, 2, 3, 4):
            if occ % oc_tile:
                continue
            for t in range(1, min(ow, 16) + 1):
                acc = t * oc_tile * vpo
                # registers: the accumulators, plus the t input broadcasts that stay
                # live while they are reused by oc_tile > 1 (weights are memory
                # operands), one register spare (a full file measured 1.3x slower
                # on 16-channel 1x1 convs: 4x3 vs 4x2 tiles on AVX2). On AVX-512 the
                # oc_tile weight vectors count too: uncounted, 6 x 4 tiles spilled
                # (1.14x the 7 x 2 tile on 7² rows, 1.7x on 14²), while AVX2's 3 x 4
                # tiles, over by the same rule, measured 0.9-1.0x its 4 x 2 / 3 x 3
                if oc_tile > 1 and wide:
                    over = acc + t + oc_tile * vpo > hw.vector_registers
                else:
                    over = acc + (t if oc_tile > 1 else 2) > hw.vector_registers - 1
                if acc > budget or over:
                    break
                loads = (t + oc_tile * vpo) / acc          # per FMA
                tail = (0.2 if one else 1.0) if ow % t else 0.0
                score = loads + tail - 0.001 * acc
                if choice is None or score < choice[0]:
                    choice = (score, ConvParams(t, oc_tile, pad, unroll_kw))
        assert choice is not None
        return choice[1]

    def space(self, wl: Workload, hw: Hardware) -> list[ConvParams]:
        d = wl.d
        ow, occ = d["ow"], d["cout"] // d["ob"]
        vpo = self._vec_per_oc(wl, hw)
        limit = 2 * self._acc_budget(hw)
        pad = d["pt"] + d["pl"] + d["pb"] + d["pr"] > 0
        out = []
        for oc_tile in (1, 2, 4):
            if occ % oc_tile:
                continue
            for t in range(1, min(ow, 32) + 1):
                if t * oc_tile * vpo > limit:
                    break
                for pad_stage in ((True, False) if pad else (False,)):
                    for unroll_kw in ((True, False) if d["kw"] > 1 else (True,)):
                        out.append(ConvParams(t, oc_tile, pad_stage, unroll_kw))
        return out

    def features(self, wl: Workload, p: ConvParams, hw: Hardware) -> list[float]:
        d = wl.d
        vpo = self._vec_per_oc(wl, hw)
        acc = p.ow_tile * p.oc_tile * vpo
        tail = (-d["ow"]) % p.ow_tile
        return [p.ow_tile, p.oc_tile, acc, acc / hw.vector_registers, float(tail == 0),
                tail / max(1, d["ow"]), float(p.pad_stage), float(p.unroll_kw),
                d["cin"], d["cout"], d["oh"], d["ow"], d["kh"], d["sh"], d["ib"], d["ob"],
                hw.fp32_lanes, hw.vector_registers, (d["cout"] // d["ob"] // p.oc_tile) * d["oh"]]

    # ------------------------------------------------------------------ schedule
    def apply(self, func: tirx.PrimFunc, wl: Workload, p: ConvParams, hw: Hardware) -> tirx.PrimFunc:
        d = wl.d
        sch = s_tir.Schedule(func)
        conv = sch.get_sblock(CONV_BLOCK)
        last, _ = inline_epilogue(sch, CONV_BLOCK)
        if last is not None:
            sch.set_scope(conv, 0, "local")
        else:
            last = sch.cache_write(conv, 0, "local")
            # cache_write puts the copy after conv; conv now writes the local buffer
        b, oc, y, x, o, ric, rkh, rkw, rib = sch.get_loops(conv)
        occ = d["cout"] // d["ob"]
        oc_tile = p.oc_tile if occ % p.oc_tile == 0 else 1
        oco, oci = sch.split(oc, [None, oc_tile])
        xo, xi = sch.split(x, [None, max(1, min(p.ow_tile, d["ow"]))])
        vec_o = vector_chunk(d["ob"], hw) or d["ob"] >= hw.fp32_lanes
        has_pad = d["pt"] + d["pl"] + d["pb"] + d["pr"] > 0
        # with a padding stage the row is the outer task (its padded input rows are
        # built once and reused by every oc chunk); else oc chunks and rows are fused
        outer = [b, y, oco] if (has_pad and p.pad_stage) else [b, oco, y]
        if vec_o:
            sch.reorder(*outer, xo, ric, rkh, rkw, rib, oci, xi, o)
            sch.vectorize(o)
            sch.unroll(xi)
        else:
            sch.reorder(*outer, xo, ric, rkh, rkw, rib, oci, o, xi)
            sch.unroll(o)
            if p.ow_tile % hw.fp32_lanes == 0 and d["ow"] % p.ow_tile == 0:
                sch.vectorize(xi)
            else:
                sch.unroll(xi)
        sch.unroll(oci)
        if p.unroll_kw:
            sch.unroll(rkw)
        sch.reverse_compute_at(last, xo)
        done = {CONV_BLOCK, str(sch.get(last).name_hint)}
        try:
            pad = sch.get_sblock(PAD_BLOCK)
        except Exception:  # noqa: BLE001 - no padding in this conv
            pad = None
        if pad is not None:
            if not p.pad_stage:
                sch.compute_inline(pad)
                pad = None
            done.add(PAD_BLOCK)
        if pad is not None:   # the input rows one output row needs, padded, per task
            par = sch.fuse(b, y)
            sch.parallel(par)
            sch.compute_at(pad, par)
            schedule_pad_rows(sch, pad, hw)
        else:
            sch.parallel(sch.fuse(b, oco, y))
        el = sch.get_loops(last)
        inner = el[-1]
        if vec_o:
            sch.vectorize(inner)
        sch.decompose_reduction(conv, ric)
        schedule_rest(sch, hw, done | {str(sch.get(conv).name_hint) + "_init"})
        return sch.mod["main"]
