"""Where the bytes of a library's VM executable go (docs/storage.md, "The VM program").

A TVM library embeds its Relax VM executable as the exported symbol
``__tvm_ffi__library_bin`` (:mod:`pfcompile.artifact_size` counts it as the weight
part). :func:`vm_bytes` reads it from the ELF file (host or cross-compiled) and parses
TVM 0.27's serialization (``src/runtime/vm/executable.cc``, ``VMExecutable::SaveToBytes``):

- a header (magic, version string);
- the function table: per function (VM functions and every kernel or builtin it calls)
  a kind, its name, four integers and its parameter names (52 bytes + the names);
- the constant pool: tensors (a 44-byte header + 8 bytes a dimension, then the data),
  shapes (12 + 8 a dimension), strings, dtypes, floats;
- the code: an 8-byte offset per instruction, then the instructions as 8-byte words
  (a call: opcode, destination, callee, argument count, one word an argument).

Written against the format, not TVM's API: a library built for another device is read
the same way. Used by ``tools/vm_bytes.py`` and the tests of
:mod:`pfcompile.codegen.vmprog`.
"""

from __future__ import annotations

import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from pfcompile.artifact_size import LIBRARY_BLOB, library_blob_symbol
from pfcompile.errors import ModelError

__all__ = ["Instruction", "VMBytes", "read_library_blob", "vm_bytes"]

_EXECUTABLE = b"relax.VMExecutable"
# tvm-ffi type indices of the constant pool's entries
_INT, _FLOAT, _DTYPE, _STR, _SHAPE, _TENSOR = 1, 3, 5, 65, 69, 70
_OPCODES = {1: "call", 2: "ret", 3: "goto", 4: "if"}
_KIND_BITS = 56


@dataclass(frozen=True)
class Instruction:
    """One VM instruction: ``function`` (the VM function it is in), ``op`` (``call``,
    ``ret``, ...), ``callee`` (for a call), its arguments as ``(kind, value)`` (kind:
    0 register, 1 immediate, 2 constant index, 3 function index) and its bytes (offset
    table entry included)."""

    function: str
    op: str
    callee: str
    args: tuple[tuple[int, int], ...]
    nbytes: int


@dataclass
class VMBytes:
    """A byte breakdown of a VM executable; the parts add up to ``total``."""

    total: int = 0
    parts: dict[str, int] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    functions: list[tuple[str, int, list[str]]] = field(default_factory=list)  # name, kind, params
    constants: list[tuple] = field(default_factory=list)  # ("tensor", shape, nbytes), ("shape", dims), ...
    instructions: list[Instruction] = field(default_factory=list)

    @property
    def program_bytes(self) -> int:
        """Everything but the tensor constants' data: the VM program and the headers."""
        return self.total - self.parts.get("tensor data", 0)

    def by_callee(self) -> Counter:
        """Bytes of the call instructions per (VM function, callee); kernels as ``kernel``."""
        out: Counter = Counter()
        for ins in self.instructions:
            out[(ins.function, self.callee_kind(ins))] += ins.nbytes
        return out

    def callee_kind(self, ins: Instruction) -> str:
        """A call's callee by name (builtins, VM functions), ``kernel`` for the kernels;
        ``ret`` etc. for the other instructions."""
        if ins.op != "call":
            return ins.op
        vm_funcs = {name for name, kind, _ in self.functions if kind != 0}
        if ins.callee.startswith(("vm.", "runtime.")) or ins.callee in vm_funcs:
            return ins.callee
        return "kernel"


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.b, self.p = data, 0

    def u64(self) -> int:
        v = struct.unpack_from("<Q", self.b, self.p)[0]
        self.p += 8
        return int(v)

    def i32(self) -> int:
        v = struct.unpack_from("<i", self.b, self.p)[0]
        self.p += 4
        return int(v)

    def raw(self, n: int) -> bytes:
        v = self.b[self.p:self.p + n]
        self.p += n
        return v

    def text(self) -> str:
        return self.raw(self.u64()).decode("utf-8", "replace")


def read_library_blob(so_path: str | Path) -> bytes:
    """The bytes of ``__tvm_ffi__library_bin`` in a library file (empty if it has none)."""
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile

    try:
        with open(so_path, "rb") as f:
            elf = ELFFile(f)
            found = library_blob_symbol(elf)
            if found is None:
                return b""
            addr, size = found
            for seg in elf.iter_segments():
                start = int(seg["p_vaddr"])
                if seg["p_type"] == "PT_LOAD" and start <= addr < start + int(seg["p_filesz"]):
                    f.seek(addr - start + int(seg["p_offset"]))
                    return f.read(size)
    except ELFError as exc:
        raise ModelError(f"{so_path} is not an ELF shared library: {exc}") from exc
    return b""


