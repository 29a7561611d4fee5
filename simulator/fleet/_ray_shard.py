# ShardActor: one shard of a RayFleet, inside a Ray actor process.
#
# Strategy: a plain class that RayFleet wraps with ray.remote when it launches (so importing
# this module never needs ray).  It runs a CyncFleet of its members on an asyncio default loop
# in a thread of its own: Ray's actor loop (uvloop, whose timers fire early, when installed)
# only forwards calls to it, and no signal handler is needed off the main thread.  Every call
# answers plain data (dicts, RunStats); ``wait_stopped`` stays pending while the shard runs,
# which is the driver's liveness probe.
# Private module: import the public names from cyncsim.simulator.fleet.
from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import threading
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

from cyncsim.replay.errors import CyncError
from cyncsim.replay.model import DeviceModel
from cyncsim.replay.stats import RunStats
from cyncsim.simulator._base import default_model
from cyncsim.simulator.fleet._fleet import CyncFleet, raise_fd_limit
from cyncsim.simulator.fleet._members import FleetMember
from cyncsim.simulator.fleet._workers import _Dial, _Options

__all__ = ["RAY_ENV", "ShardActor", "import_ray"]

T = TypeVar("T")
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_USE_UVLOOP": "0"}


def import_ray() -> Any:
    """The ray module (the optional extra cyncsim[ray]), told to stay offline (no usage
    stats) and to leave asyncio's default loop alone."""
    for key, value in RAY_ENV.items():
        os.environ.setdefault(key, value)
    try:
        return importlib.import_module("ray")
    except ImportError as exc:
        raise CyncError(
            "the Ray engine needs ray, which is not installed: pip install 'cyncsim[ray]'",
            reason="missing_extra",
        ) from exc


def _rss_fds() -> tuple[int, int]:
    """(resident bytes, open fds) of this process (Linux; zeros elsewhere)."""
    rss = 0
    with contextlib.suppress(OSError, ValueError), open("/proc/self/statm", "rb") as f:
        rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    fds = 0
    with contextlib.suppress(OSError):
        fds = len(os.listdir("/proc/self/fd"))
    return rss, fds


class ShardActor:
    """One shard on a Ray worker (wrapped by ray.remote when launched): a CyncFleet of its
    members on an asyncio default loop in a thread of its own."""

    def __init__(
        self, number: int, members: list[FleetMember], opts: _Options, model: DeviceModel | None
    ) -> None:
        logging.basicConfig(level=opts.log_level, format=f"shard {number} %(name)s: %(message)s")
        self.number = number
        self.members = members
        self.opts = opts
        self.model = model
        self.fleet: CyncFleet | None = None
        self.baseline = _rss_fds()
        self.loop = asyncio.new_event_loop()  # asyncio's own, whatever Ray's loop is
        self.stopped = asyncio.Event()  # on the fleet loop
        self.thread = threading.Thread(
            target=self.loop.run_forever, name=f"cyncsim-shard-{number}", daemon=True
        )
        self.thread.start()

    async def _on_loop(self, coro: Coroutine[Any, Any, T]) -> T:
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop))

    async def start(self, dial: _Dial | None) -> dict[str, Any]:
        """{"lines", "node", "pid"} once every device listens or is connected, else
        {"error", "reason"} with the fleet stopped."""
        return await self._on_loop(self._start(dial))

    async def _start(self, dial: _Dial | None) -> dict[str, Any]:
        opts = self.opts
        try:
            raise_fd_limit(2 * len(self.members) + 256)
            self.fleet = fleet = CyncFleet(
                members=self.members,
                model=self.model if self.model is not None else default_model(),
                seed=opts.seed, time_scale=opts.time_scale, chaos_config=opts.chaos_config,
                record=opts.record, host=opts.host, port=opts.port, spread=opts.spread,
                mesh_relay=opts.mesh_relay, firmware_version=opts.firmware_version,
                variant=opts.variant, concurrency=opts.concurrency,
                allow_remote=opts.allow_remote,
            )  # fmt: skip
            if dial is None:
                await fleet.start()
            else:
                await fleet.connect(
                    dial.host, dial.port, dial.tls, verify=dial.verify, cafile=dial.cafile,
                    server_hostname=dial.server_hostname, timeout=dial.timeout,
                )  # fmt: skip
        except CyncError as exc:
            await self._stop()
            return {"error": str(exc), "reason": exc.reason}
        except Exception as exc:  # reported to the driver, which shows one line
            await self._stop()
            return {"error": f"{type(exc).__name__}: {exc}", "reason": "shard_failed"}
        ray = import_ray()
        node = str(ray.util.get_node_ip_address())
        return {"lines": fleet.lines(), "node": node, "pid": os.getpid()}

    async def stats(self) -> RunStats:
        return await self._on_loop(self._stats())

    async def _stats(self) -> RunStats:
        return self.fleet.stats() if self.fleet is not None else RunStats()

    async def stop(self) -> RunStats:
        """Stop the fleet (safe twice); its final counters."""
        return await self._on_loop(self._stop())

    async def _stop(self) -> RunStats:
        if self.fleet is not None:
            await self.fleet.stop()
        self.stopped.set()
        return await self._stats()

    async def wait_stopped(self) -> None:
        """Returns once the shard stopped; fails when the actor dies (the liveness probe)."""
        await self._on_loop(self.stopped.wait())

    async def usage(self) -> dict[str, Any]:
        """Memory and fds of this actor process, now and before its fleet was built, and
        its CPU seconds so far."""
        rss, fds = _rss_fds()
        return {"pid": os.getpid(), "rss": rss, "fds": fds, "cpu": time.process_time(),
                "rss0": self.baseline[0], "fds0": self.baseline[1]}  # fmt: skip

    async def heartbeat_errors(self, idle: float, window: float) -> list[float]:
        """For ``window`` s: per heartbeat (0xD3) written, its gap since the device's
        previous packet minus ``idle``, in seconds."""
        return await self._on_loop(self._heartbeat_errors(idle, window))

    async def _heartbeat_errors(self, idle: float, window: float) -> list[float]:
        loop = asyncio.get_running_loop()
        errors: list[float] = []
        saved = []
        for dev in self.fleet.devices if self.fleet is not None else ():
            conn = dev.connection
            if conn is None:
                continue
            inner, last = conn.observer, [None]

            def observe(way: str, data: bytes, inner: Any = inner, last: Any = last) -> None:
                now = loop.time()
                if way == "out" and data[:1] == b"\xd3" and last[0] is not None:
                    errors.append(now - last[0] - idle)
                last[0] = now
                if inner is not None:
                    inner(way, data)

            saved.append((conn, inner))
            conn.observer = observe
        await asyncio.sleep(window)
        for conn, inner in saved:
            conn.observer = inner
        return errors
