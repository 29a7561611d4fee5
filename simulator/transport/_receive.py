# The receive side of ReliableTransport: acting on the controller core's verdicts, and the
# bounded inbox that ``recv_reliable`` reads.
#
# Strategy: the core (cyncsim.replay.controller) decides what a device packet is, which answer
# it gets and which exchange it settles; ``Receiver`` does the I/O half, synchronously from the
# protocol callback: write the answer, wake the exchange's futures, count, offer a 0x23 or 0xAB
# to the connection's handshake, and put what nobody consumed into the ``Inbox``, a bounded
# FIFO that drops its oldest item when full (the reader is the slow side; to stop reading the
# socket would also stop the ACKs).  The actions are one table keyed by ``Verdict``.
from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Callable
from dataclasses import dataclass

from cyncsim.replay.controller import (
    HELLO_ACK,
    ConnState,
    Controller,
    Exchange,
    Outcome,
    Reaction,
    Verdict,
    decode_error,
)
from cyncsim.replay.errors import CyncError, PacketDecodeError
from cyncsim.replay.protocol import CyncPacket, HelloPacket
from cyncsim.simulator.transport._link import DeviceLink
from cyncsim.simulator.transport._result import TransportStats

__all__ = ["Inbox", "InboxItem", "Receiver", "Waiters", "wake"]

InboxItem = CyncPacket | PacketDecodeError


@dataclass(slots=True, frozen=True)
class Waiters:
    """The futures an exchange's sender waits on; the outcomes are in the core's Exchange."""

    ack: asyncio.Future[None]
    result: asyncio.Future[None] | None


_R = Reaction[Waiters]  # what the core made of a packet, as the actions below get it


def wake(exchange: Exchange[Waiters]) -> None:
    """Wake whoever waits for what of ``exchange`` has settled."""
    waiters = exchange.waiter
    if exchange.ack is not None and not waiters.ack.done():
        waiters.ack.set_result(None)
    fut = waiters.result
    if exchange.result is not None and fut is not None and not fut.done():
        fut.set_result(None)


class Inbox:
    """Bounded FIFO of device packets and decode errors for ``recv_reliable``.

    When full, the oldest item is dropped and ``put`` returns True so the owner counts it: the
    reader is the slow side, and to stop reading the socket would also stop the ACKs.
    """

    __slots__ = ("_items", "_waiters", "maxsize")

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._items: collections.deque[InboxItem] = collections.deque()
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    def __len__(self) -> int:
        return len(self._items)

    @property
    def waiters(self) -> int:
        return len(self._waiters)

    def put(self, item: InboxItem) -> bool:
        dropped = len(self._items) >= self.maxsize
        if dropped:
            self._items.popleft()
        self._items.append(item)
        self._wake(1)
        return dropped

    def _wake(self, n: int) -> None:
        while n and self._waiters:
            w = self._waiters.popleft()
            if not w.done():
                w.set_result(None)
                n -= 1

    def wake_all(self) -> None:
        self._wake(len(self._waiters))

    async def get(self, seconds: float | None, ended: Callable[[], CyncError | None]) -> InboxItem:
        loop = asyncio.get_running_loop()
        deadline = None if seconds is None else loop.time() + seconds
        while True:
            if self._items:
                return self._items.popleft()
            err = ended()
            if err is not None:
                raise err
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                raise TimeoutError(f"no packet from the device within {seconds} s")
            w: asyncio.Future[None] = loop.create_future()
            self._waiters.append(w)
            try:
                await asyncio.wait((w,), timeout=remaining)
            except asyncio.CancelledError:
                if w.done() and not w.cancelled():
                    self._wake(1)  # we were handed the turn: pass it on
                raise
            finally:
                if not w.done():
                    w.cancel()
                    with contextlib.suppress(ValueError):
                        self._waiters.remove(w)


