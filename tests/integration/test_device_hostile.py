# A listening device against a hostile controller: what arrives in one read is never a reason
# to reset the connection (issue 16, defect 1), and a request flood is held to bounded queues
# (issue 16, defect 2).
#
# Each case writes its bytes, then a harmless marker command with a message id of its own;
# devices answer in order, so once the marker's 0x7B is back everything before it has been
# handled (no sleep-then-assert).  The connection must still be open then, nothing may be
# logged at ERROR (asyncio logs a protocol callback's exception there), and a packet longer
# than a device accepts is reported in exactly one log line.  The flood cases write 0xA3
# requests (each answered by a 1,024-byte 0xAB) as fast as the socket takes them and check,
# after every write, the device's scheduled answers and its write buffer against the bounds
# stated below; then a fresh connection must be answered.  Marker ``hostile``.
from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator

import pytest

from cyncsim.replay.chaos import ChaosConfig
from cyncsim.replay.payloads import PowerCommand, build_command, build_control
from cyncsim.replay.protocol import exchange_key
from cyncsim.simulator.device import CyncDeviceSimulator
from tests.support import HELLO_ACK, Peer

pytestmark = pytest.mark.hostile

DEV = bytes.fromhex("6457e7f2")
NODE = 206


def command(n: int, on: bool = True) -> bytes:
    """A valid 36-byte power command for our node with message id ``n``."""
    msg_id = bytes(((n >> 8) & 0xFF, n & 0xFF, 0))
    return build_command(DEV, msg_id, PowerCommand(n & 0xFF, NODE, on)).encode()


def zero_free(rng: random.Random, n: int) -> bytes:
    """``n`` random bytes none of which is zero: no position can start a packet header."""
    return bytes(rng.randrange(1, 256) for _ in range(n))


async def handshaken_peer(sim: CyncDeviceSimulator) -> Peer:
    """A new connection to ``sim``, handshaken (0x23 seen, 0x28 sent)."""
    p = await Peer.open(sim.port)
    await p.handshake()
    await sim.wait_for(lambda: sim.handshaken and sim.connection is not None)
    return p


@pytest.fixture
async def sim() -> AsyncIterator[CyncDeviceSimulator]:
    async with CyncDeviceSimulator(DEV, mesh_node=NODE, seed=16, time_scale=0.02) as s:
        yield s


@pytest.fixture
async def peer(sim: CyncDeviceSimulator) -> AsyncIterator[Peer]:
    p = await handshaken_peer(sim)
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
    await peer.marker(command(1000))
    assert peer.acks() == [exchange_key(c) for c in burst] + [exchange_key(command(1000))]
    assert not peer.eof.is_set() and _errors(caplog) == []


async def test_oversize_header_reported_in_one_line(
    peer: Peer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="cyncsim")
    peer.writer.write(bytes.fromhex("73 00 00 ff ff"))
    await peer.marker(command(1))
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
    await peer.marker(command(2))
    assert peer.acks() == [exchange_key(command(2))]
    assert not peer.eof.is_set() and _errors(caplog) == []


async def test_hello_type_then_garbage_skipped(
    peer: Peer, caplog: pytest.LogCaptureFixture
) -> None:
    rng = random.Random(23)
    peer.writer.write(b"\x23\x00\x00" + zero_free(rng, 6000))
    await peer.marker(command(3))
    assert peer.acks() == [exchange_key(command(3))]
    assert not peer.eof.is_set() and _errors(caplog) == []


# ---------------------------------------------------------------------------- flood (defect 2)
def control(n: int) -> bytes:
    """A 12-byte 0xA3 for our device with token ``n``; the device answers a 1,024-byte 0xAB."""
    return build_control(DEV, (n & 0xFFFF).to_bytes(2, "big")).encode()


FLOOD = b"".join(control(i) for i in range(5000))  # 60,000 bytes, 5,000 requests per write
# Bounds stated by these tests (the device's own limits are below them; see _connection.py):
MAX_SCHEDULED = 300  # answers and timers a connection holds scheduled but not written
MAX_WRITE_BUFFER = 256 * 1024  # bytes held in the device's transport, not yet taken by TCP
MAX_HELD_INPUT = 512 * 1024  # bytes read from the socket but not yet handed to the engine
PEER_BACKLOG = 1 << 20  # the flooding peer writes while its own buffer is below this


