"""Accuracy of quantized digits models: fp32 vs int8 (three calibrations), 4-bit
uniform vs 4-bit codebook weights, and 50 % sparsity; prints a table.

Usage (models are 8x8-digits classifiers, e.g. the test fixtures that
``tests/conftest.py`` caches under ``.pytest_cache/d/pfcompile-fixture-models``):

    PYTHONPATH=. python tools/quant_table.py .pytest_cache/d/pfcompile-fixture-models/*/*[!n].onnx

Calibration: 128 training images; evaluation: the 540 validation images
(``zoo.digits_splits(8)``). Drops are in top-1 points (positive = worse);
SNR is the logits' SNR against the fp32 model.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pfcompile import ir as pir
from pfcompile import zoo
from pfcompile.data import Dataset
from pfcompile.evaluate import evaluate
from pfcompile.passes.quantize import QuantConfig, quantize
from pfcompile.passes.sparsify import SparsifyConfig, sparsify

VARIANTS = {
    "int8 minmax": QuantConfig(),
    "int8 pct": QuantConfig(calib="percentile"),
    "int8 mse": QuantConfig(calib="mse"),
    "w4a8 uniform": QuantConfig(bits=4),
    "w4a8 codebook": QuantConfig(bits=4, codebook=True),
    "w4 uniform, no BC": QuantConfig(bits=4, bias_correction=False),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+", type=Path)
    args = ap.parse_args()
    d = zoo.digits_splits(8)
    calib = Dataset({"input": d["x_calib"]}, None)
    val = Dataset({"input": d["x_val"]}, d["y_val"])
    head = ["model", "fp32 top1"] + [f"{k} drop/SNR" for k in VARIANTS] + ["50% sparse drop",
                                                                         "bytes fp32", "bytes int8"]
    print(" | ".join(head))
    print(" | ".join("---" for _ in head))
    for path in args.models:
        model = pir.load(path)
        base = evaluate(model, val)
        row = [path.stem, f"{100 * base['top1']:.2f}"]
        int8_size = None
        for name, cfg in VARIANTS.items():
            r = evaluate(quantize(model, cfg, calib).model, val, reference=model)
            row.append(f"{100 * (base['top1'] - r['top1']):+.2f} / {r['output_snr_db']:.1f} dB")
            if name == "int8 minmax":
                int8_size = r["size_bytes"]
        s = evaluate(sparsify(model, SparsifyConfig(0.5)).model, val)
        row += [f"{100 * (base['top1'] - s['top1']):+.2f}", str(base["size_bytes"]), str(int8_size)]
        print(" | ".join(row))


if __name__ == "__main__":
    main()
