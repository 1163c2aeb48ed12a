"""A depthwise conv and the 1×1 conv that reads it, in one kernel (the second half of
an inverted-residual block: depthwise 3×3 → bias → activation → 1×1 projection → bias
[→ residual add]).

Separately, the depthwise writes its whole output (MobileNetV2: 96×56², 144×56², 1.2-1.8
MB) and the 1×1 reads it back; inside the model that write cost the depthwise kernels
2-2.5x their time in isolation (cold lines; one thread, tools/profile_layers.py beside
tools/sweep_kernels.py). Here each parallel task is one output row: the depthwise
computes its row of every channel chunk (with its epilogue) into a row buffer private to
the task (``C × W`` floats, 32 KB for 144×56), and the 1×1 conv consumes it from cache
for every output chunk. No halo: the 1×1 needs exactly the row it is given, so nothing
is recomputed.

:func:`fuse_depthwise_pointwise` groups the pair in the Relax graph
(``FuseOpsByPattern``; ``FuseTIR`` makes it one PrimFunc) when the map has rows enough
for every thread (:data:`DWPW_MIN_ROWS_PER_CORE`). MobileNetV2, one thread, CPU time,
in one process alternating with onnxruntime (tools/ab_vs_ort.py --cpu-time, loaded
machine): 0.99x → 0.97x onnxruntime fusing the five blocks at 28²-112², 0.96x with the
seven at 14² too (one kernel launch fewer per block: two threads synchronise per kernel).
"""

from __future__ import annotations

from dataclasses import dataclass

from tvm import relax, s_tir, tirx

from pfcompile.codegen.te_ops import CONV_BLOCK, DWCONV_BLOCK, PAD_BLOCK
from pfcompile.codegen.templates.base import (
    Hardware,
    Workload,
    dims_tuple,
    match_conv_block,
    root_blocks,
    schedule_rest,
    vector_chunk,
)
from pfcompile.codegen.templates.conv2d import Conv2dTemplate, ConvParams
from pfcompile.codegen.templates.depthwise import DepthwiseTemplate

__all__ = ["DWPW_MIN_ROWS_PER_CORE", "DwPwParams", "DwPwTemplate", "fuse_depthwise_pointwise"]

#: fuse only maps with at least this many output rows per core: the fused kernel is
#: parallel over rows alone (7 rows on 2 cores would leave one idle a seventh of the time)
DWPW_MIN_ROWS_PER_CORE = 7


@dataclass(frozen=True)
class DwPwParams:
    dw_tile: int = 4        # depthwise: outputs per row tile
    ow_tile: int = 4        # 1x1: output columns per register tile
    oc_tile: int = 1        # 1x1: output-channel chunks per register tile
    # accumulator tiles in "global" scope, which TVM's CPU lowering puts on the stack
    # (registers after LLVM's SROA) when under 1 KB; "local" ones allocated inside the
    # parallel task become TVMBackendAllocWorkspace calls, the accumulators then live in
    # memory. Both on the stack measured 0.93-0.97x both "local" on all nine MobileNetV2
    # shapes (one thread, tools/sweep_kernels.py --family dwpw, 7-11 rounds)
    dw_stack: bool = True
    pw_stack: bool = True


def _sub_workloads(func: tirx.PrimFunc) -> tuple[dict, dict] | None:
    dw = match_conv_block(func, DWCONV_BLOCK)
    pw = match_conv_block(func, CONV_BLOCK)
    if dw is None or pw is None:
        return None
    return dw[0], pw[0]


def _blocks_between(sch: s_tir.Schedule, first: str, last: str | None) -> list:
    blocks = root_blocks(sch)
    names = [str(sch.get(b).name_hint) for b in blocks]
    i = names.index(first)
    j = names.index(last) if last is not None else len(names)
    return blocks[i + 1:j]


