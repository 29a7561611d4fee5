# ReliableTransport: the controller ("cloud") side of one connection to a Cync device.
#
# Strategy: the protocol logic is the sans-IO core in cyncsim.replay.controller (exchange
# table, auto-answers, connection states); this class adds only I/O, timers and retries.  The
# controller answers what devices send and sends 0x73 commands (and 0xA3), PROTOCOL.md sections
# 4-9.  Each exchange runs in the caller's task: write, wait for the ACK future, back off
# (seeded jitter), retransmit the identical bytes, at most ``max_retries`` times.  Everything is
# bounded: open exchanges (``max_pending``; beyond it a command fails at once with reason
# "backpressure", so callers see the overload instead of hidden queueing latency), the 0x83
# de-duplication LRU (``dedup_window``) and the inbox (``recv_queue_size``; oldest dropped and
# counted).  Failures are Result values; decode problems are raised by ``recv_reliable``.
# The receive side is a ``Receiver`` (_receive.py), the connection a ``ConnectionManager``
# (_manager.py) whose links (_link.py) hand their packets to the receiver.
from __future__ import annotations

import asyncio
import random
import ssl
import time
from collections.abc import Callable
from typing import Any, Self

from cyncsim.replay.controller import (
    HELLO_ACK,
    ConnState,
    Controller,
    Exchange,
    Outcome,
)
from cyncsim.replay.errors import HandshakeError
from cyncsim.replay.payloads import (
    GROUP_BASE,
    RGB_MODE,
    UNCHANGED,
    LightStateCommand,
    PowerCommand,
    build_command,
    build_control,
)
from cyncsim.replay.protocol import (
    CyncPacket,
    FramedPacket,
    FrameKind,
    HelloPacket,
    PacketType,
    exchange_key,
)
from cyncsim.simulator.transport._link import DeviceLink
from cyncsim.simulator.transport._manager import ConnectionManager
from cyncsim.simulator.transport._receive import Receiver, Waiters, wake
from cyncsim.simulator.transport._result import Result, TransportStats

__all__ = ["ReliableTransport"]


async def _settled(fut: asyncio.Future[Any], seconds: float) -> bool:
    """Wait up to ``seconds`` for ``fut`` without cancelling it; True when it is done."""
    if not fut.done():
        await asyncio.wait((fut,), timeout=seconds)
    return fut.done()


