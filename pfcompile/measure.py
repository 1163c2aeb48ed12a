"""Measure a compiled artifact on a device, and verify it against the reference.

``measure(DIR, target)`` runs ``DIR/model.so`` (an accelerator target:
``DIR/program.npz`` on the simulator) on a device through a runner
(:mod:`pfcompile.runner`; without ``--rpc``/``--device``, the target's own device is
started: a host server, the emulated arm64 server or the accelerator simulator) once on
a fixed random input (``data.random_inputs(specs, seed=0)``), compares every output with
the reference (:mod:`pfcompile.reference`) on ``DIR/source.onnx``, then times it.

:func:`verify` is the one output check in pfcompile (``measure``, the search's device
check and the accelerator's use it), with one tolerance rule, per output::

    max |device - reference| <= atol + rtol * max |reference|

with (rtol, atol) = (1e-3, 1e-4) for float32 (:data:`TOLERANCES`: 1e-2 for
float16/bfloat16; exact for integer outputs). The bound scales with the output's
magnitude, not each element's: float reassociation error grows with the size of the
sums, and a small element of a large output carries the same absolute error. A
quantized (QDQ) model's float outputs use one absolute bound instead
(:func:`quantized_tolerance`). A NaN or Inf in the device output where the reference has
none is never verified.

Latencies from an emulated device (``target.emulated``: qemu-user) are functional checks
only, never ARM latencies; the result says so in ``latency_note``. Accelerator
latencies are ``simulated`` (cycle model + measured host ops).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from pfcompile.data import random_inputs
from pfcompile.errors import ConfigError, DeviceError, MeasureError, ModelError
from pfcompile.model import TensorSpec
from pfcompile.reference import reference_outputs as _reference_outputs
from pfcompile.runner import (
    AccelRunner,
    LocalRunner,
    RPCRunner,
    Runner,
    RunnerResult,
    resolve_artifact,
)
from pfcompile.targets import MeasureSettings, Target, load_target

__all__ = [
    "TOLERANCES",
    "Verification",
    "append_jsonl",
    "artifact_target",
    "make_runner",
    "measure",
    "quantized_tolerance",
    "read_artifact",
    "reference_outputs",
    "tolerance_for",
    "verify",
]

#: (rtol of the output's largest magnitude, atol) per output dtype; integer outputs must
#: match exactly.
TOLERANCES: dict[str, tuple[float, float]] = {
    "float32": (1e-3, 1e-4),
    "float64": (1e-6, 1e-6),
    "float16": (1e-2, 1e-2),
    "bfloat16": (1e-2, 1e-2),
}

EMULATED_NOTE = ("emulated device (qemu-user): latencies are functional checks only, "
                 "not latencies of the real hardware")
SIMULATED_NOTE = ("simulated accelerator: the accelerator part is the cycle model's estimate, "
                  "the host part measured on the machine serving the simulator")


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


def artifact_target(artifact_dir: str | Path) -> str:
    """The name of the target an artifact was compiled for (its ``model.json``)."""
    meta, _, _ = read_artifact(artifact_dir)
    name = (meta.get("target") or {}).get("name")
    if not name:
        raise ModelError(f"{artifact_dir}/model.json does not say which target it was "
                         f"compiled for: pass --target")
    return str(name)


def reference_outputs(source: str | Path, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The reference outputs for *inputs* (:mod:`pfcompile.reference`: onnxruntime, a
    quantized model run as written), keyed by output name."""
    return _reference_outputs(Path(source), inputs)


def verify(outputs: dict[str, np.ndarray], reference: dict[str, np.ndarray],
           quant_atol: float | None = None) -> Verification:
    """Compare device outputs with the reference by name (by position when the names
    differ), with :data:`TOLERANCES` per dtype (see the module docstring); ``quant_atol``
    (quantized models, see :func:`quantized_tolerance`) replaces the float tolerance."""
    if len(outputs) != len(reference):
        return Verification(False, None, f"device gave {len(outputs)} outputs, the reference "
                                          f"{len(reference)}")
    pairs = ([(n, outputs[n], reference[n]) for n in reference] if set(outputs) == set(reference)
             else [(n, o, r) for (n, r), o in zip(reference.items(), outputs.values(),
                                                  strict=True)])
    worst = 0.0
    problems: list[str] = []
    for name, got, want in pairs:
        got, want = np.asarray(got), np.asarray(want)
        if got.shape != want.shape:
            problems.append(f"output '{name}': shape {got.shape} vs the reference {want.shape}")
            continue
        bad = ~np.isfinite(got) & np.isfinite(want) if got.dtype.kind == "f" else None
        if bad is not None and bad.any():
            n_nan = int(np.isnan(got).sum())
            problems.append(f"output '{name}': {n_nan} NaN / {int(bad.sum()) - n_nan} Inf "
                            f"values where the reference has finite ones")
            worst = float("nan")
            continue
        rtol, atol = tolerance_for(str(want.dtype))
        if quant_atol is not None and want.dtype.kind == "f":
            rtol, atol = 0.0, quant_atol
        err = np.abs(got.astype(np.float64) - want.astype(np.float64))
        m = float(np.nanmax(err)) if err.size else 0.0
        if not np.isnan(worst):
            worst = max(worst, m)
        scale = float(np.max(np.abs(want.astype(np.float64)))) if want.size else 0.0
        limit = atol + rtol * scale
        if m > limit:
            problems.append(f"output '{name}': max abs error {m:.3g} exceeds "
                            f"atol {atol:g} + rtol {rtol:g}·max|ref| = {limit:.3g}")
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
                device: str | None = None, threads: int | None = None) -> Runner:
    """The runner for ``--rpc``/``--device`` (the simulator device for an accelerator
    target); with neither, the target's own device started here (:class:`LocalRunner`:
    a host server, the emulated arm64 server, or the accelerator simulator)."""
    from pfcompile.device import parse_addr

    if rpc and device:
        raise ConfigError("give --rpc HOST:PORT --key K (a tracker) or --device HOST:PORT "
                          "(a server), not both")
    if rpc:
        parse_addr(rpc, "--rpc")
    if device:
        parse_addr(device, "--device")
    if target.is_accelerator and (rpc or device):
        return AccelRunner(target, rpc=rpc, key=key, device=device)
    if rpc:
        return RPCRunner(rpc=rpc, key=key or target.rpc_key, threads=threads)
    if device:
        return RPCRunner(device=device, threads=threads)
    return LocalRunner(target, threads=threads)