class Receiver:
    """Takes a device connection's packets and errors (a PacketSink) for ReliableTransport."""

    def __init__(
        self,
        core: Controller[Waiters],
        stats: TransportStats,
        *,
        state: Callable[[], ConnState],
        clock: Callable[[], float],
        queue_size: int,
    ) -> None:
        self._core = core
        self._stats = stats
        self._state = state
        self._clock = clock
        self.inbox = Inbox(queue_size)
        self.ping_waiters: list[asyncio.Future[Outcome]] = []
        self._actions: dict[
            Verdict, Callable[[DeviceLink, int, CyncPacket, Reaction[Waiters]], None]
        ] = {
            Verdict.HELLO: self._hello,
            Verdict.ACKED: self._settled,
            Verdict.DUPLICATE_ACK: self._duplicate_ack,
            Verdict.UNMATCHED_ACK: self._unmatched_ack,
            Verdict.RESULT: self._result,
            Verdict.REPORT: self._report,
            Verdict.DUPLICATE_REPORT: self._duplicate_report,
            Verdict.STATUS: self._status,
            Verdict.PING: self._ping,
            Verdict.TIME_REQUEST: self._time_request,
            Verdict.CONTROL_ANSWER: self._control_answer,
            Verdict.OTHER: self._deliver_packet,
            Verdict.DEFECT: self._defect,
        }

    async def recv(self, timeout: float | None) -> CyncPacket:  # noqa: ASYNC109
        item = await self.inbox.get(timeout, self._read_end)
        if isinstance(item, PacketDecodeError):
            raise item
        return item

    def _read_end(self) -> CyncError | None:
        state = self._state()
        reason = state.read_end
        if reason == "closed":
            return CyncError("transport is closed", reason="closed")
        if reason is not None:
            return CyncError(f"no device connection (state {state})", reason=reason)
        return None

    def state_changed(self, state: ConnState) -> None:
        if state.read_end is not None:
            self.inbox.wake_all()

    def fail_pings(self, reason: str) -> None:
        for fut in self.ping_waiters:
            if not fut.done():
                fut.set_result(reason)

    def _deliver(self, item: InboxItem) -> None:
        if self.inbox.put(item):
            self._stats.recv_dropped += 1

    # -- PacketSink
    def link_error(self, error: PacketDecodeError) -> None:
        self._stats.decode_errors += 1
        self._deliver(error)

    def link_packet(self, link: DeviceLink, offset: int, packet: CyncPacket) -> None:
        reaction = self._core.receive(packet, self._clock())
        if reaction.reply is not None:
            link.write(reaction.reply)
        self._actions[reaction.verdict](link, offset, packet, reaction)

    # -- one action per verdict
    def _deliver_packet(self, link: DeviceLink, offset: int, packet: CyncPacket, r: _R) -> None:
        self._deliver(packet)

    def _defect(self, link: DeviceLink, offset: int, packet: CyncPacket, r: _R) -> None:
        if r.repeated_report:
            self._stats.duplicate_reports += 1
        self.link_error(decode_error(packet, offset, link.peer, r.problem or "defective"))

    def _hello(self, link: DeviceLink, offset: int, packet: CyncPacket, r: _R) -> None:
        problem = r.problem
        if link.hello is not None or link.handshaken:  # a repeated 0x23 on this connection
            self._stats.rehellos += 1
            if problem is not None:
                self.link_error(decode_error(packet, offset, link.peer, problem))
            elif link.handshaken:
                link.write(HELLO_ACK)  # the device still waits for a 0x28
        elif problem is not None or not isinstance(packet, HelloPacket):
            link.fail_hello(
                f"malformed 0x23 at stream offset {offset}: {problem}", "malformed_hello"
            )
        else:
            link.offer_hello(packet)

    def _settled(self, link: DeviceLink, offset: int, packet: CyncPacket, r: _R) -> None:
        if r.exchange is not None:
            wake(r.exchange)

    def _duplicate_ack(self, link: DeviceLink, offset: int, packet: CyncPacket, r: _R) -> None:
        self._stats.duplicate_acks += 1

    def _unmatched_ack(self, link: DeviceLink, offset: int, packet: CyncPacket, r: _R) -> None:
        self._stats.unmatched_acks += 1  # late (after a timeout), stale or foreign

    def _result(self, link: DeviceLink, offset: int, packet: CyncPacket, r: _R) -> None:
        self._stats.results += 1
        self._settled(link, offset, packet, r)

    def _report(self, link: DeviceLink, offset: int, packet: CyncPacket, r: _R) -> None:
        self._stats.reports += 1
        self._deliver(packet)

    def _duplicate_report(self, link: DeviceLink, offset: int, packet: CyncPacket, r: _R) -> None:
        self._stats.duplicate_reports += 1

    def _status(self, link: DeviceLink, offset: int, packet: CyncPacket, r: _R) -> None:
        self._stats.status_packets += 1
        self._deliver(packet)

    def _ping(self, link: DeviceLink, offset: int, packet: CyncPacket, r: _R) -> None:
        self._stats.pings_answered += 1
        for fut in self.ping_waiters:
            if not fut.done():
                fut.set_result(packet)

    def _time_request(self, link: DeviceLink, offset: int, packet: CyncPacket, r: _R) -> None:
        self._stats.time_replies += 1

    def _control_answer(self, link: DeviceLink, offset: int, packet: CyncPacket, r: _R) -> None:
        if not link.offer_control_answer(packet):
            self._deliver(packet)
