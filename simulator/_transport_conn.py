# Connection plumbing for ReliableTransport: result values, counters, the inbox, one link per
# device connection (with that connection's handshake state), and the ConnectionManager.
#
# Strategy: ``DeviceLink`` is an asyncio.BufferedProtocol that reads into one reused bytearray
# (no per-read buffer allocation) and feeds a non-strict PacketFramer; it hands every packet
# and every decode problem (defective packet, non-Cync bytes, a truncated tail at close) to the
# transport synchronously and in stream order, so ACK matching never waits for a task switch.
# ``ConnectionManager`` owns the connection state for both directions: dial a listening device
# (connect mode) or accept a dialling one (serve mode), and reconnect with back-off.
from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import ssl
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, TypeVar, cast

from replay.errors import CyncError, HandshakeError, PacketDecodeError
from replay.framer import FramerFinding, PacketFramer
from replay.protocol import CyncPacket, HelloPacket, IdPacket, PacketType

if TYPE_CHECKING:
    from simulator.transport import ReliableTransport

__all__ = ["ConnectionManager", "DeviceLink", "Inbox", "Result", "TransportStats"]

log = logging.getLogger("simulator.transport")
InboxItem = CyncPacket | PacketDecodeError
_T = TypeVar("_T")
# What a device may send before its 0x23 without breaking the handshake (PROTOCOL.md 4.1, 10.3).
_BEFORE_HELLO = frozenset(
    {PacketType.HELLO, PacketType.STATUS, PacketType.PING, PacketType.TIME_REQUEST}
)


@dataclass(frozen=True, slots=True)
class Result:
    """Outcome of one exchange; failures are values, never exceptions."""

    success: bool
    reason: str  # "acked", "timeout", "not_connected", "reconnecting", "closed", ...
    retry_count: int = 0
    latency_s: float = 0.0
    ack: CyncPacket | None = None
    result: CyncPacket | None = None


@dataclass(slots=True)
class TransportStats:
    """Counters of what the transport did; ``as_dict`` for reports and benchmarks."""

    commands: int = 0  # send_reliable exchanges started
    transmissions: int = 0  # 0x73 writes, retransmissions included
    retransmissions: int = 0
    acked: int = 0
    timeouts: int = 0
    results: int = 0  # f9 results matched to a waiting command
    duplicate_acks: int = 0  # 0x7B for an exchange that was already acked
    unmatched_acks: int = 0  # 0x7B for no pending exchange (late, stale or foreign)
    backpressure: int = 0
    reports: int = 0  # distinct 0x83 delivered
    duplicate_reports: int = 0  # 0x83 re-acked but not delivered again
    status_packets: int = 0  # 0x43
    pings_answered: int = 0  # 0xD3 -> 0xD8
    time_replies: int = 0  # 0xC3 -> 0xC8
    rehellos: int = 0  # 0x23 after the first one on a connection
    decode_errors: int = 0
    recv_dropped: int = 0  # oldest inbox items dropped because nobody read them

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


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


