"""Which device a search measures on: ``pfcompile run``'s device flags as one value.

:meth:`DeviceSpec.open` turns it into a :class:`~pfcompile.search.devices.SearchDevice`
(and the server it started, if any, for the caller to stop):

- ``null``: :class:`~pfcompile.search.devices.NullDevice` (measures nothing);
- an accelerator target: :class:`~pfcompile.search.accel_device.AccelSearchDevice` on the
  simulator at ``device`` / via ``rpc``, else on one started here;
- ``rpc``: :func:`~pfcompile.search.devices.open_rpc_device` (one session per server
  the tracker lists under ``key``);
- ``device``: :class:`~pfcompile.search.devices.RPCDevice` on that server;
- neither: the target's own device started here (:func:`pfcompile.device.serve`: a host
  server, or the emulated arm64 server) and an ``RPCDevice`` on it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pfcompile.device import DeviceProcess, free_port, parse_addr, serve
from pfcompile.errors import ConfigError
from pfcompile.runner import PoolStatus
from pfcompile.search.devices import NullDevice, RPCDevice, SearchDevice, open_rpc_device
from pfcompile.targets import Target

__all__ = ["LATENCY_KINDS", "DeviceSpec"]

#: what an accelerator search optimizes (``--accel-latency``): simulated accelerator +
#: measured host ops, or the simulated accelerator alone (:mod:`pfcompile.search.accel_device`)
LATENCY_KINDS = ("total", "accel")


@dataclass(frozen=True)
class DeviceSpec:
    device: str | None = None                   # --device HOST:PORT (a server)
    rpc: str | None = None                      # --rpc HOST:PORT (a tracker)
    key: str | None = None                      # --key (default: the target's rpc_key)
    null: bool = False                          # --null-device
    port_range: tuple[int, int] = (9300, 9350)  # for a device started here
    threads: int | None = None                  # --threads (default: deployment threads)
    accel_latency: str = "total"                # accelerator targets: "total" or "accel"

    def __post_init__(self) -> None:
        if self.rpc and self.device:
            raise ConfigError("give --rpc HOST:PORT --key K (a tracker) or --device HOST:PORT "
                              "(a server), not both")
        if self.rpc:
            parse_addr(self.rpc, "--rpc")
        if self.device:
            parse_addr(self.device, "--device")
        if self.accel_latency not in LATENCY_KINDS:
            raise ConfigError(f"--accel-latency '{self.accel_latency}' is not one of "
                              f"{', '.join(LATENCY_KINDS)}")
        lo, hi = self.port_range
        if not 0 < lo < hi <= 65536:
            raise ConfigError(f"port_range must be (first, end) with 0 < first < end <= 65536 "
                              f"(end excluded), got {self.port_range}")

    def _own_server(self, target: Target) -> DeviceProcess:
        lo, hi = self.port_range
        return serve(target, "127.0.0.1", free_port("127.0.0.1", lo, hi - 1),
                     threads=self.threads)

    def open(self, target: Target, on_change: Callable[[PoolStatus], None] | None = None
             ) -> tuple[SearchDevice, DeviceProcess | None]:
        """The search device, and the server started for it (None when none was)."""
        if self.accel_latency != "total" and not target.is_accelerator:
            raise ConfigError(f"--accel-latency {self.accel_latency} is for accelerator targets "
                              f"(fpga-*); target '{target.name}' runs the whole model on its "
                              "device, so its latency is the total")
        if self.null:
            return NullDevice(), None
        key = self.key or target.rpc_key
        if target.is_accelerator:
            from pfcompile.search.accel_device import AccelSearchDevice

            if self.rpc:
                return AccelSearchDevice(target, tracker=self.rpc, key=key,
                                         latency=self.accel_latency), None
            if self.device:
                h, p = parse_addr(self.device, "--device")
                return AccelSearchDevice(target, host=h, port=p, latency=self.accel_latency), None
            AccelSearchDevice(target, latency=self.accel_latency)  # check before starting
        elif self.rpc:
            # several servers under the key: a pool that measures a round's candidates at once
            return open_rpc_device(target, self.rpc, key, on_change=on_change,
                                   threads=self.threads), None
        elif self.device:
            h, p = parse_addr(self.device, "--device")
            return RPCDevice(target, host=h, port=p, threads=self.threads), None
        server = self._own_server(target)
        try:
            if target.is_accelerator:
                from pfcompile.search.accel_device import AccelSearchDevice

                return AccelSearchDevice(target, port=server.port,
                                         latency=self.accel_latency), server
            # a host server here runs on the cores the compiler uses: compile a round
            # before measuring it, so that no candidate is timed beside a compilation
            return RPCDevice(target, port=server.port, on_change=on_change,
                             threads=self.threads, compile_first=not target.emulated), server
        except BaseException:
            server.stop()
            raise
