"""Read the integer layers out of a QDQ ONNX model and partition the graph.

What is read (at the ONNX level, no other pass needed):

* An **accelerator layer** is ``DequantizeLinear(x_q) -> Conv | Gemm -> [Relu] ->
  QuantizeLinear -> y_q`` where the weight input is ``DequantizeLinear`` of an int8
  initializer (per-tensor or per-output-channel scale, zero point 0), the bias (optional)
  is ``DequantizeLinear`` of an int32 initializer, or a float initializer (possibly
  behind ``Identity``) that is then rounded to int32 at scale ``s_x * s_w``, activation
  scales / zero points are scalar initializers, ``Conv`` has ``group = 1`` and 2-D
  kernels, ``Gemm`` has ``transA = 0``, ``alpha = beta = 1``. This is the pattern
  ``onnxruntime.quantization.quantize_static(..., QuantFormat.QDQ)`` writes.
* **Bit widths**, per layer: the model metadata key ``pfcompile.accel.bits`` (JSON
  ``{"<Conv/Gemm node name>": {"w": 4, "a": 8}}``) wins; otherwise the weight width is
  the smallest ``b`` with ``max|w_q| <= 2**(b-1) - 1`` (int16 weights count as 16 bits)
  and the activation width is that of the input's integer type (8 for (u)int8, 16 for
  (u)int16, 4 for (u)int4).
* Every other node (Add, pooling, Flatten, Q/DQ of host tensors, layers of an
  unsupported width, grouped convs) runs on the **host**. A layer whose widths the
  target does not support falls back to the host with a ``UserWarning``.

The partition is a list of units in topological order: ``HostSegment`` (a contiguous
run of host nodes, run as its own ONNX model) and ``QLayer`` (one accelerator layer,
integer in, integer out).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from pfcompile.accel.config import AccelConfig
from pfcompile.batching import set_batch
from pfcompile.errors import ModelError

__all__ = [
    "BITS_METADATA_KEY",
    "HostSegment",
    "Partition",
    "QLayer",
    "partition_model",
    "requant_params",
]

BITS_METADATA_KEY = "pfcompile.accel.bits"

#: fixed-point requantisation: multiplier m < 2**REQUANT_BITS, y = (acc*m + 2**(s-1)) >> s
REQUANT_BITS = 16


@dataclass
class QLayer:
    """One integer conv2d / dense layer for the accelerator (weights as OIHW)."""

    name: str
    kind: str                 # "conv2d" | "dense"
    x: str                    # integer input tensor name
    y: str                    # integer output tensor name
    weight: np.ndarray        # int8 (O, I, KH, KW)
    bias: np.ndarray          # int32 (O,): the model's bias, before zero-point folding
    x_zero: int
    x_scale: float
    w_scale: np.ndarray       # float32 (O,)
    y_scale: float
    y_zero: int
    y_dtype: str              # "uint8" | "int8"
    stride: tuple[int, int]
    pads: tuple[int, int, int, int]   # top, left, bottom, right
    in_shape: tuple[int, int, int, int]    # (N, C, H, W) (dense: (N, K, 1, 1))
    out_shape: tuple[int, int, int, int]
    wbits: int
    abits: int
    relu: bool = False
    nodes: tuple[str, ...] = ()       # ONNX node names this layer replaces
    clip: tuple[float, float] | None = None   # a float Clip(lo, hi) before the Q node

    def clamp(self) -> tuple[int, int]:
        """Integer bounds of the output: its type, narrowed by a fused Relu or Clip."""
        info = np.iinfo(np.dtype(self.y_dtype))
        lo, hi = int(info.min), int(info.max)
        if self.relu:
            lo = max(lo, self.y_zero)
        if self.clip is not None:
            lo = max(lo, int(np.round(self.clip[0] / self.y_scale)) + self.y_zero)
            hi = min(hi, int(np.round(self.clip[1] / self.y_scale)) + self.y_zero)
        return lo, hi

    @property
    def macs(self) -> int:
        n, o, oh, ow = self.out_shape
        return n * o * oh * ow * int(np.prod(self.weight.shape[1:]))

    def folded_bias(self) -> np.ndarray:
        """bias - x_zero * sum(w): lets the core multiply raw x_q (input padded with x_zero)."""
        wsum = self.weight.astype(np.int64).reshape(self.weight.shape[0], -1).sum(1)
        return (self.bias.astype(np.int64) - self.x_zero * wsum).astype(np.int64)

    def workload(self) -> dict[str, Any]:
        """The shape key a tiling record is stored under."""
        return {"kind": self.kind, "in": list(self.in_shape[1:]), "out": list(self.out_shape[1:]),
                "k": list(self.weight.shape[2:]), "stride": list(self.stride),
                "pads": list(self.pads), "wbits": self.wbits, "abits": self.abits}


@dataclass
class HostSegment:
    """A contiguous run of host nodes, run as a stand-alone ONNX model."""

    name: str
    model: onnx.ModelProto
    inputs: list[str]
    outputs: list[str]
    nodes: tuple[str, ...] = ()


@dataclass
class Partition:
    units: list[QLayer | HostSegment]
    graph_inputs: list[str]
    graph_outputs: list[str]
    fallbacks: dict[str, str] = field(default_factory=dict)   # layer -> why it stayed on host

    @property
    def layers(self) -> list[QLayer]:
        return [u for u in self.units if isinstance(u, QLayer)]

    @property
    def segments(self) -> list[HostSegment]:
        return [u for u in self.units if isinstance(u, HostSegment)]


def requant_params(layer: QLayer) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel fixed-point (multiplier, shift) for s_x * s_w[c] / s_y."""
    real = (np.float64(layer.x_scale) * layer.w_scale.astype(np.float64)) / np.float64(layer.y_scale)
    mult = np.zeros(real.shape, np.int64)
    shift = np.zeros(real.shape, np.int64)
    for i, r in enumerate(real):
        if r <= 0:
            continue
        s = int(np.floor(np.log2((2 ** REQUANT_BITS - 1) / r)))
        s = max(1, min(s, 62))
        m = int(np.round(r * 2.0 ** s))
        while m >= 2 ** REQUANT_BITS:
            s -= 1
            m = int(np.round(r * 2.0 ** s))
        mult[i], shift[i] = m, s
    return mult, shift


