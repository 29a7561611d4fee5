# Dial mode: the simulated device connects out to a controller, plain and over TLS.
#
# A minimal controller (tests.support.MiniController: a TCP server answering 0x23 with 0x28
# and 0xD3 with 0xD8) sees the connect sequence, heartbeats at the learned cadence scaled by
# 0.01, and the device dialling again about 0.25 s (scaled) after the controller closes the
# link.
# TLS uses a self-signed RSA certificate made with the openssl CLI and a server limited to
# the four static-RSA suites of old firmware (PROTOCOL.md section 1), which proves the device
# offers them.  Also: source address binding, the cloud simulator, and connect failures.
from __future__ import annotations

import asyncio
import itertools
import ssl
from pathlib import Path

import pytest

from cyncsim.replay.engine import ModelView
from cyncsim.replay.errors import CyncError
from cyncsim.replay.payloads import PowerCommand, decode_status_report, firmware_version
from cyncsim.replay.protocol import decode_packet, exchange_key
from cyncsim.simulator._base import default_model
from cyncsim.simulator.cloud import CyncCloudSimulator
from cyncsim.simulator.device import CyncDeviceSimulator, DeviceState
from tests.support import (
    AUTH,
    DEV,
    MiniController,
    assert_no_other_tasks,
    request_of,
    self_signed_cert,
    socket_fds,
)

SCALE = 0.01
STATIC_RSA = {"AES256-SHA256", "AES256-SHA", "AES128-SHA256", "AES128-SHA"}


def _learned(attr: str) -> tuple[float, float]:
    view = ModelView.get(default_model(), "device")
    dist = getattr(view, attr)
    return dist.values[0] * SCALE, dist.values[-1] * SCALE


async def _dial_session(server_tls: ssl.SSLContext | None, **connect: object) -> None:
    ctl = MiniController(server_tls)
    port = await ctl.start()
    before = socket_fds()
    sim = CyncDeviceSimulator(DEV, mesh_node=206, seed=4, time_scale=SCALE,
                              firmware_version="11158")  # fmt: skip
    try:
        await sim.connect("127.0.0.1", port, **connect)  # type: ignore[arg-type]
        await ctl.wait_links(1)
        first = ctl.links[0]
        await first.wait_count("0xd3", 3, timeout=10)
        # Connect sequence: hello first (id + auth), firmware reports after the 0x28.
        assert request_of(first.packets[0][1]) == "0x23"
        hello = first.packets[0][1]
        assert hello[6:10] == DEV and hello[12:28] == AUTH
        fw = [firmware_version(decode_packet(p)) for p in first.of("0x83:fa:00")]
        assert fw == [("network", "0"), ("device", "11158")]
        # Heartbeats: each 0xD3 after the learned idle time (scaled), never before it.
        lo, hi = _learned("heartbeat")
        # (timed from the device's previous packet: its own 0x43s are traffic too)
        gaps = [
            b[0] - a[0] for a, b in itertools.pairwise(first.packets) if request_of(b[1]) == "0xd3"
        ]
        assert all(lo - 0.002 <= g <= hi + 0.25 for g in gaps), (gaps, lo, hi)
        # The controller closes: the device dials again about 0.25 s (scaled) later, as real
        # devices did after cync-controller's close (PROTOCOL.md 10.3), well before its
        # learned hello retry (15 s) would come round.
        closed_at = asyncio.get_running_loop().time()
        await first.close()
        await ctl.wait_links(2)
        second = ctl.links[1]
        (hello2,) = await second.wait_count("0x23", 1)
        assert hello2 == hello
        rlo, _ = _learned("reconnect")
        assert 0.25 * SCALE - 0.002 <= second.packets[0][0] - closed_at < rlo
        fw2 = await second.wait_count("0x83:fa:00", 2)
        assert [p[9:12] for p in fw2] == [b"\0\3\0", b"\0\4\0"]  # counters survive
        assert sim.connections == 2
    finally:
        await sim.stop()
        await ctl.close()
    await assert_no_other_tasks()
    assert socket_fds() <= before


async def test_dial_connect_heartbeat_reconnect() -> None:
    await _dial_session(None)


@pytest.fixture(scope="module")
def rsa_cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return self_signed_cert(tmp_path_factory.mktemp("tls"), "cm.gelighting.com")


