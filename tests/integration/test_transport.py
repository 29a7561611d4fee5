# ReliableTransport over real loopback sockets against tests.support.FakeDevice.
#
# Strategy: every test runs a fake device on 127.0.0.1 port 0 (listen or dial mode, plain or
# TLS) and drives the controller side through its public API; assertions check both the
# controller's Result values and the bytes the fake actually received.  Waits are bounded
# (``eventually``), never timing assertions.
from __future__ import annotations

import asyncio
import datetime
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest

from cyncsim.replay.errors import CyncError, HandshakeError, PacketDecodeError
from cyncsim.replay.payloads import (
    LightStateCommand,
    PowerCommand,
    build_command,
    build_data_ack,
    build_hello,
    build_status,
    decode_command,
    decode_time_reply,
)
from cyncsim.replay.protocol import FramedPacket, FrameKind, IdPacket, PacketType, exchange_key
from cyncsim.simulator.transport import ConnState, ReliableTransport, Result
from tests.support import AUTH, DEV, FakeDevice, eventually, self_signed_cert

FAST: dict[str, Any] = {
    "ack_timeout_seconds": 2.0,
    "backoff_base": 0.01,
    "backoff_max": 0.05,
    "handshake_timeout_seconds": 5.0,
    "reconnect_timeout_seconds": 10.0,
    "seed": 7,
}
STATUS_43 = build_status(DEV, []).encode()  # the empty 12-byte 0x43

Pair = tuple[ReliableTransport, FakeDevice]
MakePair = Callable[..., Awaitable[Pair]]


@pytest.fixture
async def make_pair() -> AsyncIterator[MakePair]:
    """Factory: a listening fake device and a transport connected (and handshaken) to it."""
    made: list[Pair] = []

    async def factory(fake: FakeDevice | None = None, *, handshake: bool = True, **kw: Any) -> Pair:
        fake = fake or FakeDevice()
        await fake.listen()
        t = ReliableTransport(port=fake.port, **{**FAST, **kw})
        made.append((t, fake))
        await t.connect()
        if handshake:
            await t.handshake()
            await eventually(lambda: bool(fake.of_type(PacketType.HELLO_ACK)))
        return t, fake

    yield factory
    for t, fake in reversed(made):
        await t.close()
        await fake.close()


def key_of(pkt: Any) -> bytes:
    """The exchange key of a packet (bytes 5-11): device id + message id."""
    return exchange_key(pkt.encode())


# ------------------------------------------------------------------------------ handshake
async def test_handshake_answers_hello(make_pair: MakePair) -> None:
    t, fake = await make_pair()
    assert t.device_id == DEV
    assert t.auth_code == AUTH.decode()
    assert t.state is ConnState.CONNECTED
    await eventually(lambda: bool(fake.of_type(PacketType.HELLO_ACK)))
    assert [p.encode() for p in fake.received] == [bytes.fromhex("28 00 00 00 02 00 00")]
    assert (await t.handshake()).device_id == DEV  # again: no second 0x28
    assert (await t.send_toggle_command(1, True)).success
    assert [p.type for p in fake.received] == [PacketType.HELLO_ACK, PacketType.DATA]


async def test_handshake_with_control_exchange(make_pair: MakePair) -> None:
    t, fake = await make_pair(handshake=False)
    hello = await t.handshake(send_control=True)
    assert hello.device_id == DEV
    (a3,) = fake.of_type(PacketType.CONTROL)
    assert isinstance(a3, IdPacket) and a3.device_id == DEV and a3.msg_id[2] == 0
    assert [p.type for p in fake.received] == [PacketType.HELLO_ACK, PacketType.CONTROL]


def _hello_with(index: int, value: int) -> bytes:
    data = bytearray(build_hello(DEV, AUTH).encode())
    data[index] = value
    return bytes(data)