def vm_bytes(so_path: str | Path) -> VMBytes:
    """Parse the VM executable embedded in a library (see the module docstring)."""
    blob = read_library_blob(so_path)
    at = blob.find(_EXECUTABLE)
    if at < 0:
        raise ModelError(f"{so_path}: no Relax VM executable in {LIBRARY_BLOB}")
    outer = _Reader(blob)
    outer.p = at + len(_EXECUTABLE)
    n = outer.u64()
    r = _Reader(blob[outer.p:outer.p + n])
    out = VMBytes(total=len(blob))
    parts = out.parts
    parts["library wrapper (module tree)"] = len(blob) - n
    r.u64()
    r.text()
    parts["header"] = r.p
    # function table
    p0, names, starts = r.p, 0, {}
    for _ in range(r.u64()):
        kind = r.i32()
        name = r.text()
        if kind != 0:  # a VM function: where its instructions start
            starts[int(struct.unpack_from("<q", r.b, r.p)[0])] = name
        r.raw(32)  # start, end, number of arguments, register file size
        params = [r.text() for _ in range(r.u64())]
        names += len(name) + sum(len(x) for x in params)
        out.functions.append((name, kind, params))
    parts["function table: names"] = names
    parts["function table: entries"] = r.p - p0 - names
    # memory scopes
    p0 = r.p
    for _ in range(r.u64()):
        r.u64()
        r.text()
    parts["memory scopes"] = r.p - p0
    # constants
    p0, data, headers = r.p, 0, Counter()
    for _ in range(r.u64()):
        q = r.p
        t = r.i32()
        if t == _TENSOR:
            r.raw(24)  # magic, reserved, device
            nd = r.i32()
            r.raw(4)  # dtype
            shape = tuple(struct.unpack_from(f"<{nd}q", r.b, r.p))
            r.p += 8 * nd
            size = r.u64()
            r.raw(size)
            data += size
            headers["tensor headers"] += r.p - q - size
            out.constants.append(("tensor", shape, size))
        elif t == _SHAPE:
            k = r.u64()
            out.constants.append(("shape", tuple(struct.unpack_from(f"<{k}q", r.b, r.p))))
            r.p += 8 * k
            headers["shapes"] += r.p - q
        elif t == _STR:
            out.constants.append(("string", r.text()))
            headers["strings"] += r.p - q
        elif t in (_INT, _FLOAT):
            out.constants.append(("scalar", r.raw(8)))
            headers["scalars"] += r.p - q
        elif t == _DTYPE:
            out.constants.append(("dtype", r.raw(4)))
            headers["dtypes"] += r.p - q
        else:
            raise ModelError(f"{so_path}: unknown VM constant type {t}")
    parts["constants: count"] = 8
    for k, v in headers.items():
        parts[f"constants: {k}"] = v
    parts["tensor data"] = data
    # code
    offsets = [r.u64() for _ in range(r.u64())]
    words = [r.u64() for _ in range(r.u64())]
    parts["code: instruction offsets"] = 8 + 8 * len(offsets)
    parts["code: instructions"] = 8 + 8 * len(words)
    if r.p != len(r.b) or sum(parts.values()) != out.total:  # pragma: no cover - format drift
        raise ModelError(f"{so_path}: the VM executable did not parse to its end")
    fn = ""
    mask = (1 << _KIND_BITS) - 1
    for i, o in enumerate(offsets):
        fn = starts.get(i, fn)
        end = offsets[i + 1] if i + 1 < len(offsets) else len(words)
        w = words[o:end]
        op = _OPCODES.get(w[0], str(w[0]))
        callee, args = "", ()
        if op == "call":
            callee = out.functions[w[2]][0]
            args = tuple((int(x >> _KIND_BITS), int(x & mask)) for x in w[4:])
        out.instructions.append(Instruction(fn, op, callee, args, 8 * len(w) + 8))
    out.counts = {"functions": len(out.functions), "constants": len(out.constants),
                  "tensors": sum(c[0] == "tensor" for c in out.constants),
                  "instructions": len(out.instructions)}
    return out
