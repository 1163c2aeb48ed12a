"""How a pfcompile library is called: the one place that knows its entry points.

A library whose weights are stored compactly (:mod:`pfcompile.storage`) has a
load-time step: ``main_transform_params()`` decodes them once into the layouts
the kernels read and returns ``params`` (the model with those weights bound, a VM
closure), and ``main_lifted(inputs..., params)`` runs it on the inputs. ``main(inputs...)`` also works on its own (it decodes on every call).
A library without compact weights has ``main`` only.

:func:`prepare` runs the load-time step (if any) on a ``relax.VirtualMachine``,
local or over RPC, and returns the :class:`Deployed` model to call; every
runner in pfcompile and the loader documented in the README go through it::

    import tvm
    from tvm import relax
    from pfcompile.deploy import prepare

    vm = relax.VirtualMachine(tvm.runtime.load_module("out/model.so"), tvm.cpu())
    model = prepare(vm)            # once, at load
    y = model(tvm.runtime.tensor(x))

Without pfcompile installed, the same in plain TVM::

    params = vm["main_transform_params"]()   # if the library has it
    y = vm["main_lifted"](x, params)         # else: vm["main"](x)

Threads. A library runs on TVM's thread pool, which TVM sizes once, at its first
use, to ``TVM_NUM_THREADS`` or else to half the logical CPUs it sees when it
detects hyper-threads (one thread on a 2-vCPU VM); ``runtime.config_threadpool``
can later choose any count up to that size, never more. A compiled artifact
records its deployment thread count in ``model.json`` (``"threads"``: the target's
``num-cores``), and every pfcompile runner sets the pool to it (or to
``--threads``) before timing: :func:`set_threads` in this process or on a
remote session, :func:`load` here. In plain TVM: start the process (or the RPC
server) with ``TVM_NUM_THREADS=N``, or call
``tvm.get_global_func("runtime.config_threadpool")(1, N)`` on a device whose
default pool already has N threads.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["LIFTED_FUNC", "MAIN_FUNC", "MODEL_FUNC", "THREADS_ENV", "TRANSFORM_FUNC", "Deployed",
           "artifact_threads", "deployment_threads", "has_function", "load", "meta_threads",
           "prepare", "set_threads"]

MAIN_FUNC = "main"
TRANSFORM_FUNC = "main_transform_params"
LIFTED_FUNC = "main_lifted"
#: the model on the decoded weights, ``main_model(inputs..., w...)``; internal: its
#: parameters are not checked, it is reached through ``main_lifted``
MODEL_FUNC = "main_model"
THREADS_ENV = "TVM_NUM_THREADS"
#: ``runtime.config_threadpool``'s affinity mode: TVM's default (kBig: the fastest cores,
#: all of them on a homogeneous CPU)
_AFFINITY_BIG = 1


@dataclass(frozen=True)
class Deployed:
    """A loaded library ready to run: ``vm[name](*inputs, *params)``. ``params`` holds the
    decoded weights (one object on the device: the model with its weights bound) when the
    library has a load-time step."""

    vm: Any
    name: str = MAIN_FUNC
    params: tuple = ()

    def args(self, inputs: Sequence[Any]) -> list:
        return [*(_as_tensor(x) for x in inputs), *self.params]

    def __call__(self, *inputs: Any) -> Any:
        return self.vm[self.name](*self.args(inputs))

    def set_input(self, *inputs: Any) -> None:
        self.vm.set_input(self.name, *self.args(inputs))

    def invoke_stateful(self) -> None:
        self.vm.invoke_stateful(self.name)

    def get_outputs(self) -> Any:
        return self.vm.get_outputs(self.name)

    def time_evaluator(self, dev: Any, **kwargs: Any) -> Callable[..., Any]:
        """``f(*inputs) -> BenchmarkResult`` (``kwargs``: ``number``, ``repeat``, ...)."""
        f = self.vm.time_evaluator(self.name, dev, **kwargs)
        return lambda *inputs: f(*self.args(inputs))

    def stateful_timer(self, dev: Any, **kwargs: Any) -> Callable[[], Any]:
        """``f() -> BenchmarkResult`` timing the inputs given to :meth:`set_input`."""
        f = self.vm.time_evaluator("invoke_stateful", dev, **kwargs)
        return lambda: f(self.name)


def _as_tensor(x: Any) -> Any:
    """A numpy input as a TVM CPU tensor (an aligned copy); anything else as given.

    Handed to the VM as it is, a numpy array reaches the kernels through DLPack without a
    copy, at whatever address numpy chose, while TVM's kernels assume 64-byte aligned
    buffers: an integer library segfaulted on its first call that way."""
    if isinstance(x, np.ndarray):
        import tvm

        return tvm.runtime.tensor(np.ascontiguousarray(x))
    return x


def has_function(vm: Any, name: str) -> bool:
    """Whether the VM's executable defines ``name`` (works over RPC)."""
    try:
        return bool(vm.module.implements_function(name))
    except Exception:  # noqa: BLE001 - a runtime without the query: ask for the function
        try:
            vm.module.get_function(name)
            return True
        except Exception:  # noqa: BLE001
            return False