@pytest.mark.parametrize(
    ("first_bytes", "reason"),
    [
        (_hello_with(11, 0x0F), "malformed_hello"),  # auth length byte is not 16
        (build_hello(DEV, b"zzzzzzzzzzzzzzzz").encode(), "malformed_hello"),  # not hex
        (bytes.fromhex("23 00 00 00 05 03 64 57 e7 f2"), "malformed_hello"),  # truncated
        (FakeDevice().report(5, True).encode(), "unexpected_packet"),  # 0x83 instead of 0x23
        (b"", "timeout"),  # no hello at all
    ],
    ids=["auth-length", "auth-not-hex", "truncated", "wrong-packet", "silence"],
)
async def test_handshake_rejects_bad_hello(
    make_pair: MakePair, first_bytes: bytes, reason: str
) -> None:
    t, fake = await make_pair(FakeDevice(hello=first_bytes), handshake=False)
    with pytest.raises(HandshakeError) as err:
        await t.handshake(timeout=0.3)
    assert err.value.reason == reason
    assert fake.of_type(PacketType.HELLO_ACK) == []  # nothing was accepted


async def test_hello_after_tolerated_status_and_close_during_handshake(
    make_pair: MakePair,
) -> None:
    # A 0x43 before the 0x23 is legal (PROTOCOL.md 4.1): it is acked and delivered.
    hello = build_hello(DEV, AUTH).encode()
    t, _ = await make_pair(FakeDevice(hello=STATUS_43 + hello), handshake=False)
    await t.handshake()
    assert (await t.recv_reliable(timeout=5)).type == PacketType.STATUS
    # A device that hangs up before its hello: HandshakeError "closed".
    t2, fake2 = await make_pair(FakeDevice(hello=b""), handshake=False)
    waiting = asyncio.create_task(t2.handshake(timeout=5))
    await eventually(lambda: fake2.connections == 1)
    await fake2.drop_connection()
    with pytest.raises(HandshakeError) as err:
        await waiting
    assert err.value.reason == "closed"


# ------------------------------------------------------------------------------- commands
async def test_toggle_acked_with_latency_and_result(make_pair: MakePair) -> None:
    t, fake = await make_pair()
    res = await t.send_toggle_command(0x42, True, wait_result=True)
    assert res.success and res.reason == "acked" and res.retry_count == 0
    assert res.ack_latency_s is not None and 0 < res.ack_latency_s <= res.latency_s
    (cmd,) = fake.commands
    assert cmd.device_id == DEV and cmd.msg_id == b"\x00\x01\x00"  # own counter, byte 11 = 0
    assert cmd.frame is not None
    assert decode_command(cmd.frame) == PowerCommand(cmd.frame.seq_byte, 0x42, True)
    assert res.ack is not None and res.ack.type == PacketType.DATA_ACK
    assert key_of(res.ack) == key_of(cmd)
    assert isinstance(res.result, FramedPacket) and res.result.frame is not None
    assert res.result.frame.kind == FrameKind.RESULT and res.result.frame.opcode == 0xD0
    assert res.result.frame.seq_byte == cmd.frame.seq_byte
    # The device's 0x83 status about the new state arrives through recv and is acked.
    report = await t.recv_reliable(timeout=5)
    assert report.type == PacketType.REPORT
    await eventually(lambda: bool(fake.of_type(PacketType.REPORT_ACK)))
    # Groups: 0x8000 + n; a 4-byte device id with target= works too.
    res2 = await t.send_toggle_command(DEV, False, target=t.group(4))
    assert res2.success
    assert fake.commands[1].frame is not None
    assert decode_command(fake.commands[1].frame) == PowerCommand(
        fake.commands[1].frame.seq_byte, 0x8004, False
    )
    assert fake.commands[1].msg_id == b"\x00\x02\x00"
    # without the result, the exchange ends at the ack
    assert res2.ack_latency_s == res2.latency_s > 0


async def test_light_state_encodings(make_pair: MakePair) -> None:
    t, fake = await make_pair()
    assert (await t.send_light_state(0xCE, rgb=(255, 0, 16))).success
    assert (await t.send_light_state(0xCE, brightness=100)).success
    assert (await t.send_light_state(0xCE, color_temp=58)).success
    decoded = [decode_command(c.frame) for c in fake.commands if c.frame is not None]
    assert all(isinstance(d, LightStateCommand) and d.target == 0xCE for d in decoded)
    light = [d for d in decoded if isinstance(d, LightStateCommand)]
    assert [(d.brightness, d.color_temp, d.rgb) for d in light] == [
        (0xFF, 0xFE, (255, 0, 16)),
        (100, 0xFF, (0xFF, 0xFF, 0xFF)),
        (0xFF, 58, (0xFF, 0xFF, 0xFF)),
    ]
    with pytest.raises(ValueError):
        await t.send_light_state(1, color_temp=10, rgb=(1, 2, 3))
    with pytest.raises(ValueError):
        await t.send_light_state(1, brightness=101)


