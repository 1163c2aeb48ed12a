"""The entry point ``pfcompile tune`` calls: import a model, tune its kernels on a device
(code generation's :func:`pfcompile.codegen.tune` with a timer of the device layer)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pfcompile.codegen.tune import TuneSettings, WorkloadResult, tune
from pfcompile.errors import ConfigError
from pfcompile.frontend import import_model
from pfcompile.model import input_specs, parse_input_shapes
from pfcompile.runner.kernels import make_timer
from pfcompile.targets import Target, load_target

__all__ = ["tune_model"]


def tune_model(model: str | Path, target: str | Target, *, trials: int = 32,
               tuner: str = "pfcompile", device: str | None = None, rpc: str | None = None,
               key: str | None = None, records_dir: Path | None = None,
               input_shapes: list[str] | None = None, retune: bool = False,
               time_limit_s: float | None = None,
               log: Callable[[str], None] | None = None) -> list[WorkloadResult]:
    tgt = target if isinstance(target, Target) else load_target(target)
    from pfcompile.compiler import import_onnx

    proto = import_model(model, parse_input_shapes(input_shapes))
    mod = import_onnx(proto, input_specs(proto))
    if tuner == "metaschedule":
        from pfcompile.codegen.metaschedule import tune_metaschedule

        return tune_metaschedule(mod, tgt, trials=trials, records_dir=records_dir, log=log)
    if tuner != "pfcompile":
        raise ConfigError(f"--tuner must be 'pfcompile' or 'metaschedule' (got '{tuner}')")
    if tgt.cross_compiler and not (device or rpc):
        raise ConfigError(f"target '{tgt.name}' is cross-compiled: tune it over RPC "
                          "(--device HOST:PORT or --rpc TRACKER --key KEY)")
    timer = make_timer(tgt, device=device, rpc=rpc, key=key)
    try:
        return tune(mod, tgt, timer, settings=TuneSettings(trials=trials, retune=retune,
                                                        time_limit_s=time_limit_s),
                    records_dir=records_dir, log=log)
    finally:
        timer.close()
