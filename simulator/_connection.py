# One TCP (or TLS) connection driven by a replay engine: framing, timing, chaos, recording.
#
# Strategy: an asyncio.Protocol hands what it reads to a PacketStream (simulator/_stream.py:
# replay.framer.PacketFramer cuts the packets, noise is skipped and counted, and a header that
# claims more than the owner accepts is reported in one log line and skipped), so nothing read
# is ever a reason to reset the connection.  Each packet goes to the engine at once, or, under
# chaos, through ChaosPolicy.on_packet first (dropped, delayed, duplicated, corrupted: at
# whole-packet granularity).  The engine's actions are written at once when due, else kept in
# one heap ordered by (due time, arrival order) behind a single loop.call_at timer that also
# serves the engine's own deadline; a timer that wakes before its time re-arms instead of
# acting early.  Writes go to the transport, through a ChaosWriter when chaos is on, and
# through the recorder when recording.
# Shared by the device and the cloud simulators; private to simulator/.
from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import math
import time
from collections.abc import Callable
from typing import Protocol

from cyncsim.replay.chaos import ChaosPolicy, Direction
from cyncsim.replay.engine import Action, Close, Engine, Relay, Send
from cyncsim.simulator._stream import MAX_PACKET, PacketStream
from cyncsim.simulator.chaos import ChaosWriter, abort_connection
from cyncsim.simulator.record import ConnectionRecord

__all__ = ["ConnectionOwner", "EngineConnection", "close_all"]

logger = logging.getLogger("cyncsim.sim")
INF = math.inf
_SEND, _DELIVER, _CLOSE = 0, 1, 2
_Item = tuple[float, int, int, bytes]  # (due, order, kind, data)
_OVERSIZE_LINES = 8  # per connection; later oversize headers are counted, not logged


class ConnectionOwner(Protocol):
    """What a connection reports to its simulator (``name`` opens its log lines)."""

    name: str

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


class EngineConnection(asyncio.Protocol):
    """Moves bytes between a socket and ``engine``; ``inbound`` is the chaos direction of
    what is read (to_device for a device, from_device for a cloud); ``max_packet`` is the
    longest packet accepted (a longer header is reported and skipped as noise)."""

    def __init__(
        self,
        owner: ConnectionOwner,
        engine: Engine,
        *,
        inbound: Direction,
        policy: ChaosPolicy | None = None,
        record: Callable[[EngineConnection], ConnectionRecord | None] | None = None,
        observer: Callable[[str, bytes], None] | None = None,
        max_packet: int = MAX_PACKET,
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
        self._stream = PacketStream(max_packet, self._oversize)
        self._heap: list[_Item] = []
        self._order = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = INF
        self._stall: asyncio.TimerHandle | None = None
        self.refused = False  # closed at once: a chaos partition refuses connections
        self.dialled = False  # we made this connection (dial mode), not accepted it
        self.active = False  # the engine is attached (the owner accepted the connection)
        self.closed = asyncio.Event()
        self.peer: tuple[str, int] = ("", 0)
        self.local: tuple[str, int] = ("", 0)

    @property
    def skipped(self) -> int:
        """Bytes read that could not start a packet (noise, headers longer than accepted)."""
        return self._stream.skipped

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

    def data_received(self, data: bytes) -> None:
        if self.record is not None:
            self.record.data("in", data, time.time())
        now = self.loop.time()
        for packet in self._stream.feed(data):
            if not self.active:
                break
            self._incoming(packet, now)

    def _oversize(self, offset: int, ptype: int, length: int) -> None:
        n = self._stream.oversize
        if n > _OVERSIZE_LINES:
            return
        more = "; further ones are counted, not logged" if n == _OVERSIZE_LINES else ""
        logger.warning(
            "%s: %s:%d sent a 0x%02x header claiming a %d-byte packet, longer than the %d "
            "bytes accepted: skipped as noise at stream offset %d%s",
            self.owner.name, *self.peer, ptype, length, self._stream.limit, offset, more,
        )  # fmt: skip

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
