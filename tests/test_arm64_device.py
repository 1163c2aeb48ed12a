"""The emulated arm64 device end to end (slow: ``import tvm`` under qemu takes ~20-80 s).

Compile for arm64 (cross g++), serve on the emulated device (aarch64 Python under
qemu-user, from ``tools/setup_arm64_device.sh``; the folder is cached between
runs), register it at a tracker, measure over RPC: outputs equal onnxruntime's.
Latencies here are functional checks only.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from pfcompile.device import LocalRPC, default_device_dir
from pfcompile.measure import measure
from pfcompile.targets import MeasureSettings, load_target
from tests.device_helpers import compile_tiny, tiny_model

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("qemu-aarch64") is None,
                       reason="qemu-aarch64 not installed (apt-get install qemu-user, or run "
                              "tools/setup_arm64_device.sh)"),
]

SETUP = Path(__file__).resolve().parent.parent / "tools" / "setup_arm64_device.sh"
EM_AARCH64 = 183  # ELF e_machine


@pytest.fixture(scope="module")
def device_dir() -> Path:
    """The prepared device folder; the setup script is idempotent (returns at once
    when its stamp is there, downloads ~370 MB the first time)."""
    d = default_device_dir()
    out = subprocess.run(["bash", str(SETUP), str(d)], capture_output=True, text=True,
                         timeout=1800, check=False)
    assert out.returncode == 0, f"setup failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    assert (d / ".stamp").exists()
    return d


def test_arm64_emulated_device_verified(device_dir: Path, tmp_path: Path) -> None:
    target = load_target("arm64")
    art = compile_tiny(tiny_model(), target, tmp_path / "arm64")
    header = (art / "model.so").read_bytes()[:20]
    assert header[:4] == b"\x7fELF" and struct.unpack("<H", header[18:20])[0] == EM_AARCH64

    with LocalRPC(target=target, key="arm64", device_dir=device_dir) as lrpc:
        assert lrpc.servers[0].emulated
        res = measure(art, target, rpc=lrpc.tracker_addr, key="arm64",
                      settings=MeasureSettings(number=1, repeat=2, min_repeat_ms=0,
                                               timeout_s=300))
    assert res["verified"] is True, res["detail"]
    assert res["max_abs_err"] < 1e-4
    assert res["emulated"] is True and res["target"] == "arm64"
    assert "functional checks only" in res["latency_note"]
    assert len(res["latencies_ms"]) == 2 and all(x > 0 for x in res["latencies_ms"])
