"""Integer numerics on the emulated arm64 device (qemu-user), +neon and +dotprod.

Functional only: nothing here is a latency. Needs tools/setup_arm64_device.sh.
"""

from dataclasses import replace

import numpy as np
import onnx
import pytest

from pfcompile.quantexec import build
from pfcompile.quantexec.kernel_choice import select_conv_kernel
from pfcompile.quantexec.kernels import QConvSpec
from pfcompile.quantexec.ortq import ort_quantize_qdq
from pfcompile.quantexec.qemu_check import (
    arm64_device_root,
    qemu_rpc_server,
    run_kernels_on_remote,
    run_on_remote,
)
from pfcompile.quantexec.refconv import kernel_case
from pfcompile.reference import reference_session
from pfcompile.targets import load_target

DATA = "pfcompile/data"
PORT = 9260  # this suite's range is 9250-9299

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (arm64_device_root() / "root" / "usr" / "bin" / "python3").exists(),
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
def remote():
    with qemu_rpc_server(PORT, timeout_s=600) as sess:
        yield sess


@pytest.mark.parametrize("name", ["arm64", "arm64-dotprod"])
def test_arm_kernels_bit_exact_on_emulated_device(remote, name):
    """NEON smlal (arm64) and sdot (arm64-dotprod) kernels vs the numpy int64 reference."""
    target = load_target(name)
    kernels = [select_conv_kernel(sp, target) for sp in SPECS]
    want = {"arm64": {"arm-neon-smlal", "arm-neon-dw-smlal"},
            "arm64-dotprod": {"arm-sdot", "arm-sdot-dw"}}[name]
    assert {k.name for k in kernels} == want
    cases = [kernel_case(sp, k.pack_weight, seed=i, x_offset=k.x_offset)
             for i, (sp, k) in enumerate(zip(SPECS, kernels, strict=True))]
    outs = run_kernels_on_remote(remote, [k.func for k in kernels], target.tvm_target(),
                                 target.cross_compiler, [c.args for c in cases])
    for sp, case, got in zip(SPECS, cases, outs, strict=True):
        assert got.shape == case.expected.shape, sp
        case.check(got)
        assert len(np.unique(got)) > 100  # spread over the output range: the check has teeth


def test_demo_integer_on_emulated_arm64_matches_ort(remote, tmp_path):
    calib = np.load(f"{DATA}/demo_calib.npz")["x"][:32]
    path = ort_quantize_qdq(f"{DATA}/demo.onnx", tmp_path / "demo_qdq.onnx", calib)
    model = onnx.load(str(path))
    xs = [x[None] for x in np.load(f"{DATA}/demo_val.npz")["x"][:2].astype(np.float32)]
    sess = reference_session(path)
    ref = [sess.run(None, {"input": x})[0] for x in xs]
    init = {i.name: i for i in model.graph.initializer}
    last = next(n for n in model.graph.node if model.graph.output[0].name in n.output)
    step = float(onnx.numpy_helper.to_array(init[last.input[1]]))
    for name in ("arm64", "arm64-dotprod"):
        target = load_target(name)
        ex, reports = build(model, target)
        assert all(r.path == "int8" for r in reports)
        assert {r.kernel for r in reports} & {"arm-neon-smlal", "arm-sdot"}, reports
        got = run_on_remote(remote, ex, target.cross_compiler, xs)
        for a, b in zip(got, ref, strict=True):
            assert np.abs(a - b).max() <= step * 1.0001, name
