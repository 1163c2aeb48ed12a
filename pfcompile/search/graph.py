"""What the search needs to know about a graph: its fused kernels (the unit the
latency model predicts) and its channel groups (the unit the search prunes).

Kernels follow TVM's fusion on CPU: an anchor op (Conv, Gemm, MatMul, pool)
absorbs the chain of elementwise ops that only it feeds (bias, BatchNorm,
Relu, a residual Add). Each kernel has a *workload key* that names its op,
shapes and epilogue, so equal kernels in different candidates share one
measurement.

Channel groups: tensors whose channel axis must be pruned together (a residual
Add ties its inputs; a depthwise conv passes channels through). The passes
branch owns the real ``dependency_groups``; :func:`channel_groups` is the
minimum the search needs for Conv/Gemm/elementwise/pool graphs and is used only
when ``pfcompile.passes`` does not provide it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from pfcompile.errors import PassError

__all__ = [
    "ChannelGroup",
    "Kernel",
    "channel_groups",
    "extract_kernels",
    "materialize_constants",
    "prune_channels",
    "tensor_shapes",
]

_ANCHORS = {"Conv", "Gemm", "MatMul", "MaxPool", "AveragePool", "GlobalAveragePool", "ReduceMean"}
_UNARY = {"Relu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "LeakyRelu", "Tanh",
          "BatchNormalization", "Identity", "Dropout"}
_BINARY = {"Add", "Mul", "Sub", "Div"}
_ELEMENTWISE = _UNARY | _BINARY
_SHAPE_OPS = {"Flatten", "Reshape", "Squeeze", "Unsqueeze", "Shape", "Gather", "Constant",
              "Concat_shape"}


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

    @property
    def key(self) -> str:
        """Workload key: equal keys are the same kernel to the device."""
        f = lambda t: "x".join(map(str, t))
        return (f"{self.op}|i{f(self.in_shape)}|w{f(self.w_shape)}|o{f(self.out_shape)}|"
                f"k{f(self.kernel)}|s{f(self.stride)}|p{f(self.pad)}|g{self.groups}|"
                f"e{'+'.join(self.epilogue)}|b{self.bits}")

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
        return {"op": self.op, "in_shape": list(self.in_shape), "w_shape": list(self.w_shape),
                "out_shape": list(self.out_shape), "kernel": list(self.kernel),
                "stride": list(self.stride), "pad": list(self.pad), "groups": self.groups,
                "epilogue": list(self.epilogue), "bits": self.bits}

    @staticmethod
    def from_json(d: dict) -> Kernel:
        return Kernel(d["op"], tuple(d["in_shape"]), tuple(d["w_shape"]), tuple(d["out_shape"]),
                      tuple(d["kernel"]), tuple(d["stride"]), tuple(d["pad"]), int(d["groups"]),
                      tuple(d["epilogue"]), int(d.get("bits", 32)))


def _consumers(model: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    cons: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for i in n.input:
            cons.setdefault(i, []).append(n)
    return cons


def extract_kernels(model: onnx.ModelProto,
                    shapes: dict[str, tuple[int, ...]] | None = None) -> list[Kernel]:
    """The fused kernels of ``model`` in graph order (shape ops are free)."""
    model = materialize_constants(model)
    shapes = shapes if shapes is not None else tensor_shapes(model)
    inits = {t.name for t in model.graph.initializer}
    cons = _consumers(model)
    graph_outputs = {o.name for o in model.graph.output}
    fused: set[int] = set()
    nodes = list(model.graph.node)
    index = {id(n): i for i, n in enumerate(nodes)}
    kernels: list[Kernel] = []
    for i, n in enumerate(nodes):
        if i in fused or n.op_type in _SHAPE_OPS or n.op_type == "Flatten":
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
                              tuple(stride), tuple(pad), groups, tuple(epilogue), 32, tuple(names)))
    return kernels


# ----------------------------------------------------------------------------- channel groups
@dataclass(frozen=True)
class ChannelGroup:
    """Tensors sharing one channel axis; pruning keeps the same channels in all."""

    id: str
    channels: int
    producers: tuple[str, ...]   # Conv/Gemm nodes whose output channels live here
    prunable: bool


class _UF:
    def __init__(self) -> None:
        self.p: dict[str, str] = {}

    def find(self, x: str) -> str:
        self.p.setdefault(x, x)
        while self.p[x] != x:
            self.p[x] = self.p[self.p[x]]
            x = self.p[x]
        return x

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.p[max(ra, rb)] = min(ra, rb)


def _analyse(model: onnx.ModelProto):
    model = materialize_constants(model)
    shapes = tensor_shapes(model)
    inits = {t.name for t in model.graph.initializer}
    uf = _UF()
    blocked: set[str] = set()
    producers: dict[str, list[str]] = {}
    for n in model.graph.node:
        a = _attrs(n)
        t = n.op_type
        if t == "Conv":
            w = shapes.get(n.input[1], ())
            g = int(a.get("group", 1))
            if g == 1:
                producers.setdefault(n.output[0], []).append(n.name)
                uf.find(n.output[0])
            elif len(w) == 4 and w[1] == 1 and g == w[0]:
                uf.union(n.input[0], n.output[0])   # depthwise: channels pass through
            else:
                blocked.update([n.input[0], n.output[0]])
        elif t in _UNARY or t in ("MaxPool", "AveragePool", "GlobalAveragePool"):
            uf.union(n.input[0], n.output[0])
        elif t in _BINARY:
            acts = [x for x in n.input if x not in inits]
            if any(shapes.get(x) != shapes.get(n.output[0]) for x in acts) or \
                    any(x in inits and int(np.prod(shapes.get(x, (1,)))) > 1 for x in n.input):
                blocked.update(list(n.input) + [n.output[0]])
            for x in acts:
                uf.union(x, n.output[0])
        elif t == "Flatten":
            s = shapes.get(n.input[0], ())
            if len(s) == 4 and s[2] * s[3] == 1:
                uf.union(n.input[0], n.output[0])
            else:
                blocked.update([n.input[0], n.output[0]])
        elif t == "Gemm":
            if not a.get("transB", 0) or len(shapes.get(n.input[0], ())) != 2:
                blocked.add(n.input[0])
            # Gemm output columns are the model's classes: never pruned
            blocked.add(n.output[0])
        else:
            blocked.update(list(n.input) + list(n.output))
    for vi in list(model.graph.input) + list(model.graph.output):
        blocked.add(vi.name)
    return shapes, uf, blocked, producers


def channel_groups(model: onnx.ModelProto) -> list[ChannelGroup]:
    """Channel groups with stable ids (``g<k>:<first producer>``), in graph order."""
    model = materialize_constants(model)
    shapes, uf, blocked, producers = _analyse(model)
    blocked_roots = {uf.find(b) for b in blocked}
    by_root: dict[str, list[str]] = {}
    for out, names in producers.items():
        by_root.setdefault(uf.find(out), []).extend(names)
    order = [n.name for n in model.graph.node]
    out_of = {n.name: n.output[0] for n in model.graph.node}
    groups = []
    for k, (root, names) in enumerate(sorted(by_root.items(), key=lambda kv: min(order.index(x) for x in kv[1]))):
        names = sorted(names, key=order.index)
        ch = shapes[out_of[names[0]]][1]
        groups.append(ChannelGroup(f"g{k}:{names[0]}", int(ch), tuple(names), root not in blocked_roots))
    return groups


def _l1_importance(model: onnx.ModelProto, group: ChannelGroup) -> np.ndarray:
    inits = {t.name: t for t in model.graph.initializer}
    nodes = {n.name: n for n in model.graph.node}
    score = np.zeros(group.channels, dtype=np.float64)
    for name in group.producers:
        w = numpy_helper.to_array(inits[nodes[name].input[1]])
        score += np.abs(w.reshape(w.shape[0], -1)).sum(1) / max(1, w[0].size)
    return score


def prune_channels(model: onnx.ModelProto, keep: dict[str, int]) -> onnx.ModelProto:
    """Keep the ``keep[group_id]`` channels of largest L1 norm in each group.

    A minimal structured pruner (no retraining) for the search; raises
    :class:`PassError` for an unknown or unprunable group.
    """
    model = materialize_constants(model)
    groups = {g.id: g for g in channel_groups(model)}
    _, uf, _, _ = _analyse(model)
    chosen: dict[str, np.ndarray] = {}
    for gid, k in keep.items():
        if gid not in groups:
            raise PassError(f"prune: unknown channel group '{gid}' (known: {sorted(groups)})")
        g = groups[gid]
        if not g.prunable and k != g.channels:
            raise PassError(f"prune: channel group '{gid}' cannot be pruned (it reaches a graph "
                            "input/output or an op the minimal pruner does not handle)")
        if not 1 <= k <= g.channels:
            raise PassError(f"prune: group '{gid}' keep {k} not in [1, {g.channels}]")
        if k == g.channels:
            continue
        idx = np.sort(np.argsort(-_l1_importance(model, g), kind="stable")[:k])
        out_of = {n.name: n.output[0] for n in model.graph.node}
        chosen[uf.find(out_of[g.producers[0]])] = idx
    m = onnx.ModelProto()
    m.CopyFrom(model)
    if not chosen:
        return m
    inits = {t.name: t for t in m.graph.initializer}
    new_arrays: dict[str, np.ndarray] = {}

    def arr(name: str) -> np.ndarray:
        return new_arrays[name] if name in new_arrays else numpy_helper.to_array(inits[name])

    def idx_of(tensor: str) -> np.ndarray | None:
        return chosen.get(uf.find(tensor))

    for n in m.graph.node:
        t = n.op_type
        if t == "Conv":
            oi, ii = idx_of(n.output[0]), idx_of(n.input[0])
            g = next((a for a in n.attribute if a.name == "group"), None)
            depthwise = g is not None and g.i > 1
            w = arr(n.input[1])
            if depthwise:
                if oi is not None:
                    new_arrays[n.input[1]] = w[oi]
                    if len(n.input) > 2 and n.input[2]:
                        new_arrays[n.input[2]] = arr(n.input[2])[oi]
                    g.i = len(oi)
                continue
            if oi is not None:
                w = w[oi]
                if len(n.input) > 2 and n.input[2]:
                    new_arrays[n.input[2]] = arr(n.input[2])[oi]
            if ii is not None:
                w = w[:, ii]
            new_arrays[n.input[1]] = w
        elif t == "BatchNormalization":
            ii = idx_of(n.input[0])
            if ii is not None:
                for p in n.input[1:5]:
                    new_arrays[p] = arr(p)[ii]
        elif t == "Gemm":
            ii = idx_of(n.input[0])
            if ii is not None:
                new_arrays[n.input[1]] = arr(n.input[1])[:, ii]
    used: dict[str, int] = {}
    for n in m.graph.node:
        for x in n.input:
            if x in new_arrays:
                used[x] = used.get(x, 0) + 1
    if any(v > 1 for v in used.values()):
        shared = sorted(k for k, v in used.items() if v > 1)
        raise PassError(f"prune: initializer(s) {shared} are shared by several nodes; "
                        "the minimal pruner cannot slice shared weights")
    for name, a in new_arrays.items():
        inits[name].CopyFrom(numpy_helper.from_array(np.ascontiguousarray(a), name))
    del m.graph.value_info[:]
    return onnx.shape_inference.infer_shapes(m, strict_mode=False)
