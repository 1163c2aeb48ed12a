"""Distillation fine-tuning: recovery on digits (pruned and 4-bit students), clear
errors on bad input, and the CLI."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnx_ir as ir
import pytest
import torch
import typer
from typer.testing import CliRunner

from pfcompile import zoo
from pfcompile.cli import app
from pfcompile.cli import finetune as finetune_cli
from pfcompile.data import Dataset, load_npz
from pfcompile.errors import ConfigError, DataError, ModelError
from pfcompile.finetune import FinetuneSettings, data_specs, finetune, onnx_top1
from pfcompile.passes.prune import prune
from pfcompile.passes.prune_config import PruneConfig
from pfcompile.passes.quantize import QuantConfig, quantize
from pfcompile.passes.stats import model_stats
from pfcompile.paths import demo_paths

DEMO = demo_paths()[0]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The machine is shared: a single torch thread is faster than two contended ones."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def cli_app() -> typer.Typer:
    """A command group holding only ``finetune`` (typer runs a lone command as the root)."""
    group = typer.Typer()
    group.callback()(lambda: None)
    finetune_cli.register(group)
    return group


@pytest.fixture(scope="module")
def digits():
    d = zoo.digits_splits(size=8, seed=0)
    return (Dataset({"input": d["x_train"]}, d["y_train"], "train"),
            Dataset({"input": d["x_val"]}, d["y_val"], "val"))


PRUNE_RATIO = 0.46  # l1 channel pruning of PlainCNN to 29.9 % of its MACs


@pytest.fixture(scope="module")
def pruned(tmp_path_factory, digits):
    """Teacher: zoo.PlainCNN trained on 8x8 digits (the conftest fixture's recipe, but
    on one thread here: bit-reproducible, so the accuracy ordering below is too).
    Student: the teacher through ``pfcompile.passes.prune`` (l1) at PRUNE_RATIO."""
    train, _ = digits
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        net = zoo.PlainCNN()
        zoo.train_classifier(net, train.inputs["input"], train.labels, epochs=6, lr=0.05, batch=64, seed=0)
    finally:
        torch.set_num_threads(threads)
    d = tmp_path_factory.mktemp("pruned")
    teacher = onnx.load(zoo.export_onnx(net, d / "teacher.onnx", (1, 1, 8, 8)))
    student = ir.to_proto(prune(teacher, PruneConfig(ratio=PRUNE_RATIO, criterion="l1")).model)
    onnx.save(student, d / "student.onnx")
    ratio = model_stats(student).macs / model_stats(teacher).macs
    return teacher, student, ratio, d


def _names(m: onnx.ModelProto):
    return ([(n.name, n.op_type, list(n.input), list(n.output)) for n in m.graph.node],
            [i.name for i in m.graph.input], [o.name for o in m.graph.output],
            sorted((t.name, tuple(t.dims), t.data_type) for t in m.graph.initializer))


def test_kd_and_ce_recover_the_pruned_student_over_seeds(pruned, digits):
    """Fine-tuning recovers a broken pruned student, with and without the teacher.

    An ordering of trained accuracies is only a claim when it holds beyond the noise: on
    540 validation images one run's top-1 has ~1 point of standard error, and float
    rounding differs between CPUs (seen: KD 0.9556 vs CE 0.9593 on an AVX2 EPYC, KD ahead
    by 0.2-0.4 points on a Xeon). So the claims here are taken over three fine-tune seeds:
    each of KD and CE beats no fine-tuning by a wide margin in every seed, and KD's mean is
    not below CE's by more than one point (distillation never costs accuracy here)."""
    teacher, student, ratio, _ = pruned
    train, val = digits
    assert 0.27 <= ratio <= 0.33
    ce_top1, kd_top1 = [], []
    for seed in (0, 1, 2):
        common = {"epochs": 10, "optimizer": "sgd", "lr": 0.02, "max_grad_norm": 1.0, "seed": seed}
        ce = finetune(student, teacher, train, val, FinetuneSettings(alpha=0.0, **common))
        kd = finetune(student, teacher, train, val,
                      FinetuneSettings(alpha=0.5, temperature=4.0, **common))
        assert not ce.used_teacher and ce.used_labels
        assert kd.used_teacher and kd.used_labels
        assert ce.before_top1 == kd.before_top1 < 0.5  # pruning without fine-tuning breaks it
        assert min(ce.after_top1, kd.after_top1) > ce.before_top1 + 0.3
        assert kd.after_top1 <= kd.teacher_top1 + 0.02
        ce_top1.append(ce.after_top1)
        kd_top1.append(kd.after_top1)
    print(f"\npruned to {ratio:.1%} MACs: teacher {kd.teacher_top1:.4f}, no fine-tune "
          f"{ce.before_top1:.4f}, CE {np.round(ce_top1, 4)}, KD {np.round(kd_top1, 4)}")
    assert np.mean(kd_top1) >= np.mean(ce_top1) - 0.01
    # the result is the student's graph with new weights, same names and pruned shapes
    assert _names(kd.model) == _names(student)
    assert [e.epoch for e in kd.epochs] == list(range(1, 11))
    assert all(e.kd is not None and e.ce is not None and e.val_top1 is not None for e in kd.epochs)
    assert kd.epochs[-1].loss < kd.epochs[0].loss