async def test_retries_until_acked(make_pair: MakePair) -> None:
    t, fake = await make_pair(FakeDevice(drop_first=2), ack_timeout_seconds=0.4)
    res = await t.send_toggle_command(7, True)
    assert res.success and res.retry_count == 2
    assert len(fake.commands) == 3
    # Retransmissions are the same bytes: same message id and inner sequence.
    assert len({c.encode() for c in fake.commands}) == 1
    assert len(fake.executed) == 1
    assert t.stats.retransmissions == 2 and t.stats.transmissions == 3


async def test_timeout_after_max_retries(make_pair: MakePair) -> None:
    t, fake = await make_pair(FakeDevice(ack=False), ack_timeout_seconds=0.05, max_retries=3)
    res = await t.send_toggle_command(7, True)
    assert (res.success, res.reason, res.retry_count) == (False, "timeout", 3)
    assert res.ack is None
    assert len(fake.commands) == 4
    assert t.internal_sizes()["pending"] == 0


async def test_late_ack_is_ignored(make_pair: MakePair) -> None:
    t, fake = await make_pair(FakeDevice(ack_delay=0.3), ack_timeout_seconds=0.05, max_retries=0)
    res = await t.send_toggle_command(7, True)
    assert (res.reason, res.retry_count) == ("timeout", 0)
    await eventually(lambda: t.stats.unmatched_acks == 1)  # the late 0x7B came and was ignored
    fake.ack_delay = 0.0
    res2 = await t.send_toggle_command(8, True)
    assert res2.success and res2.ack is not None
    assert key_of(res2.ack) == key_of(fake.commands[-1])


async def test_duplicate_acks_do_not_complete_twice(make_pair: MakePair) -> None:
    t, fake = await make_pair(FakeDevice(duplicate_acks=True))
    first = await t.send_toggle_command(1, True)
    second = await t.send_toggle_command(2, True)
    assert first.success and second.success
    assert second.ack is not None and key_of(second.ack) == key_of(fake.commands[1])
    await eventually(lambda: t.stats.duplicate_acks + t.stats.unmatched_acks == 2)
    assert t.stats.acked == 2
    # A stale duplicate of an old 0x7B must not complete a newer command.
    fake.ack = False
    task = asyncio.create_task(t.send_toggle_command(3, True))
    await eventually(lambda: len(fake.commands) == 3)
    await fake.send(build_data_ack(fake.commands[0]))
    await eventually(lambda: t.stats.unmatched_acks + t.stats.duplicate_acks == 3)
    assert not task.done()
    await fake.send(build_data_ack(fake.commands[2]))
    third = await task
    assert third.success and third.ack is not None
    assert key_of(third.ack) == key_of(fake.commands[2])


async def test_concurrent_commands_matched_out_of_order(make_pair: MakePair) -> None:
    t, fake = await make_pair(FakeDevice(reorder_batch=50), ack_timeout_seconds=10.0)
    results = await asyncio.gather(
        *(t.send_toggle_command(node, node % 2 == 0, wait_result=True) for node in range(1, 51))
    )
    sent = {c.frame.data[5] if c.frame else -1: c for c in fake.commands}  # node id low byte
    assert len(fake.commands) == 50 and len({key_of(c) for c in fake.commands}) == 50
    # The fake answered in a shuffled order, not the order it received.
    assert list(fake.executed) != [key_of(c) for c in fake.commands]
    for node, res in zip(range(1, 51), results, strict=True):
        cmd = sent[node]
        assert res.success and res.ack is not None and key_of(res.ack) == key_of(cmd)
        assert isinstance(res.result, FramedPacket) and res.result.frame is not None
        assert cmd.frame is not None and res.result.frame.seq_byte == cmd.frame.seq_byte
    assert t.internal_sizes()["pending"] == 0 and t.internal_sizes()["result_waiters"] == 0