def measure(artifact_dir: str | Path, target: str | Target, rpc: str | None = None,
            key: str | None = None, device: str | None = None,
            settings: MeasureSettings | None = None, runner: Runner | None = None,
            seed: int = 0, threads: int | None = None) -> dict[str, Any]:
    """Run, verify and time a compiled artifact on a device. Returns::

        {"median_ms", "latencies_ms", "verified", "max_abs_err", "device", "target",
         "emulated", "simulated", "detail", "latency_note", "settings", "threads"}

    ``threads``: the device's thread pool for the run (default: the artifact's deployment
    threads, ``model.json``); ``"threads"`` in the result is the count the run had.

    plus, on an accelerator target, the simulated and measured parts
    (``accel_ms_simulated``, ``host_ms_measured`` ...) and the ``tolerance``.

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
    resolve_artifact(artifact_dir)   # the library is there, before any device starts
    settings = settings or tgt.measure
    inputs = random_inputs(specs, seed=seed)
    reference = reference_outputs(source, inputs)
    own = runner is None
    runner = runner or make_runner(tgt, rpc, key, device, threads)
    try:
        res: RunnerResult = runner.run(artifact_dir, inputs, settings)
    finally:
        if own:
            runner.close()
    if not res.ok:
        cls = DeviceError if res.error_kind in ("device", "timeout") else MeasureError
        hint = ""
        if res.error_kind == "device" and tgt.is_accelerator:
            hint = f"; start it with `pfcompile device serve --target {tgt.name}`"
        raise cls(f"measuring {artifact_dir} on {res.device or tgt.name}: {res.error}{hint}")
    quant_atol = quantized_tolerance(source, reference)
    if res.outputs is None:
        check = Verification(False, None, f"runner {res.device} returned no outputs")
    else:
        check = verify(res.outputs, reference, quant_atol)
    out = {
        "median_ms": res.median_ms,
        "latencies_ms": res.latencies_ms,
        "verified": check.verified,
        "max_abs_err": check.max_abs_err,
        "device": res.device,
        "target": tgt.name,
        "emulated": tgt.emulated,
        "simulated": tgt.simulated,
        "detail": check.detail,
        "latency_note": (EMULATED_NOTE if tgt.emulated else
                         SIMULATED_NOTE if tgt.simulated else ""),
        "settings": {"number": settings.number, "repeat": settings.repeat,
                     "min_repeat_ms": settings.min_repeat_ms, "timeout_s": settings.timeout_s},
        "threads": res.threads,
        "deployment_threads": meta.get("threads"),
    }
    if tgt.simulated:
        out.update({k: v for k, v in res.details.items() if k != "simulated"})
        out["tolerance"] = quant_atol if quant_atol is not None else TOLERANCES["float32"][1]
    return out


#: quantized models: integer kernels round where onnxruntime's float fake-quant rounds
#: differently (ties, requantisation order), and a one-step flip early can move a float
#: output by a few steps; outputs must agree within this fraction of their range.
QUANT_RANGE_FRACTION = 0.02


def quantized_tolerance(source: str | Path | onnx.ModelProto,
                        reference: dict[str, np.ndarray]) -> float | None:
    """Absolute tolerance for a QDQ model's float outputs: one quantisation step of a
    dequantized output, or ``QUANT_RANGE_FRACTION`` of the output range, whichever is
    larger; None for a float model. ``source``: the model or its path."""
    m = source if isinstance(source, onnx.ModelProto) else onnx.load(str(source))
    if not any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in m.graph.node):
        return None
    rng = max((float(np.max(np.abs(r))) for r in reference.values() if r.size), default=0.0)
    return max(_output_steps(m) + [QUANT_RANGE_FRACTION * rng, 1e-4]) * 1.001


def _output_steps(m: onnx.ModelProto) -> list[float]:
    """Quantisation step (scale) of each graph output produced by DequantizeLinear."""
    from onnx import numpy_helper

    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    producers = {o: n for n in m.graph.node for o in n.output}
    steps = []
    for out in m.graph.output:
        n = producers.get(out.name)
        if n is not None and n.op_type == "DequantizeLinear" and n.input[1] in inits:
            steps.append(float(np.max(inits[n.input[1]])))
    return steps