def _static_rsa_server(cert: tuple[Path, Path]) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(":".join(sorted(STATIC_RSA)))
    ctx.load_cert_chain(str(cert[0]), str(cert[1]))
    return ctx


async def test_dial_over_tls_with_static_rsa_suites(rsa_cert: tuple[Path, Path]) -> None:
    ctl_ctx = _static_rsa_server(rsa_cert)
    # the same session over TLS; the server accepts nothing but the static-RSA suites
    ctl = MiniController(ctl_ctx)
    port = await ctl.start()
    sim = CyncDeviceSimulator(DEV, mesh_node=206, seed=4, time_scale=SCALE)
    try:
        await sim.connect("127.0.0.1", port, tls=True)
        await ctl.wait_links(1)
        await ctl.links[0].wait_count("0xd3", 1, timeout=10)
        assert ctl.ciphers and set(ctl.ciphers) <= STATIC_RSA
    finally:
        await sim.stop()
        await ctl.close()
    await _dial_session(ctl_ctx, tls=True)


async def test_tls_certificate_checked_only_when_asked(rsa_cert: tuple[Path, Path]) -> None:
    ctl = MiniController(_static_rsa_server(rsa_cert))
    port = await ctl.start()
    sim = CyncDeviceSimulator(DEV, mesh_node=206, seed=4, time_scale=SCALE)
    try:
        with pytest.raises(CyncError, match="no connection") as err:
            await sim.connect("127.0.0.1", port, tls=True, verify=True, timeout=5.0)
        assert err.value.reason == "connect_failed"
        assert isinstance(sim.last_error, ssl.SSLError) and not ctl.peers[1:]
    finally:
        await sim.stop()
        await ctl.close()
    await assert_no_other_tasks()


async def test_source_address_binding() -> None:
    ctl = MiniController()
    port = await ctl.start()
    sims = [CyncDeviceSimulator(bytes((0x10, 0, 0, i)), seed=i, time_scale=SCALE,
                                source_host=f"127.0.0.{i + 2}") for i in range(2)]  # fmt: skip
    try:
        for s in sims:
            await s.connect("127.0.0.1", port)
        await ctl.wait_links(2)
        assert sorted(ctl.peers) == ["127.0.0.2", "127.0.0.3"]
    finally:
        for s in sims:
            await s.stop()
        await ctl.close()
    with pytest.raises(CyncError, match="loopback"):
        CyncDeviceSimulator(DEV, source_host="10.0.0.2")


async def test_connect_failure_is_reported() -> None:
    from cyncsim.simulator.ports import find_free_port

    sim = CyncDeviceSimulator(DEV, seed=1, time_scale=SCALE)
    with pytest.raises(CyncError) as err:
        await sim.connect("127.0.0.1", find_free_port(), timeout=0.3)
    assert err.value.reason == "connect_failed" and sim.connect_failures >= 1
    await sim.stop()
    await assert_no_other_tasks()


async def test_device_dials_the_cloud_simulator() -> None:
    async with CyncCloudSimulator(seed=9, time_scale=SCALE) as cloud:
        sim = CyncDeviceSimulator(DEV, mesh_node=206, seed=4, time_scale=SCALE,
                                  state=DeviceState(on=True, brightness=80))  # fmt: skip
        try:
            await sim.connect("127.0.0.1", cloud.port)
            await sim.wait_handshaken()
            sent = cloud.send_command(PowerCommand(0, 206, False), DEV)
            await sim.wait_for(lambda: sim.state.on is False)
            await cloud.wait_for(lambda: any(
                (st := decode_status_report(p)) is not None and not st.on
                for p in cloud.received(0x83)))  # fmt: skip
            link = cloud.link_for(DEV)
            assert link is not None and link.device_id == DEV
            acks = [p for _, s, p in cloud.seen if s == "device" and p.type == 0x7B]
            assert acks and exchange_key(acks[0].encode()) == exchange_key(sent)
            assert link.engine.stats.get("acks") == 1  # consumed: no 0x78 for a known ack
            await cloud.wait_for(lambda: len(cloud.received(0xD3)) >= 2, timeout=5)
            answered = {p.type for _, s, p in cloud.seen if s == "cloud"}
            assert {0x28, 0xD8, 0x88} <= answered and 0x78 not in answered
        finally:
            await sim.stop()
    await assert_no_other_tasks()
