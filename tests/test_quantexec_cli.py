import json

import numpy as np
from typer.testing import CliRunner

from pfcompile.cli import app
from pfcompile.passes.ort_quantize import ort_quantize_qdq
from pfcompile.paths import demo_paths
from pfcompile.quantexec.report import quant_report
from pfcompile.targets import host_arch


def test_quant_report_json_names_integer_layers(tmp_path):
    calib = np.load(demo_paths()[2])["x"][:8]
    path = ort_quantize_qdq(demo_paths()[0], tmp_path / "q.onnx", calib)
    rep = quant_report(path, "host")
    assert rep["int8_layers"] == 12 and rep["float_layers"] == 0
    kernels = {r["kernel"] for r in rep["layers"]}
    assert "generic" in kernels  # the Gemm
    if host_arch() == "x86_64":
        assert kernels & {"x86-avx2-pmaddwd", "x86-vnni-vpdpbusd"}  # the convs
        assert kernels & {"x86-avx2-dw-pmaddwd", "x86-vnni-dw-vpdpbusd"}  # the depthwise conv
    args = [str(path), "--json"]
    if len(app.registered_commands) > 1:  # a command group once other commands are registered
        args = ["quant-report", *args]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["int8_layers"] == 12 and out["layers"][0]["node"] == "/stem/stem.0/Conv"


def test_quant_report_float_model_reports_float():
    rep = quant_report(demo_paths()[0], "host")
    assert rep["int8_layers"] == 0 and rep["float_layers"] == 12
    assert all(r["reason"] == "not quantised" for r in rep["layers"])
