# One TCP (or TLS) connection driven by a replay engine: framing, timing, chaos, recording.
#
# Strategy: an asyncio.BufferedProtocol (reads go into one buffer per thread: no allocation
# per read) hands what it reads to a PacketStream (simulator/_stream.py:
# replay.framer.PacketFramer cuts the packets, noise is skipped and counted, and a header that
# claims more than the owner accepts is reported in one log line and skipped), so nothing read
# is ever a reason to reset the connection.  Each packet goes to the engine at once, or, under
# chaos, through ChaosPolicy.on_packet first (dropped, delayed, duplicated, corrupted: at
# whole-packet granularity).  The engine's actions are written at once when due, else kept in
# one heap ordered by (due time, arrival order) behind a single loop.call_at timer that also
# serves the engine's own deadline; a timer that wakes before its time re-arms instead of
# acting early.  An answer's timer is asked for early by the loop's timer lateness (a shared
# running estimate, simulator/_lateness.py), never before the request plus the smallest learned
# delay of its kind, so it leaves the socket at its time on average; the heap stays ordered by
# the asked times, each item carrying the time its timer may fire.  With that compensation on,
# the timer is the loop's timerfd on epoll (simulator/_timerfd.py: to tens of microseconds).
# Writes go to the transport, through a ChaosWriter when chaos is on, and through the recorder
# when recording.
#
# Backpressure (issue 16): every queue a peer can fill is bounded, as on a real device.  What
# is read is handed to the engine packet by packet (framed CHUNK bytes at a time) only while
# the connection is not congested: fewer than MAX_SCHEDULED answers scheduled (heap plus chaos
# writer) and the transport's write buffer below its high-water mark (pause_writing /
# resume_writing, WRITE_HIGH / WRITE_LOW).  While congested, what was read stays held (at most
# one read plus one chunk) and reading is paused, so a flood backs up into the peer's TCP
# window instead of into memory; the engine's timers and the chaos writer's writes drain the
# schedule and hand the held bytes on.  A peer that does not read at all: the writes stop at
# the bounded buffer, and when it has stayed full for WRITE_STALL_S the connection is closed
# abruptly (RST, one log line), as real devices disconnected (and dialled again: a dialling
# device does so about 0.25 s later) when a server stopped reading them (PROTOCOL.md
# 10.4, a source claim: 359 reconnects in 3.5 min, so a device gives up within about a
# second).  A connection closed with bytes still unsent is aborted after CLOSE_GRACE_S, so a
# non-reading peer cannot keep its socket (and its buffers) open after we closed it.
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
from cyncsim.simulator._lateness import AnswerTimes
from cyncsim.simulator._stream import MAX_PACKET, PacketQueue, PacketStream, read_buffer
from cyncsim.simulator._timerfd import Timer
from cyncsim.simulator.chaos import ChaosWriter, abort_connection
from cyncsim.simulator.record import ConnectionRecord

__all__ = ["ConnectionOwner", "EngineConnection"]

logger = logging.getLogger("cyncsim.sim")
INF = math.inf
_SEND, _DELIVER, _CLOSE = 0, 1, 2
_Item = tuple[float, int, int, bytes, float]  # (due, order, kind, data, fire: timer time)
_OVERSIZE_LINES = 8  # per connection; later oversize headers are counted, not logged
_ANSWERS = 4  # a packet's answers at most (ack, result, status, relay): a chaos-delayed packet
# counts for that many while it waits, so its answers cannot overshoot the bound later
MAX_SCHEDULED = 256  # answers (and delayed deliveries) held before reading stops
WRITE_HIGH = 64 * 1024  # transport write buffer: stop taking requests above this ...
WRITE_LOW = 16 * 1024  # ... and take them again below this
WRITE_STALL_S = 1.0  # a write buffer full this long: the peer is not reading, close (RST)
CLOSE_GRACE_S = 1.0  # a closed connection whose last bytes the peer does not take: abort
CHUNK = 1024  # bytes framed at a time (the longest packet a device takes in)


