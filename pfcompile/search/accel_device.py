"""``pfcompile run`` on FPGA-style accelerator targets (``targets/fpga-*.toml``).

Three pieces plug the simulated accelerator into the same search loop
(:func:`pfcompile.search.loop.run_search`) that CPU targets use:

* :class:`AccelDeployer` (the loop's :class:`~pfcompile.search.loop.Deployer`): a config
  becomes the model the accelerator runs: the channel-pruning pass (``keep:`` knobs) and
  the sparsify pass (``sparsity:`` knobs, when searched; no latency effect here) with
  :func:`pfcompile.search.space.compress`, then static QDQ quantization
  (onnxruntime, per-channel int8 weights, uint8 activations, calibrated on the
  calibration data; :func:`pfcompile.passes.ort_quantize.ort_quantize_qdq`), then the per-layer bit
  widths of the config's ``bits:<layer>`` knobs (:func:`pfcompile.accel.mixed.set_layer_bits`;
  a width applies to the layer's weights and its input activation; 8/8 where the config
  says nothing). Not the quantize pass that ``compress`` applies on CPU targets: its QDQ
  form leaves residual Adds (and tensors read by several nodes) in float, so those
  layers do not match the accelerator's integer-layer pattern and run on the host (on
  the demo at 8 bits: 4 of its 11 Conv/Gemm layers on the accelerator, against 11 with
  onnxruntime's QDQ form). The baseline (default config) is therefore *uniform 8-bit*, the
  reference every speedup is relative to. Accuracy is scored on this QDQ model
  (onnxruntime fake-quant), against the float original.
* Accelerator kernels (:func:`accel_kernels`): one :class:`~pfcompile.search.graph.Kernel`
  per Conv (group 1) / Gemm of the pruned float graph (the layers the accelerator
  partition takes), with ``bits`` = weight width and ``abits`` = activation width as
  built (an activation read by several layers takes the widest request). A layer
  whose widths the target cannot run falls back to the host (the partitioner warns)
  and has no accelerator kernel.
* :class:`AccelSearchDevice` (same interface as ``RPCDevice`` / ``NullDevice``):
  ``measure_model`` compiles the candidate with ``compile_model`` (``program.npz``),
  runs it on the simulator device over TVM RPC (``pfcompile device serve --target
  fpga-...``; :func:`pfcompile.accel.serve.measure_accel`), verifies the outputs
  against onnxruntime on the same QDQ model within the accuracy contract of
  ``pfcompile measure`` (:func:`pfcompile.measure.quantized_tolerance`), and reports
  ``latency_ms = accel_ms_simulated + host_ms_measured`` (``latency="total"``, the
  default) or ``accel_ms_simulated`` alone (``latency="accel"``: host-op wall clock on a
  shared machine is noisy, and bit widths do not change it), with both parts kept in
  the trial record. ``measure_kernels`` times accelerator kernels with the simulator's
  per-layer cycle model (the best tiling at the kernel's widths; exact, a few ms each,
  computed on this machine with the same code the device runs).

Every latency here is **simulated** (``simulated = True``): the accelerator part comes
from the cycle model at the target's clock, no FPGA runs; the host part is wall clock
of the host ops on the machine serving the simulator. ``emulated`` keeps its meaning
(qemu) and is False here.

What the kernel-level cost model learns on these targets: per-layer simulated times
are exact, so for kernels already timed the model's sum is the accelerator's simulated
time; XGBoost predicts the layers not timed yet (the loop times
``kernels_per_trial`` new kernels after each trial), and the loop's linear map
``a * sum + b`` carries the host-op time (mostly in ``b``; host ops are not kernels here).
"""

from __future__ import annotations

import math
import tempfile
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx

from pfcompile.compiler import compile_model
from pfcompile.data import Dataset
from pfcompile.errors import DeviceError, PfcompileError, SearchError
from pfcompile.measure import verify
from pfcompile.passes.ort_quantize import ort_quantize_qdq
from pfcompile.runner import AccelRunner, Runner, RunnerResult
from pfcompile.search.device_spec import LATENCY_KINDS
from pfcompile.search.devices import Measurement, RPCDevice
from pfcompile.search.graph import Kernel, extract_kernels
from pfcompile.search.space import SearchSpace, compress, config_hash
from pfcompile.targets import MeasureSettings, Target

