"""Labelled data for the PP-OCR text-direction classifier (``ppocr_cls``): rendered
text lines, upright (0) or rotated 180 degrees (1), preprocessed as RapidOCR does
(``pfcompile/realdata.py``). Writes ``OUT/{train,calib,val,test}.npz`` (``x``, ``y``)
and ``OUT/meta.json``, then prints the original classifier's top-1 on each split
(onnxruntime, the reference).

  PYTHONPATH=. python tools/make_ocr_cls_data.py --out ~/.cache/pfcompile/ocr_cls_data
  PYTHONPATH=. python tools/make_ocr_cls_data.py --out /tmp/d --sizes train=200,val=200,test=200
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from pfcompile.realdata import classifier_top1, make_ocr_cls_splits, parse_split_sizes
from pfcompile.realmodels import fetch


def make(out: Path, sizes: dict[str, int], seed: int) -> dict[str, dict]:
    """Generate the splits and score the original classifier on each one."""
    t0 = time.perf_counter()
    paths = make_ocr_cls_splits(out, sizes, seed)
    gen_s = time.perf_counter() - t0
    model = fetch("ppocr_cls")
    rows = {}
    for split, p in paths.items():
        z = np.load(p)
        rows[split] = {"path": str(p), "n": len(z["y"]),
                       "rotated": float(z["y"].mean()),
                       "top1": classifier_top1(model, z["x"], z["y"])}
    meta_p = out / "meta.json"
    meta = json.loads(meta_p.read_text())
    meta["original_top1"] = {k: v["top1"] for k, v in rows.items()}
    meta["generate_s"] = round(gen_s, 1)
    meta_p.write_text(json.dumps(meta, indent=1))
    return rows


def split_sizes(text: str) -> dict[str, int]:
    """``--sizes`` -> every split's size (:func:`parse_split_sizes`); a bad entry ends the
    script with its message (also used by ``tools/bench_ocr_cls.py``)."""
    try:
        return parse_split_sizes(text)
    except ValueError as exc:
        raise SystemExit(str(exc)) from exc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sizes", default="", help="e.g. train=2000,calib=64,val=1000,test=2000")
    args = ap.parse_args()
    rows = make(args.out, split_sizes(args.sizes), args.seed)
    print(f"\nppocr_cls data in {args.out} (seed {args.seed}); original classifier top-1 "
          "(onnxruntime)\n")
    print("| split | images | rotated | top-1 |")
    print("|---|---|---|---|")
    for split, r in rows.items():
        print(f"| {split} | {r['n']} | {r['rotated']:.2f} | {100 * r['top1']:.2f} % |")


if __name__ == "__main__":
    main()
