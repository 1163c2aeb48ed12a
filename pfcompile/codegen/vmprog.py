"""Fewer VM instructions in a lowered Relax module (the bytecode ``tvm.compile`` writes).

The VM program is part of a library's weight blob (``__tvm_ffi__library_bin``,
:mod:`pfcompile.artifact_size`): every instruction costs 8 bytes of offset table, 32
bytes of opcode, destination, callee and argument count, and 8 bytes an argument
(docs/storage.md, "The VM program"). These rewrites run on the module after TVM's
lowering (``vm_finalize_passes``), where each binding is one instruction, and change no
kernel and no output:

- :func:`dedup_alloc_tensors`: ``StaticPlanBlockMemory`` reuses a storage for many
  intermediate tensors and ``LowerAllocTensor`` emits one ``vm.builtin.alloc_tensor`` per
  use, the same storage, offset, shape and dtype again and again (ResNet-20 4-bit: 42
  instructions, 20 distinct). The repeats are replaced by the first (by
  ``CanonicalizeBindings``: code generation would emit a ``vm.builtin.copy`` for an
  alias). The tensors are the same memory with the same shape; nothing in a static-shape
  VM program depends on their object identity (no ``KillAfterLastUse``,
  :func:`pfcompile.codegen.pipeline.vm_finalize_passes`).
- :func:`drop_param_checks`: ``vm.builtin.check_tensor_info`` / ``match_shape`` of the
  parameters of a function whose callers check them (attribute :data:`UNCHECKED_PARAMS`):
  in a library with a load-time step (:mod:`pfcompile.storage`), ``main`` passes its inputs
  unchanged to ``main_lifted``, which checks them, and ``main_model`` is reached only
  through ``main_lifted`` (checked inputs) with the weights ``main_transform_params``
  decoded. A wrong input still raises, naming ``main_lifted``. Likewise the check of
  ``main_lifted``'s result (:data:`UNCHECKED_RESULT`), which is ``main_model``'s.
- :func:`scalar_arguments`: a kernel parameter that every call passes a one-element
  tensor constant (the per-tensor scale and zero point of a quantize / dequantize, fused
  or not) becomes a scalar parameter and the calls pass the value (an immediate for an
  integer, an 8-byte double in the constant pool for a float: cast back to float32 in the
  kernel's entry function, exactly) instead of a tensor constant (a 52-byte header + the
  value). The kernel reads the scalar where it loaded element 0 (the same arithmetic).
- :func:`short_kernel_names`: kernels renamed ``k0``, ``k1``, ...: the VM's function
  table and the library's dynamic symbols each hold the name (``fused_pf_conv2d3_add2_
  relu1_quantize6_dequantize6``).
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax, tirx
from tvm.ir.expr import Constant

__all__ = ["UNCHECKED_PARAMS", "UNCHECKED_RESULT", "dedup_alloc_tensors", "drop_param_checks",
           "scalar_arguments", "short_kernel_names", "shrink_vm_program",
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


#: dtypes of one-element constants passed as scalars (the VM passes an int64 or a double;
#: the kernel's entry function casts it to the parameter's type, exactly for these)
_SCALAR_DTYPES = ("float32", "float64", "int8", "uint8", "int16", "uint16", "int32", "uint32",
                  "int64")


def _kernel_calls(mod: tvm.IRModule) -> tuple[dict, set]:
    """``{kernel GlobalVar: [call, ...]}`` of the calls in the Relax functions' top-level
    bindings, and the kernels also referenced in any other way (to be left alone)."""
    import tvm_ffi

    calls: dict = {gv: [] for gv, f in mod.functions.items() if isinstance(f, tirx.PrimFunc)}
    uses: dict = dict.fromkeys(calls, 0)
    for f in mod.functions.values():
        if not isinstance(f, relax.Function):
            continue
        if _flat(f):
            for block in f.body.blocks:
                for b in block.bindings:
                    v = b.value
                    if isinstance(v, relax.Call) and v.op in calls:
                        calls[v.op].append(v)

        def count(x) -> None:
            if isinstance(x, tvm.ir.GlobalVar) and x in uses:
                uses[x] += 1

        tvm_ffi.structural_walk(f, count)
    return calls, {gv for gv in calls if uses[gv] != len(calls[gv])}


def _scalar_param(func: tirx.PrimFunc, k: int) -> tirx.PrimFunc | None:
    """``func`` with its ``k``-th parameter, a one-element tensor it only reads, turned
    into a scalar of the same dtype (every load of it becomes the scalar; the blocks' read
    regions drop it); None if it is used in any other way."""
    import tvm_ffi
    from tvm.ir.expr import TensorLoad, TensorRegion

    old = func.params[k]
    new = tirx.Var(old.name, str(old.ty.dtype))

    def on_load(v, m):
        return new if v.source.same_as(old) else m.default_mutate(v)

    def region_of_old(x) -> bool:
        return isinstance(x, TensorRegion) and x.source.same_as(old)

    def on_array(v, m):
        if any(region_of_old(x) for x in v):
            v = tvm_ffi.convert([x for x in v if not region_of_old(x)])
        return m.default_mutate(v)

    body = tvm_ffi.structural_mutate(func.body, [(TensorLoad, on_load), (tvm_ffi.Array, on_array)])
    left = [0]
    tvm_ffi.structural_walk(body, lambda x: left.__setitem__(0, left[0] + 1)
                            if isinstance(x, tvm.ir.expr.Var) and x.same_as(old) else None)
    if left[0]:
        return None
    params = [new if i == k else p for i, p in enumerate(func.params)]
    return tirx.PrimFunc(params, body, func.ret_type, func.attrs, func.span)


def _singleton(a) -> bool:
    if not isinstance(a, Constant):
        return False
    arr = a.value
    return int(np.prod(arr.shape)) == 1 and str(arr.dtype) in _SCALAR_DTYPES


def _imm(a: Constant) -> relax.Expr:
    v = a.value.numpy().reshape(-1)[0]
    dt = str(a.value.dtype)
    if dt.startswith("float"):
        return relax.prim_value(tirx.FloatImm(dt, float(v)))
    return relax.prim_value(tirx.IntImm(dt, int(v)))


def scalar_arguments(mod: tvm.IRModule) -> tvm.IRModule:
    """Kernels' one-element tensor constants passed as scalars (see the module docstring)."""
    calls, other = _kernel_calls(mod)
    funcs = dict(mod.functions)
    new_calls: dict = {}
    update_type = tvm.get_global_func("relax.UpdateType")
    for gv, sites in calls.items():
        if not sites or gv in other:
            continue
        func = mod[gv]
        n = len(func.params)
        if any(len(c.args) != n for c in sites):
            continue
        changed = []
        for k in range(n):
            if not isinstance(getattr(func.params[k], "ty", None), tvm.tirx.buffer.BufferType):
                continue
            if not all(_singleton(c.args[k]) for c in sites):
                continue
            f2 = _scalar_param(func, k)
            if f2 is not None:
                func, changed = f2, [*changed, k]
        if changed:
            # a new GlobalVar: a call's arguments are checked against its callee's type
            new_gv = tvm.ir.GlobalVar(gv.name_hint)
            update_type(new_gv, func.ty)
            del funcs[gv]
            funcs[new_gv] = func
            for c in sites:
                new_calls[c] = relax.Call(new_gv, [(_imm(a) if i in changed else a)
                                                   for i, a in enumerate(c.args)],
                                          c.attrs, c.ty_args, c.span)
    if not new_calls:
        return mod
    _rebind_calls(funcs, new_calls)
    return tvm.IRModule(funcs, attrs=mod.attrs)


