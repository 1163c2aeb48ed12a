"""compile_model on a QDQ model takes the integer path by default and reports per layer."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx

from pfcompile.compiler import compile_model
from pfcompile.data import load_npz
from pfcompile.measure import measure
from pfcompile.model import input_specs, load_onnx
from pfcompile.passes.qlayers import as_proto
from pfcompile.passes.quantize import QuantConfig, quantize
from pfcompile.targets import load_target

DATA = Path(__file__).resolve().parents[1] / "pfcompile" / "data"


def test_qdq_demo_compiles_integer_and_verifies(tmp_path):
    m = load_onnx(DATA / "demo.onnx")
    calib = load_npz(DATA / "demo_calib.npz", input_specs(m))
    q = as_proto(quantize(m, QuantConfig(bits=8), calib).model)
    src = tmp_path / "demo_q8.onnx"
    onnx.save(q, src)
    art = compile_model(src, "host", tmp_path / "int8")
    paths = [la["path"] for la in art.meta["layers"]]
    n_layers = sum(n.op_type in ("Conv", "Gemm", "MatMul") for n in q.graph.node)
    assert len(paths) == n_layers and set(paths) <= {"int8", "float"}
    # layers whose output feeds a float residual Add keep the float path (with a reason)
    assert paths.count("int8") >= n_layers // 2, art.meta["layers"]
    assert all(la["reason"] for la in art.meta["layers"])
    res = measure(art.dir, load_target("host"))
    assert res["verified"] is True, res["detail"]
    # the float path of the same model also verifies, and reports no integer layer
    art_f = compile_model(src, "host", tmp_path / "float", integer=False)
    assert all(la["path"] != "int8" for la in art_f.meta["layers"])
    # `inspect --json` on the artifact lists the per-layer paths
    r = subprocess.run([sys.executable, "-m", "pfcompile", "inspect", str(art.dir), "--json"],
                       capture_output=True, text=True, timeout=120, check=True)
    rep = json.loads(r.stdout)
    assert rep["target"] == "host" and [la["path"] for la in rep["layers"]] == paths
    assert np.isfinite(res["median_ms"]) and res["median_ms"] > 0