# ----------------------------------------------------------------------------- parsing
class _Graph:
    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        g = model.graph
        self.inits = {t.name: t for t in g.initializer}
        self.producer = {o: n for n in g.node for o in n.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for n in g.node:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)
        self.graph_outputs = {o.name for o in g.output}
        inferred = onnx.shape_inference.infer_shapes(model)
        self.types: dict[str, onnx.TypeProto] = {}
        for vi in list(inferred.graph.value_info) + list(g.input) + list(g.output):
            self.types[vi.name] = vi.type
        for t in g.initializer:
            self.types.setdefault(t.name, onnx.helper.make_tensor_type_proto(t.data_type, t.dims))

    def const(self, name: str) -> np.ndarray | None:
        seen = 0
        while name not in self.inits:
            n = self.producer.get(name)
            if n is None or n.op_type != "Identity" or seen > 8:
                return None
            name, seen = n.input[0], seen + 1
        return numpy_helper.to_array(self.inits[name])

    def shape(self, name: str) -> tuple[int, ...] | None:
        t = self.types.get(name)
        if t is None or not t.HasField("tensor_type"):
            return None
        dims = t.tensor_type.shape.dim
        if any(not d.HasField("dim_value") for d in dims[1:]):
            return None
        # a symbolic batch dimension is fine: programs are per image
        return tuple(int(d.dim_value) if d.HasField("dim_value") else 1 for d in dims)

    def dtype(self, name: str) -> np.dtype | None:
        t = self.types.get(name)
        if t is None or not t.HasField("tensor_type"):
            return None
        try:
            return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.tensor_type.elem_type))
        except Exception:  # noqa: BLE001 - 4-bit and float8 types have no numpy dtype
            return None

    def elem_type(self, name: str) -> int:
        t = self.types.get(name)
        return t.tensor_type.elem_type if t is not None and t.HasField("tensor_type") else 0


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _scalar(g: _Graph, name: str, what: str, node: str) -> float:
    v = g.const(name) if name else None
    if v is None or v.size != 1:
        raise _Skip(f"{what} of '{node}' is not a scalar initializer")
    return float(v.reshape(()))


