"""Small helpers shared by pfcompile's Relax rewrites (``relax.PyExprMutator`` classes)."""

from __future__ import annotations

from typing import Any

import numpy as np
from tvm import relax

__all__ = ["bound_constant", "fp32_matmul_weight"]


def bound_constant(mutator: Any, e: Any) -> np.ndarray | None:
    """The value of ``e`` when it is a constant, or a variable ``mutator`` saw bound to
    one; else None."""
    import tvm

    if isinstance(e, relax.Var):
        b = mutator.lookup_binding(e)
        e = b if b is not None else e
    return e.value.numpy() if isinstance(e, tvm.ir.expr.Constant) else None


def fp32_matmul_weight(mutator: Any, call: Any) -> np.ndarray | None:
    """The constant 2-D float32 ``W`` of a ``relax.matmul(x, W)`` call; else None."""
    import tvm

    if not (isinstance(call, relax.Call) and isinstance(call.op, tvm.ir.Op)
            and call.op.name == "relax.matmul"):
        return None
    w = bound_constant(mutator, call.args[1])
    if w is None or w.ndim != 2 or w.dtype != np.float32:
        return None
    return w
