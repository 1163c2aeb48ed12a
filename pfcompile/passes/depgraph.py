"""Channel dependency groups on ONNX (the DepGraph idea, Fang et al. 2023).

Every channel a Conv / Gemm / MatMul produces is an *atom*. Each value with a
channel axis (axis 1) gets a *layout*: the atom behind each position of that
axis. Ops move layouts along: activations, BatchNorm, pooling, Resize, Pad
copy them; depthwise Conv repeats them; ConvTranspose (group 1) reads them
through its weight's axis 0 and produces new ones on axis 1; Softmax over a
non-channel axis and LayerNormalization over spatial axes copy them (over the
channel axis they freeze: the statistics change with the channel count);
Concat concatenates and Split slices them; Flatten / Reshape into a Gemm repeats each atom H*W times (a channel
owns H*W features). Ops that combine tensors element-wise (Add, Sub, Mul with
broadcasting, e.g. squeeze-excitation) make the atoms at the same position
equal (union-find). Atoms that end up equal form a *channel*; channels whose
atoms come from the same producers form a :class:`ChannelGroup`, removed
together.

Anything the analysis cannot reason about freezes the atoms it touches: graph
inputs and outputs, constants concatenated on the channel axis, and every
node of an op not handled here (or handled but used in a way we cannot
follow, e.g. a Concat on another axis with mismatched layouts). A frozen group
is never pruned; its ``frozen_reason`` names the node and op. Token layouts
([N, T, C] with channels last: attention, transformer MLPs, LayerNorm over the
last axis) are not followed yet: they freeze with a reason that says so.

Grouped (non-depthwise) Conv needs the same number of channels removed from
each of its groups, on its input and its output, and so does a channel Split
into equal parts (no output may become empty): such a group carries
``partitions`` (equal-size sets of channels) that the pruner honours. A group
spread over the parts of an unequal Split is frozen. (A
grouped Conv pruned down to one input channel per group is a depthwise Conv
with a channel multiplier; re-analysed, its output joins its input's group.)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from pfcompile.errors import PassError
from pfcompile.ir import ModelLike, const_array, infer_shapes, static_shape, to_ir
from pfcompile.passes._rewrite import attr_int, attr_ints
from pfcompile.passes.canonical import canonical_passes

__all__ = ["ChannelGroup", "DepGraph", "analyze", "dependency_groups"]

# ops that copy the channel layout of input 0 to output 0 unchanged
PASSTHROUGH = {
    "Relu", "LeakyRelu", "PRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Elu", "Selu",
    "Celu", "Softplus", "Softsign", "Gelu", "Mish", "Erf", "Exp", "Log", "Neg", "Abs", "Sqrt",
    "Reciprocal", "Floor", "Ceil", "Round", "Sign", "Sin", "Cos", "Clip", "Identity",
    "Dropout", "Cast", "BatchNormalization", "InstanceNormalization", "MaxPool",
    "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool", "GlobalLpPool",
    "ThresholdedRelu", "Not", "IsNaN", "IsInf",
}
# element-wise ops with numpy broadcasting between their inputs
ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "Max", "Min", "Sum", "Mean", "Pow", "PRelu",
               "Where", "Equal", "Greater", "Less", "GreaterOrEqual", "LessOrEqual", "And",
               "Or", "Xor", "Mod", "BitShift"}
SINK_OPS = ("Conv", "Gemm", "MatMul")
REDUCE_OPS = {"ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum", "ReduceL1", "ReduceL2",
              "ReduceProd", "ReduceLogSumExp", "ReduceSumSquare"}


@dataclass(frozen=True)
class ChannelGroup:
    """Channels that must be removed together.

    ``id`` is the name of the first node (graph order) producing the group's
    channels; it stays the same after pruning, so configs keyed by it can be
    reused. ``members`` are the nodes whose tensors change when the group is
    pruned; ``sources`` the nodes producing its channels. ``partitions`` > 1
    means channels must be removed evenly from that many equal partitions
    (grouped convolution).
    """

    id: str
    channels: int
    members: tuple[str, ...]
    prunable: bool
    frozen_reason: str | None
    sources: tuple[str, ...] = ()
    partitions: int = 1

    def to_json(self) -> dict:
        return {"id": self.id, "channels": self.channels, "prunable": self.prunable,
                "frozen_reason": self.frozen_reason, "partitions": self.partitions,
                "sources": list(self.sources), "members": list(self.members)}


@dataclass(frozen=True)
class Sink:
    """A node that reads channels through its weights (Conv, Gemm, MatMul)."""

    node: ir.Node
    kind: str  # "conv" | "gemm" (B is [N, K]) | "matmul" (B is [K, N])


@dataclass
class DepGraph:
    """The analysis of one ``ir.Model`` (the object it was run on)."""

    model: ir.Model
    groups: list[ChannelGroup]
    layouts: dict[ir.Value, np.ndarray]
    atom_group: np.ndarray          # atom -> group index, -1 when in no reported group
    atom_channel: np.ndarray        # atom -> channel index within its group
    group_partitions: list[list[np.ndarray]]  # per group: channel indices per partition
    sources: list[tuple[ir.Node, int, int]]   # (node, first atom, count) of real sources
    sinks: list[Sink]
    notes: dict[ir.Node, str] = field(default_factory=dict)  # handled-specially nodes

    def group(self, group_id: str) -> ChannelGroup:
        for g in self.groups:
            if g.id == group_id:
                return g
        raise KeyError(group_id)

    def channels_of(self, value: ir.Value, group_index: int) -> np.ndarray:
        """Per position of ``value``'s channel axis: the channel of ``group_index`` or -1."""
        lay = self.layouts[value]
        return np.where(self.atom_group[lay] == group_index, self.atom_channel[lay], -1)


