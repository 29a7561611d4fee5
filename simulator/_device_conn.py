# One TCP (or TLS) connection driven by a replay engine: framing, timing, chaos, recording.
#
# Strategy: an asyncio.BufferedProtocol reads into one reused bytearray and cuts whole
# packets by the outer header (bytes 1-2 are always zero; a byte that cannot start a header
# is skipped and counted, as replay.framer does).  Each packet goes to the engine at once,
# or, under chaos, through ChaosPolicy.on_packet first (dropped, delayed, duplicated,
# corrupted: at whole-packet granularity).  The engine's actions are written at once when
# due, else kept in one heap ordered by (due time, arrival order) behind a single
# loop.call_at timer that also serves the engine's own deadline; a timer that wakes before
# its time re-arms instead of acting early.  Writes go to the transport, through a
# ChaosWriter when chaos is on, and through the recorder when recording.
# Shared by the device and the cloud simulators; private to simulator/.
from __future__ import annotations

import asyncio
import functools
import heapq
import itertools
import logging
import math
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, Self

from cyncsim.replay.capture.model import CLOUD, DEVICE, Sender
from cyncsim.replay.chaos import ChaosConfig, ChaosPolicy, Direction, FaultEvent
from cyncsim.replay.engine import Action, Close, Engine, Relay, Send
from cyncsim.replay.errors import CyncError
from cyncsim.replay.model import DeviceModel
from cyncsim.replay.seeds import SeedTree
from cyncsim.simulator.chaos import ChaosWriter, abort_connection
from cyncsim.simulator.ports import PortError, check_loopback, default_port
from cyncsim.simulator.record import ConnectionRecord, Recorder

__all__ = [
    "ConnectionOwner",
    "EngineConnection",
    "SimulatorBase",
    "check_loopback",
    "close_all",
    "default_model",
]

logger = logging.getLogger("cyncsim.sim")
_BUF = 4096
INF = math.inf
_SEND, _DELIVER, _CLOSE = 0, 1, 2
_Item = tuple[float, int, int, bytes]  # (due, order, kind, data)


@functools.lru_cache(maxsize=1)
def default_model() -> DeviceModel:
    """The shipped default model, loaded once per process."""
    from cyncsim import captures

    return captures.load_default_model()


class ConnectionOwner(Protocol):
    """What a connection reports to its simulator."""

    def connection_opened(self, conn: EngineConnection) -> None: ...

    def connection_ready(self, conn: EngineConnection) -> bool: ...

    def connection_gone(
        self, conn: EngineConnection, exc: Exception | None, active: bool
    ) -> None: ...

    def relay(self, conn: EngineConnection, action: Relay) -> None: ...


class _RecordingSink:
    """A transport stand-in that records every write before making it."""

    __slots__ = ("record", "transport")

    def __init__(self, transport: asyncio.WriteTransport, record: ConnectionRecord) -> None:
        self.transport = transport
        self.record = record

    def write(self, data: bytes) -> None:
        self.record.data("out", bytes(data), time.time())
        self.transport.write(data)

    def is_closing(self) -> bool:
        return self.transport.is_closing()


