"""Structured channel pruning that leaves a physically smaller ONNX graph.

The pass analyses channel dependency groups (:mod:`pfcompile.passes.depgraph`),
scores channels with a criterion (L1, BN gamma, or LASSO channel selection with
least-squares reconstruction), keeps the best ``C - round(r*C)`` channels of
each prunable group (rounded to a multiple of ``round_to``, evenly across
grouped-conv partitions), and rewrites every member node: producer filters and
biases, BatchNorm parameters, per-channel constants, consumer weight columns
(H*W columns per channel after a Flatten), depthwise/grouped Conv ``group``,
Split sizes, Reshape and Resize targets. No gather/index node is inserted.
"""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir
from onnx_ir.passes import FunctionalPass, PassResult
from onnx_ir.passes.common import RemoveUnusedNodesPass

from pfcompile.data import Dataset
from pfcompile.errors import ConfigError, PassError
from pfcompile.ir import ModelLike, const_array, infer_shapes, set_initializer, static_shape, to_ir
from pfcompile.passes._rewrite import attr_int
from pfcompile.passes.canonical import canonical_passes
from pfcompile.passes.depgraph import ELEMENTWISE, DepGraph, analyze
from pfcompile.passes.prune_config import PruneConfig
from pfcompile.passes.prune_criteria import bn_scores, l1_scores

__all__ = ["PruneConfig", "PrunePass", "keep_count", "prune", "resolve_ratios"]


def keep_count(channels: int, ratio: float, round_to: int = 1, partitions: int = 1) -> int:
    """Channels kept: ``C - round(ratio*C)`` (at least 1), a multiple of
    ``lcm(round_to, partitions)`` where possible, never more than ``C``."""
    if ratio <= 0:
        return channels  # ratio 0 leaves a group alone (no rounding either)
    keep = max(1, channels - round(ratio * channels))
    step = round_to * partitions // math.gcd(round_to, partitions)
    if step > 1:
        keep = max(step, round(keep / step) * step)
        keep = min(keep, channels)
    return keep


def resolve_ratios(dg: DepGraph, config: PruneConfig) -> list[float]:
    """Ratio per group; config keys may be group ids or names of source nodes."""
    by_key: dict[str, int] = {}
    for gi, g in enumerate(dg.groups):
        by_key[g.id] = gi
        for s in g.sources:
            by_key.setdefault(s, gi)
    ratios = [0.0 if not g.prunable else config.ratio for g in dg.groups]
    unknown = [k for k, _ in config.group_ratios if k not in by_key]
    if unknown:
        raise ConfigError(
            f"prune config names unknown layer/group id(s) {unknown}; the model's groups are "
            f"{[g.id for g in dg.groups]} (see `pfcompile inspect --json`)")
    for key, r in config.group_ratios:
        g = dg.groups[by_key[key]]
        if not g.prunable and r > 0:
            raise ConfigError(f"prune config asks to prune group '{g.id}' (via '{key}'), which "
                              f"is frozen: {g.frozen_reason}")
        ratios[by_key[key]] = r
    return ratios


def _select(dg: DepGraph, ratios: list[float], scores: list[np.ndarray],
            round_to: int) -> list[np.ndarray]:
    """Per group, a bool mask over channels: True = remove."""
    removed = []
    for gi, g in enumerate(dg.groups):
        mask = np.zeros(g.channels, dtype=bool)
        if g.prunable and ratios[gi] > 0:
            parts = dg.group_partitions[gi]
            per = keep_count(g.channels, ratios[gi], round_to, len(parts)) // len(parts)
            for part in parts:
                order = part[np.argsort(-scores[gi][part], kind="stable")]
                mask[order[per:]] = True
        removed.append(mask)
    return removed


class PrunePass(FunctionalPass):
    """Channel pruning as an onnx-ir functional pass (the input model is untouched)."""

    def __init__(self, config: PruneConfig, calib: Dataset | None = None) -> None:
        super().__init__()
        self.config = config
        self.calib = calib
        self.removed_channels: dict[str, int] = {}
        if config.criterion == "lasso" and calib is None:
            raise ConfigError("criterion 'lasso' needs calibration data (--data calib.npz)")

    def call(self, model: ir.Model) -> PassResult:
        # Identity-shared parameters and constant subgraphs would freeze channels
        model = canonical_passes(fold_bn=False)(model.clone()).model
        dg = analyze(model)
        if not any(g.prunable for g in dg.groups):
            reasons = "; ".join(f"{g.id}: {g.frozen_reason}" for g in dg.groups) or "none found"
            raise PassError(f"the model has no prunable channel group ({reasons})")
        ratios = resolve_ratios(dg, self.config)
        recon = None
        if self.config.criterion == "lasso":
            from pfcompile.passes.prune_lasso import lasso_select

            removed, recon = lasso_select(dg, ratios, self.config, self.calib)
        else:
            scores = l1_scores(dg) if self.config.criterion == "l1" else bn_scores(dg)
            removed = _select(dg, ratios, scores, self.config.round_to)
        self.removed_channels = {g.id: int(m.sum()) for g, m in zip(dg.groups, removed)}
        if not any(m.any() for m in removed):
            return PassResult(model, False)
        _rewrite(dg, removed, recon or {})
        RemoveUnusedNodesPass()(model)
        infer_shapes(model)
        return PassResult(model, True)


