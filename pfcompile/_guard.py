"""Process-group guard: run a device process so that it dies with its parent.

``python _guard.py PARENT_PID CMD...`` (started by :func:`pfcompile.device._spawn` in a
new session, so that it leads a process group) runs ``CMD`` in that group and waits.
When ``PARENT_PID`` is no longer its parent (the pfcompile process that started it
ended, even by SIGKILL), or on SIGTERM / SIGINT, it SIGKILLs the whole group: the
server and every worker it started (TVM's ``tvm.exec.popen_worker`` and forked session
processes, under qemu-user too), which a signal to the server alone leaves running.
When ``CMD`` exits, the guard exits with its code.

Why a guard process and not ``PR_SET_PDEATHSIG`` in the server: the death signal fires
when the *thread* that started the child ends (pfcompile starts servers from worker
threads too), and it is not inherited by the server's own workers. Standard library
only, run by path: it must not import pfcompile or tvm (it starts in milliseconds).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

__all__ = ["main"]

#: how often the guard checks that its parent is alive (seconds)
POLL_S = 0.2
#: after SIGTERM, how long the server may take to exit before the group is killed
GRACE_S = 3.0


def _group_members() -> list[int]:
    """Pids in the guard's process group other than the guard (Linux ``/proc``)."""
    me, group = os.getpid(), os.getpgid(0)
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                fields = fh.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue                              # ended meanwhile
        if int(fields[2]) == group:               # fields after "(comm)": state ppid pgrp
            out.append(int(entry))
    return out


def _kill_group() -> None:
    """SIGKILL every other process of the group (the server and its workers)."""
    for pid in _group_members():
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def main(argv: list[str]) -> int:
    if len(argv) < 2 or not argv[0].isdigit():
        print("usage: _guard.py PARENT_PID CMD...", file=sys.stderr)
        return 2
    parent = int(argv[0])
    child = subprocess.Popen(argv[1:])            # same process group as the guard
    stopping: list[float] = []

    def on_signal(signum: int, frame: object) -> None:
        if not stopping:
            stopping.append(time.monotonic())
            try:
                child.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    while True:
        code = child.poll()
        if code is not None:
            _kill_group()                         # the server's workers go with it
            return code
        if os.getppid() != parent or (stopping and time.monotonic() - stopping[0] > GRACE_S):
            _kill_group()
            return 128 + signal.SIGKILL
        time.sleep(POLL_S)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
