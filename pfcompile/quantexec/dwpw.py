"""An integer depthwise conv and the 1x1 conv that reads its requantised output, in one
kernel (the integer twin of :mod:`pfcompile.codegen.templates.dwpw`).

Unfused, the depthwise writes its whole 8-bit output (MobileNetV2: 32x112x112, 96x56x56 ...)
and the 1x1 reads it back, packs it to its operand type (int16 for ``vpmaddwd``) and runs.
Here each parallel task is a band of output rows (:func:`dwpw_rows`): the depthwise
computes those rows of every channel block, requantises them exactly as the unfused kernel
does (:func:`~pfcompile.quantexec.kernels.requant_int32`) and stores them, already in the
1x1's operand type (int16 on AVX2, uint8 on VNNI), into a buffer private to the task
(``rows x C x OW`` values); the 1x1 conv then consumes the band from cache for every output
tile, with its own epilogue (requantised or float). No halo for the 1x1: it needs exactly
the rows it is given (the depthwise stages its input rows with theirs). On AVX2 the
depthwise's tap pairs are interleaved once per input pixel (:func:`dwpw_group`). The integer values are those of the unfused pair, so the results are bit for bit
the same (``tests/test_quantexec_dwpw.py``).

Arguments: ``x, wd, bias_d, scale_d, offset_d, [base_d], wp, bias_p, scale_p, offset_p,
[base_p], y``: the depthwise's and then the 1x1's (``base``: with shared per-channel
arrays). Weights packed as the unfused templates' (:func:`~pfcompile.quantexec.blocked.
pack_weight_dw`, :func:`~pfcompile.quantexec.blocked.pack_weight_conv`).
"""

from __future__ import annotations

from dataclasses import replace

from tvm import s_tir, te, tirx
from tvm.script import tirx as T

from pfcompile.quantexec.blocked import (
    GLOBAL_ACC,
    Isa,
    _divisor_at_most,
    _finish,
    _schedule_out,
    _split_stage,
    _to_operand,
    default_tiles,
    dw_supported,
    x_offset,
)
from pfcompile.quantexec.kernels import (
    BLOCK,
    QConvSpec,
    _io_map,
    channel_params,
    nblocks,
    out_compute,
    padded_read,
    requant_int32,
    te_shape,
)

__all__ = ["dwpw_eligible", "dwpw_func", "dwpw_group", "dwpw_name", "dwpw_rows"]

#: tap-group stage: ``kg`` horizontally adjacent 8-channel pixels -> ``[8, kg]`` operands
GROUP_INTRIN = "pf_dwpw_group_{}_{}_{}"   # .format(x dtype, operand dtype, kg)
#: depthwise on grouped taps: ``C[c] += sum_q A[c, q] * B[c, q]``
DOT_INTRIN = "pf_dwpw_dot_{}"             # .format(the ISA's conv template name)


