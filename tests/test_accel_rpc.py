"""The simulated accelerator served over real TVM RPC (ports 9350-9399)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from pfcompile.accel import compile_accel
from pfcompile.device import free_port, serve
from pfcompile.runner import AccelRunner
from pfcompile.targets import MeasureSettings, load_target


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
    srv = serve(load_target("fpga-vta"), "127.0.0.1", free_port("127.0.0.1", 9350, 9370))
    yield srv
    srv.stop()


ONCE = MeasureSettings(number=1, repeat=2, min_repeat_ms=0, timeout_s=120)


def test_measure_over_rpc_equals_local_run(server, tmp_path: Path):
    model = _qdq_conv_model()
    prog = compile_accel(model, "fpga-vta")
    x = np.random.default_rng(1).standard_normal((3, 16, 12, 12)).astype(np.float32)
    local, stats = prog.run({"x": x})
    path = prog.save(tmp_path / "p.npz")
    res = AccelRunner(load_target("fpga-vta"), device=server.addr).run(path, {"x": x}, ONCE)
    assert res.ok, res.error
    d = res.details
    assert np.array_equal(res.outputs["y"], local["y"])
    assert d["accel_cycles"] == stats.accel_cycles == prog.layers[0].timing.cycles > 0
    assert d["accel_ms_simulated"] == pytest.approx(stats.accel_cycles / 100e6 * 1e3)
    assert len(d["host_ms_measured"]) == 2 and all(v > 0 for v in d["host_ms_measured"])
    assert d["simulated"] is True and "simulated" in d["label"]
    assert res.latencies_ms == [d["accel_ms_simulated"] + h for h in d["host_ms_measured"]]


def test_wrong_target_or_no_server_is_an_error_result(server, tmp_path: Path):
    model = _qdq_conv_model()
    x = np.zeros((1, 16, 12, 12), np.float32)
    bf = compile_accel(model, "fpga-bitfusion").save(tmp_path / "bf.npz")
    wrong = AccelRunner(load_target("fpga-bitfusion"), device=server.addr).run(bf, {"x": x}, ONCE)
    assert not wrong.ok and wrong.error_kind == "run" and "fpga-bitfusion" in wrong.error
    vta = compile_accel(model, "fpga-vta").save(tmp_path / "vta.npz")
    gone = AccelRunner(load_target("fpga-vta"), device="127.0.0.1:9398").run(vta, {"x": x}, ONCE)
    assert not gone.ok and gone.error_kind == "device" and "unreachable" in gone.error


def test_compile_and_measure_commands_on_accelerator_target(server, tmp_path: Path):
    """`pfcompile compile --target fpga-vta` writes a program; `pfcompile measure` runs it on
    the simulator device (one it starts itself when given none), checks it against the
    reference within one output step and labels the latency simulated."""
    from pfcompile.compiler import compile_model
    from pfcompile.measure import measure

    src = tmp_path / "q.onnx"
    onnx.save(_qdq_conv_model(), src)
    art = compile_model(src, "fpga-vta", tmp_path / "art", {"x": (1, 16, 12, 12)})
    assert art.so_path.name == "program.npz" and art.so_path.exists()
    assert [la["path"] for la in art.meta["layers"]] == ["accelerator"]
    for where in ({"device": server.addr}, {}):
        res = measure(art.dir, "fpga-vta", **where)
        assert res["verified"] is True and res["simulated"] is True
        assert res["emulated"] is False                 # simulated, not emulated (qemu)
        assert res["tolerance"] >= 0.1  # at least one step of the dequantized output
        assert res["max_abs_err"] <= res["tolerance"]
        assert res["accel_ms_simulated"] > 0 and res["median_ms"] > res["accel_ms_simulated"]
