# ChaosWriter (cyncsim.simulator.chaos): a pure ChaosPolicy's decisions applied in time on the
# event loop, first on a fake sink (ordering, close, resets, a closing sink, stalls), then over
# a real loopback connection (delays, drops and duplicates, reordering, slices, resets).
#
# Waits are for events (a flush, a reset, a read) or, to show that a cancelled write never
# happens, for a loop timer due after it (loop_passes): no sleeping and hoping.
from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from cyncsim.replay.chaos import (
    ChaosConfig,
    ChaosPolicy,
    Direction,
    Emission,
    ResetSpec,
    SlicingSpec,
    StallSpec,
)
from cyncsim.replay.framer import PacketFramer
from cyncsim.replay.protocol import IdPacket, PacketType
from cyncsim.simulator.chaos import ChaosWriter, wait_stall
from tests.support import assert_no_other_tasks, eventually, loop_passes

FROM = Direction.FROM_DEVICE


def pkt(i: int, size: int = 16) -> bytes:
    return (i.to_bytes(4, "big") * (size // 4 + 1))[:size]


# --- on a fake sink ----------------------------------------------------------------------------


class FakeSink:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        assert not self.closing
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closing


class ScriptedPolicy(ChaosPolicy):
    """Returns the given emissions packet by packet (to test the writer on its own)."""

    def __init__(self, script: list[list[Emission]]) -> None:
        super().__init__(ChaosConfig(), 0)
        self.script = script

    def on_packet(self, direction: Direction | str, data: bytes, now: float) -> list[Emission]:
        super().on_packet(direction, data, now)
        return self.script.pop(0)


async def test_writer_keeps_a_sliced_packet_whole_and_same_time_order() -> None:
    sink = FakeSink()
    policy = ScriptedPolicy(
        [
            [Emission(1, 0.0, (b"a1", b"a2", b"a3"), 0.03)],
            [Emission(2, 0.01, (b"b",))],  # due while a is being sliced: waits for it
            *[[Emission(3 + i, 0.08, (bytes([65 + i]),))] for i in range(10)],
        ]
    )
    writer = ChaosWriter(sink, policy)
    for i in range(12):
        writer.write_packet(b"x%d" % i)
    assert writer.pending == 12
    await writer.flush()
    assert sink.writes == [b"a1", b"a2", b"a3", b"b", *[bytes([65 + i]) for i in range(10)]]
    assert writer.pending == 0


async def test_writer_close_cancels_everything() -> None:
    sink = FakeSink()
    writer = ChaosWriter(sink, ChaosPolicy(ChaosConfig(latency_ms=30), 1))
    ems = [em for i in range(3) for em in writer.write_packet(pkt(i))]
    last_due = asyncio.get_running_loop().time() + max(em.delay_s + em.span_s for em in ems)
    writer.close()
    writer.close()
    assert writer.pending == 0 and writer.abandoned == 3
    await writer.flush()  # returns at once
    await loop_passes(last_due)  # every cancelled write would have been made by now
    assert sink.writes == []
    assert writer.write_packet(b"late") == [] and writer.discarded == 1
    await assert_no_other_tasks()


async def test_writer_resets_after_the_packet_is_out() -> None:
    sink, resets = FakeSink(), []
    cfg = ChaosConfig(latency_ms=20, reset=ResetSpec(after_packet=2, direction=FROM))
    writer = ChaosWriter(
        sink, ChaosPolicy(cfg, 1), on_reset=lambda: resets.append(len(sink.writes))
    )
    for i in (1, 2, 3):
        writer.write_packet(pkt(i))
    await writer.flush()
    assert sink.writes == [pkt(1), pkt(2)] and resets == [2]
    assert writer.was_reset and writer.closed and writer.abandoned == 1


async def test_writer_resets_at_a_time_without_traffic() -> None:
    loop = asyncio.get_running_loop()
    resets: list[float] = []
    policy = ChaosPolicy(ChaosConfig(reset=ResetSpec(at_s=0.05)), 1, t0=loop.time())
    writer = ChaosWriter(FakeSink(), policy, on_reset=lambda: resets.append(loop.time()))
    await eventually(lambda: bool(resets), what="the timed reset")
    assert len(resets) == 1 and resets[0] >= policy.t0 + 0.05 and writer.was_reset


async def test_writer_stops_when_the_sink_closes() -> None:
    sink = FakeSink()
    writer = ChaosWriter(sink, ChaosPolicy(ChaosConfig(latency_ms=10), 1))
    writer.write_packet(b"a")
    writer.write_packet(b"b")
    sink.closing = True
    await writer.flush()
    assert sink.writes == [] and writer.closed and writer.abandoned == 2


async def test_wait_stall_sleeps_until_the_end() -> None:
    loop = asyncio.get_running_loop()
    policy = ChaosPolicy(ChaosConfig(stall=StallSpec(duration_s=0.1, at_s=0.02)), 1, t0=loop.time())
    assert await wait_stall(policy) == 0.0
    await eventually(lambda: policy.stall_until(loop.time()) is not None, what="the stall")
    assert await wait_stall(policy) > 0.0
    assert loop.time() >= policy.t0 + 0.12 and policy.stall_until(loop.time()) is None


# --- over a real loopback connection -----------------------------------------------------------


class Receiver:
    def __init__(self) -> None:
        self.reads: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        self.data = bytearray()
        self.chunks: list[bytes] = []
        self.reset = False
        self.done = asyncio.Event()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        try:
            while data := await reader.read(65536):
                self.chunks.append(data)
                self.data += data
                self.reads.put_nowait((loop.time(), data))
        except ConnectionResetError:
            self.reset = True
        finally:
            writer.close()
            self.done.set()


@contextlib.asynccontextmanager
async def loopback() -> AsyncIterator[tuple[asyncio.StreamWriter, Receiver]]:
    rec = Receiver()
    server = await asyncio.start_server(rec.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        yield writer, rec
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        await asyncio.wait_for(rec.done.wait(), 5)
        server.close()
        await server.wait_closed()


async def test_loopback_delay_is_applied() -> None:
    loop = asyncio.get_running_loop()
    async with loopback() as (sock, rec):
        writer = ChaosWriter(sock, ChaosPolicy(ChaosConfig(latency_ms=60), 1))
        for i in range(3):
            sent = loop.time()
            writer.write_packet(pkt(i))
            arrived, data = await asyncio.wait_for(rec.reads.get(), 5)
            assert data == pkt(i)
            assert 0.060 <= arrived - sent < 2.0


async def test_loopback_drops_and_duplicates() -> None:
    async with loopback() as (sock, rec):
        cfg = ChaosConfig(drop_pattern=(2, 4), duplicate_rate=1.0)
        writer = ChaosWriter(sock, ChaosPolicy(cfg, 1))
        for i in range(1, 6):
            writer.write_packet(pkt(i))
        await writer.flush()
    assert bytes(rec.data) == b"".join(pkt(i) * 2 for i in (1, 3, 5))


async def test_loopback_reorder() -> None:
    async with loopback() as (sock, rec):
        cfg = ChaosConfig(reorder_rate=0.3, reorder_delay_ms=80)
        writer = ChaosWriter(sock, ChaosPolicy(cfg, 12))
        ems = [(em.delay_s, i, em.data) for i in range(10) for em in writer.write_packet(pkt(i))]
        await writer.flush()
    expected = [data for _, _, data in sorted(ems)]
    assert expected != [pkt(i) for i in range(10)]  # this seed does reorder something
    assert bytes(rec.data) == b"".join(expected)


async def test_loopback_slices_arrive_as_separate_writes() -> None:
    packet = IdPacket(
        PacketType.STATUS, device_id=b"\x64\x57\xe7\xf2", payload=bytes(range(24))
    ).encode()
    cfg = ChaosConfig(slicing=SlicingSpec(rate=1.0, max_pieces=4, delay_ms=40))
    async with loopback() as (sock, rec):
        writer = ChaosWriter(sock, ChaosPolicy(cfg, 3))
        (em,) = writer.write_packet(packet)
        await writer.flush()
    assert len(em.chunks) >= 2 and rec.chunks == list(em.chunks)
    assert [p.encode() for p in PacketFramer(strict=True).feed(bytes(rec.data))] == [packet]


async def test_loopback_reset_ends_the_connection_abruptly() -> None:
    async with loopback() as (sock, rec):
        cfg = ChaosConfig(latency_ms=10, reset=ResetSpec(after_packet=2))
        writer = ChaosWriter(sock, ChaosPolicy(cfg, 1))
        for i in (1, 2, 3):
            writer.write_packet(pkt(i))
        await asyncio.wait_for(rec.done.wait(), 5)
        assert writer.was_reset and rec.reset
    assert pkt(3) not in bytes(rec.data)
