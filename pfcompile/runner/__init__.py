"""Runners: the only code that talks to a device. Results are data.

MetaSchedule-style narrow roles (see :mod:`pfcompile.runner.base` for the protocol):

- :class:`RPCRunner`: a device via a tracker or direct, in replaceable steps;
- :class:`InProcessRunner`: the same steps on this process's CPU;
- :class:`LocalRunner`: the target's own device, started (and restarted) on demand;
- :class:`PoolRunner`: N sessions used at once (a single device is a pool of one);
- :class:`AccelRunner`: the accelerator simulator device;
- :class:`NullRunner`: no device, fixed timings; for search and scheduling tests;
- :mod:`pfcompile.runner.kernels`: kernel timers on any of them.
"""

from pfcompile.runner.accel import AccelRunner
from pfcompile.runner.base import (
    Artifact,
    KernelCall,
    KernelTimes,
    KernelTiming,
    NullRunner,
    Paired,
    Runner,
    RunnerResult,
    resolve_artifact,
)
from pfcompile.runner.pool import PoolRunner, PoolStatus, RunJob
from pfcompile.runner.rpc import InProcessRunner, LocalRunner, RPCRunner

__all__ = [
    "AccelRunner",
    "Artifact",
    "InProcessRunner",
    "KernelCall",
    "KernelTimes",
    "KernelTiming",
    "LocalRunner",
    "NullRunner",
    "Paired",
    "PoolRunner",
    "PoolStatus",
    "RPCRunner",
    "RunJob",
    "Runner",
    "RunnerResult",
    "resolve_artifact",
]
