# One device connection of ReliableTransport: ``DeviceLink``, with that connection's handshake
# state.
#
# Strategy: ``DeviceLink`` is an asyncio.BufferedProtocol that reads into one reused bytearray
# (no per-read buffer allocation) and feeds a non-strict PacketFramer; it hands every packet
# and every decode problem (defective packet, non-Cync bytes, a truncated tail at close) to its
# ``PacketSink`` synchronously and in stream order, so ACK matching never waits for a task
# switch, and tells its ``LinkWatcher`` (the connection manager) when it is made and lost.
# Both are protocols declared here, so this module imports nothing else of the package.
from __future__ import annotations

import asyncio
from typing import Protocol, TypeVar, cast

from cyncsim.replay.controller import BEFORE_HELLO, control_answer_problem
from cyncsim.replay.errors import HandshakeError, PacketDecodeError
from cyncsim.replay.framer import FramerFinding, PacketFramer
from cyncsim.replay.protocol import CyncPacket, HelloPacket, IdPacket

__all__ = ["DeviceLink", "LinkWatcher", "PacketSink", "finding_error"]

_T = TypeVar("_T")


class LinkWatcher(Protocol):
    """Told when a connection is made and lost (the connection manager)."""

    def link_made(self, link: DeviceLink) -> None: ...

    def link_lost(self, link: DeviceLink, exc: Exception | None) -> None: ...


class PacketSink(Protocol):
    """Takes every packet and decode problem of a connection, in stream order."""

    def link_packet(self, link: DeviceLink, offset: int, packet: CyncPacket) -> None: ...

    def link_error(self, error: PacketDecodeError) -> None: ...


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

    def __init__(
        self,
        watcher: LinkWatcher,
        sink: PacketSink,
        *,
        accepted: bool,
        buffer_size: int = 65536,
    ) -> None:
        self._watcher = watcher
        self._sink = sink
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
        self._watcher.link_made(self)

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
                self._sink.link_error(item)
                continue
            if self.hello is None and item.type not in BEFORE_HELLO:
                why = f"{item.name} before the 0x23 hello, stream offset {offset}"
                self.fail_hello(why, "unexpected_packet")
            self._sink.link_packet(self, offset, item)

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
            self._sink.link_error(finding_error(tail))
        self.fail_hello("connection closed during the handshake", "closed")
        if self._control_waiter is not None and not self._control_waiter.done():
            self._control_waiter.set_exception(HandshakeError("connection closed", reason="closed"))
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(None)
        self._watcher.link_lost(self, exc)

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
        problem = control_answer_problem(request, answer)
        if problem is not None:
            raise HandshakeError(
                f"answer to 0xA3 from {self.peer} is {problem}", reason="bad_control_answer"
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
