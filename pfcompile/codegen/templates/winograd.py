"""Winograd convolution F(m×m, 3×3), m = 2 or 4, for 3×3 stride-1 convolutions
in the blocked layout NCHW[x]c (Lavin & Gray, "Fast Algorithms for
Convolutional Neural Networks", 2016).

The output is cut into m×m tiles; each tile's (m+2)×(m+2) input patch ``d`` and
each 3×3 filter ``g`` are transformed (``V = Bᵀ d B``, ``U = G g Gᵀ``), multiplied
element by element and summed over input channels — for each of the α² = (m+2)²
transform positions a matrix product ``M = V·U`` of (tiles × cin)·(cin × cout) —
and transformed back (``Y = Aᵀ M A``). F(4×4, 3×3) does 36 multiplications per
tile and channel pair where direct convolution does 144 (4×); F(2×2, 3×3) 16 for
36 (2.25×). The weights are transformed here, at compile time
(:func:`transform_weights`): ``U`` is a constant of the compiled library.

Stages (block names fixed so that :class:`WinogradTemplate` recognises them after
operator fusion)::

    pf_wino_pad    input padded to whole tiles                  (N, IC/ib, nh·m+2, nw·m+2, ib)
    pf_wino_dtmp   Bᵀ d, rows                                   (IC/ib, P, α, α, ib)
    pf_wino_V      Bᵀ d B                                       (α, α, IC/ib, P, ib)
    pf_wino_bgemm  M[e,u] = Σ_ic V[e,u]·U[e,u]  (α² GEMMs)      (α, α, OC/ob, P, ob)
    pf_wino_otmp   Aᵀ M, rows                                   (OC/ob, P, m, α, ob)
    pf_wino_out    Aᵀ M A, cropped to the output                (N, OC/ob, OH, OW, ob)

with P = N·nh·nw tiles. The transforms are written as explicit sums with the
shared sub-expressions of Lavin's matrices (points 0, ±1, ±2), selected per
transform position by a ``Select`` that folds away once the schedule unrolls
the position loops — no multiplication by a zero coefficient survives.

The schedule (:class:`WinogradTemplate`): the input transform parallel over
(channel chunk, tile), the position loops unrolled and the channel chunk
vectorized; the α² GEMMs with a ``p_tile × oc_tile × ob`` register tile of
accumulators (the NCHWc 1×1-conv micro-kernel: a broadcast of V times a vector
of U), parallel over (position, oc chunk); the output transform computed per
tile under the output's tile loop with the fused epilogue (bias, activation,
residual) in the same loop nest.

Which convolutions take Winograd, and with which m, is decided per layer by
:func:`choose_algorithm` (records measured by ``pfcompile tune`` when both
algorithms have one, else the heuristic :func:`heuristic_algorithm`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import tvm
from tvm import relax, s_tir, te, tirx, topi

from pfcompile.codegen.te_ops import legalize_conv2d, parse_chunk
from pfcompile.codegen.templates.base import (
    Hardware,
    Workload,
    dims_tuple,
    root_blocks,
    schedule_rest,
    vector_chunk,
)

__all__ = [
    "WINO_BGEMM",
    "WINO_DTMP",
    "WINO_OTMP",
    "WINO_OUT",
    "WINO_PAD",
    "WINO_V",
    "WinogradParams",
    "WinogradTemplate",
    "at_rows",
    "bt_rows",
    "conv2d_winograd_nchwc",
    "transform_weights",
    "winograd_matrices",
]

WINO_PAD = "pf_wino_pad"
WINO_DTMP = "pf_wino_dtmp"
WINO_V = "pf_wino_V"
WINO_BGEMM = "pf_wino_bgemm"
WINO_OTMP = "pf_wino_otmp"
WINO_OUT = "pf_wino_out"

TILE_SIZES = (2, 4)


# ----------------------------------------------------------------------------- matrices
def winograd_matrices(m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(Aᵀ, Bᵀ, G) of F(m×m, 3×3), Lavin & Gray's points 0, ±1, ±2 (float64).
    ``Y = Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A`` is the 3×3 correlation of the α×α patch
    ``d`` with ``g`` (what a conv layer computes)."""
    if m == 2:
        at = [[1, 1, 1, 0], [0, 1, -1, -1]]
        bt = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]
        g = [[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]]
    elif m == 4:
        at = [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]]
        bt = [[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
              [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]]
        g = [[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
             [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]]
    else:
        raise ValueError(f"Winograd tile size must be 2 or 4 (got {m})")
    return np.array(at, np.float64), np.array(bt, np.float64), np.array(g, np.float64)


def bt_rows(m: int, d: list) -> list:
    """``Bᵀ d`` for one column ``d`` of α values (numbers, arrays or TIR
    expressions), with the shared sub-expressions written once."""
    if m == 2:
        return [d[0] - d[2], d[1] + d[2], d[2] - d[1], d[1] - d[3]]
    a = d[4] - d[2] * 4.0
    b = d[3] - d[1] * 4.0
    c = d[4] - d[2]
    e = (d[3] - d[1]) * 2.0
    return [d[0] * 4.0 - d[2] * 5.0 + d[4], a + b, a - b, c + e, c - e,
            d[1] * 4.0 - d[3] * 5.0 + d[5]]


def at_rows(m: int, t: list) -> list:
    """``Aᵀ t`` for one column ``t`` of α values."""
    if m == 2:
        return [t[0] + t[1] + t[2], t[1] - t[2] - t[3]]
    s1, s2, s3, s4 = t[1] + t[2], t[1] - t[2], t[3] + t[4], t[3] - t[4]
    return [t[0] + s1 + s3, s2 + s4 * 2.0, s1 + s3 * 4.0, s2 + s4 * 8.0 + t[5]]


def transform_weights(kernel: np.ndarray, m: int) -> np.ndarray:
    """OIHW{ib}i{ob}o weights (OC/ob, IC/ib, 3, 3, ib, ob) → ``U = G g Gᵀ`` as
    (α, α, OC/ob, IC/ib, ib, ob), in float64 then cast to the weights' dtype."""
    _at, _bt, g = winograd_matrices(m)
    u = np.einsum("ek,ockwip,uw->euocip", g, kernel.astype(np.float64), g, optimize=True)
    return np.ascontiguousarray(u.astype(kernel.dtype))


def _select(idx, values: list):
    """``values[idx]`` for a TIR index: a Select chain (folds once idx is a constant)."""
    out = values[-1]
    for k in range(len(values) - 2, -1, -1):
        out = tirx.Select(idx == k, values[k], out)
    return out


# ----------------------------------------------------------------------------- compute
def _tiles(oh: int, ow: int, m: int) -> tuple[int, int]:
    return -(-oh // m), -(-ow // m)


def winograd_input(data: te.Tensor, padding, m: int) -> te.Tensor:
    """``V = Bᵀ d B`` for every tile: (α, α, IC/ib, P, ib)."""
    n, icc, ih, iw, ib = (int(v) for v in data.shape)
    alpha = m + 2
    pt, pl, pb, pr = (int(v) for v in padding)
    nh, nw = _tiles(ih + pt + pb - 2, iw + pl + pr - 2, m)
    ntiles = n * nh * nw
    hp, wp = nh * m + 2, nw * m + 2
    pad = topi.nn.pad(data, [0, 0, pt, pl, 0], [0, 0, hp - ih - pt, wp - iw - pl, 0], name=WINO_PAD)

    def f_dtmp(c, p, e, x, i):
        b, th, tw = p // (nh * nw), (p // nw) % nh, p % nw
        col = [pad[b, c, th * m + a, tw * m + x, i] for a in range(alpha)]
        return _select(e, bt_rows(m, col))

    dtmp = te.compute((icc, ntiles, alpha, alpha, ib), f_dtmp, name=WINO_DTMP)

    def f_v(e, nu, c, p, i):
        return _select(nu, bt_rows(m, [dtmp[c, p, e, x, i] for x in range(alpha)]))

    return te.compute((alpha, alpha, icc, ntiles, ib), f_v, name=WINO_V)


def winograd_gemm(v: te.Tensor, u: te.Tensor, out_dtype: str) -> te.Tensor:
    """``M[e, ν] = V[e, ν]·U[e, ν]`` summed over input channels: (α, α, OC/ob, P, ob)."""
    alpha, _a2, icc, ntiles, ib = (int(x) for x in v.shape)
    occ, ob = int(u.shape[2]), int(u.shape[5])
    rc = te.reduce_axis((0, icc), name="rc")
    ri = te.reduce_axis((0, ib), name="ri")
    return te.compute(
        (alpha, alpha, occ, ntiles, ob),
        lambda e, nu, oc, p, o: te.sum(v[e, nu, rc, p, ri].astype(out_dtype)
                                       * u[e, nu, oc, rc, ri, o].astype(out_dtype), axis=[rc, ri]),
        name=WINO_BGEMM)


def winograd_output(mm: te.Tensor, n: int, oh: int, ow: int, m: int,
                    attrs: dict | None = None) -> te.Tensor:
    """``Y = Aᵀ M A`` cropped to the output: (N, OC/ob, OH, OW, ob)."""
    alpha, _a2, occ, ntiles, ob = (int(x) for x in mm.shape)
    nh, nw = _tiles(oh, ow, m)

    def f_otmp(oc, p, y, nu, o):
        return _select(y, at_rows(m, [mm[a, nu, oc, p, o] for a in range(alpha)]))

    otmp = te.compute((occ, ntiles, m, alpha, ob), f_otmp, name=WINO_OTMP)

    def f_out(b, oc, h, w, o):
        p = (b * nh + h // m) * nw + w // m
        return _select(w % m, at_rows(m, [otmp[oc, p, h % m, nu, o] for nu in range(alpha)]))

    return te.compute((n, occ, oh, ow, ob), f_out, name=WINO_OUT, attrs=attrs or {})


def conv2d_winograd_nchwc(data: te.Tensor, u: te.Tensor, padding, m: int,
                          out_dtype: str, info: dict | None = None) -> te.Tensor:
    """3×3 stride-1 conv by F(m×m, 3×3): data (N, IC/ib, H, W, ib), transformed
    weights ``u`` (α, α, OC/ob, IC/ib, ib, ob) from :func:`transform_weights`,
    ``padding`` (top, left, bottom, right) → (N, OC/ob, OH, OW, ob)."""
    n, icc, ih, iw, ib = (int(v) for v in data.shape)
    alpha, _a2, occ, kicc, kib, ob = (int(v) for v in u.shape)
    if alpha != m + 2 or kicc != icc or kib != ib:
        raise ValueError(f"Winograd weights {tuple(u.shape)} do not fit data {tuple(data.shape)}, m={m}")
    pt, pl, pb, pr = (int(v) for v in padding)
    oh, ow = ih + pt + pb - 2, iw + pl + pr - 2
    attrs = {"pf_wino": dict(info or {}, m=m, n=n, ih=ih, iw=iw, pt=pt, pl=pl, pb=pb, pr=pr,
                             cin=icc * ib, cout=occ * ob, ib=ib, ob=ob, oh=oh, ow=ow)}
    v = winograd_input(data, padding, m)
    return winograd_output(winograd_gemm(v, u, out_dtype), n, oh, ow, m, attrs)


# ----------------------------------------------------------------------------- template
@dataclass(frozen=True)
class WinogradParams:
    p_tile: int = 6          # tiles per register tile of the α² GEMMs
    oc_tile: int = 1         # output-channel chunks per register tile


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


class WinogradTemplate:
    """Template for the fused Winograd convolution (blocks ``pf_wino_*``)."""

    family = "winograd"
    params_type = WinogradParams

    def match(self, func: tirx.PrimFunc) -> Workload | None:
        sch = s_tir.Schedule(func)
        try:
            out = sch.get_sblock(WINO_OUT)
        except Exception:  # noqa: BLE001 - not a Winograd conv
            return None
        ann = sch.get(out).annotations.get("pf_wino")
        if ann is None:
            return None
        d = {str(k): int(v) for k, v in dict(ann).items()}
        names = [str(sch.get(b).name_hint) for b in root_blocks(sch)]
        m = d["m"]
        ntiles = d["n"] * -(-d["oh"] // m) * -(-d["ow"] // m)
        d["tiles"] = ntiles
        macs = (m + 2) ** 2 * ntiles * d["cin"] * d["cout"]
        return Workload(self.family, dims_tuple(d), macs,
                        f"NCHW{d['ib']}c->NCHW{d['ob']}c", len(names) - names.index(WINO_OUT) - 1)

    # ------------------------------------------------------------------ parameters
    def _vpo(self, wl: Workload, hw: Hardware) -> int:
        return max(1, wl.d["ob"] // hw.fp32_lanes)

    def heuristic(self, wl: Workload, hw: Hardware) -> WinogradParams:
        """The GEMM register tile with the fewest loads per FMA whose accumulators
        plus live broadcasts fit the register file (the rule of the conv2d
        template's heuristic), tile counts that divide P preferred."""
        d = wl.d
        occ = d["cout"] // d["ob"]
        vpo = self._vpo(wl, hw)
        budget = hw.vector_registers - 2
        choice: tuple[float, WinogradParams] | None = None
        for oc_tile in (1, 2, 3, 4):
            if occ % oc_tile:
                continue
            for t in range(1, min(d["tiles"], 16) + 1):
                acc = t * oc_tile * vpo
                live = acc + (t if oc_tile > 1 else 2)
                if acc > budget or live > hw.vector_registers - 1:
                    break
                loads = (t + oc_tile * vpo) / acc
                tail = 1.0 if d["tiles"] % t else 0.0
                score = loads + tail - 0.001 * acc
                if choice is None or score < choice[0]:
                    choice = (score, WinogradParams(t, oc_tile))
        return choice[1] if choice else WinogradParams(1, 1)

    def space(self, wl: Workload, hw: Hardware) -> list[WinogradParams]:
        d = wl.d
        occ = d["cout"] // d["ob"]
        vpo = self._vpo(wl, hw)
        limit = hw.vector_registers + 4
        out = []
        for oc_tile in (1, 2, 4):
            if occ % oc_tile:
                continue
            for t in range(1, min(d["tiles"], 24) + 1):
                if t * oc_tile * vpo > limit:
                    break
                out.append(WinogradParams(t, oc_tile))
        return out

    def features(self, wl: Workload, p: WinogradParams, hw: Hardware) -> list[float]:
        d = wl.d
        vpo = self._vpo(wl, hw)
        acc = p.p_tile * p.oc_tile * vpo
        tail = (-d["tiles"]) % p.p_tile
        return [p.p_tile, p.oc_tile, acc, acc / hw.vector_registers, float(tail == 0),
                tail / max(1, d["tiles"]), 0.0, 1.0, d["cin"], d["cout"], d["oh"], d["ow"], 3,
                d["m"], d["ib"], d["ob"], hw.fp32_lanes, hw.vector_registers,
                (d["m"] + 2) ** 2 * (d["cout"] // d["ob"] // p.oc_tile)]

    # ------------------------------------------------------------------ schedule
    def apply(self, func: tirx.PrimFunc, wl: Workload, p: WinogradParams,
              hw: Hardware) -> tirx.PrimFunc:
        d = wl.d
        sch = s_tir.Schedule(func)
        done = {WINO_PAD, WINO_DTMP, WINO_V, WINO_BGEMM, WINO_OTMP, WINO_OUT}
        schedule_input(sch, d, hw)
        gm = schedule_gemm(sch, d, p, hw)
        last = schedule_output(sch, d, hw)
        done |= {str(sch.get(last).name_hint), str(sch.get(gm).name_hint) + "_init"}
        schedule_rest(sch, hw, done)
        return sch.mod["main"]


def _vec_o(d: dict, hw: Hardware) -> bool:
    return vector_chunk(d["ob"], hw) or d["ob"] >= hw.fp32_lanes


def schedule_input(sch: s_tir.Schedule, d: dict, hw: Hardware) -> None:
    """Bᵀ d B per (channel chunk, tile) in one parallel loop: the padded α×α
    patch and the rows computed under it (measured: a separate parallel padding
    pass cost up to 1.3× on small layers), position loops unrolled, channel chunk
    vectorized."""
    v = sch.get_sblock(WINO_V)
    e, nu, c, t, i = sch.get_loops(v)
    sch.reorder(c, t, e, nu, i)
    par = sch.fuse(c, t)
    sch.parallel(par)
    dt = sch.get_sblock(WINO_DTMP)
    sch.compute_at(dt, par)
    vec = vector_chunk(d["ib"], hw)
    pb = sch.get_sblock(WINO_PAD)
    sch.compute_at(pb, par)
    lo = sch.get_loops(pb)
    for lp in lo[1:-1]:
        sch.unroll(lp)
    if vec:
        sch.vectorize(lo[-1])
    for blk in (dt, v):
        lo = sch.get_loops(blk)
        sch.unroll(lo[1])
        sch.unroll(lo[2])
        if vec:
            sch.vectorize(lo[3])


def schedule_gemm(sch: s_tir.Schedule, d: dict, p: WinogradParams, hw: Hardware):
    """The α² GEMMs: a ``p_tile × oc_tile`` register tile of ``ob`` vectors,
    reduction over (IC/ib, ib) inside it, parallel over (position, oc chunk)."""
    gm = sch.get_sblock(WINO_BGEMM)
    acc = sch.cache_write(gm, 0, "local")
    e, nu, oc, t, o, rc, ri = sch.get_loops(gm)
    occ = d["cout"] // d["ob"]
    oc_tile = p.oc_tile if occ % p.oc_tile == 0 else 1
    oco, oci = sch.split(oc, [None, oc_tile])
    to, ti = sch.split(t, [None, max(1, min(p.p_tile, d["tiles"]))])
    sch.reorder(e, nu, oco, to, rc, ri, oci, ti, o)
    sch.parallel(sch.fuse(e, nu, oco))
    sch.unroll(oci)
    sch.unroll(ti)
    vec = _vec_o(d, hw)
    if vec:
        sch.vectorize(o)
    sch.reverse_compute_at(acc, to)
    if vec:
        sch.vectorize(sch.get_loops(acc)[-1])
    sch.decompose_reduction(gm, rc)
    return gm


def schedule_output(sch: s_tir.Schedule, d: dict, hw: Hardware):
    """Aᵀ M A with the epilogue: the crop is inlined into the last block, whose
    loops are tiled by m; the rows ``Aᵀ M`` are computed per tile under it."""
    m = d["m"]
    out = sch.get_sblock(WINO_OUT)
    blocks = root_blocks(sch)
    names = [str(sch.get(b).name_hint) for b in blocks]
    epi = blocks[names.index(WINO_OUT) + 1:]
    for b in epi[:-1]:
        sch.compute_inline(b)
    last = out
    if epi:
        sch.compute_inline(out)
        last = epi[-1]
    b, oc, h, w, o = sch.get_loops(last)
    th, y = sch.split(h, [None, m])
    tw, x = sch.split(w, [None, m])
    sch.reorder(b, oc, th, tw, y, x, o)
    sch.parallel(sch.fuse(b, oc, th))
    ot = sch.get_sblock(WINO_OTMP)
    sch.compute_at(ot, tw)
    vec = _vec_o(d, hw)
    lo = sch.get_loops(ot)
    sch.unroll(lo[-3])
    sch.unroll(lo[-2])
    if vec:
        sch.vectorize(lo[-1])
    sch.unroll(y)
    sch.unroll(x)
    if vec:
        sch.vectorize(o)
    return last


# ----------------------------------------------------------------------------- choice
def conv_dims(call: relax.Call) -> dict[str, int] | None:
    """The conv's dims as the conv2d template keys them (``pf_conv`` + oh, ow), or
    None when the call is not a plain NCHW[x]c conv with static shapes."""
    a = call.attrs
    ib, ob = parse_chunk(a.data_layout), parse_chunk(a.out_layout)
    klay = str(a.kernel_layout)
    if ib is None or ob is None or not klay.startswith("OIHW") or len(klay) == 4:
        return None
    try:
        n, icc, ih, iw, _ = (int(v) for v in call.args[0].ty.shape)
        occ, _kic, kh, kw, kib, _ob = (int(v) for v in call.args[1].ty.shape)
    except (TypeError, ValueError):
        return None
    sh, sw = (int(v) for v in a.strides)
    dh, dw = (int(v) for v in a.dilation)
    pt, pl, pb, pr = (int(v) for v in a.padding)
    oh = (ih + pt + pb - (kh - 1) * dh - 1) // sh + 1
    ow = (iw + pl + pr - (kw - 1) * dw - 1) // sw + 1
    return {"cin": icc * ib, "cout": occ * ob, "ih": ih, "iw": iw, "kh": kh, "kw": kw, "sh": sh,
            "sw": sw, "dh": dh, "dw": dw, "pt": pt, "pl": pl, "pb": pb, "pr": pr,
            "groups": int(a.groups), "ib": ib, "ob": ob, "n": n, "kib": kib, "oh": oh, "ow": ow}


def eligible(d: dict[str, int], hw: Hardware) -> bool:
    """A 3×3, stride-1, undilated, ungrouped conv whose channel chunks are whole
    vectors (the transforms are vectorized along them)."""
    return (d["groups"] == 1 and d["kh"] == d["kw"] == 3 and d["sh"] == d["sw"] == 1
            and d["dh"] == d["dw"] == 1 and d["kib"] == d["ib"]
            and d["ib"] % hw.fp32_lanes == 0 and d["ob"] % hw.fp32_lanes == 0)


def wino_dims(d: dict[str, int], m: int) -> dict[str, int]:
    """The dims :class:`WinogradTemplate` keys a Winograd conv with (``pf_wino``
    + tiles), from the conv's dims."""
    keep = ("n", "ih", "iw", "pt", "pl", "pb", "pr", "cin", "cout", "ib", "ob", "oh", "ow")
    out = {k: d[k] for k in keep}
    out["m"] = m
    out["tiles"] = d["n"] * -(-d["oh"] // m) * -(-d["ow"] // m)
    return out


def direct_key(d: dict[str, int]) -> str:
    info = {k: v for k, v in d.items() if k != "kib"}
    return Workload("conv2d", dims_tuple(info), 0, "").key


def wino_key(d: dict[str, int], m: int) -> str:
    return Workload("winograd", dims_tuple(wino_dims(d, m)), 0, "").key


def heuristic_algorithm(d: dict[str, int], hw: Hardware) -> int:
    """0 (direct) or the tile size m, from the shape alone.

    Measured with ``tools/bench_winograd.py layers`` (one process, alternating
    rounds; the table is in docs/codegen.md): Winograd beat the direct template
    on every eligible layer with at least ~3 M MACs, F(4×4) by 0.39–0.57× on
    ResNet stages with ≥ 14×14 outputs, F(2×2) where F(4×4) has few tiles (7×7:
    4 tiles, each weight element used 4 times, 37.7 MB of transformed weights
    for 512 channels) or wastes many outputs on partial tiles (10×10: 44 %).
    Below ~3 M MACs the extra passes and parallel regions cost more than the
    multiplications saved."""
    if not eligible(d, hw):
        return 0
    macs = d["n"] * d["oh"] * d["ow"] * d["cin"] * d["cout"] * 9
    if macs < 3_000_000:
        return 0
    tiles4 = d["n"] * -(-d["oh"] // 4) * -(-d["ow"] // 4)
    waste4 = tiles4 * 16 / (d["n"] * d["oh"] * d["ow"])
    if tiles4 >= 12 and waste4 <= 1.35 and min(d["cin"], d["cout"]) >= 24:
        return 4
    return 2


def choose_algorithm(d: dict[str, int], hw: Hardware, db: Any = None) -> tuple[int, str]:
    """(0 for direct or the Winograd tile size, where the choice came from):
    the fastest measured record when the direct conv and every Winograd variant
    of this layer have one (``pfcompile tune`` measures them), else the heuristic."""
    if not eligible(d, hw):
        return 0, "ineligible"
    if db is not None:
        recs = {0: db.get(direct_key(d))}
        recs.update({m: db.get(wino_key(d, m)) for m in TILE_SIZES})
        if all(r is not None for r in recs.values()):
            return min(recs, key=lambda k: recs[k].ms), "record"
    return heuristic_algorithm(d, hw), "heuristic"


def _constant(bb: relax.BlockBuilder, expr: relax.Expr) -> np.ndarray | None:
    if isinstance(expr, relax.Var):
        bound = bb.lookup_binding(expr)
        expr = bound if bound is not None else expr
    return expr.value.numpy() if isinstance(expr, tvm.ir.expr.Constant) else None


def legalize_conv2d_winograd(bb: relax.BlockBuilder, call: relax.Call, m: int) -> relax.Expr | None:
    """The Winograd PrimFunc call for this conv (weights transformed here), or
    None when the weights are not a constant."""
    w = _constant(bb, call.args[1])
    d = conv_dims(call)
    if w is None or d is None:
        return None
    out_dtype = str(call.attrs.out_dtype) if call.attrs.out_dtype is not None else ""
    if out_dtype in ("", "void", "None"):
        out_dtype = str(call.args[0].ty.dtype)
    u = transform_weights(w, m)
    return bb.call_te(conv2d_winograd_nchwc, call.args[0], relax.const(u), list(call.attrs.padding),
                      m, out_dtype, primfunc_name_hint="pf_wino_conv2d")


def conv2d_legalizer(hw: Hardware, db: Any = None, choices: list | None = None,
                     force: int | None = None):
    """A ``relax.nn.conv2d`` legalizer that picks direct or Winograd per layer
    (:func:`choose_algorithm`); ``choices`` receives (dims, m, source) per conv;
    ``force`` (0, 2 or 4) overrides the choice for every eligible conv."""

    def legalize(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
        d = conv_dims(call)
        if d is not None and eligible(d, hw):
            m, src = (force, "forced") if force is not None else choose_algorithm(d, hw, db)
            if choices is not None:
                choices.append((d, m, src))
            if m:
                out = legalize_conv2d_winograd(bb, call, m)
                if out is not None:
                    return out
        return legalize_conv2d(bb, call)

    return legalize
