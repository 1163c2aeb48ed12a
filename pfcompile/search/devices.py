"""Measuring candidates and kernels on a device, as data: every call returns a
:class:`Measurement`; a failed compile, a dead device, a timeout or a NaN output
is a value with ``error`` set, never an exception that stops a search.

* :class:`RPCDevice` compiles with ``pfcompile.compiler.compile_model``, uploads
  the library over TVM RPC, checks the output against onnxruntime and times it
  with ``time_evaluator``.

  **Paired timing.** A shared machine (this project's CI/dev VM: 2 vCPUs with
  noisy neighbours) runs the same library 1.5-2x slower for seconds at a time,
  so a candidate timed alone can look faster or slower than it is. Once the
  unmodified model is the *reference* (:meth:`RPCDevice.set_reference`), every
  candidate is timed in the same session alternating with the reference
  (ABBA rounds of >= ``min_repeat_ms`` each): its latency is the reference's
  latency times the median of the per-round ratios (``latency_ms``), and the
  candidate's own median is kept as ``raw_ms``. Slow phases hit both sides of
  a ratio alike.

  **Kernels** are the fused PrimFuncs TVM generates for each kernel (a
  one-kernel ONNX model at the candidate's shapes, through pfcompile's codegen:
  the same fused function, with the same schedule, as in the whole model; the
  layout transforms at the one-kernel model's edges are left out). Each is
  timed on its own on the device, in rounds alternating with a fixed reference
  kernel (:data:`REFERENCE_KERNEL`), and reported as ratio x the reference
  kernel's time (``kernel_reference_ms``, measured once and kept in the latency
  model's cache so that kernels timed in different runs share one scale).
* :class:`NullDevice` runs nothing: a deterministic latency from MACs, for fast
  tests of the search logic.

Servers are started with ``pfcompile.device.serve`` (``pfcompile run`` on the
host target starts one itself).
"""

from __future__ import annotations

import math
import shutil
import uuid
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from pfcompile.errors import DeviceError
from pfcompile.reference import reference_outputs
from pfcompile.search.graph import Kernel, extract_kernels
from pfcompile.targets import Target

__all__ = [
    "REFERENCE_KERNEL",
    "Measurement",
    "NullDevice",
    "RPCDevice",
    "compile_onnx",
    "kernel_model",
    "kernel_primfuncs",
    "qdq_kernel_model",
]


@dataclass(frozen=True)
class Measurement:
    latency_ms: float | None
    error: str | None = None
    so_path: str | None = None
    max_abs_diff: float | None = None
    raw_ms: float | None = None      # the candidate's own median (paired timing)
    paired: bool = False             # latency_ms = reference ms x median ratio

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


#: The fixed kernel every kernel time is paired with (a mid-sized 3x3 conv + ReLU).
REFERENCE_KERNEL = Kernel("conv", (1, 32, 16, 16), (32, 32, 3, 3), (1, 32, 16, 16), (3, 3), (1, 1),
                          (1, 1, 1, 1), 1, ("Relu",))

_EDGE_FUNCS = ("te_layout_transform", "layout_transform", "reshape")


def kernel_primfuncs(k: Kernel, target: Target) -> list:
    """The scheduled PrimFunc(s) pfcompile's codegen makes for kernel ``k`` (fused
    anchor op + epilogue), without the layout transforms at the one-kernel
    model's edges (inside a whole model activations stay blocked)."""
    from tvm import tirx
    from tvm.relax.frontend.onnx import from_onnx

    from pfcompile.codegen.pipeline import fuse_to_tir, schedule_module
    from pfcompile.codegen.records import RecordDB

    mod = from_onnx(kernel_model(k), keep_params_in_input=False)
    db = RecordDB.for_target(None, target.name)
    sched = schedule_module(fuse_to_tir(mod, target, db), target, db)
    return [f for gv, f in sched.functions.items()
            if isinstance(f, tirx.PrimFunc) and not gv.name_hint.startswith(_EDGE_FUNCS)]


def _primfunc_library(funcs: list, target: Target):
    import tvm

    mod = tvm.IRModule({f"k{i}": f.with_attr("global_symbol", f"k{i}") for i, f in enumerate(funcs)})
    return tvm.compile(mod, target=target.tvm_target())


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


def _read_outputs(out, sess, n: int) -> list[np.ndarray]:
    """A VM result as numpy arrays: one tensor, or a tuple (over RPC a remote
    object, read item by item with the runtime's ``ffi.Array*`` functions)."""
    if hasattr(out, "numpy"):
        return [out.numpy()]
    if sess is not None and type(out).__name__ == "RPCObjectRef":
        size, item = sess.get_function("ffi.ArraySize"), sess.get_function("ffi.ArrayGetItem")
        return [item(out, i).numpy() for i in range(int(size(out)))]
    return [out[i].numpy() for i in range(n)]