@pytest.mark.slow
def test_4bit_qat_with_kd_recovers_half_the_ptq_loss():
    """demo.onnx (32x32 digits) through ``pfcompile.passes.quantize``: 4-bit per-channel
    weights and 4-bit activations, no bias correction (with it, 4-bit PTQ loses 0.6
    points on this model and there is little to recover)."""
    teacher = onnx.load(DEMO)
    d = zoo.digits_splits(size=32, seed=0)
    train = Dataset({"input": d["x_train"]}, d["y_train"], "train32")
    val = Dataset({"input": d["x_val"]}, d["y_val"], "val32")
    calib = Dataset({"input": d["x_calib"]}, None, "calib32")
    cfg = QuantConfig(bits=4, act_bits=4, bias_correction=False)
    student = ir.to_proto(quantize(teacher, cfg, calib).model)
    r = finetune(student, teacher, train, val, FinetuneSettings(epochs=1, alpha=0.5, temperature=4.0))
    loss = r.teacher_top1 - r.before_top1
    print(f"\n4-bit: fp32 {r.teacher_top1:.4f}, PTQ {r.before_top1:.4f}, QAT+KD {r.after_top1:.4f}")
    assert loss > 0.01  # 4-bit PTQ without bias correction loses 1.85 points (10 of 540 images)
    assert r.after_top1 - r.before_top1 >= 0.5 * loss
    # quantized weights stay int8 containers of symmetric 4-bit codes
    qnames = [t.name for t in student.graph.initializer if t.name.endswith("_q")]
    assert qnames
    for t in r.model.graph.initializer:
        if t.name in qnames:
            q = onnx.numpy_helper.to_array(t)
            assert q.dtype == np.int8 and q.min() >= -7 and q.max() <= 7
    assert _names(r.model) == _names(student)


def test_distillation_alone_without_labels(pruned, digits):
    teacher, student, _, _ = pruned
    train, val = digits
    unlabeled = Dataset(train.inputs, None, "unlabeled")
    r = finetune(student, teacher, unlabeled, val,
                 FinetuneSettings(epochs=5, optimizer="sgd", lr=0.02, max_grad_norm=1.0))
    assert r.used_teacher and not r.used_labels
    assert all(e.ce is None and e.kd is not None for e in r.epochs)
    assert r.after_top1 > r.before_top1 + 0.3


