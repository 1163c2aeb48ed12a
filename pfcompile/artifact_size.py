"""The size of what is deployed, measured from the files.

A compiled artifact ships its library (``model.so``; ``program.npz`` on the
accelerator targets) and any weight file the artifact's ``model.json`` lists
under ``deployed``. Their bytes on disk are the size. Inside a TVM library the
weights are the serialized VM executable (constant pool + a little bytecode),
which TVM embeds as the exported symbol ``__tvm_ffi__library_bin``; the rest of
the file is machine code and ELF overhead. :func:`artifact_size` reports the
total and the two parts apart (read with pyelftools from the file itself, so a
cross-compiled aarch64 library is measured the same way).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pfcompile.errors import ModelError

__all__ = ["LIBRARY_BLOB", "ArtifactSize", "artifact_size", "library_blob_symbol",
           "library_weight_bytes"]

LIBRARY_BLOB = "__tvm_ffi__library_bin"
_DEFAULT_DEPLOYED = ("model.so", "program.npz")


@dataclass(frozen=True)
class ArtifactSize:
    """Bytes of the deployed files: ``size_bytes`` = ``code_bytes`` + ``weight_bytes``."""

    size_bytes: int
    code_bytes: int     # machine code, ELF tables, everything but the weights
    weight_bytes: int   # the library's embedded VM executable (constants) + weight files
    files: dict[str, int] = field(default_factory=dict)

    @property
    def size_mb(self) -> float:
        return self.size_bytes / 1e6

    def to_json(self) -> dict:
        return asdict(self)


def library_blob_symbol(elf) -> tuple[int, int] | None:
    """``(address, size)`` of ``__tvm_ffi__library_bin`` (the embedded VM executable) in an
    open ``elftools`` ELF file, or None."""
    for name in (".dynsym", ".symtab"):
        sec = elf.get_section_by_name(name)
        syms = sec.get_symbol_by_name(LIBRARY_BLOB) if sec is not None else None
        if syms:
            return int(syms[0]["st_value"]), int(syms[0]["st_size"])
    return None


def library_weight_bytes(so_path: str | Path) -> int:
    """Size of the embedded VM executable in a TVM library (0 if it has none)."""
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile

    try:
        with open(so_path, "rb") as f:
            found = library_blob_symbol(ELFFile(f))
    except ELFError as exc:
        raise ModelError(f"{so_path} is not an ELF shared library: {exc}") from exc
    return 0 if found is None else found[1]


def _deployed(artifact: Path) -> list[Path]:
    meta = artifact / "model.json"
    names: list[str] = []
    if meta.is_file():
        try:
            m = json.loads(meta.read_text())
        except ValueError as exc:
            raise ModelError(f"{meta}: unreadable artifact metadata: {exc}") from exc
        names = list(m.get("deployed") or ([m["library"]] if m.get("library") else []))
    if not names:
        names = [n for n in _DEFAULT_DEPLOYED if (artifact / n).is_file()]
    return [artifact / n for n in names]


def artifact_size(artifact: str | Path) -> ArtifactSize:
    """Measure a compiled artifact folder (or one library file)."""
    p = Path(artifact)
    files = _deployed(p) if p.is_dir() else [p]
    missing = [str(f) for f in files if not f.is_file()]
    if not files or missing:
        raise ModelError(f"no deployed files to measure at {p} ({', '.join(missing) or 'none'}): "
                         "compile the model first (`pfcompile compile`)")
    sizes = {f.name: f.stat().st_size for f in files}
    weights = 0
    for f in files:
        weights += library_weight_bytes(f) if f.suffix == ".so" else f.stat().st_size
    total = sum(sizes.values())
    return ArtifactSize(total, total - weights, weights, sizes)
