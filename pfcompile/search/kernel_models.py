"""What the search times as a kernel: a one-kernel ONNX model per
:class:`~pfcompile.search.graph.Kernel`, and the PrimFuncs pfcompile's codegen makes for it.

**Kernels** are the fused PrimFuncs TVM generates for each kernel (a one-kernel ONNX
model at the candidate's shapes, through pfcompile's codegen: the same fused function,
with the same schedule, as in the whole model; the layout transforms at the one-kernel
model's edges are left out). An integer kernel (``bits`` < 32) is its whole one-kernel
library instead (:func:`qdq_kernel_model`, lowered by :mod:`pfcompile.quantexec`).
:func:`kernel_calls` turns kernels into what a runner times
(:meth:`pfcompile.runner.base.Runner.time_kernels`), each paired with the fixed
:data:`REFERENCE_KERNEL`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from pfcompile.compiler import build_primfuncs, compile_model, export, import_onnx
from pfcompile.errors import DeviceError
from pfcompile.search.graph import Kernel
from pfcompile.targets import Target

__all__ = [
    "REFERENCE_KERNEL",
    "kernel_calls",
    "kernel_model",
    "kernel_primfuncs",
    "qdq_kernel_model",
]


def kernel_model(k: Kernel, seed: int = 0) -> onnx.ModelProto:
    """A one-kernel ONNX model reproducing ``k`` (anchor op + epilogue); a weighted
    kernel with ``bits`` < 32 is the QDQ form of it (see :func:`qdq_kernel_model`)."""
    if k.bits < 32 and k.op in ("conv", "dwconv", "gconv", "gemm"):
        return qdq_kernel_model(k, seed)
    return _float_kernel_model(k, seed)


def qdq_kernel_model(k: Kernel, seed: int = 0) -> onnx.ModelProto:
    """The integer form of weighted kernel ``k``: the float one-kernel model through the
    quantize pass (weights at ``k.bits`` per channel, uint8 input calibrated on random
    inputs), plus a QuantizeLinear -> DequantizeLinear at the output when the epilogue
    is Relu / Clip only (as the next layer's input quantize is in a quantized model;
    other epilogues run in float after the int32 accumulation, as they do there).
    ``pfcompile.quantexec`` lowers it to an integer kernel. Its time also holds the
    quantize of the float input (and the dequantize of the output), which a kernel in
    a quantized model does not pay: it overestimates by one elementwise pass."""
    from pfcompile.data import Dataset
    from pfcompile.ir import to_proto
    from pfcompile.passes.quantize import QuantConfig, quantize

    if not 2 <= k.bits <= 8:
        raise DeviceError(f"kernel {k.key}: no integer form for {k.bits}-bit weights (2..8)")
    fm = _float_kernel_model(k, seed)
    rng = np.random.default_rng(seed + 1)
    feeds = {vi.name: rng.standard_normal(
        [4] + [int(d.dim_value) for d in vi.type.tensor_type.shape.dim][1:]).astype(np.float32)
        for vi in fm.graph.input}
    q = to_proto(quantize(fm, QuantConfig(bits=k.bits, bias_correction=False),
                          Dataset(feeds, None, "random")).model)
    if k.epilogue and set(k.epilogue) <= {"Relu", "Clip"}:
        out = q.graph.output[0]
        y = out.name
        q.graph.initializer.extend([numpy_helper.from_array(np.array(0.05, np.float32), "y_scale"),
                                    numpy_helper.from_array(np.array(0, np.uint8), "y_zero_point")])
        q.graph.node.extend([
            helper.make_node("QuantizeLinear", [y, "y_scale", "y_zero_point"], ["y_q"]),
            helper.make_node("DequantizeLinear", ["y_q", "y_scale", "y_zero_point"], ["y_dq"])])
        out.name = "y_dq"
    return q


def _float_kernel_model(k: Kernel, seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(k.in_shape))]
    inits: list[TensorProto] = []
    nodes = []

    def init(name: str, shape) -> str:
        inits.append(numpy_helper.from_array(
            (rng.standard_normal(shape) * 0.1).astype(np.float32), name))
        return name

    cur = "x"
    epi = list(k.epilogue)
    if k.op in ("conv", "dwconv", "gconv"):
        ins = [cur, init("w", k.w_shape), init("b", (k.w_shape[0],))]
        nodes.append(helper.make_node("Conv", ins, ["a0"], kernel_shape=list(k.kernel),
                                      strides=list(k.stride), pads=list(k.pad), group=k.groups))
    elif k.op == "gemm":
        nodes.append(helper.make_node("Gemm", [cur, init("w", k.w_shape), init("b", (k.w_shape[0],))],
                                      ["a0"], transB=1))
    elif k.op in ("maxpool", "avgpool"):
        nodes.append(helper.make_node("MaxPool" if k.op == "maxpool" else "AveragePool", [cur], ["a0"],
                                      kernel_shape=list(k.kernel), strides=list(k.stride),
                                      pads=list(k.pad)))
    elif k.op == "gpool":
        nodes.append(helper.make_node("GlobalAveragePool", [cur], ["a0"]))
    else:  # standalone elementwise: the first epilogue entry is the op itself
        epi = list(k.epilogue)
        first = epi.pop(0) if epi else "Identity"
        op = first.removesuffix("_t")
        if op in ("Add", "Mul", "Sub", "Div"):
            inputs.append(helper.make_tensor_value_info("x2", TensorProto.FLOAT, list(k.in_shape)))
            nodes.append(helper.make_node(op, [cur, "x2"], ["a0"]))
        else:
            nodes.append(helper.make_node(op if op != "BatchNormalization" else "Relu", [cur], ["a0"]))
    cur = "a0"
    out_shape = list(k.out_shape)
    for i, e in enumerate(epi):
        op = e.removesuffix("_t")
        nxt = f"a{i + 1}"
        if e.endswith("_t"):
            name = f"t{i}"
            inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, out_shape))
            nodes.append(helper.make_node(op, [cur, name], [nxt]))
        elif op in ("Add", "Mul", "Sub", "Div"):
            shape = [1, out_shape[1]] + [1] * (len(out_shape) - 2) if len(out_shape) > 1 else out_shape
            nodes.append(helper.make_node(op, [cur, init(f"c{i}", shape)], [nxt]))
        elif op == "BatchNormalization":
            c = out_shape[1]
            names = [init(f"bn{i}_{j}", (c,)) for j in range(4)]
            inits[-1] = numpy_helper.from_array(np.ones(c, np.float32), names[-1])
            nodes.append(helper.make_node(op, [cur] + names, [nxt]))
        else:
            nodes.append(helper.make_node(op, [cur], [nxt]))
        cur = nxt
    out = helper.make_tensor_value_info(cur, TensorProto.FLOAT, out_shape)
    g = helper.make_graph(nodes, "kernel", inputs, [out], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


#: The fixed kernel every kernel time is paired with (a mid-sized 3x3 conv + ReLU).
REFERENCE_KERNEL = Kernel("conv", (1, 32, 16, 16), (32, 32, 3, 3), (1, 32, 16, 16), (3, 3), (1, 1),
                          (1, 1, 1, 1), 1, ("Relu",))

_EDGE_FUNCS = ("te_layout_transform", "layout_transform", "reshape")


def kernel_primfuncs(k: Kernel, target: Target) -> list:
    """The scheduled PrimFunc(s) pfcompile's codegen makes for kernel ``k`` (fused
    anchor op + epilogue), without the layout transforms at the one-kernel
    model's edges (inside a whole model activations stay blocked)."""
    from tvm import tirx

    from pfcompile.codegen.pipeline import fuse_to_tir, schedule_module
    from pfcompile.codegen.records import RecordDB

    mod = import_onnx(kernel_model(k))
    db = RecordDB.for_target(None, target.name)
    sched = schedule_module(fuse_to_tir(mod, target, db), target, db)
    return [f for gv, f in sched.functions.items()
            if isinstance(f, tirx.PrimFunc) and not gv.name_hint.startswith(_EDGE_FUNCS)]