def _group_intrin(xdt: str, adt: str, kg: int):
    idx = [q * 8 + c for c in range(8) for q in range(kg)]

    @T.prim_func(s_tir=True)
    def desc(A: T.Buffer((kg, 8), xdt, offset_factor=1),
             C: T.Buffer((8, kg), adt, offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(A[0:kg, 0:8])
            T.writes(C[0:8, 0:kg])
            for i in T.serial(0, 8):
                for k in T.serial(0, kg):
                    with T.sblock("g"):
                        vi, vk = T.axis.remap("SS", [i, k])
                        C[vi, vk] = T.Cast(adt, A[vk, vi])

    @T.prim_func(s_tir=True)
    def impl(A: T.Buffer((kg, 8), xdt, offset_factor=1),
             C: T.Buffer((8, kg), adt, offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(A[0:kg, 0:8])
            T.writes(C[0:8, 0:kg])
            C[0, T.ramp(T.int32(0), 1, 8 * kg)] = T.Cast(
                f"{adt}x{8 * kg}", T.Shuffle([A.vload([0, 0], dtype=f"{xdt}x{8 * kg}")], idx))

    return desc, impl


def _dot_intrin(isa: Isa, scope: str):
    kg, adt, wdt = isa.dw_kg, isa.conv_act, isa.dw_w

    @T.prim_func(s_tir=True)
    def desc(A: T.Buffer((8, kg), adt, offset_factor=1),
             B: T.Buffer((8, kg), wdt, offset_factor=1),
             C: T.Buffer((8,), "int32", offset_factor=1, scope=scope)) -> None:
        with T.sblock("root"):
            T.reads(C[0:8], A[0:8, 0:kg], B[0:8, 0:kg])
            T.writes(C[0:8])
            for i in T.serial(0, 8):
                for k in T.serial(0, kg):
                    with T.sblock("update"):
                        vi, vk = T.axis.remap("SR", [i, k])
                        C[vi] = C[vi] + T.cast(A[vi, vk], "int32") * T.cast(B[vi, vk], "int32")

    if adt == "uint8":  # VNNI: u8 quads x s8 quads
        @T.prim_func(s_tir=True)
        def impl(A: T.Buffer((8, kg), adt, offset_factor=1),
                 B: T.Buffer((8, kg), wdt, offset_factor=1),
                 C: T.Buffer((8,), "int32", offset_factor=1, scope=scope)) -> None:
            with T.sblock("root"):
                T.reads(C[0:8], A[0:8, 0:kg], B[0:8, 0:kg])
                T.writes(C[0:8])
                C[T.ramp(T.int32(0), 1, 8)] = T.call_llvm_pure_intrin(
                    T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.256"),
                    C.vload([0], dtype="int32x8"), A.vload([0, 0], dtype="uint8x32"),
                    B.vload([0, 0], dtype="int8x32"), dtype="int32x8")
    else:  # AVX2: int16 pairs
        @T.prim_func(s_tir=True)
        def impl(A: T.Buffer((8, kg), adt, offset_factor=1),
                 B: T.Buffer((8, kg), wdt, offset_factor=1),
                 C: T.Buffer((8,), "int32", offset_factor=1, scope=scope)) -> None:
            with T.sblock("root"):
                T.reads(C[0:8], A[0:8, 0:kg], B[0:8, 0:kg])
                T.writes(C[0:8])
                C[T.ramp(T.int32(0), 1, 8)] += T.call_llvm_pure_intrin(
                    T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"),
                    A.vload([0, 0], dtype="int16x16"), B.vload([0, 0], dtype="int16x16"),
                    dtype="int32x8")

    return desc, impl


_registered: set = set()


def _register(isa: Isa, xdt: str) -> tuple[str, str]:
    """Register the two intrinsics of ``isa`` for input dtype ``xdt``; their names (the
    grouping one, the dot one for ``isa.acc_scope``)."""
    g = GROUP_INTRIN.format(xdt, isa.conv_act, isa.dw_kg)
    d = DOT_INTRIN.format(isa.conv_name)
    if (g, d) not in _registered:
        s_tir.TensorIntrin.register(g, *_group_intrin(xdt, isa.conv_act, isa.dw_kg), override=True)
        for scope, sfx in (("local", ""), ("global", GLOBAL_ACC)):
            s_tir.TensorIntrin.register(d + sfx, *_dot_intrin(isa, scope), override=True)
        _registered.add((g, d))
    return g, isa.intrin(d)


def dwpw_name(isa: Isa) -> str:
    """The fused template's name, reported for both layers."""
    head, _, tail = isa.conv_name.rpartition("-")
    return f"{head}-dwpw-{tail}"  # x86-avx2-dwpw-pmaddwd, x86-vnni-dwpw-vpdpbusd


def dwpw_eligible(dsp: QConvSpec, psp: QConvSpec, isa: Isa) -> bool:
    """A blocked-template depthwise (batch 1, whole channel blocks, requantised 8-bit
    output) into an unpadded, unstrided 1x1 conv with groups 1 over all its channels; the
    1x1's operand type is reachable from the depthwise's output without an offset."""
    return (dw_supported(dsp) and dsp.c % BLOCK == 0 and dsp.y_dtype in ("uint8", "int8")
            and psp.n == 1 and psp.groups == 1 and (psp.kh, psp.kw) == (1, 1)
            and psp.stride == (1, 1) and not any(psp.padding) and psp.dilation == (1, 1)
            and psp.c == dsp.oc and (psp.h, psp.w) == (dsp.oh, dsp.ow)
            and psp.x_dtype == dsp.y_dtype and x_offset(isa, psp.x_dtype) == 0
            and x_offset(isa, dsp.x_dtype) == 0
            and (isa.conv_act != "uint8" or psp.x_dtype == "uint8")
            and (psp.y_layout == "NCHW" or psp.oc % BLOCK == 0))


def _compute(dsp: QConvSpec, psp: QConvSpec, isa: Isa, rows: int, group: bool):
    kg, dkg = isa.conv_kg, isa.dw_kg
    act = dsp.x_dtype if isa.dw_act == "x" else isa.dw_act
    cb, ocb = nblocks(dsp.c), nblocks(psp.oc)
    g = -(-dsp.kw // dkg)
    pt, pl, pb, _pr = dsp.padding
    sh, sw = dsp.stride
    hp = dsp.h + pt + pb
    wq = max(dsp.w + pl + dsp.padding[3], (dsp.ow - 1) * sw + g * dkg)
    x = te.placeholder(te_shape(dsp.n, dsp.c, dsp.h, dsp.w, dsp.x_layout), dsp.x_dtype, name="x")
    wd = te.placeholder((cb, dsp.kh, g, BLOCK, dkg), isa.dw_w, name="wd")
    cpd = channel_params(dsp, dsp.oc)
    zx = tirx.const(dsp.zx, dsp.x_dtype)
    wide = QConvSpec(**{**dsp.__dict__, "padding": (pt, pl, pb, wq - dsp.w - pl)})
    xp = te.compute(
        (dsp.n, cb, hp, wq, BLOCK),
        lambda n, b, i, j, c: _to_operand(padded_read(wide, x, n, b, c, i, j, zx), dsp.x_dtype,
                                          act, 0),
        name="pad")
    # the taps of each lane group interleaved once per input pixel, in the dot product's
    # operand type (block "group"): the depthwise then loads its operands as they are (one
    # vpmaddwd / vpdpbusd on a plain load), where the unfused kernel interleaves (and widens)
    # them for every output. Indexed by band (``rows`` output rows, their input rows with
    # the halo: ``band_h``) so that the stage's row index is a plain loop variable inside a
    # task: TVM 0.27 did not tensorize it at ``task * rows + row``
    # A group starts at column ``j * sw + rg * kg``: with ``kg`` a multiple of the stride,
    # only every ``sw``-th column starts one, so the stage holds those (position ``p`` starts
    # at column ``p * sw``).
    ry = te.reduce_axis((0, dsp.kh), name="ry")
    rg = te.reduce_axis((0, g), name="rg")
    rq = te.reduce_axis((0, dkg), name="rq")
    if group:
        step = sw if dkg % sw == 0 else 1
        wg = ((dsp.ow - 1) * sw + (g - 1) * dkg) // step + 1
        band_h = (rows - 1) * sh + dsp.kh
        xg = te.compute(
            (dsp.n, cb, dsp.oh // rows, band_h, wg, BLOCK, dkg),
            lambda n, b, t, r, j, c, q: xp[n, b, t * (rows * sh) + r, j * step + q, c].astype(
                isa.conv_act),
            name="group")
        dacc = te.compute(
            (dsp.n, cb, dsp.oh, dsp.ow, BLOCK),
            lambda n, b, i, j, c: te.sum(
                xg[n, b, i // rows, (i % rows) * sh + ry, (j * sw + rg * dkg) // step, c,
                   rq].astype("int32") * wd[b, ry, rg, c, rq].astype("int32"), axis=[ry, rg, rq]),
            name="dacc")
    else:  # the unfused kernel's way: the groups interleaved in registers for every output
        dacc = te.compute(
            (dsp.n, cb, dsp.oh, dsp.ow, BLOCK),
            lambda n, b, i, j, c: te.sum(
                xp[n, b, i * sh + ry, j * sw + rg * dkg + rq, c].astype("int32")
                * wd[b, ry, rg, c, rq].astype("int32"), axis=[ry, rg, rq]),
            name="dacc")

    def _mid(n, b, i, j, c):
        bias, scale, offset = cpd.at(b * BLOCK + c)
        q = requant_int32(dacc[n, b, i, j, c] + bias, scale, offset, dsp.qmin, dsp.qmax)
        return q.astype(isa.conv_act)  # in [qmin, qmax]: the unfused 8-bit value, widened

    mid = te.compute((dsp.n, cb, dsp.oh, dsp.ow, BLOCK), _mid, name="mid")
    wp = te.placeholder((ocb, cb, 1, 1, BLOCK // kg, BLOCK, kg), isa.conv_w, name="wp")
    cpp = channel_params(psp, psp.oc)
    rb = te.reduce_axis((0, cb), name="rb")
    rk = te.reduce_axis((0, BLOCK // kg), name="rk")
    rp = te.reduce_axis((0, kg), name="rp")
    acc = te.compute(
        (psp.n, ocb, psp.oh, psp.ow, BLOCK),
        lambda n, b, i, j, o: te.sum(
            mid[n, rb, i, j, rk * kg + rp].astype("int32")
            * wp[b, rb, 0, 0, rk, o, rp].astype("int32"), axis=[rb, rk, rp]),
        name="acc")
    y = out_compute(psp, acc, cpp, split=isa.split_cast)
    return [x, wd, *cpd.tensors, *cpd.scalars, wp, *cpp.tensors, *cpp.scalars, y]


def dwpw_rows(dsp: QConvSpec, mid_bytes: int = 2) -> int:
    """Output rows per parallel task: up to 4 (the depthwise's padded input rows are staged
    per task, so one row a task stages ``KH`` rows for one), while leaving at least 7 tasks
    and a row buffer under 64 KB."""
    for r in (4, 2, 1):
        if dsp.oh % r == 0 and dsp.oh // r >= 7 and r * dsp.ow * dsp.c * mid_bytes <= 65536:
            return r
    return 1


def dwpw_group(dsp: QConvSpec, isa: Isa) -> bool:
    """Whether the fused kernel groups the depthwise's taps in a stage of their own (see
    :func:`_compute`). Measured (AMD EPYC Zen 4, one thread, tools/bench_int8_dwpw.py, fused
    time / the unfused pair's, min of 7 rounds): on AVX2 grouped 0.84-0.95 against 0.94-1.07
    ungrouped on MobileNetV2's pairs at 56x56 and below, 0.91-0.92 against 0.96 on the 32
    channels at 112x112 (one earlier run read 1.86: noise from other processes, not
    reproduced in two runs), but 1.02-1.04 against 0.98 on the stride-2 96 channels at
    112x112 (its input rows twice as long as its output's); on VNNI (one ``vpdpbusd`` for
    four taps either way) grouping took 1.0-1.3x, so never there."""
    return isa.conv_act == "int16" and (dsp.stride == (1, 1) or dsp.w <= 56)


def dwpw_func(dsp: QConvSpec, psp: QConvSpec, isa: Isa, tile_ow: int | None = None,
              tile_oc: int | None = None, dw_tile: int | None = None,
              rows: int | None = None, group: bool | None = None) -> tirx.PrimFunc:
    """The scheduled fused PrimFunc for depthwise ``dsp`` then 1x1 ``psp`` (see the module
    docstring). Parallel over bands of ``rows`` output rows (:func:`dwpw_rows`); per band, the depthwise by ``dw_tile`` columns
    (the unfused kernel's tensor intrinsic), its requantised row in a task-private buffer,
    then the 1x1 by register tiles of ``tile_ow`` columns x ``tile_oc`` channel blocks (by
    default the unfused 1x1's tile for the row width)."""
    isa.register()
    group_intrin, dot_intrin = _register(isa, dsp.x_dtype)
    if not dwpw_eligible(dsp, psp, isa):
        raise ValueError(f"no fused depthwise + 1x1 kernel for {dsp} -> {psp}")
    dsp = replace(dsp, spatial=0, out_hw=None)
    psp = replace(psp, spatial=0, out_hw=None)
    d_ow, d_oc = default_tiles(psp, isa)
    t_ow = _divisor_at_most(psp.ow, tile_ow or d_ow)
    t_oc = _divisor_at_most(nblocks(psp.oc), tile_oc or d_oc)
    t_dw = _divisor_at_most(dsp.ow, dw_tile or 8)
    mid_bytes = 2 if isa.conv_act == "int16" else 1
    rows = _divisor_at_most(dsp.oh, rows or dwpw_rows(dsp, mid_bytes))
    if group is None:
        group = dwpw_group(dsp, isa)
    sch = s_tir.Schedule(te.create_prim_func(_compute(dsp, psp, isa, rows, group)))
    xmap = _io_map(dsp.x_layout, dsp.h, dsp.w, False)
    if xmap is not None:
        sch.transform_layout(sch.get_sblock("pad"), "x", xmap)
    ymap = _io_map(psp.y_layout, psp.oh, psp.ow, False)
    if ymap is not None:
        sch.transform_layout(sch.get_sblock("requant"), "requant", ymap)
    pad, dacc, mid, acc, req = (sch.get_sblock(b) for b in ("pad", "dacc", "mid", "acc", "requant"))

    # --- the 1x1: one output row per task, every output channel tile inside it
    n, b, i, j, o, rb, rk, rp = sch.get_loops(acc)
    bo, bi = sch.split(b, [None, t_oc])
    jo, ji = sch.split(j, [None, t_ow])
    io, ii = sch.split(i, [None, rows])
    sch.reorder(n, io, ii, bo, jo, rb, rk, bi, ji, o, rp)
    par = sch.fuse(n, io)
    sch.parallel(par)
    sch.set_scope(acc, 0, isa.acc_scope)
    q = _split_stage(sch, isa.acc_scope, jo)
    sch.reverse_compute_at(req, jo)

    # --- the depthwise row (every channel block) computed in the task, before it
    sch.compute_at(mid, par, preserve_unit_loops=True)
    sch.compute_at(dacc, par, preserve_unit_loops=True)
    _dn, db, di, dj, dc, dry, drg, drq = sch.get_loops(dacc)[-8:]
    djo, dji = sch.split(dj, [None, t_dw])
    sch.reorder(db, di, djo, dry, drg, dji, dc, drq)
    sch.set_scope(dacc, 0, isa.acc_scope)
    sch.reverse_compute_at(mid, djo)
    sch.vectorize(sch.get_loops(mid)[-1])
    if group:
        grp = sch.get_sblock("group")
        sch.compute_at(grp, db)
        sch.compute_at(pad, db)
        sch.vectorize(sch.get_loops(pad)[-1])
        sch.tensorize(sch.get_loops(grp)[-2], group_intrin)
    else:
        sch.compute_at(pad, par, preserve_unit_loops=True)
        sch.vectorize(sch.get_loops(pad)[-1])
    dinit = sch.decompose_reduction(dacc, dry)
    sch.vectorize(sch.get_loops(dinit)[-1])
    sch.unroll(dji)
    sch.tensorize(dc, dot_intrin if group else isa.intrin(isa.dw_intrin.format(x=dsp.x_dtype)))

    init = sch.decompose_reduction(acc, rb)
    sch.vectorize(sch.get_loops(init)[-1])
    sch.unroll(bi)
    sch.unroll(ji)
    sch.tensorize(o, isa.intrin(isa.conv_intrin))
    _schedule_out(sch, psp, req, jo, False, q, t_ow)
    return _finish(sch.mod["main"])
