"""Integer numerics on the emulated arm64 device (qemu-user), +neon and +dotprod.

Functional only: nothing here is a latency. Needs tools/setup_arm64_device.sh.
"""

import numpy as np
import onnx
import pytest

from pfcompile.compiler import compile_model
from pfcompile.device import default_device_dir, free_port, serve
from pfcompile.paths import demo_paths
from pfcompile.quantexec.ortq import ort_quantize_qdq
from pfcompile.reference import reference_session
from pfcompile.runner import RPCRunner
from pfcompile.targets import MeasureSettings, load_target

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (default_device_dir() / "root" / "usr" / "bin" / "python3").exists(),
                       reason="no emulated arm64 device (run tools/setup_arm64_device.sh)"),
]


def test_demo_integer_on_emulated_arm64_matches_ort(tmp_path):
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
    server = serve(load_target("arm64"), "127.0.0.1", free_port("127.0.0.1", 9260, 9269))
    try:
        runner = RPCRunner(device=server.addr, connect_timeout_s=120)
        for name in ("arm64", "arm64-dotprod"):
            art = compile_model(model, load_target(name), tmp_path / name)
            assert all(r["path"] == "int8" for r in art.meta["layers"])
            for x, want in zip(xs, ref):
                res = runner.run(art.dir, {"input": x}, once)
                assert res.ok, res.error
                got = next(iter(res.outputs.values()))
                assert np.abs(got - want).max() <= step * 1.0001, name
    finally:
        server.stop()
