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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from pfcompile.errors import DeviceError
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
    """A one-kernel ONNX model reproducing ``k`` (anchor op + epilogue)."""
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
    sched = schedule_module(fuse_to_tir(mod, target), target, RecordDB.for_target(None, target.name))
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

    def _check(self, vm, args, want: list[np.ndarray]) -> float:
        out = vm["main"](*args)
        got = out.numpy() if hasattr(out, "numpy") else out[0].numpy()
        if not np.all(np.isfinite(got)):
            raise ValueError("output has NaN/Inf")
        diff = float(np.abs(got - want[0]).max())
        scale = float(np.abs(want[0]).max()) + 1e-6
        if diff > self.rtol * scale + 1e-4:
            raise ValueError(f"output differs from onnxruntime: max abs diff {diff:.3g} "
                             f"(scale {scale:.3g})")
        return diff

    def _run(self, sess, so: Path, feeds: dict[str, np.ndarray], want: list[np.ndarray] | None,
             number: int, repeat: int, min_repeat_ms: int) -> tuple[float, float | None]:
        """Median over ``repeat`` timings of one library (unpaired)."""
        import tvm

        vm = self._load(sess, so)
        dev = sess.cpu()
        args = [tvm.runtime.tensor(v, dev) for v in feeds.values()]
        diff = self._check(vm, args, want) if want is not None else None
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

    def _paired(self, sess, so: Path, feeds: dict[str, np.ndarray], want: list[np.ndarray]
                ) -> tuple[float, float, float | None]:
        """(latency_ms, raw_ms, diff): ABBA rounds of the candidate and the reference."""
        import tvm

        ref = self._ref
        dev = sess.cpu()
        vm = self._load(sess, so)
        args = [tvm.runtime.tensor(v, dev) for v in feeds.values()]
        diff = self._check(vm, args, want)
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
        return so, feeds, want

    def _failed(self, exc: Exception, so: Path) -> Measurement:
        self.failures += 1
        msg = str(exc).strip().splitlines()[-1][:300] if str(exc).strip() else repr(exc)
        return Measurement(None, f"device {self.name}: {msg}", str(so))

    def set_reference(self, model: onnx.ModelProto, work_dir: Path,
                      given: float | None = None) -> Measurement:
        """Measure ``model`` (the unmodified one) and time later candidates against it.
        ``given``: the reference latency to scale by (a resumed run keeps its baseline's)."""
        prep = self._prepare(model, work_dir)
        if isinstance(prep, Measurement):
            return prep
        so, feeds, want = prep
        try:
            sess = self._session(self.timeout_s)
            ms, diff = self._run(sess, so, feeds, want, 1, self._rounds, self._round_ms)
        except Exception as exc:  # noqa: BLE001 - a failure is a value
            return self._failed(exc, so)
        if not math.isfinite(ms):
            return Measurement(None, "device returned a non-finite time", str(so))
        self._ref = {"so": str(so), "feeds": feeds, "ms": ms if given is None else float(given)}
        return Measurement(self._ref["ms"], None, str(so), diff, raw_ms=ms)

    def measure_model(self, model: onnx.ModelProto, work_dir: Path) -> Measurement:
        prep = self._prepare(model, work_dir)
        if isinstance(prep, Measurement):
            return prep
        so, feeds, want = prep
        try:
            sess = self._session(self.timeout_s)
            if self._ref is not None:
                ms, raw, diff = self._paired(sess, so, feeds, want)
            else:
                ms, diff = self._run(sess, so, feeds, want, self.number, self.repeat,
                                     self.min_repeat_ms)
                raw = ms
        except Exception as exc:  # noqa: BLE001 - a failure is a value
            return self._failed(exc, so)
        if not math.isfinite(ms):
            return Measurement(None, "device returned a non-finite time", str(so))
        return Measurement(ms, None, str(so), diff, raw_ms=raw, paired=self._ref is not None)

    # -- kernels -------------------------------------------------------------
    def measure_kernels(self, kernels: list[Kernel], work_dir: Path | None = None) -> list[float | None]:
        """Each kernel's fused PrimFunc(s) timed on the device, paired with the
        reference kernel (see the module docstring); ``None`` for a kernel that
        cannot be built or run."""
        import tempfile

        from pfcompile.codegen.kernels import _args

        funcs: list = []
        spans: list[tuple[int, int] | None] = []
        ref_funcs = kernel_primfuncs(REFERENCE_KERNEL, self.target)
        funcs.extend(ref_funcs)
        for k in kernels:
            try:
                fs = kernel_primfuncs(k, self.target)
            except Exception:  # noqa: BLE001 - a kernel that cannot be built is None
                spans.append(None)
                continue
            spans.append((len(funcs), len(funcs) + len(fs)) if fs else None)
            funcs.extend(fs)
        out: list[float | None] = [None] * len(kernels)
        tmp = Path(tempfile.mkdtemp(prefix="pfk_", dir=work_dir))
        try:
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

            def t(lo: int, hi: int) -> float:
                return sum(evals[i](*args[i]).mean for i in range(lo, hi))

            nref = len(ref_funcs)
            if self.kernel_reference_ms is None:
                t(0, nref)  # warm-up
                self.kernel_reference_ms = 1e3 * float(np.median([t(0, nref) for _ in range(9)]))
            for j, span in enumerate(spans):
                if span is None:
                    continue
                try:
                    t(*span)  # warm-up
                    ratios = []
                    for r in range(5):
                        if r % 2 == 0:
                            tr, tk = t(0, nref), t(*span)
                        else:
                            tk, tr = t(*span), t(0, nref)
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
