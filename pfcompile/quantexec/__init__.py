"""Integer execution of quantised (QDQ) models: the Relax lowering pass and the integer
kernels with their schedules. Models are built through :mod:`pfcompile.compiler`."""

from pfcompile.quantexec.lower import LayerReport, QuantFallbackWarning, lower_qdq, reports_to_json
from pfcompile.quantexec.onnx_prep import onnx_layer_names, prepare_qdq
from pfcompile.quantexec.pipeline import int8_pipeline
from pfcompile.quantexec.x86 import with_int8_features

__all__ = [
    "LayerReport",
    "QuantFallbackWarning",
    "int8_pipeline",
    "lower_qdq",
    "onnx_layer_names",
    "prepare_qdq",
    "reports_to_json",
    "with_int8_features",
]
