"""Integer numerics on the emulated arm64 device (qemu-user), +neon and +dotprod.

Functional only: nothing here is a latency. Needs tools/setup_arm64_device.sh.
"""

import gc
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest

from pfcompile.compiler import build_primfuncs, compile_model, export
from pfcompile.device import default_device_dir, free_port, parse_addr, serve
from pfcompile.passes.ort_quantize import ort_quantize_qdq
from pfcompile.paths import demo_paths
from pfcompile.quantexec.kernel_choice import select_conv_kernel
from pfcompile.quantexec.kernels import QConvSpec
from pfcompile.quantexec.refconv import kernel_case
from pfcompile.reference import reference_session
from pfcompile.runner import RPCRunner
from pfcompile.targets import MeasureSettings, load_target

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (default_device_dir() / "root" / "usr" / "bin" / "python3").exists(),
                       reason="no emulated arm64 device (run tools/setup_arm64_device.sh)"),
]

B = "NCHW8c"
SPECS = [  # conv 1x1 / 3x3 / strided, both layouts, int8 and uint8 data; depthwise 3x3 / 5x5
    QConvSpec(1, 16, 9, 9, 24, 1, 1, (1, 1), (0,) * 4, (1, 1), 1, "uint8", "uint8", 7, 3, 3, 255,
              x_layout=B, y_layout=B),
    QConvSpec(1, 6, 9, 9, 12, 3, 3, (1, 1), (1,) * 4, (1, 1), 1, "uint8", "uint8", 7, 3, 3, 255),
    QConvSpec(1, 5, 11, 11, 10, 3, 3, (2, 2), (1, 0, 1, 2), (1, 1), 1, "int8", "int8", -4, 2,
              -128, 127),
    QConvSpec(1, 24, 7, 7, 16, 3, 3, (2, 2), (1,) * 4, (1, 1), 1, "int8", "int8", 5, -2, -128,
              100, x_layout=B, y_layout=B),
    QConvSpec(1, 24, 11, 11, 24, 3, 3, (1, 1), (1,) * 4, (1, 1), 24, "uint8", "uint8", 7, 3, 3,
              255, x_layout=B, y_layout=B),
    QConvSpec(1, 16, 13, 13, 16, 5, 5, (2, 2), (2,) * 4, (1, 1), 16, "uint8", "uint8", 200, 5, 5,
              250, x_layout=B),
    QConvSpec(1, 12, 9, 9, 12, 5, 5, (1, 1), (2,) * 4, (1, 1), 12, "int8", "int8", -3, 1, -128,
              127),
    replace(QConvSpec(1, 16, 10, 10, 16, 3, 3, (1, 1), (1,) * 4, (1, 1), 1, "uint8", "float32",
                      5, 0, 0, 0, x_layout=B), fmin=0.0, fmax=6.0),
]



@pytest.fixture(scope="module")
def arm_server():
    server = serve(load_target("arm64"), "127.0.0.1", free_port("127.0.0.1", 9260, 9269))
    try:
        yield server
    finally:
        server.stop()


def _run_kernels(server, funcs: list, target, args: list[list[np.ndarray]]) -> list[np.ndarray]:
    """The PrimFuncs built into one library (``k0`` ..), uploaded, each called once with
    its ``args`` (output buffer last); each output back."""
    import tvm
    from tvm import rpc

    gc.collect()  # a server serves one session at a time: free the last one first
    sess = rpc.connect(*parse_addr(server.addr), session_timeout=600)
    with tempfile.TemporaryDirectory() as d:
        path = export(build_primfuncs(funcs, target), target, Path(d) / "kernels.so")
        sess.upload(str(path))
    rmod = sess.load_module("kernels.so")
    dev = sess.cpu()
    outs = []
    for i, a in enumerate(args):
        tensors = [tvm.runtime.tensor(x, dev) for x in a]
        rmod[f"k{i}"](*tensors)
        outs.append(tensors[-1].numpy())
    return outs


@pytest.mark.parametrize("name", ["arm64", "arm64-dotprod"])
def test_arm_kernels_bit_exact_on_emulated_device(arm_server, name):
    """NEON smlal (arm64) and sdot (arm64-dotprod) kernels vs the numpy int64 reference."""
    target = load_target(name)
    kernels = [select_conv_kernel(sp, target) for sp in SPECS]
    want = {"arm64": {"arm-neon-smlal", "arm-neon-dw-smlal"},
            "arm64-dotprod": {"arm-sdot", "arm-sdot-dw"}}[name]
    assert {k.name for k in kernels} == want
    cases = [kernel_case(sp, k.pack_weight, seed=i, x_offset=k.x_offset)
             for i, (sp, k) in enumerate(zip(SPECS, kernels, strict=True))]
    outs = _run_kernels(arm_server, [k.func for k in kernels], target, [c.args for c in cases])
    for sp, case, got in zip(SPECS, cases, outs, strict=True):
        assert got.shape == case.expected.shape, sp
        case.check(got)
        assert len(np.unique(got)) > 100  # spread over the output range: the check has teeth


def test_demo_integer_on_emulated_arm64_matches_ort(arm_server, tmp_path):
    demo, val, calib = demo_paths()
    path = ort_quantize_qdq(demo, tmp_path / "demo_qdq.onnx", np.load(calib)["x"][:32])
    model = onnx.load(str(path))
    xs = [x[None] for x in np.load(val)["x"][:2].astype(np.float32)]
    sess = reference_session(path)
    ref = [sess.run(None, {"input": x})[0] for x in xs]
    init = {i.name: i for i in model.graph.initializer}
    last = next(n for n in model.graph.node if model.graph.output[0].name in n.output)
    step = float(onnx.numpy_helper.to_array(init[last.input[1]]))
    once = MeasureSettings(number=1, repeat=1, min_repeat_ms=0, timeout_s=600)
    runner = RPCRunner(device=arm_server.addr, connect_timeout_s=120)
    for name in ("arm64", "arm64-dotprod"):
        art = compile_model(model, load_target(name), tmp_path / name)
        assert all(r["path"] == "int8" for r in art.meta["layers"])
        assert {r["kernel"] for r in art.meta["layers"]} & {"arm-neon-smlal", "arm-sdot"}
        for x, want in zip(xs, ref, strict=True):
            res = runner.run(art.dir, {"input": x}, once)
            assert res.ok, res.error
            got = next(iter(res.outputs.values()))
            assert np.abs(got - want).max() <= step * 1.0001, name
