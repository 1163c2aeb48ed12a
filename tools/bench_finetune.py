"""Accuracy recovery by fine-tuning, on digits: no fine-tune vs plain CE vs KD.

Two students, both made by the stand-ins in ``pfcompile.finetune.fixtures``
(until pfcompile's own prune/quantize passes land):

* pruned: SlimCNN(16, 32, 32) teacher on 8x8 digits, student (8, 18, 18) keeping
  the largest-L1 channels (~30 % of the MACs), fine-tuned with each seed;
* 4-bit: ``pfcompile/data/demo.onnx`` (32x32 digits) with per-tensor 4-bit
  weights and 4-bit activations (int8 containers), PTQ vs QAT with CE vs QAT with KD.

Accuracies are top-1 on the 540-image validation split with onnxruntime on the
exported ONNX graphs. Prints one table per student with mean and per-seed values.

    python tools/bench_finetune.py [--seeds 0 1 2] [--teacher-seeds 0 1] [--skip-4bit]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import torch
from rich.console import Console
from rich.table import Table

from pfcompile import zoo
from pfcompile.data import Dataset
from pfcompile.finetune import FinetuneSettings, finetune, onnx_top1
from pfcompile.finetune.fixtures import SlimCNN, conv_macs, pruned_student, quantize_weights_qdq

# FinetuneSettings' defaults are SGD lr 0.02, gradient norm clipped to 1, alpha 0.5, T 4
PRUNED_CE = {"epochs": 15}
QUANT = {"epochs": 1}
KD = {"alpha": 0.5, "temperature": 4.0}


def _row(values: list[float]) -> str:
    if len(values) == 1:
        return f"{100 * values[0]:.2f}"
    sd = statistics.stdev(values)
    return f"{100 * statistics.mean(values):.2f} ± {100 * sd:.2f}  (" + ", ".join(f"{100 * v:.2f}" for v in values) + ")"


def pruned(seeds: list[int], teacher_seeds: list[int], console: Console, work: Path) -> None:
    d = zoo.digits_splits(size=8, seed=0)
    train = Dataset({"input": d["x_train"]}, d["y_train"], "train")
    val = Dataset({"input": d["x_val"]}, d["y_val"], "val")
    for ts in teacher_seeds:
        torch.manual_seed(ts)
        teacher = SlimCNN((16, 32, 32))
        zoo.train_classifier(teacher, d["x_train"], d["y_train"], epochs=10, lr=0.05, seed=ts)
        student = pruned_student(teacher, (8, 18, 18))
        ratio = conv_macs(student, (1, 1, 8, 8)) / conv_macs(teacher, (1, 1, 8, 8))
        t = onnx.load(zoo.export_onnx(teacher, work / "teacher.onnx", (1, 1, 8, 8)))
        s = onnx.load(zoo.export_onnx(student, work / "student.onnx", (1, 1, 8, 8)))
        rows: dict[str, list[float]] = {"CE fine-tune": [], "KD fine-tune": []}
        secs: list[float] = []
        for seed in seeds:
            ce = finetune(s, t, train, val, FinetuneSettings(alpha=0.0, seed=seed, **PRUNED_CE))
            kd = finetune(s, t, train, val, FinetuneSettings(seed=seed, **PRUNED_CE, **KD))
            rows["CE fine-tune"].append(ce.after_top1)
            rows["KD fine-tune"].append(kd.after_top1)
            secs += [ce.seconds, kd.seconds]
        table = Table(title=f"pruned student ({ratio:.1%} of MACs), teacher seed {ts}, "
                            f"{PRUNED_CE} {KD}, fine-tune seeds {seeds}")
        table.add_column("model")
        table.add_column("val top-1 % (mean ± sd, per seed)")
        table.add_row("teacher (fp32)", _row([onnx_top1(t, val)]))
        table.add_row("student, no fine-tune", _row([onnx_top1(s, val)]))
        for k, v in rows.items():
            table.add_row(k, _row(v))
        kd_wins = sum(k > c for k, c in zip(rows["KD fine-tune"], rows["CE fine-tune"]))
        table.caption = f"KD > CE in {kd_wins}/{len(seeds)} seeds; median fine-tune run {statistics.median(secs):.1f} s"
        console.print(table)


def quant4(seeds: list[int], console: Console) -> None:
    teacher = onnx.load(Path(__file__).resolve().parents[1] / "pfcompile" / "data" / "demo.onnx")
    d = zoo.digits_splits(size=32, seed=0)
    train = Dataset({"input": d["x_train"]}, d["y_train"], "train32")
    val = Dataset({"input": d["x_val"]}, d["y_val"], "val32")
    calib = d["x_calib"]
    table = Table(title=f"demo.onnx, 4-bit weights per tensor + 4-bit activations, {QUANT} {KD}, seeds {seeds}")
    table.add_column("model")
    table.add_column("val top-1 % (mean ± sd, per seed)")
    student = quantize_weights_qdq(teacher, 4, per_channel=False, act_bits=4, calib=calib)
    fp32, ptq = onnx_top1(teacher, val), onnx_top1(student, val)
    ce = [finetune(student, teacher, train, val, FinetuneSettings(alpha=0.0, seed=s, **QUANT)).after_top1
          for s in seeds]
    kd = [finetune(student, teacher, train, val, FinetuneSettings(seed=s, **QUANT, **KD)).after_top1
          for s in seeds]
    for name, v in (("fp32 teacher", [fp32]), ("4-bit PTQ", [ptq]), ("4-bit QAT, CE", ce), ("4-bit QAT, KD", kd)):
        table.add_row(name, _row(v))
    rec = [(k - ptq) / (fp32 - ptq) for k in kd]
    table.caption = "KD recovers " + ", ".join(f"{100 * r:.0f}%" for r in rec) + " of the PTQ loss"
    console.print(table)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--teacher-seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--skip-4bit", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    np.random.seed(0)
    console = Console()
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        pruned(args.seeds, args.teacher_seeds, console, Path(tmp))
    if not args.skip_4bit:
        quant4(args.seeds, console)
    console.print(f"total {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
