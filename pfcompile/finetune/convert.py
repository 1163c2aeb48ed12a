"""ONNX graph -> trainable torch module, interpreted node by node.

:func:`onnx_to_torch` keeps the ONNX graph as it is (node order, value names,
pruned shapes) and runs it with torch ops, so that it can be trained and its
parameters written back into the very same graph (:mod:`pfcompile.finetune.export`).

* Float initializers read as weights or biases (Conv, Gemm, MatMul,
  Add/Sub/Mul/Div operands, BatchNormalization scale and bias, and the float
  input of a QuantizeLinear) become ``nn.Parameter``; everything else (shapes,
  scales, zero points, BatchNormalization running statistics, Clip bounds) is a
  buffer and stays fixed. BatchNormalization always uses its running statistics
  (fine-tuning keeps the inference-time normalisation) and Dropout is the
  identity, in training as in inference.
* QDQ nodes are fake quantization with a straight-through estimator
  (:mod:`pfcompile.finetune.fakequant`). A weight stored as an integer
  initializer and read by DequantizeLinear gets a float shadow parameter
  ``(q - zp) * s`` that is re-quantized (per channel along the node's axis, to
  the weight's bit range) in every forward pass. The bit range comes from the
  DequantizeLinear's ``metadata_props["pfcompile.bits"]`` when present (written by
  :mod:`pfcompile.passes.quantize`: symmetric ``[-(2^(b-1)-1), 2^(b-1)-1]``), else
  from the stored codes. An ``int32`` bias read by DequantizeLinear (onnxruntime's QDQ bias,
  what the quantize pass writes: accumulator units) is trained the same way, re-quantized
  to whole accumulator units, and never masked. An activation QuantizeLinear saturates at its container's
  range (uint8 0..255) whatever its ``pfcompile.bits`` says, exactly as
  onnxruntime runs it: the quantize pass's sub-8-bit activations are a scale that
  maps the calibrated range onto ``2^b`` levels, not a clamp.
* Codebook weights (``Cast(indices) -> Gather(codebook)``): the float centroids are
  trained (gradients of all weights sharing a centroid add up, as in Deep
  Compression's fine-tuning); the indices are integers and stay fixed.
* Sparsified models (model metadata ``pfcompile.sparsity``, or ``keep_zeros=True``):
  every weight that is zero stays zero (a fixed 0/1 mask multiplies the Conv /
  Gemm / MatMul weight or the quantized weight's shadow), so fine-tuning keeps
  the sparsity pattern.
* Batch size: the graph may have been exported with a fixed batch (usually 1).
  With ``dynamic_batch=True`` (the default) a Reshape whose target shape starts
  with that fixed batch, applied to a tensor whose first dim is the running
  batch, keeps the running batch instead; every other op is shape-generic.
* An op outside the supported set raises :class:`UnsupportedOpError` naming the
  node, at conversion time.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from pfcompile.errors import ModelError, UnsupportedOpError
from pfcompile.finetune import fakequant as fq

__all__ = ["SUPPORTED_OPS", "OnnxModule", "QuantWeight", "onnx_to_torch"]

_INT64_MAX = 2**63 - 1


@dataclass(frozen=True)
class QuantWeight:
    """An integer weight initializer read by DequantizeLinear, trained through a float shadow."""

    name: str  # the integer initializer's name in the ONNX graph
    key: str  # the shadow parameter's key in ``OnnxModule.params``
    scale: str  # value names of the DQ's scale and zero point
    zero_point: str | None
    axis: int
    qmin: int
    qmax: int
    elem_type: int  # ONNX element type of the stored integers


@dataclass
class _Node:
    index: int
    name: str
    op: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict
    meta: dict[str, str] = field(default_factory=dict)  # the node's metadata_props
    quant: QuantWeight | None = None  # set on a DequantizeLinear of a quantized weight
    qrange: tuple[int, int] | None = None  # QuantizeLinear's output range


# (op_type, input index) pairs whose float initializer is trained
_TRAINABLE = {
    ("Conv", 1), ("Conv", 2), ("Gemm", 0), ("Gemm", 1), ("Gemm", 2), ("MatMul", 0), ("MatMul", 1),
    ("Add", 0), ("Add", 1), ("Sub", 0), ("Sub", 1), ("Mul", 0), ("Mul", 1), ("Div", 0),
    ("BatchNormalization", 1), ("BatchNormalization", 2), ("QuantizeLinear", 0),
    ("Gather", 0),  # a float table read by Gather: codebook centroids (indices stay fixed)
}
# weight inputs whose zeros a sparsified model keeps (see ``keep_zeros``)
_WEIGHT_INPUTS = {("Conv", 1), ("Gemm", 0), ("Gemm", 1), ("MatMul", 0), ("MatMul", 1)}
SPARSITY_KEY = "pfcompile.sparsity"  # model metadata written by pfcompile.passes.sparsify
BITS_KEY = "pfcompile.bits"  # node metadata written by pfcompile.passes.quantize


def _key(name: str, used: set[str]) -> str:
    base = "".join(c if c.isalnum() or c == "_" else "_" for c in name) or "v"
    if base[0].isdigit():
        base = "v" + base
    k, i = base, 1
    while k in used:
        k, i = f"{base}_{i}", i + 1
    used.add(k)
    return k


def _attrs(node: onnx.NodeProto) -> dict:
    out = {}
    for a in node.attribute:
        v = helper.get_attribute_value(a)
        if isinstance(v, bytes):
            v = v.decode()
        elif isinstance(v, list) and v and isinstance(v[0], bytes):
            v = [s.decode() for s in v]
        elif isinstance(v, onnx.TensorProto):
            v = numpy_helper.to_array(v)
        out[a.name] = v
    return out


def _to_torch(arr: np.ndarray) -> torch.Tensor:
    arr = np.asarray(arr)
    if arr.dtype == np.float64 or arr.dtype == np.float16:
        arr = arr.astype(np.float32)
    elif arr.dtype.kind in "iu" and arr.dtype != np.int64:
        # integer codes, zero points, indices: int64 for indices, float for the rest
        arr = arr.astype(np.int64)
    elif arr.dtype == np.bool_:
        return torch.from_numpy(arr.copy())
    elif arr.dtype.kind not in "fiub":  # int4 / uint4 come back as ml_dtypes
        arr = arr.astype(np.int64)
    return torch.from_numpy(np.array(arr, copy=True, order="C"))


def _ints(t: torch.Tensor | None) -> list[int]:
    return [] if t is None else [int(v) for v in t.reshape(-1).tolist()]


def _float(t: torch.Tensor) -> torch.Tensor:
    return t if t.is_floating_point() else t.to(torch.float32)


class OnnxModule(nn.Module):
    """A torch module that runs an ONNX graph node by node (see module docstring)."""

    def __init__(self, model: onnx.ModelProto, *, dynamic_batch: bool = True,
                 keep_zeros: bool | None = None) -> None:
        super().__init__()
        g = model.graph
        if keep_zeros is None:
            keep_zeros = any(p.key == SPARSITY_KEY for p in model.metadata_props)
        self.keep_zeros = keep_zeros
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
        inits = {t.name: t for t in g.initializer}
        self.input_names = [v.name for v in g.input if v.name not in inits]
        self.output_names = [v.name for v in g.output]
        self.dynamic_batch = dynamic_batch
        self.static_batch: int | None = None
        if self.input_names:
            dims = g.input[[v.name for v in g.input].index(self.input_names[0])].type.tensor_type.shape.dim
            if dims and dims[0].HasField("dim_value"):
                self.static_batch = int(dims[0].dim_value)

        self.params = nn.ParameterDict()
        self.key_of: dict[str, str] = {}  # ONNX initializer name -> param key (trained floats)
        self.quant_weights: dict[str, QuantWeight] = {}
        self._buffer_key: dict[str, str] = {}
        self._mask_key: dict[str, str] = {}  # param key -> buffer key of its 0/1 sparsity mask
        used: set[str] = set()

        self.nodes: list[_Node] = []
        consumers: dict[str, list[tuple[str, int]]] = {}
        identity_out: dict[str, list[str]] = {}
        for i, n in enumerate(g.node):
            name = n.name or f"{n.op_type}_{i}"
            if n.domain not in ("", "ai.onnx"):
                raise UnsupportedOpError(name, f"{n.domain}::{n.op_type}", "custom domains are not supported")
            if n.op_type not in _OPS:
                raise UnsupportedOpError(
                    name, n.op_type, "finetune's converter supports " + ", ".join(sorted(_OPS)))
            meta = {e.key: e.value for e in getattr(n, "metadata_props", ())}
            node = _Node(i, name, n.op_type, list(n.input), list(n.output), _attrs(n), meta)
            _check_attrs(node)
            self.nodes.append(node)
            for j, v in enumerate(n.input):
                if v:
                    consumers.setdefault(v, []).append((n.op_type, j))
            if n.op_type == "Identity":
                identity_out.setdefault(n.input[0], []).append(n.output[0])

        def uses(v: str, depth: int = 0) -> list[tuple[str, int]]:
            # consumers of a value, looking through Identity (weights shared by the exporter)
            out = [(op, j) for op, j in consumers.get(v, []) if op != "Identity"]
            for w in identity_out.get(v, []) if depth < 16 else []:
                out += uses(w, depth + 1)
            return out

        for t in g.initializer:
            arr = numpy_helper.to_array(t)
            used_as = uses(t.name)
            is_float = t.data_type in (TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16)
            if is_float and used_as and all(u in _TRAINABLE for u in used_as):
                k = _key(t.name, used)
                self.params[k] = nn.Parameter(_to_torch(arr))
                self.key_of[t.name] = k
                if keep_zeros and all(u in _WEIGHT_INPUTS for u in used_as):
                    self._add_mask(k, arr != 0, used)
            else:
                k = _key("buf_" + t.name, used)  # prefixed: no clash with nn.Module attributes
                self.register_buffer(k, _to_torch(arr))
                self._buffer_key[t.name] = k

        # quantized integer weights read by DequantizeLinear: float shadow parameters
        for node in self.nodes:
            if node.op == "QuantizeLinear":
                node.qrange = _q_range(node, inits)
            if node.op != "DequantizeLinear" or node.inputs[0] not in inits:
                continue
            t = inits[node.inputs[0]]
            rng = fq.dtype_range(t.data_type)
            if rng is None or node.inputs[0] in self.quant_weights:
                continue
            if any(op != "DequantizeLinear" for op, _ in uses(t.name)):
                continue
            if node.attrs.get("block_size"):
                raise UnsupportedOpError(node.name, node.op, "blocked quantization (block_size) is not supported")
            q = numpy_helper.to_array(t).astype(np.int64)
            qmin, qmax = _weight_range(node, q, t.data_type)
            scale = self._const(node.inputs[1])
            zp = self._const(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] else None
            axis = int(node.attrs.get("axis", 1))
            with torch.no_grad():
                w = fq.dequantize(torch.from_numpy(q).float(), scale.float(),
                                  torch.zeros(()) if zp is None else zp.float(), axis)
            k = _key(t.name + "_float", used)
            self.params[k] = nn.Parameter(w.contiguous())
            if keep_zeros and t.data_type != TensorProto.INT32:  # an int32 bias is no weight
                self._add_mask(k, q != 0, used)
            qw = QuantWeight(t.name, k, node.inputs[1], node.inputs[2] if zp is not None else None,
                             axis, qmin, qmax, t.data_type)
            self.quant_weights[t.name] = qw
        for node in self.nodes:
            if node.op == "DequantizeLinear" and node.inputs[0] in self.quant_weights:
                node.quant = self.quant_weights[node.inputs[0]]

    def _add_mask(self, key: str, nonzero: np.ndarray, used: set[str]) -> None:
        if nonzero.all():
            return
        mk = _key(f"mask_{key}", used)
        self.register_buffer(mk, torch.from_numpy(np.ascontiguousarray(nonzero)).to(torch.float32))
        self._mask_key[key] = mk

    # -- values ---------------------------------------------------------------
    def param_value(self, key: str) -> torch.Tensor:
        """A trained parameter as the graph sees it: with its sparsity mask applied
        (zeros of a sparsified weight stay zero), else as it is."""
        p = self.params[key]
        mk = self._mask_key.get(key)
        return p if mk is None else p * getattr(self, mk)

    def _const(self, name: str) -> torch.Tensor:
        if name in self.key_of:
            return self.param_value(self.key_of[name])
        if name in self._buffer_key:
            return getattr(self, self._buffer_key[name])
        raise ModelError(f"value '{name}' must be an initializer")

    def initializer_values(self) -> dict[str, torch.Tensor]:
        """Current values of every trained initializer, keyed by ONNX name (float
        initializers as they are, quantized weights as their float shadow)."""
        out = {n: self.param_value(k) for n, k in self.key_of.items()}
        out.update({n: self.param_value(q.key) for n, q in self.quant_weights.items()})
        return out

    def forward(self, *args: torch.Tensor):
        env = self.run_all(*args)
        res = tuple(env[o] for o in self.output_names)
        return res[0] if len(res) == 1 else res

    def run_all(self, *args: torch.Tensor) -> dict[str, torch.Tensor]:
        """Run the graph and return every value by name (inputs, initializers,
        intermediate and output tensors)."""
        if len(args) == 1 and isinstance(args[0], dict):
            feeds = args[0]
        else:
            if len(args) != len(self.input_names):
                raise ModelError(f"model takes inputs {self.input_names}, got {len(args)} tensors")
            feeds = dict(zip(self.input_names, args))
        env: dict[str, torch.Tensor] = {}
        for n, k in self.key_of.items():
            env[n] = self.param_value(k)
        for n, k in self._buffer_key.items():
            env[n] = getattr(self, k)
        env.update(feeds)
        for node in self.nodes:
            xs = [env[v] if v else None for v in node.inputs]
            outs = _OPS[node.op](self, node, xs)
            for name, val in zip(node.outputs, outs):
                if name:
                    env[name] = val
        return env


def onnx_to_torch(model: onnx.ModelProto, *, dynamic_batch: bool = True,
                  keep_zeros: bool | None = None) -> OnnxModule:
    """Convert an ONNX model (the op set pfcompile's passes produce) to a trainable
    :class:`OnnxModule`; see the module docstring for what is trained.
    ``keep_zeros=None`` keeps weight zeros fixed when the model was sparsified."""
    return OnnxModule(model, dynamic_batch=dynamic_batch, keep_zeros=keep_zeros)


def _weight_range(node: _Node, q: np.ndarray, elem_type: int) -> tuple[int, int]:
    """Code range of a quantized weight: from the node's ``pfcompile.bits`` (the quantize
    pass's symmetric ``[-(2^(b-1)-1), 2^(b-1)-1]`` in a signed container, ``[0, 2^b-1]``
    in an unsigned one), else the narrowest bit range holding the stored codes."""
    raw = node.meta.get(BITS_KEY)
    if raw is None:
        return fq.stored_range(q, elem_type)
    full = fq.dtype_range(elem_type)
    try:
        bits = int(raw)
    except ValueError:
        bits = 0
    if full is None or not 2 <= bits <= 8 or (1 << bits) - 1 > full[1] - full[0]:
        raise ModelError(f"node '{node.name}' ({node.op}): {BITS_KEY}={raw!r} is not a bit width its "
                         f"{helper.tensor_dtype_to_string(elem_type)} weight can hold")
    lo, hi = (-((1 << (bits - 1)) - 1), (1 << (bits - 1)) - 1) if full[0] < 0 else (0, (1 << bits) - 1)
    if q.size and (q.min() < lo or q.max() > hi):
        raise ModelError(f"node '{node.name}' ({node.op}): {BITS_KEY}={bits} but its weight '{node.inputs[0]}' "
                         f"holds codes in [{q.min()}, {q.max()}], outside [{lo}, {hi}]")
    return lo, hi


# ----------------------------------------------------------------------------- checks
def _q_range(node: _Node, inits: dict[str, onnx.TensorProto]) -> tuple[int, int]:
    if len(node.inputs) > 2 and node.inputs[2]:
        zp = node.inputs[2]
        if zp not in inits:
            raise UnsupportedOpError(node.name, node.op, "the zero point must be an initializer")
        et = inits[zp].data_type
    else:
        et = int(node.attrs.get("output_dtype", 0)) or TensorProto.UINT8
    rng = fq.dtype_range(et)
    if rng is None:
        raise UnsupportedOpError(node.name, node.op,
                                 f"quantized type {helper.tensor_dtype_to_string(et)} is not supported")
    if node.attrs.get("block_size"):
        raise UnsupportedOpError(node.name, node.op, "blocked quantization (block_size) is not supported")
    return rng


def _check_attrs(node: _Node) -> None:
    a = node.attrs
    if node.op in ("Conv", "MaxPool", "AveragePool") and \
            a.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER"):
        raise UnsupportedOpError(node.name, node.op, f"auto_pad={a['auto_pad']}")
    if node.op == "MaxPool" and len([o for o in node.outputs if o]) > 1:
        raise UnsupportedOpError(node.name, node.op, "the Indices output is not supported")
    if node.op == "MaxPool" and a.get("storage_order", 0):
        raise UnsupportedOpError(node.name, node.op, "storage_order=1 is not supported")
    if node.op == "Pad" and a.get("mode", "constant") not in ("constant", "reflect", "edge"):
        raise UnsupportedOpError(node.name, node.op, f"mode={a['mode']}")
    if node.op == "Resize":
        mode = a.get("mode", "nearest")
        ctm = a.get("coordinate_transformation_mode", "half_pixel")
        ok = (mode == "nearest" and ctm == "asymmetric" and a.get("nearest_mode", "round_prefer_floor") == "floor") \
            or (mode == "linear" and ctm in ("half_pixel", "pytorch_half_pixel", "align_corners"))
        if not ok:
            raise UnsupportedOpError(
                node.name, node.op,
                f"mode={mode}, coordinate_transformation_mode={ctm}; supported: nearest+asymmetric+floor, "
                "linear+half_pixel|pytorch_half_pixel|align_corners")


# ----------------------------------------------------------------------------- ops
Op = Callable[[OnnxModule, _Node, list], Sequence[torch.Tensor]]


def _spatial_pads(node: _Node, x: torch.Tensor, kernel: list[int], strides: list[int],
                  dilations: list[int]) -> list[int]:
    """ONNX pads [b1, b2, ..., e1, e2, ...] including auto_pad resolution."""
    k = len(kernel)
    mode = node.attrs.get("auto_pad", "NOTSET")
    if mode == "VALID":
        return [0] * (2 * k)
    if mode in ("SAME_UPPER", "SAME_LOWER"):
        begins, ends = [], []
        for i in range(k):
            size = x.shape[2 + i]
            out = math.ceil(size / strides[i])
            total = max(0, (out - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - size)
            small, big = total // 2, total - total // 2
            begins.append(small if mode == "SAME_UPPER" else big)
            ends.append(big if mode == "SAME_UPPER" else small)
        return begins + ends
    return list(node.attrs.get("pads", [0] * (2 * k)))


def _torch_pad(pads: list[int]) -> list[int]:
    """ONNX [b1.., e1..] over the trailing dims -> F.pad's last-dim-first pairs."""
    k = len(pads) // 2
    out: list[int] = []
    for i in reversed(range(k)):
        out += [pads[i], pads[i + k]]
    return out