class ConnectionOwner(Protocol):
    """What a connection reports to its simulator (``name`` opens its log lines)."""

    name: str
    lateness_compensation: bool  # answers' timers early by the loop's lateness

    def connection_opened(self, conn: EngineConnection) -> None: ...

    def connection_ready(self, conn: EngineConnection) -> bool: ...

    def connection_gone(
        self, conn: EngineConnection, exc: Exception | None, active: bool
    ) -> None: ...

    def relay(self, conn: EngineConnection, action: Relay) -> None: ...


class _RecordingSink:
    """A transport stand-in that records every write before making it; ``written`` (if set)
    runs after each write (the chaos writer's writes drain a congested connection)."""

    __slots__ = ("record", "transport", "written")

    def __init__(
        self,
        transport: asyncio.WriteTransport,
        record: ConnectionRecord | None,
        written: Callable[[], None] | None = None,
    ) -> None:
        self.transport = transport
        self.record = record
        self.written = written

    def write(self, data: bytes) -> None:
        if self.record is not None:
            self.record.data("out", bytes(data), time.time())
        self.transport.write(data)
        if self.written is not None:
            self.written()

    def is_closing(self) -> bool:
        return self.transport.is_closing()


class EngineConnection(asyncio.BufferedProtocol):
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
        # (request, arrival, engine's actions): for a fleet's stats (replay.stats.AnswerMeter)
        self.answered: Callable[[bytes, float, list[Action]], None] | None = None
        self.loop = asyncio.get_running_loop()
        self._view = read_buffer()  # shared: buffer_updated copies out first
        self.transport: asyncio.Transport | None = None
        self._out: ChaosWriter | _RecordingSink | asyncio.Transport | None = None
        self._stream = PacketStream(max_packet, self._oversize)
        self._inbox = PacketQueue(self._stream, CHUNK)  # read, not handed to the engine yet
        self._heap: list[_Item] = []
        self._times = AnswerTimes(self.loop, engine) if owner.lateness_compensation else None
        self._delayed = 0  # _DELIVER items in the heap (packets chaos holds back)
        self._order = itertools.count()
        self._timer: asyncio.TimerHandle | Timer | None = None
        self._timer_at = INF
        self._call_at = self.loop.call_at if self._times is None else self._times.call_at
        self._stall: asyncio.TimerHandle | None = None
        self._stalled = False  # chaos: reading stopped until the stall ends
        self._backlogged = False  # something read is held: reading stays paused
        self._reading_paused = False
        self._writing_paused = False  # the transport's write buffer is above WRITE_HIGH
        self._draining = False
        self._drain_soon: asyncio.Handle | None = None
        self._write_stall: asyncio.TimerHandle | None = None
        self._linger: asyncio.TimerHandle | None = None
        self.write_stall_s: float | None = WRITE_STALL_S  # None: never close a non-reader
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

    @property
    def held(self) -> int:
        """Bytes read but not handed to the engine yet (bounded: see the module comment)."""
        return self._inbox.held

    @property
    def congested(self) -> bool:
        """True while nothing more is handed to the engine: too many answers scheduled, or
        the peer is not taking what is written."""
        scheduled = len(self._heap) + (_ANSWERS - 1) * self._delayed
        if self._writing_paused or scheduled >= MAX_SCHEDULED:
            return True
        out = self._out  # its pending count is a scan, but it is at most MAX_SCHEDULED long
        return isinstance(out, ChaosWriter) and scheduled + out.pending >= MAX_SCHEDULED

    # ------------------------------------------------------------------ asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.peer = transport.get_extra_info("peername")[:2]
        self.local = transport.get_extra_info("sockname")[:2]
        transport.set_write_buffer_limits(high=WRITE_HIGH, low=WRITE_LOW)
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
            chaos_sink = _RecordingSink(transport, self.record, self._chaos_wrote)
            self._out = ChaosWriter(chaos_sink, self.policy, out, on_reset=self._reset)
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
        return self._view

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(bytes(self._view[:nbytes]))

    def data_received(self, data: bytes) -> None:
        """What was read (also for callers that feed bytes without a socket)."""
        if self.record is not None:
            self.record.data("in", data, time.time())
        self._inbox.put(data)
        self._drain()

    def pause_writing(self) -> None:
        self._writing_paused = True
        if self.write_stall_s is not None and self._write_stall is None:
            self._write_stall = self.loop.call_later(self.write_stall_s, self._write_stalled)

    def resume_writing(self) -> None:
        self._writing_paused = False
        if self._write_stall is not None:
            self._write_stall.cancel()
            self._write_stall = None
        if self._backlogged:
            self._drain()

    # ------------------------------------------------------------------ flow control
    def _drain(self) -> None:
        """Hand what was read to the engine, packet by packet, while not congested; hold the
        rest (reading paused) until the schedule drains or the peer takes our writes."""
        if self._draining:
            return
        self._draining = True
        try:
            now, inbox = self.loop.time(), self._inbox
            while self.active:
                # congested needs a schedule, a full write buffer or chaos: test those first
                if (
                    self._heap or self._writing_paused or isinstance(self._out, ChaosWriter)
                ) and self.congested:
                    break
                packet = inbox.get()
                if packet is None:
                    break
                self._incoming(packet, now)
            if not self.active:
                inbox.clear()  # replaced or closing: nothing more reaches the engine
            self._backlogged = bool(inbox)
        finally:
            self._draining = False
        self._set_reading()

    def _chaos_wrote(self) -> None:
        """The chaos writer wrote: a connection congested by its queue may go on."""
        if self._backlogged and self._drain_soon is None:
            self._drain_soon = self.loop.call_soon(self._drain_later)

    def _drain_later(self) -> None:
        self._drain_soon = None
        self._drain()

    def _set_reading(self) -> None:
        """Reading is paused while a chaos stall is on or something read is held."""
        paused = self._stalled or self._backlogged
        if paused == self._reading_paused:
            return
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        self._reading_paused = paused
        if paused:
            transport.pause_reading()
        else:
            transport.resume_reading()

    def _write_stalled(self) -> None:
        self._write_stall = None
        transport = self.transport
        if transport is None or not self._writing_paused:
            return
        logger.warning(
            "%s: %s:%d is not reading: %d bytes waited %.1f s to be sent; closing the "
            "connection (RST), as real devices did when a server stopped reading them",
            self.owner.name, *self.peer, transport.get_write_buffer_size(), self.write_stall_s,
        )  # fmt: skip
        self.close(abort=True)

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
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        self._inbox.clear()
        self._backlogged = False
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
            self._apply(self._receive(data, now), now)
            return
        for em in policy.on_packet(self.inbound, data, now):
            if em.delay_s <= 0 and not self._heap:
                self._apply(self._receive(em.data, now), now)
            else:
                self._push(now + em.delay_s, _DELIVER, em.data)
        if policy.should_reset(self.inbound, policy.packets_seen(self.inbound), now):
            self._reset()
            return
        until = policy.stall_until(now)
        if until is not None:
            self._pause(until)
        self._arm()

    def _receive(self, data: bytes, now: float) -> list[Action]:
        """The engine's actions for one packet; ``answered`` (when set) sees them too."""
        actions = self.engine.receive(data, now)
        if self.answered is not None:
            self.answered(data, now, actions)
        return actions

    def _pause(self, until: float) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        self._stalled = True
        self._set_reading()
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
            self._stalled = False
            self._set_reading()

    # ------------------------------------------------------------------ actions out
    def apply(self, actions: list[Action]) -> None:
        """Carry out actions made outside a packet callback (set_state, commands)."""
        if self.active:
            self._apply(actions, self.loop.time())

    def _apply(self, actions: list[Action], now: float, *, run: bool = True) -> None:
        batch: list[bytes] = []  # due now: one write (one syscall) for all of them
        times = self._times
        for a in actions:
            if type(a) is Send:
                fire = a.at if times is None or a.at <= now else times.fire(a, now)
                if fire <= now and not self._heap:
                    batch.append(a.data)
                else:
                    self._push(a.at, _SEND, a.data, fire)
            elif type(a) is Close:
                self._push(a.at, _CLOSE, b"")
            elif type(a) is Relay:
                self.owner.relay(self, a)
        if batch:
            out = self._out
            if self.observer is not None or isinstance(out, ChaosWriter):
                self._write_many(batch)
            elif out is not None and not out.is_closing():  # one write (one syscall)
                out.write(batch[0] if len(batch) == 1 else b"".join(batch))
        if not run:
            return
        if self._heap and self._heap[0][4] <= now:
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

    def _push(self, at: float, kind: int, data: bytes, fire: float | None = None) -> None:
        heapq.heappush(
            self._heap, (at, next(self._order), kind, data, at if fire is None else fire)
        )
        if kind == _DELIVER:
            self._delayed += 1

    def _run_due(self, now: float) -> None:
        heap = self._heap
        while heap and heap[0][4] <= now and self.active:
            _, _, kind, data, _ = heapq.heappop(heap)
            if kind == _SEND:
                self._write(data)
            elif kind == _DELIVER:
                self._delayed -= 1
                self._apply(self._receive(data, now), now, run=False)
            else:
                self.close()
                return

    def _arm(self) -> None:
        if not self.active:
            return
        due = self.engine.next_deadline()
        if self._heap and self._heap[0][4] < due:
            due = self._heap[0][4]
        if due == INF or (self._timer is not None and due >= self._timer_at):
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = due
        self._timer = self._call_at(due, self._on_timer)

    def _on_timer(self) -> None:
        now = self.loop.time()
        if now < self._timer_at:  # woke early (clock resolution): never act before the time
            self._timer = self._call_at(self._timer_at, self._on_timer)
            return
        if self._times is not None:
            self._times.late.observe(self._timer_at, now)
        self._timer = None
        self._timer_at = INF
        if not self.active:
            return
        self._run_due(now)
        if self.active and self.engine.next_deadline() <= now:
            self._apply(self.engine.poll(now), now)
        if self._backlogged:
            self._drain()
        self._arm()

    # ------------------------------------------------------------------ closing
    def _reset(self) -> None:
        """Chaos reset: drop everything pending and close abruptly (RST)."""
        self._teardown()
        if self.transport is not None:
            abort_connection(self.transport)

    def close(self, *, abort: bool = False) -> None:
        """Close the connection (FIN, or RST with ``abort``); pending writes are dropped.
        What the transport holds already is sent, unless the peer does not take it within
        CLOSE_GRACE_S: then the connection is aborted."""
        transport = self.transport
        self._teardown()
        if transport is None:
            return
        if abort:
            abort_connection(transport)
            return
        if not transport.is_closing():
            transport.close()
        if transport.get_write_buffer_size() and self._linger is None and not self.closed.is_set():
            self._linger = self.loop.call_later(CLOSE_GRACE_S, self._abort_lingering)

    def _abort_lingering(self) -> None:
        self._linger = None
        if self.transport is not None and not self.closed.is_set():
            logger.debug("%s: %s:%d took nothing after close: aborted", self.owner.name, *self.peer)
            abort_connection(self.transport)

    def _teardown(self) -> None:
        for handle in (self._timer, self._stall, self._write_stall, self._drain_soon):
            if handle is not None:
                handle.cancel()
        self._timer = self._stall = self._write_stall = self._drain_soon = None
        self._timer_at = INF
        self._heap.clear()
        self._delayed = 0
        if isinstance(self._out, ChaosWriter):
            self._out.close()