__all__ = [
    "LATENCY_KINDS",
    "AccelDeployer",
    "AccelSearchDevice",
    "accel_kernels",
    "bits_of_config",
    "kernel_layer",
]

#: a config's per-layer widths: layer (Conv/Gemm node name) -> (weight bits, activation bits)
Bits = dict[str, tuple[int, int]]


def bits_of_config(space: SearchSpace, config: dict) -> Bits:
    """Per-layer widths a config asks for: ``bits`` knobs (target = layer name; value an
    int for weights and activations alike, or a ``(w, a)`` pair). Empty with keep-only
    spaces (everything 8/8)."""
    out: Bits = {}
    for k in space.knobs:
        if k.kind != "bits" or k.name not in config:
            continue
        v = config[k.name]
        w, a = (int(v[0]), int(v[1])) if isinstance(v, (list, tuple)) else (int(v), int(v))
        if (w, a) != (8, 8):
            out[k.target] = (w, a)
    return out


def _widest(v) -> tuple[int, int]:
    return (int(v[0]), int(v[1])) if isinstance(v, (list, tuple)) else (int(v), int(v))


def _width_ok(v, accel_cfg) -> bool:
    w, a = _widest(v)
    return 2 <= w <= 8 and 2 <= a <= 8 and accel_cfg.operand_bits(w, a) is not None


def _float_part(space: SearchSpace, config: dict) -> tuple[SearchSpace, dict]:
    """The space and config without their ``bits`` knobs: what ``compress`` applies before
    the accelerator's quantization (pruning, sparsity)."""
    knobs = tuple(k for k in space.knobs if k.kind != "bits")
    return (replace(space, knobs=knobs),
            {k.name: config.get(k.name, k.default) for k in knobs})


def accel_kernels(model: onnx.ModelProto, bits: Bits, accel_cfg) -> list[Kernel]:
    """The accelerator layers of a float (pruned) graph as kernels with their widths.

    Conv with ``group = 1`` and Gemm go to the accelerator (the partition of
    :mod:`pfcompile.accel.qgraph` on onnxruntime's QDQ form); a layer whose widths
    ``accel_cfg`` cannot run is left out (it falls back to the host)."""
    ks = [k for k in extract_kernels(model) if k.op in ("conv", "gemm") and k.nodes]
    nodes = {n.name: n for n in model.graph.node}
    act: dict[str, int] = {}
    for k in ks:
        x = nodes[k.nodes[0]].input[0] if k.nodes[0] in nodes else k.nodes[0]
        act[x] = max(act.get(x, 0), bits.get(k.nodes[0], (8, 8))[1])
    out = []
    for k in ks:
        x = nodes[k.nodes[0]].input[0] if k.nodes[0] in nodes else k.nodes[0]
        w, a = bits.get(k.nodes[0], (8, 8))[0], act[x]
        if accel_cfg.operand_bits(w, a) is None:
            continue
        out.append(replace(k, epilogue=(), bits=w, abits=a))
    return out


def kernel_layer(k: Kernel):
    """A :class:`pfcompile.accel.qgraph.QLayer` with ``k``'s shapes and widths (zero
    weights: the cycle model depends on shapes and widths only)."""
    from pfcompile.accel.qgraph import QLayer

    if k.op == "conv":
        o, i, kh, kw = k.w_shape
        in_shape = tuple(k.in_shape)
        out_shape = tuple(k.out_shape)
        kind = "conv2d"
    elif k.op == "gemm":
        o, i = k.w_shape[0], k.w_shape[-1]
        kh = kw = 1
        in_shape = (1, i, 1, 1)
        out_shape = (1, o, 1, 1)
        kind = "dense"
    else:
        raise SearchError(f"kernel {k.key} is not an accelerator layer (conv / gemm)")
    return QLayer(name=k.key, kind=kind, x="x", y="y", weight=np.zeros((o, i, kh, kw), np.int8),
                  bias=np.zeros(o, np.int32), x_zero=0, x_scale=1.0,
                  w_scale=np.ones(o, np.float32), y_scale=1.0, y_zero=0, y_dtype="uint8",
                  stride=(int(k.stride[0]), int(k.stride[1])),
                  pads=tuple(int(p) for p in k.pad),  # type: ignore[arg-type]
                  in_shape=(1,) + tuple(int(v) for v in in_shape[1:]),  # type: ignore[arg-type]
                  out_shape=(1,) + tuple(int(v) for v in out_shape[1:]),  # type: ignore[arg-type]
                  wbits=int(k.bits), abits=int(k.abits if k.abits is not None else k.bits))


