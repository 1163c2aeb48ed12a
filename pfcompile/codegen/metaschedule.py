"""MetaSchedule as an alternative tuner, for comparison with pfcompile's templates.

It tunes the same fused kernels (pfcompile's blocked layout, unscheduled
PrimFuncs of the conv/dense kernels), configured to work on a small shared
machine: builder timeout 300 s (the default 30 s kills every build on 2 cores),
2 build workers, a local runner, a small evolutionary population. Its database lives in
``<records>/<target>/metaschedule/``; :func:`pfcompile.codegen.build` applies it
when given ``metaschedule_dir``. Host only (MetaSchedule's own RPC runner is not
wired here).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import tvm
import tvm_ffi
from tvm import tirx

from pfcompile.codegen.pipeline import fuse_to_tir
from pfcompile.codegen.records import default_records_dir
from pfcompile.errors import ConfigError, SearchError

__all__ = ["apply_database", "metaschedule_dir", "tune_metaschedule"]

OP_NAMES = ["conv2d", "matmul"]


def metaschedule_dir(records_dir: Path | None, target_name: str) -> Path:
    return Path(records_dir or default_records_dir()) / target_name / "metaschedule"


def _tasks_macs(mod: tvm.IRModule) -> dict[str, int]:
    from pfcompile.codegen.templates import match

    out = {}
    for gv, f in mod.functions.items():
        if isinstance(f, tirx.PrimFunc):
            _t, wl = match(f)
            if wl is not None:
                out[gv.name_hint] = wl
    return out


def tune_metaschedule(mod: tvm.IRModule, target: Any, *, trials: int,
                      records_dir: Path | None = None,
                      log: Callable[[str], None] | None = None,
                      max_workers: int = 2, builder_timeout_s: int = 300) -> list:
    """Tune the conv/dense kernels of ``mod`` with MetaSchedule (``trials`` in total)."""
    from tvm.s_tir import meta_schedule as ms

    from pfcompile.codegen.tune import WorkloadResult

    if target.cross_compiler:
        raise ConfigError(f"--tuner metaschedule runs on the host only (target '{target.name}' "
                          "is cross-compiled)")
    work_dir = metaschedule_dir(records_dir, target.name)
    work_dir.mkdir(parents=True, exist_ok=True)
    fused = fuse_to_tir(mod, target)
    tvm_target = target.tvm_target()
    wls = _tasks_macs(fused)
    n_tasks = sum(1 for n in wls if any(o in n for o in OP_NAMES)) or 1
    per_task = max(1, trials // n_tasks)
    say = log or (lambda _m: None)
    say(f"MetaSchedule: {trials} trials over ~{n_tasks} tasks, work dir {work_dir}")
    try:
        db = ms.relax_integration.tune_relax(
            mod=fused, params={}, target=tvm_target, work_dir=str(work_dir),
            max_trials_global=trials, max_trials_per_task=per_task, op_names=OP_NAMES,
            num_trials_per_iter=min(per_task, 16),
            builder=ms.builder.LocalBuilder(max_workers=max_workers, timeout_sec=builder_timeout_s),
            runner=ms.runner.LocalRunner(timeout_sec=120, evaluator_config=ms.runner.EvaluatorConfig(
                number=3, repeat=1, min_repeat_ms=10, enable_cpu_cache_flush=False)),
            # a smaller evolutionary search than the default (512 × 4 generations), so that
            # a short budget is not spent in the cost model's population on 2 cores
            strategy=ms.search_strategy.EvolutionarySearch(
                population_size=64, init_min_unmeasured=16, genetic_num_iters=2),
        )
    except Exception as exc:
        raise SearchError(f"MetaSchedule tuning failed: {type(exc).__name__}: {exc}") from exc
    results = []
    for rec in db.get_all_tuning_records():
        secs = [float(v) for v in rec.run_secs] if rec.run_secs else []
        if not secs:
            continue
        key = f"metaschedule:{tvm_ffi.structural_hash(rec.workload.mod) & 0xFFFFFFFF:08x}"
        results.append(WorkloadResult(key, "metaschedule", 1, 0, None, 1e3 * min(secs), {}, 1))
    # best per workload
    best: dict[str, Any] = {}
    for r in results:
        if r.key not in best or (r.best_ms or 1e9) < (best[r.key].best_ms or 1e9):
            best[r.key] = r
    return list(best.values())


def apply_database(mod: tvm.IRModule, work_dir: Path, target: Any) -> tvm.IRModule:
    """Replace the kernels MetaSchedule tuned by its best schedules (marked scheduled)."""
    from tvm import relax

    if not (Path(work_dir) / "database_tuning_record.json").exists():
        raise ConfigError(f"no MetaSchedule database in {work_dir}: run pfcompile tune "
                          "--tuner metaschedule first")
    with target.tvm_target():
        return relax.transform.MetaScheduleApplyDatabase(str(work_dir))(mod)
