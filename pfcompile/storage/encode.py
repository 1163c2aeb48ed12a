"""Exact compact encodings of a weight tensor, chosen by the bytes they take.

A compiled model's weights reach the library as constants in whatever layout
and type its kernels read (``Kernel.pack_weight`` of an integer kernel, a float
template's blocked layout). This module looks at such a constant *as it is*
and stores it in the smallest of a few encodings that reproduce it bit for bit:

* :class:`Bits` — integers that fit ``b <= 24`` bits (2-, 3-, 4-bit weights in an int8
  container, int8 values in an int16 kernel layout, int32 biases of 16-20 bits) as a
  little-endian bit stream;
* :class:`Codebook` — floats with at most 256 distinct values (k-means
  codebooks) as ``b``-bit indices plus a table of the values;
* :class:`Lanes` — integers in groups of ``p`` (a trailing block of the kernel layout)
  whose same lanes are zero in every group (a 3-tap depthwise row padded to 4 taps, a
  1-channel stem padded to 8 channels): the other lanes only, as :class:`Bits`;
* :class:`Sparse` — a bitmap of the non-zero elements, the count of non-zeros
  before every block of :data:`BLOCK` elements, and the non-zero values
  (themselves raw, bit-packed or a codebook).

Because the encodings work on the final constant, they do not depend on the
layout a kernel chose: padding and reordering keep the value set and the zeros.
Decoding is :func:`decode` here (numpy: the check) and
:mod:`pfcompile.storage.decode` (TIR: what the library runs once at load).

Why a bitmap and not CSR/BSR for sparse tensors: CSR needs an index per non-zero
(2-4 bytes), a bitmap one bit per element. At the sparsities the search offers
(up to 0.875) the bitmap is smaller (at 75 % sparsity, float32: 1.14 B/element
vs 1.5 (uint16 CSR) or 2.0 (int32 CSR, the sparsify pass's report)), it needs no
2-D view of a kernel's blocked layout, and it decodes block-parallel.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

__all__ = ["BLOCK", "DECODER_BYTES", "MAX_BITS", "MIN_SAVING_GROUPED", "Bits", "Codebook",
           "Encoded", "Lanes", "Raw", "Sparse", "bits_needed", "choose", "choose_all", "decode",
           "encode_bits", "encode_bits_as", "encode_codebook", "encode_lanes", "encode_sparse",
           "lanes_as", "widen_bits"]

BLOCK = 256  #: elements per block of a :class:`Sparse` bitmap (one int32 count each)
MAX_BITS = 24  #: widest :class:`Bits` element (a decoder reads it from 4 bytes)


def pad_bytes(bits: int) -> int:
    """Zero bytes after a :class:`Bits` stream: a decoder reads an element of up to 9 bits
    as 2 bytes, a wider one as 4, from the byte holding its first bit."""
    return 1 if bits <= 9 else 3


@dataclass(frozen=True)
class Raw:
    """Values stored as they are."""

    values: np.ndarray

    @property
    def n(self) -> int:
        return int(self.values.size)

    @property
    def dtype(self) -> str:
        return str(self.values.dtype)

    @property
    def nbytes(self) -> int:
        return int(self.values.nbytes)


@dataclass(frozen=True)
class Bits:
    """``n`` integers of ``bits`` bits, element ``i`` at bits ``[i*bits, (i+1)*bits)`` of
    ``data`` (little endian; :func:`pad_bytes` zero bytes at the end so that a decoder may
    read two or four bytes for any element); two's complement when ``signed``."""

    data: np.ndarray  # uint8
    n: int
    bits: int
    signed: bool
    dtype: str  # decoded dtype

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes)


@dataclass(frozen=True)
class Codebook:
    """``table[index[i]]``: the distinct values and one bit-packed index per element."""

    index: Bits
    table: np.ndarray

    @property
    def n(self) -> int:
        return self.index.n

    @property
    def dtype(self) -> str:
        return str(self.table.dtype)

    @property
    def nbytes(self) -> int:
        return self.index.nbytes + int(self.table.nbytes)


