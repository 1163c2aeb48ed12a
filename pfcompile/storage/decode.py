"""TIR decoders for :mod:`pfcompile.storage.encode` (run once, at load).

Each decoder is a PrimFunc over 1-D buffers whose lengths are symbolic, so one
compiled function serves every tensor of the same encoding (bit width, signed,
dtype): the library pays its code once, not per weight. Decoders write a flat
array; the caller reshapes it (a view) to the constant it replaces.
"""

from __future__ import annotations

from functools import cache

from tvm import s_tir, te, tirx
from tvm.script import tirx as T

__all__ = ["bits_func", "codebook_func", "codebook_group_func", "lanes_func", "sparse_func"]

_CHUNK = 4096  # elements per parallel task


def _unpack_expr(data, i, bits: int, signed: bool):
    """Element ``i`` of a :class:`~pfcompile.storage.encode.Bits` stream as int32."""
    pos = i * bits
    byte = tirx.shift_right(pos, 3)
    w = data[byte].astype("int32") | tirx.shift_left(data[byte + 1].astype("int32"), 8)
    if bits > 9:  # up to 7 + 24 bits: four bytes (bit 31 never reaches the mask below)
        w = w | tirx.shift_left(data[byte + 2].astype("int32"), 16) \
            | tirx.shift_left(data[byte + 3].astype("int32"), 24)
    v = tirx.shift_right(w, pos & 7) & ((1 << bits) - 1)
    if signed:
        half = 1 << (bits - 1)
        v = (v ^ half) - half
    return v


def _finish(func: tirx.PrimFunc) -> tirx.PrimFunc:
    sch = s_tir.Schedule(func)
    blk = sch.get_sblock("decode")
    (i,) = sch.get_loops(blk)
    outer, _ = sch.split(i, [None, _CHUNK])
    sch.parallel(outer)
    return (sch.mod["main"].with_attr("tirx.is_scheduled", True).with_attr("tir.noalias", True)
            .with_attr("op_pattern", 8))


@cache
def bits_func(bits: int, signed: bool, dtype: str) -> tirx.PrimFunc:
    """``out[i] = element i of the bit stream`` (``data``: uint8, ``out``: ``dtype``)."""
    m, n = te.var("m"), te.var("n")
    data = te.placeholder((m,), "uint8", name="data")
    out = te.compute((n,), lambda i: _unpack_expr(data, i, bits, signed).astype(dtype),
                     name="decode")
    return _finish(te.create_prim_func([data, out]))


@cache
def codebook_func(bits: int, dtype: str) -> tirx.PrimFunc:
    """``out[i] = table[index i of the bit stream]``."""
    m, k, n = te.var("m"), te.var("k"), te.var("n")
    data = te.placeholder((m,), "uint8", name="data")
    table = te.placeholder((k,), dtype, name="table")
    out = te.compute((n,), lambda i: table[_unpack_expr(data, i, bits, False)], name="decode")
    return _finish(te.create_prim_func([data, table, out]))


@cache
def codebook_group_func(bits: int, dtype: str) -> tirx.PrimFunc:
    """Several codebooks in one stream: segment ``s`` (elements ``starts[s]`` to
    ``starts[s + 1]``) reads its values from ``tables[s * 2**bits:]``. One parallel task a
    segment; elements between segments are not written."""
    size = 1 << bits
    mask = size - 1

    @T.prim_func(s_tir=True)
    def group(data_h: T.handle, tables_h: T.handle, starts_h: T.handle, out_h: T.handle):
        T.func_attr({"tirx.is_scheduled": True, "tir.noalias": True, "op_pattern": 8})
        m = T.int32()
        t = T.int32()
        ns = T.int32()
        n = T.int32()
        data = T.match_buffer(data_h, (m,), "uint8")
        tables = T.match_buffer(tables_h, (t,), dtype)
        starts = T.match_buffer(starts_h, (ns,), "int32")
        out = T.match_buffer(out_h, (n,), dtype)
        for s in T.parallel(ns - 1):
            with T.sblock("decode"):
                vs = T.axis.spatial(ns - 1, s)
                T.reads(data[0:m], tables[0:t], starts[vs:vs + 2])
                T.writes(out[0:n])
                for j in range(starts[vs + 1] - starts[vs]):
                    out[starts[vs] + j] = tables[vs * size + T.bitwise_and(T.shift_right(
                        T.Cast("int32", data[T.shift_right((starts[vs] + j) * bits, 3)])
                        | T.shift_left(T.Cast("int32", data[T.shift_right(
                            (starts[vs] + j) * bits, 3) + 1]), 8),
                        T.bitwise_and((starts[vs] + j) * bits, 7)), mask)]

    return group


@cache
def lanes_func(bits: int, signed: bool, dtype: str) -> tirx.PrimFunc:
    """``out[i]``: lane ``i % p`` of group ``i // p`` of a
    :class:`~pfcompile.storage.encode.Lanes` (``rank``: p lane ranks, then the lanes kept)."""
    m, q, n = te.var("m"), te.var("q"), te.var("n")
    data = te.placeholder((m,), "uint8", name="data")
    rank = te.placeholder((q,), "int32", name="rank")
    p = q - 1

    def lane(i):
        r = rank[tirx.floormod(i, p)]
        idx = tirx.floordiv(i, p) * rank[p] + tirx.max(r, 0)
        return tirx.if_then_else(r < 0, tirx.const(0, "int32"),
                                 _unpack_expr(data, idx, bits, signed)).astype(dtype)

    out = te.compute((n,), lane, name="decode")
    return _finish(te.create_prim_func([data, rank, out]))


@cache
def sparse_func(dtype: str, block: int) -> tirx.PrimFunc:
    """Scatter ``values`` to the elements whose ``mask`` bit is set; zeros elsewhere.
    One parallel task per block of ``block`` elements, starting at ``counts[block]``."""
    zero = tirx.const(0, dtype)

    @T.prim_func(s_tir=True)
    def sparse(mask_h: T.handle, counts_h: T.handle, values_h: T.handle, out_h: T.handle):
        T.func_attr({"tirx.is_scheduled": True, "tir.noalias": True, "op_pattern": 8})
        mb = T.int32()
        nb = T.int32()
        nv = T.int32()
        n = T.int32()
        mask = T.match_buffer(mask_h, (mb,), "uint8")
        counts = T.match_buffer(counts_h, (nb,), "int32")
        values = T.match_buffer(values_h, (nv,), dtype)
        out = T.match_buffer(out_h, (n,), dtype)
        for b in T.parallel(nb):
            with T.sblock("decode"):
                vb = T.axis.spatial(nb, b)
                T.reads(mask[0:mb], counts[vb], values[0:nv])
                T.writes(out[vb * block:vb * block + block])
                cnt = T.sblock_alloc_buffer((1,), "int32", scope="local")
                cnt[0] = counts[vb]
                for j in range(block):
                    if vb * block + j < n:
                        if T.bitwise_and(T.shift_right(
                                T.Cast("int32", mask[T.shift_right(vb * block + j, 3)]),
                                T.bitwise_and(vb * block + j, 7)), 1) == 1:
                            out[vb * block + j] = values[cnt[0]]
                            cnt[0] = cnt[0] + 1
                        else:
                            out[vb * block + j] = zero

    return sparse
