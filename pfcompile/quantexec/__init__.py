"""Integer execution of quantised (QDQ) models: the Relax lowering pass, integer
kernels and their schedules, and a build path for tests and benchmarks."""

from pfcompile.quantexec.build import build, onnx_layer_names
from pfcompile.quantexec.lower import LayerReport, QuantFallbackWarning, lower_qdq, reports_to_json

__all__ = [
           "LayerReport",
           "QuantFallbackWarning",
           "build",
           "lower_qdq",
           "onnx_layer_names",
           "reports_to_json",
]