async def test_backpressure_and_id_in_use(make_pair: MakePair) -> None:
    t, _ = await make_pair(FakeDevice(ack=False), ack_timeout_seconds=0.1, max_retries=0,
                           max_pending=2)  # fmt: skip
    results = await asyncio.gather(*(t.send_toggle_command(n, True) for n in (1, 2, 3)))
    assert sorted(r.reason for r in results) == ["backpressure", "timeout", "timeout"]
    assert t.stats.backpressure == 1
    packet = build_command(DEV, b"\x12\x34\x00", PowerCommand(9, 1, True))
    both = await asyncio.gather(t.send_reliable(packet), t.send_reliable(packet))
    assert sorted(r.reason for r in both) == ["id_in_use", "timeout"]
    with pytest.raises(ValueError):
        await t.send_reliable(build_status(DEV, []))


async def test_bounded_state_after_many_commands(make_pair: MakePair) -> None:
    t, _ = await make_pair(max_pending=100, dedup_window=64, recv_queue_size=32)
    tasks_before = len(asyncio.all_tasks())
    for batch in range(10):
        results = await asyncio.gather(
            *(t.send_toggle_command(n, True, wait_result=n % 2 == 0) for n in range(100))
        )
        assert all(r.success for r in results), batch
    await eventually(lambda: t.stats.reports == 1000)
    sizes = t.internal_sizes()
    waiting = ("pending", "result_waiters", "ping_waiters", "inbox_waiters")
    assert [sizes[k] for k in waiting] == [0, 0, 0, 0]
    assert sizes["dedup"] == 64 and sizes["inbox"] == 32
    # 1000 reports + 500 f9 results nobody waited for went to the 32-slot inbox.
    assert t.stats.recv_dropped == 1500 - 32
    assert len(asyncio.all_tasks()) == tasks_before
    assert t.stats.acked == 1000 and t.stats.results == 500


# -------------------------------------------------------------------------- device input
async def test_reports_acked_with_echo_and_deduplicated(make_pair: MakePair) -> None:
    t, fake = await make_pair()
    report = fake.report(0x2C, True, msg_counter=0x0102)
    await fake.send(report.encode() + report.encode() + STATUS_43)
    got = await t.recv_reliable(timeout=5)
    assert got.encode() == report.encode()
    assert (await t.recv_reliable(timeout=5)).type == PacketType.STATUS  # duplicate skipped
    await eventually(lambda: len(fake.received) >= 4)
    acks = [p.encode() for p in fake.of_type(PacketType.REPORT_ACK)]
    assert acks == [bytes.fromhex("88 00 00 00 03 01 02 00")] * 2  # echoes bytes 9-11, twice
    assert [p.encode() for p in fake.of_type(PacketType.STATUS_ACK)] == [
        bytes.fromhex("48 00 00 00 03 01 01 00")
    ]
    assert t.stats.duplicate_reports == 1


async def test_bad_checksum_raises_and_connection_survives(make_pair: MakePair) -> None:
    t, fake = await make_pair()
    bad = bytearray(fake.report(0x2C, True, msg_counter=9).encode())
    bad[-2] ^= 0xFF  # the inner checksum byte
    await fake.send(bytes(bad) + STATUS_43)
    with pytest.raises(PacketDecodeError) as err:
        await t.recv_reliable(timeout=5)
    assert err.value.reason == "invalid_checksum" and err.value.data == bytes(bad)
    assert (await t.recv_reliable(timeout=5)).type == PacketType.STATUS
    # The report was still acked (real firmware sends stale checksums, PROTOCOL.md 7.2).
    await eventually(lambda: len(fake.of_type(PacketType.REPORT_ACK)) == 1)
    assert (await t.send_toggle_command(3, True)).success


async def test_non_cync_bytes_raise_and_connection_survives(make_pair: MakePair) -> None:
    t, fake = await make_pair()
    await fake.send(bytes.fromhex("11 fa db 13 00") + STATUS_43)
    with pytest.raises(PacketDecodeError) as err:
        await t.recv_reliable(timeout=5)
    assert err.value.reason == "not_cync" and err.value.data == bytes.fromhex("11 fa db 13 00")
    assert (await t.recv_reliable(timeout=5)).type == PacketType.STATUS
    with pytest.raises(TimeoutError):
        await t.recv_reliable(timeout=0.01)


