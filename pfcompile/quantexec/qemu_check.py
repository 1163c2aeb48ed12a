"""Run a compiled model on the emulated arm64 device (qemu-user + stock TVM RPC server).

A functional check only: latencies under qemu are not ARM latencies. Used by the
slow numerics test until ``pfcompile.device`` (LocalRPC with a qemu server)
lands; it starts one ``tvm.exec.rpc_server`` under the aarch64 Python from
``tools/setup_arm64_device.sh`` on a given port and stops it when done.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from pfcompile.deploy import prepare
from pfcompile.errors import DeviceError

__all__ = ["arm64_device_root", "qemu_rpc_server", "run_kernels_on_remote", "run_on_remote"]


def arm64_device_root() -> Path:
    return Path.home() / ".cache" / "pfcompile" / "arm64-device"


@contextmanager
def qemu_rpc_server(port: int, timeout_s: float = 180.0) -> Iterator:
    """Start an RPC server under qemu on ``port``; yield a connected ``rpc`` session."""
    from tvm import rpc

    root = arm64_device_root()
    py = root / "root" / "usr" / "bin" / "python3"
    if not py.exists():
        raise DeviceError(f"no emulated arm64 device at {root}: run tools/setup_arm64_device.sh")
    env = dict(os.environ, PYTHONPATH=str(root / "site"))
    proc = subprocess.Popen(
        [str(py), "-m", "tvm.exec.rpc_server", "--host", "127.0.0.1", "--port", str(port),
         "--port-end", str(port + 1)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + timeout_s
        sess = None
        while time.time() < deadline:
            if proc.poll() is not None:
                raise DeviceError(f"the qemu RPC server on port {port} exited with {proc.returncode}")
            try:
                sess = rpc.connect("127.0.0.1", port, session_timeout=int(timeout_s * 4))
                break
            except (OSError, RuntimeError):
                time.sleep(2.0)
        if sess is None:
            raise DeviceError(f"the qemu RPC server on port {port} did not answer in {timeout_s:.0f} s")
        yield sess
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def run_on_remote(sess, ex, cross_compiler: str, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """Export ``ex`` with ``cross_compiler``, upload, run ``main`` once per input."""
    import tvm
    from tvm.support import cc

    with tempfile.TemporaryDirectory() as d:
        lib = Path(d) / f"model_{os.getpid()}_{time.monotonic_ns()}.so"
        ex.export_library(str(lib), fcompile=cc.cross_compiler(cross_compiler))
        sess.upload(str(lib))
    rmod = sess.load_module(lib.name)
    dev = sess.cpu()
    model = prepare(tvm.relax.VirtualMachine(rmod, dev))
    return [model(tvm.runtime.tensor(x, dev)).numpy() for x in inputs]


def run_kernels_on_remote(sess, funcs: list, tvm_target, cross_compiler: str,
                          args: list[list[np.ndarray]]) -> list[np.ndarray]:
    """Build the PrimFuncs ``funcs`` into one library for ``tvm_target``, upload it, call
    each once with its ``args`` (output buffer last); returns each output."""
    import tvm
    from tvm.support import cc

    mod = tvm.IRModule({f"k{i}": f.with_attr("global_symbol", f"k{i}")
                        for i, f in enumerate(funcs)})
    ex = tvm.compile(mod, target=tvm_target)
    with tempfile.TemporaryDirectory() as d:
        lib = Path(d) / f"kernels_{os.getpid()}_{time.monotonic_ns()}.so"
        ex.export_library(str(lib), fcompile=cc.cross_compiler(cross_compiler))
        sess.upload(str(lib))
    rmod = sess.load_module(lib.name)
    dev = sess.cpu()
    outs = []
    for i, a in enumerate(args):
        tensors = [tvm.runtime.tensor(x, dev) for x in a]
        rmod[f"k{i}"](*tensors)
        outs.append(tensors[-1].numpy())
    return outs