def prune(model: ModelLike, config: PruneConfig, calib: Dataset | None = None) -> PassResult:
    """Prune ``model`` (ModelProto or ir.Model, not modified) -> ``PassResult``."""
    return PrunePass(config, calib)(to_ir(model))


# ----------------------------------------------------------------------------- rewrite
def materialize(dg: DepGraph, removed: list[np.ndarray],
                recon: dict[tuple[ir.Node, int], np.ndarray]) -> tuple[ir.Model, np.ndarray]:
    """A pruned copy of ``dg.model`` (left untouched) and the removed-atom mask."""
    copy = dg.model.clone()
    dg2 = analyze(copy)
    names = [n.name for n in dg.model.graph]
    if len(set(names)) != len(names) or [n.name for n in copy.graph] != names:
        raise PassError("pruning needs unique node names to replay a partial prune; run "
                        "onnx-ir's NameFixPass first")
    by_name = {n.name: n for n in copy.graph}
    _rewrite(dg2, removed, {(by_name[n.name], gi): c for (n, gi), c in recon.items()})
    RemoveUnusedNodesPass()(copy)
    infer_shapes(copy)
    return copy, _gone_atoms(dg, removed)


def _gone_atoms(dg: DepGraph, removed: list[np.ndarray]) -> np.ndarray:
    gone = np.zeros(len(dg.atom_group), dtype=bool)
    for gi, mask in enumerate(removed):
        sel = dg.atom_group == gi
        gone[sel] = mask[dg.atom_channel[sel]]
    return gone


def _rewrite(dg: DepGraph, removed: list[np.ndarray],
             recon: dict[tuple[ir.Node, int], np.ndarray]) -> None:
    """Apply the removal masks to every node. ``recon`` maps (sink, group index) to
    reconstructed weight columns for the kept positions of that group."""
    gone = _gone_atoms(dg, removed)
    graph = dg.model.graph

    def keep(v: ir.Value | None) -> np.ndarray | None:
        if v is None or v not in dg.layouts:
            return None
        return ~gone[dg.layouts[v]]

    for node in list(graph):
        op = node.op_type
        kin = keep(node.inputs[0]) if node.inputs else None
        kout = keep(node.outputs[0]) if node.outputs else None
        if (kin is None or kin.all()) and (kout is None or kout.all()):
            continue
        if op == "Conv":
            _rewrite_conv(dg, graph, node, kin, kout, recon)
        elif op == "ConvTranspose":  # weight [C_in, C_out, k...], group 1
            w = const_array(node.inputs[1])
            kin_ = np.ones(w.shape[0], bool) if kin is None else kin
            kout_ = np.ones(w.shape[1], bool) if kout is None else kout
            set_initializer(graph, node, 1, np.ascontiguousarray(w[kin_][:, kout_]))
            _bias(graph, node, 2, kout_)
        elif op in ("Gemm", "MatMul"):
            _rewrite_gemm(dg, graph, node, kin, kout, recon)
        elif op in ("BatchNormalization", "InstanceNormalization"):
            for i in range(1, len(node.inputs)):
                arr = const_array(node.inputs[i])
                if arr is not None and arr.ndim == 1 and len(arr) == len(kin):
                    set_initializer(graph, node, i, arr[kin])
        elif op in ELEMENTWISE:
            _rewrite_constants(graph, node, kout)
        elif op == "Split":
            _rewrite_split(graph, node, [keep(o) for o in node.outputs])
        elif op == "Reshape":
            shape = const_array(node.inputs[1]).copy()
            if len(shape) == 2 or shape[1] > 0:
                shape[1] = int(kout.sum())
            set_initializer(graph, node, 1, shape.astype(np.int64))
        elif op == "Resize" and len(node.inputs) > 3 and node.inputs[3] is not None:
            sizes = const_array(node.inputs[3])
            if sizes is not None:
                sizes = sizes.copy()
                sizes[1] = int(kout.sum())
                set_initializer(graph, node, 3, sizes.astype(np.int64))