class _Skip(Exception):
    """The node does not match the accelerator pattern (it stays on the host)."""


_INT_BITS = {onnx.TensorProto.INT8: 8, onnx.TensorProto.UINT8: 8, onnx.TensorProto.INT16: 16,
             onnx.TensorProto.UINT16: 16, onnx.TensorProto.INT32: 32}
for _n in ("INT4", "UINT4"):
    if hasattr(onnx.TensorProto, _n):
        _INT_BITS[getattr(onnx.TensorProto, _n)] = 4


def _match(g: _Graph, node: onnx.NodeProto, bits_meta: dict[str, Any]) -> QLayer:
    name = node.name or node.output[0]
    dq_x = g.producer.get(node.input[0])
    dq_w = g.producer.get(node.input[1]) if len(node.input) > 1 else None
    if dq_x is None or dq_x.op_type != "DequantizeLinear":
        raise _Skip("input is not DequantizeLinear")
    if dq_w is None or dq_w.op_type != "DequantizeLinear":
        raise _Skip("weight is not DequantizeLinear")
    outs = g.consumers.get(node.output[0], [])
    if node.output[0] in g.graph_outputs or len(outs) != 1:
        raise _Skip("output is not consumed by exactly one node")
    relu = False
    clip: tuple[float, float] | None = None
    q = outs[0]
    replaced = [name]
    while q.op_type in ("Relu", "Clip"):
        if q.op_type == "Relu":
            relu = True
        else:
            lo = g.const(q.input[1]) if len(q.input) > 1 and q.input[1] else None
            hi = g.const(q.input[2]) if len(q.input) > 2 and q.input[2] else None
            if lo is None or hi is None:
                raise _Skip("Clip without constant min and max")
            clip = (float(lo), float(hi)) if clip is None else \
                (max(clip[0], float(lo)), min(clip[1], float(hi)))
        nxt = g.consumers.get(q.output[0], [])
        if q.output[0] in g.graph_outputs or len(nxt) != 1:
            raise _Skip(f"{q.op_type} output is not consumed by exactly one node")
        replaced.append(q.name)
        q = nxt[0]
    if q.op_type != "QuantizeLinear":
        raise _Skip("output is not QuantizeLinear")
    replaced.append(q.name)
    x_q = dq_x.input[0]
    x_zero = round(_scalar(g, dq_x.input[2], "x zero point", name)) if len(dq_x.input) > 2 else 0
    x_scale = _scalar(g, dq_x.input[1], "x scale", name)
    w_q = g.const(dq_w.input[0])
    if w_q is None or not np.issubdtype(w_q.dtype, np.integer):
        raise _Skip("weight is not an integer initializer")
    w_scale = g.const(dq_w.input[1])
    w_zero = g.const(dq_w.input[2]) if len(dq_w.input) > 2 else None
    if w_scale is None:
        raise _Skip("weight scale is not an initializer")
    if w_zero is not None and np.any(w_zero != 0):
        raise _Skip("weights have a non-zero zero point (asymmetric weights)")
    y_scale = _scalar(g, q.input[1], "y scale", name)
    y_zero_arr = g.const(q.input[2]) if len(q.input) > 2 else np.zeros((), np.uint8)
    if y_zero_arr is None or y_zero_arr.size != 1:
        raise _Skip("y zero point is not a scalar initializer")
    y_dtype = str(y_zero_arr.dtype)
    if y_dtype not in ("uint8", "int8"):
        raise _Skip(f"output type {y_dtype} is not 8-bit")
    y_zero = int(y_zero_arr.reshape(()))
    x_shape = g.shape(x_q)
    y_shape = g.shape(node.output[0])
    if x_shape is None or y_shape is None:
        raise _Skip("input/output shapes are not static")
    a = _attrs(node)
    if node.op_type == "Conv":
        if w_q.ndim != 4 or len(x_shape) != 4:
            raise _Skip("only 2-D convolutions")
        if int(a.get("group", 1)) != 1:
            raise _Skip("grouped / depthwise conv")
        if any(d != 1 for d in a.get("dilations", [1, 1])):
            raise _Skip("dilated conv")
        if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            raise _Skip("auto_pad")
        pads = tuple(int(p) for p in a.get("pads", [0, 0, 0, 0]))
        pads = (pads[0], pads[1], pads[2], pads[3])
        stride = tuple(int(s) for s in a.get("strides", [1, 1]))
        weight = w_q
        in_shape = tuple(x_shape)
        out_shape = tuple(y_shape)
        kind = "conv2d"
    else:
        if int(a.get("transA", 0)) != 0 or float(a.get("alpha", 1.0)) != 1.0 \
                or float(a.get("beta", 1.0)) != 1.0 or len(x_shape) != 2:
            raise _Skip("Gemm with transA / alpha / beta")
        weight = w_q if int(a.get("transB", 0)) else w_q.T
        weight = weight.reshape(weight.shape[0], weight.shape[1], 1, 1)
        pads, stride = (0, 0, 0, 0), (1, 1)
        in_shape = (x_shape[0], x_shape[1], 1, 1)
        out_shape = (y_shape[0], y_shape[1], 1, 1)
        kind = "dense"
    o = weight.shape[0]
    w_scale = np.broadcast_to(w_scale.astype(np.float32).reshape(-1), (o,)).copy()
    bias = np.zeros(o, np.int32)
    if len(node.input) > 2 and node.input[2]:
        bname = node.input[2]
        while (g.producer.get(bname) is not None and g.producer[bname].op_type == "Identity"):
            bname = g.producer[bname].input[0]
        bp = g.producer.get(bname)
        if bp is not None and bp.op_type == "DequantizeLinear":
            b_q = g.const(bp.input[0])
            if b_q is None or b_q.dtype != np.int32:
                raise _Skip("bias is not an int32 initializer")
            bias = b_q.reshape(-1).astype(np.int32)
        else:
            bf = g.const(node.input[2])
            if bf is None:
                raise _Skip("bias is not a constant")
            bias = np.round(bf.astype(np.float64).reshape(-1) / (x_scale * w_scale.astype(np.float64))
                            ).astype(np.int32)
    # --- bit widths
    wmax = int(np.abs(w_q.astype(np.int64)).max()) if w_q.size else 0
    wbits = 16 if w_q.dtype.itemsize > 1 else next(b for b in range(2, 9) if wmax <= 2 ** (b - 1) - 1 or b == 8)
    abits = _INT_BITS.get(g.elem_type(x_q), 8)
    meta = bits_meta.get(name, {})
    wbits = int(meta.get("w", wbits))
    abits = int(meta.get("a", abits))
    return QLayer(name=name, kind=kind, x=x_q, y=q.output[0], weight=weight.astype(np.int8)
                  if wbits <= 8 else weight, bias=bias, x_zero=x_zero, x_scale=x_scale,
                  w_scale=w_scale, y_scale=y_scale, y_zero=y_zero, y_dtype=y_dtype,
                  stride=(int(stride[0]), int(stride[1])), pads=pads,
                  in_shape=tuple(int(v) for v in in_shape),  # type: ignore[arg-type]
                  out_shape=tuple(int(v) for v in out_shape),  # type: ignore[arg-type]
                  wbits=wbits, abits=abits, relu=relu, nodes=tuple(replaced), clip=clip)


