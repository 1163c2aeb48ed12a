"""A student that makes no progress in fine-tuning is detected: dead ReLUs, a loss that
stays at ln(classes), top-1 at chance; a healthy one is not flagged."""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import numpy_helper

from pfcompile.finetune.health import check_progress, dead_relu_fraction
from pfcompile.finetune.settings import FinetuneSettings

TRAIN_N, FULL_N = 192, 300   # demo validation images: training part, and with the rest


def _dead(model: onnx.ModelProto) -> onnx.ModelProto:
    """Every Conv bias at -1000: every ReLU after it outputs 0 for these inputs."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    biases = {n.input[2] for n in m.graph.node if n.op_type == "Conv" and len(n.input) > 2}
    for i, t in enumerate(m.graph.initializer):
        if t.name in biases:
            arr = np.full(numpy_helper.to_array(t).shape, -1000.0, np.float32)
            m.graph.initializer[i].CopyFrom(numpy_helper.from_array(arr, t.name))
    return m


def test_dead_relu_fraction(demo):
    m, train = demo.model, demo.val.subset(TRAIN_N)
    frac, channels = dead_relu_fraction(m, train)
    assert channels == 336 and frac < 0.2
    frac, channels = dead_relu_fraction(_dead(m), train)
    assert channels == 336 and frac == 1.0


def test_stuck_student_is_detected_and_healthy_one_is_not(demo):
    from pfcompile.finetune.train import finetune

    m, train, full = demo.model, demo.val.subset(TRAIN_N), demo.val.subset(FULL_N)
    val = type(full)({"input": full.inputs["input"][192:]}, full.labels[192:], "val")
    cfg = FinetuneSettings(epochs=2, alpha=0.0)        # labels only: the loss is cross-entropy
    stuck = check_progress(finetune(_dead(m), None, train, val, cfg), train, 10)
    assert stuck.stuck and len(stuck.reasons) == 3
    assert stuck.final_ce >= 0.9 * math.log(10)
    assert stuck.after_top1 <= 0.15 and stuck.dead_relu_fraction == 1.0
    assert any("ln(10)" in r for r in stuck.reasons)
    assert any("near chance" in r for r in stuck.reasons)
    assert any("336 of 336 ReLU channels" in r for r in stuck.reasons)
    ok = check_progress(finetune(m, None, train, val, cfg), train, 10)
    assert not ok.stuck and ok.reasons == () and ok.after_top1 > 0.9
    assert ok.final_ce < 0.5 * math.log(10)


def test_flat_loss_under_a_weak_teacher_is_a_sign_not_a_verdict(demo):
    """An undertrained teacher (17 % top-1) keeps the student's loss near ln(10); the student
    at 26 % top-1 with live ReLUs is not stuck, but the sign is reported."""
    from types import SimpleNamespace

    m, train = demo.model, demo.val.subset(TRAIN_N)
    res = SimpleNamespace(model=m, epochs=[SimpleNamespace(ce=2.2)], after_top1=0.26,
                          teacher_top1=0.17)
    p = check_progress(res, train, 10)
    assert not p.stuck and len(p.reasons) == 1 and "ln(10)" in p.reasons[0]
    chance = check_progress(SimpleNamespace(**{**vars(res), "after_top1": 0.11,
                                               "teacher_top1": 0.95}), train, 10)
    assert chance.stuck and any("near chance" in r for r in chance.reasons)
