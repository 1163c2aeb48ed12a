"""Devices: TVM RPC servers and trackers, started and stopped as processes.

A *device* is an RPC server that pfcompile uploads compiled models to: a stock
``tvm.exec.rpc_server`` on this machine (``host``), the same server on the emulated
arm64 device prepared by ``tools/setup_arm64_device.sh`` (an aarch64 Python under
qemu-user; latencies are functional checks only), or the accelerator simulator
(``python -m pfcompile.accel.serve``, FPGA-style targets). :func:`serve` starts the one
a target names; talking to it is the runners' job (:mod:`pfcompile.runner`).

Every process started here runs under a guard (:mod:`pfcompile._guard`) that leads
its process group: stopping a device ends the server *and* its workers, and a device
dies with the pfcompile process that started it, even one killed by SIGKILL.

Everything binds to loopback unless told otherwise, and every wait is bounded:
an unreachable tracker or server is a :class:`DeviceError` naming ``host:port``.
"""

from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from pfcompile.deploy import THREADS_ENV, deployment_threads
from pfcompile.errors import ConfigError, DeviceError
from pfcompile.targets import Target, load_target

__all__ = [
    "PORT_RANGE",
    "DeviceInfo",
    "DeviceProcess",
    "LocalRPC",
    "call_with_deadline",
    "connect",
    "default_device_dir",
    "emulated_python",
    "free_port",
    "parse_addr",
    "parse_tracker",
    "query",
    "serve",
    "tracker",
    "wait_ready",
]

#: Ports pfcompile picks from when it needs a free one (``free_port``).
PORT_RANGE = (9100, 9199)


def parse_addr(text: str, what: str = "address") -> tuple[str, int]:
    """``"host:port"`` -> ``(host, port)``; a ConfigError naming *what* otherwise."""
    host, sep, port = str(text).rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{what} must be HOST:PORT (e.g. 127.0.0.1:9190), got '{text}'")
    return host, int(port)


def free_port(host: str = "127.0.0.1", lo: int = PORT_RANGE[0], hi: int = PORT_RANGE[1],
              exclude: tuple[int, ...] = ()) -> int:
    """A port in ``[lo, hi]`` nobody listens on now (first fit from a random start)."""
    span = hi - lo + 1
    start = (os.getpid() * 7 + int(time.monotonic() * 1000)) % span
    for i in range(span):
        port = lo + (start + i) % span
        if port in exclude:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    raise DeviceError(f"no free port in {lo}..{hi} on {host}")


def parse_tracker(text: str | None, what: str = "--rpc") -> tuple[str, int] | None:
    """:func:`parse_addr` of an optional tracker address (None stays None)."""
    return None if text is None else parse_addr(text, what)


def default_device_dir() -> Path:
    """Where ``tools/setup_arm64_device.sh`` puts the emulated arm64 device by default."""
    from pfcompile.paths import cache_dir

    return cache_dir() / "arm64-device"


def emulated_python(device_dir: Path | str | None = None) -> tuple[Path, Path]:
    """``(python wrapper, site dir)`` of a prepared emulated arm64 device.

    Raises DeviceError saying to run the setup script when the folder is incomplete.
    """
    d = Path(device_dir) if device_dir else default_device_dir()
    wrapper, site = d / "root" / "usr" / "bin" / "python3", d / "site"
    if not (d / ".stamp").exists() or not wrapper.exists() or not (site / "tvm").is_dir():
        raise DeviceError(
            f"emulated arm64 device not prepared in {d}: run tools/setup_arm64_device.sh {d}"
        )
    return wrapper, site