@dataclass(frozen=True)
class Sparse:
    """Bit ``i`` of ``mask`` says element ``i`` is non-zero; ``counts[k]`` is the number of
    non-zeros before element ``k * BLOCK``; ``values`` holds the non-zeros in order."""

    mask: np.ndarray    # uint8, ceil(n / 8) bytes
    counts: np.ndarray  # int32, ceil(n / BLOCK)
    values: Raw | Bits | Codebook
    n: int
    dtype: str

    @property
    def nbytes(self) -> int:
        return int(self.mask.nbytes + self.counts.nbytes) + self.values.nbytes


@dataclass(frozen=True)
class Lanes:
    """``n`` integers in groups of ``p = rank.size - 1`` elements; lane ``l`` of every group
    is ``values[g * k + rank[l]]`` (``k = rank[p]`` kept lanes a group), or 0 where
    ``rank[l] < 0``."""

    values: Bits
    rank: np.ndarray  # int32, p + 1
    n: int
    dtype: str

    @property
    def period(self) -> int:
        return int(self.rank.size - 1)

    @property
    def nbytes(self) -> int:
        return self.values.nbytes + int(self.rank.nbytes)


Encoded = Raw | Bits | Codebook | Lanes | Sparse

MAX_PERIOD = 256  #: largest group of a :class:`Lanes` encoding


def bits_needed(lo: int, hi: int, signed: bool) -> int:
    """Fewest bits holding every integer in ``[lo, hi]`` (two's complement when signed)."""
    if signed:
        b = 1
        while not (-(1 << (b - 1)) <= lo and hi <= (1 << (b - 1)) - 1):
            b += 1
        return b
    return max(1, int(hi).bit_length())