def _op_conv(m, node, xs):
    x, w = xs[0], xs[1]
    b = xs[2] if len(xs) > 2 else None
    k = w.dim() - 2
    a = node.attrs
    kernel = list(a.get("kernel_shape", w.shape[2:]))
    strides = list(a.get("strides", [1] * k))
    dil = list(a.get("dilations", [1] * k))
    pads = _spatial_pads(node, x, kernel, strides, dil)
    if pads[:k] == pads[k:]:
        padding = pads[:k]
    else:
        x = F.pad(x, _torch_pad(pads))
        padding = [0] * k
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}.get(k)
    if conv is None:
        raise UnsupportedOpError(node.name, node.op, f"{k}-D convolution")
    return [conv(x, w, b, strides, padding, dil, int(a.get("group", 1)))]


def _op_gemm(m, node, xs):
    a_, b_ = xs[0], xs[1]
    at = node.attrs
    if at.get("transA", 0):
        a_ = a_.t()
    if at.get("transB", 0):
        b_ = b_.t()
    y = float(at.get("alpha", 1.0)) * (a_ @ b_)
    if len(xs) > 2 and xs[2] is not None:
        y = y + float(at.get("beta", 1.0)) * xs[2]
    return [y]


def _binary(fn):
    def op(m, node, xs):
        return [fn(xs[0], xs[1])]
    return op