class ReliableTransport:
    """Controller side of a Cync device connection, with ACK matching, retries and reconnect.

    ``connect()`` dials a listening device; ``serve()`` listens (``.port`` is the bound port)
    and accepts a dialling device (``wait_connected``).  Then ``handshake()``, commands and
    ``recv_reliable()``.  Heartbeat: only devices send 0xD3, so ``send_heartbeat`` waits for
    the device's next 0xD3 (answered with 0xD8 as always) and reports the wait: a liveness check.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        ack_timeout_seconds: float = 2.0,
        max_retries: int = 3,
        backoff_base: float = 0.1,
        backoff_max: float = 2.0,
        jitter: float = 0.1,
        seed: int | None = None,
        tls: ssl.SSLContext | None = None,
        max_pending: int = 256,
        dedup_window: int = 1024,
        auto_reconnect: bool = True,
        result_timeout_seconds: float = 5.0,
        handshake_timeout_seconds: float = 10.0,
        heartbeat_timeout_seconds: float = 30.0,
        reconnect_timeout_seconds: float = 30.0,
        connect_timeout_seconds: float = 5.0,
        recv_queue_size: int = 1024,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if min(ack_timeout_seconds, result_timeout_seconds, handshake_timeout_seconds) <= 0:
            raise ValueError("timeouts must be > 0")
        if max_retries < 0 or not 0 <= backoff_base <= backoff_max or not 0 <= jitter <= 1:
            raise ValueError("need max_retries >= 0, 0 <= backoff_base <= backoff_max, jitter 0-1")
        if not 1 <= max_pending <= 0x8000 or min(dedup_window, recv_queue_size) < 1:
            raise ValueError("need 1 <= max_pending <= 32768, dedup_window and queue size >= 1")
        self.ack_timeout_seconds = ack_timeout_seconds
        self.max_retries = max_retries
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.jitter = jitter
        self.result_timeout_seconds = result_timeout_seconds
        self.handshake_timeout_seconds = handshake_timeout_seconds
        self.heartbeat_timeout_seconds = heartbeat_timeout_seconds
        self._rng = random.Random(seed)
        self.device_id: bytes | None = None
        self.auth_code: str | None = None
        self.stats = TransportStats()
        self._core: Controller[Waiters] = Controller(
            max_pending=max_pending, dedup_window=dedup_window
        )
        self._rx = Receiver(self._core, self.stats, state=lambda: self.state, clock=clock,
                            queue_size=recv_queue_size)  # fmt: skip
        self.conn_mgr = ConnectionManager(
            self, self._rx, host=host, port=port, tls=tls, auto_reconnect=auto_reconnect,
            reconnect_timeout_seconds=reconnect_timeout_seconds,
            connect_timeout_seconds=connect_timeout_seconds,
        )  # fmt: skip
        self._ever_handshaken = False
        self._send_control = False

    @property
    def max_pending(self) -> int:
        return self._core.max_pending

    @property
    def dedup_window(self) -> int:
        return self._core.dedup_window

    # ------------------------------------------------------------------ connection lifecycle
    @property
    def state(self) -> ConnState:
        return self.conn_mgr.state

    @property
    def port(self) -> int:
        return self.conn_mgr.port

    async def connect(self) -> None:
        """Dial a listening device at host:port; CyncError(reason="connect_failed") if not."""
        await self.conn_mgr.connect()

    async def serve(self) -> None:
        """Listen on host:port (0 = any free port, see ``.port``) for a dialling device."""
        await self.conn_mgr.serve()

    async def wait_connected(self, timeout: float | None = None) -> None:  # noqa: ASYNC109
        await self.conn_mgr.wait_connected(timeout)

    async def close(self) -> None:
        """Fail open exchanges with reason "closed" and close everything; safe twice."""
        await self.conn_mgr.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def backoff_delay(self, attempt: int) -> float:
        """Delay after failed attempt ``attempt``: exponential, capped, with seeded jitter."""
        base = min(self.backoff_max, self.backoff_base * (2.0**attempt))
        return max(0.0, base * (1.0 + self.jitter * self._rng.uniform(-1.0, 1.0)))

    # ------------------------------------------------------------------------- handshake
    async def handshake(
        self,
        *,
        send_control: bool = False,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> HelloPacket:
        """Wait for the device's 0x23, answer 0x28; with ``send_control`` also 0xA3 -> 0xAB.

        Raises HandshakeError (reason ``malformed_hello``, ``unexpected_packet``, ``timeout``,
        ``closed``, ``not_connected``, ``reconnecting``, ``bad_control_answer``).  Every later
        reconnect redoes it before the connection counts as connected.
        """
        link = self.conn_mgr.link
        if link is None:
            raise HandshakeError(
                f"no device connection (state {self.state})", reason=self._refusal() or "closed"
            )
        hello = await self._handshake_link(link, send_control, timeout)
        self._ever_handshaken, self._send_control = True, send_control
        return hello

    async def _handshake_link(
        self, link: DeviceLink, send_control: bool, seconds: float | None
    ) -> HelloPacket:
        limit = self.handshake_timeout_seconds if seconds is None else seconds
        hello = await link.wait_hello(limit)
        if link.handshaken:
            return hello  # handshake() called again: the 0x28 was sent already
        if not link.write(HELLO_ACK):
            raise HandshakeError(f"connection to {link.peer} closed", reason="closed")
        link.handshaken = True
        self.device_id, self.auth_code = hello.device_id, hello.auth_code.decode("ascii")
        if send_control:
            request = build_control(hello.device_id, self._rng.randbytes(2))
            await link.control_exchange(request, limit)
        return hello

    # hooks for the ConnectionManager
    @property
    def needs_handshake(self) -> bool:
        return self._ever_handshaken

    async def rehandshake(self, link: DeviceLink) -> None:
        await self._handshake_link(link, self._send_control, None)

    def link_down(self, reason: str) -> None:
        """The connection is gone: every waiting exchange ends now with ``reason``."""
        for exchange in self._core.fail_open(reason):
            wake(exchange)
        self._rx.fail_pings(reason)

    def state_changed(self, state: ConnState) -> None:
        self._rx.state_changed(state)

    # --------------------------------------------------------------------------- receive
    async def recv_reliable(self, timeout: float | None = None) -> CyncPacket:  # noqa: ASYNC109
        """The next device packet the transport did not consume: 0x83 reports, 0x43, f9
        results nobody waited for, anything unexpected (0x83/0x43 are already answered).
        Raises PacketDecodeError for a defective packet or non-Cync bytes (the connection
        stays up), TimeoutError after ``timeout``, CyncError when closed / not connected."""
        return await self._rx.recv(timeout)

    def internal_sizes(self) -> dict[str, int]:
        """Sizes of the internal tables: all bounded, the first four 0 when nothing waits."""
        core = self._core.sizes()
        return {
            "pending": core["pending"],
            "result_waiters": core["result_waiters"],
            "ping_waiters": len(self._rx.ping_waiters),
            "inbox_waiters": self._rx.inbox.waiters,
            "inbox": len(self._rx.inbox),
            "dedup": core["dedup"],
        }

    # -------------------------------------------------------------------------- commands
    def _refusal(self) -> str | None:
        refusal = self.conn_mgr.state.refusal
        if refusal is None and self.conn_mgr.link is None:
            return "not_connected"
        return refusal

    @staticmethod
    def group(number: int) -> int:
        """Mesh address of group ``number`` (0x8000 + n)."""
        return GROUP_BASE + number

    async def send_toggle_command(
        self,
        device_id_or_node: bytes | int,
        state: bool,
        *,
        target: int | None = None,
        wait_result: bool = False,
    ) -> Result:
        """Power a mesh node or group on/off (f8 d0).  ``device_id_or_node`` is a 4-byte
        device id (bytes; ``target`` then names the node or group) or a node/group id (int;
        the device id is the handshaken one)."""
        if isinstance(device_id_or_node, bytes | bytearray):
            if len(device_id_or_node) != 4 or target is None:
                raise ValueError("a bytes device id must have 4 bytes and needs target=")
            device_id: bytes | None = bytes(device_id_or_node)
            node = target
        else:
            if target is not None and target != device_id_or_node:
                raise ValueError(f"node {device_id_or_node} and target={target} disagree")
            device_id, node = self.device_id, device_id_or_node
        _check_target(node)
        return await self._send_command(
            device_id, lambda ctr: PowerCommand(ctr, node, bool(state)), wait_result
        )

    async def send_light_state(
        self,
        target: int,
        brightness: int | None = None,
        color_temp: int | None = None,
        rgb: tuple[int, int, int] | None = None,
        *,
        device_id: bytes | None = None,
        wait_result: bool = False,
    ) -> Result:
        """Brightness 0-100, colour temperature 0-100 or RGB (f8 f0); None = unchanged (0xff),
        RGB switches to RGB mode (0xfe).  ``device_id`` defaults to the handshaken one."""
        _check_target(target)
        if rgb is not None and color_temp is not None:
            raise ValueError("give color_temp or rgb, not both")
        if any(v is not None and not 0 <= v <= 100 for v in (brightness, color_temp)):
            raise ValueError(f"brightness {brightness} / color_temp {color_temp} not in 0-100")
        if rgb is not None and (len(rgb) != 3 or not all(0 <= c <= 255 for c in rgb)):
            raise ValueError(f"rgb {rgb} is not three values 0-255")
        bri = UNCHANGED if brightness is None else brightness
        ct = RGB_MODE if rgb is not None else (UNCHANGED if color_temp is None else color_temp)
        colour = (0xFF, 0xFF, 0xFF) if rgb is None else (rgb[0], rgb[1], rgb[2])
        dev = self.device_id if device_id is None else bytes(device_id)
        return await self._send_command(
            dev, lambda ctr: LightStateCommand(ctr, target, bri, ct, colour), wait_result
        )

    async def _send_command(
        self,
        device_id: bytes | None,
        make: Callable[[int], PowerCommand | LightStateCommand],
        wait_result: bool,
    ) -> Result:
        refusal = self._refusal()
        if refusal is not None:
            return Result(False, refusal)
        if device_id is None:
            return Result(False, "no_device_id")
        seq = self._core.next_seq()
        if seq is None:
            self.stats.backpressure += 1
            return Result(False, "backpressure")
        packet = build_command(device_id, self._core.next_msg_id(device_id), make(seq))
        return await self.send_reliable(packet, wait_result=wait_result)

    async def send_reliable(self, packet: CyncPacket, *, wait_result: bool = False) -> Result:
        """Send a 0x73 until a 0x7B echoing its bytes 5-11 arrives or the retries run out.

        Sent as given; retransmissions are the same bytes (same message id and sequence, so a
        device can de-duplicate).  ``wait_result`` also waits for the f9 result carrying the
        frame's sequence byte.  Refused at once with reason ``id_in_use`` when that message id
        (or awaited sequence byte) is already open, ``backpressure`` at ``max_pending``.
        """
        if not isinstance(packet, FramedPacket) or packet.type != PacketType.DATA:
            raise ValueError(f"send_reliable sends 0x73 packets, not {packet.name}")
        frame = packet.frame
        if wait_result and (frame is None or frame.kind != FrameKind.REQUEST):
            raise ValueError("wait_result needs a 0x73 with an f8 request frame")
        refusal = self._refusal()
        if refusal is not None:
            return Result(False, refusal)
        data = packet.encode()
        seq = frame.seq_byte if wait_result and frame is not None else None
        loop = asyncio.get_running_loop()
        waiters = Waiters(loop.create_future(), loop.create_future() if seq is not None else None)
        opcode = -1 if frame is None else frame.opcode
        exchange = self._core.open(exchange_key(data), seq, opcode, waiters)
        if isinstance(exchange, str):  # refused: "id_in_use" or "backpressure"
            if exchange == "backpressure":
                self.stats.backpressure += 1
            return Result(False, exchange)
        self.stats.commands += 1
        try:
            return await self._exchange(exchange, data)
        finally:
            self._core.finish(exchange)

    async def _exchange(self, exchange: Exchange[Waiters], data: bytes) -> Result:
        loop = asyncio.get_running_loop()
        start = loop.time()
        retries = 0
        waiters = exchange.waiter
        for attempt in range(self.max_retries + 1):
            retries = attempt
            link = self.conn_mgr.link
            if link is not None and exchange.ack is None:
                await link.wait_writable()
            if exchange.ack is not None or link is None or not link.write(data):
                break
            self.stats.transmissions += 1
            self.stats.retransmissions += 1 if attempt else 0
            if await _settled(waiters.ack, self.ack_timeout_seconds):
                break
            if attempt == self.max_retries:
                self.stats.timeouts += 1
                return Result(False, "timeout", retries, loop.time() - start)
            # An ACK arriving during the back-off still completes this exchange.
            if await _settled(waiters.ack, self.backoff_delay(attempt)):
                break
        ack = exchange.ack if exchange.ack is not None else (self._refusal() or "connection_lost")
        if isinstance(ack, str):
            return Result(False, ack, retries, loop.time() - start)
        self.stats.acked += 1
        acked = loop.time() - start
        if waiters.result is None:
            return Result(True, "acked", retries, acked, ack, ack_latency_s=acked)
        if not await _settled(waiters.result, self.result_timeout_seconds):
            return Result(False, "result_timeout", retries, loop.time() - start, ack, None, acked)
        res = exchange.result
        if not isinstance(res, CyncPacket):
            reason = res or "result_timeout"
            return Result(False, reason, retries, loop.time() - start, ack, None, acked)
        return Result(True, "acked", retries, loop.time() - start, ack, res, acked)

    async def send_heartbeat(self, timeout: float | None = None) -> Result:  # noqa: ASYNC109
        """Wait for the device's next 0xD3 ping (the dispatcher answers it with 0xD8).

        Success: reason "ping_answered", ``result`` = the 0xD3, ``latency_s`` = the wait.
        """
        refusal = self._refusal()
        if refusal is not None:
            return Result(False, refusal)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Outcome] = loop.create_future()
        self._rx.ping_waiters.append(fut)
        start = loop.time()
        try:
            limit = self.heartbeat_timeout_seconds if timeout is None else timeout
            done = await _settled(fut, limit)
        finally:
            self._rx.ping_waiters.remove(fut)
        got = fut.result() if done else "timeout"
        if isinstance(got, str):
            return Result(False, got, 0, loop.time() - start)
        return Result(True, "ping_answered", 0, loop.time() - start, None, got)

    async def send_raw(self, packet: CyncPacket | bytes) -> bool:
        """Write bytes without waiting for an answer; False when not connected."""
        link = self.conn_mgr.link
        if link is None or self._refusal() is not None:
            return False
        await link.wait_writable()
        return link.write(packet if isinstance(packet, bytes) else packet.encode())


def _check_target(node: int) -> None:
    if not 0 <= node <= 0xFFFF:
        raise ValueError(f"mesh target {node} is not a 16-bit node or group id (0x8000 + n)")
