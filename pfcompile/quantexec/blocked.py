"""Integer conv and depthwise templates vectorised over 8 output channels, shared by every
instruction set; :class:`Isa` says which dot-product instruction does the inner block.

* **conv** (groups 1, any kernel size): the input is packed inside the kernel into a
  zero-point-padded ``[N, C/8, Hp, Wp, 8]`` buffer of the instruction's operand type
  (int16 for ``vpmaddwd`` / ``smlal``, uint8 for ``vpdpbusd``, int8 for ``sdot``; uint8
  data feeding a signed dot product is stored as ``x - 128``, the kernel's ``x_offset``);
  a blocked, unpadded input already of that type is read in place. Weights are packed once
  into ``[OC/8, C/8, KH, KW, 8/g, 8, g]`` with ``g`` input channels per lane. The inner
  ``8 x g`` block is one tensor intrinsic: ``g`` input channels of one pixel broadcast
  against 8 output channels. A register tile of ``t_ow`` output columns x ``t_oc`` blocks
  accumulates in registers; the epilogue runs per tile. A 1x1 stride-1 conv is computed as
  a ``1 x H*W`` image so that its pixel tiles run across rows.
* **depthwise** (kernel width <= 8, dilation 1): vectorised over the 8 channels of a
  block, with ``g`` horizontal taps per lane (``g = 1`` for ``smlal``, 2 for ``vpmaddwd``,
  4 for ``vpdpbusd`` / ``sdot``). The taps of one row are adjacent pixels whatever the
  stride, so the ``g x 8`` values are one contiguous load, interleaved in registers by the
  intrinsic. A 3x3 layer takes 6 ``vpmaddwd`` or 3 ``vpdpbusd`` / 6 ``sdot`` per 8 outputs
  (the missing taps have weight 0). Weights ``[C/8, KH, ceil(KW/g), 8, g]``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
from tvm import s_tir, te, tirx

from pfcompile.quantexec.kernels import (
    BLOCK,
    QConvSpec,
    channel_params,
    io_layouts,
    nblocks,
    out_compute,
    padded_read,
    te_shape,
)

__all__ = ["GLOBAL_ACC", "Isa", "conv_func", "conv_tiles", "default_tiles", "depthwise_func", "dw_supported",
           "kernel_tiles", "pack_weight_conv", "pack_weight_conv_shared", "pack_weight_dw",
           "shareable", "spatial_args", "spatial_ok", "x_offset"]


@dataclass(frozen=True)
class Isa:
    """One instruction set's way of doing the blocked templates."""

    conv_name: str            # template names reported per layer
    dw_name: str
    tiles: tuple              # register tiles (output columns, channel blocks), best first
    conv_kg: int              # input channels per lane
    conv_act: str             # dtype of the packed activations
    conv_w: str               # dtype of the packed weights
    conv_intrin: str
    dw_kg: int                # horizontal taps per lane
    dw_act: str               # dtype of the padded depthwise input ("x": the input's own)
    dw_w: str
    dw_intrin: str            # may hold "{x}" for the input dtype
    signed_dot: bool          # uint8 activations go in as int8 (x - 128)
    register: Callable[[], None]  # registers the tensor intrinsics
    #: scope of the register tile's accumulators. "global": TVM's CPU lowering puts a small
    #: buffer allocated inside a parallel task on the stack, and LLVM's SROA then keeps it in
    #: registers; a "local" one became a TVMBackendAllocWorkspace call per task and lived
    #: in memory (zeroed, stored and reloaded per tile). "global" needs the intrinsics
    #: registered a second time with a "global" accumulator, named ``+ GLOBAL_ACC``.
    acc_scope: str = "local"
    #: a requantised blocked output in two stages (``kernels.out_compute(split=True)``)
    split_cast: bool = False

    def intrin(self, name: str) -> str:
        """The name of tensor intrinsic ``name`` for this ISA's accumulator scope."""
        return name + GLOBAL_ACC if self.acc_scope == "global" else name


#: suffix of the name of a tensor intrinsic whose accumulator buffer is in "global" scope
#: (``Isa.acc_scope``)
GLOBAL_ACC = "_g"


def x_offset(isa: Isa, x_dtype: str) -> int:
    """What the kernel adds to every activation (see ``IntKernel.x_offset``)."""
    return -128 if isa.signed_dot and x_dtype == "uint8" else 0


