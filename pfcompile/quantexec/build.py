"""A minimal build path for the integer kernels (tests, benchmarks): ONNX ->
Relax -> :func:`lower_qdq` -> ``tvm.compile``. The product path is
``pfcompile.compiler.compile_model``, which calls :func:`lower_qdq` itself."""

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
    from pfcompile.quantexec.lower import lower_qdq
    from pfcompile.quantexec.onnx_prep import prepare_qdq
    from pfcompile.quantexec.x86 import with_int8_features

    if integer:
        target = with_int8_features(target)

    model, reports = prepare_qdq(model)
    mod = import_onnx(model)
    if integer:
        mod, layer_reports = lower_qdq(mod, target, onnx_layer_names(model))
        reports += layer_reports
    from pfcompile.quantexec.pipeline import int8_pipeline

    tt = target.tvm_target()
    try:
        ex = tvm.compile(mod, target=tt, relax_pipeline=int8_pipeline(tt) if integer else "default")
    except Exception as exc:
        raise CompileError(f"tvm.compile failed for target '{target.name}': {exc}") from exc
    return ex, reports
