"""Accuracy recovery by fine-tuning, on digits: no fine-tune vs plain CE vs KD.

Students come from pfcompile's own passes:

* pruned: zoo.PlainCNN trained on 8x8 digits (the test fixture's recipe: 6 epochs,
  lr 0.05, per teacher seed), pruned by ``pfcompile.passes.prune`` (l1) at
  ``--ratio`` (0.46 leaves ~30 % of the MACs, measured with ``model_stats``), then
  fine-tuned with CE (alpha 0) and with KD, once per fine-tune seed;
* 4-bit: ``pfcompile/data/demo.onnx`` (32x32 digits) through
  ``pfcompile.passes.quantize`` with 4-bit per-channel weights and 4-bit
  activations, with and without bias correction: PTQ vs QAT-CE vs QAT-KD.

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
import onnx_ir as ir
import torch
from rich.console import Console
from rich.table import Table

from pfcompile import zoo
from pfcompile.data import Dataset
from pfcompile.finetune import FinetuneSettings, finetune, onnx_top1
from pfcompile.passes.prune import prune
from pfcompile.passes.prune_config import PruneConfig
from pfcompile.passes.quantize import QuantConfig, quantize
from pfcompile.passes.stats import model_stats

# FinetuneSettings' defaults are SGD lr 0.02, gradient norm clipped to 1, alpha 0.5, T 4
PRUNED = {"epochs": 10}
QUANT = {"epochs": 1}
KD = {"alpha": 0.5, "temperature": 4.0}


def _row(values: list[float]) -> str:
    if len(values) == 1:
        return f"{100 * values[0]:.2f}"
    sd = statistics.stdev(values)
    return f"{100 * statistics.mean(values):.2f} ± {100 * sd:.2f}  (" + ", ".join(f"{100 * v:.2f}" for v in values) + ")"


def pruned(seeds: list[int], teacher_seeds: list[int], ratio: float, console: Console, work: Path) -> None:
    d = zoo.digits_splits(size=8, seed=0)
    train = Dataset({"input": d["x_train"]}, d["y_train"], "train")
    val = Dataset({"input": d["x_val"]}, d["y_val"], "val")
    for ts in teacher_seeds:
        torch.manual_seed(ts)
        net = zoo.PlainCNN()
        zoo.train_classifier(net, d["x_train"], d["y_train"], epochs=6, lr=0.05, batch=64, seed=ts)
        t = onnx.load(zoo.export_onnx(net, work / "teacher.onnx", (1, 1, 8, 8)))
        s = ir.to_proto(prune(t, PruneConfig(ratio=ratio, criterion="l1")).model)
        macs = model_stats(s).macs / model_stats(t).macs
        rows: dict[str, list[float]] = {"CE fine-tune": [], "KD fine-tune": []}
        secs: list[float] = []
        for seed in seeds:
            ce = finetune(s, t, train, val, FinetuneSettings(alpha=0.0, seed=seed, **PRUNED))
            kd = finetune(s, t, train, val, FinetuneSettings(seed=seed, **PRUNED, **KD))
            rows["CE fine-tune"].append(ce.after_top1)
            rows["KD fine-tune"].append(kd.after_top1)
            secs += [ce.seconds, kd.seconds]
        table = Table(title=f"PlainCNN pruned (l1, ratio {ratio}) to {macs:.1%} of MACs, teacher seed {ts}, "
                            f"{PRUNED} {KD}, fine-tune seeds {seeds}")
        table.add_column("model")
        table.add_column("val top-1 % (mean ± sd, per seed)")
        table.add_row("teacher (fp32)", _row([onnx_top1(t, val)]))
        table.add_row("pruned, no fine-tune", _row([onnx_top1(s, val)]))
        for k, v in rows.items():
            table.add_row(k, _row(v))
        kd_wins = sum(k > c for k, c in zip(rows["KD fine-tune"], rows["CE fine-tune"]))
        ties = sum(k == c for k, c in zip(rows["KD fine-tune"], rows["CE fine-tune"]))
        table.caption = (f"KD > CE in {kd_wins}/{len(seeds)} seeds ({ties} ties); "
                         f"median fine-tune run {statistics.median(secs):.1f} s")
        console.print(table)


def quant4(seeds: list[int], console: Console) -> None:
    teacher = onnx.load(Path(__file__).resolve().parents[1] / "pfcompile" / "data" / "demo.onnx")
    d = zoo.digits_splits(size=32, seed=0)
    train = Dataset({"input": d["x_train"]}, d["y_train"], "train32")
    val = Dataset({"input": d["x_val"]}, d["y_val"], "val32")
    calib = Dataset({"input": d["x_calib"]}, None, "calib32")
    fp32 = onnx_top1(teacher, val)
    for bc in (False, True):
        cfg = QuantConfig(bits=4, act_bits=4, bias_correction=bc)
        student = ir.to_proto(quantize(teacher, cfg, calib).model)
        ptq = onnx_top1(student, val)
        ce = [finetune(student, teacher, train, val, FinetuneSettings(alpha=0.0, seed=s, **QUANT)).after_top1
              for s in seeds]
        kd = [finetune(student, teacher, train, val, FinetuneSettings(seed=s, **QUANT, **KD)).after_top1
              for s in seeds]
        table = Table(title=f"demo.onnx, quantize(bits=4, act_bits=4, bias_correction={bc}), "
                            f"{QUANT} {KD}, seeds {seeds}")
        table.add_column("model")
        table.add_column("val top-1 % (mean ± sd, per seed)")
        for name, v in (("fp32 teacher", [fp32]), ("4-bit PTQ", [ptq]), ("4-bit QAT, CE", ce),
                        ("4-bit QAT, KD", kd)):
            table.add_row(name, _row(v))
        if fp32 > ptq:
            rec = [(k - ptq) / (fp32 - ptq) for k in kd]
            table.caption = "KD recovers " + ", ".join(f"{100 * r:.0f}%" for r in rec) + " of the PTQ loss"
        else:
            table.caption = "PTQ lost nothing: nothing to recover"
        console.print(table)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--teacher-seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--ratio", type=float, default=0.46)
    ap.add_argument("--skip-4bit", action="store_true")
    ap.add_argument("--skip-pruned", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    np.random.seed(0)
    console = Console()
    t0 = time.time()
    if not args.skip_pruned:
        with tempfile.TemporaryDirectory() as tmp:
            pruned(args.seeds, args.teacher_seeds, args.ratio, console, Path(tmp))
    if not args.skip_4bit:
        quant4(args.seeds, console)
    console.print(f"total {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
