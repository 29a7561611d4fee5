# The connection manager of ReliableTransport: one controller <-> device connection in either
# direction, and reconnecting it.
#
# Strategy: ``ConnectionManager`` dials a listening device (connect mode) or accepts a dialling
# one (serve mode), and reconnects with back-off, redoing the handshake through its owner
# before a new link counts as connected.  Its state is the core's ``ConnectionState``
# (cyncsim.replay.controller), which moves only along the core's transition table; the owner
# hears of every change and of every lost link through the ``ManagerOwner`` protocol.
from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Protocol

from cyncsim.replay.controller import ConnectionState, ConnMode, ConnState
from cyncsim.replay.errors import CyncError, HandshakeError
from cyncsim.simulator.transport._link import DeviceLink, PacketSink

__all__ = ["ConnectionManager", "ManagerOwner"]

log = logging.getLogger("cyncsim.simulator.transport")


class ManagerOwner(Protocol):
    """What the connection manager needs from the transport that owns it."""

    @property
    def needs_handshake(self) -> bool: ...

    async def rehandshake(self, link: DeviceLink) -> None: ...

    def link_down(self, reason: str) -> None: ...

    def state_changed(self, state: ConnState) -> None: ...

    def backoff_delay(self, attempt: int) -> float: ...


class ConnectionManager:
    """Connection state machine of one controller <-> device connection.

    States: ConnState ``IDLE`` (never connected), ``CONNECTING``, ``LISTENING`` (serve mode,
    no device), ``CONNECTED``, ``RECONNECTING``, ``DISCONNECTED`` (connect mode, given up),
    ``CLOSED``.
    Once a handshake was done, every new connection is handshaken again before it counts as
    connected.  Serve mode: the newest dialling device wins and an older connection is dropped
    (a device that redials has given up on its old socket); without ``auto_reconnect`` a lost
    connection goes back to ``listening`` at once instead of ``reconnecting``.
    """

    def __init__(
        self,
        owner: ManagerOwner,
        sink: PacketSink,
        *,
        host: str,
        port: int,
        tls: ssl.SSLContext | None,
        auto_reconnect: bool,
        reconnect_timeout_seconds: float,
        connect_timeout_seconds: float,
    ) -> None:
        self._owner = owner
        self._sink = sink
        self.host = host
        self._port = port
        self.tls = tls
        self.auto_reconnect = auto_reconnect
        self.reconnect_timeout_seconds = reconnect_timeout_seconds
        self.connect_timeout_seconds = connect_timeout_seconds
        self._conn = ConnectionState()
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

    @property
    def state(self) -> ConnState:
        return self._conn.state

    @property
    def mode(self) -> ConnMode | None:
        return self._conn.mode

    def _closed(self) -> bool:  # a method: mypy must not narrow the state across awaits
        return self._conn.state is ConnState.CLOSED

    def _set_state(self, state: ConnState) -> None:
        old = self._conn.state
        if self._conn.move_to(state):  # IllegalTransition if the table does not allow it
            log.debug("transport state %s -> %s", old, state)
            if state is ConnState.CONNECTED or state is ConnState.CLOSED:
                self._connected_event.set()
            else:
                self._connected_event.clear()
            self._owner.state_changed(state)

    def _attach(self, link: DeviceLink) -> None:
        self.link = link
        self._set_state(ConnState.CONNECTED)

    def _detach(self) -> None:
        old, self.link = self.link, None
        if old is not None:
            old.abort()
            self._owner.link_down("connection_lost")

    async def _open(self, seconds: float) -> DeviceLink:
        loop = asyncio.get_running_loop()
        make = lambda: DeviceLink(self, self._sink, accepted=False)  # noqa: E731
        _, link = await asyncio.wait_for(
            loop.create_connection(make, self.host, self._port, ssl=self.tls), seconds
        )
        return link

    async def connect(self) -> None:
        if self.mode is ConnMode.SERVE or not self._conn.can_move_to(ConnState.CONNECTING):
            raise CyncError(f"cannot connect in state {self.state}, mode {self.mode}")
        self._conn.mode = ConnMode.CONNECT
        self._set_state(ConnState.CONNECTING)
        try:
            link = await self._open(self.connect_timeout_seconds)
        except (OSError, TimeoutError) as exc:
            if not self._closed():
                self._set_state(ConnState.DISCONNECTED)
            raise CyncError(
                f"cannot connect to device at {self.host}:{self._port}: {exc!r}",
                reason="connect_failed",
            ) from exc
        if self.state is not ConnState.CONNECTING:  # closed (or reconnecting) meanwhile
            link.abort()
            raise CyncError(f"connect ended by state {self.state}", reason=str(self.state))
        self._attach(link)

    async def serve(self) -> None:
        if self._closed() or self.mode is not None:
            raise CyncError(f"cannot serve in state {self.state}, mode {self.mode}")
        self._conn.mode = ConnMode.SERVE
        make = lambda: DeviceLink(self, self._sink, accepted=True)  # noqa: E731
        try:
            self._server = await asyncio.get_running_loop().create_server(
                make, self.host, self._port, ssl=self.tls
            )
        except OSError as exc:
            raise CyncError(
                f"cannot listen on {self.host}:{self._port}: {exc!r}", reason="listen_failed"
            ) from exc
        self._port = self._server.sockets[0].getsockname()[1]
        self._set_state(ConnState.LISTENING)

    async def wait_connected(self, timeout: float | None = None) -> None:  # noqa: ASYNC109
        """Return once connected; TimeoutError after ``timeout``; CyncError if closed."""
        if self.state is not ConnState.CONNECTED:
            await asyncio.wait_for(self._connected_event.wait(), timeout)
        if self._closed():
            raise CyncError("transport is closed", reason="closed")

    def link_made(self, link: DeviceLink) -> None:
        if not link.accepted:
            return  # connect mode: whoever called _open attaches it
        if self._closed():
            link.abort()
        elif self.state is not ConnState.RECONNECTING and not self._owner.needs_handshake:
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
        if self._closed():
            return
        if self.auto_reconnect:
            self._start_reconnect("connection_lost")
        else:
            self._set_state(self._gave_up_state())

    def _start_reconnect(self, reason: str) -> asyncio.Task[bool]:
        if self._task is None or self._task.done():
            self.last_reason = reason
            self._set_state(ConnState.RECONNECTING)
            self._task = asyncio.get_running_loop().create_task(self._run_reconnect())
            self._task.add_done_callback(_log_task_failure)
        return self._task

    async def reconnect(self, reason: str = "requested") -> bool:
        """Drop the current connection and get a new one: dial with back-off (connect mode) or
        wait for the device to dial again (serve mode), then redo the handshake if one was done.
        True when connected again; False when closed or ``reconnect_timeout_seconds`` passed."""
        if self.mode is None or not self._conn.can_move_to(ConnState.RECONNECTING):
            return False
        return await asyncio.shield(self._start_reconnect(reason))

    async def _run_reconnect(self) -> bool:
        self._detach()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.reconnect_timeout_seconds
        attempt = 0
        link: DeviceLink | None = None
        try:
            while not self._closed() and loop.time() < deadline:
                if attempt and self.mode is ConnMode.CONNECT:
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
                if self._closed() or link.closed:
                    link.abort()
                    continue
                self.reconnects += 1
                self._attach(link)
                return True
        except asyncio.CancelledError:
            if link is not None and link is not self.link:
                link.abort()  # cancelled (by close) while this connection was being handshaken
            if self._closed():
                return False
            raise
        if not self._closed():
            self._set_state(self._gave_up_state())
        return False

    def _gave_up_state(self) -> ConnState:
        return ConnState.LISTENING if self.mode is ConnMode.SERVE else ConnState.DISCONNECTED

    async def _next_link(self, deadline: float) -> DeviceLink | None:
        loop = asyncio.get_running_loop()
        if self.mode is ConnMode.CONNECT:
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
        if self._closed():
            return
        self._set_state(ConnState.CLOSED)
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