def prepare(vm: Any) -> Deployed:
    """Run the library's load-time step once, if it has one."""
    if not has_function(vm, TRANSFORM_FUNC):
        return Deployed(vm)
    return Deployed(vm, LIFTED_FUNC, (vm[TRANSFORM_FUNC](),))


def load(path: str | Path, dev: Any = None, threads: int | None = None) -> Deployed:
    """Load a library (a ``model.so`` or an artifact folder) in this process, with the
    thread pool set to ``threads``, else to the artifact's deployment threads (its
    ``model.json``), else left as it is."""
    import tvm
    from tvm import relax

    p = Path(path)
    so = p / "model.so" if p.is_dir() else p
    n = threads or artifact_threads(so.parent)
    if n:
        set_threads(n)
    dev = dev if dev is not None else tvm.cpu()
    return prepare(relax.VirtualMachine(tvm.runtime.load_module(str(so)), dev))


def deployment_threads(target: Any) -> int:
    """The thread count a library for ``target`` runs with: its ``num-cores`` (``"auto"``:
    this machine's CPUs). An emulated target (qemu-user on this machine) gets no more
    threads than this machine has CPUs; its latencies are functional checks anyway."""
    cores = (getattr(target, "tvm", None) or {}).get("num-cores", 1)
    n = (os.cpu_count() or 1) if cores in (None, "auto") else int(cores)
    if getattr(target, "emulated", False):
        n = min(n, os.cpu_count() or 1)
    return max(1, n)


def artifact_threads(artifact_dir: str | Path) -> int | None:
    """``threads`` of an artifact's ``model.json`` (None: not recorded, or no file)."""
    try:
        meta = json.loads((Path(artifact_dir) / "model.json").read_text())
    except (OSError, ValueError):
        return None
    return meta_threads(meta)


def meta_threads(meta: Any) -> int | None:
    """The deployment thread count in a parsed ``model.json`` (None when not recorded)."""
    n = meta.get("threads") if isinstance(meta, dict) else None
    return int(n) if isinstance(n, int | float) and n >= 1 else None


def set_threads(n: int, sess: Any = None) -> int:
    """Set the thread pool that runs models to ``n`` threads: this process's (``sess``
    None) or an RPC session's. Returns the count now in effect, which is less than ``n``
    when the pool was sized smaller before (see the module docstring: this process's pool
    is sized at its first use, so call this before running anything; a server must be
    started with ``TVM_NUM_THREADS`` >= n, as :func:`pfcompile.device.serve` does)."""
    import tvm

    n = max(1, int(n))
    if sess is None:
        cur = os.environ.get(THREADS_ENV)
        if not cur or not cur.isdigit() or int(cur) < n:
            os.environ[THREADS_ENV] = str(n)   # read when the pool is first made
        config = tvm.get_global_func("runtime.config_threadpool")
        count = tvm.get_global_func("runtime.NumThreads")
    else:
        config = sess.get_function("runtime.config_threadpool")
        count = sess.get_function("runtime.NumThreads")
    config(_AFFINITY_BIG, n)
    return int(count())
