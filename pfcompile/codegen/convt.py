"""Transposed convolutions as a convolution + depth-to-space (+ crop): the sub-pixel form.

``ConvTranspose`` with stride ``s`` and kernel ``k`` (per axis) writes output row
``u = q*s + r`` (phase ``r`` in ``[0, s)``) from the ``M = ceil(k / s)`` taps
``W[m*s + r]``, ``m < M``, applied to input rows ``q - m``:

    out[u] = sum_m x[q - m] * W[m*s + r]

so every phase is an ordinary correlation with the taps reversed. All ``s*s`` phases
together are one ``M x M`` convolution (padding ``M - 1``) to ``cout*s*s`` channels,
``K[(co*s + r_h)*s + r_w, ci, j_h, j_w] = W[ci, co, (M-1-j_h)*s + r_h, (M-1-j_w)*s + r_w]``
(zero where the index passes ``k``), then a depth-to-space reshuffle (ONNX ``DepthToSpace``
mode CRD) and a crop of the pads. With ``kernel == stride`` (DBNet / PP-OCR detection heads,
U-Net style 2x up-sampling) it is a 1x1 convolution and no crop. The convolution then runs
on pfcompile's blocked templates; TVM 0.27 has no x86 schedule for ``conv2d_transpose`` (it
ran on the default, unvectorised, single-threaded schedule). Measured on PP-OCRv4's detector
(``tools/profile_layers.py ppocr_det --threads 1``, loaded machine): its first
``ConvTranspose`` (24 -> 24, 16x16 -> 32x32, with the BatchNorm after it) took 744 µs, 43 %
of the model, where onnxruntime's takes 35 µs; the model went from 2.08 to 0.70 ms.

Written here because TVM's Relax has no such rewrite. Grouped or dilated transposed
convolutions, and an ``output_padding`` reaching past the last phase row, keep TVM's kernel.
"""

from __future__ import annotations

import numpy as np
from tvm import relax

from pfcompile.codegen.relax_util import bound_constant

__all__ = ["conv_transpose_as_pointwise"]


def _ints(a) -> list[int]:
    return [int(v) for v in a]


def _rewrite(call: relax.Call, w: np.ndarray) -> relax.Expr | None:
    """The conv + depth-to-space + crop equal to ``call``, or None when it is not an NCHW /
    IOHW, ungrouped, undilated float32 transposed convolution (module docstring)."""
    a = call.attrs
    if (a.data_layout != "NCHW" or a.kernel_layout != "IOHW" or
            (a.out_layout or "NCHW") != "NCHW" or int(a.groups) != 1 or w.ndim != 4):
        return None
    cin, cout, kh, kw = w.shape
    sh, sw = _ints(a.strides)
    if _ints(a.dilation) != [1, 1]:
        return None
    pt, pl = _ints(a.padding)[:2]    # bottom / right pads and output_padding: in the output shape
    try:
        n, c, h, wd = (int(s) for s in call.args[0].ty.shape)
        oh, ow = (int(s) for s in list(call.ty.shape)[2:])
    except (AttributeError, TypeError, ValueError):
        return None
    if c != cin or str(call.args[0].ty.dtype) != "float32" or w.dtype != np.float32:
        return None
    mh, mw = -(-kh // sh), -(-kw // sw)           # taps per output phase
    qh, qw = h + mh - 1, wd + mw - 1              # positions per phase
    if pt + oh > qh * sh or pl + ow > qw * sw:    # output_padding past the last phase row
        return None
    # K[(co*sh + rh)*sw + rw, ci, jh, jw] = W[ci, co, (mh-1-jh)*sh + rh, (mw-1-jw)*sw + rw]
    wz = np.zeros((cin, cout, mh * sh, mw * sw), np.float32)
    wz[:, :, :kh, :kw] = w
    k = wz.reshape(cin, cout, mh, sh, mw, sw)[:, :, ::-1, :, ::-1, :]
    k = np.ascontiguousarray(k.transpose(1, 3, 5, 0, 2, 4).reshape(cout * sh * sw, cin, mh, mw))
    y = relax.op.nn.conv2d(call.args[0], relax.const(k), strides=(1, 1),
                           padding=(mh - 1, mw - 1, mh - 1, mw - 1),
                           data_layout="NCHW", kernel_layout="OIHW")
    y = relax.op.reshape(y, (n, cout, sh, sw, qh, qw))
    y = relax.op.permute_dims(y, [0, 1, 4, 2, 5, 3])
    y = relax.op.reshape(y, (n, cout, qh * sh, qw * sw))
    if (pt, pl, oh, ow) != (0, 0, qh * sh, qw * sw):
        y = relax.op.strided_slice(y, axes=[2, 3], begin=[pt, pl], end=[pt + oh, pl + ow])
    return y


def conv_transpose_as_pointwise(mod):
    """Every float32 ``relax.nn.conv2d_transpose`` with a constant weight (ungrouped,
    undilated) becomes a ``conv2d`` + reshape / transpose (+ crop): module docstring."""
    import tvm

    @relax.expr_functor.mutator
    class _ConvT(relax.PyExprMutator):
        def visit_call_(self, call):
            call = super().visit_call_(call)
            if not (isinstance(call, relax.Call) and isinstance(call.op, tvm.ir.Op)
                    and call.op.name == "relax.nn.conv2d_transpose"):
                return call
            w = bound_constant(self, call.args[1])
            if w is None:
                return call
            new = _rewrite(call, w)
            return call if new is None else new

    out = tvm.IRModule(dict(mod.functions), attrs=mod.attrs)
    for gv, func in mod.functions.items():
        if isinstance(func, relax.Function):
            out[gv] = _ConvT(mod).visit_expr(func)
    return relax.transform.DeadCodeElimination()(out)
