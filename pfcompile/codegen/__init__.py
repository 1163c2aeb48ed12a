"""pfcompile's code generation: blocked layouts, schedule templates with
analytic or recorded parameters, measured refinement, per-kernel timing.

- :func:`build` — Relax module → TVM Executable (what the compiler calls).
- :func:`kernel_workloads` — the fused kernels with family, dims, MACs, layout
  and the template params ``build`` would use (cost-model features).
- :func:`time_kernels` — each fused kernel built and timed on its own.
- :func:`tune` — measured refinement, records in the cache's ``records/<target>/`` (:mod:`pfcompile.paths`).
"""

from pfcompile.codegen.kernels import (
    KernelTiming,
    LocalKernelTimer,
    RPCKernelTimer,
    make_timer,
    time_kernels,
)
from pfcompile.codegen.pipeline import KernelWorkload, build, kernel_workloads
from pfcompile.codegen.tune import TuneSettings, WorkloadResult, tune

__all__ = [
    "KernelTiming",
    "KernelWorkload",
    "LocalKernelTimer",
    "RPCKernelTimer",
    "TuneSettings",
    "WorkloadResult",
    "build",
    "kernel_workloads",
    "make_timer",
    "time_kernels",
    "tune",
]
