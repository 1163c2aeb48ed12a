"""What the search needs to know about a graph: its fused kernels (the unit the
latency model predicts). Channel groups and pruning come from the passes
(``pfcompile.passes.depgraph`` / ``pfcompile.passes.prune``, see ``space.py``).

Kernels follow TVM's fusion on CPU: an anchor op (Conv, Gemm, MatMul, pool)
absorbs the chain of elementwise ops that only it feeds (bias, BatchNorm,
Relu, a residual Add). Each kernel has a *workload key* that names its op,
shapes and epilogue, so equal kernels in different candidates share one
measurement.

QDQ models (the quantize pass's output): QuantizeLinear / DequantizeLinear are
not kernels of their own here. An anchor Conv / Gemm / MatMul whose input is a
DequantizeLinear of an activation and whose weight is a DequantizeLinear of an
int8 initializer runs as an integer kernel after ``pfcompile.quantexec``'s
lowering (with or without a QuantizeLinear after it), so its kernel gets
``bits`` = the weight's width (the node's ``pfcompile.bits`` metadata, else 8);
every other anchor is float (``bits`` = 32). The requantise at a layer's output
is part of the integer kernel; a standalone QuantizeLinear of a float tensor
(e.g. after a residual Add) is not costed as a kernel.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper

__all__ = ["Kernel", "extract_kernels", "materialize_constants", "tensor_shapes"]

_UNARY = {"Relu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "LeakyRelu", "Tanh",
          "BatchNormalization", "Identity", "Dropout"}
_BINARY = {"Add", "Mul", "Sub", "Div"}
_ELEMENTWISE = _UNARY | _BINARY
_SHAPE_OPS = {"Flatten", "Reshape", "Squeeze", "Unsqueeze", "Shape", "Gather", "Constant",
              "Concat_shape"}
_QDQ_OPS = {"QuantizeLinear", "DequantizeLinear"}
_BITS_KEY = "pfcompile.bits"  # = pfcompile.passes.quantize.BITS_KEY


def materialize_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    """Copy of ``model`` where ``Constant`` nodes and ``Identity`` of an initializer
    (the TorchScript exporter's way of sharing equal weights) become initializers."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    inits = {t.name: t for t in m.graph.initializer}
    keep = []
    for n in m.graph.node:
        if n.op_type == "Identity" and n.input[0] in inits:
            t = onnx.TensorProto()
            t.CopyFrom(inits[n.input[0]])
            t.name = n.output[0]
            m.graph.initializer.append(t)
            inits[t.name] = t
        elif n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            t = onnx.TensorProto()
            t.CopyFrom(n.attribute[0].t)
            t.name = n.output[0]
            m.graph.initializer.append(t)
            inits[t.name] = t
        else:
            keep.append(n)
    if len(keep) != len(m.graph.node):
        del m.graph.node[:]
        m.graph.node.extend(keep)
    return m


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def tensor_shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    """Static shapes of every value (inputs, inferred intermediates, initializers)."""
    m = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    out: dict[str, tuple[int, ...]] = {}
    for vi in list(m.graph.input) + list(m.graph.value_info) + list(m.graph.output):
        dims = vi.type.tensor_type.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            out[vi.name] = tuple(int(d.dim_value) for d in dims)
    for t in m.graph.initializer:
        out[t.name] = tuple(int(d) for d in t.dims)
    return out


@dataclass(frozen=True)
class Kernel:
    """One fused kernel: anchor op, its shapes/attributes and elementwise epilogue."""

    op: str                      # conv | dwconv | gconv | gemm | maxpool | avgpool | gpool | ew
    in_shape: tuple[int, ...]
    w_shape: tuple[int, ...]     # () when there is no weight
    out_shape: tuple[int, ...]
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    pad: tuple[int, int, int, int] = (0, 0, 0, 0)
    groups: int = 1
    epilogue: tuple[str, ...] = ()
    bits: int = 32
    nodes: tuple[str, ...] = field(default=(), compare=False)
    abits: int | None = None     # activation width on an accelerator (None: same as bits)

    @property
    def key(self) -> str:
        """Workload key: equal keys are the same kernel to the device."""
        f = lambda t: "x".join(map(str, t))
        return (f"{self.op}|i{f(self.in_shape)}|w{f(self.w_shape)}|o{f(self.out_shape)}|"
                f"k{f(self.kernel)}|s{f(self.stride)}|p{f(self.pad)}|g{self.groups}|"
                f"e{'+'.join(self.epilogue)}|b{self.bits}"
                + (f"|a{self.abits}" if self.abits is not None else ""))

    @property
    def macs(self) -> int:
        out = int(np.prod(self.out_shape)) if self.out_shape else 0
        if self.op in ("conv", "dwconv", "gconv"):
            cin_per_group = self.w_shape[1]
            return out * cin_per_group * self.kernel[0] * self.kernel[1]
        if self.op == "gemm":
            return out * self.w_shape[-1] if len(self.w_shape) == 2 else out * self.in_shape[-1]
        if self.op in ("maxpool", "avgpool"):
            return out * self.kernel[0] * self.kernel[1]
        if self.op == "gpool":
            return int(np.prod(self.in_shape))
        return out

    @property
    def bytes(self) -> int:
        n = int(np.prod(self.in_shape)) + int(np.prod(self.out_shape))
        w = int(np.prod(self.w_shape)) if self.w_shape else 0
        return 4 * n + (w * self.bits) // 8

    def to_json(self) -> dict:
        d = {"op": self.op, "in_shape": list(self.in_shape), "w_shape": list(self.w_shape),
             "out_shape": list(self.out_shape), "kernel": list(self.kernel),
             "stride": list(self.stride), "pad": list(self.pad), "groups": self.groups,
             "epilogue": list(self.epilogue), "bits": self.bits}
        if self.abits is not None:
            d["abits"] = self.abits
        return d

    @staticmethod
    def from_json(d: dict) -> Kernel:
        return Kernel(d["op"], tuple(d["in_shape"]), tuple(d["w_shape"]), tuple(d["out_shape"]),
                      tuple(d["kernel"]), tuple(d["stride"]), tuple(d["pad"]), int(d["groups"]),
                      tuple(d["epilogue"]), int(d.get("bits", 32)),
                      abits=int(d["abits"]) if d.get("abits") is not None else None)


def _consumers(model: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    cons: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for i in n.input:
            cons.setdefault(i, []).append(n)
    return cons


def _anchor_bits(n: onnx.NodeProto, producers: dict[str, onnx.NodeProto],
                 inits: dict[str, onnx.TensorProto]) -> int:
    """The integer width an anchor runs at after QDQ lowering; 32 when it stays float."""
    if n.op_type not in ("Conv", "Gemm", "MatMul") or len(n.input) < 2:
        return 32
    x, w = producers.get(n.input[0]), producers.get(n.input[1])
    if x is None or w is None or x.op_type != "DequantizeLinear" or w.op_type != "DequantizeLinear":
        return 32
    if x.input[0] in inits or w.input[0] not in inits:
        return 32  # a constant activation, or weights computed at run time
    if inits[w.input[0]].data_type != onnx.TensorProto.INT8:
        return 32
    meta = {p.key: p.value for p in w.metadata_props}
    try:
        return int(meta.get(_BITS_KEY, 8))
    except ValueError:
        return 8


def extract_kernels(model: onnx.ModelProto,
                    shapes: dict[str, tuple[int, ...]] | None = None) -> list[Kernel]:
    """The fused kernels of ``model`` in graph order (shape ops are free)."""
    model = materialize_constants(model)
    shapes = shapes if shapes is not None else tensor_shapes(model)
    init_protos = {t.name: t for t in model.graph.initializer}
    inits = set(init_protos)
    producers = {o: n for n in model.graph.node for o in n.output}
    cons = _consumers(model)
    graph_outputs = {o.name for o in model.graph.output}
    fused: set[int] = set()
    nodes = list(model.graph.node)
    index = {id(n): i for i, n in enumerate(nodes)}
    kernels: list[Kernel] = []
    for i, n in enumerate(nodes):
        if i in fused or n.op_type in _SHAPE_OPS or n.op_type in _QDQ_OPS:
            continue
        a = _attrs(n)
        ins = shapes.get(n.input[0], ())
        outs = shapes.get(n.output[0], ())
        w_shape: tuple[int, ...] = ()
        kernel, stride, pad, groups, op = (1, 1), (1, 1), (0, 0, 0, 0), 1, "ew"
        if n.op_type == "Conv":
            w_shape = shapes.get(n.input[1], ())
            groups = int(a.get("group", 1))
            op = "conv" if groups == 1 else ("dwconv" if w_shape and w_shape[1] == 1 else "gconv")
            kernel = tuple(w_shape[2:4]) if len(w_shape) == 4 else (1, 1)
            stride = tuple(a.get("strides", [1, 1]))
            pad = tuple(a.get("pads", [0, 0, 0, 0]))
        elif n.op_type in ("Gemm", "MatMul"):
            w_shape = shapes.get(n.input[1], ())
            if n.op_type == "Gemm" and not a.get("transB", 0) and len(w_shape) == 2:
                w_shape = (w_shape[1], w_shape[0])
            op = "gemm"
        elif n.op_type in ("MaxPool", "AveragePool"):
            op = "maxpool" if n.op_type == "MaxPool" else "avgpool"
            kernel = tuple(a.get("kernel_shape", [1, 1]))
            stride = tuple(a.get("strides", [1, 1]))
            pad = tuple(a.get("pads", [0, 0, 0, 0]))
        elif n.op_type in ("GlobalAveragePool", "ReduceMean"):
            op = "gpool"
        # absorb the single-consumer elementwise chain that follows
        epilogue: list[str] = []
        names = [n.name]
        cur = n
        while True:
            out = cur.output[0]
            nxt = cons.get(out, [])
            if out in graph_outputs or len(nxt) != 1 or nxt[0].op_type not in _ELEMENTWISE:
                break
            nx = nxt[0]
            if shapes.get(nx.output[0]) != shapes.get(out):
                break  # broadcasting ops (SE scale) stay separate kernels
            j = index[id(nx)]
            if j in fused:
                break
            other = [x for x in nx.input if x != out and x not in inits]
            epilogue.append(nx.op_type + ("_t" if other else ""))
            fused.add(j)
            names.append(nx.name)
            cur = nx
        outs = shapes.get(cur.output[0], outs)
        if op == "ew":
            epilogue.insert(0, n.op_type)
        kernels.append(Kernel(op, tuple(ins), tuple(w_shape), tuple(outs), tuple(kernel),
                              tuple(stride), tuple(pad), groups, tuple(epilogue),
                              _anchor_bits(n, producers, init_protos), tuple(names)))
    return kernels
