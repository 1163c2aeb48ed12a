"""Measure a compiled artifact on a device, and verify it against onnxruntime.

``measure(DIR, target)`` uploads ``DIR/model.so``, runs it once on a fixed random
input (``data.random_inputs(specs, seed=0)``), compares every output with
onnxruntime on ``DIR/source.onnx``, then times it with ``time_evaluator``.

Tolerance: ``|tvm - ort| <= atol + rtol * |ort|`` elementwise, with rtol = atol =
1e-4 for float32 (1e-2 for float16/bfloat16; exact for integer outputs). A NaN or
Inf in the device output where onnxruntime has none is never verified.

Latencies from an emulated device (``target.emulated``, qemu-user) are functional
checks only, never ARM latencies; the result says so in ``latency_note``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pfcompile.data import random_inputs
from pfcompile.errors import ConfigError, DeviceError, MeasureError, ModelError
from pfcompile.model import TensorSpec
from pfcompile.reference import reference_outputs as _reference_outputs
from pfcompile.runner import LocalRunner, RPCRunner, Runner, RunnerResult
from pfcompile.targets import MeasureSettings, Target, load_target

__all__ = [
    "TOLERANCES",
    "Verification",
    "append_jsonl",
    "make_runner",
    "measure",
    "quantized_tolerance",
    "read_artifact",
    "reference_outputs",
    "tolerance_for",
    "verify",
]

#: (rtol, atol) per output dtype; integer outputs must match exactly.
TOLERANCES: dict[str, tuple[float, float]] = {
    "float32": (1e-4, 1e-4),
    "float64": (1e-6, 1e-6),
    "float16": (1e-2, 1e-2),
    "bfloat16": (1e-2, 1e-2),
}

EMULATED_NOTE = ("emulated device (qemu-user): latencies are functional checks only, "
                 "not latencies of the real hardware")


def tolerance_for(dtype: str) -> tuple[float, float]:
    return TOLERANCES.get(str(dtype), (0.0, 0.0))


@dataclass(frozen=True)
class Verification:
    """Device outputs vs onnxruntime: ``verified``, the largest absolute error, and
    a one-line ``detail`` saying which output failed and why."""

    verified: bool
    max_abs_err: float | None
    detail: str


def read_artifact(artifact_dir: str | Path) -> tuple[dict, list[TensorSpec], Path]:
    """``(model.json as a dict, input specs, path of the source model)``; ModelError
    naming the file when something is missing."""
    d = Path(artifact_dir)
    meta_path = d / "model.json"
    if not d.is_dir():
        raise ModelError(f"artifact folder not found: {d} (make one with `pfcompile compile`)")
    if not meta_path.is_file():
        raise ModelError(f"{d} is not a compiled artifact: no model.json "
                         f"(make one with `pfcompile compile`)")
    try:
        meta = json.loads(meta_path.read_text())
        specs = [TensorSpec.from_json(x) for x in meta["inputs"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"{meta_path}: unreadable artifact metadata: {exc}") from exc
    source = d / "source.onnx"
    if not source.is_file() and meta.get("source_model"):
        source = Path(meta["source_model"])
    if not source.is_file():
        raise ModelError(f"{d}: no source model to verify against (neither {d / 'source.onnx'} "
                         f"nor source_model={meta.get('source_model')!r} exists)")
    return meta, specs, source


def reference_outputs(source: str | Path, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The reference outputs for *inputs* (:mod:`pfcompile.reference`: onnxruntime, a
    quantized model run as written), keyed by output name."""
    return _reference_outputs(Path(source), inputs)