class ConnectionManager:
    """Connection state machine of one controller <-> device connection.

    States: ``idle`` (never connected), ``connecting``, ``listening`` (serve mode, no device),
    ``connected``, ``reconnecting``, ``disconnected`` (connect mode, given up), ``closed``.
    Once a handshake was done, every new connection is handshaken again before it counts as
    connected.  Serve mode: the newest dialling device wins and an older connection is dropped
    (a device that redials has given up on its old socket); without ``auto_reconnect`` a lost
    connection goes back to ``listening`` at once instead of ``reconnecting``.
    """

    def __init__(
        self,
        owner: ReliableTransport,
        *,
        host: str,
        port: int,
        tls: ssl.SSLContext | None,
        auto_reconnect: bool,
        reconnect_timeout_seconds: float,
        connect_timeout_seconds: float,
    ) -> None:
        self._owner = owner
        self.host = host
        self._port = port
        self.tls = tls
        self.auto_reconnect = auto_reconnect
        self.reconnect_timeout_seconds = reconnect_timeout_seconds
        self.connect_timeout_seconds = connect_timeout_seconds
        self.state = "idle"
        self.mode: str | None = None  # "connect" | "serve"
        self.link: DeviceLink | None = None
        self.reconnects = 0
        self.last_reason: str | None = None
        self._server: asyncio.Server | None = None
        self._incoming: DeviceLink | None = None
        self._incoming_event = asyncio.Event()
        self._connected_event = asyncio.Event()
        self._task: asyncio.Task[bool] | None = None

    @property
    def port(self) -> int:
        return self._port

    def _set_state(self, state: str) -> None:
        if state != self.state:
            log.debug("transport state %s -> %s", self.state, state)
            self.state = state
            if state in ("connected", "closed"):
                self._connected_event.set()
            else:
                self._connected_event.clear()
            self._owner.state_changed(state)

    def _attach(self, link: DeviceLink) -> None:
        self.link = link
        self._set_state("connected")

    def _detach(self) -> None:
        old, self.link = self.link, None
        if old is not None:
            old.abort()
            self._owner.link_down("connection_lost")

    async def _open(self, seconds: float) -> DeviceLink:
        loop = asyncio.get_running_loop()
        make = lambda: DeviceLink(self._owner, accepted=False)  # noqa: E731
        _, link = await asyncio.wait_for(
            loop.create_connection(make, self.host, self._port, ssl=self.tls), seconds
        )
        return link

    async def connect(self) -> None:
        if self.state == "closed" or self.mode == "serve":
            raise CyncError(f"cannot connect in state {self.state}, mode {self.mode}")
        self.mode = "connect"
        self._set_state("connecting")
        try:
            link = await self._open(self.connect_timeout_seconds)
        except (OSError, TimeoutError) as exc:
            self._set_state("disconnected")
            raise CyncError(
                f"cannot connect to device at {self.host}:{self._port}: {exc!r}",
                reason="connect_failed",
            ) from exc
        self._attach(link)

    async def serve(self) -> None:
        if self.state == "closed" or self.mode is not None:
            raise CyncError(f"cannot serve in state {self.state}, mode {self.mode}")
        self.mode = "serve"
        make = lambda: DeviceLink(self._owner, accepted=True)  # noqa: E731
        try:
            self._server = await asyncio.get_running_loop().create_server(
                make, self.host, self._port, ssl=self.tls
            )
        except OSError as exc:
            raise CyncError(
                f"cannot listen on {self.host}:{self._port}: {exc!r}", reason="listen_failed"
            ) from exc
        self._port = self._server.sockets[0].getsockname()[1]
        self._set_state("listening")

    async def wait_connected(self, timeout: float | None = None) -> None:  # noqa: ASYNC109
        """Return once connected; TimeoutError after ``timeout``; CyncError if closed."""
        if self.state != "connected":
            await asyncio.wait_for(self._connected_event.wait(), timeout)
        if self.state == "closed":
            raise CyncError("transport is closed", reason="closed")

    def link_made(self, link: DeviceLink) -> None:
        if not link.accepted:
            return  # connect mode: whoever called _open attaches it
        if self.state == "closed":
            link.abort()
        elif self.state != "reconnecting" and not self._owner.needs_handshake:
            self._detach()
            self._attach(link)
        else:
            if self._incoming is not None:
                self._incoming.abort()
            self._incoming = link
            self._incoming_event.set()
            self._start_reconnect("device_redialled")

    def link_lost(self, link: DeviceLink, exc: Exception | None) -> None:
        if link is self._incoming:
            self._incoming = None
        if link is not self.link:
            return
        log.debug("connection to %s lost: %r", link.peer, exc)
        self.link = None
        self._owner.link_down("connection_lost")
        if self.state == "closed":
            return
        if self.auto_reconnect:
            self._start_reconnect("connection_lost")
        else:
            self._set_state("listening" if self.mode == "serve" else "disconnected")

    def _start_reconnect(self, reason: str) -> asyncio.Task[bool]:
        if self._task is None or self._task.done():
            self.last_reason = reason
            self._set_state("reconnecting")
            self._task = asyncio.get_running_loop().create_task(self._run_reconnect())
            self._task.add_done_callback(_log_task_failure)
        return self._task

    async def reconnect(self, reason: str = "requested") -> bool:
        """Drop the current connection and get a new one: dial with back-off (connect mode) or
        wait for the device to dial again (serve mode), then redo the handshake if one was done.
        True when connected again; False when closed or ``reconnect_timeout_seconds`` passed."""
        if self.state == "closed" or self.mode is None:
            return False
        return await asyncio.shield(self._start_reconnect(reason))

    async def _run_reconnect(self) -> bool:
        self._detach()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.reconnect_timeout_seconds
        attempt = 0
        link: DeviceLink | None = None
        try:
            while self.state != "closed" and loop.time() < deadline:
                if attempt and self.mode == "connect":
                    delay = self._owner.backoff_delay(attempt - 1)
                    await asyncio.sleep(min(delay, deadline - loop.time()))
                attempt += 1
                link = await self._next_link(deadline)
                if link is None:
                    continue
                if self._owner.needs_handshake:
                    try:
                        await self._owner.rehandshake(link)
                    except HandshakeError as exc:
                        log.info("reconnect attempt %d: handshake failed: %s", attempt, exc)
                        link.abort()
                        continue
                if self.state == "closed" or link.closed:
                    link.abort()
                    continue
                self.reconnects += 1
                self._attach(link)
                return True
        except asyncio.CancelledError:
            if link is not None and link is not self.link:
                link.abort()  # cancelled (by close) while this connection was being handshaken
            if self.state == "closed":
                return False
            raise
        if self.state != "closed":
            self._set_state("listening" if self.mode == "serve" else "disconnected")
        return False

    async def _next_link(self, deadline: float) -> DeviceLink | None:
        loop = asyncio.get_running_loop()
        if self.mode == "connect":
            try:
                return await self._open(min(deadline - loop.time(), self.connect_timeout_seconds))
            except (OSError, TimeoutError) as exc:
                log.info("reconnect to %s:%d failed: %r", self.host, self._port, exc)
                return None
        while self._incoming is None:
            self._incoming_event.clear()
            try:
                await asyncio.wait_for(self._incoming_event.wait(), deadline - loop.time())
            except TimeoutError:
                return None
        link, self._incoming = self._incoming, None
        return link

    async def close(self) -> None:
        if self.state == "closed":
            return
        self._set_state("closed")
        self._owner.link_down("closed")
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait((task,))
        if self._server is not None:
            self._server.close()
        links = [lk for lk in (self.link, self._incoming) if lk is not None]
        self.link = self._incoming = None
        for lk in links:
            await lk.aclose()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None


def _log_task_failure(task: asyncio.Task[bool]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("reconnect task failed", exc_info=task.exception())