@pytest.fixture
def utc_minus_6(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Local time zone UTC-6 (the devices' zone in the captures), restored afterwards."""
    monkeypatch.setenv("TZ", "CST+6")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


async def test_ping_time_and_heartbeat(make_pair: MakePair, utc_minus_6: None) -> None:
    # 2025-11-06 08:20:40 UTC: the instant of the real-cloud 0xC8 in PROTOCOL.md section 12.
    now = datetime.datetime(2025, 11, 6, 8, 20, 40, tzinfo=datetime.UTC).timestamp()
    t, fake = await make_pair(clock=lambda: now)
    missed = await t.send_heartbeat(timeout=0.01)
    assert (missed.success, missed.reason) == (False, "timeout")
    beat = asyncio.create_task(t.send_heartbeat(timeout=5))
    await eventually(lambda: t.internal_sizes()["ping_waiters"] == 1)
    await fake.send(bytes.fromhex("d3 00 00 00 00") + bytes.fromhex("c3 00 00 00 01 0c"))
    res = await beat
    assert res.success and res.reason == "ping_answered"
    assert res.result is not None and res.result.type == PacketType.PING
    await eventually(lambda: len(fake.received) >= 3)
    assert fake.received[1].encode() == bytes.fromhex("d8 00 00 00 00")
    assert fake.received[2].encode() == bytes.fromhex(
        "c8 00 00 00 0b 0d 07 e9 0b 06 05 02 14 28 fd a8"
    )
    reply = decode_time_reply(fake.received[2])
    assert reply is not None and (reply.weekday, reply.utc_offset_hhmm) == (5, -600)  # Thursday
    assert t.stats.pings_answered == 1 and t.stats.time_replies == 1


# ----------------------------------------------------------------- connection management
async def test_not_connected_and_close_twice(make_pair: MakePair) -> None:
    t = ReliableTransport(port=1, **FAST)
    assert await t.send_toggle_command(1, True) == Result(False, "not_connected")
    assert (await t.send_light_state(1, brightness=5)).reason == "not_connected"
    with pytest.raises(HandshakeError) as hs:
        await t.handshake()
    assert hs.value.reason == "not_connected"
    with pytest.raises(CyncError) as rc:
        await t.recv_reliable()
    assert rc.value.reason == "not_connected"
    await t.close()
    t2, fake = await make_pair(FakeDevice(ack=False))
    pending = asyncio.create_task(t2.send_toggle_command(1, True))
    await eventually(lambda: len(fake.commands) == 1)
    await t2.close()
    assert (await pending).reason == "closed"
    await t2.close()  # safe twice
    assert t2.state is ConnState.CLOSED
    assert (await t2.send_toggle_command(1, True)).reason == "not_connected"
    with pytest.raises(CyncError) as closed:
        await t2.recv_reliable(timeout=1)
    assert closed.value.reason == "closed"


async def test_connect_failure_is_a_cync_error() -> None:
    with socket.socket() as sock:  # a port that was free a moment ago and has no listener
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with ReliableTransport(port=port, **FAST) as t:
        with pytest.raises(CyncError) as err:
            await t.connect()
        assert err.value.reason == "connect_failed"
        assert t.state is ConnState.DISCONNECTED


async def test_reconnect_after_device_closes(make_pair: MakePair) -> None:
    t, fake = await make_pair()
    await fake.drop_connection()
    await eventually(lambda: len(fake.of_type(PacketType.HELLO_ACK)) == 2)  # re-handshaken
    await t.wait_connected(5)
    assert fake.connections == 2
    assert (t.conn_mgr.reconnects, t.conn_mgr.last_reason) == (1, "connection_lost")
    assert (await t.send_toggle_command(5, True)).success


async def test_commands_while_reconnecting(make_pair: MakePair) -> None:
    t, fake = await make_pair(FakeDevice(ack=False))
    in_flight = asyncio.create_task(t.send_toggle_command(1, True))
    await eventually(lambda: len(fake.commands) == 1)
    fake.hello_gate = asyncio.Event()  # the next connection waits before its hello
    await fake.drop_connection()
    assert (await in_flight).reason == "connection_lost"
    await eventually(lambda: fake.connections == 2)
    assert t.state is ConnState.RECONNECTING
    assert await t.send_toggle_command(2, True) == Result(False, "reconnecting")
    packet = build_command(DEV, b"\x00\x09\x00", PowerCommand(1, 1, True))
    assert (await t.send_reliable(packet)).reason == "reconnecting"
    fake.ack = True
    fake.hello_gate.set()
    await t.wait_connected(5)
    assert (await t.send_toggle_command(2, True)).success


async def test_close_while_reconnecting_drops_the_half_open_connection(
    make_pair: MakePair,
) -> None:
    t, fake = await make_pair()
    fake.hello_gate = asyncio.Event()
    await fake.drop_connection()
    await eventually(lambda: fake.connections == 2 and t.state is ConnState.RECONNECTING)
    await t.close()
    assert t.state is ConnState.CLOSED
    fake.hello_gate.set()  # the fake now sends its hello and reads: it must see the close
    await eventually(lambda: not fake.connected)
    assert len(fake.of_type(PacketType.HELLO_ACK)) == 1


async def test_manual_reconnect_without_auto_reconnect(make_pair: MakePair) -> None:
    t, fake = await make_pair(auto_reconnect=False)
    await fake.drop_connection()
    await eventually(lambda: t.state is ConnState.DISCONNECTED)
    assert (await t.send_toggle_command(1, True)).reason == "not_connected"
    assert await t.conn_mgr.reconnect("manual")
    assert t.state is ConnState.CONNECTED and t.conn_mgr.last_reason == "manual"
    assert (await t.send_toggle_command(1, True)).success


async def test_serve_mode_with_dialling_device() -> None:
    async with ReliableTransport(**FAST) as t, FakeDevice() as fake:
        await t.serve()
        assert t.port > 0 and t.state is ConnState.LISTENING
        assert (await t.send_toggle_command(1, True)).reason == "not_connected"
        await fake.dial(t.port)
        await t.wait_connected(5)
        await t.handshake()
        assert (await t.send_toggle_command(0x10, True)).success
        assert len(fake.of_type(PacketType.HELLO_ACK)) == 1
        # The device hangs up and dials again: the transport handshakes the new connection.
        await fake.drop_connection()
        await eventually(lambda: t.state is ConnState.RECONNECTING)
        await fake.dial(t.port)
        await t.wait_connected(5)
        assert len(fake.of_type(PacketType.HELLO_ACK)) == 2
        assert t.conn_mgr.reconnects == 1
        assert (await t.send_toggle_command(0x10, False)).success


# --------------------------------------------------------------------------------- TLS
@pytest.fixture(scope="module")
def tls_contexts(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server, client) contexts for a self-signed RSA certificate for 127.0.0.1."""
    san = "subjectAltName=IP:127.0.0.1,DNS:localhost"
    cert, key = self_signed_cert(tmp_path_factory.mktemp("tls"), "localhost", "-addext", san)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert, key)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.load_verify_locations(cert)
    return server, client


async def test_tls_serve_mode(tls_contexts: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    server_ctx, client_ctx = tls_contexts
    async with ReliableTransport(tls=server_ctx, **FAST) as t, FakeDevice(tls=client_ctx) as fake:
        await t.serve()
        await fake.dial(t.port)
        await t.wait_connected(5)
        link = t.conn_mgr.link
        assert link is not None and link.transport is not None
        assert link.transport.get_extra_info("ssl_object") is not None
        await t.handshake()
        assert (await t.send_toggle_command(0x20, True, wait_result=True)).success


async def test_tls_connect_mode(
    make_pair: MakePair, tls_contexts: tuple[ssl.SSLContext, ssl.SSLContext]
) -> None:
    server_ctx, client_ctx = tls_contexts
    t, fake = await make_pair(FakeDevice(tls=server_ctx), tls=client_ctx)
    assert t.device_id == DEV
    assert (await t.send_toggle_command(0x21, False)).success
    await fake.drop_connection()  # reconnects over TLS too
    await eventually(lambda: len(fake.of_type(PacketType.HELLO_ACK)) == 2)
    await t.wait_connected(5)
    assert (await t.send_toggle_command(0x21, True)).success