def verify(outputs: dict[str, np.ndarray], reference: dict[str, np.ndarray],
           quant_atol: float | None = None) -> Verification:
    """Compare device outputs with the reference by name (by position when the names
    differ), with :data:`TOLERANCES` per dtype; ``quant_atol`` (quantized models, see
    :func:`quantized_tolerance`) replaces the float tolerance."""
    if len(outputs) != len(reference):
        return Verification(False, None, f"device gave {len(outputs)} outputs, onnxruntime "
                                          f"{len(reference)}")
    pairs = ([(n, outputs[n], reference[n]) for n in reference] if set(outputs) == set(reference)
             else [(n, o, r) for (n, r), o in zip(reference.items(), outputs.values(),
                                                  strict=True)])
    worst = 0.0
    problems: list[str] = []
    for name, got, want in pairs:
        got, want = np.asarray(got), np.asarray(want)
        if got.shape != want.shape:
            problems.append(f"output '{name}': shape {got.shape} vs onnxruntime {want.shape}")
            continue
        bad = ~np.isfinite(got) & np.isfinite(want) if got.dtype.kind == "f" else None
        if bad is not None and bad.any():
            n_nan = int(np.isnan(got).sum())
            problems.append(f"output '{name}': {n_nan} NaN / {int(bad.sum()) - n_nan} Inf "
                            f"values where onnxruntime has finite ones")
            worst = float("nan")
            continue
        rtol, atol = tolerance_for(str(want.dtype))
        if quant_atol is not None and want.dtype.kind == "f":
            rtol, atol = 0.0, quant_atol
        err = np.abs(got.astype(np.float64) - want.astype(np.float64))
        m = float(np.nanmax(err)) if err.size else 0.0
        if not np.isnan(worst):
            worst = max(worst, m)
        if not np.allclose(got, want, rtol=rtol, atol=atol, equal_nan=True):
            problems.append(f"output '{name}': max abs error {m:.3g} exceeds "
                            f"atol {atol:g} + rtol {rtol:g}·|ref|")
    if problems:
        return Verification(False, worst, "; ".join(problems))
    return Verification(True, worst, f"{len(pairs)} output(s) within tolerance")