def _to_operand(v, x_dtype: str, dtype: str, offset: int):
    if offset:
        return (v.astype("int16") + offset).astype(dtype)
    return v if dtype == x_dtype else v.astype(dtype)


# ----------------------------------------------------------------------------- weights
def pack_weight_conv(w: np.ndarray, kg: int, dtype) -> np.ndarray:
    """OIHW int8 -> ``[OC/8, C/8, KH, KW, 8/kg, 8, kg]`` (zero-padded channels)."""
    oc, c, kh, kw = w.shape
    ocb, cb = -(-oc // BLOCK), -(-c // BLOCK)
    full = np.zeros((ocb * BLOCK, cb * BLOCK, kh, kw), dtype)
    full[:oc, :c] = w
    # [ob, o, cb, k, q, ky, kx] -> [ob, cb, ky, kx, k, o, q]
    return np.ascontiguousarray(
        full.reshape(ocb, BLOCK, cb, BLOCK // kg, kg, kh, kw).transpose(0, 2, 5, 6, 3, 1, 4))


def pack_weight_conv_shared(w: np.ndarray, kg: int, dtype, t_oc: int) -> np.ndarray:
    """:func:`pack_weight_conv` viewed as ``[OC/8/t_oc, t_oc, C/8, ...]`` (same bytes): the
    weights of a conv kernel shared across channel counts (``conv_func(shared=True)``),
    whose first dimension gives the kernel its number of output channel tiles."""
    p = pack_weight_conv(w, kg, dtype)
    return p.reshape(p.shape[0] // t_oc, t_oc, *p.shape[1:])


def pack_weight_dw(w: np.ndarray, kg: int, dtype) -> np.ndarray:
    """Depthwise ``[C, 1, KH, KW]`` int8 -> ``[C/8, KH, ceil(KW/kg), 8, kg]`` (zero taps)."""
    c, _, kh, kw = w.shape
    cb, g = -(-c // BLOCK), -(-kw // kg)
    full = np.zeros((cb * BLOCK, kh, g * kg), dtype)
    full[:c, :, :kw] = w[:, 0]
    # [cb, c, ky, g, q] -> [cb, ky, g, c, q]
    return np.ascontiguousarray(full.reshape(cb, BLOCK, kh, g, kg).transpose(0, 2, 3, 1, 4))


# ----------------------------------------------------------------------------- conv
def _finish(func: tirx.PrimFunc) -> tirx.PrimFunc:
    # op_pattern 8 (opaque): FuseOps must not merge other ops into a scheduled kernel
    return (func.with_attr("tirx.is_scheduled", True).with_attr("tir.noalias", True)
            .with_attr("op_pattern", 8))


def _direct(sp: QConvSpec, isa: Isa) -> bool:
    """A blocked, unpadded input already of the operand type is read in place (no pack)."""
    return (isa.conv_act == sp.x_dtype and x_offset(isa, sp.x_dtype) == 0
            and sp.x_layout != "NCHW" and not any(sp.padding) and sp.c % BLOCK == 0)


def shareable(sp: QConvSpec) -> bool:
    """Whether one kernel may serve ``sp`` and layers that differ from it only in channel
    counts (``shared=True`` of :func:`conv_func` / :func:`depthwise_func`): batch 1 and
    whole blocks of 8 input and output channels."""
    return sp.n == 1 and sp.c % BLOCK == 0 and sp.oc % BLOCK == 0


def _channel_vars(sp: QConvSpec, t_oc: int | None):
    """``sp`` with its channel counts as TIR variables, and the variables.

    The input's channel blocks ``cb`` (channels ``8 * cb``) and a conv's output channel
    tiles ``nt`` (output channels ``8 * t_oc * nt``). Each is a dimension of an argument by
    itself, which the function's packed-API entry reads from the argument's shape: ``cb``
    from a blocked input or the weights, ``nt`` from the weights' first dimension
    (:func:`pack_weight_conv_shared`). Multiples of the block as variables, not the counts
    themselves: the schedule's splits into blocks and tiles are then exact (no tail, no
    predicate). Depthwise: output channels = input channels = groups."""
    c = tirx.Var("cb", "int32") * BLOCK
    if t_oc is None:  # depthwise
        return replace(sp, c=c, oc=c, groups=c), None
    nt = tirx.Var("nt", "int32")
    return replace(sp, c=c, oc=nt * (t_oc * BLOCK)), nt


def spatial_ok(sp: QConvSpec) -> bool:
    """Whether a conv kernel may also take its spatial sizes from its arguments
    (``sp.spatial``, see :func:`conv_func`): channels shared (:func:`shareable`), groups 1,
    no dilation; a 1x1 stride-1 conv (computed over flat pixels) with blocked input and
    output only (an NCHW one would need the image width, not only the pixel count).
    Not a 3x3 (or larger) conv reading or writing NCHW: its pack gathers the 8 channels of
    each pixel from 8 planes (its epilogue scatters them), and with the plane size a
    run-time value that was 5-15 % slower (a 1x1 conv: 1 %; in one process, 1 thread,
    ResNet-20's layers at 4x4 to 32x32)."""
    return (shareable(sp) and sp.groups == 1 and sp.dilation == (1, 1)
            and ((sp.x_layout != "NCHW" and sp.y_layout != "NCHW") or (sp.kh, sp.kw) == (1, 1))
            and (not _flat(sp) or (sp.x_layout != "NCHW" and sp.y_layout != "NCHW")))


def kernel_tiles(sp: QConvSpec, isa: Isa) -> tuple[int, int]:
    """The register tile of ``conv_func(sp, isa)`` (a spatially shared kernel of a conv
    that is not 1x1 tiles rows: its tile divides the output width)."""
    return conv_tiles(sp, isa, out_flat=False if sp.spatial and not _flat(sp) else None)


def spatial_args(sp: QConvSpec, isa: Isa) -> tuple[int, ...]:
    """The scalar arguments of a spatially shared kernel for ``sp`` (after ``base``): the
    output rows and column tiles, or for a flat 1x1 conv the parallel chunks of pixel
    tiles (:func:`_spatial_vars`); () for a kernel of fixed sizes."""
    if not sp.spatial:
        return ()
    t_ow, _ = kernel_tiles(sp, isa)
    if _flat(sp):
        return ((sp.oh * sp.ow) // (t_ow * sp.spatial),)
    return (sp.oh, sp.ow // t_ow)


def _spatial_vars(csp: QConvSpec, t_ow: int, chunk: int, flat: bool):
    """``csp`` (the spec the TE computes: for a flat 1x1 conv its ``1 x H*W`` view) with its
    spatial sizes as TIR variables, and the variables (scalar arguments of the kernel).

    Row form: the output rows ``oh`` and column tiles ``nw`` (output width ``t_ow * nw``);
    the input size follows from the output size as in ``csp`` (``h = sh * oh + dh`` with
    ``csp``'s ``dh``: same padding and stride). Flat 1x1: pixel chunks ``nc`` (pixels
    ``t_ow * chunk * nc``). As with the channels (:func:`_channel_vars`), multiples of the
    tile are the variables, so that the schedule's splits are exact: the loops, the tile
    and the inner block are those of a fixed-size kernel, only the outer extents are read
    at run time."""
    if flat:
        nc = tirx.Var("nc", "int32")
        p = nc * (t_ow * chunk)
        return replace(csp, h=1, w=p, out_hw=(1, p)), [nc]
    oh, nw = tirx.Var("oh", "int32"), tirx.Var("nw", "int32")
    ow = nw * t_ow
    sh, sw = csp.stride
    h = oh * sh + (csp.h - sh * csp.oh)
    w = ow * sw + (csp.w - sw * csp.ow)
    return replace(csp, h=h, w=w, out_hw=(oh, ow)), [oh, nw]


def _conv_compute(sp: QConvSpec, isa: Isa, out_flat: bool = False, shared_t_oc: int | None = None,
                  svars: tuple = ()):
    """``out_flat``: accumulate over flat output pixels ``p = i * OW + j`` (the output TE
    view ``1 x OH*OW``), so that a register tile of pixels may span rows.
    ``shared_t_oc``: the channel counts are variables (:func:`_channel_vars`; the weights
    ``[OC/8/t_oc, t_oc, ...]``), so that layers with other channel counts share the kernel.
    ``svars``: ``sp``'s spatial sizes are expressions of these variables
    (:func:`_spatial_vars`), scalar arguments of the kernel."""
    kg = isa.conv_kg
    direct = _direct(sp, isa)
    nt = None
    if shared_t_oc is not None:
        sp, nt = _channel_vars(sp, shared_t_oc)
    ocb, cb = nblocks(sp.oc), nblocks(sp.c)
    pt, pl, pb, pr = sp.padding
    hp, wp = sp.h + pt + pb, sp.w + pl + pr
    x = te.placeholder(te_shape(sp.n, sp.c, sp.h, sp.w, sp.x_layout), sp.x_dtype, name="x")
    inner_w = (cb, sp.kh, sp.kw, BLOCK // kg, BLOCK, kg)
    if nt is None:
        wt = te.placeholder((ocb, *inner_w), isa.conv_w, name="w")

        def wread(b, *idx):
            return wt[(b, *idx)]
    else:
        wt = te.placeholder((nt, shared_t_oc, *inner_w), isa.conv_w, name="w")

        def wread(b, *idx):
            return wt[(b // shared_t_oc, b % shared_t_oc, *idx)]
    cp = channel_params(sp, sp.oc)
    if direct:
        src = x
    else:
        zx = tirx.const(sp.zx, sp.x_dtype)
        off = x_offset(isa, sp.x_dtype)
        src = te.compute(
            (sp.n, cb, hp, wp, BLOCK),
            lambda n, b, i, j, c: _to_operand(padded_read(sp, x, n, b, c, i, j, zx), sp.x_dtype,
                                              isa.conv_act, off),
            name="pack")
    rb = te.reduce_axis((0, cb), name="rb")
    ry = te.reduce_axis((0, sp.kh), name="ry")
    rx = te.reduce_axis((0, sp.kw), name="rx")
    # fewer than 8 input channels (an RGB stem): only the lane groups that hold channels
    rk = te.reduce_axis((0, BLOCK // kg if not isinstance(sp.c, int)
                         else min(BLOCK, -(-sp.c // kg) * kg) // kg), name="rk")
    (sh, sw), (dh, dw) = sp.stride, sp.dilation
    if out_flat:
        oshape = (sp.n, ocb, 1, sp.oh * sp.ow, BLOCK)

        def pix(i, j):  # (i = 0, j = flat pixel) -> output row, column
            return j // sp.ow, j % sp.ow
    else:
        oshape = (sp.n, ocb, sp.oh, sp.ow, BLOCK)

        def pix(i, j):
            return i, j
    if kg == 1:  # one input channel per lane: no inner reduction axis
        def body(n, b, i, j, o):
            r, q = pix(i, j)
            return te.sum(src[n, rb, r * sh + ry * dh, q * sw + rx * dw, rk].astype("int32")
                          * wread(b, rb, ry, rx, rk, o, 0).astype("int32"),
                          axis=[rb, ry, rx, rk])
    else:
        rq = te.reduce_axis((0, kg), name="rq")

        def body(n, b, i, j, o):
            r, q = pix(i, j)
            return te.sum(
                src[n, rb, r * sh + ry * dh, q * sw + rx * dw, rk * kg + rq].astype("int32")
                * wread(b, rb, ry, rx, rk, o, rq).astype("int32"), axis=[rb, ry, rx, rk, rq])
    acc = te.compute(oshape, body, name="acc")
    y = out_compute(_flat_out_view(sp) if out_flat else sp, acc, cp, split=isa.split_cast)
    return [x, wt, *cp.tensors, *cp.scalars, *svars, y]


def _flat_out_view(sp: QConvSpec) -> QConvSpec:
    """A spec with ``sp``'s output as a ``1 x OH*OW`` image (for the output shape and the
    tiles of a conv that tiles output pixels across rows)."""
    return replace(sp, h=1, w=sp.oh * sp.ow, kh=1, kw=1, stride=(1, 1), padding=(0, 0, 0, 0),
                   dilation=(1, 1))


def _divisor_at_most(n: int, cap: int) -> int:
    return max(d for d in range(1, min(n, cap) + 1) if n % d == 0)


def default_tiles(sp: QConvSpec, isa: Isa) -> tuple[int, int]:
    """The first register tile of ``isa.tiles`` that divides the output width (the pixel
    count for a flat 1x1) and the channel blocks."""
    ocb = -(-sp.oc // BLOCK)
    for t_ow, t_oc in isa.tiles:
        if sp.ow % t_ow == 0 and ocb % t_oc == 0:
            return t_ow, t_oc
    return 1, 1


def _inner_loops(sch: s_tir.Schedule, block, anchor) -> list:
    loops = sch.get_loops(block)
    at = sch.get(anchor)
    depth = next(k for k, lp in enumerate(loops) if sch.get(lp).same_as(at)) + 1
    return loops[depth:]  # unit-extent loops are elided


def _schedule_out(sch: s_tir.Schedule, sp: QConvSpec, req, anchor,
                  blocked_view: bool = False, q=None, t_ow: int = 1) -> None:
    """Vectorise the epilogue (placed under loop ``anchor`` by ``reverse_compute_at``) over
    the 8 channels of a block: 8-byte stores when blocked, a scatter into NCHW otherwise.
    With a two-stage epilogue (``q``, the ``requant_q`` block) the rounding is vectorised
    over 8 channels and the cast over the tile's ``t_ow`` pixels x 8 channels."""
    if q is not None:
        sch.vectorize(_inner_loops(sch, q, anchor)[-1])
        inner = _inner_loops(sch, req, anchor)
        if t_ow > 1:
            sch.vectorize(sch.fuse(*inner[-2:]))
        else:
            sch.vectorize(inner[-1])
        return
    inner = _inner_loops(sch, req, anchor)
    if sp.y_layout == "NCHW" and not blocked_view:
        rco, rci = sch.split(inner[0], [None, BLOCK])
        if len(inner) > 1:
            sch.reorder(rco, *inner[1:], rci)
        sch.vectorize(rci)
    else:
        sch.vectorize(inner[-1])


def _flat(sp: QConvSpec) -> bool:
    """A 1x1 stride-1 unpadded conv: computed as a ``1 x H*W`` image, so that its pixel
    tiles run across rows (any divisor of H*W, not of W)."""
    return (sp.kh, sp.kw, sp.stride) == (1, 1, (1, 1)) and not any(sp.padding)


def _chunk(tiles: int) -> int:
    """Pixel tiles per parallel task of a flat 1x1 conv: about 8 (a row of a 56-wide image)."""
    return _divisor_at_most(tiles, 8)


def _conv_views(sp: QConvSpec, out_flat: bool | None):
    """(flat, out_flat, the spec the TE computes, the output view the tiles divide)."""
    flat = _flat(sp)
    if out_flat is None:
        out_flat = sp.ow < 16 and sp.stride == (1, 1)
    out_flat = flat or out_flat
    csp = replace(sp, h=1, w=sp.h * sp.w) if flat else sp
    tsp = _flat_out_view(csp) if out_flat and not flat else csp
    return flat, out_flat, csp, tsp


def conv_tiles(sp: QConvSpec, isa: Isa, tile_ow: int | None = None,
               tile_oc: int | None = None, out_flat: bool | None = None) -> tuple[int, int]:
    """The register tile ``(output columns or pixels, channel blocks)`` :func:`conv_func`
    uses for ``sp``."""
    _, _, _, tsp = _conv_views(sp, out_flat)
    d_ow, d_oc = default_tiles(tsp, isa)
    return (_divisor_at_most(tsp.ow, tile_ow or d_ow),
            _divisor_at_most(-(-sp.oc // BLOCK), tile_oc or d_oc))


def conv_func(sp: QConvSpec, isa: Isa, tile_ow: int | None = None,
              tile_oc: int | None = None, out_flat: bool | None = None,
              shared: bool = False) -> tirx.PrimFunc:
    """The scheduled conv PrimFunc; weights from ``pack_weight_conv(w, isa.conv_kg, ...)``.
    ``out_flat`` tiles output pixels across rows; by default where rows are short (OW < 16,
    stride 1): measured in one process on AVX2, 512->512 3x3 on 7x7 0.93x and 256->256 on
    14x14 0.88x the time of row tiles, but 64->64 on 56x56 1.38x and a stride-2 layer 2.2x
    (per-pixel input addresses).

    ``shared`` (needs :func:`shareable`): the channel counts are read from the arguments,
    so one function serves every layer that differs from ``sp`` only in its channel counts
    and has the same tile (:func:`conv_tiles`); weights from
    :func:`pack_weight_conv_shared` with that tile's ``t_oc``. The loops, their order,
    unrolling and the tensorized inner block are those of the fixed-channel kernel; the
    input-channel loop and the parallel loop get run-time extents."""
    isa.register()
    if shared and not shareable(sp):
        raise ValueError(f"a shared conv kernel needs batch 1 and multiples of {BLOCK} "
                         f"channels (got {sp})")
    if sp.spatial:
        if not (shared and spatial_ok(sp)):
            raise ValueError(f"a spatially shared conv kernel needs shared channels, groups 1, "
                             f"no dilation and, for a 1x1 conv, blocked input and output (got {sp})")
        out_flat = _flat(sp)  # rows, or flat pixels for a 1x1 stride-1 conv
    flat, out_flat, csp, tsp = _conv_views(sp, out_flat)
    t_ow, t_oc = conv_tiles(sp, isa, tile_ow, tile_oc, out_flat)
    direct = _direct(csp, isa)
    svars: list = []
    io_sp = sp
    if sp.spatial:
        csp, svars = _spatial_vars(csp, t_ow, sp.spatial, flat)
        io_sp = sp if flat else csp  # a flat kernel's layouts are blocked: no sizes in the maps
    sch = s_tir.Schedule(te.create_prim_func(_conv_compute(
        csp, isa, out_flat and not flat, t_oc if shared else None, tuple(svars))))
    bview = shared and sp.y_layout == "NCHW"  # see out_compute
    io_layouts(sch, io_sp, "acc" if direct else "pack", flat, out_flat, bview)
    flat = out_flat
    acc = sch.get_sblock("acc")
    req = sch.get_sblock("requant")
    if not direct:
        # pack: parallel over (n, channel block, row), 8 channels per vector
        pn, pb, pi, _pj, pc = sch.get_loops(sch.get_sblock("pack"))
        # sizes as arguments: rows not fused into the parallel loop (that would divide by
        # the run-time row count once a row: ~0.4 us of a 15 us 4x4 layer)
        sch.parallel(sch.fuse(pn, pb) if sp.spatial else sch.fuse(pn, pb, pi))
        sch.vectorize(pc)
    n, b, i, j, o, rb, ry, rx, rk, *rq = sch.get_loops(acc)
    bo, bi = sch.split(b, [None, t_oc])
    jo, ji = sch.split(j, [None, t_ow])
    if flat:  # parallel over (oc tile, pixel chunk): i has extent 1
        jc, jo = sch.split(jo, [None, sp.spatial or _chunk(tsp.ow // t_ow)])
        sch.reorder(n, bo, i, jc, jo, rb, ry, rx, rk, bi, ji, o, *rq)
        sch.parallel(sch.fuse(n, bo, i, jc))
    else:
        sch.reorder(n, bo, i, jo, rb, ry, rx, rk, bi, ji, o, *rq)
        sch.parallel(sch.fuse(n, bo, i))
    sch.set_scope(acc, 0, isa.acc_scope)  # accumulators: registers after unrolling
    q = _split_stage(sch, isa.acc_scope, jo)
    sch.reverse_compute_at(req, jo)
    init = sch.decompose_reduction(acc, rb)
    sch.vectorize(sch.get_loops(init)[-1])
    sch.unroll(bi)
    sch.unroll(ji)
    sch.tensorize(o, isa.intrin(isa.conv_intrin))
    _schedule_out(sch, tsp, req, jo, bview, q, t_ow)
    return _finish(sch.mod["main"])


def _split_stage(sch: s_tir.Schedule, scope: str, anchor):
    """The ``requant_q`` block of a two-stage epilogue (``Isa.split_cast``), placed under
    ``anchor`` with its tile of int32 values in ``scope``; None without one."""
    try:
        q = sch.get_sblock("requant_q")
    except Exception:  # noqa: BLE001 - a float or NCHW output has one stage
        return None
    sch.set_scope(q, 0, scope)
    sch.reverse_compute_at(q, anchor)
    return q


# ----------------------------------------------------------------------------- depthwise
def dw_supported(sp: QConvSpec) -> bool:
    """Whether the blocked depthwise template takes ``sp``."""
    return sp.depthwise and sp.dilation == (1, 1) and sp.kw <= 8 and sp.n == 1


def _dw_compute(sp: QConvSpec, isa: Isa, shared: bool = False):
    kg = isa.dw_kg
    act = sp.x_dtype if isa.dw_act == "x" else isa.dw_act
    if shared:
        sp, _ = _channel_vars(sp, None)
    cb = nblocks(sp.c)
    g = -(-sp.kw // kg)
    pt, pl, pb, _pr = sp.padding
    sh, sw = sp.stride
    hp = sp.h + pt + pb
    wq = max(sp.w + pl + sp.padding[3], (sp.ow - 1) * sw + g * kg)  # the zero-weight taps
    x = te.placeholder(te_shape(sp.n, sp.c, sp.h, sp.w, sp.x_layout), sp.x_dtype, name="x")
    wt = te.placeholder((cb, sp.kh, g, BLOCK, kg), isa.dw_w, name="w")
    cp = channel_params(sp, sp.oc)
    zx = tirx.const(sp.zx, sp.x_dtype)
    off = x_offset(isa, sp.x_dtype)
    # the extra zero-weight tap columns past the right edge read zx too
    wide = QConvSpec(**{**sp.__dict__, "padding": (pt, pl, pb, wq - sp.w - pl)})
    xp = te.compute(
        (sp.n, cb, hp, wq, BLOCK),
        lambda n, b, i, j, c: _to_operand(padded_read(wide, x, n, b, c, i, j, zx), sp.x_dtype,
                                          act, off),
        name="pad")
    ry = te.reduce_axis((0, sp.kh), name="ry")
    rg = te.reduce_axis((0, g), name="rg")
    if kg == 1:  # one tap per lane: no inner reduction axis
        acc = te.compute(
            (sp.n, cb, sp.oh, sp.ow, BLOCK),
            lambda n, b, i, j, c: te.sum(
                xp[n, b, i * sh + ry, j * sw + rg, c].astype("int32")
                * wt[b, ry, rg, c, 0].astype("int32"), axis=[ry, rg]),
            name="acc")
    else:
        rq = te.reduce_axis((0, kg), name="rq")
        acc = te.compute(
            (sp.n, cb, sp.oh, sp.ow, BLOCK),
            lambda n, b, i, j, c: te.sum(
                xp[n, b, i * sh + ry, j * sw + rg * kg + rq, c].astype("int32")
                * wt[b, ry, rg, c, rq].astype("int32"), axis=[ry, rg, rq]),
            name="acc")
    y = out_compute(sp, acc, cp, split=isa.split_cast)
    return [x, wt, *cp.tensors, *cp.scalars, y]


def _rows_per_task(sp: QConvSpec, cb: int, threads: int = 16) -> int:
    """Output rows per parallel task: enough tasks for ``threads``, few recomputed pad rows."""
    for r in (8, 4, 2, 1):
        if sp.oh % r == 0 and cb * (sp.oh // r) >= 4 * threads:
            return r
    return 1


def depthwise_func(sp: QConvSpec, isa: Isa, tile_ow: int | None = None,
                   shared: bool = False) -> tirx.PrimFunc:
    """The scheduled depthwise PrimFunc; weights from ``pack_weight_dw(w, isa.dw_kg, ...)``.
    ``shared`` (needs :func:`shareable`): the channel count is read from the arguments (as
    :func:`conv_func`'s), so layers that differ only in it (and in the rows per task that
    follow from it, :func:`_rows_per_task`) share the function."""
    isa.register()
    if shared and not shareable(sp):
        raise ValueError(f"a shared depthwise kernel needs batch 1 and a multiple of {BLOCK} "
                         f"channels (got {sp})")
    cb = -(-sp.c // BLOCK)
    t_ow = _divisor_at_most(sp.ow, tile_ow or 8)
    rows = _rows_per_task(sp, cb)
    sch = s_tir.Schedule(te.create_prim_func(_dw_compute(sp, isa, shared)))
    bview = shared and sp.y_layout == "NCHW"  # see out_compute
    io_layouts(sch, sp, "pad", y_blocked_view=bview)
    pad, acc, req = (sch.get_sblock(b) for b in ("pad", "acc", "requant"))
    n, b, i, j, c, ry, rg, *rq = sch.get_loops(acc)
    io, ii = sch.split(i, [None, rows])
    jo, ji = sch.split(j, [None, t_ow])
    sch.reorder(n, b, io, ii, jo, ry, rg, ji, c, *rq)
    task = sch.fuse(n, b, io)
    sch.parallel(task)
    sch.set_scope(acc, 0, isa.acc_scope)
    q = _split_stage(sch, isa.acc_scope, jo)
    sch.reverse_compute_at(req, jo)
    sch.compute_at(pad, task)
    sch.vectorize(sch.get_loops(pad)[-1])
    init = sch.decompose_reduction(acc, ry)
    sch.vectorize(sch.get_loops(init)[-1])
    sch.unroll(ji)
    sch.tensorize(c, isa.intrin(isa.dw_intrin.format(x=sp.x_dtype)))
    _schedule_out(sch, sp, req, jo, bview, q, t_ow)
    return _finish(sch.mod["main"])