def _bits_metadata(model: onnx.ModelProto) -> dict[str, Any]:
    for p in model.metadata_props:
        if p.key == BITS_METADATA_KEY:
            try:
                d = json.loads(p.value)
            except json.JSONDecodeError as exc:
                raise ModelError(f"metadata '{BITS_METADATA_KEY}' is not JSON: {exc}") from exc
            if not isinstance(d, dict):
                raise ModelError(f"metadata '{BITS_METADATA_KEY}' must be a JSON object")
            return d
    return {}


def _segment_model(g: _Graph, nodes: list[onnx.NodeProto], needed_after: set[str],
                   name: str) -> HostSegment:
    produced = {o for n in nodes for o in n.output}
    inputs: list[str] = []
    inits: list[onnx.TensorProto] = []
    seen: set[str] = set()
    for n in nodes:
        for i in n.input:
            if not i or i in produced or i in seen:
                continue
            seen.add(i)
            if i in g.inits:
                inits.append(g.inits[i])
            else:
                inputs.append(i)
    outputs = [o for n in nodes for o in n.output if o in needed_after]

    def vi(nm: str) -> onnx.ValueInfoProto:
        t = g.types.get(nm)
        if t is None:
            raise ModelError(f"host segment '{name}': no type known for tensor '{nm}' "
                             f"(run shape inference on the model)")
        v = onnx.ValueInfoProto(name=nm)
        v.type.CopyFrom(t)
        set_batch(v)                  # the batch dimension is free: run any batch size
        return v

    graph = onnx.helper.make_graph(list(nodes), name, [vi(i) for i in inputs],
                                   [vi(o) for o in outputs], initializer=inits)
    m = onnx.helper.make_model(graph, opset_imports=list(g.model.opset_import))
    m.ir_version = g.model.ir_version
    return HostSegment(name=name, model=m, inputs=inputs, outputs=outputs,
                       nodes=tuple(n.name for n in nodes))


