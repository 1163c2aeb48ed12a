"""``lower_qdq``: turn DQ -> Conv/MatMul/Gemm (+bias, +ReLU/Clip) -> Q into integer compute.

Works on the Relax module from ``from_onnx(model, keep_params_in_input=False)``
before legalisation, where ONNX QDQ appears as ``R.dequantize`` /
``R.quantize``. For every ``R.quantize`` whose input is (optionally clipped)
``conv2d|matmul(dequantize(xq), dequantize(Wq)) [+ bias]``, the quantize
binding is replaced by one ``call_tir`` of an integer kernel reading ``xq``
(uint8/int8) and int8 weights, accumulating in int32 and requantising with a
float32 multiplier (round half to even) to the quantize's scale. The float ops it replaced
become dead and are removed; the next layer's ``dequantize`` then reads the
integer kernel's output, so a chain of quantised layers stays in integers.

Anything that does not match keeps the float path and gets a
:class:`LayerReport` saying why; a layer whose inputs *are* quantised but whose
pattern is not supported also raises a :class:`QuantFallbackWarning` naming it.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, replace

import numpy as np
import tvm
import tvm_ffi
from tvm import relax, tirx

from pfcompile.quantexec.kernel_choice import (
    IntKernel,
    select_conv_kernel,
    select_dense_kernel,
    spatial_key,
    supports_blocked,
)
from pfcompile.quantexec.kernels import BLOCK, QConvSpec, QDenseSpec, act_shape
from pfcompile.quantexec.requant import dtype_range, requant_offset, requant_scale

__all__ = ["LayerReport", "QuantFallbackWarning", "lower_qdq", "reports_to_json"]

_ACT_DTYPES = ("uint8", "int8")
_LAYER_OPS = ("relax.nn.conv2d", "relax.matmul")


class QuantFallbackWarning(UserWarning):
    """A quantised layer runs in float because its pattern is not supported."""


@dataclass(frozen=True)
class LayerReport:
    """How one conv / matmul layer runs after :func:`lower_qdq`."""

    node: str
    path: str  # "int8" | "float"
    reason: str
    op: str = ""
    kernel: str = ""  # integer template name when path == "int8"

    def to_json(self) -> dict:
        return asdict(self)


def reports_to_json(reports: list[LayerReport]) -> dict:
    """Summary + per-layer list, the shape ``pfcompile inspect --json`` prints."""
    n_int = sum(r.path == "int8" for r in reports)
    return {"int8_layers": n_int, "float_layers": len(reports) - n_int,
            "layers": [r.to_json() for r in reports]}


class _NoMatch(Exception):
    """Internal: the pattern did not match; message is the reason."""


# ----------------------------------------------------------------------------- helpers
def _ty(expr):
    return getattr(expr, "struct_info", None) or expr.ty


def _shape(expr) -> tuple[int, ...]:
    return tuple(int(s) for s in _ty(expr).shape.values)


def _dtype(expr) -> str:
    return str(_ty(expr).dtype)


class _Graph:
    """Variable -> bound value for the bindings of one function."""

    def __init__(self, func: relax.Function) -> None:
        self.defs: dict = {}
        for block in func.body.blocks:
            for b in block.bindings:
                if isinstance(b, relax.VarBinding):
                    self.defs[b.var] = b.value

    def value(self, expr):
        while isinstance(expr, relax.Var) and expr in self.defs:
            expr = self.defs[expr]
        return expr

    def call(self, expr, op_name: str):
        v = self.value(expr)
        if isinstance(v, relax.Call) and isinstance(v.op, tvm.ir.Op) and v.op.name == op_name:
            return v
        return None

    def const(self, expr) -> np.ndarray | None:
        v = self.value(expr)
        if hasattr(v, "value") and hasattr(v.value, "numpy"):
            return v.value.numpy()
        if hasattr(v, "data") and hasattr(v.data, "numpy"):
            return v.data.numpy()
        return None


def _scalar(g: _Graph, expr, what: str) -> float:
    arr = g.const(expr)
    if arr is None:
        raise _NoMatch(f"{what} is not a constant")
    if arr.size != 1:
        raise _NoMatch(f"{what} is per-channel (only per-tensor is supported here)")
    return arr.reshape(()).item()


def _dq_activation(g: _Graph, expr) -> tuple[relax.Expr, float, int, str]:
    dq = g.call(expr, "relax.dequantize")
    if dq is None:
        raise _NoMatch("input is float (no DequantizeLinear)")
    xq = dq.args[0]
    if g.const(xq) is not None:
        raise _NoMatch("input is a constant")
    dt = _dtype(xq)
    if dt not in _ACT_DTYPES:
        raise _NoMatch(f"input quantised as {dt} (only uint8/int8 activations run integer)")
    sx = float(_scalar(g, dq.args[1], "input scale"))
    zx = int(_scalar(g, dq.args[2], "input zero point"))
    return xq, sx, zx, dt


def _dq_weight(g: _Graph, expr, out_axis: int) -> tuple[np.ndarray, np.ndarray]:
    """int8 weights and per-output-channel scales (length = weight.shape[out_axis])."""
    dq = g.call(expr, "relax.dequantize")
    if dq is None:
        raise _NoMatch("weights are float (no DequantizeLinear)")
    wq = g.const(dq.args[0])
    if wq is None:
        raise _NoMatch("quantised weights are not a constant")
    if wq.dtype == np.uint8:
        raise _NoMatch("uint8 weights (only int8, symmetric weights run integer)")
    if wq.dtype != np.int8:
        raise _NoMatch(f"weights quantised as {wq.dtype} (only int8 containers run integer)")
    sw = g.const(dq.args[1])
    zw = g.const(dq.args[2])
    if sw is None or zw is None:
        raise _NoMatch("weight scale / zero point not constant")
    if np.any(zw != 0):
        raise _NoMatch("asymmetric weights (non-zero weight zero point)")
    noc = wq.shape[out_axis]
    sw = sw.astype(np.float32).reshape(-1)
    if sw.size == 1:
        sw = np.full(noc, sw[0], dtype=np.float32)
    elif sw.size != noc or int(dq.attrs.axis) % wq.ndim != out_axis:
        raise _NoMatch(f"weight scales along axis {int(dq.attrs.axis)} are not per output channel"
                       " (blocked or per-input-channel quantisation)")
    return wq, sw


def _bias_const(g: _Graph, expr) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """A bias (constant, DQ of constants, or a reshape of either): (values, scale, zero
    point) for a DequantizeLinear, (values, None, None) for a plain constant."""
    v = g.value(expr)
    rs = g.call(v, "relax.reshape")
    if rs is not None:
        v = g.value(rs.args[0])
    dq = g.call(v, "relax.dequantize")
    if dq is not None:
        bq, sb, zb = (g.const(a) for a in dq.args[:3])
        if bq is None or sb is None or zb is None:
            raise _NoMatch("bias DequantizeLinear inputs are not constant")
        return bq, sb, zb
    c = g.const(v)
    if c is None:
        raise _NoMatch("bias is not a constant")
    return c, None, None


def _acc_bias(g: _Graph, expr, noc: int, acc_scale: np.ndarray) -> np.ndarray | None:
    """The bias as the integers of a DequantizeLinear whose scale is the accumulator's
    (``float32(sx * sw[c])`` bit for bit) and zero point 0 (onnxruntime's int32 QDQ bias, what
    pfcompile's quantize pass writes): int64 [noc]; None for any other bias."""
    bq, sb, zb = _bias_const(g, expr)
    if sb is None or bq.dtype.kind not in "iu" or bq.size != noc:
        return None
    bq = bq.astype(np.int64).reshape(-1)
    sb = np.broadcast_to(np.asarray(sb, np.float32).reshape(-1), bq.shape)
    zb = np.broadcast_to(np.asarray(zb).astype(np.int64).reshape(-1), bq.shape)
    if np.all(zb == 0) and np.array_equal(sb, np.asarray(acc_scale, np.float32).reshape(-1)):
        return bq
    return None


def _bias(g: _Graph, expr, noc: int, acc_scale: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Bias in accumulator units (int64, rounded), from a const, DQ(int32 const) or a reshape
    of one, and its real value (float64; what the part rounded away is taken from:
    :func:`~pfcompile.quantexec.requant.requant_offset`); the real value is None when the bias
    is in accumulator units already (:func:`_acc_bias`: nothing is rounded away)."""
    acc = _acc_bias(g, expr, noc, acc_scale)
    if acc is not None:
        return acc, None
    bq, sb, zb = _bias_const(g, expr)
    if sb is not None:
        bq = bq.astype(np.int64).reshape(-1)
        sb = np.broadcast_to(sb.astype(np.float32).reshape(-1), bq.shape)
        zb = np.broadcast_to(zb.astype(np.int64).reshape(-1), bq.shape)
        if bq.size != noc:
            raise _NoMatch(f"bias has {bq.size} elements for {noc} channels")
        # the float32 values the graph's DequantizeLinear gives
        real = ((bq - zb).astype(np.float32) * sb.astype(np.float32)).astype(np.float64)
        if np.all(zb == 0) and np.allclose(sb, acc_scale, rtol=1e-6, atol=0):
            return bq, real  # in accumulator units up to float32 rounding of the scale
    else:
        real = bq.astype(np.float64).reshape(-1)
        if real.size == 1:
            real = np.full(noc, real[0])
        if real.size != noc:
            raise _NoMatch(f"bias has {real.size} elements for {noc} channels")
    q = np.round(real / acc_scale.astype(np.float64))
    if np.any(np.abs(q) >= 2**31):
        raise _NoMatch("bias does not fit int32 in accumulator units")
    return q.astype(np.int64), real


def _clamp(g: _Graph, y, sy: float, zy: int, lo: int, hi: int):
    """Peel ReLU / Clip above the layer: return (inner expr, qmin, qmax)."""
    relu = g.call(y, "relax.nn.relu")
    if relu is not None:
        return relu.args[0], max(lo, zy), hi
    clip = g.call(y, "relax.clip")
    if clip is not None:
        a, b = clip.args[1], clip.args[2]
        amin = float(a.value) if hasattr(a, "value") else -np.inf
        amax = float(b.value) if hasattr(b, "value") else np.inf
        qa = lo if not np.isfinite(amin) else int(np.clip(np.round(amin / sy) + zy, lo, hi))
        qb = hi if not np.isfinite(amax) else int(np.clip(np.round(amax / sy) + zy, lo, hi))
        return clip.args[0], max(lo, qa), min(hi, qb)
    return y, lo, hi


def _split_bias(g: _Graph, y):
    """``add(layer, bias)`` -> (layer call, bias expr); ``layer`` -> (layer call, None)."""
    add = g.call(y, "relax.add")
    if add is not None:
        for a, b in ((add.args[0], add.args[1]), (add.args[1], add.args[0])):
            layer = g.value(a)
            if isinstance(layer, relax.Call) and getattr(layer.op, "name", "") in _LAYER_OPS:
                return a, b
        raise _NoMatch("")
    v = g.value(y)
    if isinstance(v, relax.Call) and getattr(v.op, "name", "") in _LAYER_OPS:
        return y, None
    raise _NoMatch("")


# ----------------------------------------------------------------------------- matching
@dataclass
class _Plan:
    """A matched layer; the kernel is chosen once the activation layouts are known."""

    layer_var: relax.Var
    sp: QConvSpec | QDenseSpec
    xq: relax.Expr
    wq: np.ndarray             # int8, OIHW or [O, K]
    bias: np.ndarray           # int64, accumulator units, before the zero-point correction
    p0: np.ndarray
    p1: np.ndarray
    op: str
    kernel: IntKernel | None = None

    @property
    def out_dtype(self) -> str:
        return self.sp.y_dtype

    def build(self, target) -> None:
        """Select the kernel for ``self.sp`` (layouts final) and pack its weights."""
        if isinstance(self.sp, QConvSpec):
            self.kernel = select_conv_kernel(self.sp, target)
        else:
            self.kernel = select_dense_kernel(self.sp, target)

    def out_shape(self) -> tuple[int, ...]:
        if isinstance(self.sp, QConvSpec):
            return act_shape(self.sp.n, self.sp.oc, self.sp.oh, self.sp.ow, self.sp.y_layout)
        return (self.sp.m, self.sp.o)

    def bias_total(self) -> np.ndarray:
        """The int32 bias the kernel adds: the layer's, with ``-(zx + x_offset) * sum(w)``."""
        wsum = self.wq.reshape(self.wq.shape[0], -1).astype(np.int64).sum(axis=1)
        bias_total = self.bias - (self.sp.zx + self.kernel.x_offset) * wsum
        if np.any(np.abs(bias_total) >= 2**31):
            raise _NoMatch("bias with zero-point correction does not fit int32")
        return bias_total.astype(np.int32)

    def args(self) -> list:
        """The kernel's arguments with its own per-channel constants (no ``shared_params``)."""
        return [self.xq, relax.const(self.kernel.pack_weight(self.wq)), *self.channel_args(),
                *self.scalars()]

    def channel_args(self) -> list:
        """Its own per-channel constants: integer bias, scale, offset or float bias."""
        return [relax.const(self.bias_total()), relax.const(self.p0), relax.const(self.p1)]

    def scalars(self) -> list:
        """The kernel's scalar arguments after its tensors (sizes of a spatially shared one)."""
        return [relax.prim_value(tirx.IntImm("int32", int(v))) for v in self.kernel.scalars]


def _share_spatial(plans: dict, target) -> None:
    """Rebuild the conv kernels of layers that differ only in channel counts and spatial
    sizes (:func:`~pfcompile.quantexec.kernel_choice.spatial_key`) as one kernel taking its
    sizes as arguments (ResNet-20: the 3x3 convs of the 8x8 and 4x4 stages, the stride-2
    and 1x1 shortcut convs; MobileNetV2: the 1x1 expansions). Each integer conv kernel is
    ~4 KB of code. A layer whose shared kernel cannot be built keeps its own."""
    import math

    groups: dict = {}
    for p in plans.values():
        if isinstance(p.sp, QConvSpec):
            key = spatial_key(p.sp, target)
            if key is not None:
                groups.setdefault(key, []).append(p)
    for key, ps in groups.items():
        if len({(p.sp.h, p.sp.w) for p in ps}) < 2:
            continue
        t_ow = key[-1][0]
        tiles = math.gcd(*((p.sp.oh * p.sp.ow) // t_ow for p in ps))
        chunk = max(d for d in range(1, min(tiles, 8) + 1) if tiles % d == 0)
        for p in ps:
            old = p.sp
            p.sp = replace(old, spatial=chunk)
            try:
                p.build(target)
            except (ValueError, RuntimeError):
                p.sp = old
                p.build(target)


def _fused_call(gv, f: _FusedDwPw, d: _Plan, p: _Plan, x, params) -> relax.Call:
    """The call of a fused depthwise + 1x1 kernel: the depthwise's arguments, then the 1x1's
    (:mod:`pfcompile.quantexec.dwpw`)."""
    args = [x]
    for plan, pack in ((d, f.pack_dw), (p, f.pack_pw)):
        args.append(relax.const(pack(plan.wq)))
        args += plan.channel_args() if params is None else params.channel_args(plan)
    return relax.call_tir(gv, relax.Tuple(args), relax.TensorType(p.out_shape(), p.out_dtype))


class _SharedParams:
    """The per-channel inputs of every kernel of one epilogue kind (requantising or
    dequantising) as three arrays, one layer after the other (``shared_params``; see
    :class:`~pfcompile.quantexec.kernels.ChannelParams`). Two kinds, not one: a requantising
    layer's offsets are its output zero point (a few distinct values: a small codebook), a
    dequantising one's its float bias (0 where the bias is int32 in accumulator units: then
    it is in the integer bias, else that is 0). A kind's layers whose integer biases need
    fewer bits get a second set of arrays where that saves enough (:func:`_narrow_biases`)."""

    def __init__(self, plans) -> None:
        plans = list(plans)
        self.base: dict[int, int] = {}
        self.key: dict[int, tuple[bool, bool]] = {}
        self.consts: dict[tuple[bool, bool], list] = {}
        parts: dict[tuple[bool, bool], list] = {}
        totals = {id(p): p.bias_total() for p in plans}
        for kind in (False, True):
            ps = [p for p in plans if (p.out_dtype == "float32") == kind]
            narrow = _narrow_biases(ps, totals)
            for p in ps:
                key = (kind, id(p) in narrow)
                self.key[id(p)] = key
                arrs = parts.setdefault(key, [[], [], []])
                self.base[id(p)] = sum(a.size for a in arrs[0])
                for lst, a in zip(arrs, (totals[id(p)], p.p0, p.p1), strict=True):
                    lst.append(np.asarray(a).reshape(-1))
        for key, (b, s, o) in parts.items():
            self.consts[key] = [relax.const(np.concatenate(b).astype(np.int32)),
                                relax.const(np.concatenate(s).astype(np.float32)),
                                relax.const(np.concatenate(o).astype(np.float32))]

    def channel_args(self, p: _Plan) -> list:
        """``p``'s per-channel constants: its kind's shared arrays and its offset in them."""
        return [*self.consts[self.key[id(p)]],
                relax.prim_value(tirx.IntImm("int32", self.base[id(p)]))]

    def call(self, gv, p: _Plan, xq) -> relax.Call:
        args = [xq, relax.const(p.kernel.pack_weight(p.wq)), *self.channel_args(p),
                *p.scalars()]
        return relax.call_tir(gv, relax.Tuple(args), relax.TensorType(p.out_shape(), p.out_dtype))


#: A second set of shared arrays for the narrow integer biases of an epilogue kind must
#: save this many bytes of bias bits: it costs a decoder (~0.4 KB of code) and the headers
#: and VM instructions of three more arrays.
SPLIT_MIN_BYTES = 1536


def _bias_bits(a: np.ndarray) -> int:
    """Bits of a signed integer array (two's complement)."""
    a = np.asarray(a, np.int64)
    if a.size == 0:
        return 1
    return max(int(a.max()).bit_length(), int(-a.min() - 1).bit_length()) + 1


def _narrow_biases(plans: list, totals: dict) -> set[int]:
    """Ids of the plans whose biases go into a second, narrower bias array of their kind:
    one shared array stores every bias at the widest one's bit width (MobileNetV2's
    expansions after a residual sum need 4-6 bits more than the other layers: the input
    zero point times the weight sums, ``bias_total``); split at the width that saves the
    most bits, where that saves :data:`SPLIT_MIN_BYTES`."""
    widths = {id(p): _bias_bits(totals[id(p)]) for p in plans}
    if not widths:
        return set()
    top = max(widths.values())
    best, cut = 0, None
    for t in sorted(set(widths.values()) - {top}):
        n = sum(totals[id(p)].size for p in plans if widths[id(p)] <= t)
        if n * (top - t) > best:
            best, cut = n * (top - t), t
    if cut is None or best < 8 * SPLIT_MIN_BYTES:
        return set()
    return {id(p) for p in plans if widths[id(p)] <= cut}


def _requant_params(sx: float, sw: np.ndarray, sy: float):
    acc_scale = (np.float32(sx) * sw.astype(np.float32)).astype(np.float32)
    return acc_scale, requant_scale(acc_scale.astype(np.float64) / float(sy))


@dataclass(frozen=True)
class _Out:
    """The output side of a matched layer: requantise to ``(sy, zy)`` or dequantise to float."""

    dtype: str  # uint8 | int8 | float32
    sy: float = 1.0
    zy: int = 0
    qmin: int = 0
    qmax: int = 0
    fmin: float = -np.inf
    fmax: float = np.inf


def _epilogue(g: _Graph, out: _Out, sx: float, sw: np.ndarray, bias_expr, noc: int):
    """Per-channel epilogue inputs and the integer bias (accumulator units, int64).

    Requantised output: ``(scale = sx * sw / sy, offset)`` (float32) and the bias rounded
    into accumulator units; ``offset`` is the zero point plus what that rounding left out, in
    output steps (:func:`~pfcompile.quantexec.requant.requant_offset`), so a float bias
    counts exactly as the float model adds it.
    Float output: ``(scale = sx * sw, float bias)`` and an integer bias of 0 (the float bias
    is added after scaling, as the float model does); a bias in accumulator units
    (:func:`_acc_bias`) is the integer bias instead and the float bias is 0.
    Either way, an int32 bias leaves nothing per channel but the scale: the offsets (the
    zero point) and float biases (0) repeat, and the library stores them in a few bits."""
    if out.dtype == "float32":
        acc_scale = (np.float32(sx) * sw.astype(np.float32)).astype(np.float32)
        acc = None if bias_expr is None else _acc_bias(g, bias_expr, noc, acc_scale)
        if acc is not None:
            return acc_scale, np.zeros(noc, np.float32), acc
        fb = np.zeros(noc, np.float32) if bias_expr is None else _float_bias(g, bias_expr, noc)
        return acc_scale, fb, np.zeros(noc, np.int64)
    acc_scale, mult = _requant_params(sx, sw, out.sy)
    if bias_expr is None:
        return mult, np.full(noc, out.zy, np.float32), np.zeros(noc, np.int64)
    bias, real = _bias(g, bias_expr, noc, acc_scale)
    exact_scale = np.float64(np.float32(sx)) * sw.astype(np.float32).astype(np.float64)
    return mult, requant_offset(out.zy, real, bias, exact_scale, out.sy), bias


def _match(g: _Graph, q: relax.Call, target, name: str) -> _Plan:
    out_dtype = str(q.attrs.out_dtype)
    if out_dtype not in _ACT_DTYPES:
        raise _NoMatch(f"output quantised as {out_dtype} (only uint8/int8 run integer)")
    sy = float(_scalar(g, q.args[1], "output scale"))
    zy = int(_scalar(g, q.args[2], "output zero point"))
    lo, hi = dtype_range(out_dtype)
    y, qmin, qmax = _clamp(g, q.args[0], sy, zy, lo, hi)
    return _match_layer(g, y, target, _Out(out_dtype, sy, zy, qmin, qmax))


def _float_clamp(g: _Graph, y):
    """Peel ReLU / Clip for a float output: (inner expr, fmin, fmax)."""
    relu = g.call(y, "relax.nn.relu")
    if relu is not None:
        return relu.args[0], 0.0, np.inf
    clip = g.call(y, "relax.clip")
    if clip is not None:
        a, b = clip.args[1], clip.args[2]
        amin = float(a.value) if hasattr(a, "value") else -np.inf
        amax = float(b.value) if hasattr(b, "value") else np.inf
        return clip.args[0], amin, amax
    return y, -np.inf, np.inf


def _match_float(g: _Graph, top, target) -> _Plan:
    """A layer with quantised inputs and a float output (no QuantizeLinear after it): integer
    accumulation with a float dequantise epilogue (scale, float bias, ReLU / Clip)."""
    y, fmin, fmax = _float_clamp(g, top)
    if _dtype(top) != "float32":
        raise _NoMatch(f"float output is {_dtype(top)} (only float32 is supported)")
    return _match_layer(g, y, target, _Out("float32", fmin=fmin, fmax=fmax))


def _float_bias(g: _Graph, expr, noc: int) -> np.ndarray:
    """A float bias (constant, DQ of a constant, or a reshape of one) as float32 [noc]."""
    bq, sb, zb = _bias_const(g, expr)
    real = bq if sb is None else \
        (bq.astype(np.float64) - zb.astype(np.float64)) * sb.astype(np.float64)
    real = np.asarray(real, np.float32).reshape(-1)
    if real.size == 1:
        real = np.full(noc, real[0], np.float32)
    if real.size != noc:
        raise _NoMatch(f"bias has {real.size} elements for {noc} channels")
    return real


def _match_layer(g: _Graph, y, target, out: _Out) -> _Plan:
    out_dtype = out.dtype
    zy, qmin, qmax = out.zy, out.qmin, out.qmax
    layer_expr, bias_expr = _split_bias(g, y)
    layer_var = layer_expr
    layer = g.value(layer_expr)
    op = layer.op.name
    if op == "relax.nn.conv2d":
        at = layer.attrs
        if (str(at.data_layout), str(at.kernel_layout), str(at.out_layout)) != ("NCHW", "OIHW", "NCHW"):
            raise _NoMatch(f"conv layout {at.data_layout}/{at.kernel_layout} (need NCHW/OIHW)")
        xq, sx, zx, xdt = _dq_activation(g, layer.args[0])
        wq, sw = _dq_weight(g, layer.args[1], 0)
        if wq.ndim != 4:
            raise _NoMatch("conv weights are not 4-D")
        xs = _shape(xq)
        pad = [int(p) for p in at.padding]
        if len(pad) == 2:
            pad = pad * 2
        sp = QConvSpec(
            n=xs[0], c=xs[1], h=xs[2], w=xs[3], oc=wq.shape[0], kh=wq.shape[2], kw=wq.shape[3],
            stride=tuple(int(s) for s in at.strides), padding=tuple(pad),
            dilation=tuple(int(d) for d in at.dilation), groups=int(at.groups),
            x_dtype=xdt, y_dtype=out_dtype, zx=zx, zy=zy, qmin=qmin, qmax=qmax,
            fmin=out.fmin, fmax=out.fmax)
        if _shape(layer) != (sp.n, sp.oc, sp.oh, sp.ow):
            raise _NoMatch("conv output shape does not match its attributes")
        p0, p1, bias = _epilogue(g, out, sx, sw, bias_expr, sp.oc)
        if bias_expr is not None and _shape(g.value(y)) != _shape(layer):
            raise _NoMatch("bias add broadcasts the conv output")
    elif op == "relax.matmul":
        xq, sx, zx, xdt = _dq_activation(g, layer.args[0])
        xs = _shape(xq)
        if len(xs) != 2:
            raise _NoMatch(f"matmul input is {len(xs)}-D (only 2-D runs integer)")
        pd = g.call(layer.args[1], "relax.permute_dims")
        if pd is not None:
            axes = [int(a) for a in pd.attrs.axes] if pd.attrs.axes is not None else [1, 0]
            if axes != [1, 0]:
                raise _NoMatch("weight transpose is not [1, 0]")
            wq, sw = _dq_weight(g, pd.args[0], 0)  # [O, K]
        else:
            wq, sw = _dq_weight(g, layer.args[1], 1)  # [K, O]
            wq = np.ascontiguousarray(wq.T)
        if wq.ndim != 2 or wq.shape[1] != xs[1]:
            raise _NoMatch("matmul weight shape does not match the input")
        sp = QDenseSpec(m=xs[0], k=xs[1], o=wq.shape[0], x_dtype=xdt, y_dtype=out_dtype, zx=zx,
                        zy=zy, qmin=qmin, qmax=qmax, fmin=out.fmin, fmax=out.fmax)
        p0, p1, bias = _epilogue(g, out, sx, sw, bias_expr, sp.o)
        if bias_expr is not None and _shape(g.value(y)) != _shape(layer):
            raise _NoMatch("bias add broadcasts the matmul output")
    else:  # pragma: no cover - _split_bias only returns layer ops
        raise _NoMatch(f"{op} is not an integer layer")
    wsum = wq.reshape(wq.shape[0], -1).astype(np.int64).sum(axis=1)
    if np.any(np.abs(bias - zx * wsum) >= 2**31):
        raise _NoMatch("bias with zero-point correction does not fit int32")
    return _Plan(layer_var, sp, xq, wq, bias, p0, p1, op)


def _layer_has_qdq(g: _Graph, layer: relax.Call) -> bool:
    return any(g.call(a, "relax.dequantize") is not None for a in layer.args[:2]) or any(
        g.call(a, "relax.permute_dims") is not None
        and g.call(g.call(a, "relax.permute_dims").args[0], "relax.dequantize") is not None
        for a in layer.args[1:2])


def _users(func: relax.Function) -> dict:
    """Variable -> list of binding vars (or None for the function result) that read it."""
    users: dict = {}
    for block in func.body.blocks:
        for b in block.bindings:
            if isinstance(b, relax.VarBinding):
                for fv in relax.analysis.free_vars(b.value):
                    users.setdefault(fv, []).append(b.var)
    for fv in relax.analysis.free_vars(func.body.body):
        users.setdefault(fv, []).append(None)
    return users


def _is_const_bias(g: _Graph, expr) -> bool:
    v = g.value(expr)
    rs = g.call(v, "relax.reshape")
    if rs is not None:
        v = g.value(rs.args[0])
    dq = g.call(v, "relax.dequantize")
    if dq is not None:
        v = dq.args[0]
    return g.const(v) is not None


def _float_chain_top(g: _Graph, users: dict, v):
    """Walk up from layer var ``v`` through a sole-user bias add, then a sole-user ReLU/Clip."""
    top = v
    us = users.get(top, [])
    if len(us) == 1 and us[0] is not None:
        add = g.call(us[0], "relax.add")
        if add is not None:
            other = add.args[1] if add.args[0].same_as(top) else add.args[0]
            if _is_const_bias(g, other) and _shape(us[0]) == _shape(top):
                top = us[0]
    us = users.get(top, [])
    if len(us) == 1 and us[0] is not None and (
            g.call(us[0], "relax.nn.relu") is not None or g.call(us[0], "relax.clip") is not None):
        top = us[0]
    return top


def _shared_below(g: _Graph, users: dict, top, layer_var) -> bool:
    """Whether any binding from ``top`` (the quantize's input) down to ``layer_var`` has a
    user besides the next one up the chain."""
    v = top
    while True:
        if len(users.get(v, [])) > 1:
            return True
        if v.same_as(layer_var):
            return False
        val = g.defs.get(v)
        if not isinstance(val, relax.Call) or not val.args:
            return False
        name = getattr(val.op, "name", "")
        if name == "relax.add":
            lhs = g.value(val.args[0])
            nxt = val.args[0] if isinstance(lhs, relax.Call) and \
                getattr(lhs.op, "name", "") in _LAYER_OPS else val.args[1]
        elif name in ("relax.nn.relu", "relax.clip"):
            nxt = val.args[0]
        else:
            return False
        if not isinstance(nxt, relax.Var):
            return False
        v = nxt


_B = f"NCHW{BLOCK}c"


def _unblock_map(ow: int):
    """Index map of a stored blocked activation ``[N, C/8, H*W, 8]`` back to NCHW."""
    return lambda n, cb, px, c: (n, cb * BLOCK + c, px // ow, px % ow)


#: elementwise ops that run on a blocked activation as on an NCHW one when every other
#: operand is a scalar (per-tensor QuantizeLinear / DequantizeLinear, the residual Add, ReLU)
_ELEMENTWISE = ("relax.add", "relax.subtract", "relax.multiply", "relax.maximum",
                "relax.minimum", "relax.nn.relu", "relax.clip", "relax.quantize",
                "relax.dequantize", "relax.astype")


def _is_scalar_operand(expr) -> bool:
    """A non-tensor argument or a constant with one element (broadcast alike in any layout)."""
    if isinstance(expr, tvm.ir.expr.Constant):
        return all(int(d) == 1 for d in expr.ty.shape)
    return not isinstance(expr, relax.Var)


def _elementwise_args(g: _Graph, v) -> list | None:
    """The 4-D activation operands of binding ``v`` if it is an elementwise op that may run
    blocked (its output 4-D with whole blocks of 8 channels, every other operand a scalar),
    else None."""
    val = g.defs.get(v)
    if not (isinstance(val, relax.Call) and isinstance(val.op, tvm.ir.Op)
            and val.op.name in _ELEMENTWISE):
        return None
    try:
        shape = _shape(v)
    except (TypeError, ValueError, AttributeError):
        return None
    if len(shape) != 4 or shape[1] % BLOCK:
        return None
    if val.op.name in ("relax.quantize", "relax.dequantize"):
        operands, scalars = val.args[:1], val.args[1:]
    else:
        operands, scalars = [a for a in val.args if not _is_scalar_operand(a)], []
    if not all(_is_scalar_operand(a) for a in scalars):
        return None
    for a in operands:
        if not isinstance(a, relax.Var):
            return None
        try:
            if _shape(a) != shape:
                return None
        except (TypeError, ValueError, AttributeError):
            return None
    return operands or None


def _blocked_outputs(g: _Graph, users: dict, plans: dict, lowered: dict, target) -> set:
    """The values to keep blocked (``NCHW8c``, stored ``[N, C/8, H*W, 8]``): integer conv
    outputs (the plans' keys) and elementwise ops on them (:data:`_ELEMENTWISE`: the
    residual Add, ReLU, per-tensor Quantize/DequantizeLinear), each with at least one reader
    that takes it blocked (an integer conv whose template reads ``NCHW8c``, or another such
    value; or an elementwise op one of whose operands is blocked for another reader). The
    rest stays NCHW; a blocked value that also has an NCHW reader is turned back for it
    (``layout_transform``). So the layers of a residual network read and write the
    blocked layout on both sides, and their kernels may be shared across spatial sizes
    (:func:`_share_spatial`, which skips layers that read or write NCHW)."""
    cand: set = set()
    ew: dict = {}
    for v, p in plans.items():
        sp = p.sp
        if isinstance(sp, QConvSpec) and sp.oc % BLOCK == 0 and supports_blocked(sp, target):
            cand.add(v)
    for v in g.defs:  # binding order: operands first
        args = _elementwise_args(g, v)
        if args is not None and v not in plans and all(a in cand for a in args):
            cand.add(v)
            ew[v] = args
    readers: dict = {}  # value -> integer convs that would read it blocked
    for p in lowered.values():
        sp = p.sp
        if isinstance(sp, QConvSpec) and sp.c % BLOCK == 0 and supports_blocked(sp, target):
            readers.setdefault(p.xq, []).append(p)
    def read_blocked(v, but=None) -> bool:
        return bool(readers.get(v)) or any(u in cand for u in users.get(v, [])
                                           if u is not None and u is not but)

    while True:
        # an elementwise op whose operand is kept blocked for another reader stays blocked
        # too (one layout_transform back for its NCHW readers, and the integer conv before
        # it writes blocked: ResNet-20's last residual Add, read by the global pool)
        drop = {v for v in cand
                if (v in ew and not all(a in cand for a in ew[v]))
                or (not read_blocked(v)
                    and not (v in ew and any(read_blocked(a, but=v) for a in ew[v])))}
        if not drop:
            return cand
        cand -= drop


def _tensor_qparams(mod: tvm.IRModule, func_name: str) -> tvm.IRModule:
    """The QuantizeLinear / DequantizeLinear ops left in float (residual adds, the model
    input, fake-quantised activations of float layers) with their per-tensor scale and zero
    point as ``(1,)`` tensors instead of scalars.

    TVM's legalisation folds a scalar constant into the kernel as an immediate, so each such
    op was a kernel of its own (8 ``quantize`` kernels of 4 shapes in an int8 ResNet-20, 30
    fused quantize-dequantize kernels in a codebook MobileNetV2); with the parameters as
    tensor arguments, ops of one shape share one kernel (and so do the kernels they fuse
    into). The same arithmetic on the same values (``x / s`` with ``s`` read from memory),
    so the same outputs."""
    func = mod[func_name]

    def key(call):
        """The op and its input and output types, for per-tensor ops with scalar constant
        parameters (else None)."""
        if not (isinstance(call, relax.Call) and isinstance(call.op, tvm.ir.Op)
                and call.op.name in ("relax.quantize", "relax.dequantize")):
            return None
        if not all(isinstance(a, tvm.ir.expr.Constant) and len(a.ty.shape) == 0
                   for a in call.args[1:3]):
            return None
        try:
            return (call.op.name, tuple(int(d) for d in _shape(call.args[0])),
                    _dtype(call.args[0]), str(call.attrs.out_dtype))
        except (TypeError, ValueError, AttributeError):
            return None

    # only ops with a twin of the same op and types: a lone one would gain nothing and
    # store its two parameters as constants (~80 bytes each)
    seen: dict = {}
    for block in func.body.blocks:
        for b in block.bindings:
            k = key(b.value) if isinstance(b, relax.VarBinding) else None
            if k is not None:
                seen[k] = seen.get(k, 0) + 1
    if not any(n >= 2 for n in seen.values()):
        return mod  # nothing to share: the module as it was (a float model: untouched)

    @relax.expr_functor.mutator
    class _Rewrite(relax.PyExprMutator):
        def visit_call_(self, call):
            call = super().visit_call_(call)
            k = key(call)
            if k is None or seen.get(k, 0) < 2:
                return call
            args = list(call.args)
            for i in (1, 2):
                args[i] = relax.const(args[i].value.numpy().reshape(1))
            return relax.Call(call.op, args, call.attrs)

    out = tvm.IRModule(dict(mod.functions), attrs=mod.attrs)
    out[func_name] = _Rewrite(mod).visit_expr(func)
    return relax.transform.Normalize()(out)


#: a depthwise -> 1x1 pair fuses only where the map has this many output rows: the fused
#: kernel is parallel over bands of rows alone (as the fp32 ``dwpw``'s 7 rows per core)
DWPW_MIN_ROWS = 14
#: fuse on VNNI targets too: off, as whole MobileNetV2 int8 on ``host`` (one thread, min of
#: 15 alternating rounds) took 1.007x the unfused build's time (AVX2: 0.963x); the fused
#: template is bit-exact there too (tests/test_quantexec_dwpw.py turns this on)
DWPW_ON_VNNI = False


@dataclass(frozen=True)
class _FusedDwPw:
    """A depthwise plan and the 1x1 plan that reads its 8-bit output, as one kernel
    (:mod:`pfcompile.quantexec.dwpw`)."""

    dw_key: relax.Var
    name: str
    func: tirx.PrimFunc
    pack_dw: object
    pack_pw: object


def _fuse_dwpw(users: dict, plans: dict, target) -> dict:
    """1x1 plan key -> :class:`_FusedDwPw` for every requantising depthwise whose 8-bit
    output is read by one DequantizeLinear whose one reader is an integer 1x1 conv, both
    on the same x86 instruction set (:func:`~pfcompile.quantexec.dwpw.dwpw_eligible`; VNNI
    only with :data:`DWPW_ON_VNNI`), the map at least :data:`DWPW_MIN_ROWS` rows high. A pair whose fused kernel cannot be
    built stays unfused."""
    from pfcompile.quantexec.kernel_choice import int8_dot_kind

    if int8_dot_kind(target) != "x86":
        return {}
    from pfcompile.quantexec import dwpw, x86
    from pfcompile.quantexec.blocked import pack_weight_conv

    out: dict = {}
    for v, p in plans.items():
        d = plans.get(p.xq)
        if not (isinstance(p.sp, QConvSpec) and d is not None and isinstance(d.sp, QConvSpec)
                and d.sp.depthwise and d.sp.oh >= DWPW_MIN_ROWS):
            continue
        us = users.get(p.xq, [])
        if len(us) != 1 or us[0] is None or [u for u in users.get(us[0], [])] != [p.layer_var]:
            continue  # the depthwise's output has another reader
        isa = x86.VNNI if x86._vnni_ok(d.sp, target) else x86.AVX2
        if (x86.VNNI if x86._vnni_ok(p.sp, target) else x86.AVX2) is not isa \
                or d.kernel.name != isa.dw_name or p.kernel.name != isa.conv_name \
                or (isa is x86.VNNI and not DWPW_ON_VNNI):
            continue
        try:
            func = dwpw.dwpw_func(d.sp, p.sp, isa)
        except (ValueError, RuntimeError):
            continue
        dtype = np.int8 if isa is x86.VNNI else np.int16
        out[v] = _FusedDwPw(p.xq, dwpw.dwpw_name(isa), func, d.kernel.pack_weight,
                            lambda w, kg=isa.conv_kg, dt=dtype: pack_weight_conv(w, kg, dt))
    return out


# ----------------------------------------------------------------------------- the pass
def lower_qdq(mod: tvm.IRModule, target, layer_names: list[str] | None = None,
              *, func_name: str = "main", shared_params: bool = True,
              spatial: bool = True, fuse_dwpw: bool | None = None,
              ) -> tuple[tvm.IRModule, list[LayerReport]]:
    """Rewrite matched QDQ layers of ``mod[func_name]`` into integer kernels.

    ``target`` is a pfcompile :class:`~pfcompile.targets.Target` (its
    ``hardware.int8_dot`` picks the templates). ``layer_names``, if given, are
    the ONNX node names of the Conv/MatMul/Gemm nodes in graph order (see
    :func:`pfcompile.quantexec.onnx_layer_names`); they label the reports.
    Returns the new module and one :class:`LayerReport` per conv/matmul.
    ``shared_params``: the kernels read their per-channel bias, scale and offset from arrays
    shared by all layers (:class:`~pfcompile.quantexec.kernels.ChannelParams`), else each
    layer has its own three constants. ``spatial``: layers that differ only in channel counts
    and spatial sizes share one conv kernel (:func:`_share_spatial`). ``fuse_dwpw``: a
    requantising depthwise and the 1x1 conv that alone reads it run as one kernel on x86
    (:func:`_fuse_dwpw`); None: unless the environment sets ``PFCOMPILE_INT8_DWPW=0``.
    """
    func = mod[func_name]
    g = _Graph(func)
    layers = [v for v, e in g.defs.items()
              if isinstance(e, relax.Call) and getattr(e.op, "name", "") in _LAYER_OPS]
    names = {v: (layer_names[i] if layer_names and i < len(layer_names) else f"{g.defs[v].op.name.split('.')[-1]}_{i}")
             for i, v in enumerate(layers)}
    plans: dict = {}
    reasons: dict = {}
    users = _users(func)
    for var, val in g.defs.items():
        if not (isinstance(val, relax.Call) and getattr(val.op, "name", "") == "relax.quantize"):
            continue
        try:
            plan = _match(g, val, target, "")
            if _shared_below(g, users, val.args[0], plan.layer_var):
                # the conv (or its bias add / ReLU) also feeds a float op (a residual Add):
                # lowering the Q path alone would keep the float conv alive for that user,
                # computing the layer twice. The float-epilogue match below takes the layer
                # once; this QuantizeLinear stays a float op on its output.
                continue
            plans[var] = plan
        except _NoMatch as exc:
            if str(exc):
                # attribute the reason to the layer under this quantize, if any
                try:
                    inner, _, _ = _clamp(g, val.args[0], 1.0, 0, -128, 255)
                    lv, _ = _split_bias(g, inner)
                    reasons.setdefault(lv, str(exc))
                except _NoMatch:
                    pass
    lowered = {p.layer_var: p for p in plans.values()}
    # layers with quantised inputs and no QuantizeLinear after them: integer accumulation with
    # a float epilogue, replacing the binding at the top of conv/matmul [+bias] [+ReLU/Clip]
    float_out: set = set()
    for v in layers:
        if v in lowered or not _layer_has_qdq(g, g.defs[v]):
            continue
        top = _float_chain_top(g, users, v)
        try:
            plan = _match_float(g, top, target)
        except _NoMatch as exc:
            if str(exc):
                reasons.setdefault(v, str(exc))
            continue
        if plan.layer_var != v:  # pragma: no cover - the chain is walked from v itself
            continue
        plans[top] = plan
        lowered[v] = plan
        float_out.add(v)
    while True:
        # an integer kernel whose schedule cannot be built for a layer's shape leaves that
        # layer float, with the reason: a correct, slower layer, never a failed compile (seen:
        # 18 of 54 layers of a pruned PP-OCR classifier with the earlier templates). Layouts
        # depend on which neighbours run integer, so they are chosen again without it.
        blocked = _blocked_outputs(g, users, plans, lowered, target)
        failed: dict = {}
        for v, p in plans.items():
            if isinstance(p.sp, QConvSpec):
                p.sp = replace(p.sp, x_layout=_B if p.xq in blocked else "NCHW",
                               y_layout=_B if v in blocked else "NCHW")
            p.sp = replace(p.sp, shared_params=shared_params)
            try:
                p.build(target)
            except (ValueError, RuntimeError) as exc:  # s_tir.ScheduleError is a RuntimeError
                failed[v] = exc
        if not failed:
            if spatial:
                _share_spatial(plans, target)
            break
        for v, exc in failed.items():
            p = plans.pop(v)
            lowered.pop(p.layer_var, None)
            float_out.discard(p.layer_var)
            first = str(exc).strip().splitlines()
            reasons[p.layer_var] = (f"no integer kernel schedule for this shape "
                                    f"({type(exc).__name__}: {first[0][:120] if first else ''})")
    if fuse_dwpw is None:
        import os

        fuse_dwpw = os.environ.get("PFCOMPILE_INT8_DWPW", "1") != "0"
    fused = _fuse_dwpw(users, plans, target) if fuse_dwpw else {}
    fused_dw = {f.dw_key: k for k, f in fused.items()}
    fused_layer = {}  # layer var -> (kernel name, note)
    for k, f in fused.items():
        fused_layer[plans[k].layer_var] = (f.name, ", fused with the depthwise before it")
        fused_layer[plans[f.dw_key].layer_var] = (f.name, ", fused with the 1x1 conv after it")
    reports: list[LayerReport] = []
    for v in layers:
        layer = g.defs[v]
        op = layer.op.name.split(".")[-1]
        if v in lowered:
            how = (f"matched DQ->{op} (no Q after it: int32 accumulation, float epilogue)"
                   if v in float_out else f"matched DQ->{op}->Q")
            kname, note = fused_layer.get(v, (lowered[v].kernel.name, ""))
            reports.append(LayerReport(names[v], "int8", how + note, op, kname))
            continue
        has_qdq = _layer_has_qdq(g, layer)
        reason = reasons.get(v) or ("inputs are quantised but the output is not followed by a "
                                    "QuantizeLinear" if has_qdq else "not quantised")
        reports.append(LayerReport(names[v], "float", reason, op))
        if has_qdq:
            warnings.warn(f"quantised layer '{names[v]}' ({op}) runs in float: {reason}",
                          QuantFallbackWarning, stacklevel=2)
    if not plans:
        return _tensor_qparams(mod, func_name), reports

    bb = relax.BlockBuilder(mod)
    gvars = {}
    # layers whose kernels are the same function (same shapes, zero points and bounds;
    # 22 layers -> 12 kernels in ResNet-20) share one: each copy costs ~9 KB of code
    shared: list[tuple[tirx.PrimFunc, relax.GlobalVar]] = []
    for i, (qvar, p) in enumerate(plans.items()):
        if qvar in fused_dw:
            continue  # runs inside the fused kernel of its 1x1 conv
        kfunc = fused[qvar].func if qvar in fused else p.kernel.func
        same = next((gv for f, gv in shared
                     if tvm_ffi.structural_equal(f, kfunc, map_free_vars=True)), None)
        if same is None:
            kname = f"q{'dwpw' if qvar in fused else p.op.split('.')[-1]}_{i}"
            same = bb.add_func(kfunc.with_attr("global_symbol", kname), kname)
            shared.append((kfunc, same))
        gvars[qvar] = same
    params = _SharedParams(plans.values()) if shared_params else None
    new_blocks = []
    renamed: dict = {}  # a blocked kernel output: NCHW var -> its blocked var
    for block in func.body.blocks:
        new_bindings = []
        for b in block.bindings:
            if isinstance(b, relax.VarBinding) and b.var in fused_dw:
                new_bindings.append(b)  # float QuantizeLinear, dead: its one reader is fused
            elif isinstance(b, relax.VarBinding) and b.var in plans:
                p = plans[b.var]
                xq = renamed.get(p.xq, p.xq)
                if b.var in fused:
                    f = fused[b.var]
                    d = plans[f.dw_key]
                    call = _fused_call(gvars[b.var], f, d, p, renamed.get(d.xq, d.xq), params)
                elif params is not None:
                    call = params.call(gvars[b.var], p, xq)
                else:
                    args = p.args()
                    args[0] = xq
                    call = relax.call_tir(gvars[b.var], relax.Tuple(args),
                                          relax.TensorType(p.out_shape(), p.out_dtype))
                if b.var in blocked:
                    # the NCHW name stays bound (to a layout_transform that DCE removes, as
                    # every user reads the blocked var)
                    nv = type(b.var)(f"{b.var.name}_nchw{BLOCK}c",
                                     relax.TensorType(p.out_shape(), p.out_dtype))
                    new_bindings.append(relax.VarBinding(nv, call))
                    new_bindings.append(relax.VarBinding(
                        b.var, relax.op.layout_transform(nv, _unblock_map(p.sp.ow))))
                    renamed[b.var] = nv
                else:
                    new_bindings.append(relax.VarBinding(b.var, call))
            elif isinstance(b, relax.VarBinding) and b.var in blocked:
                # an elementwise op on blocked operands (see _blocked_outputs)
                n, c, h, w = _shape(b.var)
                val = b.value
                args = [renamed.get(a, a) if isinstance(a, relax.Var) else a for a in val.args]
                nv = type(b.var)(f"{b.var.name}_nchw{BLOCK}c",
                                 relax.TensorType(act_shape(n, c, h, w, _B), _dtype(b.var)))
                new_bindings.append(relax.VarBinding(nv, relax.Call(val.op, args, val.attrs,
                                                                      val.ty_args)))
                new_bindings.append(relax.VarBinding(
                    b.var, relax.op.layout_transform(nv, _unblock_map(w))))
                renamed[b.var] = nv
            else:
                new_bindings.append(b)
        new_blocks.append(type(block)(new_bindings))
    new_body = relax.SeqExpr(new_blocks, func.body.body)
    new_func = relax.Function(func.params, new_body, func.ret_ty, func.is_pure, func.attrs)
    gv_main = bb.get().get_global_var(func_name)
    bb.update_func(gv_main, new_func)
    out = bb.get()
    out = relax.transform.Normalize()(out)
    out = relax.transform.DeadCodeElimination([func_name])(out)
    return _tensor_qparams(out, func_name), reports
