"""Numpy int64 reference of one integer conv kernel, and the inputs to check one with.

Every template in :mod:`pfcompile.quantexec.kernel_choice` computes, bit for bit,
:func:`conv_reference`: an int64 accumulation of ``(x - zx) * w`` (padding = ``zx``),
plus the bias, then :func:`~pfcompile.quantexec.requant.requantize_ref` (or, for a float
output, the float32 dequantise epilogue). :func:`kernel_case` draws random inputs for a
:class:`~pfcompile.quantexec.kernels.QConvSpec` in the layouts and with the weight
packing a kernel expects; tests run the kernel on the host or on the emulated arm64
device and compare with ``case.expected``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pfcompile.quantexec.kernels import BLOCK, QConvSpec
from pfcompile.quantexec.requant import fma_f32, requant_scale, requantize_ref

__all__ = ["KernelCase", "conv_reference", "from_blocked", "kernel_case", "to_blocked"]


def to_blocked(x: np.ndarray) -> np.ndarray:
    """NCHW -> the stored ``NCHW8c`` layout ``[N, C/8, H*W, 8]`` (zero-filled extra channels)."""
    n, c, h, w = x.shape
    cb = -(-c // BLOCK)
    full = np.zeros((n, cb * BLOCK, h, w), x.dtype)
    full[:, :c] = x
    return np.ascontiguousarray(full.reshape(n, cb, BLOCK, h * w).transpose(0, 1, 3, 2))


def from_blocked(y: np.ndarray, c: int, h: int, w: int) -> np.ndarray:
    """``[N, C/8, H*W, 8]`` -> NCHW with ``c`` channels."""
    n, cb, _, _ = y.shape
    return y.transpose(0, 1, 3, 2).reshape(n, cb * BLOCK, h, w)[:, :c]


def _accumulate(sp: QConvSpec, x: np.ndarray, w: np.ndarray, bias: np.ndarray) -> np.ndarray:
    pt, pl, pb, pr = sp.padding
    xp = np.pad(x.astype(np.int64) - sp.zx, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    icg, ocg = sp.c // sp.groups, sp.oc // sp.groups
    acc = np.zeros((sp.n, sp.oc, sp.oh, sp.ow), np.int64)
    (s0, s1), (d0, d1) = sp.stride, sp.dilation
    for g in range(sp.groups):
        for ky in range(sp.kh):
            for kx in range(sp.kw):
                patch = xp[:, g * icg:(g + 1) * icg,
                           ky * d0: ky * d0 + s0 * (sp.oh - 1) + 1: s0,
                           kx * d1: kx * d1 + s1 * (sp.ow - 1) + 1: s1]
                wg = w[g * ocg:(g + 1) * ocg, :, ky, kx].astype(np.int64)
                acc[:, g * ocg:(g + 1) * ocg] += np.einsum("nchw,oc->nohw", patch, wg)
    return acc + bias.astype(np.int64)[None, :, None, None]


def conv_reference(sp: QConvSpec, x: np.ndarray, w: np.ndarray, bias: np.ndarray,
                   scale: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """The layer output (NCHW) for NCHW ``x``, OIHW int8 ``w``, int32 ``bias`` (accumulator
    units, *without* the ``-zx * sum(w)`` correction) and the float32 epilogue inputs.

    Both epilogues start with ``fma(float32(acc), scale, offset)`` rounded once to float32
    (the kernels call ``llvm.fma``), computed by :func:`~pfcompile.quantexec.requant.fma_f32`.
    """
    acc = _accumulate(sp, x, w, bias)
    if sp.y_dtype == "float32":
        y = fma_f32(acc.astype(np.float32), scale[None, :, None, None], offset[None, :, None, None])
        return np.clip(y, np.float32(sp.fmin), np.float32(sp.fmax))
    return requantize_ref(acc, scale, offset, sp.qmin, sp.qmax).astype(sp.y_dtype)


@dataclass
class KernelCase:
    """Inputs of one kernel call (``args``, the output buffer last) and the expected output
    in the kernel's own output layout."""

    args: list[np.ndarray]
    expected: np.ndarray

    def check(self, got: np.ndarray) -> None:
        np.testing.assert_array_equal(got, self.expected)


def kernel_case(sp: QConvSpec, pack_weight, seed: int = 0, x_offset: int = 0) -> KernelCase:
    """Random activations, weights, bias and epilogue for ``sp``; ``pack_weight`` is the
    kernel's weight packing, ``x_offset`` its activation offset (folded into the bias)."""
    rng = np.random.default_rng(seed)
    info = np.iinfo(sp.x_dtype)
    x = rng.integers(info.min, info.max + 1, (sp.n, sp.c, sp.h, sp.w)).astype(sp.x_dtype)
    w = rng.integers(-127, 128, (sp.oc, sp.c // sp.groups, sp.kh, sp.kw)).astype(np.int8)
    bias = rng.integers(-5000, 5000, sp.oc).astype(np.int32)
    # multipliers that spread the outputs over about +-64 (requantised) or +-4 (float)
    spread = float(np.std(_accumulate(sp, x, w, bias))) + 1.0
    if sp.y_dtype == "float32":
        scale = (rng.uniform(0.5, 2.0, sp.oc) * 4.0 / spread).astype(np.float32)
        offset = rng.uniform(-1.0, 1.0, sp.oc).astype(np.float32)
    else:
        scale = requant_scale(rng.uniform(0.5, 2.0, sp.oc) * 64.0 / spread)
        # the zero point plus a float bias's fraction of an accumulator unit (requant_offset)
        offset = (sp.zy + rng.uniform(-0.5, 0.5, sp.oc) * scale).astype(np.float32)
    wsum = w.reshape(sp.oc, -1).astype(np.int64).sum(1)
    bias_k = (bias - (sp.zx + x_offset) * wsum).astype(np.int32)
    expected = conv_reference(sp, x, w, bias, scale, offset)
    xin = x if sp.x_layout == "NCHW" else to_blocked(x)
    if sp.y_layout != "NCHW":
        expected = to_blocked(expected)
    out = np.zeros(expected.shape, expected.dtype)
    return KernelCase([xin, pack_weight(w), bias_k, scale, offset, out], expected)
