"""Measuring candidates and kernels on a device, as data: every call returns a
:class:`Measurement`; a failed compile, a dead device, a timeout or a NaN output
is a value with ``error`` set, never an exception that stops a search.

* :class:`RPCDevice` compiles with TVM (``pfcompile.compiler.compile_model`` when
  the lead's compiler is present, else ``from_onnx`` + ``tvm.compile``), uploads
  the library over TVM RPC, checks the output against onnxruntime and times it
  with ``time_evaluator``. Kernels are timed as single-kernel ONNX models built
  at the candidate's shapes, through the same compile path.
* :class:`NullDevice` runs nothing: a deterministic latency from MACs, for fast
  tests of the search logic.

Servers are started with ``pfcompile.device.serve`` (``pfcompile run`` on the
host target starts one itself).
"""

from __future__ import annotations

import math
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from pfcompile.errors import DeviceError
from pfcompile.search.graph import Kernel, extract_kernels
from pfcompile.targets import Target

__all__ = [
    "Measurement",
    "NullDevice",
    "RPCDevice",
    "compile_onnx",
    "kernel_model",
    "qdq_kernel_model",
]


@dataclass(frozen=True)
class Measurement:
    latency_ms: float | None
    error: str | None = None
    so_path: str | None = None
    max_abs_diff: float | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.latency_ms is not None


# ----------------------------------------------------------------------------- kernel models
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


