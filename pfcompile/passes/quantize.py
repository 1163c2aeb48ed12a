"""Post-training quantization to ONNX QDQ form (uniform, mixed 2-8 bits, or k-means codebook).

QDQ format written here (the contract the int8 lowering and fine-tuning read)
-----------------------------------------------------------------------------
For every *layer* (Conv / Gemm / MatMul with a float initializer weight, see
:mod:`pfcompile.passes.qlayers`):

- **Weights**, uniform: an ``int8`` initializer ``<w>_q`` -> ``DequantizeLinear``
  with per-output-channel ``float32`` scales ``<w>_scale`` (shape ``(C_out,)``),
  ``int8`` zero points of 0 and ``axis`` = the output-channel axis of the
  weight (0 for Conv and ``Gemm(transB=1)``, 1 for ``MatMul`` and
  ``Gemm(transB=0)``). Symmetric: values are clipped to
  ``[-(2^(b-1)-1), 2^(b-1)-1]`` (``[-127, 127]`` at 8 bits), so a b-bit weight
  lives in an int8 container with its scale ``max|w_c| / (2^(b-1)-1)``.
- **Weights**, codebook (``codebook=True``): a ``uint8`` index initializer
  ``<w>_idx`` -> ``Cast(to=int32)`` -> ``Gather(<w>_codebook, ., axis=0)``, with
  ``2^b`` float32 centroids (non-uniform; there is no integer kernel for it).
- **Activations**: the float input of each layer goes through
  ``QuantizeLinear -> DequantizeLinear`` per tensor, ``uint8`` with a zero point
  (one Q/DQ pair per tensor, shared by every layer reading it; other consumers,
  e.g. a residual Add, keep reading the float tensor). For ``b < 8`` the scale
  maps the calibrated range onto ``2^b`` levels (``scale = (hi-lo)/(2^b-1)``,
  zero point in ``[0, 2^b-1]``); QuantizeLinear saturates at the uint8
  container's 0..255, so a value outside the calibrated range may use levels
  beyond ``2^b-1``. We chose this over ONNX ``int4``/``uint4`` types because
  those cover 4 bits only and the TVM importer legalises only the 8-bit types.
- **Bias** (uniform weights with quantized activations): an ``int32`` initializer
  ``<b>_int32`` in accumulator units, ``round(bias / (x_scale * w_scale[c]))``, ->
  ``DequantizeLinear`` with per-channel ``float32`` scales ``x_scale * w_scale[c]``
  (computed in float32; ``<b>_int32_scale``, shape ``(C_out,)``), no zero point (0) and
  ``axis`` 0: onnxruntime's QDQ bias. The integer kernels add it to their int32
  accumulator as it is, so nothing of the bias is left for the requantisation's
  per-channel offset (it is the output zero point, one value per layer: it stores in a
  few bits). Rounding moves the bias by at most half an accumulator unit
  (``x_scale * w_scale[c] / 2``). Kept ``float32``: codebook layers (they run float),
  ``act_bits=None`` (no activation scale), a Gemm with ``alpha``/``beta`` != 1, a bias
  that is computed or not one value per output channel, or one that would not fit int32.
  With bias correction the bias is first replaced by ``bias - E[f(x; W_q) - f(x; W)]``
  computed from the calibration data (a Conv/Gemm without a bias gains one).
- **BatchNormalization** after a Conv / Gemm is folded into it first
  (:class:`~pfcompile.passes.canonical_bn.FoldBatchNormPass`), so the weights that are
  quantized are the ones the layer computes with and the integer kernel covers conv + BN;
  an unfolded BN would run in float between a dequantize and the next quantize
  (exporters other than PyTorch's, e.g. Paddle2ONNX, keep BN as its own node).
- **Bit widths** are readable two ways: each weight ``DequantizeLinear`` (or the
  codebook ``Gather``) and each activation ``QuantizeLinear``/
  ``DequantizeLinear`` node carries ``metadata_props["pfcompile.bits"]``; the
  model's ``metadata_props["pfcompile.quant"]`` holds a JSON report (per layer:
  bits, codebook flag, weight count, fp32 and packed bytes of the weights, and the
  bias as stored: ``bias`` ``"int32"`` / ``"float32"`` / ``None``, ``bias_bytes``;
  totals ``packed_bytes`` (weights) and ``bias_bytes``), read by :func:`quant_report`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields

import numpy as np
import onnx
import onnx_ir as ir
from onnx_ir.passes import FunctionalPass, PassResult, common

from pfcompile.data import Dataset
from pfcompile.errors import ConfigError, ModelError, PassError
from pfcompile.passes.calibration import (
    CALIB_METHODS,
    TensorStats,
    act_range,
    check_calib_data,
    collect_stats,
    uint8_qparams,
)
from pfcompile.passes.canonical_bn import FoldBatchNormPass
from pfcompile.passes.codebook import codebook_bytes, kmeans_codebook, uniform_bytes
from pfcompile.passes.declared import check_keys, search_fields
from pfcompile.passes.qlayers import (
    Layer,
    add_initializer,
    as_ir,
    check_layer_names,
    float_layers,
    layer_map,
    unique_name,
    weighted_layers,
)

__all__ = [
    "BITS_KEY",
    "INT32_BIAS_MAX",
    "REPORT_KEY",
    "QuantConfig",
    "QuantizePass",
    "quant_report",
    "quantize",
    "quantize_weight",
]

BITS_KEY = "pfcompile.bits"
REPORT_KEY = "pfcompile.quant"
MIN_BITS, MAX_BITS = 2, 8


def _check_bits(b, where: str) -> int:
    if isinstance(b, bool) or not isinstance(b, (int, np.integer)) or not MIN_BITS <= b <= MAX_BITS:
        raise ConfigError(f"{where}: bit width must be an integer in {MIN_BITS}..{MAX_BITS}, got {b!r}")
    return int(b)


@dataclass(frozen=True)
class QuantConfig:
    """Settings of the quantize pass; field metadata gives each one's search values."""

    bits: int = field(default=8, metadata={
        "help": "weight bit width of every layer not listed in `layers` (2..8)",
        "search": tuple(range(MIN_BITS, MAX_BITS + 1)), "per_layer": True})
    act_bits: int | None = field(default=8, metadata={
        "help": "bit width of the layers' input activations (2..8), None = weights only",
        "search": (8, 6, 4), "per_layer": False})
    layers: tuple[tuple[str, int], ...] = field(default=(), metadata={
        "help": "per-layer weight bit widths (layer name, bits) overriding `bits`"})
    skip: tuple[str, ...] = field(default=(), metadata={
        "help": "layers left in float (no weight or input-activation Q/DQ); other readers of "
                "a quantized layer's input are unaffected"})
    calib: str = field(default="minmax", metadata={
        "help": "activation range method", "search": CALIB_METHODS, "per_layer": False})
    percentile: float = field(default=99.99, metadata={
        "help": "percentile used by calib='percentile'"})
    codebook: bool = field(default=False, metadata={
        "help": "non-uniform k-means codebook weights (2^bits centroids per layer)",
        "search": (False, True), "per_layer": False})
    bias_correction: bool = field(default=True, metadata={
        "help": "subtract the mean output shift that weight quantization causes"})

    def __post_init__(self) -> None:
        _check_bits(self.bits, "QuantConfig.bits")
        if self.act_bits is not None:
            _check_bits(self.act_bits, "QuantConfig.act_bits")
        for name, b in self.layers:
            _check_bits(b, f"bits of layer '{name}'")
        object.__setattr__(self, "skip", tuple(str(x) for x in self.skip))
        both = sorted(set(self.skip) & {n for n, _ in self.layers})
        if both:
            raise ConfigError(f"layer(s) {both} are both given bits and skipped (left in float)")
        if self.calib not in CALIB_METHODS:
            raise ConfigError(f"calibration method '{self.calib}' is not one of {', '.join(CALIB_METHODS)}")
        if not 50.0 < float(self.percentile) <= 100.0:
            raise ConfigError(f"percentile must be in (50, 100], got {self.percentile}")

    def bits_of(self, layer: str) -> int:
        return dict(self.layers).get(layer, self.bits)

    @property
    def needs_calibration(self) -> bool:
        return self.act_bits is not None or self.bias_correction

    @staticmethod
    def search_space() -> dict[str, dict]:
        """Field name -> {"search": values, "per_layer": bool, "help": text}."""
        return search_fields(QuantConfig)

    @staticmethod
    def from_json(d: dict) -> QuantConfig:
        """``{"bits": 8, "act_bits": 8, "layers": {"name": 4}, "calib": "mse", "codebook": false,
        "bias_correction": true, "percentile": 99.99}`` (all optional), or a flat
        ``{"layer name": bits}`` map (other layers get 8 bits)."""
        if not isinstance(d, dict):
            raise ConfigError("a quantize config must be a JSON object")
        known = {f.name for f in fields(QuantConfig)}
        if d and not (set(d) & known):
            d = {"layers": d}
        check_keys(d, known, "quantize config")
        layers = d.get("layers", {})
        if not isinstance(layers, dict):
            raise ConfigError("quantize config 'layers' must map layer names to bit widths")
        kw = {k: v for k, v in d.items() if k != "layers"}
        return QuantConfig(**kw, layers=tuple(sorted((str(k), v) for k, v in layers.items())))

    def to_json(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["layers"] = dict(self.layers)
        return d


def quantize_weight(w: np.ndarray, bits: int, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-channel quantization: (int8 values, float32 scales along ``axis``)."""
    qmax = (1 << (bits - 1)) - 1
    red = tuple(i for i in range(w.ndim) if i != axis)
    amax = np.abs(w).max(axis=red) if red else np.abs(w)
    scale = np.where(amax > 0, amax / qmax, 1.0).astype(np.float32)
    shape = [1] * w.ndim
    shape[axis] = -1
    q = np.clip(np.round(w / scale.reshape(shape)), -qmax, qmax).astype(np.int8)
    return q, scale


def _dequant(q: np.ndarray, scale: np.ndarray, axis: int) -> np.ndarray:
    shape = [1] * q.ndim
    shape[axis] = -1
    return (q.astype(np.float32) * scale.reshape(shape)).astype(np.float32)


# ----------------------------------------------------------------------------- bias correction
def _ints(node: ir.Node, name: str, default: list[int]) -> list[int]:
    a = node.attributes.get(name)
    return [int(v) for v in a.as_ints()] if a is not None else default


def _conv2d_shift(node: ir.Node, dw: np.ndarray, mean: np.ndarray, groups: int) -> np.ndarray:
    """Exact mean over batch and output positions of conv2d(x, dw), from the per-position mean of x.

    By linearity it equals sum over (i, kh, kw) of dw[o, i, kh, kw] * A[c(o, i), kh, kw], where A is
    the mean of the padded input over the positions that kernel tap (kh, kw) reads.
    """
    auto_pad = node.attributes.get("auto_pad")
    pads = _ints(node, "pads", [0, 0, 0, 0])
    if auto_pad is not None and auto_pad.as_string() == "VALID":
        pads = [0, 0, 0, 0]
    sh, sw = _ints(node, "strides", [1, 1])
    dh, dwl = _ints(node, "dilations", [1, 1])
    out_c, ig, kh, kw = dw.shape
    xp = np.pad(mean, ((0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    oh = (xp.shape[1] - (dh * (kh - 1) + 1)) // sh + 1
    ow = (xp.shape[2] - (dwl * (kw - 1) + 1)) // sw + 1
    taps = np.empty((xp.shape[0], kh, kw))
    for i in range(kh):
        for j in range(kw):
            win = xp[:, i * dh: i * dh + sh * (oh - 1) + 1: sh, j * dwl: j * dwl + sw * (ow - 1) + 1: sw]
            taps[:, i, j] = win.mean(axis=(1, 2))
    og = out_c // groups
    shift = np.empty(out_c)
    for g in range(groups):
        shift[g * og:(g + 1) * og] = np.einsum("oikl,ikl->o", dw[g * og:(g + 1) * og],
                                               taps[g * ig:(g + 1) * ig])
    return shift


def _output_shift(layer: Layer, dw: np.ndarray, stats: TensorStats) -> np.ndarray | None:
    """E[f(x; W + dW) - f(x; W)] per output channel (bias excluded), or None if not derivable."""
    node = layer.node
    mean = stats.mean.astype(np.float64)
    if layer.op_type == "Conv":
        auto_pad = node.attributes.get("auto_pad")
        if dw.ndim == 4 and mean.ndim == 3 and (auto_pad is None or auto_pad.as_string() in ("NOTSET", "VALID")):
            return _conv2d_shift(node, dw, mean, layer.groups)
        # other ranks: channel means (exact away from padded borders)
        cmean = mean.reshape(mean.shape[0], -1).mean(axis=1)
        g = layer.groups
        out, ig = dw.shape[0], dw.shape[1]
        dsum = dw.reshape(out, ig, -1).sum(axis=2)
        grp = np.arange(out) // (out // g)
        return np.array([dsum[o] @ cmean[grp[o] * ig:(grp[o] + 1) * ig] for o in range(out)])
    if layer.op_type == "Gemm":
        a = node.attributes.get("transA")
        if a is not None and a.as_int():
            return None
        alpha = node.attributes.get("alpha")
        alpha = float(alpha.as_float()) if alpha is not None else 1.0
        return alpha * (layer.matrix(dw) @ mean.reshape(-1))
    return None  # MatMul: no bias input to correct


def _set_bias(graph: ir.Graph, layer: Layer, shift: np.ndarray) -> None:
    node = layer.node
    n_out = shift.shape[0]
    beta = 1.0
    if layer.op_type == "Gemm":
        b = node.attributes.get("beta")
        beta = float(b.as_float()) if b is not None else 1.0
        if beta == 0.0:
            return
    old = node.inputs[2] if len(node.inputs) > 2 else None
    if old is not None and old.const_value is None:
        return  # computed bias: leave it
    bias = np.zeros(n_out, np.float32) if old is None else old.const_value.numpy().astype(np.float32)
    if bias.size not in (1, n_out):
        return
    bias = np.broadcast_to(bias.reshape(-1), (n_out,)) - shift / beta
    base = old.name if old is not None else f"{node.name or layer.weight.name}_bias"
    value = add_initializer(graph, f"{base}_corrected", bias.astype(np.float32))
    if old is None:
        node.resize_inputs(3)
    node.replace_input_with(2, value)


# ----------------------------------------------------------------------------- integer bias
#: Largest ``|bias|`` in accumulator units written as int32 (a larger one stays float32).
INT32_BIAS_MAX = 2**31 - 1


def _float_attr(node: ir.Node, name: str, default: float) -> float:
    a = node.attributes.get(name)
    return float(a.as_float()) if a is not None else default


def _const_scalar(v: ir.Value | None) -> float | None:
    if v is None or v.const_value is None:
        return None
    arr = v.const_value.numpy()
    return float(arr.reshape(-1)[0]) if arr.size == 1 else None


def _integer_bias(graph: ir.Graph, layer: Layer, w_scale: np.ndarray) -> bool:
    """Replace the layer's float32 bias by ``DequantizeLinear(int32 bias_q, x_scale * w_scale)``
    (onnxruntime's QDQ bias: accumulator units, zero point 0, see the module docstring).
    Returns False, leaving the float bias, where the layer cannot have one."""
    node = layer.node
    if layer.op_type not in ("Conv", "Gemm") or len(node.inputs) < 3 or node.inputs[2] is None:
        return False
    if layer.op_type == "Gemm" and (_float_attr(node, "alpha", 1.0) != 1.0
                                    or _float_attr(node, "beta", 1.0) != 1.0):
        return False
    b = node.inputs[2]
    dq_x = node.inputs[0].producer() if node.inputs[0] is not None else None
    if b.const_value is None or dq_x is None or dq_x.op_type != "DequantizeLinear":
        return False
    sx = _const_scalar(dq_x.inputs[1] if len(dq_x.inputs) > 1 else None)
    bias = b.const_value.numpy()
    n_out = w_scale.size
    if sx is None or bias.dtype.kind != "f" or bias.size not in (1, n_out):
        return False
    bias = np.broadcast_to(bias.astype(np.float32).reshape(-1), (n_out,))
    b_scale = (np.float32(sx) * w_scale.astype(np.float32)).astype(np.float32)
    if not np.all(np.isfinite(b_scale) & (b_scale > 0)):
        return False
    q = np.round(bias.astype(np.float64) / b_scale.astype(np.float64))
    if not np.all(np.abs(q) <= INT32_BIAS_MAX):
        return False
    base = b.name or f"{layer.name}_bias"
    q_v = add_initializer(graph, f"{base}_int32", q.astype(np.int32))
    s_v = add_initializer(graph, f"{base}_int32_scale", b_scale)
    dq = ir.node("DequantizeLinear", [q_v, s_v], {"axis": 0},
                 name=unique_name(graph, f"{base}_DequantizeLinear"))
    dq.outputs[0].name = unique_name(graph, f"{base}_dq")
    dq.outputs[0].shape = ir.Shape([n_out])
    dq.outputs[0].type = ir.TensorType(ir.DataType.FLOAT)
    graph.append(dq)
    node.replace_input_with(2, dq.outputs[0])
    return True


def _bias_report(layer: Layer) -> dict:
    """How the layer's bias is stored: ``bias`` ``"int32"`` (DequantizeLinear of an int32
    initializer), ``"float32"`` (an initializer) or None (none, or computed), and its bytes."""
    node = layer.node
    b = node.inputs[2] if len(node.inputs) > 2 else None
    if b is None:
        return {"bias": None, "bias_bytes": 0}
    src = b.producer().inputs[0] if b.producer() is not None and \
        b.producer().op_type == "DequantizeLinear" else b
    if src is None or src.const_value is None:
        return {"bias": None, "bias_bytes": 0}
    arr = src.const_value.numpy()
    return {"bias": str(arr.dtype), "bias_bytes": int(arr.nbytes)}


# ----------------------------------------------------------------------------- the pass
class QuantizePass(FunctionalPass):
    """Insert QDQ (or codebook) weights and calibrated activation Q/DQ for every layer."""

    def __init__(self, config: QuantConfig | None = None, calib: Dataset | None = None) -> None:
        self.config = config or QuantConfig()
        self.calib = calib

    def _validate(self, model: ir.Model) -> list[Layer]:
        for node in model.graph:
            if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
                raise PassError(f"model is already quantized: node '{node.name}' is {node.op_type}")
        layers = weighted_layers(model)
        if not layers:
            raise PassError("model has no Conv / Gemm / MatMul with a float initializer weight to quantize")
        check_layer_names([n for n, _ in self.config.layers] + list(self.config.skip),
                          {x.name: x for x in layers}, "the quantize config")
        layers = [x for x in layers if x.name not in set(self.config.skip)]
        if not layers:
            raise PassError("every weighted layer is in the quantize config's `skip`: nothing to quantize")
        opset = model.opset_imports.get("", 0)
        if opset < 13:
            raise PassError(f"per-channel DequantizeLinear needs opset >= 13, the model imports opset {opset}")
        if self.config.needs_calibration:
            if self.calib is None:
                raise ConfigError("quantizing activations or correcting bias needs calibration data "
                                  "(--data calib.npz)")
            check_calib_data(model, self.calib)
        return layers

    def call(self, model: ir.Model) -> PassResult:
        cfg = self.config
        if any(n.op_type == "BatchNormalization" for n in model.graph):
            model = FoldBatchNormPass()(model).model   # functional: the input is not changed
        layers = self._validate(model)
        act_names = list(dict.fromkeys(x.node.inputs[0].name for x in layers))
        stats = collect_stats(model, self.calib, act_names) if cfg.needs_calibration else {}

        out = model.clone()
        graph = out.graph
        by_name = layer_map(out)
        report: dict[str, dict] = {}
        w_scales: dict[str, np.ndarray] = {}
        for orig in layers:
            layer = by_name[orig.name]
            report[layer.name] = self._quantize_layer(graph, layer, stats.get(layer.node.inputs[0].name),
                                                      w_scales)
        if cfg.act_bits is not None:
            self._quantize_activations(graph, [by_name[x.name] for x in layers], stats)
        for orig in layers:
            layer = by_name[orig.name]
            if layer.name in w_scales and cfg.act_bits is not None:
                _integer_bias(graph, layer, w_scales[layer.name])
            report[layer.name].update(_bias_report(layer))

        common.TopologicalSortPass()(out)
        common.RemoveUnusedNodesPass()(out)
        total_fp32 = sum(r["fp32_bytes"] for r in report.values())
        total_packed = sum(r["packed_bytes"] for r in report.values())
        total_bias = sum(r["bias_bytes"] for r in report.values())
        out.metadata_props[REPORT_KEY] = json.dumps({
            "format": "pfcompile-qdq-1",
            "weights": "codebook" if cfg.codebook else "int8 per-channel symmetric, zero point 0",
            "activations": None if cfg.act_bits is None else "uint8 per-tensor with zero point",
            "act_bits": cfg.act_bits, "calib": cfg.calib, "bias_correction": cfg.bias_correction,
            "bias": "int32 in accumulator units (x_scale * w_scale per channel), zero point 0; "
                    "float32 where a layer cannot have one",
            "layers": report, "fp32_bytes": total_fp32, "packed_bytes": total_packed,
            "bias_bytes": total_bias,
            # what the quantized model stores: weights (with their scales) and biases, as
            # the float model's size counts every constant (issue 16's limits use it)
            "stored_bytes": total_packed + total_bias,
            # weighted nodes this pass cannot quantize, with the reason (they stay float)
            "float_layers": float_layers(model),
        })
        return PassResult(out, True)

    def _quantize_layer(self, graph: ir.Graph, layer: Layer, st: TensorStats | None,
                        w_scales: dict[str, np.ndarray]) -> dict:
        """Quantize one layer's weights (and correct its bias); a uniform layer's per-channel
        scales go into ``w_scales`` (for its int32 bias, once the activations have scales)."""
        cfg = self.config
        bits = cfg.bits_of(layer.name)
        w = layer.weight_array.astype(np.float32)
        wname = layer.weight.name or f"{layer.name}_w"
        meta = {BITS_KEY: str(bits)}
        if cfg.codebook:
            cent, idx = kmeans_codebook(w, bits)
            wq = cent[idx.astype(np.int64)]
            idx_v = add_initializer(graph, f"{wname}_idx", idx)
            cb_v = add_initializer(graph, f"{wname}_codebook", cent)
            cast = ir.node("Cast", [idx_v], {"to": ir.DataType.INT32}, name=unique_name(graph, f"{wname}_idx_cast"))
            cast.outputs[0].name = unique_name(graph, f"{wname}_idx32")
            graph.append(cast)
            gather = ir.node("Gather", [cb_v, cast.outputs[0]], {"axis": 0},
                             name=unique_name(graph, f"{wname}_gather"),
                             metadata_props={**meta, "pfcompile.codebook": "1"})
            gather.outputs[0].name = unique_name(graph, f"{wname}_cb")
            graph.append(gather)
            new_w = gather.outputs[0]
            packed = codebook_bytes(w.size, bits)
        else:
            q, scale = quantize_weight(w, bits, layer.out_axis)
            wq = _dequant(q, scale, layer.out_axis)
            q_v = add_initializer(graph, f"{wname}_q", q)
            s_v = add_initializer(graph, f"{wname}_scale", scale)
            z_v = add_initializer(graph, f"{wname}_zero_point", np.zeros(scale.shape, np.int8))
            dq = ir.node("DequantizeLinear", [q_v, s_v, z_v], {"axis": layer.out_axis},
                         name=unique_name(graph, f"{wname}_DequantizeLinear"), metadata_props=meta)
            dq.outputs[0].name = unique_name(graph, f"{wname}_dq")
            graph.append(dq)
            new_w = dq.outputs[0]
            packed = uniform_bytes(w.size, bits, scale.size)
            w_scales[layer.name] = scale
        new_w.shape = ir.Shape(w.shape)
        new_w.type = ir.TensorType(ir.DataType.FLOAT)
        layer.node.replace_input_with(1, new_w)
        corrected = False
        if cfg.bias_correction and st is not None:
            shift = _output_shift(layer, (wq - w).astype(np.float64), st)
            if shift is not None:
                _set_bias(graph, layer, shift)
                corrected = True
        return {"op": layer.op_type, "bits": bits, "codebook": cfg.codebook, "numel": int(w.size),
                "fp32_bytes": int(w.size) * 4, "packed_bytes": packed, "bias_corrected": corrected}

    def _quantize_activations(self, graph: ir.Graph, layers: list[Layer],
                              stats: dict[str, TensorStats]) -> None:
        cfg = self.config
        bits = cfg.act_bits
        assert bits is not None
        done: dict[str, ir.Value] = {}
        for layer in layers:
            x = layer.node.inputs[0]
            if x.name not in done:
                lo, hi = act_range(stats[x.name], cfg.calib, bits, cfg.percentile)
                scale, zp = uint8_qparams(lo, hi, bits)
                s_v = add_initializer(graph, f"{x.name}_scale", np.array(scale, np.float32))
                z_v = add_initializer(graph, f"{x.name}_zero_point", np.array(zp, np.uint8))
                meta = {BITS_KEY: str(bits)}
                qn = ir.node("QuantizeLinear", [x, s_v, z_v], name=unique_name(graph, f"{x.name}_QuantizeLinear"),
                             metadata_props=meta)
                qn.outputs[0].name = unique_name(graph, f"{x.name}_quantized")
                graph.append(qn)
                dqn = ir.node("DequantizeLinear", [qn.outputs[0], s_v, z_v],
                              name=unique_name(graph, f"{x.name}_DequantizeLinear"), metadata_props=dict(meta))
                dqn.outputs[0].name = unique_name(graph, f"{x.name}_dequantized")
                dqn.outputs[0].shape = x.shape
                dqn.outputs[0].type = x.type
                graph.append(dqn)
                done[x.name] = dqn.outputs[0]
            layer.node.replace_input_with(0, done[x.name])


def quantize(model: ir.Model | onnx.ModelProto, config: QuantConfig | None = None,
             calib: Dataset | None = None) -> PassResult:
    """Functional entry point: a new ir.Model in QDQ form (see the module docstring)."""
    return QuantizePass(config, calib)(as_ir(model))


def quant_report(model: ir.Model | onnx.ModelProto) -> dict:
    """The JSON report the quantize pass stored in the model (per-layer bits and sizes)."""
    m = as_ir(model)
    raw = m.metadata_props.get(REPORT_KEY)
    if raw is None:
        raise ModelError(f"model has no '{REPORT_KEY}' metadata: it was not written by the quantize pass")
    return json.loads(raw)
