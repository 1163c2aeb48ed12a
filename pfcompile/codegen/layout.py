"""Graph-level layout: every conv2d goes to a blocked layout (NCHW[x]c, the
NeoCPU approach) chosen per call, and ``relax.transform.ConvertLayout``
propagates it through elementwise ops and pooling so that activations stay
blocked between layers; only weights (constants, folded at compile time) and
the graph's edges are transformed."""

from __future__ import annotations

from tvm import relax

__all__ = ["channel_chunk", "conv_layouts", "convert_layout_pass"]


def channel_chunk(channels: int, block: int) -> int:
    """The channel chunk for a tensor with ``channels`` channels: the whole
    channel count when it is at most ``block``, else the largest power of two
    ≤ ``block`` that divides it (1 for odd counts such as 37)."""
    if channels <= block:
        return channels
    b = block
    while b > 1 and channels % b:
        b //= 2
    return max(b, 1)


def conv_layouts(cin: int, cout: int, groups: int, block: int) -> list[str]:
    """[data, kernel, out] layouts for one conv2d."""
    ib, ob = channel_chunk(cin, block), channel_chunk(cout, block)
    if groups == 1:
        return [f"NCHW{ib}c", f"OIHW{ib}i{ob}o", f"NCHW{ob}c"]
    if groups == cin == cout:
        return [f"NCHW{ib}c", f"OIHW1i{ib}o", f"NCHW{ib}c"]
    return [f"NCHW{ib}c", f"OIHW1i{ob}o", f"NCHW{ob}c"]


def convert_layout_pass(block: int):
    """``ConvertLayout`` with a per-call callback (NCHW convs only)."""

    def cb(call: relax.Call) -> dict:
        if call.op.name != "relax.nn.conv2d":
            return {}
        a = call.attrs
        if str(a.data_layout) != "NCHW" or str(a.kernel_layout) != "OIHW":
            return {}
        xs, ws = call.args[0].ty.shape, call.args[1].ty.shape
        try:
            cin, cout = int(xs[1]), int(ws[0])
        except TypeError:  # symbolic channels: leave as is
            return {}
        return {"relax.nn.conv2d": conv_layouts(cin, cout, int(a.groups), block)}

    return relax.transform.ConvertLayout({}, cb)
