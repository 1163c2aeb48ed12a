"""Channel pruning: acceptance on the seven fixture topologies, criteria, config, errors."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from _ort import assert_close_rel, run, snr_db
from conftest import FIXTURE_MODELS
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from pfcompile import ir as pir
from pfcompile.cli import app
from pfcompile.data import Dataset
from pfcompile.errors import ConfigError, DataError, PassError
from pfcompile.passes.depgraph import dependency_groups
from pfcompile.passes.prune import PruneConfig, keep_count, prune
from pfcompile.passes.report import prune_file
from pfcompile.passes.stats import model_stats

runner = CliRunner()


def _calib(digits, n: int = 64) -> Dataset:
    return Dataset({"input": digits.x_calib[:n]}, None)


def test_keep_count_rounding_rules():
    assert keep_count(32, 0.5) == 16
    assert keep_count(12, 0.5) == 6
    assert keep_count(12, 0.5, round_to=8) == 8          # nearest multiple of 8
    assert keep_count(6, 0.5, round_to=8) == 6           # never more than C
    assert keep_count(32, 0.6, partitions=4) == 12       # even across 4 conv groups
    assert keep_count(10, 0.99) == 1                     # at least one channel
    assert keep_count(64, 0.0, round_to=8) == 64


@pytest.mark.parametrize("name", ["PlainCNN", "ResNetTiny", "MobileNetV2Tiny"])
def test_ratio_zero_is_identity_within_1e5(trained, digits, tmp_path, name):
    tm = trained(name)
    r = prune(pir.load(tm.onnx), PruneConfig(ratio=0.0))
    assert not r.modified
    ref = run(tm.onnx, digits.x_val[:20])
    assert_close_rel(ref, run(r.model, digits.x_val[:20]), 1e-5)
    summary = prune_file(tm.onnx_bn, tmp_path / "p0.onnx", PruneConfig(ratio=0.0))
    assert summary["macs_after"] == summary["macs_before"]
    assert_close_rel(ref, run(tmp_path / "p0.onnx", digits.x_val[:20]), 1e-5)


@pytest.mark.parametrize("name", FIXTURE_MODELS)
def test_prune_half_of_every_topology(trained, digits, name):
    tm = trained(name)
    model = pir.load(tm.onnx)
    groups = dependency_groups(model)
    r = prune(model, PruneConfig(ratio=0.5))
    assert r.modified
    proto = pir.to_proto(r.model)
    onnx.checker.check_model(proto, full_check=True)
    assert model_stats(r.model).macs < 0.5 * model_stats(model).macs
    assert model_stats(r.model).params < model_stats(model).params
    out = run(proto, digits.x_val[:8])
    assert out.shape == (8, 10) and np.isfinite(out).all()
    # every prunable group physically lost half its channels; ids are stable
    after = {g.id: g for g in dependency_groups(r.model)}
    for g in groups:
        want = keep_count(g.channels, 0.5, 1, g.partitions) if g.prunable else g.channels
        assert after[g.id].channels == want, g.id
    assert "Gather" not in {n.op_type for n in r.model.graph}


@pytest.mark.parametrize(("name", "ratio", "round_to"), [
    ("MobileNetV2Tiny", 0.1, 1), ("MobileNetV2Tiny", 0.7, 8), ("DenseNetTiny", 0.3, 4),
    ("GroupedConvNet", 0.6, 1), ("PlainCNN", 0.9, 1), ("SENetTiny", 0.6, 8)])
def test_any_ratio_and_round_gives_valid_model_with_expected_widths(trained, digits, name,
                                                                   ratio, round_to):
    model = pir.load(trained(name).onnx)
    groups = dependency_groups(model)
    r = prune(model, PruneConfig(ratio=ratio, round_to=round_to))
    onnx.checker.check_model(pir.to_proto(r.model), full_check=True)
    after = {g.id: g.channels for g in dependency_groups(r.model)}
    for g in groups:
        want = keep_count(g.channels, ratio, round_to, g.partitions) if g.prunable \
            else g.channels
        assert after[g.id] == want, g.id
    assert run(r.model, digits.x_val[:2]).shape == (2, 10)


@pytest.mark.parametrize("name", ["ResNetTiny", "MobileNetV2Tiny"])
def test_lasso_with_reconstruction_beats_l1_on_output_snr(trained, digits, name):
    tm = trained(name)
    model = pir.load(tm.onnx)
    x = digits.x_val[:100]
    ref = run(tm.onnx, x)
    l1 = prune(model, PruneConfig(ratio=0.5, criterion="l1")).model
    lasso = prune(model, PruneConfig(ratio=0.5, criterion="lasso"), _calib(digits)).model
    assert model_stats(lasso).macs == model_stats(l1).macs  # same shapes, like for like
    snr_l1, snr_lasso = snr_db(ref, run(l1, x)), snr_db(ref, run(lasso, x))
    assert snr_lasso > snr_l1 + 1.0, (snr_l1, snr_lasso)


def test_bn_criterion_keeps_largest_gammas(trained):
    model = pir.load(trained("PlainCNN").onnx_bn)
    bn = next(n for n in model.graph if n.op_type == "BatchNormalization")
    gamma = np.abs(bn.inputs[1].const_value.numpy())
    r = prune(model, PruneConfig(ratio=0.5, criterion="bn"))
    bn_after = next(n for n in r.model.graph if n.op_type == "BatchNormalization")
    kept = np.sort(np.abs(bn_after.inputs[1].const_value.numpy()))
    np.testing.assert_allclose(kept, np.sort(gamma)[len(gamma) // 2:])
    with pytest.raises(PassError, match="BatchNormalization"):
        prune(pir.load(trained("PlainCNN").onnx), PruneConfig(ratio=0.5, criterion="bn"))


def test_round_keeps_multiples(trained):
    r = prune(pir.load(trained("ResNetTiny").onnx), PruneConfig(ratio=0.3, round_to=8))
    for g in dependency_groups(r.model):
        if g.prunable:
            assert g.channels % 8 == 0, (g.id, g.channels)


def test_per_group_config_by_group_id_or_layer_name(trained):
    model = pir.load(trained("ResNetTiny").onnx)
    groups = [g for g in dependency_groups(model) if g.prunable]
    target, other = groups[0], groups[1]
    cfg = PruneConfig(group_ratios={target.sources[-1]: 0.5})  # a non-first layer name
    r = prune(model, cfg)
    after = {g.id: g.channels for g in dependency_groups(r.model)}
    assert after[target.id] == target.channels // 2
    assert after[other.id] == other.channels


def test_grouped_conv_keeps_group_count_and_even_split(trained, digits):
    r = prune(pir.load(trained("GroupedConvNet").onnx), PruneConfig(ratio=0.5))
    conv = next(n for n in r.model.graph if n.name == "/g/g.0/Conv")
    assert conv.attributes["group"].value == 4
    assert conv.inputs[1].const_value.shape[:2] == (16, 2)  # 32->16 out, 16/4 -> 8/4 in
    assert run(r.model, digits.x_val[:2]).shape == (2, 10)


# ----------------------------------------------------------------------------- errors
def _no_prunable_model() -> onnx.ModelProto:
    w = np.ones((10, 16), np.float32)
    g = helper.make_graph([helper.make_node("Flatten", ["x"], ["f"], name="flat"),
                           helper.make_node("Gemm", ["f", "w"], ["y"], name="fc", transB=1)],
                          "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
                          [numpy_helper.from_array(w, "w")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("ratio", ["1.0", "-0.1", "1.5"])
def test_cli_ratio_outside_range_writes_nothing(trained, tmp_path, ratio):
    out = tmp_path / "out.onnx"
    res = runner.invoke(app, ["prune", str(trained("PlainCNN").onnx), "--ratio", ratio,
                              "-o", str(out)])
    assert isinstance(res.exception, ConfigError) and "[0, 1)" in str(res.exception)
    assert not out.exists()


def test_cli_config_with_unknown_layer_writes_nothing(trained, tmp_path):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"/no/such/Conv": 0.5}))
    out = tmp_path / "out.onnx"
    res = runner.invoke(app, ["prune", str(trained("PlainCNN").onnx), "--config", str(cfg),
                              "-o", str(out)])
    assert isinstance(res.exception, ConfigError)
    assert "/no/such/Conv" in str(res.exception) and "/f/f.0/f.0.0/Conv" in str(res.exception)
    assert not out.exists()


def test_cli_calibration_shape_mismatch_writes_nothing(trained, tmp_path):
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.zeros((4, 1, 16, 16), np.float32))
    out = tmp_path / "out.onnx"
    res = runner.invoke(app, ["prune", str(trained("PlainCNN").onnx), "--ratio", "0.5",
                              "--criterion", "lasso", "--data", str(bad), "-o", str(out)])
    assert isinstance(res.exception, DataError) and "(N, 1, 8, 8)" in str(res.exception)
    assert not out.exists()
    with pytest.raises(DataError, match="samples of shape"):
        prune(pir.load(trained("PlainCNN").onnx), PruneConfig(ratio=0.5, criterion="lasso"),
              Dataset({"input": np.zeros((4, 1, 16, 16), np.float32)}, None))


def test_model_without_prunable_group_writes_nothing(tmp_path):
    src = tmp_path / "fc.onnx"
    onnx.save(_no_prunable_model(), src)
    out = tmp_path / "out.onnx"
    res = runner.invoke(app, ["prune", str(src), "--ratio", "0.5", "-o", str(out)])
    assert isinstance(res.exception, PassError)
    assert "no prunable channel group" in str(res.exception) and "logits" not in str(res.exception)
    assert "graph output 'y'" in str(res.exception)
    assert not out.exists()


def test_frozen_group_in_config_and_lasso_without_data_are_errors(trained, tmp_path):
    model = pir.load(trained("PlainCNN").onnx)
    with pytest.raises(ConfigError, match="frozen"):
        prune(model, PruneConfig(group_ratios={"/fc/Gemm": 0.5}))
    with pytest.raises(ConfigError, match="calibration data"):
        prune(model, PruneConfig(ratio=0.5, criterion="lasso"))
    with pytest.raises(ConfigError, match="criterion"):
        PruneConfig(criterion="random")


def test_cli_inspect_json_is_a_config_skeleton(trained, digits, tmp_path):
    src = trained("DenseNetTiny").onnx
    res = runner.invoke(app, ["inspect", str(src), "--json"])
    assert res.exit_code == 0, res.output
    rep = json.loads(res.output)
    assert rep["macs"] == model_stats(pir.load(src)).macs
    ids = [g["id"] for g in rep["groups"] if g["prunable"]]
    assert set(rep["config"]["ratios"]) == set(ids)
    rep["config"]["ratios"][ids[0]] = 0.5
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps(rep))  # the whole report works as --config
    out = tmp_path / "p.onnx"
    res = runner.invoke(app, ["prune", str(src), "--config", str(cfg), "--criterion", "lasso",
                              "--data", str(digits.calib_npz), "-o", str(out), "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output)
    assert summary["removed_channels"][ids[0]] == 8
    assert sum(summary["removed_channels"].values()) == 8
    assert summary["macs_after"] < summary["macs_before"]
    assert run(out, digits.x_val[:2]).shape == (2, 10)


def test_cli_prune_with_data_defaults_to_lasso(trained, digits, tmp_path):
    """`prune --data` prunes as `pfcompile run` does (LASSO); without data, L1; an explicit
    --criterion or a config file's criterion wins."""
    src = str(trained("PlainCNN").onnx)
    crit = {}
    for name, extra in (("data", ["--data", str(digits.calib_npz)]), ("none", []),
                        ("explicit", ["--data", str(digits.calib_npz), "--criterion", "l1"])):
        res = runner.invoke(app, ["prune", src, "--ratio", "0.5", "-o", str(tmp_path / f"{name}.onnx"),
                                  "--json", *extra])
        assert res.exit_code == 0, res.output
        crit[name] = json.loads(res.output)["config"]["criterion"]
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"ratio": 0.5, "criterion": "l1"}))
    res = runner.invoke(app, ["prune", src, "--config", str(cfg), "--data", str(digits.calib_npz),
                              "-o", str(tmp_path / "cfg.onnx"), "--json"])
    assert res.exit_code == 0, res.output
    crit["config"] = json.loads(res.output)["config"]["criterion"]
    assert crit == {"data": "lasso", "none": "l1", "explicit": "l1", "config": "l1"}


