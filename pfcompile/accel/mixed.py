"""QDQ models with per-layer bit widths, for the FPGA-style targets.

From an 8-bit QDQ model (onnxruntime's static quantizer,
:func:`pfcompile.passes.ort_quantize.ort_quantize_qdq`: per-channel int8 weights, uint8
activations), :func:`set_layer_bits` narrows chosen layers:

* weights to ``w`` bits: per output channel, ``s = max|w| / (2**(w-1) - 1)``,
  ``w_q = round(w / s)`` (from the float weights when the float model is given,
  otherwise from the dequantized 8-bit weights), still stored as int8;
* a layer's input activation to ``a`` bits: the tensor's QuantizeLinear gets
  ``2**a - 1`` levels over the same calibrated range and a ``Clip`` in front of it
  (so the uint8 container holds only ``0 .. 2**a - 1``); every DequantizeLinear of
  the tensor follows. An activation read by several layers takes the widest request;
* every bias is re-quantised to int32 at the new ``s_x * s_w``;
* the widths are written to the metadata key ``pfcompile.accel.bits`` that
  :mod:`pfcompile.accel.qgraph` reads.

The result runs in onnxruntime (fake-quant in float) and on the accelerator.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

import numpy as np
import onnx
from onnx import helper, numpy_helper

from pfcompile.accel.qgraph import BITS_METADATA_KEY
from pfcompile.errors import PassError
from pfcompile.model import check_onnx

__all__ = ["quant_layers", "set_layer_bits"]


def quant_layers(model: onnx.ModelProto) -> list[str]:
    """Names of the Conv/Gemm nodes whose weights come from DequantizeLinear."""
    prod = {o: n for n in model.graph.node for o in n.output}
    return [n.name for n in model.graph.node if n.op_type in ("Conv", "Gemm")
            and len(n.input) > 1 and n.input[1] in prod
            and prod[n.input[1]].op_type == "DequantizeLinear"]


def _through_identity(prod: dict, name: str) -> str:
    while name in prod and prod[name].op_type == "Identity":
        name = prod[name].input[0]
    return name


def set_layer_bits(qdq: onnx.ModelProto, bits: dict[str, tuple[int, int]],
               float_model: onnx.ModelProto | None = None) -> onnx.ModelProto:
    """A copy of ``qdq`` with layer ``name`` at ``bits[name] = (wbits, abits)`` (8 = as is)."""
    m = onnx.ModelProto.FromString(qdq.SerializeToString())
    g = m.graph
    inits = {t.name: t for t in g.initializer}
    fl = {t.name: t for t in float_model.graph.initializer} if float_model is not None else {}
    prod = {o: n for n in g.node for o in n.output}
    cons: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        for i in n.input:
            cons.setdefault(i, []).append(n)
    nodes = {n.name: n for n in g.node}
    layers = quant_layers(m)
    unknown = sorted(set(bits) - set(layers))
    if unknown:
        raise PassError(f"set_layer_bits: {unknown} are not quantized Conv/Gemm layers of the model "
                        f"(known: {layers[:5]}...)")

    def arr(name: str) -> np.ndarray:
        return numpy_helper.to_array(inits[name])

    def put(name: str, a: np.ndarray) -> str:
        new = name
        k = 0
        while new in inits:
            k += 1
            new = f"{name}__b{k}"
        t = numpy_helper.from_array(a, new)
        g.initializer.append(t)
        inits[new] = t
        return new

    # --- activations: the widest request per input tensor
    act_bits: dict[str, int] = {}
    for name in layers:
        dq_x = prod.get(nodes[name].input[0])
        if dq_x is None or dq_x.op_type != "DequantizeLinear":
            continue
        a = int(bits.get(name, (8, 8))[1])
        act_bits[dq_x.input[0]] = max(act_bits.get(dq_x.input[0], 0), a)
    old_x_scale: dict[str, float] = {}
    for xq, a in act_bits.items():
        if a >= 8:
            continue
        q = prod.get(xq)
        if q is None or q.op_type != "QuantizeLinear":
            raise PassError(f"set_layer_bits: activation '{xq}' is not made by a QuantizeLinear")
        s, z = float(arr(q.input[1])), int(arr(q.input[2]))
        if arr(q.input[2]).dtype != np.uint8:
            raise PassError(f"set_layer_bits: activation '{xq}' is not uint8")
        lo, hi = (0 - z) * s, (255 - z) * s
        levels = 2 ** a - 1
        s_b = (hi - lo) / levels
        z_b = int(np.clip(round(-lo / s_b), 0, levels))
        old_x_scale[xq] = s
        s_name = put(f"{xq}_scale_a{a}", np.array(s_b, np.float32))
        z_name = put(f"{xq}_zero_a{a}", np.array(z_b, np.uint8))
        lo_n = put(f"{xq}_clip_lo", np.array((0 - z_b) * s_b, np.float32))
        hi_n = put(f"{xq}_clip_hi", np.array((levels - z_b) * s_b, np.float32))
        clipped = f"{q.input[0]}_clip_a{a}"
        clip = helper.make_node("Clip", [q.input[0], lo_n, hi_n], [clipped], name=f"{q.name}_clip")
        idx = list(g.node).index(q)
        g.node.insert(idx, clip)
        q.input[0] = clipped
        q.input[1], q.input[2] = s_name, z_name
        for c in cons.get(xq, []):
            if c.op_type == "DequantizeLinear":
                c.input[1], c.input[2] = s_name, z_name
    # --- weights and biases
    meta: dict[str, dict[str, int]] = {}
    for name in layers:
        node = nodes[name]
        wb = int(bits.get(name, (8, 8))[0])
        dq_x = prod.get(node.input[0])
        xq = dq_x.input[0] if dq_x is not None and dq_x.op_type == "DequantizeLinear" else ""
        meta[name] = {"w": wb, "a": min(8, act_bits.get(xq, 8))}
        dq_w = prod[node.input[1]]
        w_old = arr(dq_w.input[0]).astype(np.float64)
        ws_old = arr(dq_w.input[1]).astype(np.float64)
        axis = 0
        for at in dq_w.attribute:
            if at.name == "axis":
                axis = at.i
        shape = [1] * w_old.ndim
        if ws_old.size > 1:
            shape[axis] = -1
        w_float = w_old * ws_old.reshape(shape)
        src = dq_w.input[0][:-len("_quantized")] if dq_w.input[0].endswith("_quantized") else ""
        if src in fl:
            w_float = numpy_helper.to_array(fl[src]).astype(np.float64)
        ws_new = ws_old
        if wb < 8:
            qmax = 2 ** (wb - 1) - 1
            red = tuple(i for i in range(w_float.ndim) if i != axis) if ws_old.size > 1 \
                else tuple(range(w_float.ndim))
            amax = np.abs(w_float).max(axis=red)
            ws_new = np.where(amax > 0, amax / qmax, 1.0)
            w_new = np.clip(np.round(w_float / ws_new.reshape(shape)), -qmax, qmax).astype(np.int8)
            dq_w.input[0] = put(f"{dq_w.input[0]}_w{wb}", w_new)
            dq_w.input[1] = put(f"{dq_w.input[1]}_w{wb}", ws_new.astype(np.float32))
        xs_changed = xq in old_x_scale
        if (wb < 8 or xs_changed) and len(node.input) > 2 and node.input[2]:
            bname = _through_identity(prod, node.input[2])
            dq_b = prod.get(bname)
            if dq_b is None or dq_b.op_type != "DequantizeLinear":
                continue                  # a float bias: the compiler rounds it itself
            b_float = arr(dq_b.input[0]).astype(np.float64) * arr(dq_b.input[1]).astype(np.float64)
            xs = float(arr(prod[xq].input[1])) if xq in prod else 1.0
            bs = (xs * ws_new).astype(np.float32).reshape(-1)
            bs = np.broadcast_to(bs, b_float.shape).copy()
            b_new = np.round(b_float / bs.astype(np.float64)).astype(np.int32)
            new_b = helper.make_node(
                "DequantizeLinear",
                [put(f"{dq_b.input[0]}_{name}", b_new), put(f"{dq_b.input[1]}_{name}", bs),
                 put(f"{dq_b.input[0]}_{name}_zp", np.zeros(b_new.shape, np.int32))],
                [f"{name}_bias_requant"], name=f"{name}_bias_requant", axis=0)
            g.node.insert(list(g.node).index(node), new_b)
            node.input[2] = f"{name}_bias_requant"
    _set_meta(m, meta)
    used = {i for n in g.node for i in n.input}
    keep = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)
    check_onnx(m, "the mixed-precision model (set_layer_bits)")
    return m


def _set_meta(m: onnx.ModelProto, meta: dict) -> None:
    for p in list(m.metadata_props):
        if p.key == BITS_METADATA_KEY:
            m.metadata_props.remove(p)
    e = m.metadata_props.add()
    e.key, e.value = BITS_METADATA_KEY, json.dumps(meta, sort_keys=True)


def uniform_bits(layers: Iterable[str], w: int, a: int) -> dict[str, tuple[int, int]]:
    return {n: (w, a) for n in layers}