# ----------------------------------------------------------------------------- compile
def compile_onnx(model: onnx.ModelProto, target: Target, out_dir: Path) -> Path:
    """Compile to ``out_dir/model.so`` for ``target`` (raises on failure)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        from pfcompile.compiler import compile_model  # the lead's compiler, when present
    except ImportError:
        compile_model = None
    if compile_model is not None:
        art = compile_model(model, target, out_dir)
        return Path(art.so_path)
    import tvm
    from tvm.relax.frontend.onnx import from_onnx

    mod = from_onnx(model, keep_params_in_input=False)
    try:
        from pfcompile import codegen  # fast schedules, when present
        ex = codegen.build(mod, target)
    except ImportError:
        ex = tvm.compile(mod, target=target.tvm_target())
    so = out_dir / "model.so"
    if target.cross_compiler:
        from tvm.support import cc

        ex.export_library(str(so), fcompile=cc.cross_compiler(target.cross_compiler))
    else:
        ex.export_library(str(so))
    return so


def _ort_outputs(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    s = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return s.run(None, feeds)


def _random_feeds(model: onnx.ModelProto, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    inits = {t.name for t in model.graph.initializer}
    feeds = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        shape = [int(d.dim_value) for d in vi.type.tensor_type.shape.dim]
        feeds[vi.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


# ----------------------------------------------------------------------------- devices
class NullDevice:
    """Runs nothing. Latency = ``fixed_ms`` + ``ms_per_mmac`` x MMACs (kernel: the
    same without ``fixed_ms``): deterministic, so search logic tests in ms."""

    emulated = False
    name = "null"

    def __init__(self, fixed_ms: float = 0.5, ms_per_mmac: float = 0.05,
                 fail: set[str] | None = None) -> None:
        self.fixed_ms, self.ms_per_mmac = fixed_ms, ms_per_mmac
        self.fail = fail or set()
        self.calls = 0

    def measure_model(self, model: onnx.ModelProto, work_dir: Path) -> Measurement:
        self.calls += 1
        macs = sum(k.macs for k in extract_kernels(model))
        from pfcompile.model import model_hash

        if model_hash(model) in self.fail:
            return Measurement(None, "null device: configured to fail this model")
        return Measurement(self.fixed_ms + self.ms_per_mmac * macs / 1e6, None, None, 0.0)

    def measure_kernels(self, kernels: list[Kernel]) -> list[float | None]:
        # a kernel's cost is not exactly linear in MACs: bytes matter too
        return [self.ms_per_mmac * k.macs / 1e6 + 2e-6 * k.bytes / 4 for k in kernels]

    def status(self) -> str:
        return "null device (no measurement)"

    def close(self) -> None:
        pass


class RPCDevice:
    """A TVM RPC device: ``host:port`` of an rpc_server, or a tracker + key."""

    def __init__(self, target: Target, *, host: str = "127.0.0.1", port: int = 9300,
                 tracker: str | None = None, key: str | None = None,
                 number: int | None = None, repeat: int | None = None,
                 min_repeat_ms: int | None = None, rtol: float = 1e-3) -> None:
        self.target = target
        self.host, self.port, self.tracker, self.key = host, port, tracker, key or target.rpc_key
        m = target.measure
        self.number = number or m.number
        self.repeat = repeat or m.repeat
        self.min_repeat_ms = m.min_repeat_ms if min_repeat_ms is None else min_repeat_ms
        self.timeout_s = m.timeout_s
        self.rtol = rtol
        self.emulated = target.emulated
        self.name = f"{tracker}/{self.key}" if tracker else f"{host}:{port}"
        self.failures = 0

    # -- session -------------------------------------------------------------
    def _session(self, seconds: float):
        """A fresh session per call (a TVM session's timeout bounds its whole life)."""
        from tvm import rpc

        try:
            if self.tracker:
                th, tp = self.tracker.rsplit(":", 1)
                return rpc.connect_tracker(th, int(tp)).request(self.key, session_timeout=seconds)
            return rpc.connect(self.host, self.port, session_timeout=seconds)
        except Exception as exc:
            raise DeviceError(f"cannot reach device {self.name}: {exc}") from exc

    def _run(self, sess, so: Path, feeds: dict[str, np.ndarray], want: list[np.ndarray] | None,
             number: int, repeat: int, min_repeat_ms: int) -> tuple[float, float | None]:
        import tvm
        from tvm import relax

        remote_name = f"pf_{uuid.uuid4().hex[:12]}.so"
        sess.upload(str(so), remote_name)
        lib = sess.load_module(remote_name)
        dev = sess.cpu()
        vm = relax.VirtualMachine(lib, dev)
        args = [tvm.runtime.tensor(v, dev) for v in feeds.values()]
        diff = None
        if want is not None:
            out = vm["main"](*args)
            got = out.numpy() if hasattr(out, "numpy") else out[0].numpy()
            if not np.all(np.isfinite(got)):
                raise ValueError("output has NaN/Inf")
            diff = float(np.abs(got - want[0]).max())
            scale = float(np.abs(want[0]).max()) + 1e-6
            if diff > self.rtol * scale + 1e-4:
                raise ValueError(f"output differs from onnxruntime: max abs diff {diff:.3g} "
                                 f"(scale {scale:.3g})")
        f = vm.time_evaluator("main", dev, number=number, repeat=repeat,
                              min_repeat_ms=min_repeat_ms)
        res = f(*args)
        return float(np.median(res.results) * 1e3), diff

    def measure_model(self, model: onnx.ModelProto, work_dir: Path) -> Measurement:
        try:
            so = work_dir / "model.so"
            if not so.exists():
                so = compile_onnx(model, self.target, work_dir)
        except Exception as exc:  # noqa: BLE001 - a failure is a value
            return Measurement(None, f"compile failed: {str(exc).strip().splitlines()[-1][:300]}")
        feeds = _random_feeds(model)
        try:
            want = _ort_outputs(model, feeds)
        except Exception as exc:  # noqa: BLE001 - a failure is a value
            return Measurement(None, f"onnxruntime reference failed: {exc}", str(so))
        try:
            sess = self._session(self.timeout_s)
            ms, diff = self._run(sess, so, feeds, want, self.number, self.repeat, self.min_repeat_ms)
        except Exception as exc:  # noqa: BLE001 - a failure is a value
            self.failures += 1
            msg = str(exc).strip().splitlines()[-1][:300] if str(exc).strip() else repr(exc)
            return Measurement(None, f"device {self.name}: {msg}", str(so))
        if not math.isfinite(ms):
            return Measurement(None, "device returned a non-finite time", str(so))
        return Measurement(ms, None, str(so), diff)

    def measure_kernels(self, kernels: list[Kernel], work_dir: Path | None = None) -> list[float | None]:
        import tempfile

        out: list[float | None] = []
        tmp = Path(tempfile.mkdtemp(prefix="pfk_", dir=work_dir))
        sess = None
        try:
            for i, k in enumerate(kernels):
                try:
                    m = kernel_model(k)
                    so = compile_onnx(m, self.target, tmp / str(i))
                    if sess is None:
                        sess = self._session(self.timeout_s * (len(kernels) - i))
                    ms, _ = self._run(sess, so, _random_feeds(m), None, self.number,
                                      max(3, self.repeat), self.min_repeat_ms)
                    out.append(ms)
                except Exception:  # noqa: BLE001 - a failed kernel is None
                    sess = None
                    out.append(None)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return out

    def status(self) -> str:
        return f"{self.name} ({'emulated' if self.emulated else 'real'}; {self.failures} failures)"

    def close(self) -> None:
        pass
