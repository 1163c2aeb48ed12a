"""Store a compiled model's weight constants compactly, decoded once at load.

:func:`pack_weights` runs on the Relax module after fusion and scheduling, when
every constant is what a kernel reads. Each constant with an exact compact
encoding (:func:`pfcompile.storage.encode.choose`) is replaced by decoder calls
(:mod:`pfcompile.storage.decode`) on the compact arrays, and the module gets
three entry functions:

* ``main(inputs...)`` — as before: calls the two below, so it decodes the weights
  on every call. Any plain ``relax.VirtualMachine(lib)["main"](x)`` still works.
* ``main_transform_params()`` — the decoders alone; returns the tuple of
  kernel-ready weights. Run once, at load.
* ``main_lifted(inputs..., params)`` — the model reading that tuple: no decoding.

:mod:`pfcompile.deploy` is the one place that calls the last two (every runner
and the documented loader go through it). Why load time and not inside the
kernels: decoding is a pass over the weights, and a kernel reads each weight
once per output position; doing it per call would add that pass to every
inference (measured on ResNet-20 digits, see docs/storage.md).

Why not TVM's ``LiftTransformParams``: it needs the compact arrays as function
parameters, which would then have to be bound back into the library as
constants, and it rewrites ``main`` in place (no self-contained ``main`` left).
The decode bindings are ours, so splitting them out is a partition of a list.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import tvm
from tvm import relax
from tvm.ir.expr import Constant

from pfcompile.deploy import LIFTED_FUNC, TRANSFORM_FUNC
from pfcompile.storage.decode import bits_func, codebook_func, sparse_func
from pfcompile.storage.encode import BLOCK, Bits, Codebook, Encoded, Raw, Sparse, choose

__all__ = ["LIFTED_FUNC", "TRANSFORM_FUNC", "PackedTensor", "StorageReport", "encoding_name",
           "pack_weights", "pack_weights_pass"]

@dataclass(frozen=True)
class PackedTensor:
    """One constant: its shape and dtype as the kernel reads it, and how it is stored."""

    shape: tuple[int, ...]
    dtype: str
    raw_bytes: int
    stored_bytes: int
    encoding: str  # e.g. "bits4", "codebook4", "sparse(bits4)", "raw"

    def to_json(self) -> dict:
        d = asdict(self)
        d["shape"] = list(self.shape)
        return d


@dataclass
class StorageReport:
    """What :func:`pack_weights` did to the constants of the entry function."""

    tensors: list[PackedTensor] = field(default_factory=list)
    constant_bytes: int = 0  # every constant of the entry function, as the kernels read them
    stored_bytes: int = 0    # the same constants as stored in the library
    lifted: bool = False     # main_transform_params / main_lifted exist

    def to_json(self) -> dict:
        return {"constant_bytes": self.constant_bytes, "stored_bytes": self.stored_bytes,
                "lifted": self.lifted,
                "packed": [t.to_json() for t in self.tensors if t.encoding != "raw"]}


def encoding_name(e: Encoded) -> str:
    if isinstance(e, Raw):
        return "raw"
    if isinstance(e, Bits):
        return f"bits{e.bits}"
    if isinstance(e, Codebook):
        return f"codebook{e.index.bits}"
    return f"sparse({encoding_name(e.values)})"


def _constants(func: relax.Function) -> list[Constant]:
    """Tensor constants read by the calls of ``func`` (each object once, in order)."""
    seen: dict = {}

    def visit(e) -> None:
        if isinstance(e, Constant):
            if e not in seen and isinstance(e.ty, relax.TensorType):
                seen[e] = None
        elif isinstance(e, relax.Tuple):
            for f in e.fields:
                visit(f)

    for block in func.body.blocks:
        for b in block.bindings:
            if isinstance(b, relax.VarBinding) and isinstance(b.value, relax.Call):
                for a in b.value.args:
                    visit(a)
    return list(seen)


def _replace(e, table: dict):
    if isinstance(e, Constant):
        return table.get(e, e)
    if isinstance(e, relax.Tuple):
        return relax.Tuple([_replace(f, table) for f in e.fields])
    return e


def _substitute(func: relax.Function, table: dict) -> list:
    """``func``'s binding blocks with the constants in ``table`` replaced."""
    blocks = []
    for block in func.body.blocks:
        new = []
        for b in block.bindings:
            v = b.value
            if isinstance(b, relax.VarBinding) and isinstance(v, relax.Call) and any(
                    _replace(a, table) is not a for a in v.args):
                v = relax.Call(v.op, [_replace(a, table) for a in v.args], v.attrs, v.ty_args,
                               v.span)
                b = relax.VarBinding(b.var, v)
            new.append(b)
        blocks.append(type(block)(new))
    return blocks


