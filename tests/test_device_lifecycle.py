"""Devices end with their whole process tree: stopped normally, and when the process that
started them is killed with SIGKILL (the server's TVM workers included; under qemu too).
Ports 9700-9749."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from pfcompile.device import default_device_dir, free_port, serve
from pfcompile.runner import RPCRunner
from pfcompile.targets import load_target
from tests.device_helpers import compile_tiny, tiny_model

PORTS = (9700, 9749)


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group ``pgid`` (Linux ``/proc``)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_bytes().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != b"Z":
            out.append(int(entry))
    return out


def wait_gone(pgid: int, timeout_s: float = 15.0) -> list[int]:
    """The group's members still alive after ``timeout_s`` (empty: all gone)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        left = group_members(pgid)
        if not left:
            return []
        time.sleep(0.2)
    return group_members(pgid)


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return compile_tiny(tiny_model(), load_target("host"),
                        tmp_path_factory.mktemp("lifecycle") / "host")


def test_stop_ends_the_server_and_its_workers(artifact: Path, fast_measure) -> None:
    srv = serve(load_target("host"), "127.0.0.1", free_port("127.0.0.1", *PORTS))
    pgid = srv.proc.pid
    once = replace(fast_measure, number=1, repeat=1, timeout_s=300)   # one run, slow machine
    res = RPCRunner(device=srv.addr).run(artifact, {"x": np.zeros((1, 3, 8, 8), np.float32)},
                                         once)
    assert res.ok, res.error
    # guard + rpc_server + its popen_worker (the serving loop) at least
    assert len(group_members(pgid)) >= 3
    srv.stop()
    assert wait_gone(pgid, 10.0) == []


_PARENT = textwrap.dedent("""
    import sys, time
    from pfcompile.device import serve
    from pfcompile.targets import load_target
    srv = serve(load_target(sys.argv[1]), "127.0.0.1", int(sys.argv[2]))
    print(srv.proc.pid, flush=True)
    time.sleep(3600)
""")


def _orphaned_by_sigkill(target: str, port: int) -> tuple[int, list[int]]:
    """Start ``target``'s server from a child Python, SIGKILL that child once the
    server is up: ``(server's process group, members alive before the kill)``."""
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root)}
    parent = subprocess.Popen([sys.executable, "-c", _PARENT, target, str(port)],
                              stdout=subprocess.PIPE, text=True, env=env)
    try:
        line = parent.stdout.readline() if parent.stdout else ""
        assert line.strip().isdigit(), f"the parent did not start a server: {line!r}"
        pgid = int(line)
        before = group_members(pgid)
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait(30)
    return pgid, before


def test_a_server_dies_with_its_parent_killed_by_sigkill() -> None:
    pgid, before = _orphaned_by_sigkill("host", free_port("127.0.0.1", *PORTS))
    assert len(before) >= 2          # the guard and the server (and its worker)
    assert wait_gone(pgid) == []


@pytest.mark.slow
@pytest.mark.skipif(not (default_device_dir() / ".stamp").exists(),
                    reason="emulated arm64 device not set up (tools/setup_arm64_device.sh)")
def test_the_emulated_server_and_its_qemu_workers_die_with_their_parent() -> None:
    pgid, before = _orphaned_by_sigkill("arm64", free_port("127.0.0.1", *PORTS))
    cmdlines = [Path(f"/proc/{p}/cmdline").read_bytes() for p in before
                if Path(f"/proc/{p}/cmdline").exists()]
    assert any(b"qemu-aarch64" in c for c in cmdlines), cmdlines
    assert any(b"popen_worker" in c for c in cmdlines), cmdlines   # the serving worker
    assert wait_gone(pgid) == []
