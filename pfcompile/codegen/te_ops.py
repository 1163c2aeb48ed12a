"""TE compute definitions for convolutions in blocked layouts (NCHW[x]c).

TVM 0.27's legalizer refuses conv2d whose layouts carry a channel chunk, so
pfcompile legalizes every ``relax.nn.conv2d`` itself after the layout pass
(:mod:`pfcompile.codegen.layout`) has put it into ``NCHW{ib}c`` data,
``OIHW{ib}i{ob}o`` kernel and ``NCHW{ob}c`` output. Block names are fixed
(``pf_conv2d_nchwc``, ``pf_dwconv2d_nchwc``, ``pf_gconv2d_nchwc``, ``pf_pad``) so
the schedule templates recognise them after operator fusion.
"""

from __future__ import annotations

import re

from tvm import relax, te, tirx, topi

__all__ = [
    "CONV_BLOCK",
    "DWCONV_BLOCK",
    "GCONV_BLOCK",
    "PAD_BLOCK",
    "conv2d_nchwc",
    "legalize_conv2d",
    "parse_chunk",
]

CONV_BLOCK = "pf_conv2d_nchwc"
DWCONV_BLOCK = "pf_dwconv2d_nchwc"
GCONV_BLOCK = "pf_gconv2d_nchwc"
PAD_BLOCK = "pf_pad"

_CHUNK = re.compile(r"^NCHW(\d+)c$")


def parse_chunk(layout: str) -> int | None:
    """``NCHW8c`` → 8, ``NCHW`` → None."""
    m = _CHUNK.match(str(layout))
    return int(m.group(1)) if m else None


def _pad(data: te.Tensor, pt: int, pl: int, pb: int, pr: int) -> te.Tensor:
    if pt == pl == pb == pr == 0:
        return data
    return topi.nn.pad(data, [0, 0, pt, pl, 0], [0, 0, pb, pr, 0], name=PAD_BLOCK)


def _pad_nchw_to_chunk(data: te.Tensor, pt: int, pl: int, pb: int, pr: int) -> te.Tensor:
    """(N, C, H, W) → padded (N, 1, H + pt + pb, W + pl + pr, C), zeros outside."""
    n, c, ih, iw = (int(v) for v in data.shape)

    def f(b, _c0, y, x, ci):
        inside = tirx.all(y >= pt, y < ih + pt, x >= pl, x < iw + pl)
        return tirx.if_then_else(inside, data[b, ci, y - pt, x - pl],
                                 tirx.const(0.0, data.dtype))
    return te.compute((n, 1, ih + pt + pb, iw + pl + pr, c), f, name=PAD_BLOCK)


