"""Integer execution of quantised (QDQ) models: the Relax lowering pass, integer
kernels and their schedules, and a build path for tests and benchmarks."""

from pfcompile.quantexec.build import build, onnx_layer_names
from pfcompile.quantexec.lower import LayerReport, QuantFallbackWarning, lower_qdq, reports_to_json
from pfcompile.quantexec.onnx_prep import prepare_qdq
from pfcompile.quantexec.pipeline import int8_pipeline
from pfcompile.quantexec.x86 import with_int8_features

__all__ = [
    "LayerReport",
    "QuantFallbackWarning",
    "build",
    "int8_pipeline",
    "lower_qdq",
    "onnx_layer_names",
    "prepare_qdq",
    "reports_to_json",
    "with_int8_features",
]