class EngineConnection(asyncio.BufferedProtocol):
    """Moves bytes between a socket and ``engine``; ``inbound`` is the chaos direction of
    what is read (to_device for a device, from_device for a cloud)."""

    def __init__(
        self,
        owner: ConnectionOwner,
        engine: Engine,
        *,
        inbound: Direction,
        policy: ChaosPolicy | None = None,
        record: Callable[[EngineConnection], ConnectionRecord | None] | None = None,
        observer: Callable[[str, bytes], None] | None = None,
    ) -> None:
        self.owner = owner
        self.engine = engine
        self.inbound = inbound
        self.policy = policy
        self._make_record = record
        self.record: ConnectionRecord | None = None
        self.observer = observer  # (direction "in"/"out", packet bytes), for tests
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self._out: ChaosWriter | _RecordingSink | asyncio.Transport | None = None
        self._buf = bytearray(_BUF)
        self._fill = 0
        self._heap: list[_Item] = []
        self._order = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = INF
        self._stall: asyncio.TimerHandle | None = None
        self.skipped = 0  # bytes that could not start a packet
        self.refused = False  # closed at once: a chaos partition refuses connections
        self.dialled = False  # we made this connection (dial mode), not accepted it
        self.active = False  # the engine is attached (the owner accepted the connection)
        self.closed = asyncio.Event()
        self.peer: tuple[str, int] = ("", 0)
        self.local: tuple[str, int] = ("", 0)

    @property
    def pending(self) -> int:
        """Actions and chaos writes scheduled but not done yet."""
        out = self._out
        return len(self._heap) + (out.pending if isinstance(out, ChaosWriter) else 0)

    # ------------------------------------------------------------------ asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.peer = transport.get_extra_info("peername")[:2]
        self.local = transport.get_extra_info("sockname")[:2]
        self.owner.connection_opened(self)
        now = self.loop.time()
        if self.policy is not None and not self.policy.accepts_connection(now):
            self.refused = True
            abort_connection(transport)
            return
        self.record = self._make_record(self) if self._make_record is not None else None
        sink: _RecordingSink | asyncio.Transport = transport
        if self.record is not None:
            sink = _RecordingSink(transport, self.record)
        if self.policy is not None:
            out = (
                Direction.TO_DEVICE
                if self.inbound is Direction.FROM_DEVICE
                else Direction.FROM_DEVICE
            )
            self._out = ChaosWriter(sink, self.policy, out, on_reset=self._reset)
            until = self.policy.stall_until(now)
            stall = self.policy.config.stall
            if until is not None:
                self._pause(until)
            elif stall is not None and stall.at_s is not None and self.policy.t0 + stall.at_s > now:
                start = self.policy.t0 + stall.at_s
                self._stall = self.loop.call_at(start, self._stall_check)
        else:
            self._out = sink
        if not self.owner.connection_ready(self):
            self._teardown()
            self._out = None
            transport.close()
            return
        self.active = True
        self._apply(self.engine.connection_made(now), now)

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._fill >= len(self._buf):
            self._buf.extend(bytes(len(self._buf)))
        return memoryview(self._buf)[self._fill :]

    def buffer_updated(self, nbytes: int) -> None:
        buf = self._buf
        if self.record is not None:
            self.record.data("in", bytes(buf[self._fill : self._fill + nbytes]), time.time())
        self._fill += nbytes
        fill = self._fill
        pos = 0
        now = self.loop.time()
        while fill - pos >= 5 and self.active:
            if buf[pos + 1] or buf[pos + 2]:
                pos += 1  # not at a packet boundary: skip, as replay.framer does
                self.skipped += 1
                continue
            end = pos + 5 + ((buf[pos + 3] << 8) | buf[pos + 4])
            if end > fill:
                if end > len(buf):
                    buf.extend(bytes(end - len(buf)))
                break
            self._incoming(bytes(buf[pos:end]), now)
            pos = end
        if pos:
            rest = fill - pos
            buf[:rest] = buf[pos:fill]
            self._fill = rest
            if len(buf) > _BUF and rest <= _BUF:
                del buf[_BUF:]

    def eof_received(self) -> bool | None:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self._teardown()
        was_active, self.active = self.active, False
        if self.record is not None:
            self.record.closed(time.time(), reset=exc is not None)
        self.owner.connection_gone(self, exc, was_active)
        self.closed.set()

    # ------------------------------------------------------------------ packets in
    def _incoming(self, data: bytes, now: float) -> None:
        if self.observer is not None:
            self.observer("in", data)
        policy = self.policy
        if policy is None:
            self._apply(self.engine.receive(data, now), now)
            return
        for em in policy.on_packet(self.inbound, data, now):
            if em.delay_s <= 0 and not self._heap:
                self._apply(self.engine.receive(em.data, now), now)
            else:
                self._push(now + em.delay_s, _DELIVER, em.data)
        if policy.should_reset(self.inbound, policy.packets_seen(self.inbound), now):
            self._reset()
            return
        until = policy.stall_until(now)
        if until is not None:
            self._pause(until)
        self._arm()

    def _pause(self, until: float) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        self.transport.pause_reading()
        if self._stall is not None:
            self._stall.cancel()
        self._stall = self.loop.call_at(until, self._stall_check)

    def _stall_check(self) -> None:
        self._stall = None
        if self.policy is None or self.transport is None or self.transport.is_closing():
            return
        until = self.policy.stall_until(self.loop.time())
        if until is not None:
            self._pause(until)
        else:
            self.transport.resume_reading()

    # ------------------------------------------------------------------ actions out
    def apply(self, actions: list[Action]) -> None:
        """Carry out actions made outside a packet callback (set_state, commands)."""
        if self.active:
            self._apply(actions, self.loop.time())

    def _apply(self, actions: list[Action], now: float, *, run: bool = True) -> None:
        batch: list[bytes] = []  # due now: one write (one syscall) for all of them
        for a in actions:
            if type(a) is Send:
                if a.at <= now and not self._heap:
                    batch.append(a.data)
                else:
                    self._push(a.at, _SEND, a.data)
            elif type(a) is Close:
                self._push(a.at, _CLOSE, b"")
            elif type(a) is Relay:
                self.owner.relay(self, a)
        if batch:
            self._write_many(batch)
        if not run:
            return
        if self._heap and self._heap[0][0] <= now:
            self._run_due(now)
        self._arm()

    def _write(self, data: bytes) -> None:
        out = self._out
        if out is None:
            return
        if self.observer is not None:
            self.observer("out", data)
        if isinstance(out, ChaosWriter):
            out.write_packet(data)
        elif not out.is_closing():
            out.write(data)

    def _write_many(self, packets: list[bytes]) -> None:
        out = self._out
        if len(packets) == 1 or isinstance(out, ChaosWriter):
            for data in packets:  # chaos works packet by packet
                self._write(data)
            return
        if self.observer is not None:
            for data in packets:
                self.observer("out", data)
        if out is not None and not out.is_closing():
            out.write(b"".join(packets))

    def _push(self, at: float, kind: int, data: bytes) -> None:
        heapq.heappush(self._heap, (at, next(self._order), kind, data))

    def _run_due(self, now: float) -> None:
        heap = self._heap
        while heap and heap[0][0] <= now and self.active:
            _, _, kind, data = heapq.heappop(heap)
            if kind == _SEND:
                self._write(data)
            elif kind == _DELIVER:
                self._apply(self.engine.receive(data, now), now, run=False)
            else:
                self.close()
                return

    def _arm(self) -> None:
        if not self.active:
            return
        due = self.engine.next_deadline()
        if self._heap and self._heap[0][0] < due:
            due = self._heap[0][0]
        if due == INF or (self._timer is not None and due >= self._timer_at):
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = due
        self._timer = self.loop.call_at(due, self._on_timer)

    def _on_timer(self) -> None:
        now = self.loop.time()
        if now < self._timer_at:  # woke early (clock resolution): never act before the time
            self._timer = self.loop.call_at(self._timer_at, self._on_timer)
            return
        self._timer = None
        self._timer_at = INF
        if not self.active:
            return
        self._run_due(now)
        if self.active and self.engine.next_deadline() <= now:
            self._apply(self.engine.poll(now), now)
        self._arm()

    # ------------------------------------------------------------------ closing
    def _reset(self) -> None:
        """Chaos reset: drop everything pending and close abruptly (RST)."""
        self._teardown()
        if self.transport is not None:
            abort_connection(self.transport)

    def close(self, *, abort: bool = False) -> None:
        """Close the connection (FIN, or RST with ``abort``); pending writes are dropped."""
        transport = self.transport
        self._teardown()
        if transport is not None and not transport.is_closing():
            if abort:
                abort_connection(transport)
            else:
                transport.close()

    def _teardown(self) -> None:
        for handle in (self._timer, self._stall):
            if handle is not None:
                handle.cancel()
        self._timer = self._stall = None
        self._timer_at = INF
        self._heap.clear()
        if isinstance(self._out, ChaosWriter):
            self._out.close()


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
        await close_all(self._live)
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


async def close_all(conns: set[EngineConnection], grace: float = 1.0) -> None:
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
