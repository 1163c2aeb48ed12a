"""Stand-in compressed students for fine-tuning tests and benchmarks.

pfcompile's own pruning and quantization passes are being written in parallel;
until they land, the tests and ``tools/bench_finetune.py`` make their students
here, in the simplest honest way:

* :func:`pruned_student`: the teacher CNN rebuilt with narrower layers, each
  layer keeping the teacher's output channels of largest L1 weight norm (and
  the matching input channels of the next layer); no training.
* :func:`quantize_weights_qdq`: every Conv / Gemm weight replaced by an int8
  initializer holding ``bits``-bit values (symmetric, ``[-(2^(b-1)-1), 2^(b-1)-1]``,
  per output channel or per tensor) read through DequantizeLinear, and
  optionally each Conv / Gemm data input fake-quantized through
  QuantizeLinear -> [Clip] -> DequantizeLinear with a calibrated per-tensor
  scale. Sub-8-bit codes live in int8 containers; the fine-tune converter
  recovers their bit width from the stored range (weights) and the Clip
  (activations).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
import onnx_ir as ir
import torch
import torch.nn.functional as F
from torch import nn

from pfcompile.errors import PassError
from pfcompile.finetune.convert import onnx_to_torch
from pfcompile.zoo import conv_bn

__all__ = ["SlimCNN", "conv_macs", "pruned_student", "quantize_weights_qdq"]


class SlimCNN(nn.Module):
    """zoo.PlainCNN with configurable widths: conv-conv-maxpool-conv-GAP-fc."""

    def __init__(self, widths: Sequence[int] = (16, 32, 32), in_ch: int = 1, classes: int = 10) -> None:
        super().__init__()
        w1, w2, w3 = widths
        self.widths = tuple(widths)
        self.f = nn.Sequential(conv_bn(in_ch, w1), conv_bn(w1, w2), nn.MaxPool2d(2), conv_bn(w2, w3))
        self.fc = nn.Linear(w3, classes)

    def forward(self, x):
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.f(x), 1), 1))


def conv_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of every Conv2d and Linear for one input."""
    total = 0

    def hook(mod, inp, out):
        nonlocal total
        if isinstance(mod, nn.Conv2d):
            total += out.numel() * (mod.in_channels // mod.groups) * mod.kernel_size[0] * mod.kernel_size[1]
        elif isinstance(mod, nn.Linear):
            total += out.numel() * mod.in_features

    hs = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    model.eval()
    with torch.no_grad():
        model(torch.zeros(*input_shape))
    for h in hs:
        h.remove()
    return total


def _convs(m: SlimCNN) -> list[nn.Sequential]:
    return [m.f[0], m.f[1], m.f[3]]


def pruned_student(teacher: SlimCNN, widths: Sequence[int]) -> SlimCNN:
    """A narrower SlimCNN keeping, per layer, the teacher's channels of largest L1 norm."""
    student = SlimCNN(widths, teacher.f[0][0].in_channels, teacher.fc.out_features)
    keep_in = torch.arange(teacher.f[0][0].in_channels)
    with torch.no_grad():
        for tb, sb, w in zip(_convs(teacher), _convs(student), widths):
            tconv, tbn = tb[0], tb[1]
            l1 = tconv.weight.abs().sum(dim=(1, 2, 3))
            keep = torch.sort(torch.topk(l1, w).indices).values
            sb[0].weight.copy_(tconv.weight[keep][:, keep_in])
            for name in ("weight", "bias", "running_mean", "running_var"):
                getattr(sb[1], name).copy_(getattr(tbn, name)[keep])
            keep_in = keep
        student.fc.weight.copy_(teacher.fc.weight[:, keep_in])
        student.fc.bias.copy_(teacher.fc.bias)
    student.eval()
    return student


def _quantize_weight(w: np.ndarray, bits: int, axis: int | None) -> tuple[np.ndarray, np.ndarray]:
    qmax = (1 << (bits - 1)) - 1
    if axis is None:
        amax = np.abs(w).max(keepdims=False)
        scale = np.array(max(float(amax), 1e-8) / qmax, dtype=np.float32)
        q = np.clip(np.round(w / scale), -qmax, qmax)
    else:
        red = tuple(i for i in range(w.ndim) if i != axis)
        amax = np.maximum(np.abs(w).max(axis=red), 1e-8)
        scale = (amax / qmax).astype(np.float32)
        shape = [1] * w.ndim
        shape[axis] = -1
        q = np.clip(np.round(w / scale.reshape(shape)), -qmax, qmax)
    return q.astype(np.int8), scale


def quantize_weights_qdq(model: onnx.ModelProto, bits: int = 4, *, per_channel: bool = True,
                         act_bits: int | None = None, calib: np.ndarray | None = None) -> onnx.ModelProto:
    """QDQ-quantize Conv/Gemm weights to ``bits`` (int8 containers) and, with
    ``act_bits``, their data inputs (calibrated on ``calib``, per tensor, uint8
    containers clipped to ``[0, 2^act_bits - 1]``)."""
    if not 2 <= bits <= 8:
        raise PassError(f"weight bits must be in [2, 8], got {bits}")
    ranges: dict[str, tuple[float, float]] = {}
    if act_bits is not None:
        if calib is None:
            raise PassError("activation quantization needs calibration data")
        mod = onnx_to_torch(model)
        with torch.no_grad():
            env = mod.run_all(torch.from_numpy(calib))
        for n in model.graph.node:
            if n.op_type in ("Conv", "Gemm"):
                v = env[n.input[0]]
                ranges[n.input[0]] = (min(float(v.min()), 0.0), max(float(v.max()), 0.0))

    m = ir.from_proto(model)
    g = m.graph
    act_dq: dict[str, ir.Value] = {}
    for node in list(g):
        if node.op_type not in ("Conv", "Gemm"):
            continue
        wv = node.inputs[1]
        if wv is None or wv.const_value is None:
            continue
        w = wv.const_value.numpy().astype(np.float32)
        if node.op_type == "Conv":
            axis = 0
        else:
            axis = 0 if node.attributes.get("transB") and node.attributes["transB"].as_int() else 1
        q, scale = _quantize_weight(w, bits, axis if per_channel else None)
        qv = ir.Value(name=f"{wv.name}_q{bits}", const_value=ir.tensor(q, name=f"{wv.name}_q{bits}"))
        sv = ir.Value(name=f"{wv.name}_scale", const_value=ir.tensor(scale, name=f"{wv.name}_scale"))
        zv = ir.Value(name=f"{wv.name}_zp", const_value=ir.tensor(np.zeros_like(scale, dtype=np.int8),
                                                                   name=f"{wv.name}_zp"))
        for v in (qv, sv, zv):
            g.register_initializer(v)
        attrs = {"axis": axis} if per_channel else {}
        dq = ir.node("DequantizeLinear", [qv, sv, zv], attributes=attrs, name=f"{node.name}_wdq",
                     outputs=[ir.Value(name=f"{wv.name}_dq")])
        g.insert_before(node, dq)
        node.replace_input_with(1, dq.outputs[0])
        if not wv.uses() and wv.name in g.initializers:
            g.initializers.pop(wv.name)

        xv = node.inputs[0]
        if act_bits is None or xv is None:
            continue
        if xv.name not in act_dq:
            lo, hi = ranges[xv.name]
            levels = (1 << act_bits) - 1
            scale_a = np.array(max(hi - lo, 1e-8) / levels, dtype=np.float32)
            zp_a = np.array(int(np.clip(np.round(-lo / scale_a), 0, levels)), dtype=np.uint8)
            base = f"{xv.name}_a{act_bits}"
            sa = ir.Value(name=f"{base}_scale", const_value=ir.tensor(scale_a, name=f"{base}_scale"))
            za = ir.Value(name=f"{base}_zp", const_value=ir.tensor(zp_a, name=f"{base}_zp"))
            g.register_initializer(sa)
            g.register_initializer(za)
            qn = ir.node("QuantizeLinear", [xv, sa, za], name=f"{base}_q", outputs=[ir.Value(name=f"{base}_q")])
            g.insert_before(node, qn)
            last = qn.outputs[0]
            if act_bits < 8:
                lo_c = ir.Value(name=f"{base}_min", const_value=ir.tensor(np.array(0, np.uint8), name=f"{base}_min"))
                hi_c = ir.Value(name=f"{base}_max",
                                const_value=ir.tensor(np.array(levels, np.uint8), name=f"{base}_max"))
                g.register_initializer(lo_c)
                g.register_initializer(hi_c)
                cn = ir.node("Clip", [last, lo_c, hi_c], name=f"{base}_clip", outputs=[ir.Value(name=f"{base}_c")])
                g.insert_before(node, cn)
                last = cn.outputs[0]
            dqa = ir.node("DequantizeLinear", [last, sa, za], name=f"{base}_dq",
                          outputs=[ir.Value(name=f"{base}_dq")])
            g.insert_before(node, dqa)
            act_dq[xv.name] = dqa.outputs[0]
        node.replace_input_with(0, act_dq[xv.name])
    out = ir.to_proto(m)
    onnx.checker.check_model(out)
    return out