class _UnionFind:
    def __init__(self) -> None:
        self.parent: list[int] = []

    def add(self, n: int) -> int:
        first = len(self.parent)
        self.parent.extend(range(first, first + n))
        return first

    def find(self, a: int) -> int:
        p = self.parent
        root = a
        while p[root] != root:
            root = p[root]
        while p[a] != root:
            p[a], a = root, p[a]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


class _Analyzer:
    def __init__(self, model: ir.Model) -> None:
        self.model = model
        self.graph = model.graph
        self.uf = _UnionFind()
        self.layouts: dict[ir.Value, np.ndarray] = {}
        self.frozen: dict[int, str] = {}           # atom -> reason (first one wins)
        self.atom_source: list[int] = []           # atom -> source index
        self.source_info: list[tuple[ir.Node | None, str, int, int]] = []  # node, label, first, n
        # (layout, block id per position, node, even): even -> every group removes the same
        # number from each block; not even -> a group must sit inside one block
        self.constraints: list[tuple[np.ndarray, np.ndarray, ir.Node, bool]] = []
        self.sinks: list[Sink] = []

    # --------------------------------------------------------------- atoms
    def new_atoms(self, n: int, node: ir.Node | None, label: str,
                  frozen: str | None = None) -> np.ndarray:
        first = self.uf.add(n)
        src = len(self.source_info)
        self.source_info.append((node, label, first, n))
        self.atom_source.extend([src] * n)
        if frozen:
            for a in range(first, first + n):
                self.frozen.setdefault(a, frozen)
        return np.arange(first, first + n)

    def freeze(self, lay: np.ndarray | None, reason: str) -> None:
        if lay is None:
            return
        for a in np.unique(lay):
            self.frozen.setdefault(int(a), reason)

    def unify(self, a: np.ndarray, b: np.ndarray) -> bool:
        if len(a) != len(b):
            return False
        for x, y in zip(a.tolist(), b.tolist()):
            self.uf.union(x, y)
        return True

    def layout(self, v: ir.Value | None) -> np.ndarray | None:
        """Layout of a runtime value; values from unhandled producers get frozen atoms."""
        if v is None or v.const_value is not None:
            return None
        if v in self.layouts:
            return self.layouts[v]
        shape = static_shape(v)
        if shape is None or len(shape) < 2:
            return None
        prod = v.producer()
        where = f"node '{prod.name}' ({prod.op_type})" if prod is not None else f"value '{v.name}'"
        lay = self.new_atoms(shape[1], None, v.name or "?",
                             frozen=f"channels come from {where}, which the analysis cannot "
                                    "follow")
        self.layouts[v] = lay
        return lay

    # --------------------------------------------------------------- ops
    def unhandled(self, node: ir.Node, why: str = "") -> None:
        reason = f"node '{node.name}' ({node.op_type}) is not understood by the channel " \
                 f"analysis{': ' + why if why else ''}; channels it touches are frozen"
        for v in node.inputs:
            self.freeze(self.layout(v), reason)
        # a layer we cannot follow (e.g. a Conv on dequantized weights) is still listed,
        # as a frozen group of its own
        layer = node if node.op_type in (*SINK_OPS, "ConvTranspose") else None
        for v in node.outputs:
            shape = static_shape(v)
            if shape is not None and len(shape) >= 2:
                self.layouts[v] = self.new_atoms(shape[1], layer,
                                                 node.name if layer else (v.name or "?"),
                                                 frozen=reason)

    def run(self) -> None:
        for v in self.graph.inputs:
            shape = static_shape(v)
            if shape is not None and len(shape) >= 2:
                self.layouts[v] = self.new_atoms(shape[1], None, v.name or "input",
                                                 frozen=f"graph input '{v.name}'")
        for node in self.graph:
            if node.domain not in ("", "ai.onnx"):
                self.unhandled(node, f"custom domain '{node.domain}'")
                continue
            handler = getattr(self, "op_" + node.op_type, None)
            if handler is None:
                if node.op_type in PASSTHROUGH:
                    handler = self.op_passthrough
                elif node.op_type in ELEMENTWISE:
                    handler = self.op_elementwise
                elif node.op_type in REDUCE_OPS:
                    handler = self.op_reduce
            if handler is None:
                self.unhandled(node)
                continue
            handler(node)
        for v in self.graph.outputs:
            self.freeze(self.layout(v), f"reaches graph output '{v.name}'")

    def op_passthrough(self, node: ir.Node) -> None:
        lay = self.layout(node.inputs[0])
        out = node.outputs[0]
        shape = static_shape(out)
        if lay is None:
            if shape is not None and len(shape) >= 2:
                self.unhandled(node, "input channels unknown")
            return
        if shape is not None and (len(shape) < 2 or shape[1] != len(lay)):
            self.unhandled(node, "channel count changes")
            return
        self.layouts[out] = lay
        for extra in node.outputs[1:]:  # e.g. MaxPool indices, Dropout mask
            if extra.uses() or extra.is_graph_output():
                self.unhandled(node, "second output is used")
                return

    def _conv_operands(self, node: ir.Node, transposed: bool = False
                       ) -> tuple[tuple[int, ...], np.ndarray] | None:
        """(weight shape, input layout) of a Conv / ConvTranspose whose weight and bias are
        constants (a ConvTranspose weight: rank >= 3, axis 0 = the input channels); None,
        with the node marked unhandled, otherwise."""
        w = node.inputs[1]
        wshape = static_shape(w)
        x = self.layout(node.inputs[0])
        if w is None or w.const_value is None or wshape is None or x is None \
                or (transposed and (len(wshape) < 3 or wshape[0] != len(x))):
            self.unhandled(node, "weight is not a constant or input shape unknown")
            return None
        if len(node.inputs) > 2 and node.inputs[2] is not None \
                and node.inputs[2].const_value is None:
            self.unhandled(node, "bias is not a constant")
            return None
        return wshape, x

    def op_Conv(self, node: ir.Node) -> None:
        operands = self._conv_operands(node)
        if operands is None:
            return
        wshape, x = operands
        g = attr_int(node, "group", 1)
        cin, cout = len(x), wshape[0]
        if g == 1:
            self.sinks.append(Sink(node, "conv"))
            self.layouts[node.outputs[0]] = self.new_atoms(cout, node, node.name)
        elif g == cin and cout % cin == 0:  # depthwise (channel multiplier cout // cin)
            self.layouts[node.outputs[0]] = np.repeat(x, cout // cin)
        else:
            self.sinks.append(Sink(node, "conv"))
            out = self.new_atoms(cout, node, node.name)
            self.layouts[node.outputs[0]] = out
            self.constraints.append((x, np.arange(cin) // (cin // g), node, True))
            self.constraints.append((out, np.arange(cout) // (cout // g), node, True))

    def op_ConvTranspose(self, node: ir.Node) -> None:
        """Weight [C_in, C_out/group, k...]: input channels are read through axis 0, output
        channels produced along axis 1 (a new source, like Conv)."""
        operands = self._conv_operands(node, transposed=True)
        if operands is None:
            return
        wshape = operands[0]
        if attr_int(node, "group", 1) != 1:
            self.unhandled(node, "grouped ConvTranspose is not followed")
            return
        self.layouts[node.outputs[0]] = self.new_atoms(wshape[1], node, node.name)

    def op_Softmax(self, node: ir.Node) -> None:
        shape = static_shape(node.inputs[0])
        axis = attr_int(node, "axis", -1)
        if shape is None or len(shape) < 2:
            self.unhandled(node, "input shape unknown")
        elif axis % len(shape) == 1:
            self.unhandled(node, "normalises over the channel axis (removing a channel "
                                 "changes every other channel's value)")
        else:
            self.op_passthrough(node)

    op_LogSoftmax = op_Softmax

    def op_LayerNormalization(self, node: ir.Node) -> None:
        shape = static_shape(node.inputs[0])
        axis = attr_int(node, "axis", -1)
        if shape is None or len(shape) < 2:
            self.unhandled(node, "input shape unknown")
        elif axis % len(shape) <= 1:
            self.unhandled(node, "normalises over the channel axis (its statistics would "
                                 "change with the channel count)")
        else:  # statistics and scale over spatial axes only, per channel (like InstanceNorm)
            self.op_passthrough(node)

    def op_Gemm(self, node: ir.Node) -> None:
        x = self.layout(node.inputs[0])
        b = node.inputs[1]
        bshape = static_shape(b)
        if x is None or b is None or b.const_value is None or attr_int(node, "transA", 0) \
                or bshape is None or len(static_shape(node.inputs[0]) or ()) != 2:
            self.unhandled(node, "needs a 2-D input, constant B and transA=0")
            return
        c = node.inputs[2] if len(node.inputs) > 2 else None
        if c is not None and c.const_value is None:
            self.unhandled(node, "C is not a constant")
            return
        n = bshape[0] if attr_int(node, "transB", 0) else bshape[1]
        self.sinks.append(Sink(node, "gemm" if attr_int(node, "transB", 0) else "matmul"))
        self.layouts[node.outputs[0]] = self.new_atoms(n, node, node.name)

    def op_MatMul(self, node: ir.Node) -> None:
        a_shape = static_shape(node.inputs[0])
        b = node.inputs[1]
        x = self.layout(node.inputs[0])
        if x is None or b is None or b.const_value is None or a_shape is None \
                or len(a_shape) != 2 or len(b.const_value.shape) != 2:
            why = "needs a 2-D input and a constant 2-D B"
            if a_shape is not None and len(a_shape) == 3:
                why = ("a token layout [N, T, C] (channels on the last axis, as in attention "
                       "and transformer MLPs) is not followed yet")
            self.unhandled(node, why)
            return
        self.sinks.append(Sink(node, "matmul"))
        self.layouts[node.outputs[0]] = self.new_atoms(b.const_value.shape[1], node, node.name)

    def op_elementwise(self, node: ir.Node) -> None:
        out = node.outputs[0]
        oshape = static_shape(out)
        if oshape is None:
            self.unhandled(node, "output shape unknown")
            return
        if len(oshape) < 2:
            for v in node.inputs:
                self.freeze(self.layout(v), f"node '{node.name}' ({node.op_type}) mixes "
                                            "channels into a tensor without a channel axis")
            return
        c = oshape[1]
        full: list[np.ndarray] = []
        for v in node.inputs:
            shape = static_shape(v)
            if v is None or shape is None:
                if v is not None:
                    self.unhandled(node, "an input shape is unknown")
                    return
                continue
            axis = 1 - (len(oshape) - len(shape))
            if axis < 0 or shape[axis] == 1 and c != 1:
                continue  # broadcast along channels: no link
            if v.const_value is not None:
                continue  # a per-channel constant: sliced at rewrite
            lay = self.layout(v)
            if lay is None or len(lay) != c:
                self.unhandled(node, "input channel layout unknown")
                return
            full.append(lay)
        if not full:
            self.layouts[out] = self.new_atoms(
                c, None, out.name or "?", frozen=f"node '{node.name}' ({node.op_type}) takes "
                                                 "its channels from a constant")
            return
        for lay in full[1:]:
            self.unify(full[0], lay)
        self.layouts[out] = full[0]

    def op_Concat(self, node: ir.Node) -> None:
        out = node.outputs[0]
        oshape = static_shape(out)
        if oshape is None or len(oshape) < 2:
            self.unhandled(node, "output shape unknown")
            return
        axis = attr_int(node, "axis", 1) % len(oshape)
        lays = []
        for v in node.inputs:
            lay = self.layout(v)
            if lay is None:
                shape = static_shape(v)
                if shape is None:
                    self.unhandled(node, "input shape unknown")
                    return
                lay = self.new_atoms(shape[1], None, v.name or "?",
                                     frozen=f"constant input to '{node.name}' (Concat)")
            lays.append(lay)
        if axis == 1:
            self.layouts[out] = np.concatenate(lays)
            return
        for lay in lays[1:]:
            if not self.unify(lays[0], lay):
                self.unhandled(node, "inputs with different channel counts")
                return
        self.layouts[out] = lays[0]

    def op_Split(self, node: ir.Node) -> None:
        x = self.layout(node.inputs[0])
        shape = static_shape(node.inputs[0])
        if x is None or shape is None:
            self.unhandled(node, "input shape unknown")
            return
        axis = attr_int(node, "axis", 0) % len(shape)
        if axis != 1:
            for o in node.outputs:
                self.layouts[o] = x
            return
        sizes = [static_shape(o)[1] if static_shape(o) else None for o in node.outputs]
        if any(s is None for s in sizes) or sum(sizes) != len(x):
            self.unhandled(node, "split sizes unknown")
            return
        start = 0
        for o, s in zip(node.outputs, sizes):
            self.layouts[o] = x[start:start + s]
            start += s
        # no output may end up empty: equal splits lose channels evenly, unequal ones
        # only from groups that lie inside one output
        self.constraints.append((x, np.repeat(np.arange(len(sizes)), sizes), node,
                                 len(set(sizes)) == 1))

    def _flatten_like(self, node: ir.Node) -> bool:
        """[N, C, *S] -> [N, C*prod(S)]: each channel owns prod(S) features."""
        x = self.layout(node.inputs[0])
        ishape, oshape = static_shape(node.inputs[0]), static_shape(node.outputs[0])
        if x is None or ishape is None or oshape is None or len(oshape) != 2 \
                or oshape[0] != ishape[0] or oshape[1] != int(np.prod(ishape[1:])):
            return False
        self.layouts[node.outputs[0]] = np.repeat(x, int(np.prod(ishape[2:], dtype=np.int64)))
        return True

    def op_Flatten(self, node: ir.Node) -> None:
        if attr_int(node, "axis", 1) != 1 or not self._flatten_like(node):
            self.unhandled(node, "only Flatten(axis=1) is followed")

    def _keeps_nc(self, node: ir.Node) -> bool:
        x = self.layout(node.inputs[0])
        ishape, oshape = static_shape(node.inputs[0]), static_shape(node.outputs[0])
        if x is None or ishape is None or oshape is None or len(oshape) < 2 \
                or ishape[:2] != oshape[:2]:
            return False
        self.layouts[node.outputs[0]] = x
        return True

    def op_Reshape(self, node: ir.Node) -> None:
        if node.inputs[1] is None or node.inputs[1].const_value is None:
            self.unhandled(node, "shape is not a constant")
        elif not (self._flatten_like(node) or self._keeps_nc(node)):
            self.unhandled(node, "reshape mixes the channel axis")

    def op_Squeeze(self, node: ir.Node) -> None:
        if not self._keeps_nc(node):
            self.unhandled(node, "squeezes the batch or channel axis")

    op_Unsqueeze = op_Squeeze

    def op_reduce(self, node: ir.Node) -> None:
        axes = attr_ints(node, "axes")
        if axes is None and len(node.inputs) > 1 and node.inputs[1] is not None:
            arr = const_array(node.inputs[1])
            axes = None if arr is None else [int(a) for a in arr.reshape(-1)]
        shape = static_shape(node.inputs[0])
        if axes is None or shape is None or not attr_int(node, "keepdims", 1) \
                or any(a % len(shape) in (0, 1) for a in axes):
            self.unhandled(node, "reduces over the channel axis (or axes unknown)")
            return
        self._keeps_nc(node) or self.unhandled(node)

    def op_Pad(self, node: ir.Node) -> None:
        pads = attr_ints(node, "pads")
        if pads is None and len(node.inputs) > 1:
            arr = const_array(node.inputs[1])
            pads = None if arr is None else [int(p) for p in arr]
        shape = static_shape(node.inputs[0])
        has_axes = len(node.inputs) > 3 and node.inputs[3] is not None
        if pads is None or shape is None or has_axes or pads[1] or pads[len(shape) + 1]:
            self.unhandled(node, "pads the channel axis (or pads unknown)")
            return
        self._keeps_nc(node) or self.unhandled(node)

    def op_Resize(self, node: ir.Node) -> None:
        if not self._keeps_nc(node):
            self.unhandled(node, "resizes the channel axis")

    op_Upsample = op_Resize


def analyze(model: ModelLike) -> DepGraph:
    """Dependency analysis of ``model``.

    An ``ir.Model`` is analysed in place (only its value shapes are refreshed),
    so the returned layouts refer to its values; a ModelProto is converted.
    """
    m = to_ir(model)
    infer_shapes(m)
    m.graph.sort()
    an = _Analyzer(m)
    an.run()

    n_atoms = len(an.uf.parent)
    roots = np.array([an.uf.find(a) for a in range(n_atoms)], dtype=np.int64)
    real = [i for i, (node, *_rest) in enumerate(an.source_info) if node is not None]
    # sources linked by a shared channel form a group: union-find over sources
    src_uf = _UnionFind()
    src_uf.add(len(an.source_info))
    first_src_of_root: dict[int, int] = {}
    for a in range(n_atoms):
        s = an.atom_source[a]
        r = int(roots[a])
        if r in first_src_of_root:
            src_uf.union(first_src_of_root[r], s)
        else:
            first_src_of_root[r] = s
    comp_of_src = [src_uf.find(s) for s in range(len(an.source_info))]
    comps: list[int] = []
    for s in real:  # graph order of the first real source names the group
        if comp_of_src[s] not in comps:
            comps.append(comp_of_src[s])
    comp_index = {c: i for i, c in enumerate(comps)}

    atom_group = np.full(n_atoms, -1, dtype=np.int64)
    atom_channel = np.full(n_atoms, -1, dtype=np.int64)
    root_channel: list[dict[int, int]] = [{} for _ in comps]
    # channel order: by atom order of the group's sources (graph order)
    for s in sorted(range(len(an.source_info)), key=lambda s: (s not in real, s)):
        gi = comp_index.get(comp_of_src[s])
        if gi is None:
            continue
        _, _, first, n = an.source_info[s]
        for a in range(first, first + n):
            r = int(roots[a])
            ch = root_channel[gi].setdefault(r, len(root_channel[gi]))
            atom_group[a], atom_channel[a] = gi, ch

    groups: list[ChannelGroup] = []
    partitions: list[list[np.ndarray]] = []
    members_of: list[list[str]] = [[] for _ in comps]
    for node in m.graph:
        touched: set[int] = set()
        for v in list(node.inputs) + list(node.outputs):
            if v is not None and v in an.layouts:
                touched.update(int(x) for x in np.unique(atom_group[an.layouts[v]]) if x >= 0)
        for gi in sorted(touched):
            members_of[gi].append(node.name or node.op_type)
    for gi, comp in enumerate(comps):
        srcs = [s for s in real if comp_of_src[s] == comp]
        nch = len(root_channel[gi])
        reason = None
        for a in np.nonzero(atom_group == gi)[0]:
            if int(a) in an.frozen:
                reason = an.frozen[int(a)]
                break
        parts, why = _partitions(an, gi, nch, atom_group, atom_channel)
        if why and reason is None:
            reason = why
        partitions.append(parts)
        groups.append(ChannelGroup(
            id=an.source_info[srcs[0]][1], channels=nch, members=tuple(members_of[gi]),
            prunable=reason is None, frozen_reason=reason,
            sources=tuple(an.source_info[s][1] for s in srcs), partitions=len(parts)))
    sources = [(an.source_info[s][0], an.source_info[s][2], an.source_info[s][3]) for s in real]
    return DepGraph(m, groups, an.layouts, atom_group, atom_channel, partitions, sources,
                    an.sinks)


def _partitions(an: _Analyzer, gi: int, nch: int, atom_group: np.ndarray,
                atom_channel: np.ndarray) -> tuple[list[np.ndarray], str | None]:
    """Equal-size channel partitions demanded by grouped convolutions and equal
    channel Splits (or the reason the group must be frozen)."""
    keys = np.zeros((nch, 0), dtype=np.int64)
    for lay, block, node, even in an.constraints:
        in_group = atom_group[lay] == gi
        if not in_group.any():
            continue
        nblocks = int(block.max()) + 1
        per_block = np.bincount(block[in_group], minlength=nblocks)
        if not even:
            if np.count_nonzero(per_block) > 1:
                return [np.arange(nch)], (f"node '{node.name}' ({node.op_type}) splits this "
                                          "group's channels into unequal parts")
            continue
        if len(set(per_block.tolist())) != 1:
            return [np.arange(nch)], (f"node '{node.name}' ({node.op_type}) would lose "
                                      f"channels unevenly across its {nblocks} parts (this "
                                      f"group fills them {per_block.tolist()})")
        key = np.full(nch, -1, dtype=np.int64)
        for pos in np.nonzero(in_group)[0]:
            ch = atom_channel[lay[pos]]
            if key[ch] not in (-1, block[pos]):
                return [np.arange(nch)], (f"node '{node.name}' ({node.op_type}) puts one "
                                          "channel into several of its parts")
            key[ch] = block[pos]
        keys = np.concatenate([keys, key[:, None]], axis=1)
    if keys.shape[1] == 0:
        return [np.arange(nch)], None
    uniq, inv = np.unique(keys, axis=0, return_inverse=True)
    parts = [np.nonzero(inv.reshape(-1) == i)[0] for i in range(len(uniq))]
    if len({len(p) for p in parts}) != 1:
        return [np.arange(nch)], ("grouped Conv / Split needs equal removal per part but the "
                                  "group's channel blocks differ in size")
    return parts, None


def dependency_groups(model: ModelLike) -> list[ChannelGroup]:
    """The channel groups of ``model`` (not modified) in canonical form (Identity and
    Dropout dropped, constants folded; BN kept), as the pruner sees it."""
    m = canonical_passes(fold_bn=False)(to_ir(model).clone()).model
    try:
        return analyze(m).groups
    except PassError:
        raise
    except (ValueError, IndexError, KeyError) as exc:
        raise PassError(f"channel dependency analysis failed: {exc}") from exc

