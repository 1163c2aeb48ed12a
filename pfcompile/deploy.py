"""How a pfcompile library is called: the one place that knows its entry points.

A library whose weights are stored compactly (:mod:`pfcompile.storage`) has a
load-time step: ``main_transform_params()`` decodes them once into the layouts
the kernels read, and ``main_lifted(inputs..., params)`` runs the model on that
tuple. ``main(inputs...)`` also works on its own (it decodes on every call).
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
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["LIFTED_FUNC", "MAIN_FUNC", "TRANSFORM_FUNC", "Deployed", "has_function", "load",
           "prepare"]

MAIN_FUNC = "main"
TRANSFORM_FUNC = "main_transform_params"
LIFTED_FUNC = "main_lifted"


@dataclass(frozen=True)
class Deployed:
    """A loaded library ready to run: ``vm[name](*inputs, *params)``. ``params`` holds the
    decoded weights (one tuple, on the device) when the library has a load-time step."""

    vm: Any
    name: str = MAIN_FUNC
    params: tuple = ()

    def args(self, inputs: Sequence[Any]) -> list:
        return [*inputs, *self.params]

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


def load(path: str | Path, dev: Any = None) -> Deployed:
    """Load a library (a ``model.so`` or an artifact folder) in this process."""
    import tvm
    from tvm import relax

    p = Path(path)
    so = p / "model.so" if p.is_dir() else p
    dev = dev if dev is not None else tvm.cpu()
    return prepare(relax.VirtualMachine(tvm.runtime.load_module(str(so)), dev))
