# SimulatorBase: the lifecycle the device and cloud simulators share.
#
# Strategy: a simulator owns one listening socket (bound on first start, rebound to the same
# port on a restart; port 0 means CYNC_SIM_PORT if set, else any free port), the set of its
# live EngineConnections, the chaos policy of the current run and an optional recorder.
# ``_begin`` starts a run for listening and dialling alike; ``stop()`` closes the listener,
# then every connection (FIN, RST after a grace time), then the subclass's own tasks, then the
# recording, and is safe twice.  It is an async context manager (``async with``), and binds
# loopback addresses only.  The owner hooks (connection_opened/ready/gone, relay) are what an
# EngineConnection reports; subclasses decide which connection is active.
# Private to simulator/: the public classes are CyncDeviceSimulator and CyncCloudSimulator.
from __future__ import annotations

import asyncio
import functools
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Self

from cyncsim.replay.capture.model import CLOUD, DEVICE, Sender
from cyncsim.replay.chaos import ChaosConfig, ChaosPolicy, FaultEvent
from cyncsim.replay.errors import CyncError
from cyncsim.replay.model import DeviceModel
from cyncsim.replay.seeds import SeedTree
from cyncsim.simulator._connection import EngineConnection
from cyncsim.simulator.ports import PortError, check_loopback, default_port
from cyncsim.simulator.record import ConnectionRecord, Recorder

__all__ = ["SimulatorBase", "default_model"]


@functools.lru_cache(maxsize=1)
def default_model() -> DeviceModel:
    """The shipped default model, loaded once per process."""
    from cyncsim import captures

    return captures.load_default_model()


class SimulatorBase:
    """Server lifecycle shared by the device and cloud simulators: listening socket, live
    connections, chaos policy per run, recorder; ``stop()`` leaves nothing behind."""

    _ours: str = "device"  # which side of the protocol this simulator plays

    def __init__(
        self,
        *,
        host: str,
        port: int,
        seeds: SeedTree,
        chaos_config: ChaosConfig | None,
        record: str | Path | Recorder | None,
        name: str,
    ) -> None:
        check_loopback(host)
        self.host = host
        self._port_arg = port
        self._bound_port = 0
        self.seeds = seeds
        self.chaos_config = chaos_config
        self.name = name
        self.recorder = (
            record if isinstance(record, Recorder) or record is None else Recorder(record)
        )
        self.chaos_policy: ChaosPolicy | None = None
        self._server: asyncio.Server | None = None
        self._live: set[EngineConnection] = set()
        self._running = False
        self._t0 = 0.0
        # Answers' timers are asked for early by the event loop's measured timer lateness
        # (simulator/_lateness.py), so they leave at the learned times on average; False (set
        # before connections open) schedules them at the asked times, late by the loop's lateness.
        self.lateness_compensation = True

    # ------------------------------------------------------------------ lifecycle
    @property
    def port(self) -> int:
        """The bound listening port (0 before the first start)."""
        return self._bound_port

    @property
    def running(self) -> bool:
        return self._running

    @property
    def open_connections(self) -> list[EngineConnection]:
        """Connections not closed yet (including one being replaced)."""
        return list(self._live)

    @property
    def fault_log(self) -> list[FaultEvent]:
        """Every chaos decision of the current (or last) run."""
        return [] if self.chaos_policy is None else self.chaos_policy.log

    def _begin(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if self._running:
            return loop
        self._running = True
        self._t0 = loop.time()
        if self.chaos_config is not None:
            self.chaos_policy = ChaosPolicy(
                self.chaos_config, self.seeds, name=self.name, t0=self._t0
            )
        if self.recorder is not None:
            self.recorder.open()
        return loop

    async def _listen(
        self, factory: Callable[[], EngineConnection], tls: ssl.SSLContext | None = None
    ) -> None:
        if self._server is not None:
            return
        loop = self._begin()
        port = self._bound_port or self._port_arg or default_port()
        try:
            # A fleet's devices dial in all at once: a deep accept queue avoids SYN retries.
            self._server = await loop.create_server(factory, self.host, port, ssl=tls, backlog=4096)
        except OSError as exc:
            raise PortError(f"cannot listen on {self.host}:{port}: {exc.strerror}") from None
        self._bound_port = int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        """Listen (each simulator knows for which protocol)."""
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def stop(self) -> None:
        """Close the listener and every connection, flush the recording; safe twice."""
        self._running = False
        self._stop_hook()
        server, self._server = self._server, None
        if server is not None:
            server.close()
        await _close_all(self._live)
        if server is not None:
            await server.wait_closed()
        await self._stop_tasks()
        if self.recorder is not None:
            self.recorder.close()

    def _stop_hook(self) -> None:
        """Subclasses: cancel their timers (called first in stop)."""

    async def _stop_tasks(self) -> None:
        """Subclasses: await their own tasks (called after connections are closed)."""

    def partition(self, active: bool = True) -> None:
        """Start (or end) a manual chaos partition: with chaos off, a default policy is made."""
        loop = asyncio.get_running_loop()
        if self.chaos_policy is None:
            self.chaos_policy = ChaosPolicy(
                ChaosConfig(), self.seeds, name=self.name, t0=loop.time()
            )
        if active:
            self.chaos_policy.partition_start(loop.time())
        else:
            self.chaos_policy.partition_end(loop.time())

    # ------------------------------------------------------------------ owner hooks
    def connection_opened(self, conn: EngineConnection) -> None:
        self._live.add(conn)

    def connection_gone(self, conn: EngineConnection, exc: Exception | None, active: bool) -> None:
        self._live.discard(conn)

    def _record_for(
        self, we_dialled: bool
    ) -> Callable[[EngineConnection], ConnectionRecord | None]:
        def make(conn: EngineConnection) -> ConnectionRecord | None:
            if self.recorder is None:
                return None
            ours: Sender = DEVICE if self._ours == "device" else CLOUD
            return self.recorder.connection(
                ours=ours, local=conn.local, peer=conn.peer, we_dialled=we_dialled, ts=time.time()
            )

        return make

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:  # noqa: ASYNC109
        """Poll ``predicate`` until true; CyncError(reason="timeout") after ``timeout`` s."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate():
            if loop.time() > deadline:
                raise CyncError(
                    f"{self.name}: condition not met within {timeout} s", reason="timeout"
                )
            await asyncio.sleep(0.002)


async def _close_all(conns: set[EngineConnection], grace: float = 1.0) -> None:
    """Close connections (FIN), abort what is still open after ``grace`` s, wait for all."""
    live = list(conns)
    for conn in live:
        conn.close()
    waits = [asyncio.ensure_future(c.closed.wait()) for c in live]
    if not waits:
        return
    _, pending = await asyncio.wait(waits, timeout=grace)
    if pending:
        for conn in live:
            if not conn.closed.is_set() and conn.transport is not None:
                conn.transport.abort()
        await asyncio.wait(pending, timeout=grace)
    for w in waits:
        w.cancel()
    await asyncio.gather(*waits, return_exceptions=True)
