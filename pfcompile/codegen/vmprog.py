"""Fewer VM instructions in a lowered Relax module (the bytecode ``tvm.compile`` writes).

The VM program is part of a library's weight blob (``__tvm_ffi__library_bin``,
:mod:`pfcompile.artifact_size`): every instruction costs 8 bytes of offset table, 32
bytes of opcode, destination, callee and argument count, and 8 bytes an argument
(docs/storage.md, "The VM program"). These rewrites run on the module after TVM's
lowering (``vm_finalize_passes``), where each binding is one instruction, and change no
kernel and no output:

- :func:`dedup_alloc_tensors`: ``StaticPlanBlockMemory`` reuses a storage for many
  intermediate tensors and ``LowerAllocTensor`` emits one ``vm.builtin.alloc_tensor`` per
  use, the same storage, offset, shape and dtype again and again (ResNet-20: 42
  instructions, 20 distinct). The repeats become aliases of the first (a register copy at
  code generation: no instruction). The tensors are the same memory with the same shape;
  nothing in a static-shape VM program depends on their object identity (no
  ``KillAfterLastUse``, :func:`pfcompile.codegen.pipeline.vm_finalize_passes`).
- :func:`drop_param_checks`: ``vm.builtin.check_tensor_info`` / ``match_shape`` of the
  parameters of a function whose callers check them (attribute :data:`UNCHECKED_PARAMS`):
  in a library with a load-time step (:mod:`pfcompile.storage`), ``main`` passes its inputs
  unchanged to ``main_lifted``, which checks them, and ``main_model`` is reached only
  through ``main_lifted`` (checked inputs) with the weights ``main_transform_params``
  decoded. A wrong input still raises, naming ``main_lifted``.
"""

from __future__ import annotations

import tvm
from tvm import relax

__all__ = ["UNCHECKED_PARAMS", "UNCHECKED_RESULT", "dedup_alloc_tensors", "drop_param_checks", "shrink_vm_program",
           "shrink_vm_program_pass"]

#: function attribute: the function's callers check its parameters
#: (:func:`drop_param_checks`; set by :func:`pfcompile.storage.pack_weights`)
UNCHECKED_PARAMS = "pfcompile.unchecked_params"
#: function attribute: the function's result needs no check against its declared type
#: (it comes from a function that checks its own)
UNCHECKED_RESULT = "pfcompile.unchecked_result"

_CHECKS = ("vm.builtin.check_tensor_info", "vm.builtin.match_shape")
#: ``vm.builtin.match_shape``'s code for "this dimension must equal the immediate that
#: follows" (TVM's ``MatchShapeCode::kAssertEqualToImm``)
_ASSERT_EQUAL_TO_IMM = 0


def _rebuild(func: relax.Function, blocks: list) -> relax.Function:
    body = relax.SeqExpr(blocks, func.body.body)
    return relax.Function(func.params, body, func.ret_ty, func.is_pure, func.attrs, func.span)


def _flat(func: relax.Function) -> bool:
    return isinstance(func.body, relax.SeqExpr)


def dedup_alloc_tensors(func: relax.Function) -> relax.Function:
    """``func`` with each repeated ``R.vm.alloc_tensor(storage, offset, shape, dtype, dev)``
    of its top-level bindings bound to the first such tensor instead."""
    if not _flat(func):
        return func
    op = tvm.ir.Op.get("relax.vm.alloc_tensor")
    first: dict = {}
    blocks, changed = [], False
    for block in func.body.blocks:
        new = []
        for b in block.bindings:
            v = b.value
            if (isinstance(b, relax.VarBinding) and isinstance(v, relax.Call) and v.op.same_as(op)
                    and isinstance(v.args[0], relax.Var)):
                key = (v.args[0], tuple(str(a) for a in v.args[1:]), str(b.var.ty))
                if key in first:
                    b = relax.VarBinding(b.var, first[key])
                    changed = True
                else:
                    first[key] = b.var
            new.append(b)
        blocks.append(type(block)(new))
    return _rebuild(func, blocks) if changed else func


def _static_check(call: relax.Call) -> bool:
    """A ``check_tensor_info``, or a ``match_shape`` that only compares with immediates."""
    name = call.op.global_symbol
    if name == "vm.builtin.check_tensor_info":
        return True
    # match_shape(value, heap, ndim, (code, value) * ndim, err)
    args = call.args
    if len(args) < 4 or not isinstance(args[2], tvm.tirx.IntImm):
        return False
    ndim = int(args[2].value)
    codes = args[3:3 + 2 * ndim:2]
    return len(args) == 4 + 2 * ndim and all(
        isinstance(c, tvm.tirx.IntImm) and int(c.value) == _ASSERT_EQUAL_TO_IMM for c in codes)


def drop_param_checks(func: relax.Function) -> relax.Function:
    """``func`` without the checks TVM emits for its parameters, when it has the attribute
    :data:`UNCHECKED_PARAMS` (its caller checked them); only checks against static shapes
    and dtypes are dropped (a ``match_shape`` that binds a symbolic dimension stays)."""
    attrs = func.attrs or {}
    checked = [*(func.params if attrs.get(UNCHECKED_PARAMS, False) else []),
               *([func.body.body] if _flat(func) and attrs.get(UNCHECKED_RESULT, False) else [])]
    if not checked or not _flat(func):
        return func
    blocks, changed = [], False
    for block in func.body.blocks:
        new = []
        for b in block.bindings:
            v = b.value
            if (isinstance(v, relax.Call) and isinstance(v.op, relax.ExternFunc)
                    and v.op.global_symbol in _CHECKS and v.args
                    and any(v.args[0].same_as(p) for p in checked) and _static_check(v)):
                changed = True
                continue
            new.append(b)
        blocks.append(type(block)(new))
    return _rebuild(func, blocks) if changed else func


def shrink_vm_program(mod: tvm.IRModule) -> tvm.IRModule:
    """Every rewrite of this module on a lowered module (see the module docstring)."""
    out = tvm.IRModule(dict(mod.functions), attrs=mod.attrs)
    for gv, func in mod.functions.items():
        if isinstance(func, relax.Function):
            out[gv] = drop_param_checks(dedup_alloc_tensors(func))
    # the aliases left by dedup_alloc_tensors replaced by what they alias (VM code generation
    # emits a vm.builtin.copy for a binding of one variable to another)
    return relax.transform.CanonicalizeBindings()(out)


def shrink_vm_program_pass() -> tvm.transform.Pass:
    """:func:`shrink_vm_program` as a module pass."""
    return tvm.transform.module_pass(lambda m, _c: shrink_vm_program(m), opt_level=0,
                                     name="pfcompile.ShrinkVMProgram")
