"""compile_model: artifacts for host and arm64, and clear errors on bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from pfcompile.compiler import compile_model
from pfcompile.errors import ModelError, UnsupportedOpError
from pfcompile.paths import demo_paths

DEMO = demo_paths()[0]
EM_X86_64, EM_AARCH64 = 62, 183


def _elf_machine(path: Path) -> int:
    head = path.read_bytes()[:20]
    assert head[:4] == b"\x7fELF"
    return int.from_bytes(head[18:20], "little")


def _tiny_model(dynamic: bool = False, op: str = "Relu", domain: str = "") -> onnx.ModelProto:
    n = "N" if dynamic else 1
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [n, 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [n, 4, 8, 8])
    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 3, 3, 3],
                           np.random.default_rng(0).standard_normal(108).astype(np.float32).tolist())
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv0", pads=[1, 1, 1, 1]),
             helper.make_node(op, ["c"], ["y"], name="act0", domain=domain)]
    opsets = [helper.make_opsetid("", 17)]
    if domain:
        opsets.append(helper.make_opsetid(domain, 1))
    g = helper.make_graph(nodes, "tiny", [x], [y], [w])
    return helper.make_model(g, opset_imports=opsets)


def test_compile_host_artifact(tmp_path):
    art = compile_model(DEMO, "host", tmp_path / "a")
    assert _elf_machine(art.so_path) == EM_X86_64
    meta = json.loads((tmp_path / "a" / "model.json").read_text())
    assert meta["inputs"] == [{"name": "input", "shape": [1, 1, 32, 32], "dtype": "float32"}]
    assert meta["outputs"][0]["shape"] == [1, 10]
    assert meta["target"]["name"] == "host"
    assert len(meta["source_hash"]) == 16
    assert {"pfcompile", "tvm", "onnx", "onnxruntime"} <= set(meta["versions"])
    assert (tmp_path / "a" / "source.onnx").exists()


def test_compile_arm64_is_aarch64_elf(tmp_path):
    art = compile_model(_tiny_model(), "arm64", tmp_path / "arm")
    assert _elf_machine(art.so_path) == EM_AARCH64
    assert art.meta["target"]["tvm"]["mtriple"] == "aarch64-linux-gnu"


def test_missing_file(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        compile_model(tmp_path / "nope.onnx", "host", tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_not_onnx(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00\x01this is not a protobuf at all" * 10)
    with pytest.raises(ModelError, match="not an ONNX model"):
        compile_model(bad, "host", tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_unsupported_op_names_node_and_op(tmp_path):
    p = tmp_path / "custom.onnx"
    onnx.save(_tiny_model(op="FancyAct", domain="com.example"), p)
    with pytest.raises(UnsupportedOpError) as ei:
        compile_model(p, "host", tmp_path / "o")
    assert ei.value.node == "act0" and "FancyAct" in ei.value.op_type
    assert "act0" in str(ei.value)


def test_dynamic_shape_needs_input_shape(tmp_path):
    p = tmp_path / "dyn.onnx"
    m = _tiny_model(dynamic=True)
    m.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "H"   # height dynamic too
    onnx.save(m, p)
    with pytest.raises(ModelError, match="--input-shape x:1x3x1x8"):
        compile_model(p, "host", tmp_path / "o")
    art = compile_model(p, "host", tmp_path / "o", {"x": (2, 3, 8, 8)})
    assert art.meta["inputs"][0]["shape"] == [2, 3, 8, 8]
    with pytest.raises(ModelError, match="unknown input"):
        compile_model(p, "host", tmp_path / "o2", {"x": (1, 3, 8, 8), "nope": (1, 3, 8, 8)})


def test_dynamic_batch_alone_defaults_to_one(tmp_path):
    p = tmp_path / "dynb.onnx"
    onnx.save(_tiny_model(dynamic=True), p)
    art = compile_model(p, "host", tmp_path / "o")
    assert art.meta["inputs"][0]["shape"] == [1, 3, 8, 8]
    assert art.meta["outputs"][0]["shape"] == [1, 4, 8, 8]


def test_unknown_target(tmp_path):
    from pfcompile.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown target 'pdp11'.*host"):
        compile_model(DEMO, "pdp11", tmp_path / "o")


def test_cli_error_is_one_clear_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "pfcompile", "compile", str(tmp_path / "x.onnx")],
                       capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 2
    assert "model file not found" in r.stderr and "Traceback" not in r.stderr




def _conv_chain(n: int) -> onnx.ModelProto:
    rng = np.random.default_rng(1)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 8, 8])
    inits, nodes, cur = [], [], "x"
    for i in range(n):  # dilations make each conv distinct (TVM shares equal kernels)
        inits.append(helper.make_tensor(f"w{i}", TensorProto.FLOAT, [8, 8, 3, 3],
                                        rng.standard_normal(576).astype(np.float32).tolist()))
        out = "y" if i == n - 1 else f"c{i}"
        nodes.append(helper.make_node("Conv", [cur, f"w{i}"], [out], name=f"conv{i}",
                                      pads=[i + 1] * 4, dilations=[i + 1] * 2))
        cur = out
    g = helper.make_graph(nodes, "chain", [x], [y], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_warns_when_convs_leave_the_templates(tmp_path):
    """A build whose convs fell off the blocked templates is correct but slow: it says so
    (a layout choice once did this silently to a real model, 12x slower)."""
    import warnings

    from pfcompile.compiler import count_convs, import_onnx, warn_off_templates
    from pfcompile.model import input_specs

    proto = _conv_chain(4)
    mod = import_onnx(proto, input_specs(proto))
    assert count_convs(mod) == 4
    with pytest.warns(UserWarning, match="only 0 of 4 distinct convolutions"):
        assert warn_off_templates(mod, [], "host") is not None

    class K:
        family = "conv2d"

    assert warn_off_templates(mod, [K()] * 3, "host") is None  # 3 of 4 is enough

    class F:
        family = "dwpw"

    # a depthwise conv fused with its 1x1 conv is two convolutions on the templates
    assert warn_off_templates(mod, [F(), F()], "host") is None
    # a real build keeps them on the templates and stays quiet
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*blocked conv templates.*")
        compile_model(proto, "host", tmp_path / "chain")
