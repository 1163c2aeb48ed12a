"""onnxruntime's static QDQ quantizer, wrapped once (per-channel symmetric int8 weights,
per-tensor activations calibrated one sample at a time).

pfcompile's own quantize pass (:mod:`pfcompile.passes.quantize`) writes the same
format; this wrapper makes the 8-bit models the accelerator search narrows per layer
(:mod:`pfcompile.search.accel_device`, ``preprocess=False`` as it always ran there) and
the third-party QDQ models that tests and benchmarks compile.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["ort_quantize_qdq"]


def ort_quantize_qdq(fp32_path: str | Path, out_path: str | Path, calib: np.ndarray, *,
                     input_name: str = "input", activation: str = "uint8",
                     per_channel: bool = True, preprocess: bool = True) -> Path:
    """``quantize_static(..., QuantFormat.QDQ)`` of ``fp32_path`` calibrated on ``calib``
    (N, ...), written to ``out_path`` (returned). ``activation``: ``uint8`` or ``int8``;
    ``preprocess``: run onnxruntime's ``quant_pre_process`` (shape inference and graph
    clean-up) first."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter([{input_name: calib[i:i + 1].astype(np.float32)}
                             for i in range(len(calib))])

        def get_next(self):
            return next(self._it, None)

    out_path = Path(out_path)
    src = Path(fp32_path)
    if preprocess:
        src = out_path.with_suffix(".pre.onnx")
        quant_pre_process(str(fp32_path), str(src))
    quantize_static(str(src), str(out_path), _Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=per_channel,
                    activation_type=QuantType.QUInt8 if activation == "uint8" else QuantType.QInt8,
                    weight_type=QuantType.QInt8)
    if preprocess:
        src.unlink(missing_ok=True)
    return out_path
