"""Integer numerics on the emulated arm64 device (qemu-user), +neon and +dotprod.

Functional only: nothing here is a latency. Needs tools/setup_arm64_device.sh.
"""

import numpy as np
import onnx
import pytest

from pfcompile.compiler import build
from pfcompile.quantexec.ortq import ort_quantize_qdq
from pfcompile.quantexec.qemu_check import arm64_device_root, qemu_rpc_server, run_on_remote
from pfcompile.reference import reference_session
from pfcompile.targets import load_target

DATA = "pfcompile/data"
PORT = 9260  # this suite's range is 9250-9299

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (arm64_device_root() / "root" / "usr" / "bin" / "python3").exists(),
                       reason="no emulated arm64 device (run tools/setup_arm64_device.sh)"),
]


def test_demo_integer_on_emulated_arm64_matches_ort(tmp_path):
    calib = np.load(f"{DATA}/demo_calib.npz")["x"][:32]
    path = ort_quantize_qdq(f"{DATA}/demo.onnx", tmp_path / "demo_qdq.onnx", calib)
    model = onnx.load(str(path))
    xs = [x[None] for x in np.load(f"{DATA}/demo_val.npz")["x"][:2].astype(np.float32)]
    sess = reference_session(path)
    ref = [sess.run(None, {"input": x})[0] for x in xs]
    step = 0.0
    init = {i.name: i for i in model.graph.initializer}
    last = next(n for n in model.graph.node if model.graph.output[0].name in n.output)
    step = float(onnx.numpy_helper.to_array(init[last.input[1]]))
    with qemu_rpc_server(PORT, timeout_s=600) as remote:
        for name in ("arm64", "arm64-dotprod"):
            target = load_target(name)
            ex, reports = build(model, target)
            assert all(r.path == "int8" for r in reports)
            got = run_on_remote(remote, ex, target.cross_compiler, xs)
            for a, b in zip(got, ref):
                assert np.abs(a - b).max() <= step * 1.0001, name