class DwPwTemplate:
    family = "dwpw"
    params_type = DwPwParams

    def match(self, func: tirx.PrimFunc) -> Workload | None:
        subs = _sub_workloads(func)
        if subs is None:
            return None
        dw, pw = subs
        if pw["kh"] != 1 or pw["kw"] != 1 or pw["cin"] != dw["cout"]:
            return None
        d = {**{k: v for k, v in dw.items() if k not in ("cout", "ob")},
             "mid": dw["cout"], "mb": dw["ob"], "cout": pw["cout"], "ob": pw["ob"]}
        sch = s_tir.Schedule(func)
        epi = len(_blocks_between(sch, CONV_BLOCK, None))
        macs = d["oh"] * d["ow"] * d["mid"] * (d["kh"] * d["kw"] + d["cout"])
        return Workload(self.family, dims_tuple(d), macs,
                        f"NCHW{d['ib']}c->NCHW{d['ob']}c", epi)

    @staticmethod
    def _parts(wl: Workload) -> tuple[Workload, Workload]:
        d = wl.d
        dw = {k: v for k, v in d.items() if k not in ("mid", "mb", "cout", "ob")}
        dw.update(cout=d["mid"], ob=d["mb"])
        pw = {"n": d["n"], "cin": d["mid"], "cout": d["cout"], "ih": d["oh"], "iw": d["ow"],
              "kh": 1, "kw": 1, "sh": 1, "sw": 1, "dh": 1, "dw": 1, "pt": 0, "pl": 0, "pb": 0,
              "pr": 0, "groups": 1, "ib": d["mb"], "ob": d["ob"], "oh": d["oh"], "ow": d["ow"]}
        return (Workload("depthwise", dims_tuple(dw), 0, "", 2),
                Workload("conv2d_1x1", dims_tuple(pw), 0, "", 1))

    def heuristic(self, wl: Workload, hw: Hardware) -> DwPwParams:
        """Each half's own heuristic (:class:`DepthwiseTemplate`, :class:`Conv2dTemplate`)."""
        dwl, pwl = self._parts(wl)
        dp = DepthwiseTemplate().heuristic(dwl, hw)
        cp = Conv2dTemplate().heuristic(pwl, hw)
        return DwPwParams(dw_tile=dp.ow_tile, ow_tile=cp.ow_tile, oc_tile=cp.oc_tile,
                          dw_stack=True, pw_stack=True)

    def space(self, wl: Workload, hw: Hardware) -> list[DwPwParams]:
        _dwl, pwl = self._parts(wl)
        h = self.heuristic(wl, hw)
        out = [h]
        for t in (2, 4, 7, 8):
            if t <= wl.d["ow"] and t != h.dw_tile:
                out.append(DwPwParams(t, h.ow_tile, h.oc_tile))
        for ds in (False, True):
            for ps in (False, True):
                if not (ds and ps):
                    out.append(DwPwParams(h.dw_tile, h.ow_tile, h.oc_tile, ds, ps))
        for cp in Conv2dTemplate().space(pwl, hw):
            if not cp.pad_stage and cp.unroll_kw:
                out.append(DwPwParams(h.dw_tile, cp.ow_tile, cp.oc_tile))
        return out

    def features(self, wl: Workload, p: DwPwParams, hw: Hardware) -> list[float]:
        _dwl, pwl = self._parts(wl)
        return Conv2dTemplate().features(pwl, ConvParams(p.ow_tile, p.oc_tile, False, True), hw)

    def apply(self, func: tirx.PrimFunc, wl: Workload, p: DwPwParams,
              hw: Hardware) -> tirx.PrimFunc:
        d = wl.d
        sch = s_tir.Schedule(func)
        dw = sch.get_sblock(DWCONV_BLOCK)
        pw = sch.get_sblock(CONV_BLOCK)
        mid = _blocks_between(sch, DWCONV_BLOCK, CONV_BLOCK)  # bias, activation
        for b in mid[:-1]:
            sch.compute_inline(b)
        if mid:
            act = mid[-1]
        else:   # depthwise output read as is: a staging copy to hold the row
            act = sch.cache_write(dw, 0, "global")
        post = _blocks_between(sch, CONV_BLOCK, None)
        for b in post[:-1]:
            sch.compute_inline(b)
        acc = "global" if p.pw_stack else "local"
        if post:
            last = post[-1]
            if not p.pw_stack:
                sch.set_scope(pw, 0, "local")
        else:
            last = sch.cache_write(pw, 0, acc)
        with_pad = True
        try:
            pad = sch.get_sblock(PAD_BLOCK)
        except Exception:  # noqa: BLE001 - an unpadded depthwise
            with_pad = False
        if with_pad:
            sch.compute_inline(pad)

        # --- the 1x1 conv: one output row per task, every output chunk inside it
        b, oc, y, x, o, ric, rkh, rkw, rib = sch.get_loops(pw)
        occ = d["cout"] // d["ob"]
        oc_tile = p.oc_tile if occ % p.oc_tile == 0 else 1
        oco, oci = sch.split(oc, [None, oc_tile])
        xo, xi = sch.split(x, [None, max(1, min(p.ow_tile, d["ow"]))])
        vec_o = vector_chunk(d["ob"], hw) or d["ob"] >= hw.fp32_lanes
        if vec_o:
            sch.reorder(b, y, oco, xo, ric, rkh, rkw, rib, oci, xi, o)
            sch.vectorize(o)
        else:
            sch.reorder(b, y, oco, xo, ric, rkh, rkw, rib, oci, o, xi)
            sch.unroll(o)
        sch.unroll(xi)
        sch.unroll(oci)
        sch.reverse_compute_at(last, xo)
        par = sch.fuse(b, y)
        sch.parallel(par)
        if vec_o:
            sch.vectorize(sch.get_loops(last)[-1])

        # --- the depthwise row (all channel chunks) computed in the task, before it
        sch.compute_at(act, par, preserve_unit_loops=True)
        sch.compute_at(dw, par, preserve_unit_loops=True)
        if not p.dw_stack:
            sch.set_scope(dw, 0, "local")
        # par, then (b, c, y, x, o, rkh, rkw) over the row's region, unit loops kept
        _b, c, _y, dx, do, dkh, dkw = sch.get_loops(dw)[-7:]
        dxo, dxi = sch.split(dx, [None, max(1, min(p.dw_tile, d["ow"]))])
        dvec = vector_chunk(d["mb"], hw) or d["mb"] >= hw.fp32_lanes
        if dvec:
            sch.reorder(c, dxo, dkh, dkw, dxi, do)
            sch.vectorize(do)
        else:
            sch.reorder(c, dxo, dkh, dkw, do, dxi)
        sch.unroll(dxi)
        sch.unroll(dkw)
        sch.unroll(dkh)
        sch.reverse_compute_at(act, dxo)
        if dvec:
            sch.vectorize(sch.get_loops(act)[-1])
        sch.decompose_reduction(dw, dkh)
        sch.decompose_reduction(pw, ric)
        done = {str(sch.get(blk).name_hint) for blk in (dw, pw, act, last)}
        done |= {DWCONV_BLOCK + "_init", CONV_BLOCK + "_init"}
        schedule_rest(sch, hw, done)
        return sch.mod["main"]