class _Decoders:
    """Adds each decoder PrimFunc to the module once, and emits calls to them."""

    def __init__(self, bb: relax.BlockBuilder) -> None:
        self.bb = bb
        self.gvars: dict[tuple, relax.GlobalVar] = {}

    def _gvar(self, key: tuple, make) -> relax.GlobalVar:
        if key not in self.gvars:
            name = "pf_decode_" + "_".join(str(k) for k in key)
            self.gvars[key] = self.bb.add_func(make().with_attr("global_symbol", name), name)
        return self.gvars[key]

    def emit(self, e: Encoded, out: list, tag: str) -> relax.Expr:
        """Bindings (appended to ``out``) computing the flat decoded array of ``e``."""
        if isinstance(e, Raw):
            return relax.const(e.values)
        n = e.n
        if isinstance(e, Bits):
            gv = self._gvar(("bits", e.bits, "s" if e.signed else "u", e.dtype),
                            lambda: bits_func(e.bits, e.signed, e.dtype))
            args = [relax.const(e.data)]
        elif isinstance(e, Codebook):
            gv = self._gvar(("codebook", e.index.bits, e.dtype),
                            lambda: codebook_func(e.index.bits, e.dtype))
            args = [relax.const(e.index.data), relax.const(e.table)]
        else:
            assert isinstance(e, Sparse)
            vals = self.emit(e.values, out, tag + "_nz")
            gv = self._gvar(("sparse", e.dtype), lambda: sparse_func(e.dtype, BLOCK))
            args = [relax.const(e.mask), relax.const(e.counts), vals]
        var = relax.DataflowVar(f"{tag}_flat", relax.TensorType((n,), e.dtype))
        out.append(relax.VarBinding(var, relax.call_tir(gv, relax.Tuple(args),
                                                        relax.TensorType((n,), e.dtype))))
        return var


def _decode_block(decoders: _Decoders, chosen: list[tuple[Constant, Encoded]]):
    """A dataflow block decoding every chosen constant; returns (block, output vars)."""
    bindings: list = []
    outs = []
    for k, (c, e) in enumerate(chosen):
        flat = decoders.emit(e, bindings, f"w{k}")
        shape = tuple(int(s) for s in c.ty.shape.values)
        var = relax.Var(f"w{k}", relax.TensorType(shape, str(c.ty.dtype)))
        bindings.append(relax.VarBinding(var, relax.op.reshape(flat, shape)))
        outs.append(var)
    return relax.DataflowBlock(bindings), outs


def pack_weights(mod: tvm.IRModule, *, func_name: str = "main", min_saving: int = 1024,
                 report: StorageReport | None = None) -> tvm.IRModule:
    """Encode the constants of ``mod[func_name]`` (see the module docstring); fills ``report``."""
    report = report if report is not None else StorageReport()
    func = mod[func_name]
    chosen: list[tuple[Constant, Encoded]] = []
    for c in _constants(func):
        arr = c.value.numpy()
        enc = choose(arr, min_saving)
        report.constant_bytes += int(arr.nbytes)
        report.stored_bytes += int(arr.nbytes) if enc is None else enc.nbytes
        report.tensors.append(PackedTensor(tuple(int(s) for s in arr.shape), str(arr.dtype),
                                           int(arr.nbytes), int(arr.nbytes if enc is None else enc.nbytes),
                                           "raw" if enc is None else encoding_name(enc)))
        if enc is not None:
            chosen.append((c, enc))
    if not chosen:
        return mod
    bb = relax.BlockBuilder(mod)
    decoders = _Decoders(bb)
    # main_transform_params: the decoders alone
    block, outs = _decode_block(decoders, chosen)
    tup = relax.Var("params", relax.TupleType([o.ty for o in outs]))
    tblock = relax.DataflowBlock([*block.bindings, relax.VarBinding(tup, relax.Tuple(outs))])
    transform = relax.Function([], relax.SeqExpr([tblock], tup), tup.ty, True).with_attr(
        "global_symbol", TRANSFORM_FUNC)
    # main_lifted: the model reading the decoded tuple
    pvar = relax.Var("params", tup.ty)
    gets = []
    for k, (c, _) in enumerate(chosen):
        v = relax.Var(f"w{k}", c.ty)
        gets.append(relax.VarBinding(v, relax.TupleGetItem(pvar, k)))
    table = {c: g.var for (c, _), g in zip(chosen, gets, strict=True)}
    body = relax.SeqExpr([relax.BindingBlock(gets), *_substitute(func, table)], func.body.body)
    lifted = relax.Function([*func.params, pvar], body, func.ret_ty, func.is_pure, func.attrs)
    lifted = lifted.with_attr("global_symbol", LIFTED_FUNC).with_attr(
        "num_input", len(func.params))
    gv_t = bb.add_func(transform, TRANSFORM_FUNC)
    gv_l = bb.add_func(lifted, LIFTED_FUNC)
    # main: both, on every call (a few VM instructions, not a second copy of the model)
    params = [relax.Var(p.name, p.ty) for p in func.params]
    w = relax.Var("params", tup.ty)
    y = relax.Var("y", func.ret_ty)
    body = relax.SeqExpr([relax.BindingBlock([
        relax.VarBinding(w, relax.Call(gv_t, [])),
        relax.VarBinding(y, relax.Call(gv_l, [*params, w]))])], y)
    bb.update_func(bb.get().get_global_var(func_name),
                   relax.Function(params, body, func.ret_ty, func.is_pure, func.attrs))
    out = relax.transform.Normalize()(bb.get())
    report.lifted = True
    return out


def pack_weights_pass(report: StorageReport | None = None, *, min_saving: int = 1024):
    """:func:`pack_weights` as a module pass (for ``codegen.build(post_passes=...)``)."""

    @tvm.transform.module_pass(opt_level=0, name="pfcompile.PackWeights")
    def _pass(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        return pack_weights(mod, min_saving=min_saving, report=report)

    return _pass


