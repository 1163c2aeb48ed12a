"""How a pfcompile library is called: the one place that knows its entry points.

A library whose weights are stored compactly (:mod:`pfcompile.storage`) has a
load-time step: ``main_transform_params()`` decodes them once into the layouts
the kernels read, and ``main_lifted(inputs..., params)`` runs the model on that
tuple. ``main(inputs...)`` also works on its own (it decodes on every call).
A library without compact weights has ``main`` only.

:func:`prepare` runs the load-time step (if any) on a ``relax.VirtualMachine``,
local or over RPC, and returns the :class:`Entry` to call; every runner in
pfcompile and the loader documented in the README go through it::

    lib = tvm.runtime.load_module("out/model.so")
    vm = relax.VirtualMachine(lib, tvm.cpu())
    entry = pfcompile.deploy.prepare(vm)
    y = vm[entry.name](*entry.args([x]))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["LIFTED_FUNC", "MAIN_FUNC", "TRANSFORM_FUNC", "Entry", "has_function", "load", "prepare"]

MAIN_FUNC = "main"
TRANSFORM_FUNC = "main_transform_params"
LIFTED_FUNC = "main_lifted"


@dataclass(frozen=True)
class Entry:
    """Call ``vm[name](*args(inputs))``; ``params`` (the decoded weights, on the device)
    follow the inputs. Also usable with ``vm.set_input(name, *args(...))`` and
    ``vm.time_evaluator(name, dev)(*args(...))``."""

    name: str
    params: tuple = ()

    def args(self, inputs: Sequence[Any]) -> list:
        return [*inputs, *self.params]


def has_function(vm: Any, name: str) -> bool:
    """Whether the VM's executable defines ``name`` (works over RPC)."""
    try:
        return bool(vm.module.implements_function(name))
    except Exception:  # noqa: BLE001 - an older runtime without the query: ask for it
        try:
            vm.module.get_function(name)
            return True
        except Exception:  # noqa: BLE001
            return False


def prepare(vm: Any) -> Entry:
    """Run the library's load-time step once, if it has one; the entry to call."""
    if not has_function(vm, TRANSFORM_FUNC):
        return Entry(MAIN_FUNC)
    return Entry(LIFTED_FUNC, (vm[TRANSFORM_FUNC](),))


def load(path: str | Path, dev: Any = None) -> tuple[Any, Entry]:
    """Load a library (a ``model.so`` or an artifact folder) in this process:
    ``(vm, entry)``."""
    import tvm
    from tvm import relax

    p = Path(path)
    so = p / "model.so" if p.is_dir() else p
    dev = dev if dev is not None else tvm.cpu()
    vm = relax.VirtualMachine(tvm.runtime.load_module(str(so)), dev)
    return vm, prepare(vm)