def _pattern(residual: str, act: str):
    from tvm.relax.dpl import is_const, is_op, wildcard

    dw = is_op("relax.nn.conv2d")(wildcard(), is_const())
    inner = {"dw": dw}
    h = inner["bias1"] = is_op("relax.add")(dw, is_const())
    if act == "relu":
        h = inner["act"] = is_op("relax.nn.relu")(h)
    elif act == "clip":     # ReLU6 as canonicalize_for_layout writes it
        inner["max"] = is_op("relax.maximum")(h, is_const())
        h = inner["act"] = is_op("relax.minimum")(inner["max"], is_const())
    pw = inner["pw"] = is_op("relax.nn.conv2d")(h, is_const())
    out = is_op("relax.add")(pw, is_const())
    if residual:   # the residual add, either operand order (one pattern each: an
        inner["bias2"] = out   # alternation commits to the first order that matches)
        out = (is_op("relax.add")(out, wildcard()) if residual == "left"
               else is_op("relax.add")(wildcard(), out))
    return out, inner


def _single_use(ctx) -> bool:
    """Every value the group computes, but its output, is read by the group alone."""
    for value in ctx.annotated_expr.values():
        var = ctx.value_to_bound_var.get(value)
        if var is None or len(ctx.var_usages.get(var, [])) != 1:
            return False
    return True


def _eligible(dw: relax.Call, pw: relax.Call, hw: Hardware) -> bool:
    """A depthwise conv (blocked, chunk = the 1x1's input chunk) into an unpadded,
    unstrided 1x1 conv, with rows enough for the threads."""
    try:
        xs = [int(v) for v in dw.args[0].ty.shape]
        ys = [int(v) for v in dw.ty.shape]
        pws = [int(v) for v in pw.args[1].ty.shape]
        dws = [int(v) for v in dw.args[1].ty.shape]
    except (AttributeError, TypeError, ValueError):
        return False
    a, pa = dw.attrs, pw.attrs
    if len(xs) != 5 or len(ys) != 5 or len(pws) != 6 or len(dws) != 6:
        return False
    channels = xs[1] * xs[4]
    if int(a.groups) != channels or dws[1] != 1 or dws[4] != 1 or ys[4] != xs[4]:
        return False
    if str(a.data_layout) != str(a.out_layout) or not str(a.data_layout).startswith("NCHW"):
        return False
    if (int(pa.groups) != 1 or pws[2] != 1 or pws[3] != 1 or any(int(v) for v in pa.padding)
            or any(int(v) != 1 for v in pa.strides) or pws[4] != ys[4]
            or str(pa.data_layout) != str(a.out_layout)):
        return False
    if str(dw.ty.dtype) != "float32" or str(pw.ty.dtype) != "float32":
        return False
    return ys[2] >= DWPW_MIN_ROWS_PER_CORE * max(1, hw.cores)


def fuse_depthwise_pointwise(mod, hw: Hardware):
    """Group every eligible depthwise → bias → activation (ReLU, ReLU6 or none) → 1×1 →
    bias [→ residual add] chain into one function, fused by ``FuseTIR`` into one PrimFunc
    that :class:`DwPwTemplate` schedules. Run on the blocked, constant-folded graph,
    before legalization."""
    pats = []
    for residual in ("left", "right", ""):
        for act in ("relu", "clip", "none"):
            out, ann = _pattern(residual, act)
            pats.append((f"pf.dwpw_{act}{'_res' + residual if residual else ''}", out, ann,
                         lambda ctx: _single_use(ctx) and _eligible(
                             ctx.annotated_expr["dw"], ctx.annotated_expr["pw"], hw)))
    return relax.transform.FuseOpsByPattern(pats, bind_constants=False)(mod)
