"""Channel importance from the weights alone: L1 norm and BatchNorm |gamma|."""

from __future__ import annotations

import numpy as np

from pfcompile.errors import PassError
from pfcompile.ir import const_array
from pfcompile.passes._rewrite import attr_int
from pfcompile.passes.depgraph import DepGraph

__all__ = ["bn_scores", "l1_scores"]


def _empty(dg: DepGraph) -> list[np.ndarray]:
    return [np.zeros(g.channels) for g in dg.groups]


def l1_scores(dg: DepGraph) -> list[np.ndarray]:
    """Per group, per channel: sum over the producing layers of the mean |w| of the
    channel's output filter, each layer normalised by its mean (so layers of
    different fan-in weigh alike)."""
    scores = _empty(dg)
    for node, first, n in dg.sources:
        w = const_array(node.inputs[1])
        if w is None:
            continue
        w = np.abs(w.astype(np.float64))
        if node.op_type == "Conv":
            norms = w.reshape(n, -1).mean(1)
        elif node.op_type == "ConvTranspose":  # [C_in, C_out, k...]: filters on axis 1
            norms = np.moveaxis(w, 1, 0).reshape(w.shape[1], -1).mean(1)
        elif node.op_type == "Gemm" and attr_int(node, "transB", 0):
            norms = w.mean(1)
        else:  # Gemm transB=0 and MatMul: B is [K, N]
            norms = w.mean(0)
        if norms.shape != (n,):
            continue  # a frozen layer whose weight the analysis did not follow
        norms = norms / max(norms.mean(), 1e-12)
        atoms = np.arange(first, first + n)
        for gi, ch, s in zip(dg.atom_group[atoms], dg.atom_channel[atoms], norms):
            if gi >= 0:
                scores[gi][ch] += s
    return scores


def bn_scores(dg: DepGraph) -> list[np.ndarray]:
    """Per group, per channel: |gamma| of the BatchNormalization nodes the channel
    passes (network slimming, Liu et al. 2017). Groups that pass no BN fall back
    to :func:`l1_scores`. Raises :class:`PassError` if the model has no BN."""
    scores = _empty(dg)
    seen = [False] * len(dg.groups)
    any_bn = False
    for node in dg.model.graph:
        if node.op_type != "BatchNormalization" or node.inputs[0] not in dg.layouts:
            continue
        gamma = const_array(node.inputs[1])
        if gamma is None:
            continue
        any_bn = True
        g = np.abs(gamma.astype(np.float64))
        g = g / max(g.mean(), 1e-12)
        lay = dg.layouts[node.inputs[0]]
        for gi, ch, s in zip(dg.atom_group[lay], dg.atom_channel[lay], g):
            if gi >= 0:
                scores[gi][ch] += s
                seen[gi] = True
    if not any_bn:
        raise PassError("criterion 'bn' needs BatchNormalization nodes, and this model has "
                        "none (BN was folded into Conv at export); use --criterion l1 or "
                        "lasso, or export with BN kept (zoo.export_onnx(keep_bn=True))")
    fallback = l1_scores(dg)
    return [s if seen[i] else fallback[i] for i, s in enumerate(scores)]
