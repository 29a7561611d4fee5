# A bare controller for the hostile-peer tests: a raw connection to a device that frames what
# the device sends and keeps every packet, with a wait that fails at once when the device
# closes on it, and a marker command (devices answer in order: once its ack is back,
# everything written before it was handled).
from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from cyncsim.replay.framer import PacketFramer
from cyncsim.replay.protocol import exchange_key
from tests.support._packets import HELLO_ACK

__all__ = ["Peer", "reset"]


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST (SO_LINGER 0) instead of a FIN."""
    sock = writer.get_extra_info("socket")
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


@dataclass
class Peer:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    packets: list[bytes] = field(default_factory=list)
    eof: asyncio.Event = field(default_factory=asyncio.Event)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, port: int, *, read: bool = True) -> Peer:
        """A connection to 127.0.0.1:``port``; ``read=False`` never reads (its window fills)."""
        return cls.over(*await asyncio.open_connection("127.0.0.1", port), read=read)

    @classmethod
    def over(
        cls, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, read: bool = True
    ) -> Peer:
        """A peer on a connection already made (e.g. one a device dialled)."""
        p = cls(reader, writer)
        if read:
            p.task = asyncio.create_task(p._read())
        return p

    async def _read(self) -> None:
        framer = PacketFramer()
        try:
            while data := await self.reader.read(65536):
                self.packets.extend(q.encode() for q in framer.feed(data))
                self.arrived.set()
        except OSError:
            pass
        finally:
            self.eof.set()
            self.arrived.set()

    def acks(self) -> list[bytes]:
        """Exchange keys of the 0x7B acks received, in order."""
        return [exchange_key(q) for q in self.packets if q[0] == 0x7B]

    async def until(self, done: Callable[[], bool], timeout: float = 10.0) -> None:  # noqa: ASYNC109
        """Wait until ``done()`` is true; fails at once when the device closed on us."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while not done():
            assert not self.eof.is_set(), "the device closed the connection"
            assert loop.time() < end, f"no answer within {timeout} s"
            self.arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.arrived.wait(), end - loop.time())

    async def handshake(self) -> None:
        """Wait for the device's 0x23 and answer it."""
        await self.until(lambda: any(q[0] == 0x23 for q in self.packets))
        self.writer.write(HELLO_ACK)

    async def marker(self, command: bytes) -> None:
        """Send ``command`` and wait for its ack: everything written before was handled."""
        self.writer.write(command)
        await self.writer.drain()
        await self.until(lambda: exchange_key(command) in self.acks())

    async def close(self, *, abort: bool = False) -> None:
        if abort:
            reset(self.writer)
        else:
            self.writer.close()
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()
        if self.task is not None:
            await self.task
