"""Kernel timers: PrimFuncs built into one library (:func:`pfcompile.compiler.build_primfuncs`)
and timed one by one on a runner (:meth:`pfcompile.runner.base.Runner.time_kernels`):
what ``pfcompile tune`` measures candidates with.

- :class:`KernelTimer`: on any runner;
- :class:`LocalKernelTimer`: this process, this CPU (host targets only);
- :class:`RPCKernelTimer`: a device over TVM RPC, direct or through a tracker.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from tvm import tirx

from pfcompile.codegen.kernels import arg_specs
from pfcompile.compiler import build_primfuncs, export
from pfcompile.errors import ConfigError
from pfcompile.runner.base import KernelCall, KernelTiming, Runner
from pfcompile.runner.rpc import InProcessRunner, RPCRunner
from pfcompile.targets import MeasureSettings

__all__ = ["KernelTimer", "LocalKernelTimer", "RPCKernelTimer", "make_timer"]


class KernelTimer:
    """Times a list of PrimFuncs on ``runner``: one library per batch (one upload),
    each function run once (its output kept) and timed with ``number`` x ``repeat``
    (``min_repeat_ms``); a batch that fails to build is retried one function at a time,
    so that one bad candidate fails alone."""

    def __init__(self, runner: Runner, number: int = 5, repeat: int = 3,
                 min_repeat_ms: int = 20, fetch_outputs: bool = True,
                 timeout_s: int = 600) -> None:
        self.runner = runner
        self.number, self.repeat, self.min_repeat_ms = number, repeat, min_repeat_ms
        self.fetch_outputs = fetch_outputs
        self.timeout_s = timeout_s

    def check(self, target: Any) -> None:
        """Raise ConfigError when this timer cannot run ``target``'s code."""

    def time(self, funcs: list[tirx.PrimFunc], target: Any) -> list[KernelTiming]:
        self.check(target)
        try:
            lib = build_primfuncs(funcs, target)
        except Exception as exc:  # noqa: BLE001 - a bad candidate as a value
            if len(funcs) == 1:
                return [KernelTiming(None, f"build: {type(exc).__name__}: {str(exc)[-200:]}")]
            return [self.time([f], target)[0] for f in funcs]   # isolate the failing one(s)
        settings = MeasureSettings(self.number, self.repeat, self.min_repeat_ms, self.timeout_s)
        calls = [KernelCall(functions=((f"k{i}", arg_specs(f)),)) for i, f in enumerate(funcs)]
        with tempfile.TemporaryDirectory(prefix="pfk_") as tmp:
            so = export(lib, target, Path(tmp) / "kernels.so")
            return self.runner.time_kernels(so, calls, settings,
                                            fetch_outputs=self.fetch_outputs).timings

    def close(self) -> None:
        self.runner.close()


class LocalKernelTimer(KernelTimer):
    """This process, this CPU (host targets only)."""

    def __init__(self, number: int = 5, repeat: int = 3, min_repeat_ms: int = 20) -> None:
        super().__init__(InProcessRunner(), number, repeat, min_repeat_ms)

    def check(self, target: Any) -> None:
        if target.cross_compiler:
            raise ConfigError(f"target '{target.name}' is cross-compiled: time its kernels over "
                              "RPC (--device HOST:PORT or --rpc TRACKER --key KEY)")


class RPCKernelTimer(KernelTimer):
    """A device over TVM RPC, direct (``device='H:P'``) or through a tracker
    (``rpc='H:P'``, ``key``). One library upload per batch of candidates."""

    def __init__(self, device: str | None = None, rpc: str | None = None, key: str | None = None,
                 number: int = 5, repeat: int = 3, min_repeat_ms: int = 20,
                 session_timeout_s: int = 600) -> None:
        if not device and not (rpc and key):
            raise ConfigError("RPC timing needs --device HOST:PORT or --rpc HOST:PORT --key KEY")
        super().__init__(RPCRunner(rpc=rpc, key=key, device=device), number, repeat,
                         min_repeat_ms, timeout_s=session_timeout_s)


def make_timer(target: Any, device: str | None = None, rpc: str | None = None,
               key: str | None = None) -> KernelTimer:
    """The timer for ``pfcompile tune``: over RPC with ``device``/``rpc``, else this
    process (settings capped at 5 runs x 3 repeats, 20 ms)."""
    m = target.measure
    kw = {"number": max(1, min(m.number, 5)), "repeat": max(1, min(m.repeat, 3)),
          "min_repeat_ms": min(m.min_repeat_ms, 20)}
    if device or rpc:
        return RPCKernelTimer(device=device, rpc=rpc, key=key or target.rpc_key, **kw)
    return LocalKernelTimer(**kw)
