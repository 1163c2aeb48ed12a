"""Did fine-tuning make progress? A student can come out of training no better than a
constant: a heavily pruned model whose every ReLU is dead passes no gradient, its
cross-entropy stays at ``ln(classes)`` (uniform guessing) and its top-1 at chance (seen:
a 70 %-L1-pruned MobileNetV2-style model at 11 % top-1, loss ln 10 for 10 epochs).
:func:`check_progress` looks for three signs and says which it found:

* loss: the last epoch's cross-entropy is at least 90 % of ``ln(classes)``;
* accuracy: validation top-1 at most 1.5x chance (``1 / classes``; 3 classes or more);
* dead ReLUs: at least 90 % of the channels of the ReLU-like nodes (``Relu``, and
  ``Clip`` with a lower bound of 0, i.e. ReLU6) are <= 0 on every one of up to 64
  training images (the reference session, :mod:`pfcompile.reference`).

The student is **stuck** (a caller must not keep it) when its ReLUs are dead, or its
top-1 is at chance while the loss stayed flat or the teacher is better than chance. A
flat loss alone is not enough: a teacher that is itself near chance (an undertrained
model) leaves the student's loss high for a reason that is not the student's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from pfcompile.data import Dataset
from pfcompile.reference import reference_session

__all__ = ["Progress", "check_progress", "dead_relu_fraction"]

LOSS_FRACTION = 0.9     # of ln(classes)
CHANCE_FACTOR = 1.5     # x chance top-1
DEAD_FRACTION = 0.9     # of ReLU channels


@dataclass(frozen=True)
class Progress:
    stuck: bool
    reasons: tuple[str, ...]
    classes: int
    final_ce: float | None
    after_top1: float | None
    dead_relu_fraction: float | None
    relu_channels: int

    def to_json(self) -> dict:
        return {"stuck": self.stuck, "reasons": list(self.reasons), "classes": self.classes,
                "final_ce": self.final_ce, "after_top1": self.after_top1,
                "dead_relu_fraction": self.dead_relu_fraction, "relu_channels": self.relu_channels}


def _const(model: onnx.ModelProto, name: str) -> np.ndarray | None:
    for t in model.graph.initializer:
        if t.name == name:
            return numpy_helper.to_array(t)
    for n in model.graph.node:
        if n.op_type == "Constant" and name in n.output:
            for a in n.attribute:
                if a.name == "value":
                    return numpy_helper.to_array(a.t)
    return None


def _relu_outputs(model: onnx.ModelProto) -> list[str]:
    out = []
    for n in model.graph.node:
        if n.op_type == "Relu":
            out.append(n.output[0])
        elif n.op_type == "Clip" and len(n.input) > 1 and n.input[1]:
            lo = _const(model, n.input[1])
            if lo is not None and lo.size == 1 and float(lo) == 0.0:
                out.append(n.output[0])
    return out


def dead_relu_fraction(model: onnx.ModelProto, data: Dataset, n: int = 64) -> tuple[float | None, int]:
    """``(fraction of ReLU channels <= 0 on all of the first n samples, channels)``;
    ``(None, 0)`` when the model has no ReLU-like node."""
    names = _relu_outputs(model)
    if not names:
        return None, 0
    sess = reference_session(model, extra_outputs=names, threads=1)
    inits = {t.name for t in model.graph.initializer}
    inputs = [v.name for v in model.graph.input if v.name not in inits]
    k = min(n, len(data))
    if len(inputs) == 1 and len(data.inputs) == 1:
        feeds = [{inputs[0]: next(iter(data.inputs.values()))[i:i + 1]} for i in range(k)]
    else:
        feeds = [{name: data.inputs[name][i:i + 1] for name in inputs} for i in range(k)]
    peak: dict[str, np.ndarray] = {}
    for feed in feeds:          # one image at a time: a fixed-batch graph runs too
        outs = sess.run(names, feed)
        for name, y in zip(names, outs):
            y = np.asarray(y)
            ch = y.reshape(y.shape[0], y.shape[1], -1).max(axis=(0, 2)) if y.ndim >= 2 else y.reshape(1)
            peak[name] = ch if name not in peak else np.maximum(peak[name], ch)
    total = sum(p.size for p in peak.values())
    dead = sum(int(np.sum(p <= 0)) for p in peak.values())
    return (dead / total if total else None), total


def check_progress(result, train: Dataset, classes: int) -> Progress:
    """The signs of a student that did not learn (module docstring); ``result`` is a
    :class:`~pfcompile.finetune.train.FinetuneResult`."""
    reasons: list[str] = []
    ln_c = math.log(classes) if classes > 1 else 0.0
    last = result.epochs[-1] if result.epochs else None
    ce = last.ce if last is not None else None
    if ce is not None and classes > 1 and ce >= LOSS_FRACTION * ln_c:
        reasons.append(f"cross-entropy {ce:.3f} after {len(result.epochs)} epochs is still at "
                       f"ln({classes}) = {ln_c:.3f}, the loss of a uniform guess")
    after = result.after_top1
    if after is not None and classes >= 3 and after <= CHANCE_FACTOR / classes:
        reasons.append(f"top-1 {100 * after:.1f} % is near chance ({100 / classes:.1f} % for "
                       f"{classes} classes)")
    frac, channels = dead_relu_fraction(result.model, train)
    dead = frac is not None and frac >= DEAD_FRACTION
    if dead:
        reasons.append(f"{round(frac * channels)} of {channels} ReLU channels never fire on "
                       f"{min(64, len(train))} training images (dead)")
    flat = ce is not None and classes > 1 and ce >= LOSS_FRACTION * ln_c
    chance = after is not None and classes >= 3 and after <= CHANCE_FACTOR / classes
    teacher = getattr(result, "teacher_top1", None)
    teacher_ok = teacher is None or teacher > CHANCE_FACTOR / classes
    stuck = dead or (chance and (flat or teacher_ok))
    return Progress(stuck, tuple(reasons), classes, ce, after, frac, channels)
