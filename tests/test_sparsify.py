"""Sparsify pass: zeros per layer and block, CSR/BSR report, outputs, bad input."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

from pfcompile import ir as pir
from pfcompile.cli import app
from pfcompile.errors import ConfigError
from pfcompile.passes.qlayers import run_ort, weighted_layers
from pfcompile.passes.sparsify import SparsifyConfig, block_mask, sparsify, sparsity_report


@pytest.mark.parametrize("block,shape", [((1, 1), (16, 36)), ((1, 4), (16, 36)), ((4, 4), (16, 36)),
                                         ((4, 4), (10, 13))])
def test_block_mask_zeros_the_smallest_blocks(block, shape):
    rng = np.random.default_rng(0)
    m = rng.standard_normal(shape)
    keep = block_mask(m, 0.5, block)
    r, c = block
    br, bc = -(-shape[0] // r), -(-shape[1] // c)
    padded = np.zeros((br * r, bc * c), bool)
    padded[:shape[0], :shape[1]] = keep
    blocks = padded.reshape(br, r, bc, c)
    real = np.zeros_like(padded)
    real[:shape[0], :shape[1]] = True
    kept = blocks.any(axis=(1, 3))
    whole = (padded | ~real).reshape(br, r, bc, c).all(axis=(1, 3))
    assert np.array_equal(kept, whole)  # a block is kept or zeroed as a whole
    assert (~kept).sum() == round(0.5 * br * bc)
    a = np.zeros((br * r, bc * c))
    a[:shape[0], :shape[1]] = np.abs(m)
    norms = a.reshape(br, r, bc, c).sum(axis=(1, 3))
    assert norms[~kept].max() <= norms[kept].min()


@pytest.mark.parametrize("block", ["1x1", "1x4", "4x4"])
def test_sparsify_half_the_weights(trained, digits, block):
    path = trained("ResNetTiny").onnx
    model = pir.load(path)
    before = pir.content_hash(model)
    result = sparsify(model, SparsifyConfig(sparsity=0.5, block=block))
    assert result.modified and pir.content_hash(model) == before
    pir.check(result.model)
    rep = sparsity_report(result.model)
    assert rep["block"] == block
    r, c = map(int, block.split("x"))
    for layer in rep["layers"]:
        rows, cols = layer["shape"][0], int(np.prod(layer["shape"][1:]))
        n_blocks = -(-rows // r) * -(-cols // c)
        assert n_blocks - layer["nonzero_blocks"] == round(0.5 * n_blocks), layer
        assert layer["nonzeros"] == np.count_nonzero(
            next(x for x in weighted_layers(result.model) if x.name == layer["layer"]).weight_array)
    t = rep["total"]
    assert 0.45 <= t["sparsity"] <= 0.55
    if block == "1x1":
        assert t["csr_bytes"] == sum(x["nonzeros"] * 8 + (x["shape"][0] + 1) * 4 for x in rep["layers"])
    else:
        assert t["bsr_bytes"] < 0.75 * t["dense_bytes"]
    # graph unchanged apart from the weights; onnxruntime runs it with the same output shape
    assert [n.op_type for n in result.model.graph] == [n.op_type for n in model.graph]
    out = run_ort(result.model, {"input": digits.x_val[:16]})[0]
    assert out.shape == (16, 10) and np.isfinite(out).all()


def test_sparsity_zero_changes_nothing(trained, digits):
    model = pir.load(trained("PlainCNN").onnx)
    result = sparsify(model, SparsifyConfig(sparsity=0.0))
    assert not result.modified
    a = run_ort(model, {"input": digits.x_val[:32]})[0]
    b = run_ort(result.model, {"input": digits.x_val[:32]})[0]
    np.testing.assert_array_equal(a, b)


def test_per_layer_sparsity_from_config(trained):
    model = pir.load(trained("FlattenGemmNet").onnx)
    names = [x.name for x in weighted_layers(model)]
    cfg = SparsifyConfig.from_json({names[1]: 0.75, names[2]: 0.25})
    rep = {x["layer"]: x for x in sparsity_report(sparsify(model, cfg).model)["layers"]}
    assert rep[names[0]]["sparsity"] == 0.0
    assert rep[names[1]]["sparsity"] == pytest.approx(0.75, abs=0.01)
    assert rep[names[2]]["sparsity"] == pytest.approx(0.25, abs=0.01)


def test_bad_input_is_config_error(trained, tmp_path):
    model = pir.load(trained("PlainCNN").onnx)
    for s in (1.0, -0.1):
        with pytest.raises(ConfigError, match=r"sparsity must be in \[0, 1\)"):
            SparsifyConfig(sparsity=s)
    with pytest.raises(ConfigError, match="block '2x2'"):
        SparsifyConfig(block="2x2")
    with pytest.raises(ConfigError, match=r"unknown layer\(s\) \['ghost'\]"):
        sparsify(model, SparsifyConfig(layers=(("ghost", 0.5),)))
    assert "sparsity" in SparsifyConfig.search_space() and "block" in SparsifyConfig.search_space()


def test_cli_sparsify(trained, tmp_path):
    path = trained("GroupedConvNet").onnx
    runner = CliRunner()
    out = tmp_path / "s.onnx"
    res = runner.invoke(app, ["sparsify", str(path), "--sparsity", "0.5", "--block", "1x4", "-o", str(out),
                              "--json"])
    assert res.exit_code == 0, res.output
    rep = json.loads(res.stdout)
    assert rep["block"] == "1x4" and 0.45 <= rep["total"]["sparsity"] <= 0.55
    assert onnx.load(out).metadata_props[0].key == "pfcompile.sparsity"
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"sparsity": 0.5, "layers": {"missing": 0.2}}))
    for i, args in enumerate([["--sparsity", "1.2"], ["--config", str(cfg)], []]):
        target = tmp_path / f"bad{i}.onnx"
        res = runner.invoke(app, ["sparsify", str(path), *args, "-o", str(target)])
        assert isinstance(res.exception, ConfigError), (args, res.exception)
        assert not target.exists()
