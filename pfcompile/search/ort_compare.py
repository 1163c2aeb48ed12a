"""The user's alternative: the original model in onnxruntime on the same machine, with
the same thread count as the compiled model's device, timed in its own process.

``pfcompile run`` on a host target reports ``onnxruntime`` (this latency) and
``speedup_vs_onnxruntime`` beside its own speedup: a compressed model that beats the
original compiled by pfcompile can still be slower than the original in onnxruntime.

Protocol: :class:`OrtTimer` starts one worker process (this Python, ``-c`` with the
script below: onnxruntime and numpy only) that loads the model once — a default
session (every graph optimization on, what a user gets), ``intra_op_num_threads`` =
the device's TVM threads, ``inter_op_num_threads`` = 1, sequential execution — and
feeds it one fixed random input. Each :meth:`OrtTimer.measure` is one round: at least
``runs`` calls and ``min_ms`` of calls, after 3 warm-up calls; the answer is the median
call in ms. :func:`pfcompile.search.api.remeasure` calls it between its rounds of the
compiled models, so drift on a shared machine hits both alike. ``session.run`` includes
copying the numpy input in and the output out (tens of microseconds at 32x32); the TVM
side (``time_evaluator``) times the call on inputs already on the device.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Self

import onnx

from pfcompile.errors import DeviceError

__all__ = ["OrtTimer"]

_WORKER = r"""
import json, sys, time
import numpy as np
import onnxruntime as ort
path, threads = sys.argv[1], int(sys.argv[2])
so = ort.SessionOptions()
so.intra_op_num_threads = threads
so.inter_op_num_threads = 1
so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
so.log_severity_level = 3
s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
types = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
         "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8,
         "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_}
rng = np.random.default_rng(0)
feed = {}
for i in s.get_inputs():
    shape = [d if isinstance(d, int) and d > 0 else 1 for d in i.shape]
    dt = types.get(i.type, np.float32)
    x = rng.standard_normal(shape) if np.issubdtype(dt, np.floating) else rng.integers(0, 2, shape)
    feed[i.name] = x.astype(dt)
for _ in range(3):
    s.run(None, feed)
print(json.dumps({"ready": True, "version": ort.__version__}), flush=True)
for line in sys.stdin:
    runs, min_ms = (float(v) for v in line.split())
    times = []
    t_end = time.perf_counter() + min_ms / 1e3
    while len(times) < runs or time.perf_counter() < t_end:
        t0 = time.perf_counter()
        s.run(None, feed)
        times.append((time.perf_counter() - t0) * 1e3)
    print(json.dumps({"ms": float(np.median(times)), "calls": len(times)}), flush=True)
"""


class OrtTimer:
    """One onnxruntime worker process for ``model``; :meth:`measure` times a round."""

    def __init__(self, model: onnx.ModelProto | str | Path, threads: int, work_dir: str | Path,
                 runs: int = 10, min_ms: float = 50.0, timeout_s: float = 120.0) -> None:
        work = Path(work_dir)
        work.mkdir(parents=True, exist_ok=True)
        if isinstance(model, onnx.ModelProto):
            path = work / "original.onnx"
            onnx.save(model, str(path))
        else:
            path = Path(model)
        self.threads, self.runs, self.min_ms, self.timeout_s = int(threads), runs, min_ms, timeout_s
        self.calls: list[int] = []
        self.log = work / "onnxruntime_worker.log"
        with open(self.log, "w") as err:
            self.proc = subprocess.Popen([sys.executable, "-c", _WORKER, str(path), str(self.threads)],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                                         text=True)
        hello = self._read()
        self.version = str(hello.get("version"))

    def _read(self) -> dict:
        import select

        ready, _, _ = select.select([self.proc.stdout], [], [], self.timeout_s)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            self.close()
            err = self.log.read_text()[-600:].strip() if self.log.exists() else ""
            raise DeviceError(f"the onnxruntime timing process gave no answer within "
                              f"{self.timeout_s:.0f} s{': ' + err if err else ''}")
        return json.loads(line)

    def measure(self) -> float:
        """One round: the median call in ms."""
        if self.proc.poll() is not None:
            raise DeviceError("the onnxruntime timing process has exited")
        self.proc.stdin.write(f"{self.runs} {self.min_ms}\n")
        self.proc.stdin.flush()
        r = self._read()
        self.calls.append(int(r["calls"]))
        return float(r["ms"])

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
