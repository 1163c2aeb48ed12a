"""Small graph-rewrite helpers shared by the passes (not public API)."""

from __future__ import annotations

import onnx_ir as ir

__all__ = ["attr_float", "attr_int", "attr_ints", "bypass"]


def bypass(node: ir.Node, out: ir.Value, replacement: ir.Value) -> None:
    """Make every use of ``out`` (a graph output too) read ``replacement`` instead.

    When ``out`` is a graph output, ``replacement`` takes over its name so the
    model's signature is unchanged.
    """
    graph = node.graph
    assert graph is not None
    if out.is_graph_output():
        name = out.name
        out.replace_all_uses_with(replacement, replace_graph_outputs=True)
        out.name = None
        replacement.name = name
    else:
        out.replace_all_uses_with(replacement)


def attr_int(node: ir.Node, name: str, default: int) -> int:
    a = node.attributes.get(name)
    return default if a is None else int(a.value)


def attr_float(node: ir.Node, name: str, default: float) -> float:
    a = node.attributes.get(name)
    return default if a is None else float(a.value)


def attr_ints(node: ir.Node, name: str, default: list[int] | None = None) -> list[int] | None:
    a = node.attributes.get(name)
    return default if a is None else [int(x) for x in a.value]