def _div(a, b):
    if not a.is_floating_point() and not b.is_floating_point():
        return torch.div(a, b, rounding_mode="trunc")
    return a / b


def _op_clip(m, node, xs):
    x = xs[0]
    if m.opset < 11:
        lo, hi = node.attrs.get("min"), node.attrs.get("max")
    else:
        lo = xs[1] if len(xs) > 1 else None
        hi = xs[2] if len(xs) > 2 else None
    if lo is not None and not isinstance(lo, float):
        lo = lo.to(x.dtype)
    if hi is not None and not isinstance(hi, float):
        hi = hi.to(x.dtype)
    if lo is None and hi is None:
        return [x]
    return [torch.clamp(x, lo, hi)]


def _op_hardsigmoid(m, node, xs):
    alpha, beta = float(node.attrs.get("alpha", 0.2)), float(node.attrs.get("beta", 0.5))
    return [torch.clamp(alpha * xs[0] + beta, 0.0, 1.0)]


def _op_bn(m, node, xs):
    x, scale, bias, mean, var = xs[:5]
    return [F.batch_norm(x, mean, var, scale, bias, False, 0.0, float(node.attrs.get("epsilon", 1e-5)))]


def _pool(m, node, xs, kind):
    x = xs[0]
    a = node.attrs
    kernel = list(a["kernel_shape"])
    k = len(kernel)
    strides = list(a.get("strides", [1] * k))
    dil = list(a.get("dilations", [1] * k))
    pads = _spatial_pads(node, x, kernel, strides, dil)
    ceil = bool(a.get("ceil_mode", 0))
    sym = pads[:k] == pads[k:] and all(p <= kk // 2 for p, kk in zip(pads[:k], kernel))
    if kind == "max":
        if not sym:
            x = F.pad(x, _torch_pad(pads), value=float("-inf"))
            pads = [0] * (2 * k)
        fn = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[k]
        return [fn(x, kernel, strides, pads[:k], dil, ceil_mode=ceil)]
    if any(d != 1 for d in dil):
        raise UnsupportedOpError(node.name, node.op, "dilated AveragePool")
    include = bool(a.get("count_include_pad", 0))
    if not sym:
        if not include and any(pads):
            raise UnsupportedOpError(node.name, node.op, "asymmetric pads with count_include_pad=0")
        x = F.pad(x, _torch_pad(pads))
        pads = [0] * (2 * k)
    fn = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[k]
    return [fn(x, kernel, strides, pads[:k], ceil_mode=ceil, count_include_pad=include)]


def _op_gap(m, node, xs):
    x = xs[0]
    return [x.mean(dim=tuple(range(2, x.dim())), keepdim=True)]


def _op_flatten(m, node, xs):
    x = xs[0]
    axis = int(node.attrs.get("axis", 1)) % max(x.dim(), 1) if x.dim() else 0
    lead = int(np.prod(x.shape[:axis])) if axis else 1
    return [x.reshape(lead, -1)]


def _op_reshape(m, node, xs):
    x = xs[0]
    shape = _ints(xs[1])
    if not node.attrs.get("allowzero", 0):
        shape = [x.shape[i] if s == 0 and i < x.dim() else s for i, s in enumerate(shape)]
    if (m.dynamic_batch and m.static_batch is not None and shape and x.dim()
            and shape[0] == m.static_batch and x.shape[0] != m.static_batch):
        shape[0] = x.shape[0]
    return [x.reshape(shape)]


def _op_concat(m, node, xs):
    ts = [t for t in xs if t is not None]
    if any(t.is_floating_point() for t in ts):
        ts = [_float(t) for t in ts]
    return [torch.cat(ts, dim=int(node.attrs["axis"]))]


def _op_split(m, node, xs):
    x = xs[0]
    axis = int(node.attrs.get("axis", 0))
    n = len(node.outputs)
    if len(xs) > 1 and xs[1] is not None:
        sizes = _ints(xs[1])
    elif "split" in node.attrs:
        sizes = list(node.attrs["split"])
    else:
        n = int(node.attrs.get("num_outputs", n))
        size = x.shape[axis]
        chunk = math.ceil(size / n)
        sizes = [min(chunk, size - i * chunk) for i in range(n)]
    return list(torch.split(x, sizes, dim=axis))


def _op_slice(m, node, xs):
    x = xs[0]
    if m.opset < 10:
        starts, ends = list(node.attrs["starts"]), list(node.attrs["ends"])
        axes = list(node.attrs.get("axes", range(len(starts))))
        steps = [1] * len(starts)
    else:
        starts, ends = _ints(xs[1]), _ints(xs[2])
        axes = _ints(xs[3]) if len(xs) > 3 and xs[3] is not None else list(range(len(starts)))
        steps = _ints(xs[4]) if len(xs) > 4 and xs[4] is not None else [1] * len(starts)
    for s, e, ax, st in zip(starts, ends, axes, steps):
        ax %= x.dim()
        dim = x.shape[ax]
        if st > 0:
            s = min(max(s + dim if s < 0 else s, 0), dim)
            e = min(max(e + dim if e < 0 else e, 0), dim)
            x = x.narrow(ax, s, max(e - s, 0))[(slice(None),) * ax + (slice(None, None, st),)]
        else:
            s = min(max(s + dim if s < 0 else s, -1), dim - 1)
            e = min(max(e + dim if e < 0 else e, -1), dim - 1)
            idx = torch.arange(s, e, st, dtype=torch.long)
            x = x.index_select(ax, idx)
    return [x]


def _op_pad(m, node, xs):
    x = xs[0]
    mode = node.attrs.get("mode", "constant")
    if m.opset < 11:
        pads, value = list(node.attrs["pads"]), float(node.attrs.get("value", 0.0))
        axes = list(range(x.dim()))
    else:
        pads = _ints(xs[1])
        value = float(xs[2].reshape(-1)[0]) if len(xs) > 2 and xs[2] is not None and xs[2].numel() else 0.0
        axes = _ints(xs[3]) if len(xs) > 3 and xs[3] is not None else list(range(x.dim()))
    full = [0] * (2 * x.dim())
    k = len(axes)
    for i, ax in enumerate(axes):
        ax %= x.dim()
        full[ax], full[ax + x.dim()] = pads[i], pads[i + k]
    # drop leading dims without padding (F.pad pads trailing dims)
    first = next((i for i in range(x.dim()) if full[i] or full[i + x.dim()]), x.dim())
    d = x.dim()
    trail = full[first:d] + full[d + first:]
    if not any(trail):
        return [x]
    tmode = {"constant": "constant", "reflect": "reflect", "edge": "replicate"}[mode]
    tp = _torch_pad(trail)
    if tmode == "constant":
        return [F.pad(x, tp, value=value)]
    return [F.pad(x, tp, mode=tmode)]


def _op_resize(m, node, xs):
    x = xs[0]
    a = node.attrs
    sizes = _ints(xs[3]) if len(xs) > 3 and xs[3] is not None and xs[3].numel() else None
    scales = xs[2].reshape(-1).tolist() if len(xs) > 2 and xs[2] is not None and xs[2].numel() else None
    if m.opset < 11 and scales is None and len(xs) > 1:
        scales = xs[1].reshape(-1).tolist()
    if sizes is not None:
        out = sizes[2:]
    elif scales is not None:
        if scales[:2] != [1.0, 1.0]:
            raise UnsupportedOpError(node.name, node.op, "scaling the batch or channel dim")
        out = [math.floor(d * s) for d, s in zip(x.shape[2:], scales[2:])]
    else:
        raise UnsupportedOpError(node.name, node.op, "neither scales nor sizes given")
    if a.get("mode", "nearest") == "nearest":
        return [F.interpolate(x, size=out, mode="nearest")]
    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[x.dim() - 2]
    align = a.get("coordinate_transformation_mode", "half_pixel") == "align_corners"
    return [F.interpolate(x, size=out, mode=mode, align_corners=align)]


def _op_constant(m, node, xs):
    a = node.attrs
    if "value" in a:
        return [_to_torch(a["value"])]
    if "value_float" in a:
        return [torch.tensor(float(a["value_float"]))]
    if "value_floats" in a:
        return [torch.tensor(list(a["value_floats"]), dtype=torch.float32)]
    if "value_int" in a:
        return [torch.tensor(int(a["value_int"]))]
    if "value_ints" in a:
        return [torch.tensor(list(a["value_ints"]), dtype=torch.int64)]
    raise UnsupportedOpError(node.name, node.op, f"attribute {sorted(a)}")


def _op_shape(m, node, xs):
    shape = list(xs[0].shape)
    start = int(node.attrs.get("start", 0))
    end = node.attrs.get("end")
    shape = shape[start:] if end is None else shape[start:int(end)]
    return [torch.tensor(shape, dtype=torch.int64)]


def _op_gather(m, node, xs):
    x, idx = xs[0], xs[1]
    axis = int(node.attrs.get("axis", 0)) % x.dim()
    idx = idx.long()
    idx = torch.where(idx < 0, idx + x.shape[axis], idx)
    flat = x.index_select(axis, idx.reshape(-1))
    return [flat.reshape(list(x.shape[:axis]) + list(idx.shape) + list(x.shape[axis + 1:]))]


def _axes(m, node, xs, since: int) -> list[int] | None:
    if m.opset >= since:
        return _ints(xs[1]) if len(xs) > 1 and xs[1] is not None else None
    return list(node.attrs["axes"]) if "axes" in node.attrs else None


def _op_unsqueeze(m, node, xs):
    x = xs[0]
    axes = _axes(m, node, xs, 13) or []
    rank = x.dim() + len(axes)
    for ax in sorted(a % rank for a in axes):
        x = x.unsqueeze(ax)
    return [x]


def _op_squeeze(m, node, xs):
    x = xs[0]
    axes = _axes(m, node, xs, 13)
    if axes is None:
        return [x.squeeze()]
    for ax in sorted((a % x.dim() for a in axes), reverse=True):
        x = x.squeeze(ax)
    return [x]


def _op_transpose(m, node, xs):
    x = xs[0]
    perm = node.attrs.get("perm") or list(reversed(range(x.dim())))
    return [x.permute(*perm)]


def _op_softmax(m, node, xs):
    x = xs[0]
    if m.opset >= 13:
        return [torch.softmax(x, dim=int(node.attrs.get("axis", -1)))]
    axis = int(node.attrs.get("axis", 1)) % x.dim()
    flat = x.reshape(int(np.prod(x.shape[:axis])), -1)
    return [torch.softmax(flat, dim=1).reshape(x.shape)]


def _qaxis(node: _Node) -> int:
    return int(node.attrs.get("axis", 1))


def _op_quantize(m, node, xs):
    x, scale = _float(xs[0]), _float(xs[1])
    zp = _float(xs[2]) if len(xs) > 2 and xs[2] is not None else torch.zeros(())
    qmin, qmax = node.qrange
    return [fq.fake_quantize(x, scale, zp, qmin, qmax, _qaxis(node))]


def _op_dequantize(m, node, xs):
    scale = _float(xs[1])
    zp = _float(xs[2]) if len(xs) > 2 and xs[2] is not None else torch.zeros(())
    axis = _qaxis(node)
    if node.quant is not None:
        w = m.param_value(node.quant.key)
        q = fq.fake_quantize(w, scale, zp, node.quant.qmin, node.quant.qmax, axis)
    else:
        q = _float(xs[0])
    return [fq.dequantize(q, scale, zp, axis)]


def _op_cast(m, node, xs):
    to = int(node.attrs["to"])
    if to in (TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16):
        return [_float(xs[0])]
    if to == TensorProto.BOOL:
        return [xs[0] != 0]
    return [xs[0].to(torch.int64) if not xs[0].is_floating_point() else torch.trunc(xs[0]).to(torch.int64)]


def _op_reducemean(m, node, xs):
    x = xs[0]
    axes = _axes(m, node, xs, 18)
    keep = bool(node.attrs.get("keepdims", 1))
    if not axes:
        if node.attrs.get("noop_with_empty_axes", 0):
            return [x]
        axes = list(range(x.dim()))
    return [x.mean(dim=tuple(a % x.dim() for a in axes), keepdim=keep)]


def _op_dropout(m, node, xs):
    outs = [xs[0]]
    if len(node.outputs) > 1:
        outs.append(torch.ones_like(xs[0], dtype=torch.bool))
    return outs


_OPS: dict[str, Op] = {
    "Conv": _op_conv,
    "Gemm": _op_gemm,
    "MatMul": _binary(torch.matmul),
    "Add": _binary(torch.add),
    "Sub": _binary(torch.sub),
    "Mul": _binary(torch.mul),
    "Div": _binary(_div),
    "Relu": lambda m, n, xs: [F.relu(xs[0])],
    "Clip": _op_clip,
    "Sigmoid": lambda m, n, xs: [torch.sigmoid(xs[0])],
    "HardSigmoid": _op_hardsigmoid,
    "HardSwish": lambda m, n, xs: [F.hardswish(xs[0])],
    "BatchNormalization": _op_bn,
    "MaxPool": lambda m, n, xs: _pool(m, n, xs, "max"),
    "AveragePool": lambda m, n, xs: _pool(m, n, xs, "avg"),
    "GlobalAveragePool": _op_gap,
    "Flatten": _op_flatten,
    "Reshape": _op_reshape,
    "Concat": _op_concat,
    "Split": _op_split,
    "Slice": _op_slice,
    "Pad": _op_pad,
    "Resize": _op_resize,
    "Identity": lambda m, n, xs: [xs[0]],
    "Dropout": _op_dropout,
    "Constant": _op_constant,
    "Shape": _op_shape,
    "Gather": _op_gather,
    "Unsqueeze": _op_unsqueeze,
    "Squeeze": _op_squeeze,
    "Transpose": _op_transpose,
    "Softmax": _op_softmax,
    "QuantizeLinear": _op_quantize,
    "DequantizeLinear": _op_dequantize,
    "Cast": _op_cast,
    "ReduceMean": _op_reducemean,
}

SUPPORTED_OPS: frozenset[str] = frozenset(_OPS)
