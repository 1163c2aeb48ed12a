"""pfcompile's code generation: blocked layouts, schedule templates with
analytic or recorded parameters, measured refinement, per-kernel timing."""

from pfcompile.codegen.pipeline import KernelWorkload, build, kernel_workloads

__all__ = ["KernelWorkload", "build", "kernel_workloads"]
