# The per-connection side of ReliableTransport: one DeviceLink per device connection (with
# that connection's handshake state) and the Inbox that ``recv_reliable`` reads.
#
# Strategy: ``DeviceLink`` is an asyncio.BufferedProtocol that reads into one reused bytearray
# (no per-read buffer allocation) and feeds a non-strict PacketFramer; it hands every packet
# and every decode problem (defective packet, non-Cync bytes, a truncated tail at close) to the
# transport synchronously and in stream order, so ACK matching never waits for a task switch.
# ``Inbox`` is a bounded FIFO that drops its oldest item when full (the reader is the slow
# side; to stop reading the socket would also stop the ACKs).  Private module: the names are
# re-exported by simulator._transport_conn.
from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar, cast

from cyncsim.replay.errors import CyncError, HandshakeError, PacketDecodeError
from cyncsim.replay.framer import FramerFinding, PacketFramer
from cyncsim.replay.protocol import CyncPacket, HelloPacket, IdPacket, PacketType

if TYPE_CHECKING:
    from cyncsim.simulator.transport import ReliableTransport

__all__ = ["DeviceLink", "Inbox", "InboxItem", "finding_error"]

InboxItem = CyncPacket | PacketDecodeError
_T = TypeVar("_T")
# What a device may send before its 0x23 without breaking the handshake (PROTOCOL.md 4.1, 10.3).
_BEFORE_HELLO = frozenset(
    {PacketType.HELLO, PacketType.STATUS, PacketType.PING, PacketType.TIME_REQUEST}
)


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


def finding_error(f: FramerFinding) -> PacketDecodeError:
    return PacketDecodeError(
        f.reason,
        f"{f.length} byte(s) from the device are not a Cync packet (head {f.head.hex(' ')})",
        offset=f.offset,
        data=f.head,
    )


async def _handshake_wait(fut: asyncio.Future[_T], limit: float, what: str) -> _T:
    try:
        return await asyncio.wait_for(fut, limit)
    except TimeoutError:
        raise HandshakeError(f"no {what} within {limit} s", reason="timeout") from None


class DeviceLink(asyncio.BufferedProtocol):
    """One TCP/TLS connection to a device, plus the handshake state of that connection."""

    def __init__(self, owner: ReliableTransport, *, accepted: bool, buffer_size: int = 65536):
        self._owner = owner
        self._view = memoryview(bytearray(buffer_size))
        self.framer = PacketFramer(strict=False)
        self.accepted = accepted  # True when the device dialled us (serve mode)
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.peer = "?"
        self._writable: asyncio.Event | None = None  # exists only while writing is paused
        self._lost: asyncio.Future[None] | None = None
        # Handshake state of this connection (PROTOCOL.md 4.1, 4.4).
        self.hello: HelloPacket | None = None
        self.hello_error: HandshakeError | None = None
        self._hello_waiter: asyncio.Future[HelloPacket] | None = None
        self._control_waiter: asyncio.Future[CyncPacket] | None = None
        self.handshaken = False

    # -- asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self._lost = asyncio.get_running_loop().create_future()
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self._owner.conn_mgr.link_made(self)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._view

    def buffer_updated(self, nbytes: int) -> None:
        items: list[tuple[int, CyncPacket | PacketDecodeError]] = []
        try:
            items.extend(self.framer.feed_with_offsets(bytes(self._view[:nbytes])))
        except PacketDecodeError as exc:  # defensive only: the framer is non-strict
            items.append((exc.offset, exc))
        findings = self.framer.findings
        if findings:
            items.extend((f.offset, finding_error(f)) for f in findings)
            findings.clear()
            items.sort(key=lambda item: item[0])
        for offset, item in items:
            if self.closed:
                break
            if isinstance(item, PacketDecodeError):
                self._owner.link_error(item)
                continue
            if self.hello is None and item.type not in _BEFORE_HELLO:
                why = f"{item.name} before the 0x23 hello, stream offset {offset}"
                self.fail_hello(why, "unexpected_packet")
            self._owner.link_packet(self, offset, item)

    def eof_received(self) -> bool | None:
        return None  # the device closed its side: close ours too

    def pause_writing(self) -> None:
        if self._writable is None:
            self._writable = asyncio.Event()

    def resume_writing(self) -> None:
        if self._writable is not None:
            self._writable.set()
            self._writable = None

    def connection_lost(self, exc: Exception | None) -> None:
        was_closed, self.closed = self.closed, True
        self.resume_writing()
        tail = self.framer.flush()
        self.framer.findings.clear()
        if tail is not None and not was_closed:
            self._owner.link_error(finding_error(tail))
        self.fail_hello("connection closed during the handshake", "closed")
        if self._control_waiter is not None and not self._control_waiter.done():
            self._control_waiter.set_exception(HandshakeError("connection closed", reason="closed"))
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(None)
        self._owner.conn_mgr.link_lost(self, exc)

    # -- handshake state
    def fail_hello(self, why: str, reason: str) -> None:
        if self.handshaken or self.hello_error is not None:
            return
        self.hello_error = HandshakeError(f"device at {self.peer}: {why}", reason=reason)
        if self._hello_waiter is not None and not self._hello_waiter.done():
            self._hello_waiter.set_exception(self.hello_error)

    def offer_hello(self, hello: HelloPacket) -> None:
        self.hello = hello
        if self._hello_waiter is not None and not self._hello_waiter.done():
            self._hello_waiter.set_result(hello)

    def offer_control_answer(self, packet: CyncPacket) -> bool:
        if self._control_waiter is None or self._control_waiter.done():
            return False
        self._control_waiter.set_result(packet)
        return True

    async def wait_hello(self, limit: float) -> HelloPacket:
        """The device's 0x23 (already received or the next one); HandshakeError if not."""
        if self.hello_error is not None:
            raise self.hello_error
        if self.hello is not None:
            return self.hello
        self._hello_waiter = asyncio.get_running_loop().create_future()
        try:
            return await _handshake_wait(self._hello_waiter, limit, f"0x23 from {self.peer}")
        finally:
            self._hello_waiter = None

    async def control_exchange(self, request: IdPacket, limit: float) -> None:
        """Send 0xA3, wait for the 0xAB that echoes its bytes 5-11 (PROTOCOL.md 4.4)."""
        self._control_waiter = asyncio.get_running_loop().create_future()
        try:
            self.write(request.encode())
            answer = await _handshake_wait(self._control_waiter, limit, f"0xAB from {self.peer}")
        finally:
            self._control_waiter = None
        want = request.encode()[5:12]
        if answer.type != PacketType.CONTROL_ACK or answer.encode()[5:12] != want:
            raise HandshakeError(
                f"answer to 0xA3 from {self.peer} is not a 0xAB echoing {want.hex(' ')}: "
                f"{answer.encode()[:12].hex(' ')}",
                reason="bad_control_answer",
            )

    # -- output
    def write(self, data: bytes) -> bool:
        if self.closed or self.transport is None:
            return False
        self.transport.write(data)
        return True

    async def wait_writable(self) -> None:
        while self._writable is not None and not self.closed:
            await self._writable.wait()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    async def aclose(self, grace: float = 1.0) -> None:
        """Close gracefully (queued ACKs are flushed), waiting a little for the socket."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()
        self.closed = True
        if self._lost is not None and not self._lost.done():
            await asyncio.wait((self._lost,), timeout=grace)
            if not self._lost.done() and self.transport is not None:
                self.transport.abort()
