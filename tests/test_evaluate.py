"""evaluate(): top-1, agreement, output SNR, stats; CLI; bad data."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from typer.testing import CliRunner

from pfcompile import ir as pir
from pfcompile.cli import app
from pfcompile.data import Dataset
from pfcompile.errors import DataError
from pfcompile.evaluate import EVAL_FIELDS, evaluate, output_snr_db
from pfcompile.passes.qlayers import run_ort
from pfcompile.passes.quantize import QuantConfig, quantize
from pfcompile.passes.stats import model_stats


def test_output_snr_db():
    ref = np.array([[3.0, 4.0]])
    assert output_snr_db(ref.copy(), ref) == math.inf
    assert output_snr_db(ref + np.array([[0.3, 0.4]]), ref) == pytest.approx(20.0)


def test_evaluate_against_itself_and_quantized(trained, digits):
    model = pir.load(trained("DenseNetTiny").onnx)
    val = Dataset({"input": digits.x_val}, digits.y_val)
    r = evaluate(model, val, reference=model)
    assert set(r) == set(EVAL_FIELDS)
    manual = float(np.mean(run_ort(model, {"input": digits.x_val})[0].argmax(1) == digits.y_val))
    assert r["top1"] == manual and r["agreement"] == 1.0 and r["output_snr_db"] == math.inf
    st = model_stats(model)
    assert (r["macs"], r["params"], r["size_bytes"]) == (st.macs, st.params, st.size_bytes)

    q = quantize(model, QuantConfig(bits=4), Dataset({"input": digits.x_calib}, None)).model
    rq = evaluate(q, val, reference=model)
    assert rq["agreement"] >= 0.9
    assert 10.0 < rq["output_snr_db"] < 60.0
    assert rq["size_bytes"] < r["size_bytes"] / 2
    assert rq["macs"] == r["macs"]


def test_evaluate_without_labels_or_reference(trained, digits):
    model = pir.load(trained("PlainCNN").onnx)
    r = evaluate(model, Dataset({"input": digits.x_val[:20]}, None))
    assert r["top1"] is None and r["agreement"] is None and r["output_snr_db"] is None
    assert r["macs"] > 0


def test_evaluate_bad_data(trained):
    model = pir.load(trained("PlainCNN").onnx)
    with pytest.raises(DataError, match="the model expects"):
        evaluate(model, Dataset({"input": np.zeros((2, 3, 8, 8), np.float32)}, None))


def test_cli_evaluate_json(trained, digits):
    path = trained("PlainCNN").onnx
    res = CliRunner().invoke(app, ["evaluate", str(path), "--data", str(digits.val_npz), "--reference",
                                   str(path), "--json"])
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)
    assert d["agreement"] == 1.0 and d["output_snr_db"] == "inf" and 0.8 < d["top1"] <= 1.0