@dataclass(eq=False)
class DeviceProcess:
    """A server or tracker process pfcompile started. Stop it with :meth:`stop`."""

    kind: str  # "server" or "tracker"
    host: str
    port: int
    proc: subprocess.Popen
    log_path: Path
    key: str = ""
    target: str = ""
    emulated: bool = False
    ready_s: float = 60.0

    @property
    def addr(self) -> str:
        return f"{self.host}:{self.port}"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, n: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL the process and its session workers at once (tests use it to
        simulate a device dying mid-measurement)."""
        self._signal(signal.SIGKILL)

    def _signal(self, sig: int) -> None:
        if self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, sig)  # own process group: started with start_new_session
        except ProcessLookupError:
            pass

    def stop(self, grace_s: float = 5.0, keep_log: bool = False) -> None:
        """SIGTERM (and SIGCONT, in case it was stopped), wait up to ``grace_s``, then
        SIGKILL; remove the log unless ``keep_log``. Idempotent."""
        self._signal(signal.SIGTERM)
        self._signal(signal.SIGCONT)
        try:
            self.proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            self._signal(signal.SIGKILL)
            self.proc.wait(timeout=grace_s)
        # forked session workers may outlive the parent briefly: kill the group
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if not keep_log:
            self.log_path.unlink(missing_ok=True)
        _LIVE.discard(self)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


#: processes started here and not yet stopped; stopped at interpreter exit as a safety net
_LIVE: set[DeviceProcess] = set()


@atexit.register
def _stop_leftovers() -> None:
    for dp in list(_LIVE):
        dp.stop()


_GUARD = Path(__file__).resolve().parent / "_guard.py"


def _spawn(kind: str, cmd: list[str], env: dict[str, str], host: str, port: int,
           ready_s: float | None, **info: Any) -> DeviceProcess:
    """Start *cmd* under the guard (:mod:`pfcompile._guard`: its own process group, ended
    with this process), logging to a temp file; wait until it is ready unless
    ``ready_s`` is None (the caller then calls ``_wait_ready``)."""
    fd, name = tempfile.mkstemp(prefix=f"pfcompile-{kind}-{port}-", suffix=".log")
    guarded = [sys.executable, str(_GUARD), str(os.getpid()), *cmd]
    with os.fdopen(fd, "wb") as fh:
        proc = subprocess.Popen(guarded, stdout=fh, stderr=subprocess.STDOUT, env=env,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    dp = DeviceProcess(kind, host, port, proc, Path(name), **info)
    _LIVE.add(dp)
    if ready_s is not None:
        _wait_ready(dp, ready_s)
    return dp


def wait_ready(dp: DeviceProcess, ready_s: float | None = None) -> None:
    """Block until *dp* bound its port (bounded by ``ready_s``, default its own)."""
    _wait_ready(dp, ready_s if ready_s is not None else dp.ready_s)


def _wait_ready(dp: DeviceProcess, ready_s: float) -> None:
    """Wait until the process logs that it bound its port (both TVM's server and
    tracker log ``bind to HOST:PORT``)."""
    deadline = time.monotonic() + ready_s
    needle = f":{dp.port}"
    while time.monotonic() < deadline:
        if not dp.alive():
            raise DeviceError(
                f"{dp.kind} for {dp.addr} exited with code {dp.proc.returncode} before it "
                f"was ready; its log ({dp.log_path}):\n{dp.log_tail()}"
            )
        text = dp.log_path.read_text(errors="replace") if dp.log_path.exists() else ""
        if any(("bind to" in ln or "Binding" in ln) and needle in ln for ln in text.splitlines()):
            return
        time.sleep(0.1)
    dp.stop(keep_log=True)
    raise DeviceError(
        f"{dp.kind} for {dp.addr} did not become ready within {ready_s:.0f} s; "
        f"its log ({dp.log_path}):\n{dp.log_tail()}"
    )


def _clean_env() -> dict[str, str]:
    env = dict(os.environ)
    for k in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP"):
        env.pop(k, None)
    return env


def serve(target: Target, host: str = "127.0.0.1", port: int = 9090,
          tracker_addr: str | None = None, key: str | None = None,
          device_dir: Path | str | None = None, ready_s: float | None = None,
          wait: bool = True, threads: int | None = None) -> DeviceProcess:
    """Start the device server for *target* on exactly ``host:port``.

    ``target.serve == "local"`` runs a stock ``tvm.exec.rpc_server`` with this Python;
    ``"qemu"`` runs it on the emulated aarch64 Python from *device_dir* (``import tvm``
    alone takes ~20 s there); ``"accel-sim"`` runs the accelerator simulator
    (``python -m pfcompile.accel.serve``). With *tracker_addr* the server registers
    under *key* (default: the target's ``rpc_key``). Returns once the port is bound
    (DeviceError otherwise), or at once with ``wait=False`` (then call
    ``wait_ready(proc)``). ``threads`` sets ``TVM_NUM_THREADS`` of the server, the
    most threads its runs can have (default: the target's deployment threads,
    :func:`pfcompile.deploy.deployment_threads`; runners set each run's pool within it).
    """
    key = key if key is not None else target.rpc_key
    missing = target.missing_cpu_features()
    if missing and target.serve == "local":
        raise DeviceError(
            f"target '{target.name}' ({target.path}) needs CPU features {', '.join(missing)} "
            f"that this machine's CPU lacks: its code would stop with an illegal instruction. "
            f"Use --target host (detected: int8 by "
            f"{load_target('host').hardware.get('int8_dot')}) or a machine that has them")
    env = _clean_env()
    env[THREADS_ENV] = str(int(threads) if threads else deployment_threads(target))
    if tracker_addr:
        parse_addr(tracker_addr, "--tracker")
    if target.serve == "accel-sim":
        # the simulator runs pfcompile's own code: the same pfcompile as this process
        env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)
        cmd = [sys.executable, "-m", "pfcompile.accel.serve", "--target", target.path,
               "--host", host, "--port", str(port)]
        cmd += ["--tracker", tracker_addr, "--key", key] if tracker_addr else []
        dp = _spawn("server", cmd, env, host, port, None, key=key, target=target.name)
        dp.ready_s = 60.0 if ready_s is None else ready_s
        if wait:
            wait_ready(dp)
        return dp
    if target.serve == "local":
        python = sys.executable
        ready_s = 60.0 if ready_s is None else ready_s
    elif target.serve == "qemu":
        wrapper, site = emulated_python(device_dir)
        python = str(wrapper)
        env["PYTHONPATH"] = str(site)
        ready_s = 240.0 if ready_s is None else ready_s
    else:
        raise ConfigError(
            f"target '{target.name}' ({target.path}): device.serve = '{target.serve}' is not "
            f"one pfcompile can start (local, qemu, accel-sim); start its rpc_server yourself"
        )
    cmd = [python, "-m", "tvm.exec.rpc_server", "--host", host, "--port", str(port),
           "--port-end", str(port + 1)]
    if tracker_addr:
        cmd += ["--tracker", tracker_addr, "--key", key]
    dp = _spawn("server", cmd, env, host, port, None, key=key, target=target.name,
                emulated=target.emulated)
    dp.ready_s = ready_s
    if wait:
        wait_ready(dp)
    return dp


def tracker(host: str = "127.0.0.1", port: int = 9190, ready_s: float = 60.0,
            wait: bool = True) -> DeviceProcess:
    """Start a stock ``tvm.exec.rpc_tracker`` on exactly ``host:port``; with
    ``wait=False`` return at once (then call ``wait_ready(proc)``)."""
    cmd = [sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", host, "--port", str(port),
           "--port-end", str(port + 1)]
    dp = _spawn("tracker", cmd, _clean_env(), host, port, None)
    dp.ready_s = ready_s
    if wait:
        wait_ready(dp)
    return dp


def _probe(host: str, port: int, what: str, timeout_s: float) -> None:
    """A plain TCP connect with a deadline, so that an unreachable address fails fast
    (TVM's own connect retries for 60 s)."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except OSError as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        raise DeviceError(
            f"{what} {host}:{port} is unreachable ({reason} after at most {timeout_s:g} s); "
            f"is it running? start one with `pfcompile device "
            f"{'tracker' if what == 'tracker' else 'serve'}`"
        ) from exc


def call_with_deadline(fn: Any, deadline_s: float, what: str, *args: Any) -> Any:
    """Run ``fn(*args)`` in a daemon thread; its result, its exception re-raised, or a
    DeviceError when it is still running after ``deadline_s`` (the thread is left
    behind, blocked on a dead socket; the caller goes on)."""
    box: dict[str, Any] = {}

    def work() -> None:
        try:
            box["value"] = fn(*args)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            box["error"] = exc

    th = threading.Thread(target=work, name=f"pfcompile:{what}", daemon=True)
    th.start()
    th.join(deadline_s)
    if th.is_alive():
        raise DeviceError(f"{what}: no answer within {deadline_s:g} s")
    if "error" in box:
        raise box["error"]
    return box.get("value")


@dataclass(frozen=True)
class DeviceInfo:
    """One key's devices as a tracker reports them."""

    key: str
    free: int
    pending: int
    total: int
    servers: tuple[str, ...] = field(default_factory=tuple)


def query(tracker_addr: str, timeout_s: float = 10.0) -> list[DeviceInfo]:
    """The devices registered at a tracker, one :class:`DeviceInfo` per key."""
    host, port = parse_addr(tracker_addr, "tracker address")
    _probe(host, port, "tracker", timeout_s)
    from tvm import rpc  # after the probe: an unreachable tracker fails without importing tvm

    def ask() -> dict:
        return rpc.connect_tracker(host, port).summary()

    try:
        summary = call_with_deadline(ask, timeout_s, f"tracker {host}:{port}")
    except DeviceError:
        raise
    except Exception as exc:
        raise DeviceError(f"tracker {host}:{port} did not answer a query: {exc}") from exc
    servers: dict[str, list[str]] = {}
    for s in summary.get("server_info", []):
        k = str(s.get("key", "")).removeprefix("server:")
        addr = s.get("addr") or ["?", "?"]
        servers.setdefault(k, []).append(f"{addr[0]}:{addr[1]}")
    out = []
    for k, q in sorted(summary.get("queue_info", {}).items()):
        free, pending = int(q.get("free", 0)), int(q.get("pending", 0))
        out.append(DeviceInfo(k, free, pending, len(servers.get(k, [])) or free,
                              tuple(servers.get(k, []))))
    return out


def connect(rpc: str | None = None, key: str | None = None, device: str | None = None,
            timeout_s: float = 30.0, session_timeout_s: float = 0.0) -> Any:
    """An RPC session: via a tracker (``rpc="host:port"`` and ``key``) or straight to a
    server (``device="host:port"``). Bounded by ``timeout_s``; DeviceError naming the
    address otherwise. ``session_timeout_s`` > 0 makes the server end the session
    (and free itself) after that many seconds."""
    if (rpc is None) == (device is None):
        raise ConfigError("give exactly one of --rpc HOST:PORT (a tracker, with --key) or "
                          "--device HOST:PORT (a server)")
    if device is not None:
        host, port = parse_addr(device, "--device")
        _probe(host, port, "device", min(timeout_s, 10.0))
        from tvm import rpc as tvm_rpc

        def direct() -> Any:
            return tvm_rpc.connect(host, port, session_timeout=session_timeout_s)

        try:
            return call_with_deadline(direct, timeout_s, f"device {host}:{port}")
        except DeviceError:
            raise
        except Exception as exc:
            raise DeviceError(f"device {host}:{port} refused the session: {exc}") from exc

    host, port = parse_addr(str(rpc), "--rpc")
    if not key:
        raise ConfigError(f"--rpc {host}:{port} needs --key (the device key at the tracker)")
    known = query(f"{host}:{port}", timeout_s=min(timeout_s, 10.0))
    if key not in {d.key for d in known}:
        listed = ", ".join(f"{d.key} ({d.total})" for d in known) or "none"
        raise DeviceError(f"tracker {host}:{port} has no device with key '{key}' "
                          f"(it lists: {listed})")
    from tvm import rpc as tvm_rpc

    def via_tracker() -> Any:
        trk = tvm_rpc.connect_tracker(host, port)
        return trk.request(key, priority=1, session_timeout=session_timeout_s, max_retry=2)

    try:
        return call_with_deadline(via_tracker, timeout_s,
                                  f"device '{key}' via tracker {host}:{port}")
    except DeviceError:
        raise
    except Exception as exc:
        raise DeviceError(f"tracker {host}:{port} could not give a '{key}' device: {exc}") from exc


class LocalRPC:
    """A tracker and ``n_servers`` servers for ``target`` (default host) on loopback under
    ``key``, torn down on exit; :meth:`ensure` restarts servers a test killed.
    ``threads``: ``TVM_NUM_THREADS`` of each server (1: two servers share the cores);
    ``ports``: the range to take free ports from.

    >>> with LocalRPC() as lrpc:           # doctest: +SKIP
    ...     sess = lrpc.connect()
    """

    def __init__(self, target: Target | None = None, key: str = "local", n_servers: int = 1,
                 host: str = "127.0.0.1", device_dir: Path | str | None = None,
                 threads: int | None = None, ports: tuple[int, int] = PORT_RANGE) -> None:
        self.target = target or load_target("host")
        self.key = key
        self.n_servers = n_servers
        self.host = host
        self.device_dir = device_dir
        self.threads = threads
        self.ports = ports
        self.tracker: DeviceProcess | None = None
        self.servers: list[DeviceProcess] = []
        self._used: list[int] = []

    @property
    def tracker_addr(self) -> str:
        assert self.tracker is not None, "LocalRPC used outside its with-block"
        return self.tracker.addr

    def _port(self) -> int:
        p = free_port(self.host, *self.ports, exclude=tuple(self._used))
        self._used.append(p)
        return p

    def start(self, n: int) -> list[DeviceProcess]:
        """Start ``n`` more servers (and the tracker, the first time); wait until all are
        registered. Start everything, then wait: the slow imports overlap, and a server
        retries its tracker connection until the tracker is up."""
        if self.tracker is None:
            self.tracker = tracker(self.host, self._port(), wait=False)
        new = [serve(self.target, self.host, self._port(), self.tracker_addr, self.key,
                     self.device_dir, wait=False, threads=self.threads) for _ in range(n)]
        self.servers.extend(new)
        for proc in [self.tracker, *new]:
            wait_ready(proc)
        self._wait_registered(60.0)
        return new

    def ensure(self, n: int | None = None) -> list[DeviceProcess]:
        """``n`` (default ``n_servers``) live servers, restarting any that died."""
        for s in self.servers:
            if not s.alive():
                s.stop()
        self.servers = [s for s in self.servers if s.alive()]
        want = self.n_servers if n is None else n
        if len(self.servers) < want:
            self.start(want - len(self.servers))
        return self.servers

    def __enter__(self) -> Self:
        try:
            self.start(self.n_servers)
        except BaseException:
            self.close()
            raise
        return self

    def _wait_registered(self, wait_s: float) -> None:
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            for d in query(self.tracker_addr):
                if d.key == self.key and d.free >= len(self.servers):
                    return
            time.sleep(0.2)
        raise DeviceError(f"servers did not register as '{self.key}' at tracker "
                          f"{self.tracker_addr} within {wait_s:g} s")

    def connect(self, timeout_s: float = 30.0) -> Any:
        return connect(rpc=self.tracker_addr, key=self.key, timeout_s=timeout_s)

    def close(self) -> None:
        for s in self.servers:
            s.stop()
        if self.tracker is not None:
            self.tracker.stop()

    def __exit__(self, *exc: object) -> None:
        self.close()