def test_prune_config_declares_its_search_space():
    space = PruneConfig.search_space()
    assert set(space) == {"ratio", "group_ratios", "criterion", "round_to", "calib_samples"}
    assert "lasso" in space["criterion"] and 0.5 in space["ratio"]
    cfg = PruneConfig.from_json({"a": 0.25, "b": 0.5})
    assert cfg.ratio_for("b") == 0.5 and cfg.ratio_for("zzz") == 0.0
    assert hash(cfg) == hash(PruneConfig.from_json(cfg.to_json()))


def test_cli_bn_criterion_on_model_with_batchnorm_folds_after_pruning(trained, digits, tmp_path):
    src = trained("SENetTiny").onnx_bn
    out = tmp_path / "p.onnx"
    res = runner.invoke(app, ["prune", str(src), "--ratio", "0.5", "--criterion", "bn",
                              "-o", str(out), "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output)
    assert summary["macs_after"] < 0.5 * summary["macs_before"]
    pruned = pir.load(out)
    assert "BatchNormalization" not in {n.op_type for n in pruned.graph}
    assert run(out, digits.x_val[:3]).shape == (3, 10)


def _fixed_batch_model(reshape_to: list[int]) -> onnx.ModelProto:
    """Conv -> Relu -> GlobalAveragePool -> Reshape(constant) -> MatMul, batch 1 static."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(np.array(reshape_to, np.int64), "shape"),
             numpy_helper.from_array(rng.standard_normal((8 if reshape_to[0] in (1, -1) else 4, 2))
                                     .astype(np.float32), "fc")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("GlobalAveragePool", ["r"], ["g"], name="gap"),
             helper.make_node("Reshape", ["g", "shape"], ["f"], name="reshape"),
             helper.make_node("MatMul", ["f", "fc"], ["y"], name="fc")]
    out = [1, 2] if reshape_to[0] in (1, -1) else [reshape_to[0], 2]
    g = helper.make_graph(nodes, "fixed", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, out)], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("reshape_to", [[1, 8], [1, -1]])
def test_lasso_activations_of_a_fixed_batch_graph_batched_without_errors(reshape_to, capfd):
    """Paddle2ONNX-style Reshape constants [1, C]: the calibration batch runs through
    pfcompile.batching's free-batch copy (no onnxruntime error printed), and each
    sample's activations equal a run of that sample alone."""
    from pfcompile.passes.prune_lasso import collect_activations

    model = _fixed_batch_model(reshape_to)
    x = np.random.default_rng(1).standard_normal((6, 3, 8, 8)).astype(np.float32)
    acts = collect_activations(pir.to_ir(model), ["f", "r"], Dataset({"x": x}, None), 6)
    assert acts["f"].shape == (6, 8) and acts["r"].shape == (6, 8, 8, 8)
    for i in range(6):
        one = collect_activations(pir.to_ir(model), ["f"], Dataset({"x": x[i:i + 1]}, None), 1)
        np.testing.assert_allclose(acts["f"][i:i + 1], one["f"], rtol=1e-5, atol=1e-6)
    err = capfd.readouterr().err
    assert "Reshape" not in err and "requested shape" not in err


def test_lasso_activations_run_per_sample_where_a_free_batch_is_not_provable(capfd):
    """A Reshape whose constant fixes a batch other than 1 cannot be freed: one model
    batch at a time, still no onnxruntime error."""
    from pfcompile.passes.prune_lasso import collect_activations

    model = _fixed_batch_model([2, -1])       # (1, 8, 1, 1) -> (2, 4): mixes channels
    x = np.random.default_rng(2).standard_normal((3, 3, 8, 8)).astype(np.float32)
    acts = collect_activations(pir.to_ir(model), ["f"], Dataset({"x": x}, None), 3)
    assert acts["f"].shape == (6, 4)           # three runs of batch 1, each (2, 4)
    assert "requested shape" not in capfd.readouterr().err
