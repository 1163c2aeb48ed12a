"""The accelerator simulator as a runner (the client of :mod:`pfcompile.accel.serve`).

:class:`AccelRunner` uploads a program (``program.npz``, or an artifact folder holding
one) and the inputs over TVM RPC, calls the simulator device's
``pfcompile.accel.run`` ``settings.repeat`` times, downloads the outputs and returns a
:class:`~pfcompile.runner.base.RunnerResult` whose ``latencies_ms`` are simulated
accelerator ms + measured host-op ms per repeat, and whose ``details`` say which
numbers are which: ``accel_cycles``, ``accel_ms_simulated`` (cycle model),
``host_ms_measured`` (wall clock on the machine serving the simulator, per repeat),
``layer_cycles``, ``simulated: True``.
"""

from __future__ import annotations

import io
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from pfcompile.accel.serve import RUN_FUNC
from pfcompile.errors import PfcompileError
from pfcompile.runner.base import Paired, Runner, RunnerResult, resolve_artifact
from pfcompile.targets import MeasureSettings, Target

__all__ = ["AccelRunner", "accel_details"]


def accel_details(stats: dict) -> dict[str, Any]:
    """A run's simulated and measured parts, labelled."""
    host = [float(v) for v in stats["host_ms_measured"]]
    return {"simulated": True, "target": stats.get("target", ""),
            "accel_cycles": int(stats["accel_cycles"]),
            "accel_ms_simulated": float(stats["accel_ms_simulated"]),
            "host_ms_measured": host, "host_ms_measured_median": statistics.median(host),
            "layer_cycles": dict(stats.get("layer_cycles", {})),
            "label": "accelerator latency simulated (cycle model); host ops measured on "
                     "the machine serving the simulator"}


class AccelRunner(Runner):
    """The simulator device of an accelerator target: direct (``device="H:P"``) or via a
    tracker (``rpc="H:P"``, ``key``, default the target's ``rpc_key``)."""

    def __init__(self, target: Target, *, device: str | None = None, rpc: str | None = None,
                 key: str | None = None, connect_timeout_s: float = 30.0) -> None:
        self.target = target
        self.device, self.rpc = device, rpc
        self.key = key or target.rpc_key
        self.connect_timeout_s = connect_timeout_s

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.device if self.device else f"{self.key}@{self.rpc}"

    def _run(self, prog: Path, inputs: dict[str, np.ndarray],
             settings: MeasureSettings) -> tuple[dict, dict[str, np.ndarray]]:
        from pfcompile.device import connect

        sess = connect(rpc=self.rpc, key=self.key if self.rpc else None, device=self.device,
                       timeout_s=self.connect_timeout_s,
                       session_timeout_s=float(settings.timeout_s) + 30.0)
        with tempfile.TemporaryDirectory(prefix="pfaccel_") as tmp:
            in_path = Path(tmp) / "inputs.npz"
            np.savez(in_path, **inputs)
            sess.upload(str(prog), "program.npz")
            sess.upload(str(in_path), "inputs.npz")
        try:
            f = sess.get_function(RUN_FUNC)
        except Exception as exc:
            raise PfcompileError(f"the RPC server {self.name} is not an accelerator device "
                                 f"(no '{RUN_FUNC}'): {exc}") from exc
        stats = json.loads(str(f("program.npz", "inputs.npz", "outputs.npz",
                                 max(1, settings.repeat))))
        out_bytes = sess.download("outputs.npz")
        with np.load(io.BytesIO(bytes(out_bytes)), allow_pickle=False) as z:
            outs = {k: z[k] for k in z.files}
        return stats, outs

    def run(self, artifact: str | Path, inputs: dict[str, np.ndarray],
            settings: MeasureSettings | None = None, *,
            paired: Paired | None = None) -> RunnerResult:
        """Paired timing does not apply (simulated cycles do not drift): ``paired`` is
        ignored."""
        from pfcompile.device import call_with_deadline
        from pfcompile.errors import DeviceError
        from pfcompile.runner.rpc import _classify

        settings = settings or self.target.measure
        t0 = time.monotonic()
        try:
            prog = resolve_artifact(artifact).so_path
        except PfcompileError as exc:
            return RunnerResult.failure(str(exc), "artifact", self.name, 0.0, settings)

        def work() -> tuple:
            try:
                return ("ok", *self._run(prog, inputs, settings))
            except Exception as exc:  # noqa: BLE001 - a failed run is data
                return ("error", *_classify(exc, "run", self.name))

        try:
            outcome = call_with_deadline(work, self.connect_timeout_s + settings.timeout_s,
                                         f"run on {self.name}")
        except DeviceError as exc:
            return RunnerResult.failure(str(exc), "timeout", self.name,
                                        time.monotonic() - t0, settings)
        if outcome[0] == "error":
            return RunnerResult.failure(outcome[2], outcome[1], self.name,
                                        time.monotonic() - t0, settings)
        _, stats, outs = outcome
        d = accel_details(stats)
        lat = [d["accel_ms_simulated"] + h for h in d["host_ms_measured"]]
        return RunnerResult(lat, None, outs, self.name, "", time.monotonic() - t0, settings,
                            None, d)