def partition_model(model: onnx.ModelProto, cfg: AccelConfig) -> Partition:
    """Split a QDQ model into accelerator layers and host segments, in topological order."""
    if any(not n.name for n in model.graph.node):
        model = onnx.ModelProto.FromString(model.SerializeToString())
        names = {n.name for n in model.graph.node}
        for i, n in enumerate(model.graph.node):
            if not n.name:
                n.name = f"{n.op_type}_{i}"
                while n.name in names:
                    n.name += "_"
                names.add(n.name)
    g = _Graph(model)
    bits_meta = _bits_metadata(model)
    layers: dict[str, QLayer] = {}      # keyed by the name of the layer's last node (its Q)
    fallbacks: dict[str, str] = {}
    claimed: set[str] = set()
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm"):
            continue
        nm = node.name or node.output[0]
        try:
            layer = _match(g, node, bits_meta)
        except _Skip as why:
            fallbacks[nm] = str(why)
            continue
        if cfg.operand_bits(layer.wbits, layer.abits) is None:
            msg = (f"layer '{nm}' has {layer.wbits}-bit weights x {layer.abits}-bit activations, "
                   f"which accelerator '{cfg.name}' does not support (weights "
                   f"{list(cfg.weight_bits)}, activations {list(cfg.act_bits)}): it runs on "
                   f"the host CPU instead")
            warnings.warn(msg, UserWarning, stacklevel=2)
            fallbacks[nm] = msg
            continue
        layers[layer.nodes[-1]] = layer      # keyed by its QuantizeLinear node
        claimed.update(layer.nodes)
    # Q/DQ nodes of weights, biases and accelerator inputs are dropped when nothing on the
    # host reads them.
    host_nodes = [n for n in model.graph.node if n.name not in claimed]
    changed = True
    while changed:
        changed = False
        used = {i for n in host_nodes for i in n.input} | g.graph_outputs
        keep = []
        for n in host_nodes:
            if n.op_type == "DequantizeLinear" and not any(o in used for o in n.output):
                claimed.add(n.name)
                changed = True
            else:
                keep.append(n)
        host_nodes = keep
    # Units in graph order: an accelerator layer sits where its QuantizeLinear was.
    seq: list[onnx.NodeProto | QLayer] = []
    for n in model.graph.node:
        if n.name in layers:
            seq.append(layers[n.name])
        elif n.name not in claimed:
            seq.append(n)
    # Which tensors each later unit reads (to know a segment's outputs).
    reads_after: list[set[str]] = [set() for _ in seq]
    acc: set[str] = set(g.graph_outputs)
    for i in range(len(seq) - 1, -1, -1):
        reads_after[i] = set(acc)
        u = seq[i]
        acc |= {u.x} if isinstance(u, QLayer) else set(u.input)
    units: list[QLayer | HostSegment] = []
    run: list[onnx.NodeProto] = []
    run_end = -1
    for i, u in enumerate(seq):
        if isinstance(u, QLayer):
            if run:
                units.append(_segment_model(g, run, reads_after[run_end], f"host{len(units)}"))
                run = []
            units.append(u)
        else:
            run.append(u)
            run_end = i
    if run:
        units.append(_segment_model(g, run, reads_after[run_end], f"host{len(units)}"))
    return Partition(units=units, graph_inputs=[i.name for i in model.graph.input
                                                 if i.name not in g.inits],
                     graph_outputs=[o.name for o in model.graph.output], fallbacks=fallbacks)
