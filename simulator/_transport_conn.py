# Connection plumbing for ReliableTransport: result values, counters and the ConnectionManager
# (the per-connection DeviceLink and the Inbox live in simulator/_transport_link.py and are
# re-exported here).
#
# Strategy: ``ConnectionManager`` owns the connection state for both directions: dial a
# listening device (connect mode) or accept a dialling one (serve mode), and reconnect with
# back-off, redoing the handshake through its owner before a new link counts as connected.
# Failures of an exchange are ``Result`` values; ``TransportStats`` counts what happened.
from __future__ import annotations

import asyncio
import logging
import ssl
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from cyncsim.replay.errors import CyncError, HandshakeError
from cyncsim.replay.protocol import CyncPacket
from cyncsim.simulator._transport_link import DeviceLink, Inbox

if TYPE_CHECKING:
    from cyncsim.simulator.transport import ReliableTransport

__all__ = ["ConnectionManager", "DeviceLink", "Inbox", "Result", "TransportStats"]

log = logging.getLogger("cyncsim.simulator.transport")


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
