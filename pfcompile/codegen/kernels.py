"""Per-kernel timing: build PrimFuncs on their own (many per library, one
upload) and time each with ``time_evaluator`` locally or over TVM RPC.

A failed build or run is a value (``None`` latency with an error string), never
an exception that kills a tuning run.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tvm
from tvm import tirx

from pfcompile.errors import ConfigError, DeviceError

__all__ = [
    "KernelTimer",
    "KernelTiming",
    "LocalKernelTimer",
    "RPCKernelTimer",
    "make_timer",
    "time_kernels",
]


@dataclass(frozen=True)
class KernelTiming:
    ms: float | None            # median over repeats; None when it failed
    error: str = ""
    output: Any = field(default=None, compare=False, repr=False)  # last argument after a run


def _shape(p) -> list[int]:
    return [int(v) for v in p.shape]


def _args(func: tirx.PrimFunc, dev: Any, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    out = []
    for p in func.params:
        arr = rng.standard_normal(_shape(p)).astype(str(p.dtype)) if "float" in str(p.dtype) \
            else np.zeros(_shape(p), dtype=str(p.dtype))
        out.append(tvm.runtime.tensor(arr, dev))
    return out


def _library(funcs: list[tirx.PrimFunc], target: Any):
    mod = tvm.IRModule({f"k{i}": f.with_attr("global_symbol", f"k{i}") for i, f in enumerate(funcs)})
    return tvm.compile(mod, target=target.tvm_target())


class KernelTimer:
    """Times a list of PrimFuncs; returns one KernelTiming per function."""

    number: int = 5
    repeat: int = 3
    min_repeat_ms: int = 20
    fetch_outputs: bool = True   # bring each kernel's output back (the tuner checks it)

    def time(self, funcs: list[tirx.PrimFunc], target: Any) -> list[KernelTiming]:
        try:
            lib = _library(funcs, target)
        except Exception as exc:  # noqa: BLE001 - a bad candidate as a value
            if len(funcs) == 1:
                return [KernelTiming(None, f"build: {type(exc).__name__}: {str(exc)[-200:]}")]
            # isolate the failing one(s)
            return [self.time([f], target)[0] for f in funcs]
        return self._run(lib, funcs, target)

    def _run(self, lib: Any, funcs: list[tirx.PrimFunc], target: Any) -> list[KernelTiming]:
        raise NotImplementedError

    def _eval(self, mod: Any, dev: Any, funcs: list[tirx.PrimFunc]) -> list[KernelTiming]:
        out = []
        for i, f in enumerate(funcs):
            try:
                args = _args(f, dev)
                mod[f"k{i}"](*args)
                result = args[-1].numpy() if self.fetch_outputs else None
                fe = mod.time_evaluator(f"k{i}", dev, number=self.number, repeat=self.repeat,
                                        min_repeat_ms=self.min_repeat_ms)
                res = fe(*args)
                out.append(KernelTiming(float(np.median(res.results)) * 1e3, "", result))
            except Exception as exc:  # noqa: BLE001
                out.append(KernelTiming(None, f"run: {type(exc).__name__}: {str(exc)[-200:]}"))
        return out

    def close(self) -> None:
        return None


class LocalKernelTimer(KernelTimer):
    """This process, this CPU (host targets only)."""

    def __init__(self, number: int = 5, repeat: int = 3, min_repeat_ms: int = 20) -> None:
        self.number, self.repeat, self.min_repeat_ms = number, repeat, min_repeat_ms

    def _run(self, lib: Any, funcs: list[tirx.PrimFunc], target: Any) -> list[KernelTiming]:
        if target.cross_compiler:
            raise ConfigError(f"target '{target.name}' is cross-compiled: time its kernels over "
                              "RPC (--device HOST:PORT or --rpc TRACKER --key KEY)")
        return self._eval(lib.mod, tvm.cpu(), funcs)


class RPCKernelTimer(KernelTimer):
    """A device over TVM RPC, direct (``device='H:P'``) or through a tracker
    (``rpc='H:P'``, ``key``). One library upload per batch of candidates."""

    def __init__(self, device: str | None = None, rpc: str | None = None, key: str | None = None,
                 number: int = 5, repeat: int = 3, min_repeat_ms: int = 20,
                 session_timeout_s: int = 600) -> None:
        if not device and not (rpc and key):
            raise ConfigError("RPC timing needs --device HOST:PORT or --rpc HOST:PORT --key KEY")
        self.device, self.rpc, self.key = device, rpc, key
        self.number, self.repeat, self.min_repeat_ms = number, repeat, min_repeat_ms
        self.session_timeout_s = session_timeout_s
        self._sess = None

    def _session(self):
        if self._sess is not None:
            return self._sess
        from tvm import rpc

        addr = self.device or self.rpc
        host, _, port = str(addr).rpartition(":")
        try:
            if self.device:
                self._sess = rpc.connect(host, int(port), session_timeout=self.session_timeout_s)
            else:
                tr = rpc.connect_tracker(host, int(port))
                self._sess = tr.request(self.key, session_timeout=self.session_timeout_s)
        except Exception as exc:
            raise DeviceError(f"cannot reach RPC {'device' if self.device else 'tracker'} "
                              f"{addr}{'' if self.device else f' (key {self.key})'}: {exc}") from exc
        return self._sess

    def _run(self, lib: Any, funcs: list[tirx.PrimFunc], target: Any) -> list[KernelTiming]:
        sess = self._session()
        with tempfile.TemporaryDirectory() as tmp:
            so = Path(tmp) / f"pfk_{time.time_ns()}.so"
            if target.cross_compiler:
                from tvm.support import cc

                lib.export_library(str(so), fcompile=cc.cross_compiler(target.cross_compiler))
            else:
                lib.export_library(str(so))
            sess.upload(str(so))
            rmod = sess.load_module(so.name)
        return self._eval(rmod, sess.cpu(), funcs)

    def close(self) -> None:
        self._sess = None


def make_timer(target: Any, device: str | None = None, rpc: str | None = None,
               key: str | None = None) -> KernelTimer:
    m = target.measure
    kw = {"number": max(1, min(m.number, 5)), "repeat": max(1, min(m.repeat, 3)),
          "min_repeat_ms": min(m.min_repeat_ms, 20)}
    if device or rpc:
        return RPCKernelTimer(device=device, rpc=rpc, key=key or target.rpc_key, **kw)
    return LocalKernelTimer(**kw)


def time_kernels(mod: tvm.IRModule, target: Any, timer: KernelTimer | None = None, *,
                 records_dir: Path | None = None) -> dict[str, KernelTiming]:
    """Each fused kernel of a Relax module, scheduled as ``build`` would, timed on
    its own: ``{primfunc name: KernelTiming}``."""
    from pfcompile.codegen.pipeline import fuse_to_tir, schedule_module
    from pfcompile.codegen.records import RecordDB

    timer = timer or make_timer(target)
    db = RecordDB.for_target(records_dir, target.name)
    sched = schedule_module(fuse_to_tir(mod, target, db), target, db)
    names, funcs = [], []
    for gv, f in sched.functions.items():
        if isinstance(f, tirx.PrimFunc):
            names.append(gv.name_hint)
            funcs.append(f)
    return dict(zip(names, timer.time(funcs, target), strict=True))
