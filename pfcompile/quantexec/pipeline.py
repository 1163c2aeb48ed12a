"""The Relax pipeline for the integer build path: TVM's CPU default pipeline
plus a simple schedule for the float leftovers (residual adds, pooling,
quantise/dequantise) that TVM otherwise runs as single-threaded scalar loops.

The leftover rule is deliberately small: parallelise the outermost spatial loop
of each top-level block and vectorise the innermost loop when the schedule
primitives accept it (they check legality, so a refusal just leaves the loop).
The integer kernels carry ``tirx.is_scheduled`` (the name TVM 0.27's passes read;
``tir.is_scheduled`` is ignored since 0.25) and are left alone.
"""

from __future__ import annotations

import tvm
from tvm import relax, s_tir, tirx

__all__ = ["int8_pipeline", "schedule_leftovers"]


def _schedule_func(func: tirx.PrimFunc) -> tirx.PrimFunc:
    sch = s_tir.Schedule(func)
    try:
        blocks = sch.get_child_blocks(sch.get_sblock("root"))
    except (s_tir.ScheduleError, ValueError, RuntimeError):
        return func
    for blk in blocks:
        loops = sch.get_loops(blk)
        if not loops:
            continue
        for fn, lp in ((sch.parallel, loops[0]), (sch.vectorize, loops[-1])):
            if fn is sch.vectorize and len(loops) == 1:
                break
            try:
                fn(lp)
            except s_tir.ScheduleError:
                continue  # the primitive found it illegal here: leave this loop as it is
    return sch.mod["main"].with_attr("tirx.is_scheduled", True)


@tvm.transform.module_pass(opt_level=0, name="pfcompile.ScheduleLeftovers")
def schedule_leftovers(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
    """Parallelise / vectorise every PrimFunc that has no schedule yet."""
    updates = {}
    for gv, func in mod.functions.items():
        if not isinstance(func, tirx.PrimFunc):
            continue
        if func.attrs is not None and func.attrs.get("tirx.is_scheduled", False):
            continue
        updates[gv] = _schedule_func(func)
    for gv, func in updates.items():
        mod[gv] = func
    return mod


def int8_pipeline(target: tvm.target.Target) -> tvm.transform.Pass:
    """CPU default pipeline with :func:`schedule_leftovers` after operator fusion."""
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    @tvm.transform.module_pass(opt_level=0, name="pfcompile.Int8Pipeline")
    def _pipeline(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        with target:
            seq = tvm.transform.Sequential(
                cpu.library_dispatch_passes(target) + cpu.legalize_passes(target)
                + [schedule_leftovers] + cpu.dataflow_lower_passes(target)
                + cpu.finalize_passes(target))
            return seq(mod)

    return _pipeline


_ = relax  # relax is imported for its registrations used by the CPU pipeline
