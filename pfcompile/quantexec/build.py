"""A minimal build path for the integer kernels (tests, benchmarks): ONNX ->
Relax -> :func:`lower_qdq` -> ``tvm.compile``. The product path,
``pfcompile.compiler.compile_model``, shares :func:`pfcompile.compiler.build_executable`."""

from __future__ import annotations

import onnx
import tvm

from pfcompile.errors import CompileError

__all__ = ["build", "import_onnx", "onnx_layer_names"]

_LAYER_ONNX_OPS = ("Conv", "MatMul", "Gemm")


def onnx_layer_names(model: onnx.ModelProto) -> list[str]:
    """Names of the Conv/MatMul/Gemm nodes in graph order (as Relax imports them)."""
    return [n.name or f"{n.op_type}_{i}" for i, n in enumerate(model.graph.node)
            if n.op_type in _LAYER_ONNX_OPS]


def import_onnx(model: onnx.ModelProto) -> tvm.IRModule:
    from tvm.relax.frontend.onnx import from_onnx

    try:
        return from_onnx(model, keep_params_in_input=False)
    except Exception as exc:
        raise CompileError(f"TVM could not import the ONNX model: {exc}") from exc


def build(model: onnx.ModelProto, target, *, integer: bool = True):
    """Compile ``model`` for ``target``; returns ``(executable, reports)``.

    With ``integer=False`` the QDQ pairs stay float fake-quant (TVM's default). With
    ``integer=True`` the target gains the VNNI feature its hardware reports, if any.
    """
    from pfcompile.compiler import build_executable
    from pfcompile.quantexec.onnx_prep import prepare_qdq

    model, reports = prepare_qdq(model)
    mod = import_onnx(model)
    ex, layer_reports = build_executable(mod, target, integer=integer,
                                         layer_names=onnx_layer_names(model) if integer else None)
    return ex, reports + layer_reports