class AccelDeployer:
    """Config -> pruned -> QDQ (static, calibrated) -> per-layer widths; see the module
    docstring. ``calib``: calibration inputs for the activation ranges (the loop's
    ``--calib`` samples, else the first samples of ``--data``)."""

    def __init__(self, target: Target, calib: Dataset, calib_samples: int = 32) -> None:
        from pfcompile.accel.config import load_accel_config

        if len(calib.inputs) != 1:
            raise SearchError(f"accelerator targets quantize models with one input; "
                              f"this one has {sorted(calib.inputs)}")
        self.target = target
        self.accel = load_accel_config(target)
        self.input_name, x = next(iter(calib.inputs.items()))
        self.calib_x = np.ascontiguousarray(x[:max(1, calib_samples)])
        self._kernels: dict[str, list[Kernel]] = {}

    def adapt_space(self, space: SearchSpace) -> SearchSpace:
        """``bits`` knobs keep only the integer widths the target runs (2..8 bits and
        ``operand_bits`` not None): every layer on an accelerator target is quantized (the
        float choice, 32, would be the same 8-bit QDQ model here), and the default is the
        widest (8 bits: the uniform 8-bit baseline)."""
        knobs = []
        for k in space.knobs:
            if k.kind == "bits":
                ok = tuple(c for c in k.choices if _width_ok(c, self.accel))
                if not ok:
                    raise SearchError(f"knob '{k.name}': none of the widths {list(k.choices)} "
                                      f"runs on accelerator '{self.accel.name}'")
                k = replace(k, choices=ok, default=max(ok, key=_widest))
            knobs.append(k)
        return replace(space, knobs=tuple(knobs))

    def candidate(self, model: onnx.ModelProto, space: SearchSpace, config: dict,
                  calib: Dataset | None, calib_samples: int) -> onnx.ModelProto:
        from pfcompile.accel.mixed import set_layer_bits

        space.validate(config)
        pruned = compress(model, *_float_part(space, config), calib,
                          calib_samples=calib_samples)
        bits = bits_of_config(space, config)
        with tempfile.TemporaryDirectory(prefix="pfq_") as tmp:
            src, dst = Path(tmp) / "float.onnx", Path(tmp) / "qdq.onnx"
            onnx.save(pruned, str(src))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    qdq = onnx.load(str(ort_quantize_qdq(src, dst, self.calib_x,
                                                         input_name=self.input_name,
                                                         preprocess=False)))
                except Exception as exc:
                    raise SearchError(f"static QDQ quantization of the candidate failed: "
                                      f"{exc}") from exc
        return set_layer_bits(qdq, bits, pruned) if bits else qdq

    def kernels(self, model: onnx.ModelProto, space: SearchSpace, config: dict) -> list[Kernel]:
        h = config_hash(config)
        if h not in self._kernels:
            if len(self._kernels) > 1024:
                self._kernels.clear()
            pruned = compress(model, *_float_part(space, config))
            self._kernels[h] = accel_kernels(pruned, bits_of_config(space, config), self.accel)
        return self._kernels[h]