def _ort_outputs(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The reference outputs (:mod:`pfcompile.reference`), in the graph's output order."""
    return list(reference_outputs(model, feeds, threads=1).values())


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
        self._ref: dict | None = None                 # set_reference: so, feeds, ms
        self.kernel_reference_ms: float | None = None  # REFERENCE_KERNEL's time (ms)

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

    def _load(self, sess, so: Path):
        from tvm import relax

        remote_name = f"pf_{uuid.uuid4().hex[:12]}.so"
        sess.upload(str(so), remote_name)
        return relax.VirtualMachine(sess.load_module(remote_name), sess.cpu())

    def _check(self, vm, args, want: list[np.ndarray], atol: float | None = None,
               sess=None) -> float:
        """Max abs difference to onnxruntime's outputs (all of them); raises past the
        tolerance: ``atol`` for a quantized model (``measure.quantized_tolerance``), else
        ``rtol`` of each output's scale."""
        got = _read_outputs(vm["main"](*args), sess, len(want))
        diff = 0.0
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            if not np.all(np.isfinite(g)):
                raise ValueError(f"output {i} has NaN/Inf")
            d = float(np.abs(g - w).max()) if w.size else 0.0
            scale = float(np.abs(w).max()) + 1e-6 if w.size else 1.0
            limit = atol if atol is not None else self.rtol * scale + 1e-4
            if d > limit:
                raise ValueError(f"output {i} differs from onnxruntime: max abs diff {d:.3g} "
                                 f"(scale {scale:.3g}, tolerance {limit:.3g})")
            diff = max(diff, d)
        return diff

    def _run(self, sess, so: Path, feeds: dict[str, np.ndarray], want: list[np.ndarray] | None,
             number: int, repeat: int, min_repeat_ms: int,
             atol: float | None = None) -> tuple[float, float | None]:
        """Median over ``repeat`` timings of one library (unpaired)."""
        import tvm

        vm = self._load(sess, so)
        dev = sess.cpu()
        args = [tvm.runtime.tensor(v, dev) for v in feeds.values()]
        diff = self._check(vm, args, want, atol, sess) if want is not None else None
        f = vm.time_evaluator("main", dev, number=number, repeat=repeat,
                              min_repeat_ms=min_repeat_ms)
        res = f(*args)
        return float(np.median(res.results) * 1e3), diff

    @property
    def _round_ms(self) -> int:
        return max(5, min(int(self.min_repeat_ms), 25))

    @property
    def _rounds(self) -> int:
        return max(7, int(self.repeat))

    def _paired(self, sess, so: Path, feeds: dict[str, np.ndarray], want: list[np.ndarray],
                atol: float | None = None) -> tuple[float, float, float | None]:
        """(latency_ms, raw_ms, diff): ABBA rounds of the candidate and the reference."""
        import tvm

        ref = self._ref
        dev = sess.cpu()
        vm = self._load(sess, so)
        args = [tvm.runtime.tensor(v, dev) for v in feeds.values()]
        diff = self._check(vm, args, want, atol, sess)
        rvm = self._load(sess, Path(ref["so"]))
        rargs = [tvm.runtime.tensor(v, dev) for v in ref["feeds"].values()]
        rvm["main"](*rargs)
        fc = vm.time_evaluator("main", dev, number=1, repeat=1, min_repeat_ms=self._round_ms)
        fr = rvm.time_evaluator("main", dev, number=1, repeat=1, min_repeat_ms=self._round_ms)
        ratios, raw = [], []
        for i in range(self._rounds):
            if i % 2 == 0:
                tr, tc = fr(*rargs).mean, fc(*args).mean
            else:
                tc, tr = fc(*args).mean, fr(*rargs).mean
            ratios.append(tc / tr)
            raw.append(tc * 1e3)
        return ref["ms"] * float(np.median(ratios)), float(np.median(raw)), diff

    def _prepare(self, model: onnx.ModelProto, work_dir: Path):
        """(so, feeds, want) or a failed Measurement."""
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
        from pfcompile.measure import quantized_tolerance

        src = Path(so).parent / "source.onnx"
        try:
            atol = quantized_tolerance(src, {f"y{i}": w for i, w in enumerate(want)}) if src.exists() else None
        except Exception:  # noqa: BLE001 - unreadable source: the float tolerance
            atol = None
        return so, feeds, want, atol

    def _failed(self, exc: Exception, so: Path) -> Measurement:
        self.failures += 1
        msg = str(exc).strip().splitlines()[-1][:300] if str(exc).strip() else repr(exc)
        return Measurement(None, f"device {self.name}: {msg}", str(so))

    def set_reference(self, model: onnx.ModelProto, work_dir: Path,
                      given: float | None = None) -> Measurement:
        """Measure ``model`` (the unmodified one) and time later candidates against it.
        ``given``: the reference latency to scale by (a resumed run keeps its baseline's)."""
        self._ref = None
        m = self.measure_model(model, work_dir)
        if not m.ok:
            return m
        ms = m.latency_ms if given is None else float(given)
        self._ref = {"so": m.so_path, "feeds": _random_feeds(model), "ms": ms}
        return replace(m, latency_ms=ms)

    def measure_model(self, model: onnx.ModelProto, work_dir: Path) -> Measurement:
        """Compile (cached in ``work_dir``), verify against onnxruntime, time: paired
        with the reference once there is one, else the median of the same rounds."""
        prep = self._prepare(model, work_dir)
        if isinstance(prep, Measurement):
            return prep
        so, feeds, want, atol = prep
        try:
            sess = self._session(self.timeout_s)
            if self._ref is not None:
                ms, raw, diff = self._paired(sess, so, feeds, want, atol)
            else:
                ms, diff = self._run(sess, so, feeds, want, 1, self._rounds, self._round_ms, atol)
                raw = ms
        except Exception as exc:  # noqa: BLE001 - a failure is a value
            return self._failed(exc, so)
        if not math.isfinite(ms):
            return Measurement(None, "device returned a non-finite time", str(so))
        return Measurement(ms, None, str(so), diff, raw_ms=raw, paired=self._ref is not None)

    # -- kernels -------------------------------------------------------------
    def measure_kernels(self, kernels: list[Kernel], work_dir: Path | None = None) -> list[float | None]:
        """Each kernel timed on the device, paired with the reference kernel (see the
        module docstring): a float kernel as its fused PrimFunc(s) (one library for
        the batch); an integer one (``bits`` < 32, lowered by ``pfcompile.quantexec``
        through another pipeline) as its whole one-kernel library, which also holds
        the quantize/dequantize at its edges. ``None`` for a kernel that cannot be
        built or run."""
        import tempfile

        import tvm

        from pfcompile.codegen.kernels import _args

        funcs: list = list(kernel_primfuncs(REFERENCE_KERNEL, self.target))
        nref = len(funcs)
        plan: list[tuple[str, object] | None] = []   # ("funcs", (lo, hi)) | ("model", so)
        tmp = Path(tempfile.mkdtemp(prefix="pfk_", dir=work_dir))
        out: list[float | None] = [None] * len(kernels)
        try:
            for i, k in enumerate(kernels):
                try:
                    if k.bits < 32:
                        plan.append(("model", compile_onnx(kernel_model(k), self.target, tmp / f"m{i}")))
                        continue
                    fs = kernel_primfuncs(k, self.target)
                except Exception:  # noqa: BLE001 - a kernel that cannot be built is None
                    plan.append(None)
                    continue
                plan.append(("funcs", (len(funcs), len(funcs) + len(fs))) if fs else None)
                funcs.extend(fs)
            lib = _primfunc_library(funcs, self.target)
            so = tmp / "kernels.so"
            if self.target.cross_compiler:
                from tvm.support import cc

                lib.export_library(str(so), fcompile=cc.cross_compiler(self.target.cross_compiler))
            else:
                lib.export_library(str(so))
            sess = self._session(self.timeout_s * max(1, len(kernels)))
            sess.upload(str(so), so.name)
            rmod = sess.load_module(so.name)
            dev = sess.cpu()
            args = [_args(f, dev) for f in funcs]
            ms = max(1, self._round_ms // 5)
            evals = [rmod.time_evaluator(f"k{i}", dev, number=1, repeat=1, min_repeat_ms=ms)
                     for i in range(len(funcs))]

            def span_timer(lo: int, hi: int):
                return lambda: sum(evals[i](*args[i]).mean for i in range(lo, hi))

            ref = span_timer(0, nref)
            if self.kernel_reference_ms is None:
                ref()  # warm-up
                self.kernel_reference_ms = 1e3 * float(np.median([ref() for _ in range(9)]))
            for j, step in enumerate(plan):
                if step is None:
                    continue
                try:
                    if step[0] == "funcs":
                        timed = span_timer(*step[1])
                    else:
                        m = kernel_model(kernels[j])
                        vm = self._load(sess, step[1])
                        vargs = [tvm.runtime.tensor(v, dev) for v in _random_feeds(m).values()]
                        fe = vm.time_evaluator("main", dev, number=1, repeat=1, min_repeat_ms=ms)
                        timed = (lambda fe=fe, vargs=vargs: fe(*vargs).mean)
                    timed()  # warm-up
                    ratios = []
                    for r in range(5):
                        if r % 2 == 0:
                            tr, tk = ref(), timed()
                        else:
                            tk, tr = timed(), ref()
                        ratios.append(tk / tr)
                    out[j] = float(np.median(ratios)) * self.kernel_reference_ms
                except Exception:  # noqa: BLE001 - a kernel that fails to run is None
                    out[j] = None
        except Exception:  # noqa: BLE001 - library/session failure: every kernel is None
            self.failures += 1
            return [None] * len(kernels)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return out

    def status(self) -> str:
        return f"{self.name} ({'emulated' if self.emulated else 'real'}; {self.failures} failures)"

    def close(self) -> None:
        pass
