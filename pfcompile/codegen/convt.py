"""Transposed convolutions whose kernel equals their stride, as a 1x1 convolution + depth-to-space.

``ConvTranspose`` with ``kernel == stride`` (no overlap between the kernel's footprints, as in
DBNet / PP-OCR detection heads and U-Net style 2x up-sampling) writes every output pixel
from exactly one input pixel:

    out[n, co, h*kh + i, w*kw + j] = sum_ci x[n, ci, h, w] * W[ci, co, i, j]

which is a 1x1 convolution to ``co*kh*kw`` channels, ``W'[(co*kh + i)*kw + j, ci] =
W[ci, co, i, j]``, followed by a depth-to-space reshuffle (ONNX ``DepthToSpace`` mode CRD)
and, for non-zero pads, a crop. The 1x1 convolution then runs on pfcompile's blocked
``conv2d_1x1`` template; TVM 0.27 has no x86 schedule for ``conv2d_transpose`` (it ran on
the default, unvectorised, single-threaded schedule). Measured on PP-OCRv4's detector
(``tools/profile_layers.py ppocr_det --threads 1``, loaded machine): its first
``ConvTranspose`` (24 -> 24, 16x16 -> 32x32, with the BatchNorm after it) took 744 µs, 43 %
of the model, where onnxruntime's takes 35 µs.

Written here because TVM's Relax has no such rewrite, and the general case (kernel larger
than the stride, overlapping footprints) is not handled: those keep TVM's kernel.
"""

from __future__ import annotations

import numpy as np
from tvm import relax

from pfcompile.codegen.relax_util import bound_constant

__all__ = ["conv_transpose_as_pointwise"]


def _ints(a) -> list[int]:
    return [int(v) for v in a]


def _rewrite(call: relax.Call, w: np.ndarray) -> relax.Expr | None:
    """The 1x1 conv + depth-to-space (+ crop) equal to ``call``, or None when it is not
    a kernel == stride, NCHW / IOHW, ungrouped, undilated transposed convolution."""
    a = call.attrs
    if (a.data_layout != "NCHW" or a.kernel_layout != "IOHW" or
            (a.out_layout or "NCHW") != "NCHW" or int(a.groups) != 1 or w.ndim != 4):
        return None
    cin, cout, kh, kw = w.shape
    sh, sw = _ints(a.strides)
    if (kh, kw) != (sh, sw) or _ints(a.dilation) != [1, 1] or _ints(a.output_padding) != [0, 0]:
        return None
    pt, pl, pb, pr = _ints(a.padding)
    try:
        n, c, h, wd = (int(s) for s in call.args[0].ty.shape)
    except (AttributeError, TypeError, ValueError):
        return None
    if c != cin or str(call.args[0].ty.dtype) != "float32" or w.dtype != np.float32:
        return None
    wp = np.ascontiguousarray(w.transpose(1, 2, 3, 0).reshape(cout * kh * kw, cin, 1, 1))
    y = relax.op.nn.conv2d(call.args[0], relax.const(wp), strides=(1, 1), padding=(0, 0),
                           data_layout="NCHW", kernel_layout="OIHW")
    y = relax.op.reshape(y, (n, cout, kh, kw, h, wd))
    y = relax.op.permute_dims(y, [0, 1, 4, 2, 5, 3])
    y = relax.op.reshape(y, (n, cout, h * kh, wd * kw))
    if pt or pl or pb or pr:
        y = relax.op.strided_slice(y, axes=[2, 3], begin=[pt, pl],
                                   end=[h * kh - pb, wd * kw - pr])
    return y


def conv_transpose_as_pointwise(mod):
    """Every float32 ``relax.nn.conv2d_transpose`` with a constant weight and kernel ==
    stride (module docstring) becomes a 1x1 ``conv2d`` + reshape / transpose (+ crop)."""
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