def _bias(graph: ir.Graph, node: ir.Node, index: int, kout: np.ndarray) -> None:
    if len(node.inputs) > index and node.inputs[index] is not None:
        b = const_array(node.inputs[index])
        if b is not None and b.ndim >= 1 and b.shape[-1] == len(kout):
            set_initializer(graph, node, index, b[..., kout])


def _rewrite_conv(dg: DepGraph, graph: ir.Graph, node: ir.Node, kin, kout, recon) -> None:
    w = const_array(node.inputs[1])
    cin = w.shape[1] * attr_int(node, "group", 1)
    kin = np.ones(cin, bool) if kin is None else kin
    kout = np.ones(w.shape[0], bool) if kout is None else kout
    g = attr_int(node, "group", 1)
    if g == 1:
        w = _apply_recon(dg, node, w, kin, recon)
        new = w[kout][:, kin]
    elif g == cin and w.shape[1] == 1:  # depthwise: output follows input
        new = w[kout]
        node.attributes["group"] = ir.AttrInt64("group", int(kin.sum()))
    else:
        cout_g, cin_g = w.shape[0] // g, cin // g
        kin_g, kout_g = kin.reshape(g, cin_g), kout.reshape(g, cout_g)
        counts = {int(k.sum()) for k in kin_g}
        if len(counts) != 1:
            raise PassError(f"grouped Conv '{node.name}': uneven channel removal across groups "
                            "(analysis bug)")
        wg = w.reshape((g, cout_g) + w.shape[1:])
        new = np.concatenate([wg[j][kout_g[j]][:, kin_g[j]] for j in range(g)], axis=0)
        if counts.pop() == 0 or not kout_g.any(axis=1).all():
            raise PassError(f"grouped Conv '{node.name}': a conv group would lose all channels")
    set_initializer(graph, node, 1, np.ascontiguousarray(new))
    _bias(graph, node, 2, kout)


def _rewrite_gemm(dg: DepGraph, graph: ir.Graph, node: ir.Node, kin, kout, recon) -> None:
    b = const_array(node.inputs[1])
    trans = node.op_type == "Gemm" and attr_int(node, "transB", 0)
    k_dim, n_dim = (b.shape[1], b.shape[0]) if trans else b.shape
    kin = np.ones(k_dim, bool) if kin is None else kin
    kout = np.ones(n_dim, bool) if kout is None else kout
    w = b.T if trans else b  # [K, N]
    w = _apply_recon(dg, node, w.T, kin, recon).T  # recon works on [N, K, ...]
    w = w[kin][:, kout]
    set_initializer(graph, node, 1, np.ascontiguousarray(w.T if trans else w))
    if node.op_type == "Gemm":
        _bias(graph, node, 2, kout)


def _apply_recon(dg: DepGraph, node: ir.Node, w: np.ndarray, kin: np.ndarray,
                 recon: dict[tuple[ir.Node, int], np.ndarray]) -> np.ndarray:
    """Overwrite the kept input columns of ``w`` ([O, I, ...]) with reconstructed ones."""
    if not recon:
        return w
    w = w.copy()
    for gi in range(len(dg.groups)):
        cols = recon.get((node, gi))
        if cols is None:
            continue
        ch = dg.channels_of(node.inputs[0], gi)
        pos = np.nonzero((ch >= 0) & kin)[0]
        w[:, pos] = cols.astype(w.dtype)
    return w


def _rewrite_constants(graph: ir.Graph, node: ir.Node, kout: np.ndarray | None) -> None:
    if kout is None:
        return
    oshape = static_shape(node.outputs[0])
    if oshape is None:
        return
    c = len(kout)
    for i, v in enumerate(node.inputs):
        arr = const_array(v)
        if arr is None:
            continue
        axis = 1 - (len(oshape) - arr.ndim)
        if axis < 0 or arr.shape[axis] != c or (c == 1):
            continue
        set_initializer(graph, node, i, np.compress(kout, arr, axis=axis))


def _rewrite_split(graph: ir.Graph, node: ir.Node, keeps: list[np.ndarray | None]) -> None:
    shape = static_shape(node.inputs[0])
    if shape is None or attr_int(node, "axis", 0) % len(shape) != 1:
        return
    sizes = np.array([int(k.sum()) for k in keeps], dtype=np.int64)
    if "split" in node.attributes:
        node.attributes["split"] = ir.AttrInt64s("split", [int(s) for s in sizes])
        return
    if "num_outputs" in node.attributes:
        del node.attributes["num_outputs"]
    if len(node.inputs) < 2:
        node.resize_inputs(2)
    set_initializer(graph, node, 1, sizes, suffix=f"_{node.name}_split")