async def flood(sim: CyncDeviceSimulator, p: Peer, seconds: float) -> int:
    """Write 0xA3 floods for ``seconds`` (at most 2,000 writes), checking the device's
    queues after each; returns the requests written."""
    loop = asyncio.get_running_loop()
    conn = sim.connection
    assert conn is not None and conn.transport is not None
    transport = conn.transport
    end, written = loop.time() + seconds, 0
    for _ in range(2000):
        if loop.time() >= end or p.writer.is_closing() or transport.is_closing():
            break
        if p.writer.transport.get_write_buffer_size() < PEER_BACKLOG:
            p.writer.write(FLOOD)
            written += 5000
        with contextlib.suppress(TimeoutError, OSError):
            await asyncio.wait_for(p.writer.drain(), 0.01)
        assert conn.pending <= MAX_SCHEDULED, f"{conn.pending} answers scheduled"
        assert transport.get_write_buffer_size() <= MAX_WRITE_BUFFER, "device write buffer"
        assert conn.held <= MAX_HELD_INPUT, f"{conn.held} bytes read and held"
    return written


async def fresh_connection_answered(sim: CyncDeviceSimulator, n: int) -> None:
    p = await handshaken_peer(sim)
    try:
        await p.marker(command(n))
    finally:
        await p.close()


async def test_flood_with_a_reading_peer_is_held_by_backpressure(
    sim: CyncDeviceSimulator, peer: Peer, caplog: pytest.LogCaptureFixture
) -> None:
    written = await flood(sim, peer, 3.0)
    # The device stopped reading: the flood backed up into the peer (its TCP window filled).
    assert peer.writer.transport.get_write_buffer_size() > 0, f"all {written} requests read"
    answers = sum(1 for q in peer.packets if q[0] == 0xAB)
    assert 0 < answers < written
    assert not peer.eof.is_set() and _errors(caplog) == []
    await fresh_connection_answered(sim, 4)


async def test_flood_with_a_peer_that_does_not_read_is_bounded_then_closed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="cyncsim")
    # No delays: every 0xAB goes out at once, so the buffers toward the peer fill first.
    async with CyncDeviceSimulator(DEV, mesh_node=NODE, seed=16, time_scale=0) as sim:
        reader, writer = await asyncio.open_connection("127.0.0.1", sim.port)
        writer.write(HELLO_ACK)  # answers the 0x23 without reading it
        await sim.wait_for(lambda: sim.handshaken)
        conn = sim.connection
        assert conn is not None
        p = Peer.over(reader, writer, read=False)  # a peer that never reads
        await flood(sim, p, 6.0)
        # As real devices did when a server stopped reading them (PROTOCOL.md 10.4), the
        # device gave up on the connection once its write buffer stayed full.
        await asyncio.wait_for(conn.closed.wait(), 10)
        lines = [r.getMessage() for r in caplog.records if r.name.startswith("cyncsim")]
        assert any("not reading" in line for line in lines), lines
        assert _errors(caplog) == []
        writer.transport.abort()
        await fresh_connection_answered(sim, 5)


async def test_burst_under_chaos_latency_all_answered_in_order() -> None:
    # Every packet both ways is delayed, so the answers wait in the chaos writer's queue too:
    # a burst of more commands than a connection schedules at once must still all be
    # answered, in order, with nothing more than MAX_SCHEDULED scheduled at any time.
    chaos = ChaosConfig(latency_ms=5.0)
    async with CyncDeviceSimulator(
        DEV, mesh_node=NODE, seed=16, time_scale=0.02, chaos_config=chaos
    ) as sim:
        p = await handshaken_peer(sim)
        conn = sim.connection
        assert conn is not None
        burst = [command(0x400 + i) for i in range(400)]
        p.writer.write(b"".join(burst))
        want = [exchange_key(c) for c in burst]
        peak = 0

        def done() -> bool:
            nonlocal peak
            peak = max(peak, conn.pending)
            return p.acks()[: len(want)] == want

        await p.until(done, timeout=30)
        assert peak <= MAX_SCHEDULED
        await p.close()


async def test_dialling_device_dials_again_when_the_controller_stops_reading() -> None:
    # PROTOCOL.md 10.4: devices whose server stopped reading disconnected and reconnected.
    accepted: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await accepted.put((r, w))

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server, CyncDeviceSimulator(DEV, mesh_node=NODE, seed=16, time_scale=0) as sim:
        await sim.connect("127.0.0.1", port)
        reader, writer = await asyncio.wait_for(accepted.get(), 10)
        writer.write(HELLO_ACK)  # the controller answers the 0x23 and never reads again
        await sim.wait_for(lambda: sim.handshaken)
        p = Peer.over(reader, writer, read=False)
        await flood(sim, p, 6.0)
        _, again = await asyncio.wait_for(accepted.get(), 10)  # the device dialled again
        assert sim.connections == 2
        writer.transport.abort()
        again.close()