def conv2d_nchwc(data: te.Tensor, kernel: te.Tensor, strides, padding, dilation, groups: int,
                 out_dtype: str) -> te.Tensor:
    """Conv2D: data (N, C/ib, H, W, ib), kernel (O/ob, (C/g)/ib_k, KH, KW, ib_k, ob)
    → (N, O/ob, OH, OW, ob). ``padding`` is (top, left, bottom, right).

    Data in plain NCHW (N, C, H, W) with groups 1 (the model's input, ``C`` ≤ a few
    channels, see :func:`pfcompile.codegen.layout.fold_input_transforms`): the padding
    stage reads it and writes the padded rows channel-last, (N, 1, H', W', C), so the
    conv reads one chunk of ``ib = C`` as it would from NCHW{C}c and the separate
    layout-transform kernel over the whole input goes away."""
    nchw = len(data.shape) == 4
    if nchw:
        n, ib, ih, iw = (int(v) for v in data.shape)
        icc = 1
    else:
        n, icc, ih, iw, ib = (int(v) for v in data.shape)
    occ, kic, kh, kw, kib, ob = (int(v) for v in kernel.shape)
    sh, sw = (int(v) for v in strides)
    dh, dw = (int(v) for v in dilation)
    pt, pl, pb, pr = (int(v) for v in padding)
    oh = (ih + pt + pb - (kh - 1) * dh - 1) // sh + 1
    ow = (iw + pl + pr - (kw - 1) * dw - 1) // sw + 1
    if nchw:
        if int(groups) != 1 or kib != ib or kic != 1:
            raise ValueError("NCHW data: groups 1 and one input chunk of every channel only")
        pad = _pad_nchw_to_chunk(data, pt, pl, pb, pr)
    else:
        pad = _pad(data, pt, pl, pb, pr)
    rkh = te.reduce_axis((0, kh), name="rkh")
    rkw = te.reduce_axis((0, kw), name="rkw")
    cin, cout = icc * ib, occ * ob
    info = {"cin": cin, "cout": cout, "ih": ih, "iw": iw, "kh": kh, "kw": kw, "sh": sh, "sw": sw,
            "dh": dh, "dw": dw, "pt": pt, "pl": pl, "pb": pb, "pr": pr, "groups": int(groups),
            "ib": ib, "ob": ob, "n": n}
    attrs = {"pf_conv": info}
    if groups == 1:
        ric = te.reduce_axis((0, kic), name="ric")
        rib = te.reduce_axis((0, kib), name="rib")
        if kib == ib:
            def f(b, oc, y, x, o):
                return te.sum(
                    pad[b, ric, y * sh + rkh * dh, x * sw + rkw * dw, rib].astype(out_dtype)
                    * kernel[oc, ric, rkh, rkw, rib, o].astype(out_dtype),
                    axis=[ric, rkh, rkw, rib])
        else:  # kernel chunk differs from data chunk: index through the flat channel
            def f(b, oc, y, x, o):
                c = ric * kib + rib
                return te.sum(
                    pad[b, c // ib, y * sh + rkh * dh, x * sw + rkw * dw, c % ib].astype(out_dtype)
                    * kernel[oc, ric, rkh, rkw, rib, o].astype(out_dtype),
                    axis=[ric, rkh, rkw, rib])
        return te.compute((n, occ, oh, ow, ob), f, name=CONV_BLOCK, attrs=attrs)
    if groups == cin == cout and ib == ob and kic * kib == 1:
        def fd(b, c, y, x, o):
            return te.sum(
                pad[b, c, y * sh + rkh * dh, x * sw + rkw * dw, o].astype(out_dtype)
                * kernel[c, 0, rkh, rkw, 0, o].astype(out_dtype), axis=[rkh, rkw])
        return te.compute((n, occ, oh, ow, ob), fd, name=DWCONV_BLOCK, attrs=attrs)
    cin_g, cout_g = cin // groups, cout // groups
    rr = te.reduce_axis((0, cin_g), name="rr")

    def fg(b, oc, y, x, o):
        g = (oc * ob + o) // cout_g
        c = g * cin_g + rr
        return te.sum(
            pad[b, c // ib, y * sh + rkh * dh, x * sw + rkw * dw, c % ib].astype(out_dtype)
            * kernel[oc, rr // kib, rkh, rkw, rr % kib, o].astype(out_dtype),
            axis=[rr, rkh, rkw])
    return te.compute((n, occ, oh, ow, ob), fg, name=GCONV_BLOCK, attrs=attrs)


def legalize_conv2d(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
    """Legalize ``relax.nn.conv2d`` in NCHW[x]c layouts with pfcompile's compute;
    anything else goes to TVM's default legalization."""
    a = call.attrs
    ib, ob = parse_chunk(a.data_layout), parse_chunk(a.out_layout)
    klay = str(a.kernel_layout)
    if ib is None and str(a.data_layout) == "NCHW" and int(a.groups) == 1:
        ib = 0   # plain NCHW data into a blocked kernel: fold_input_transforms' calls
    if ib is None or ob is None or not klay.startswith("OIHW") or len(klay) == 4:
        from tvm.relax.transform.legalize_ops.nn import _nn_conv2d

        return _nn_conv2d(bb, call)
    out_dtype = str(a.out_dtype) if a.out_dtype is not None else ""
    if out_dtype in ("", "void", "None"):
        out_dtype = str(call.args[0].ty.dtype)
    return bb.call_te(conv2d_nchwc, call.args[0], call.args[1], list(a.strides),
                      list(a.padding), list(a.dilation), int(a.groups), out_dtype,
                      primfunc_name_hint="pf_conv2d")
