"""Store a compiled model's weight constants compactly, decoded once at load.

:func:`pack_weights` runs on the Relax module after fusion and scheduling, when
every constant is what a kernel reads. Each constant with an exact compact
encoding (:func:`pfcompile.storage.encode.choose`) is replaced by decoder calls
(:mod:`pfcompile.storage.decode`) on the compact arrays, and the module gets
three entry functions:

* ``main(inputs...)`` — as before: calls the two below, so it decodes the weights
  on every call. Any plain ``relax.VirtualMachine(lib)["main"](x)`` still works.
* ``main_transform_params()`` — the decoders alone; returns ``params``, the model
  (``main_model(inputs..., w...)``) with the kernel-ready weights bound as its last
  arguments (a VM closure). Run once, at load.
* ``main_lifted(inputs..., params)`` — checks the inputs and calls ``params`` on them:
  no decoding.

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

import numpy as np
import tvm
from tvm import relax, tirx
from tvm.ir.expr import Constant

from pfcompile.codegen.vmprog import UNCHECKED_PARAMS, UNCHECKED_RESULT
from pfcompile.deploy import LIFTED_FUNC, MODEL_FUNC, TRANSFORM_FUNC
from pfcompile.storage.decode import (
    bits_func,
    codebook_func,
    codebook_group_func,
    lanes_func,
    sparse_func,
)
from pfcompile.storage.encode import (
    BLOCK,
    Bits,
    Codebook,
    Encoded,
    Lanes,
    Raw,
    Sparse,
    choose_all,
    decode,
    encode_bits_as,
    lanes_as,
)

__all__ = ["LIFTED_FUNC", "MODEL_FUNC", "TRANSFORM_FUNC", "PackedTensor", "StorageReport", "encoding_name",
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
    if isinstance(e, Lanes):
        return f"lanes{int(e.rank[-1])}/{e.period}(bits{e.values.bits})"
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
        elif isinstance(e, Lanes):
            v = e.values
            gv = self._gvar(("lanes", v.bits, "s" if v.signed else "u", e.dtype),
                            lambda: lanes_func(v.bits, v.signed, e.dtype))
            args = [relax.const(v.data), relax.const(e.rank)]
        elif isinstance(e, CodebookGroup):
            b = e.index.bits
            gv = self._gvar(("codebooks", b, e.dtype), lambda: codebook_group_func(b, e.dtype))
            args = [relax.const(e.index.data), relax.const(e.tables), relax.const(e.starts)]
        else:
            assert isinstance(e, Sparse)
            vals = self.emit(e.values, out, tag + "_nz")
            gv = self._gvar(("sparse", e.dtype), lambda: sparse_func(e.dtype, BLOCK))
            args = [relax.const(e.mask), relax.const(e.counts), vals]
        var = relax.DataflowVar(f"{tag}_flat", relax.TensorType((n,), e.dtype))
        out.append(relax.VarBinding(var, relax.call_tir(gv, relax.Tuple(args),
                                                        relax.TensorType((n,), e.dtype))))
        return var


#: byte alignment of each tensor in a decoded group: TVM allocates every tensor 64-byte
#: aligned (kernels may assume it) and ``vm.builtin.ensure_zero_offset`` turns a view at such
#: an offset into a plain tensor without a copy
ALIGN = 64




@dataclass(frozen=True)
class CodebookGroup:
    """Several :class:`Codebook` tensors in one stream: their indices one after the other
    (segment ``s`` from element ``starts[s]``), each table padded to ``2**bits`` values in
    ``tables`` (:func:`pfcompile.storage.decode.codebook_group_func`)."""

    index: Bits
    tables: np.ndarray
    starts: np.ndarray  # int32, segments + 1
    n: int
    dtype: str

    def decode(self) -> np.ndarray:
        idx = decode(self.index).astype(np.int64)
        seg = np.searchsorted(self.starts, np.arange(self.n), side="right") - 1
        return self.tables[seg * (1 << self.index.bits) + idx]


def _groups(chosen: list[tuple[Constant, Encoded]]):
    """The :class:`Bits`, :class:`Lanes` and :class:`Codebook` encodings of ``chosen``
    grouped by decoder (bit width, sign, dtype; for Lanes the same lanes), as ``{key: [index
    into chosen, ...]}``; the others are decoded one by one."""
    groups: dict[tuple, list[int]] = {}
    for k, (_, e) in enumerate(chosen):
        if isinstance(e, Bits):
            groups.setdefault(("bits", e.bits, e.signed, e.dtype), []).append(k)
        elif isinstance(e, Lanes):
            v = e.values
            groups.setdefault(("lanes", v.bits, v.signed, e.dtype, e.rank.tobytes()),
                              []).append(k)
        elif isinstance(e, Codebook):
            groups.setdefault(("codebook", e.index.bits, e.dtype), []).append(k)
    return groups


def _codebook_group(members: list[Codebook]) -> tuple[CodebookGroup, list[int]]:
    """:class:`CodebookGroup` of ``members`` (one index width and dtype), each starting at a
    multiple of :data:`ALIGN` bytes of the decoded array, and the byte offsets. Checked:
    every member decodes back bit for bit."""
    e0 = members[0]
    bits, item = e0.index.bits, np.dtype(e0.dtype).itemsize
    step = max(1, ALIGN // item)
    idx, tables, starts, n = [], [], [], 0
    for e in members:
        starts.append(n)
        v = decode(e.index).astype(np.int64)
        idx.append(np.concatenate([v, np.zeros(-v.size % step, np.int64)]))
        n += idx[-1].size
        tables.append(np.concatenate([e.table, np.zeros((1 << bits) - e.table.size, e.table.dtype)]))
    group = CodebookGroup(encode_bits_as(np.concatenate(idx), bits, False),
                          np.concatenate(tables), np.array([*starts, n], np.int32), n, e0.dtype)
    back = group.decode()
    for e, off in zip(members, starts, strict=True):
        want = decode(e)
        if not np.array_equal(back[off:off + e.n].view(np.uint8), want.view(np.uint8)):
            raise AssertionError("a grouped codebook stream does not decode back")  # pragma: no cover
    return group, [off * item for off in starts]


def _group_stream(members: list[Bits | Lanes]) -> tuple[Bits | Lanes, list[int]]:
    """One stream holding ``members`` (all Bits or all Lanes of the same lanes, one bit
    width) one after the other, each starting at a multiple of :data:`ALIGN` bytes of the
    decoded array and of the Lanes period (zeros between them), and the byte offsets.
    Checked: decoding the stream gives every member back bit for bit."""
    e0 = members[0]
    item = np.dtype(e0.dtype).itemsize
    step = max(1, ALIGN // item)
    if isinstance(e0, Lanes):
        step = int(np.lcm(step, e0.period))
    parts, offsets, n = [], [], 0
    for e in members:
        offsets.append(n * item)
        v = decode(e)
        pad = -v.size % step
        parts.append(v if not pad else np.concatenate([v, np.zeros(pad, v.dtype)]))
        n += v.size + pad
    values = np.concatenate(parts)
    if isinstance(e0, Lanes):
        stream = lanes_as(values, e0.rank[:-1] >= 0, e0.values.bits, e0.values.signed)
    else:
        stream = encode_bits_as(values, e0.bits, e0.signed)
    back = decode(stream)
    for e, off in zip(members, offsets, strict=True):
        seg = back[off // item: off // item + e.n]
        if not np.array_equal(seg, decode(e)):  # pragma: no cover - encode_bits_as is exact
            raise AssertionError(f"a grouped {encoding_name(e0)} stream does not decode back")
    return stream, offsets


def _decode_block(decoders: _Decoders, chosen: list[tuple[Constant, Encoded]]):
    """A dataflow block decoding every chosen constant; returns (block, output vars).

    Bits / Lanes constants of the same decoder share one stream and one decoder call; each
    is then a view of the decoded array (``R.memory.view`` + ``ensure_zero_offset``: no
    copy) in its kernel's shape. Per tensor that is two VM instructions instead of an
    allocation, a decoder call and a reshape, and the compact arrays share one header."""
    bindings: list = []
    outs: list = [None] * len(chosen)
    grouped = _groups(chosen)
    for key, idx in grouped.items():
        if len(idx) < 2:
            continue
        members = [chosen[k][1] for k in idx]
        stream, offsets = (_codebook_group(members) if key[0] == "codebook"
                           else _group_stream(members))
        flat = decoders.emit(stream, bindings, f"g{len(bindings)}")
        for k, off in zip(idx, offsets, strict=True):
            c = chosen[k][0]
            shape = tuple(int(s) for s in c.ty.shape.values)
            var = relax.DataflowVar(f"w{k}_view", relax.TensorType(shape, str(c.ty.dtype)))
            bindings.append(relax.VarBinding(var, relax.op.memory.view(
                flat, relax.ShapeExpr(shape), str(c.ty.dtype),
                relax.prim_value(tirx.IntImm("int64", off)))))
            if off:
                v2 = relax.DataflowVar(f"w{k}", var.ty)
                bindings.append(relax.VarBinding(v2, relax.op.memory.ensure_zero_offset(var)))
                var = v2
            outs[k] = var
    for k, (c, e) in enumerate(chosen):
        if outs[k] is not None:
            continue
        flat = decoders.emit(e, bindings, f"w{k}")
        shape = tuple(int(s) for s in c.ty.shape.values)
        var = relax.DataflowVar(f"w{k}", relax.TensorType(shape, str(c.ty.dtype)))
        bindings.append(relax.VarBinding(var, relax.op.reshape(flat, shape)))
        outs[k] = var
    return relax.DataflowBlock(bindings), outs


def pack_weights(mod: tvm.IRModule, *, func_name: str = "main", min_saving: int = 1024,
                 report: StorageReport | None = None) -> tvm.IRModule:
    """Encode the constants of ``mod[func_name]`` (see the module docstring); fills ``report``."""
    report = report if report is not None else StorageReport()
    func = mod[func_name]
    chosen: list[tuple[Constant, Encoded]] = []
    consts = _constants(func)
    arrs = [c.value.numpy() for c in consts]
    encs = choose_all(arrs, min_saving)
    for c, arr, enc in zip(consts, arrs, encs, strict=True):
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
    # main_model(inputs..., w...): the model on the decoded weights, one parameter each.
    # Called only through the closure below, with inputs main_lifted has checked and
    # weights main_transform_params made: its parameter checks are dropped after lowering
    # (codegen.vmprog); every weight parameter is named "w" (the VM stores each name)
    wparams = [relax.Var("w", c.ty) for c, _ in chosen]
    table = {c: v for (c, _), v in zip(chosen, wparams, strict=True)}
    model = relax.Function([*func.params, *wparams],
                           relax.SeqExpr(_substitute(func, table), func.body.body),
                           func.ret_ty, func.is_pure, func.attrs)
    model = model.with_attr("global_symbol", MODEL_FUNC).with_attr(UNCHECKED_PARAMS, True)
    gv_m = bb.add_func(model, MODEL_FUNC)
    # main_transform_params: the decoders, then main_model with the weights bound as its
    # last arguments (a VM closure: one instruction, 8 bytes a weight; a tuple cost a
    # make_tuple argument here and a tuple_getitem in main_lifted, 64 bytes a weight)
    block, outs = _decode_block(decoders, chosen)
    clo = relax.Var("params", relax.ObjectType())
    tblock = relax.DataflowBlock([*block.bindings, relax.VarBinding(
        clo, relax.op.make_closure(gv_m, relax.Tuple(outs)))])
    transform = relax.Function([], relax.SeqExpr([tblock], clo), clo.ty, True).with_attr(
        "global_symbol", TRANSFORM_FUNC)
    # main_lifted(inputs..., params): checks the inputs (TVM's parameter checks) and that
    # params is a function, then calls it on the inputs; the result is main_model's, of the
    # declared type (no check of it after the call)
    params = [relax.Var(p.name, p.ty) for p in func.params]
    pvar = relax.Var("params", relax.ObjectType())
    y = relax.Var("y", func.ret_ty)
    body = relax.SeqExpr([relax.BindingBlock([
        relax.VarBinding(relax.Var("params_checked", relax.TupleType([])), relax.call_pure_packed(
            "vm.builtin.check_func_info", pvar,
            tvm.ir.StringImm(f"{LIFTED_FUNC}: params must be what {TRANSFORM_FUNC}() returns;"),
            ty_args=relax.TupleType([]))),
        relax.VarBinding(y, relax.op.invoke_closure(pvar, relax.Tuple(params), [func.ret_ty]))])],
        y)
    lifted = relax.Function([*params, pvar], body, func.ret_ty, func.is_pure, func.attrs)
    lifted = lifted.with_attr("global_symbol", LIFTED_FUNC).with_attr(
        "num_input", len(func.params)).with_attr(UNCHECKED_RESULT, True)
    gv_t = bb.add_func(transform, TRANSFORM_FUNC)
    gv_l = bb.add_func(lifted, LIFTED_FUNC)
    # main: both, on every call (a few VM instructions, not a second copy of the model);
    # its inputs go unchanged to main_lifted, which checks them
    params = [relax.Var(p.name, p.ty) for p in func.params]
    w = relax.Var("params", relax.ObjectType())
    y = relax.Var("y", func.ret_ty)
    body = relax.SeqExpr([relax.BindingBlock([
        relax.VarBinding(w, relax.Call(gv_t, [])),
        relax.VarBinding(y, relax.Call(gv_l, [*params, w]))])], y)
    bb.update_func(bb.get().get_global_var(func_name),
                   relax.Function(params, body, func.ret_ty, func.is_pure, func.attrs).with_attr(
                       UNCHECKED_PARAMS, True))
    out = relax.transform.Normalize()(bb.get())
    report.lifted = True
    return out


def pack_weights_pass(report: StorageReport | None = None, *, min_saving: int = 1024):
    """:func:`pack_weights` as a module pass (for ``codegen.build(post_passes=...)``)."""

    @tvm.transform.module_pass(opt_level=0, name="pfcompile.PackWeights")
    def _pass(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        return pack_weights(mod, min_saving=min_saving, report=report)

    return _pass


