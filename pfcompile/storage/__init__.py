"""Compact, exact storage of a compiled model's weights, decoded once at load
(:func:`pack_weights`; the encodings in :mod:`pfcompile.storage.encode`)."""

from pfcompile.storage.encode import choose
from pfcompile.storage.lift import PackedTensor, StorageReport, pack_weights, pack_weights_pass

__all__ = ["PackedTensor", "StorageReport", "choose", "pack_weights",
           "pack_weights_pass"]