def test_no_labels_and_no_teacher_is_a_clear_error(pruned, digits):
    _, student, _, _ = pruned
    train, _ = digits
    with pytest.raises(DataError, match="no labels.*no teacher"):
        finetune(student, None, Dataset(train.inputs, None, "x_only.npz"), None, FinetuneSettings(epochs=1))


def test_teacher_student_output_shape_mismatch_is_a_clear_error(pruned, digits, tmp_path):
    _, student, _, _ = pruned
    train, _ = digits
    other = onnx.load(zoo.export_onnx(zoo.PlainCNN(classes=12), tmp_path / "t12.onnx", (1, 1, 8, 8)))
    with pytest.raises(ModelError, match=r"teacher output 'logits' has shape \(N, 12\).*student output "
                                         r"'logits' has \(N, 10\)"):
        finetune(student, other, train, None, FinetuneSettings(epochs=1))


def test_validation_without_labels_and_bad_settings_are_errors(pruned, digits):
    teacher, student, _, _ = pruned
    train, val = digits
    with pytest.raises(DataError, match="validation data.*no labels"):
        finetune(student, teacher, train, Dataset(val.inputs, None), FinetuneSettings(epochs=1))
    with pytest.raises(ConfigError, match="alpha"):
        FinetuneSettings(alpha=1.5)
    with pytest.raises(ConfigError, match="temperature"):
        FinetuneSettings(temperature=0)
    bad = Dataset(train.inputs, train.labels + 5, "shifted")
    with pytest.raises(DataError, match=r"labels in shifted span \[5, 14\].*10 classes"):
        finetune(student, None, bad, None, FinetuneSettings(epochs=1))


def test_finetune_is_registered_in_the_pfcompile_cli():
    assert "finetune" in [c.name for c in app.registered_commands]


def test_cli_finetune_writes_model_and_reports(cli_app, pruned, digits, tmp_path):
    _, student, _, d = pruned
    train, val = digits
    np.savez(tmp_path / "train.npz", x=train.inputs["input"][:640], y=train.labels[:640])
    np.savez(tmp_path / "val.npz", x=val.inputs["input"], y=val.labels)
    out, js = tmp_path / "out" / "ft.onnx", tmp_path / "ft.json"
    res = CliRunner().invoke(cli_app, ["finetune", str(d / "student.onnx"), "--teacher", str(d / "teacher.onnx"),
                                   "--data", str(tmp_path / "train.npz"), "--val", str(tmp_path / "val.npz"),
                                   "--epochs", "3", "--optimizer", "sgd", "--lr", "0.02", "--max-grad-norm", "1",
                                   "-o", str(out),
                                   "--json", str(js)])
    assert res.exit_code == 0, res.output
    assert "val top-1" in res.output and "student after" in res.output
    model = onnx.load(out)
    assert _names(model) == _names(student)
    report = json.loads(js.read_text())
    assert report["after_top1"] == onnx_top1(model, val) > report["before_top1"]
    assert len(report["epochs"]) == 3 and report["used_teacher"] is True


def test_cli_without_labels_or_teacher_fails_clearly(cli_app, pruned, digits, tmp_path):
    _, _, _, d = pruned
    train, _ = digits
    np.savez(tmp_path / "nolabels.npz", x=train.inputs["input"][:64])
    res = CliRunner().invoke(cli_app, ["finetune", str(d / "student.onnx"), "--data", str(tmp_path / "nolabels.npz"),
                                   "-o", str(tmp_path / "o.onnx")])
    assert res.exit_code != 0
    assert isinstance(res.exception, DataError) and "nolabels.npz" in str(res.exception)
    assert not (tmp_path / "o.onnx").exists()


