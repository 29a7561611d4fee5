# Full protocol flows between ReliableTransport (controller side) and simulated devices,
# over real loopback sockets, through the pytest plugin's fixtures.
from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from cyncsim.replay.engine import DeviceState
from cyncsim.replay.errors import HandshakeError, PacketDecodeError
from cyncsim.replay.payloads import PowerCommand, build_command, build_report, decode_status_report
from cyncsim.replay.payloads import StatusReport as Status
from cyncsim.replay.protocol import FramedPacket, InnerFrame, PacketType
from cyncsim.simulator.device import CyncDeviceSimulator
from cyncsim.simulator.transport import ConnState, ReliableTransport
from tests.support import eventually, marker_answered

FleetFactory = Callable[..., Awaitable[list[CyncDeviceSimulator]]]


async def test_handshake(
    cync_device: CyncDeviceSimulator, cync_transport: ReliableTransport
) -> None:
    assert cync_transport.device_id == cync_device.device_id
    assert cync_transport.auth_code == cync_device.auth_code.decode("ascii")
    assert cync_transport.state is ConnState.CONNECTED


async def test_toggle_changes_state(
    cync_device: CyncDeviceSimulator, cync_transport: ReliableTransport
) -> None:
    node = cync_device.engine.mesh_node
    before = cync_device.state.toggle_count
    on = await cync_transport.send_toggle_command(node, True, wait_result=True)
    assert on.success and on.reason == "acked" and on.retry_count == 0
    assert on.result is not None and isinstance(on.result, FramedPacket)
    assert on.result.frame is not None and on.result.frame.kind == 0xF9
    assert cync_device.state.on is True
    off = await cync_transport.send_toggle_command(node, False)
    assert off.success
    await eventually(lambda: cync_device.state.on is False)
    assert cync_device.state.toggle_count == before + 2


async def test_light_state(
    cync_device: CyncDeviceSimulator, cync_transport: ReliableTransport
) -> None:
    node = cync_device.engine.mesh_node
    r = await cync_transport.send_light_state(node, brightness=37, wait_result=True)
    assert r.success
    assert cync_device.state.brightness == 37
    r = await cync_transport.send_light_state(node, rgb=(10, 20, 30), wait_result=True)
    assert r.success
    assert cync_device.state.color_temp == 0xFE and cync_device.state.rgb == (10, 20, 30)
    assert cync_device.state.brightness == 37  # 0xff: unchanged


async def test_status_broadcast_received_as_0x83(
    cync_device: CyncDeviceSimulator, cync_transport: ReliableTransport
) -> None:
    cync_device.set_state(on=True, brightness=64)
    while True:
        pkt = await cync_transport.recv_reliable(timeout=5)
        status = decode_status_report(pkt)
        if status is not None and status.brightness == 64:
            break
    assert (
        pkt.type == PacketType.REPORT
        and status.on
        and status.node_id == cync_device.engine.mesh_node
    )
    assert cync_device.send_status_broadcast()
    again = decode_status_report(await cync_transport.recv_reliable(timeout=5))
    assert again is not None and again.brightness == 64
    assert cync_transport.stats.reports >= 2


async def test_heartbeat(
    cync_device: CyncDeviceSimulator, cync_transport: ReliableTransport
) -> None:
    # The device pings after the learned idle time (about 21 s, times the plugin's scale).
    r = await cync_transport.send_heartbeat(timeout=10)
    assert r.success and r.result is not None and r.result.type == PacketType.PING


async def test_invalid_checksum_raises_and_connection_survives(
    cync_device: CyncDeviceSimulator, cync_transport: ReliableTransport
) -> None:
    report = build_report(
        cync_device.device_id, b"\x00\x42\x00", Status(7, True, 50, 50, (255, 255, 255))
    )
    assert report.frame is not None
    good = report.frame.expected_checksum()
    report.frame.checksum = (good + 1) & 0xFF
    assert cync_device.send_raw(report.encode())
    with pytest.raises(PacketDecodeError) as err:
        while True:
            await cync_transport.recv_reliable(timeout=5)
    assert err.value.reason == "invalid_checksum"
    r = await cync_transport.send_toggle_command(cync_device.engine.mesh_node, True)
    assert r.success