class AccelSearchDevice(RPCDevice):
    """The simulated accelerator device (``pfcompile device serve --target fpga-...``)
    as a search device: ``host:port`` of its server, or a tracker + key; one
    :class:`~pfcompile.runner.accel.AccelRunner` session per server (see
    :class:`~pfcompile.search.devices.RPCDevice`). No paired timing: simulated cycles
    do not drift."""

    simulated = True

    def __init__(self, target: Target, *, host: str = "127.0.0.1", port: int = 9350,
                 tracker: str | None = None, key: str | None = None,
                 repeat: int | None = None, latency: str = "total") -> None:
        from pfcompile.accel.config import load_accel_config

        if latency not in LATENCY_KINDS:
            raise SearchError(f"accelerator latency '{latency}' is not one of "
                              f"{', '.join(LATENCY_KINDS)}")
        if not target.is_accelerator:
            raise DeviceError(f"target '{target.name}' has no [accelerator] table: use the "
                              f"CPU search device for it")
        self.accel = load_accel_config(target)
        self.latency = latency
        super().__init__(target, host=host, port=port, tracker=tracker, key=key,
                         size=1 if tracker else None, repeat=repeat or target.measure.repeat)
        self.emulated = False      # "emulated" means qemu; this device is simulated

    def make_slot(self, *, rpc: str | None = None, key: str | None = None,
                  device: str | None = None) -> Runner:
        return AccelRunner(self.target, rpc=rpc, key=key, device=device)

    @property
    def settings(self) -> MeasureSettings:
        return MeasureSettings(number=1, repeat=int(self.repeat), min_repeat_ms=0,
                               timeout_s=self.timeout_s)

    def _lib(self, artifact: Path) -> str:
        return str(artifact / "program.npz")

    def build(self, model: onnx.ModelProto, work_dir: Path) -> Path:
        if not (work_dir / "program.npz").exists() or not (work_dir / "source.onnx").exists():
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                compile_model(model, self.target, work_dir)
            for w in caught:       # layers the accelerator cannot run fall back to the host
                if issubclass(w.category, UserWarning) and "host" in str(w.message):
                    warnings.warn(str(w.message), UserWarning, stacklevel=2)
        return work_dir

    def prepare(self, model: onnx.ModelProto, work_dir: Path):
        prep = super().prepare(model, work_dir)
        if not isinstance(prep, Measurement) and prep.quant_atol is None:
            prep.quant_atol = 1e-4     # the accuracy contract is absolute here
        return prep

    def finish(self, prep, res: RunnerResult) -> Measurement:
        prog = self._lib(prep.artifact)
        if not res.ok:
            return Measurement(None, f"device {self.label}: {res.error}", prog)
        d = res.details
        check = verify(res.outputs or {}, prep.reference, prep.quant_atol)
        max_err = check.max_abs_err if check.max_abs_err is not None else math.inf
        details = {"simulated": True, "accel_ms_simulated": d["accel_ms_simulated"],
                   "host_ms_measured": d["host_ms_measured_median"],
                   "accel_cycles": d["accel_cycles"], "layers_on_accel": len(d["layer_cycles"]),
                   "max_abs_err": max_err, "tolerance": prep.quant_atol,
                   "latency_kind": self.latency, "host_fallbacks": _host_fallbacks(prep.artifact)}
        if not check.verified:
            return Measurement(None, f"accelerator output differs from the reference: "
                                    f"{check.detail}", prog, max_abs_diff=max_err,
                                    details=details)
        ms = d["accel_ms_simulated"] + (d["host_ms_measured_median"]
                                        if self.latency == "total" else 0.0)
        return Measurement(ms, None, prog, max_abs_diff=max_err, details=details)

    def set_reference(self, model: onnx.ModelProto, work_dir: Path,
                      given: float | None = None) -> Measurement:
        """No paired timing here: measure the model, or take ``given`` as it is (a
        resumed run)."""
        if given is not None:
            return Measurement(float(given), None, self._lib(Path(work_dir)))
        return self.measure_model(model, work_dir)

    # -- kernels --------------------------------------------------------------------
    def measure_kernels(self, kernels: list[Kernel]) -> list[float | None]:
        """Simulated ms per image of each accelerator kernel: the cycle model of its best
        tiling at its widths (None for a kernel that is not a conv / gemm or cannot be
        tiled); computed here with the same code the device runs."""
        from pfcompile.accel.tiling import search_tiling

        out: list[float | None] = []
        for k in kernels:
            try:
                _, cycles = search_tiling(kernel_layer(k), self.accel, None)
                out.append(self.accel.cycles_to_ms(cycles))
            except PfcompileError:
                out.append(None)
        return out

    def status(self) -> str:
        return f"{self.name} (SIMULATED accelerator '{self.target.name}'; {self.failures} failures)"


def _host_fallbacks(artifact: Path) -> dict[str, str]:
    """Layer -> why it runs on the host, from the compiled artifact's model.json."""
    import json

    try:
        meta = json.loads((artifact / "model.json").read_text())
    except (OSError, ValueError):
        return {}
    return {d["node"]: d.get("reason", "") for d in meta.get("layers", [])
            if d.get("path") == "host"}


def _last_line(exc: BaseException) -> str:
    s = str(exc).strip()
    return s.splitlines()[-1][:300] if s else repr(exc)
