"""Train the built-in demo model and write pfcompile/data/demo.onnx,
demo_val.npz (x, y) and demo_calib.npz (x).

The demo: sklearn's digits upsampled to 32x32, a small ResNet-style CNN with one
depthwise block (pfcompile.zoo.DemoNet), trained on CPU in well under 2 minutes.

    python tools/make_demo_model.py [--out pfcompile/data] [--epochs 12]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from pfcompile import zoo


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "pfcompile" / "data"))
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--size", type=int, default=32)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    t0 = time.time()
    d = zoo.digits_splits(size=args.size, seed=0)
    model = zoo.DemoNet(in_ch=1, classes=10, w=16)
    zoo.train_classifier(model, d["x_train"], d["y_train"], epochs=args.epochs, lr=0.1,
                         augment_shift=2, seed=0)
    acc = zoo.accuracy(model, d["x_val"], d["y_val"])
    path = zoo.export_onnx(model, out / "demo.onnx", (1, 1, args.size, args.size))
    onnx.checker.check_model(onnx.load(path))
    np.savez_compressed(out / "demo_val.npz", x=d["x_val"], y=d["y_val"])
    np.savez_compressed(out / "demo_calib.npz", x=d["x_calib"])

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits = np.concatenate([sess.run(None, {"input": d["x_val"][i:i + 1]})[0] for i in range(len(d["x_val"]))])
    ort_acc = float((logits.argmax(1) == d["y_val"]).mean())
    print(f"demo model: torch val top-1 {acc:.4f}, onnxruntime val top-1 {ort_acc:.4f}, "
          f"{time.time() - t0:.1f} s -> {path}")


if __name__ == "__main__":
    main()
