# A listening device against a hostile controller: what arrives in one read is never a reason
# to reset the connection (issue 16, defect 1).
#
# Each case writes its bytes, then a harmless marker command with a message id of its own;
# devices answer in order, so once the marker's 0x7B is back everything before it has been
# handled (no sleep-then-assert).  The connection must still be open then, nothing may be
# logged at ERROR (asyncio logs a protocol callback's exception there), and a packet longer
# than a device accepts is reported in exactly one log line.
from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator, Callable

import pytest

from cyncsim.replay.framer import PacketFramer
from cyncsim.replay.payloads import PowerCommand, build_command
from cyncsim.replay.protocol import exchange_key
from cyncsim.simulator.device import CyncDeviceSimulator

DEV = bytes.fromhex("6457e7f2")
HELLO_ACK = bytes.fromhex("28 00 00 00 02 00 00")
NODE = 206


def command(n: int, on: bool = True) -> bytes:
    """A valid 36-byte power command for our node with message id ``n``."""
    msg_id = bytes(((n >> 8) & 0xFF, n & 0xFF, 0))
    return build_command(DEV, msg_id, PowerCommand(n & 0xFF, NODE, on)).encode()


def msg_id(packet: bytes) -> bytes:
    return exchange_key(packet)[4:]


def zero_free(rng: random.Random, n: int) -> bytes:
    """``n`` random bytes none of which is zero: no position can start a packet header."""
    return bytes(rng.randrange(1, 256) for _ in range(n))


class Peer:
    """A bare controller: frames what the device sends, keeps every packet."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.packets: list[bytes] = []
        self.eof = asyncio.Event()
        self.arrived = asyncio.Event()
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        framer = PacketFramer()
        try:
            while data := await self.reader.read(65536):
                self.packets.extend(p.encode() for p in framer.feed(data))
                self.arrived.set()
        except OSError:
            pass
        finally:
            self.eof.set()
            self.arrived.set()

    def acks(self) -> list[bytes]:
        """Message ids (bytes 9-11) of the 0x7B acks received, in order."""
        return [msg_id(p) for p in self.packets if p[0] == 0x7B]

    async def wait_until(self, done: Callable[[], bool], timeout: float = 10.0) -> None:  # noqa: ASYNC109
        """Wait until ``done()`` is true; fails at once when the device closed on us."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while not done():
            assert not self.eof.is_set(), "the device closed the connection"
            assert loop.time() < end, f"no answer within {timeout} s"
            self.arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.arrived.wait(), end - loop.time())

    async def marker(self, n: int) -> None:
        """Send a harmless command and wait for its ack: everything sent before is handled."""
        self.writer.write(command(n))
        await self.writer.drain()
        want = msg_id(command(n))
        await self.wait_until(lambda: want in self.acks())

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()
        await self.task


@pytest.fixture
async def peer() -> AsyncIterator[Peer]:
    sim = CyncDeviceSimulator(DEV, mesh_node=NODE, seed=16, time_scale=0.02)
    async with sim:
        reader, writer = await asyncio.open_connection("127.0.0.1", sim.port)
        p = Peer(reader, writer)
        await p.wait_until(lambda: any(q[0] == 0x23 for q in p.packets))
        writer.write(HELLO_ACK)
        await sim.wait_handshaken()
        yield p
        await p.close()


def _errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


async def test_burst_over_4_kb_in_one_write_all_answered_in_order(
    peer: Peer, caplog: pytest.LogCaptureFixture
) -> None:
    burst = [command(i + 1, on=bool(i % 2)) for i in range(114)]  # 4,104 bytes
    assert sum(map(len, burst)) == 4104
    peer.writer.write(b"".join(burst))
    await peer.marker(1000)
    assert peer.acks() == [msg_id(c) for c in burst] + [msg_id(command(1000))]
    assert not peer.eof.is_set() and _errors(caplog) == []


async def test_oversize_header_reported_in_one_line(
    peer: Peer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="cyncsim")
    peer.writer.write(bytes.fromhex("73 00 00 ff ff"))
    await peer.marker(1)
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("cyncsim")]
    assert len(lines) == 1, lines
    assert "65540" in lines[0] and "longer" in lines[0]
    assert not peer.eof.is_set() and _errors(caplog) == []


async def test_garbage_skipped(peer: Peer, caplog: pytest.LogCaptureFixture) -> None:
    rng = random.Random(16)
    # Noise with two fake headers in it, both claiming far more than a device holds: one of
    # an unknown type, one a plausible 0x83.
    garbage = (
        zero_free(rng, 3000)
        + bytes.fromhex("a5 00 00 ff ff")
        + zero_free(rng, 3000)
        + bytes.fromhex("83 00 00 f0 00")
        + zero_free(rng, 3000)
    )
    peer.writer.write(garbage)
    await peer.marker(2)
    assert peer.acks() == [msg_id(command(2))]
    assert not peer.eof.is_set() and _errors(caplog) == []


async def test_hello_type_then_garbage_skipped(
    peer: Peer, caplog: pytest.LogCaptureFixture
) -> None:
    rng = random.Random(23)
    peer.writer.write(b"\x23\x00\x00" + zero_free(rng, 6000))
    await peer.marker(3)
    assert peer.acks() == [msg_id(command(3))]
    assert not peer.eof.is_set() and _errors(caplog) == []
