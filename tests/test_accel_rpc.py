"""The simulated accelerator served over real TVM RPC (ports 9350-9399)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from pfcompile.accel import compile_accel
from pfcompile.accel.serve import measure_accel, serve_accel
from pfcompile.errors import DeviceError


def _qdq_conv_model() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.integers(-127, 128, (32, 16, 3, 3)).astype(np.int8), "w_q"),
             numpy_helper.from_array(rng.uniform(0.002, 0.01, 32).astype(np.float32), "w_s"),
             numpy_helper.from_array(np.zeros(32, np.int8), "w_z"),
             numpy_helper.from_array(np.float32(0.02), "x_s"),
             numpy_helper.from_array(np.uint8(128), "x_z"),
             numpy_helper.from_array(np.float32(0.1), "y_s"),
             numpy_helper.from_array(np.uint8(0), "y_z")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "x_s", "x_z"], ["xq"], name="qx"),
             helper.make_node("DequantizeLinear", ["xq", "x_s", "x_z"], ["xd"], name="dqx"),
             helper.make_node("DequantizeLinear", ["w_q", "w_s", "w_z"], ["wd"], name="dqw", axis=0),
             helper.make_node("Conv", ["xd", "wd"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("QuantizeLinear", ["r", "y_s", "y_z"], ["yq"], name="qy"),
             helper.make_node("DequantizeLinear", ["yq", "y_s", "y_z"], ["y"], name="dqy")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16, 12, 12])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 32, 12, 12])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture(scope="module")
def server():
    srv = serve_accel("fpga-vta", host="127.0.0.1", port=9350, port_end=9370, block=False)
    yield srv
    srv.terminate()


def test_measure_over_rpc_equals_local_run(server, tmp_path: Path):
    model = _qdq_conv_model()
    prog = compile_accel(model, "fpga-vta")
    x = np.random.default_rng(1).standard_normal((3, 16, 12, 12)).astype(np.float32)
    local, stats = prog.run({"x": x})
    m = measure_accel(prog, "fpga-vta", {"x": x}, port=server.port, repeat=2)
    assert np.array_equal(m.outputs["y"], local["y"])
    assert m.accel_cycles == stats.accel_cycles == prog.layers[0].timing.cycles > 0
    assert m.accel_ms_simulated == pytest.approx(stats.accel_cycles / 100e6 * 1e3)
    assert len(m.host_ms_measured) == 2 and all(v > 0 for v in m.host_ms_measured)
    assert "simulated" in m.to_json()["label"]
    # a program file path works too
    path = prog.save(tmp_path / "p.npz")
    m2 = measure_accel(str(path), "fpga-vta", {"x": x}, port=server.port, repeat=1)
    assert np.array_equal(m2.outputs["y"], local["y"])


def test_wrong_target_or_no_server_is_a_device_error(server):
    model = _qdq_conv_model()
    x = np.zeros((1, 16, 12, 12), np.float32)
    with pytest.raises(DeviceError, match="fpga-bitfusion"):
        measure_accel(compile_accel(model, "fpga-bitfusion"), "fpga-bitfusion", {"x": x},
                      port=server.port)
    with pytest.raises(DeviceError, match="cannot reach"):
        measure_accel(compile_accel(model, "fpga-vta"), "fpga-vta", {"x": x}, port=9398)
