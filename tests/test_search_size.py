"""`--size-mb` in the search: judged on each candidate's compiled files (measured), with
the prediction (stored encodings + measured code) used only to rank."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from pfcompile.artifact_size import artifact_size
from pfcompile.compiler import compile_model
from pfcompile.data import load_npz
from pfcompile.model import input_specs, load_onnx
from pfcompile.passes.qlayers import as_proto
from pfcompile.passes.quantize import QuantConfig, quantize
from pfcompile.search.devices import Measurement, NullDevice
from pfcompile.search.loop import SearchSettings, run_search
from pfcompile.search.sizing import SizeModel, size_kind
from pfcompile.storage.predict import stored_weight_bytes
from pfcompile.targets import load_target


class CompilingNullDevice(NullDevice):
    """Compiles each model for the host (real files, real sizes); times nothing."""

    def measure_model(self, model: onnx.ModelProto, work_dir: Path) -> Measurement:
        m = super().measure_model(model, work_dir)
        art = compile_model(model, "host", work_dir)
        return Measurement(m.latency_ms, m.error, str(art.so_path), 0.0)


def test_size_goal_is_judged_on_the_compiled_files(trained, digits, tmp_path):
    m = load_onnx(trained("PlainCNN").onnx)
    specs = input_specs(m)
    val = load_npz(digits.val_npz, specs).subset(64)
    cal = load_npz(digits.calib_npz, specs).subset(32)
    s = SearchSettings(strategy="random", budget=2, batch=2, bits="auto", max_acc_drop=50.0,
                       size_mb=0.1, eval_subset=64, seed=0)
    res = run_search(m, load_target("host"), CompilingNullDevice(), val, tmp_path / "run", s,
                     calib=cal)
    base = res.baseline
    assert base["size_measured"] and base["size"] == artifact_size(Path(base["so_path"]).parent).to_json()
    assert base["size_mb"] == base["size"]["size_bytes"] / 1e6
    assert len(res.trials) == 2
    for t in res.trials:
        assert t["status"] == "ok" and t["size_measured"], t
        size = artifact_size(Path(t["so_path"]).parent)
        assert t["size_mb"] == size.size_mb and t["size"]["code_bytes"] == size.code_bytes
        assert t["feasible"] == (t["size_mb"] <= 0.1 and t["acc_drop"] <= 50.0)
        assert t["size_predicted_mb"] > 0
    # --bits auto with a size goal offers 4 bits on the host
    assert {tuple(k.choices) for k in res.space.knobs if k.kind == "bits"} == {(32, 8, 4)}


def test_size_prediction_uses_stored_encodings_and_measured_code(trained, digits):
    m = load_onnx(trained("PlainCNN").onnx)
    cal = load_npz(digits.calib_npz, input_specs(m))
    q8 = as_proto(quantize(m, QuantConfig(bits=8), cal).model)
    q4 = as_proto(quantize(m, QuantConfig(bits=4), cal).model)
    assert size_kind(m) == "float" and size_kind(q4) == "int8"
    w8, w4 = stored_weight_bytes(q8), stored_weight_bytes(q4)
    big = sum(int(np.prod(t.dims)) for t in q8.graph.initializer if t.data_type == 3
              and int(np.prod(t.dims)) >= 2048)  # int8 tensors large enough to be packed
    assert w8 - w4 == pytest.approx(big / 2, abs=64)
    sizes = SizeModel()
    assert sizes.predict_mb(q4) == w4 / 1e6   # nothing measured yet: no code bytes
    sizes.observe("float", 100_000)
    assert sizes.predict_mb(q4) == (w4 + 100_000) / 1e6   # int8 falls back to float's code
    sizes.observe("int8", 150_000)
    sizes.observe("int8", 170_000)
    assert sizes.predict_mb(q4) == (w4 + 160_000) / 1e6
    assert sizes.predict_mb(m) == (stored_weight_bytes(m) + 100_000) / 1e6