async def test_malformed_handshake_raises(unused_tcp_port: int) -> None:
    async def fake(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # A 0x23 whose auth-length byte says 15: not a valid hello.
        writer.write(bytes.fromhex("230000001a036457e7f2000f") + b"0" * 16 + b"\x00\x00\x3c")
        await writer.drain()
        with contextlib.suppress(ConnectionError):
            await reader.read()  # hold the connection open until the controller gives up
        writer.close()

    server = await asyncio.start_server(fake, "127.0.0.1", unused_tcp_port)
    transport = ReliableTransport("127.0.0.1", unused_tcp_port, handshake_timeout_seconds=2)
    try:
        await transport.connect()
        with pytest.raises(HandshakeError):
            await transport.handshake()
    finally:
        await transport.close()
        server.close()
        await server.wait_closed()


async def test_commands_during_reconnection(
    cync_device: CyncDeviceSimulator, cync_test_seed: int
) -> None:
    transport = ReliableTransport(
        "127.0.0.1", cync_device.port, seed=cync_test_seed, backoff_base=0.05, backoff_max=0.2
    )
    before = await transport.send_toggle_command(1, True)
    assert not before.success and before.reason == "not_connected"
    await transport.connect()
    await transport.handshake()
    node = cync_device.engine.mesh_node
    try:
        await cync_device.stop()
        await eventually(lambda: transport.state is not ConnState.CONNECTED)
        during = await transport.send_toggle_command(node, True)
        assert not during.success and during.reason in ("reconnecting", "not_connected")
        await cync_device.start()  # the partition heals: same port
        await eventually(lambda: transport.state is ConnState.CONNECTED, within=10)
        after = await transport.send_toggle_command(node, True)
        assert after.success and cync_device.state.on
    finally:
        await transport.close()


async def test_checksum_mismatch_is_acked_but_not_applied(
    cync_device: CyncDeviceSimulator, cync_transport: ReliableTransport
) -> None:
    node = cync_device.engine.mesh_node
    cmd = build_command(cync_device.device_id, b"\x01\x00\x00", PowerCommand(0x30, node, True))
    assert cmd.frame is not None
    frame = cmd.frame
    cmd.frame = InnerFrame(frame.seq, frame.kind, frame.opcode, frame.data, checksum=0)
    count = cync_device.state.toggle_count
    r = await cync_transport.send_reliable(cmd)
    assert r.success and r.reason == "acked"  # devices ack every 0x73 ...
    await marker_answered(cync_transport, node)
    assert cync_device.state.toggle_count == count + 1  # the marker only: the bad one ...
    assert not cync_device.state.on  # ... was not applied


async def test_timeout_after_max_retries(
    cync_fleet: FleetFactory, cync_chaos: Callable[..., object], cync_test_seed: int
) -> None:
    # Everything after the controller's first packet (its 0x28) is lost on the way to the device.
    chaos = cync_chaos(to_device={"drop_pattern": list(range(2, 200))})
    (dev,) = await cync_fleet(1, chaos_config=chaos)
    transport = ReliableTransport(
        "127.0.0.1", dev.port, seed=cync_test_seed, max_retries=3,
        ack_timeout_seconds=0.1, backoff_base=0.01, backoff_max=0.02,
    )  # fmt: skip
    try:
        await transport.connect()
        await transport.handshake()
        r = await transport.send_toggle_command(dev.engine.mesh_node, True)
        assert not r.success and r.reason == "timeout" and r.retry_count == 3
        assert transport.stats.transmissions == 4 and not dev.state.on
    finally:
        await transport.close()


async def test_group_command_reaches_members_only(
    cync_fleet: FleetFactory, cync_test_seed: int
) -> None:
    # Three bridges in group 5, one not; the controller sends the group command to each
    # connection, as cync-lan does (CYNC_CMD_BROADCASTS).
    devices = await cync_fleet(3, groups=[5])
    (outsider,) = await cync_fleet(1, groups=[6])
    for dev in [*devices, outsider]:
        async with ReliableTransport("127.0.0.1", dev.port, seed=cync_test_seed) as t:
            await t.connect()
            await t.handshake()
            r = await t.send_toggle_command(ReliableTransport.group(5), True)
            assert r.success
            if dev is outsider:  # had it applied the command, it would have before the marker
                await marker_answered(t, dev.engine.mesh_node)
    await eventually(lambda: all(d.state.on for d in devices))
    assert not outsider.state.on and outsider.state.toggle_count == 1  # the marker only


async def test_burst_of_commands_queues(cync_model: Any, cync_test_seed: int) -> None:
    # Real bridges work through commands one by one: acks of a burst come later and later.
    # A fixed device seed: the learned service times are heavy-tailed, and one long first
    # draw would hide the growth this test is about.
    dev = CyncDeviceSimulator(b"\x0b\x0b\x0b\x0b", model=cync_model, seed=11, time_scale=1.0)
    async with (
        dev,
        ReliableTransport("127.0.0.1", dev.port, seed=cync_test_seed, ack_timeout_seconds=20) as t,
    ):
        await t.connect()
        await t.handshake()
        node = dev.engine.mesh_node
        results = await asyncio.gather(*(t.send_light_state(node, brightness=i) for i in range(20)))
    assert all(r.success and r.retry_count == 0 for r in results)
    lat = [r.latency_s for r in results]
    # FIFO: each ack leaves after the one before, so latencies grow along the burst.
    assert all(b >= a - 0.005 for a, b in itertools.pairwise(lat)), lat
    assert lat[-1] > 2 * lat[0] and lat[-1] - lat[0] > 0.1, lat


async def test_duplicate_command_applied_once(
    cync_device: CyncDeviceSimulator, cync_transport: ReliableTransport
) -> None:
    node = cync_device.engine.mesh_node
    cmd = build_command(cync_device.device_id, b"\x02\x00\x00", PowerCommand(0x40, node, True))
    count = cync_device.state.toggle_count
    assert (await cync_transport.send_reliable(cmd)).success
    # The same message id and sequence again (a retransmission): acked, not applied again.
    again = build_command(cync_device.device_id, b"\x02\x00\x00", PowerCommand(0x40, node, True))
    assert await cync_transport.send_raw(again)
    await marker_answered(cync_transport, node)
    assert cync_device.state.toggle_count == count + 2  # the command once, and the marker
    assert cync_device.engine.stats["duplicates"] == 1


def test_device_state_defaults() -> None:
    st = DeviceState()
    assert (st.on, st.online, st.toggle_count) == (False, True, 0)
