"""The numpy reference of an integer layer: the whole layer at once, no tiling.

The accelerator must reproduce it exactly; it must agree with onnxruntime's QDQ
execution within one quantisation step (the reference requantises in fixed point,
onnxruntime in float)."""

from __future__ import annotations

import numpy as np

from pfcompile.accel.qgraph import QLayer, requant_params
from pfcompile.accel.sim import requantize

__all__ = ["integer_accumulators", "reference_layer"]


def integer_accumulators(layer: QLayer, x: np.ndarray) -> np.ndarray:
    """int64 sum over the window of (x_q - z_x) * w_q + b, as (N, O, OH, OW)."""
    x = np.asarray(x).astype(np.int64).reshape((x.shape[0],) + tuple(layer.in_shape[1:]))
    pt, pl, pb, pr = layer.pads
    xp = np.pad(x - layer.x_zero, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    _, o, oh, ow = layer.out_shape
    sh, sw = layer.stride
    w = layer.weight.astype(np.int64)
    acc = np.zeros((x.shape[0], o, oh, ow), np.int64) + layer.bias.astype(np.int64)[None, :, None, None]
    for i in range(w.shape[2]):
        for j in range(w.shape[3]):
            patch = xp[:, :, i:i + (oh - 1) * sh + 1:sh, j:j + (ow - 1) * sw + 1:sw]
            # int64 products summed in float64 by BLAS: exact (integers far below 2**53)
            acc += np.rint(np.tensordot(patch.astype(np.float64), w[:, :, i, j].astype(np.float64),
                                        axes=([1], [1]))).astype(np.int64).transpose(0, 3, 1, 2)
    return acc


def reference_layer(layer: QLayer, x: np.ndarray) -> np.ndarray:
    """Integer output of ``layer`` for integer input ``x``."""
    mult, shift = requant_params(layer)
    return requantize(integer_accumulators(layer, x), mult, shift, layer.y_zero, layer.y_dtype,
                      layer.clamp())
