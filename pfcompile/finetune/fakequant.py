"""Fake quantization with a straight-through estimator, and the integer ranges
that ONNX QuantizeLinear / DequantizeLinear imply.

``QuantizeLinear`` is interpreted in float: ``q = clamp(round(x / s) + zp, qmin, qmax)``
where rounding passes the gradient straight through (``d round(u) / du := 1``)
and ``clamp`` passes it only inside ``[qmin, qmax]`` (the usual clipped STE).
``DequantizeLinear`` is ``(q - zp) * s``. Rounding is half-to-even, as ONNX
specifies (``torch.round`` rounds half to even).

Bit widths: a zero point's element type fixes the container range (int8
``[-128, 127]``, uint8 ``[0, 255]``, int4 ``[-8, 7]``, uint4 ``[0, 15]``, ...).
Sub-8-bit values stored in int8/uint8 containers: the converter reads a weight's
bit width from the quantize pass's ``pfcompile.bits`` node metadata when present;
without it they are recognised two ways:

* activations: a ``Clip(qmin, qmax)`` between ``QuantizeLinear`` and
  ``DequantizeLinear`` (interpreted node by node, so nothing special is needed);
* constant weights (an integer initializer read by ``DequantizeLinear``): the
  smallest b-bit range (b = 2..8) that holds every stored value. Symmetric
  max-scaled quantization puts each channel's largest weight at the range end,
  so this recovers the bit width the quantizer used.
"""

from __future__ import annotations

import numpy as np
import torch
from onnx import TensorProto

__all__ = [
    "broadcast_param",
    "dequantize",
    "dtype_range",
    "fake_quantize",
    "round_ste",
    "stored_range",
]

_RANGES: dict[int, tuple[int, int]] = {
    TensorProto.INT8: (-128, 127),
    TensorProto.UINT8: (0, 255),
    TensorProto.INT16: (-32768, 32767),
    TensorProto.UINT16: (0, 65535),
    TensorProto.INT4: (-8, 7),
    TensorProto.UINT4: (0, 15),
    # int32 biases (accumulator units). The codes live in a float32 tensor here, where
    # 2**31 - 1 would round up to 2**31 and wrap on export: 128 less is a float32 value.
    TensorProto.INT32: (-(2**31 - 128), 2**31 - 128),
}
if hasattr(TensorProto, "INT2"):  # onnx >= 1.20
    _RANGES[TensorProto.INT2] = (-2, 1)
    _RANGES[TensorProto.UINT2] = (0, 3)


def dtype_range(elem_type: int) -> tuple[int, int] | None:
    """``(qmin, qmax)`` of an ONNX integer element type, ``None`` if not an integer type
    used for quantization."""
    return _RANGES.get(int(elem_type))


def stored_range(values: np.ndarray, elem_type: int) -> tuple[int, int]:
    """The narrowest b-bit range (b = 2..8) of the container's signedness that holds
    every value of a quantized constant; the container range for 16-bit types."""
    full = dtype_range(elem_type)
    if full is None:
        raise ValueError(f"element type {elem_type} is not a quantized integer type")
    if full[1] > 255 or values.size == 0:
        return full
    lo, hi = int(values.min()), int(values.max())
    signed = full[0] < 0
    for b in range(2, 9):
        qmin, qmax = (-(1 << (b - 1)), (1 << (b - 1)) - 1) if signed else (0, (1 << b) - 1)
        if qmin >= full[0] and qmax <= full[1] and lo >= qmin and hi <= qmax:
            return qmin, qmax
    return full


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round half to even in the forward pass, identity gradient in the backward pass."""
    return x + (torch.round(x) - x).detach()


def broadcast_param(p: torch.Tensor, x: torch.Tensor, axis: int) -> torch.Tensor:
    """Reshape a per-axis (1-D) scale or zero point so it broadcasts along ``axis`` of ``x``."""
    if p.dim() != 1 or x.dim() == 0:
        return p
    ax = axis % x.dim()
    shape = [1] * x.dim()
    shape[ax] = p.numel()
    return p.reshape(shape)


def fake_quantize(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor,
                  qmin: int, qmax: int, axis: int = 1) -> torch.Tensor:
    """QuantizeLinear in float with a straight-through estimator: returns the
    integer codes (as a float tensor)."""
    s = broadcast_param(scale, x, axis)
    z = broadcast_param(zero_point, x, axis)
    return torch.clamp(round_ste(x / s) + z, qmin, qmax)


def dequantize(q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor,
               axis: int = 1) -> torch.Tensor:
    """DequantizeLinear: ``(q - zp) * scale`` with per-axis broadcasting."""
    s = broadcast_param(scale, q, axis)
    z = broadcast_param(zero_point, q, axis)
    return (q - z) * s