def append_jsonl(path: str | Path, record: dict[str, Any]) -> None:
    """Append one JSON line to *path* (created with its folder), flushed at once, so that
    a killed run keeps every measurement made before it."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with open(p, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record, sort_keys=True) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def make_runner(target: Target, rpc: str | None = None, key: str | None = None,
                device: str | None = None) -> Runner:
    """RPCRunner for ``--rpc``/``--device``; LocalRunner for host with neither."""
    if rpc and device:
        raise ConfigError("give --rpc HOST:PORT --key K (a tracker) or --device HOST:PORT "
                          "(a server), not both")
    if rpc:
        return RPCRunner(rpc=rpc, key=key or target.rpc_key)
    if device:
        return RPCRunner(device=device)
    if target.serve == "local":
        return LocalRunner(target)
    raise ConfigError(f"target '{target.name}' runs on a device pfcompile does not start by "
                      f"itself: start one (`pfcompile device serve --target {target.name} "
                      f"--port 9090`) and pass --device 127.0.0.1:9090, or --rpc/--key")


def measure(artifact_dir: str | Path, target: str | Target, rpc: str | None = None,
            key: str | None = None, device: str | None = None,
            settings: MeasureSettings | None = None, runner: Runner | None = None,
            seed: int = 0) -> dict[str, Any]:
    """Run, verify and time a compiled artifact on a device. Returns::

        {"median_ms", "latencies_ms", "verified", "max_abs_err", "device", "target",
         "emulated", "detail", "latency_note", "settings"}

    A device that is unreachable, dies or hangs raises DeviceError; a run that fails on
    the device raises MeasureError. Wrong outputs are not an error: ``verified`` is
    false and ``detail`` says why.
    """
    tgt = load_target(target) if isinstance(target, str) else target
    meta, specs, source = read_artifact(artifact_dir)
    built_for = (meta.get("target") or {}).get("name")
    if built_for and built_for != tgt.name:
        raise ConfigError(f"{artifact_dir} was compiled for target '{built_for}', not "
                          f"'{tgt.name}': pass --target {built_for} or recompile")
    settings = settings or tgt.measure
    inputs = random_inputs(specs, seed=seed)
    reference = reference_outputs(source, inputs)
    own = runner is None
    runner = runner or make_runner(tgt, rpc, key, device)
    try:
        res: RunnerResult = runner.run(artifact_dir, inputs, settings)
    finally:
        if own:
            runner.close()
    if not res.ok:
        cls = DeviceError if res.error_kind in ("device", "timeout") else MeasureError
        raise cls(f"measuring {artifact_dir} on {res.device or tgt.name}: {res.error}")
    if res.outputs is None:
        check = Verification(False, None, f"runner {res.device} returned no outputs")
    else:
        check = verify(res.outputs, reference, quantized_tolerance(source, reference))
    return {
        "median_ms": res.median_ms,
        "latencies_ms": res.latencies_ms,
        "verified": check.verified,
        "max_abs_err": check.max_abs_err,
        "device": res.device,
        "target": tgt.name,
        "emulated": tgt.emulated,
        "detail": check.detail,
        "latency_note": EMULATED_NOTE if tgt.emulated else "",
        "settings": {"number": settings.number, "repeat": settings.repeat,
                     "min_repeat_ms": settings.min_repeat_ms, "timeout_s": settings.timeout_s},
    }


def measure_accelerator(artifact_dir: str | Path, target: Target, *, rpc: str | None = None,
                        key: str | None = None, device: str | None = None) -> dict:
    """Run a compiled accelerator program on the simulator device (``--device HOST:PORT``
    or a tracker ``--rpc``), verify it against onnxruntime on the source QDQ model
    within one quantisation step, and report the simulated accelerator latency and the
    measured host-op time separately."""
    from pfcompile.accel.serve import measure_accel

    d = Path(artifact_dir)
    meta, specs, source = read_artifact(d)
    prog = d / meta.get("library", "program.npz")
    if device is None and rpc is None:
        raise DeviceError(f"target '{target.name}' is served by `pfcompile device serve --target "
                          f"{target.name}`: pass --device HOST:PORT or --rpc HOST:PORT --key K")
    host, port = ("127.0.0.1", 0)
    if device is not None:
        h, _, p = device.rpartition(":")
        host, port = h, int(p)
    inputs = random_inputs(specs, seed=0)
    m = measure_accel(str(prog), target, inputs, host=host, port=port, tracker=rpc, key=key)
    ref = reference_outputs(source, inputs)
    errs = []
    for i, (name, r) in enumerate(ref.items()):
        o = m.outputs.get(name, list(m.outputs.values())[i] if i < len(m.outputs) else None)
        if o is None:
            errs.append(float("inf"))
            continue
        errs.append(float(np.max(np.abs(np.asarray(o, dtype=np.float64) - r))))
    tol = quantized_tolerance(source, ref) or 1e-4
    max_err = max(errs) if errs else float("inf")
    return {**m.to_json(), "median_ms": m.accel_ms_simulated + m.host_ms_median,
            "latencies_ms": [m.accel_ms_simulated + h for h in m.host_ms_measured],
            "verified": bool(np.isfinite(max_err) and max_err <= tol), "max_abs_err": max_err,
            "tolerance": tol, "device": device or f"{rpc} key {key or target.rpc_key}",
            "emulated": True, "simulated": True}


#: quantized models: integer kernels round where onnxruntime's float fake-quant rounds
#: differently (ties, requantisation order), and a one-step flip early can move a float
#: output by a few steps; outputs must agree within this fraction of their range.
QUANT_RANGE_FRACTION = 0.02


def quantized_tolerance(source: str | Path, reference: dict[str, np.ndarray]) -> float | None:
    """Absolute tolerance for a QDQ model's float outputs: one quantisation step of a
    dequantized output, or ``QUANT_RANGE_FRACTION`` of the output range, whichever is
    larger; None for a float model."""
    import onnx

    m = onnx.load(str(source), load_external_data=False)
    if not any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in m.graph.node):
        return None
    rng = max((float(np.max(np.abs(r))) for r in reference.values() if r.size), default=0.0)
    return max(_output_steps(source) + [QUANT_RANGE_FRACTION * rng, 1e-4]) * 1.001


def _output_steps(source: str | Path) -> list[float]:
    """Quantisation step (scale) of each graph output produced by DequantizeLinear."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(source))
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    producers = {o: n for n in m.graph.node for o in n.output}
    steps = []
    for out in m.graph.output:
        n = producers.get(out.name)
        if n is not None and n.op_type == "DequantizeLinear" and n.input[1] in inits:
            steps.append(float(np.max(inits[n.input[1]])))
    return steps