def _pack(v: np.ndarray, bits: int) -> np.ndarray:
    """Low ``bits`` of each (non-negative int64) value as a little-endian bit stream + the
    :func:`pad_bytes`."""
    n = v.size
    bitarr = ((v.reshape(-1, 1) >> np.arange(bits, dtype=np.int64)) & 1).astype(np.uint8)
    stream = np.zeros(-(-n * bits // 8) * 8, np.uint8)
    stream[:n * bits] = bitarr.reshape(-1)
    return np.concatenate([np.packbits(stream, bitorder="little"),
                           np.zeros(pad_bytes(bits), np.uint8)])


def encode_bits(a: np.ndarray, signed: bool | None = None) -> Bits | None:
    """An integer array as :class:`Bits` (``None`` for a float or empty array, or when more
    than :data:`MAX_BITS` bits, or at least the dtype's own, are needed)."""
    if a.size == 0 or a.dtype.kind not in "iu":
        return None
    v = a.reshape(-1).astype(np.int64)
    lo, hi = int(v.min()), int(v.max())
    if signed is None:
        signed = lo < 0
    bits = bits_needed(lo, hi, signed)
    if bits > min(MAX_BITS, 8 * a.dtype.itemsize):
        return None
    return Bits(_pack(v & ((1 << bits) - 1), bits), int(a.size), bits, bool(signed), str(a.dtype))


def encode_bits_as(a: np.ndarray, bits: int, signed: bool) -> Bits:
    """An integer array as :class:`Bits` of a given width (every value must fit it)."""
    v = a.reshape(-1).astype(np.int64)
    if v.size and bits_needed(int(v.min()), int(v.max()), signed) > bits:
        raise ValueError(f"values of {a.dtype} do not fit {bits} {'signed' if signed else 'unsigned'} bits")
    return Bits(_pack(v & ((1 << bits) - 1), bits), int(a.size), bits, bool(signed), str(a.dtype))


def _unpack(e: Bits) -> np.ndarray:
    bitarr = np.unpackbits(e.data, bitorder="little")[:e.n * e.bits].reshape(e.n, e.bits)
    v = (bitarr.astype(np.int64) << np.arange(e.bits, dtype=np.int64)).sum(axis=1)
    if e.signed:
        half = 1 << (e.bits - 1)
        v = (v ^ half) - half
    return v.astype(e.dtype)


def _as_bits_view(a: np.ndarray) -> np.ndarray:
    """Floats compared by bit pattern (so -0.0, 0.0 and NaNs stay what they are)."""
    return a.reshape(-1).view(np.dtype(f"u{a.dtype.itemsize}"))


def encode_codebook(a: np.ndarray, max_values: int = 256) -> Codebook | None:
    """A float array with at most ``max_values`` distinct values as a :class:`Codebook`."""
    if a.size == 0 or a.dtype.kind != "f":
        return None
    keys, inverse = np.unique(_as_bits_view(a), return_inverse=True)
    if keys.size > max_values:
        return None
    idx = encode_bits(inverse.astype(np.int64), signed=False)
    if idx is None:  # pragma: no cover - at most 256 values need at most 8 bits
        return None
    return Codebook(Bits(idx.data, idx.n, idx.bits, False, "int32"), keys.view(a.dtype).copy())


def _best_dense(a: np.ndarray) -> Raw | Bits | Codebook:
    cands: list[Raw | Bits | Codebook] = [Raw(np.ascontiguousarray(a.reshape(-1)))]
    for enc in (encode_bits(a), encode_codebook(a)):
        if enc is not None:
            cands.append(enc)
    return min(cands, key=lambda e: e.nbytes)


def lanes_as(a: np.ndarray, keep: np.ndarray, bits: int, signed: bool) -> Lanes:
    """``a`` (whose length is a multiple of ``keep.size``, zero in the lanes not kept) as
    :class:`Lanes` keeping the lanes ``keep`` (bool, one a lane) at ``bits`` bits."""
    p = keep.size
    kept = a.reshape(-1, p)[:, keep]
    rank = np.full(p + 1, -1, np.int32)
    rank[:p][keep] = np.arange(int(keep.sum()), dtype=np.int32)
    rank[p] = int(keep.sum())
    return Lanes(encode_bits_as(kept, bits, signed), rank, int(a.size), str(a.dtype))


def encode_lanes(a: np.ndarray) -> Lanes | None:
    """An integer array whose groups of ``p`` trailing elements (``p`` a product of its last
    dimensions, at most :data:`MAX_PERIOD`) have lanes that are zero in every group, as
    :class:`Lanes` (the smallest over ``p``); None when no such lanes."""
    if a.size == 0 or a.dtype.kind not in "iu" or a.ndim < 2:
        return None
    best = None
    p = 1
    for d in reversed(a.shape[1:]):
        p *= int(d)
        if p > MAX_PERIOD or a.size % p:
            break
        keep = (a.reshape(-1, p) != 0).any(axis=0)
        if keep.all() or not keep.any():
            continue
        vals = a.reshape(-1, p)[:, keep]
        lo, hi = int(vals.min()), int(vals.max())
        signed = lo < 0
        bits = bits_needed(lo, hi, signed)
        if bits > min(MAX_BITS, 8 * a.dtype.itemsize):
            continue
        enc = lanes_as(a.reshape(-1), keep, bits, signed)
        if best is None or enc.nbytes < best.nbytes:
            best = enc
    return best


def encode_sparse(a: np.ndarray) -> Sparse | None:
    """Bitmap + block counts + the non-zero values (best dense encoding of them)."""
    if a.size == 0:
        return None
    flat = a.reshape(-1)
    nz = _as_bits_view(a) != 0
    mask = np.packbits(nz, bitorder="little")
    per_block = np.add.reduceat(nz.astype(np.int64), np.arange(0, flat.size, BLOCK))
    counts = np.concatenate([[0], np.cumsum(per_block)[:-1]]).astype(np.int32)
    vals = flat[nz]
    values = _best_dense(vals) if vals.size else Raw(vals.copy())
    return Sparse(mask, counts, values, int(a.size), str(a.dtype))


def decode(e: Encoded) -> np.ndarray:
    """The flat array an encoding stands for (the numpy twin of the TIR decoders)."""
    if isinstance(e, Raw):
        return e.values.reshape(-1)
    if isinstance(e, Bits):
        return _unpack(e)
    if isinstance(e, Codebook):
        return e.table[_unpack(e.index)]
    if isinstance(e, Lanes):
        p = e.period
        out = np.zeros((e.n // p, p), e.dtype)
        keep = e.rank[:p] >= 0
        out[:, keep] = _unpack(e.values).reshape(-1, int(e.rank[p]))
        return out.reshape(-1)
    nz = np.unpackbits(e.mask, bitorder="little")[:e.n].astype(bool)
    out = np.zeros(e.n, e.dtype)
    out[nz] = decode(e.values)
    return out


def choose(a: np.ndarray, min_saving: int = 1024, min_saving_bits: int | None = None
           ) -> Encoded | None:
    """The smallest exact encoding of ``a``, or ``None`` when none saves ``min_saving``
    bytes (a decoder call costs code and a load-time step; tiny tensors stay as they are);
    a sparse encoding only when it also saves ``min_saving`` over the best dense one.
    ``min_saving_bits`` (default ``min_saving``): the saving that a :class:`Bits` or
    :class:`Lanes` encoding needs (:func:`pfcompile.storage.pack_weights` decodes those in
    groups, where a tensor costs less than a decoder call).
    Every candidate is decoded back and compared bit for bit before it is returned."""
    if a.size == 0 or a.dtype.kind not in "iuf":
        return None
    min_bits = min_saving if min_saving_bits is None else min_saving_bits
    cands: list[Encoded] = []
    for enc in (encode_bits(a), encode_codebook(a), encode_lanes(a)):
        if enc is not None:
            cands.append(enc)
    zeros = a.size - int(np.count_nonzero(_as_bits_view(a)))
    if zeros * 8 > a.size:  # more than one element in 8 is zero: a bitmap may pay
        sp = encode_sparse(a)
        if sp is not None:
            cands.append(sp)
    cands = [c for c in cands
             if a.nbytes - c.nbytes >= (min_bits if isinstance(c, Bits | Lanes) else min_saving)]
    dense = [c.nbytes for c in cands if not isinstance(c, Sparse)]
    if dense:  # a sparse encoding adds a decoder (its code) to the dense one it holds
        cands = [c for c in cands if not isinstance(c, Sparse) or min(dense) - c.nbytes >= min_saving]
    for c in sorted(cands, key=lambda e: e.nbytes):
        back = decode(c)
        if back.dtype == a.dtype and np.array_equal(_as_bits_view(back.reshape(a.shape)), _as_bits_view(a)):
            return c
    return None


#: the saving a Bits / Lanes encoding of one tensor needs (decoded in a group: a view and
#: a tuple field, ~200 bytes of VM code, against a constant's ~60-byte header)
MIN_SAVING_GROUPED = 256


#: what one more decoder costs a library, in bytes: its function (~450 bytes of code) and a
#: group's allocation and call (~300 bytes of VM code and constants)
DECODER_BYTES = 768


def widen_bits(encs: list) -> list:
    """``encs`` with Bits encodings of the same sign and dtype widened to the next wider
    width present where that costs fewer bytes than :data:`DECODER_BYTES` (one decoder and
    one group less: the per-channel biases of two epilogue kinds, 16 and 18 bits)."""
    out = list(encs)
    by: dict[tuple, dict[int, list[int]]] = {}
    for k, e in enumerate(out):
        if isinstance(e, Bits):
            by.setdefault((e.signed, e.dtype), {}).setdefault(e.bits, []).append(k)
    for (signed, _), widths in by.items():
        ws = sorted(widths)
        for w, w2 in itertools.pairwise(ws):
            idx = widths.pop(w)
            extra = sum((w2 - w) * out[k].n for k in idx) / 8
            if extra < DECODER_BYTES:
                for k in idx:
                    out[k] = encode_bits_as(decode(out[k]), w2, signed)
                widths[w2].extend(idx)
            else:
                widths[w] = idx
    return out


def choose_all(arrays: list[np.ndarray], min_saving: int = 1024) -> list[Encoded | None]:
    """The encoding each of ``arrays`` (the constants of one library) is stored in, as
    :func:`pfcompile.storage.pack_weights` chooses them: :func:`choose` with the grouped
    saving :data:`MIN_SAVING_GROUPED` for Bits / Lanes, then :func:`widen_bits`."""
    return widen_bits([choose(a, min_saving, min(min_saving, MIN_SAVING_GROUPED)) for a in arrays])
