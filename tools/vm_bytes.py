"""Byte breakdown of the VM executable embedded in compiled libraries.

  python tools/vm_bytes.py OUT/model.so [OTHER/model.so ...]     # one column each
  python tools/vm_bytes.py --calls OUT/model.so                  # bytes per (function, callee)

Parts: the function table (entries, names), the constant pool (tensor headers, shapes,
strings, ...; tensor data apart), the code (instruction offsets and words); "program"
= everything but the tensor data (docs/storage.md, "The VM program").
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pfcompile.vm_bytes import vm_bytes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("libs", nargs="+", type=Path, help="model.so files or artifact folders")
    ap.add_argument("--calls", action="store_true", help="also bytes per (VM function, callee)")
    args = ap.parse_args()
    libs = [p / "model.so" if p.is_dir() else p for p in args.libs]
    res = [vm_bytes(p) for p in libs]
    keys = list(dict.fromkeys(k for r in res for k in r.parts))
    print("| part | " + " | ".join(p.parent.name or str(p) for p in libs) + " |")
    print("|---|" + "---|" * len(libs))
    for k in keys:
        print(f"| {k} | " + " | ".join(str(r.parts.get(k, 0)) for r in res) + " |")
    print("| **program (all but tensor data)** | " + " | ".join(f"**{r.program_bytes}**" for r in res)
          + " |")
    print("| total | " + " | ".join(str(r.total) for r in res) + " |")
    for c in ("functions", "constants", "tensors", "instructions"):
        print(f"| {c} (count) | " + " | ".join(str(r.counts[c]) for r in res) + " |")
    if args.calls:
        for p, r in zip(libs, res, strict=True):
            print(f"\n{p}:")
            calls = r.by_callee()
            n: dict = {}
            for ins in r.instructions:
                key = (ins.function, r.callee_kind(ins))
                n[key] = n.get(key, 0) + 1
            for (fn, callee), b in calls.most_common():
                print(f"  {fn:24s} {callee:34s} {n[(fn, callee)]:4d} {b:6d}")


if __name__ == "__main__":
    main()
