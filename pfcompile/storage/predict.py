"""The bytes a compiled library will store for an ONNX model's constants, before
compiling it: each initializer (and ``Constant``) at the exact encoding
:func:`pfcompile.storage.pack_weights` would give it (:func:`~pfcompile.storage.encode.choose_all`:
2-4-bit weights bit-packed, a codebook's indices at their width, sparse weights as a bitmap
+ non-zeros; a Bits / Lanes tensor packed where it saves
:data:`~pfcompile.storage.encode.MIN_SAVING_GROUPED` bytes, as it is decoded in a group,
any other encoding where it saves ``min_saving``; bit widths merged as the library merges
them). The library applies the same encodings to the constants its kernels read, so this is
the weight part of the deployed size up to layout padding and the kernels'
per-channel parameters; the code part has to be measured (see
``pfcompile.search.sizing``). The scale of an int32 bias's DequantizeLinear (onnxruntime's
QDQ bias, the quantize pass's: ``x_scale * w_scale``) is not counted: the library adds the
integers to its accumulators and keeps no such scale (the weight scales are counted)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from pfcompile.storage.encode import choose_all

__all__ = ["stored_weight_bytes"]


def _bias_scales(model: onnx.ModelProto) -> set[str]:
    """Initializers that are only the scale of a DequantizeLinear of an int32 initializer."""
    int32 = {t.name for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT32}
    scales, other = set(), set()
    for n in model.graph.node:
        for i, name in enumerate(n.input):
            if n.op_type == "DequantizeLinear" and i == 1 and n.input[0] in int32:
                scales.add(name)
            else:
                other.add(name)
    return scales - other


def stored_weight_bytes(model: onnx.ModelProto, min_saving: int = 1024) -> int:
    total = 0
    skip = _bias_scales(model)
    tensors = [t for t in model.graph.initializer if t.name not in skip] + [
        a.t for n in model.graph.node if n.op_type == "Constant" for a in n.attribute
        if a.name == "value"]
    arrays: list[np.ndarray] = []
    for t in tensors:
        try:
            arr = np.asarray(numpy_helper.to_array(t))
        except Exception:  # noqa: BLE001 - a type numpy cannot hold: count its protobuf bytes
            total += t.ByteSize()
            continue
        if arr.dtype.kind in "iuf":
            arrays.append(arr)
        else:
            total += int(arr.nbytes)
    for arr, enc in zip(arrays, choose_all(arrays, min_saving), strict=True):
        total += int(arr.nbytes) if enc is None else enc.nbytes
    return total
