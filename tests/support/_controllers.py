# Controller ends for device tests: RawController (a bare connection that records every packet
# with its arrival time and may answer at once), MiniController (a listening controller that
# answers hellos and pings, for devices in dial mode), and the marker waits built on them.
#
# Strategy: asyncio streams and the project's framer; nothing is interpreted beyond the request
# key, so the tests see exactly what the device sent.  A marker is a harmless command sent
# after the packets under test: a device answers in order, so once the marker's answers are
# back, whatever the earlier packets caused (or would wrongly cause) has arrived too.
from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Callable

from cyncsim.replay.framer import PacketFramer
from cyncsim.simulator.transport import ReliableTransport
from tests.support._packets import HELLO_ACK, MARKER_BRIGHTNESS, frame_seq, request_of, status_of
from tests.support._wait import eventually

__all__ = ["MiniController", "RawController", "answered", "marker_answered"]


class RawController:
    """A bare controller end: records (arrival time, packet bytes) of all it receives."""

    def __init__(self, responder: Callable[[bytes], bytes | None] | None = None) -> None:
        self.responder = responder  # answers written at once for each packet received
        self.packets: list[tuple[float, bytes]] = []
        self.sent: list[bytes] = []
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None
        self.eof = asyncio.Event()

    async def connect(self, port: int, host: str = "127.0.0.1") -> None:
        reader, writer = await asyncio.open_connection(host, port)
        self.attach(reader, writer)

    def attach(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.reader is not None
        framer = PacketFramer()
        loop = asyncio.get_running_loop()
        try:
            while data := await self.reader.read(65536):
                now = loop.time()
                for p in framer.feed(data):
                    raw = p.encode()
                    self.packets.append((now, raw))
                    answer = self.responder(raw) if self.responder is not None else None
                    if answer and self.writer is not None and not self.writer.is_closing():
                        self.sent.append(answer)
                        self.writer.write(answer)
        except OSError:
            pass
        finally:
            self.eof.set()

    async def send(self, *packets: bytes) -> float:
        assert self.writer is not None
        self.sent.extend(packets)
        self.writer.write(b"".join(packets))
        await self.writer.drain()
        return asyncio.get_running_loop().time()

    def of(self, request: str) -> list[bytes]:
        """The packets received whose request key is ``request`` (e.g. ``0x7b``), in order."""
        return [p for _, p in self.packets if request_of(p) == request]

    def timed(self, request: str) -> list[tuple[float, bytes]]:
        return [(t, p) for t, p in self.packets if request_of(p) == request]

    async def wait_count(self, request: str, n: int, timeout: float = 5.0) -> list[bytes]:  # noqa: ASYNC109
        """Wait until ``n`` packets of ``request`` have come; returns all of them so far."""
        await eventually(lambda: len(self.of(request)) >= n, timeout, f"{n} x {request}")
        return self.of(request)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()
        if self._task is not None:
            await self._task


async def answered(ctl: RawController, command: bytes, node: int = 206) -> None:
    """Send ``command`` (a ``marker()`` for ``node``), wait for its f9 result and its status.

    A device sends its 0x73 results and its 0x83 reports each in order (they take counters),
    so once the marker's are back, every result and report due before them has arrived:
    no sleeping to see whether something else comes.
    """
    seq = frame_seq(command)
    assert seq is not None, "a marker is a 0x73 with an inner frame"
    await ctl.send(command)

    def done() -> bool:
        result = any(frame_seq(p) == seq for p in ctl.of("0x73:f9:f0"))
        reports = [status_of(p) for p in ctl.of("0x83:fa:db")]
        return result and any(st[0] == node and st[2] == MARKER_BRIGHTNESS for st in reports)

    await eventually(done, what="the marker's result and status report")


async def marker_answered(transport: ReliableTransport, node: int) -> None:
    """A harmless command through ``transport``, its result awaited: the device handles
    commands in order, so whatever an earlier command did (or would wrongly do) is done once
    this one's result is back."""
    r = await transport.send_light_state(node, brightness=MARKER_BRIGHTNESS, wait_result=True)
    assert r.success and r.result is not None


def _answer_hello_and_ping(pkt: bytes) -> bytes | None:
    if pkt[0] == 0x23:
        return HELLO_ACK
    return bytes.fromhex("d8 00 00 00 00") if pkt[0] == 0xD3 else None


class MiniController:
    """A listening controller: answers 0x23 with 0x28 and 0xD3 with 0xD8; one RawController
    per connection, in ``links``."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.tls = tls
        self.links: list[RawController] = []
        self.ciphers: list[str] = []
        self.peers: list[str] = []
        self._server: asyncio.Server | None = None

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0, ssl=self.tls)
        return int(self._server.sockets[0].getsockname()[1])

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        cipher = writer.get_extra_info("cipher")
        if cipher:
            self.ciphers.append(cipher[0])
        self.peers.append(writer.get_extra_info("peername")[0])
        link = RawController(_answer_hello_and_ping)
        link.attach(reader, writer)
        self.links.append(link)

    async def wait_links(self, n: int, timeout: float = 5.0) -> None:  # noqa: ASYNC109
        await eventually(lambda: len(self.links) >= n, timeout, f"{n} connections")

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for link in self.links:
            await link.close()
        if self._server is not None:
            await self._server.wait_closed()