def _rebind_calls(funcs: dict, new_calls: dict) -> None:
    """Replace, in the Relax functions of ``funcs``, each top-level binding's call that is a
    key of ``new_calls`` by its value."""
    for gv, f in list(funcs.items()):
        if not isinstance(f, relax.Function) or not _flat(f):
            continue
        blocks, hit = [], False
        for block in f.body.blocks:
            new = []
            for b in block.bindings:
                if isinstance(b.value, relax.Call) and b.value in new_calls:
                    b = relax.VarBinding(b.var, new_calls[b.value])
                    hit = True
                new.append(b)
            blocks.append(type(block)(new))
        if hit:
            funcs[gv] = _rebuild(f, blocks)


def short_kernel_names(mod: tvm.IRModule, prefix: str = "k",
                       renamed: dict[str, str] | None = None) -> tvm.IRModule:
    """Every kernel called only from the Relax functions' bindings renamed ``k0``, ``k1``,
    ... (in the order of their names): the VM's function table and the library's dynamic
    symbols hold each name (``fused_pf_conv2d3_add2_relu1_quantize6_dequantize6``: 48
    bytes, twice). ``renamed`` receives ``{old name: new name}`` (profilers map the
    library's names back to the kernel reports with it)."""
    calls, other = _kernel_calls(mod)
    funcs = dict(mod.functions)
    taken = {gv.name_hint for gv in mod.get_global_vars()}
    new_calls: dict = {}
    update_type = tvm.get_global_func("relax.UpdateType")
    k = 0
    for gv in sorted(calls, key=lambda g: g.name_hint):
        if not calls[gv] or gv in other:
            continue
        while f"{prefix}{k}" in taken:
            k += 1
        name = f"{prefix}{k}"
        k += 1
        if renamed is not None:
            renamed[gv.name_hint] = name
        func = mod[gv].with_attr("global_symbol", name)
        new_gv = tvm.ir.GlobalVar(name)
        update_type(new_gv, func.ty)
        del funcs[gv]
        funcs[new_gv] = func
        for c in calls[gv]:
            new_calls[c] = relax.Call(new_gv, list(c.args), c.attrs, c.ty_args, c.span)
    if not new_calls:
        return mod
    _rebind_calls(funcs, new_calls)
    return tvm.IRModule(funcs, attrs=mod.attrs)


def shrink_vm_program(mod: tvm.IRModule,
                      renamed: dict[str, str] | None = None) -> tvm.IRModule:
    """Every rewrite of this module on a lowered module (see the module docstring);
    ``renamed`` receives :func:`short_kernel_names`' renames."""
    out = tvm.IRModule(dict(mod.functions), attrs=mod.attrs)
    for gv, func in mod.functions.items():
        if isinstance(func, relax.Function):
            out[gv] = drop_param_checks(dedup_alloc_tensors(func))
    out = short_kernel_names(scalar_arguments(out), renamed=renamed)
    # the aliases left by dedup_alloc_tensors replaced by what they alias (VM code generation
    # emits a vm.builtin.copy for a binding of one variable to another)
    return relax.transform.CanonicalizeBindings()(out)


def shrink_vm_program_pass(renamed: dict[str, str] | None = None) -> tvm.transform.Pass:
    """:func:`shrink_vm_program` as a module pass."""
    return tvm.transform.module_pass(lambda m, _c: shrink_vm_program(m, renamed), opt_level=0,
                                     name="pfcompile.ShrinkVMProgram")
