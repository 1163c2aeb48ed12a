"""The canonical form every compression pass starts from."""

from __future__ import annotations

import onnx_ir as ir
from onnx_ir.passes import PassManager, PassResult
from onnx_ir.passes.common import NameFixPass, RemoveUnusedNodesPass, TopologicalSortPass

from pfcompile.ir import ModelLike, infer_shapes, to_ir
from pfcompile.passes.canonical_bn import FoldBatchNormPass
from pfcompile.passes.canonical_dropout import DropIdentityDropoutPass
from pfcompile.passes.canonical_fold import ConstantFoldingPass

__all__ = ["canonical_passes", "canonicalize"]


def canonical_passes(fold_bn: bool = True) -> PassManager:
    """Drop Identity/Dropout, name unnamed nodes/values uniquely, fold constants,
    (fold BN), remove dead nodes, sort."""
    passes: list[ir.passes.PassBase] = [DropIdentityDropoutPass(), NameFixPass(),
                                        ConstantFoldingPass()]
    if fold_bn:
        passes.append(FoldBatchNormPass())
    passes += [RemoveUnusedNodesPass(), TopologicalSortPass()]
    return PassManager(passes)


def canonicalize(model: ModelLike, fold_bn: bool = True) -> PassResult:
    """Run :func:`canonical_passes` on a copy of ``model``; shapes re-inferred."""
    m = to_ir(model)
    result = canonical_passes(fold_bn)(m)
    infer_shapes(result.model)
    return result