def test_data_specs_accept_a_dynamic_batch(pruned, tmp_path):
    _, student, _, _ = pruned
    dyn = onnx.ModelProto()
    dyn.CopyFrom(student)
    dyn.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"
    assert [(s.name, s.shape) for s in data_specs(dyn)] == [("input", (1, 1, 8, 8))]
    np.savez(tmp_path / "d.npz", x=np.zeros((5, 1, 8, 8), np.float32))
    assert len(load_npz(tmp_path / "d.npz", data_specs(dyn))) == 5
    np.savez(tmp_path / "bad.npz", x=np.zeros((5, 1, 9, 9), np.float32))
    with pytest.raises(DataError, match="bad.npz.*shape \\(5, 1, 9, 9\\).*\\(N, 1, 8, 8\\)"):
        load_npz(tmp_path / "bad.npz", data_specs(dyn))


def test_run_finetune_from_files_writes_the_model_beside_the_candidate(pruned, digits, tmp_path):
    from pfcompile.finetune import run_finetune

    _, student, _, d = pruned
    train, val = digits
    cand = tmp_path / "cand" / "model.onnx"
    cand.parent.mkdir()
    onnx.save(student, cand)
    np.savez(tmp_path / "train.npz", x=train.inputs["input"], y=train.labels)
    np.savez(tmp_path / "val.npz", x=val.inputs["input"], y=val.labels)
    report = run_finetune(cand, d / "teacher.onnx", tmp_path / "train.npz", tmp_path / "val.npz",
                          FinetuneSettings(epochs=2))
    out = tmp_path / "cand" / "model_ft.onnx"
    assert report["model_path"] == str(out) and report["candidate_path"] == str(cand)
    model = onnx.load(out)
    assert _names(model) == _names(student)
    assert report["after_top1"] == onnx_top1(model, val) > report["before_top1"]
    assert report["used_teacher"] and len(report["epochs"]) == 2
    json.dumps(report)  # JSON-ready for the search log
    with pytest.raises(DataError, match="missing.npz"):
        run_finetune(cand, None, tmp_path / "missing.npz", None, FinetuneSettings(epochs=1),
                     out_path=tmp_path / "never.onnx")
    assert not (tmp_path / "never.onnx").exists()


def _with_softmax(m: onnx.ModelProto) -> onnx.ModelProto:
    """``m`` with a Softmax after its (logits) output, as inference exports often end."""
    out = onnx.ModelProto()
    out.CopyFrom(m)
    g = out.graph
    logits = g.output[0].name
    g.node.append(onnx.helper.make_node("Softmax", [logits], ["probs"], axis=1, name="softmax"))
    probs = onnx.ValueInfoProto()
    probs.CopyFrom(g.output[0])
    probs.name = "probs"
    g.output[0].CopyFrom(probs)
    return out


def test_a_trailing_softmax_is_trained_through_its_logits(pruned, digits):
    """A student and teacher that end in Softmax train on the Softmax's input: the weights
    learned equal those learned on the same graphs without it (bit for bit: one thread,
    one seed), and the result still ends in the Softmax, outputs summing to 1."""
    teacher, student, _, _ = pruned
    train, val = digits
    s = FinetuneSettings(epochs=2, seed=0)
    plain = finetune(student, teacher, train.subset(256), val, s)
    soft = finetune(_with_softmax(student), _with_softmax(teacher), train.subset(256), val, s)
    assert plain.logits is None
    assert soft.logits == student.graph.output[0].name
    w_plain = {t.name: onnx.numpy_helper.to_array(t) for t in plain.model.graph.initializer}
    w_soft = {t.name: onnx.numpy_helper.to_array(t) for t in soft.model.graph.initializer}
    assert w_plain.keys() == w_soft.keys()
    assert all(np.array_equal(w_plain[k], w_soft[k]) for k in w_plain)
    assert [e.loss for e in soft.epochs] == [e.loss for e in plain.epochs]
    assert soft.model.graph.node[-1].op_type == "Softmax"
    assert soft.model.graph.output[0].name == "probs"
    from pfcompile.finetune.train import onnx_logits
    p = onnx_logits(soft.model, val.subset(16), "student")
    assert np.allclose(p.sum(axis=1), 1.0, atol=1e-5)
    assert soft.after_top1 == plain.after_top1
