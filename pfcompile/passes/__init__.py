"""Compression passes on ``onnx_ir`` models.

Each pass is an ``onnx_ir.passes`` pass (functional unless named otherwise)
returning ``PassResult(model, modified)``; one pass a file.
"""

from __future__ import annotations

from pfcompile.passes.canonical import canonical_passes, canonicalize
from pfcompile.passes.canonical_bn import FoldBatchNormPass
from pfcompile.passes.canonical_dropout import DropIdentityDropoutPass
from pfcompile.passes.canonical_fold import ConstantFoldingPass
from pfcompile.passes.depgraph import ChannelGroup, DepGraph, analyze, dependency_groups
from pfcompile.passes.prune import PrunePass, keep_count
from pfcompile.passes.prune_config import PruneConfig
from pfcompile.passes.stats import LayerStats, ModelStats, model_stats

__all__ = [
    "ChannelGroup",
    "ConstantFoldingPass",
    "DepGraph",
    "DropIdentityDropoutPass",
    "FoldBatchNormPass",
    "LayerStats",
    "ModelStats",
    "PruneConfig",
    "PrunePass",
    "analyze",
    "canonical_passes",
    "canonicalize",
    "dependency_groups",
    "keep_count",
    "model_stats",
]
# ``prune(model, config, calib)`` lives in ``pfcompile.passes.prune`` and is not
# re-exported here: a package attribute named ``prune`` would shadow that module.
