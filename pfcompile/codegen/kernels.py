"""Per-kernel timing as code generation sees it: what a timing is, what a timer does,
and the scheduled kernels of a module, each to be built and timed on its own.

The timers themselves touch a device and live in the device layer
(:mod:`pfcompile.runner.kernels`: in this process or over TVM RPC). A failed build
or run is a value (``None`` latency with an error string), never an exception that
kills a tuning run.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import tvm
from tvm import tirx

if TYPE_CHECKING:  # the timing itself is the device layer's data
    from pfcompile.runner.base import KernelTiming

__all__ = ["KernelTimer", "arg_specs", "scheduled_primfuncs", "time_kernels"]


class KernelTimer(Protocol):
    """Times a list of PrimFuncs built for ``target``; one timing per function (``ms``,
    ``error``, and the function's last argument, its output, after a run: see
    :class:`pfcompile.runner.base.KernelTiming`)."""

    def time(self, funcs: list[tirx.PrimFunc], target: Any) -> list[KernelTiming]: ...

    def close(self) -> None: ...


def arg_specs(func: tirx.PrimFunc) -> tuple[tuple[tuple[int, ...], str], ...]:
    """``(shape, dtype)`` of each parameter of ``func``: what a runner makes its random
    (float) or zero (integer) arguments from."""
    return tuple((tuple(int(v) for v in p.shape), str(p.dtype)) for p in func.params)


def scheduled_primfuncs(mod: tvm.IRModule, target: Any,
                        records_dir: Path | None = None) -> dict[str, tirx.PrimFunc]:
    """Each fused kernel of a Relax module, scheduled as ``build`` would:
    ``{primfunc name: PrimFunc}``."""
    from pfcompile.codegen.pipeline import fuse_to_tir, schedule_module
    from pfcompile.codegen.records import RecordDB

    db = RecordDB.for_target(records_dir, target.name)
    sched = schedule_module(fuse_to_tir(mod, target, db), target, db)
    return {gv.name_hint: f for gv, f in sched.functions.items() if isinstance(f, tirx.PrimFunc)}


def time_kernels(mod: tvm.IRModule, target: Any, timer: KernelTimer, *,
                 records_dir: Path | None = None) -> dict[str, KernelTiming]:
    """Each fused kernel of a Relax module, scheduled as ``build`` would, timed on
    its own by ``timer``: ``{primfunc name: KernelTiming}``."""
    funcs = scheduled_primfuncs(mod, target, records_dir)
    return dict(zip(funcs, timer.time(list(funcs.values()), target), strict=True))