def kernel_calls(kernels: list[Kernel], target: Target, work: Path):
    """``(library .so, reference call, one call or None per kernel)`` for
    :meth:`~pfcompile.runner.base.Runner.time_kernels`: the float kernels' PrimFuncs
    and the reference kernel's in one library under ``work``; an integer kernel as its
    own one-kernel model library; None for a kernel that cannot be built."""
    from pfcompile.codegen.kernels import arg_specs
    from pfcompile.data import random_inputs
    from pfcompile.model import input_specs
    from pfcompile.runner.base import KernelCall

    funcs: list = []

    def span(fs: list) -> KernelCall:
        lo = len(funcs)
        funcs.extend(fs)
        return KernelCall(functions=tuple((f"k{lo + i}", arg_specs(f)) for i, f in enumerate(fs)))

    reference = span(kernel_primfuncs(REFERENCE_KERNEL, target))
    calls: list[KernelCall | None] = []
    for i, k in enumerate(kernels):
        try:
            if k.bits < 32:
                m = kernel_model(k)
                so = compile_model(m, target, work / f"m{i}").so_path
                calls.append(KernelCall(module=so, inputs=random_inputs(input_specs(m), seed=0)))
                continue
            fs = kernel_primfuncs(k, target)
        except Exception:  # noqa: BLE001 - a kernel that cannot be built is None
            calls.append(None)
            continue
        calls.append(span(fs) if fs else None)
    so = export(build_primfuncs(funcs, target), target, work / "kernels.so")
    return so, reference, calls
