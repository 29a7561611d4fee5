# Fleets: identities in the captured shape and reproducible from the seed, 50 listening and
# 50 dialling devices against the cloud simulator (distinct ids and source addresses,
# heartbeats at the scaled learned cadence), mesh relay, one recording for the fleet, clean
# stops, and a fleet split over two worker processes.  Waits are bounded; nothing asserts
# wall-clock speed.
from __future__ import annotations

import asyncio
import ipaddress
import itertools
import re
from pathlib import Path

import pytest

from cyncsim.replay.capture import read_capture
from cyncsim.replay.chaos import ChaosConfig
from cyncsim.replay.engine import ModelView
from cyncsim.replay.errors import CyncError
from cyncsim.replay.payloads import PowerCommand, decode_status_report
from cyncsim.replay.protocol import decode_packet, exchange_key
from cyncsim.simulator._base import default_model
from cyncsim.simulator.cloud import CyncCloudSimulator
from cyncsim.simulator.fleet import (
    CyncFleet,
    FleetMember,
    FleetWorkers,
    generate_members,
    loopback_address,
    worker_record_path,
)
from cyncsim.simulator.transport import ReliableTransport
from tests.support import assert_no_other_tasks, socket_fds

SCALE = 0.02
AUTH_SHAPE = re.compile(rb"1e07d[0-9a-f]{11}")


async def relays_settled(fleet: CyncFleet, cloud: CyncCloudSimulator,
                         sent: list[tuple[bytes, bytes]]) -> None:  # fmt: skip
    """Wait until every (bridge id, command) in ``sent`` is acked and every relay is delivered.

    A bridge passes a command on over the mesh when it reads it, before its 0x7B leaves, so
    once the cloud has each ack, every relay the commands cause is scheduled; then the meshes'
    pending relays run out.  Nothing can still be on its way after that: no sleep needed.
    """

    def acked(device_id: bytes, command: bytes) -> bool:
        link = cloud.link_for(device_id)
        key = exchange_key(command)
        return link is not None and any(
            p.type == 0x7B and exchange_key(p.encode()) == key for _, s, p in link.packets
        )

    await cloud.wait_for(lambda: all(acked(d, c) for d, c in sent))
    await cloud.wait_for(lambda: not any(m.pending for m in fleet.meshes.values()))


def _heartbeat_bounds() -> tuple[float, float]:
    dist = ModelView.get(default_model(), "device").heartbeat
    assert dist is not None
    return dist.values[0] * SCALE, dist.values[-1] * SCALE


def _check_shape(members: list[FleetMember]) -> None:
    ids = [m.device_id for m in members]
    assert len(set(ids)) == len(ids) and all(len(i) == 4 for i in ids)
    assert all(AUTH_SHAPE.fullmatch(m.auth_code) for m in members)
    firsts = [d.device_id[0] for d in default_model().devices]
    assert all(min(firsts) <= i[0] <= max(firsts) for i in ids)
    by_mesh: dict[int, list[int]] = {}
    for m in members:
        by_mesh.setdefault(m.mesh, []).append(m.mesh_node)
    for nodes in by_mesh.values():
        assert len(set(nodes)) == len(nodes) and all(1 <= n <= 254 for n in nodes)


# ---------------------------------------------------------------------------- identities
def test_generated_identities_have_the_captured_shape_and_follow_the_seed() -> None:
    members = generate_members(600, seed=11, identities="generate")
    _check_shape(members)
    assert [m.mesh for m in members[::254]] == [0, 1, 2]  # 254 devices per mesh
    assert not any(m.captured for m in members)
    assert generate_members(600, seed=11, identities="generate") == members
    other = generate_members(600, seed=12, identities="generate")
    assert not {m.device_id for m in other} & {m.device_id for m in members}
    assert len({m.seed for m in members}) == 600  # each device its own seed
    hosts = [m.source_host for m in members]
    assert hosts[:2] == ["127.0.0.2", "127.0.0.3"] and len(set(hosts)) == 600
    small = generate_members(30, seed=11, identities="generate", mesh_size=10)
    assert [m.mesh for m in small] == [i // 10 for i in range(30)]
    _check_shape(small)


def test_model_identities_come_first_then_generated_ones() -> None:
    known = default_model().devices
    members = generate_members(len(known) + 40, seed=3, identities="model")
    _check_shape(members)
    head, tail = members[: len(known)], members[len(known) :]
    assert [m.device_id for m in head] == [d.device_id for d in known]
    assert [m.auth_code for m in head] == [d.auth_code for d in known]
    assert all(m.captured for m in head) and not any(m.captured for m in tail)
    for m, d in zip(head, known, strict=True):
        if d.mesh_node is not None:
            assert m.mesh_node == d.mesh_node  # captured nodes are all distinct
    assert generate_members(len(known) + 40, seed=3) == members


def test_loopback_addresses_walk_127_slash_8() -> None:
    assert [loopback_address(i) for i in (0, 1, 252, 253, 254)] == [
        "127.0.0.2", "127.0.0.3", "127.0.0.254", "127.0.1.1", "127.0.1.2",
    ]  # fmt: skip
    many = [loopback_address(i) for i in range(10_000)]
    assert len(set(many)) == 10_000 and "127.0.0.1" not in many
    for text in many[::97]:
        ip = ipaddress.ip_address(text)
        assert ip.is_loopback and text.split(".")[-1] not in ("0", "255")
    assert loopback_address(256 * 256 * 254 - 2) == "127.255.255.254"  # the last one
    assert loopback_address(256 * 256 * 254 - 1) == "127.0.0.2"  # then it wraps


def test_bad_fleet_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="at least one"):
        generate_members(0)
    with pytest.raises(ValueError, match="mesh_size"):
        generate_members(3, mesh_size=255)
    with pytest.raises(ValueError, match="2 addresses for 3"):
        generate_members(3, source_hosts=["127.0.0.5", "127.0.0.6"])
    with pytest.raises(CyncError, match="loopback"):
        generate_members(1, source_hosts=["10.1.1.1"])
    with pytest.raises(ValueError, match="exceed 65535"):
        CyncFleet(10, port=65530)


# ---------------------------------------------------------------------------- listen
async def test_listening_fleet_of_50() -> None:
    before = socket_fds()
    fleet = CyncFleet(50, seed=5, time_scale=SCALE)
    await fleet.start()
    try:
        ports = [d.port for d in fleet.devices]
        assert len(set(ports)) == 50 and all(ports)
        assert [line.split()[1] for line in fleet.lines()] == [
            m.device_id.hex() for m in fleet.members
        ]
        transports = [ReliableTransport(port=p, seed=i) for i, p in enumerate(ports)]
        await asyncio.gather(*(t.connect() for t in transports))
        hellos = await asyncio.gather(*(t.handshake(timeout=10) for t in transports))
        assert [(h.device_id, h.auth_code) for h in hellos] == [
            (m.device_id, m.auth_code) for m in fleet.members
        ]
        target = fleet.devices[7]
        r = await transports[7].send_toggle_command(
            target.member.mesh_node, not target.state.on, wait_result=True
        )
        assert r.success and target.state.toggle_count == 1
        await asyncio.gather(*(t.close() for t in transports))
        stats = fleet.stats()
        assert stats.devices == 50 and stats.connections == 50 and stats.packets_in >= 51
    finally:
        await fleet.stop()
        await fleet.stop()  # safe twice
    await assert_no_other_tasks()
    assert socket_fds() <= before


async def test_spread_listeners_each_on_their_own_address() -> None:
    async with CyncFleet(4, seed=2, time_scale=SCALE, spread=True, port=0) as fleet:
        hosts = [d.host for d in fleet.devices]
        assert hosts == [loopback_address(i) for i in range(4)]
        addr = fleet.lines()[2].split()[-1]
        assert addr == f"{hosts[2]}:{fleet.devices[2].port}"
        t = ReliableTransport(host=hosts[2], port=fleet.devices[2].port, seed=1)
        try:
            await t.connect()
            hello = await t.handshake(timeout=10)
            assert hello.device_id == fleet.members[2].device_id
        finally:
            await t.close()
        assert [d.connections for d in fleet.devices] == [0, 0, 1, 0]


# ---------------------------------------------------------------------------- dial
async def test_dialling_fleet_of_50_against_the_cloud_simulator() -> None:
    before = socket_fds()
    lo, hi = _heartbeat_bounds()
    async with CyncCloudSimulator(seed=2, time_scale=SCALE) as cloud:
        fleet = CyncFleet(50, seed=8, time_scale=SCALE, identities="generate")
        try:
            await fleet.connect("127.0.0.1", cloud.port)
            members = {m.device_id: m for m in fleet.members}

            def registered() -> bool:
                return {lk.device_id for lk in cloud.links if lk.open} == set(members)

            await cloud.wait_for(registered, timeout=10)
            links = [lk for lk in cloud.links if lk.open]
            assert len(links) == 50  # one connection each, from its own address
            assert {lk.conn.peer[0]: lk.device_id for lk in links} == {
                m.source_host: m.device_id for m in fleet.members
            }

            def pinged(n: int) -> bool:
                return all(sum(p.type == 0xD3 for _, _, p in lk.packets) >= n for lk in links)

            await cloud.wait_for(lambda: pinged(3), timeout=10)
            for lk in links:
                # A ping comes after the learned idle since the link's last traffic (the
                # device's own 0x43 status reports and the cloud's answers are traffic too).
                gaps = [
                    b[0] - a[0]
                    for a, b in itertools.pairwise(lk.packets)
                    if b[1] == "device" and b[2].type == 0xD3
                ]
                assert all(lo - 0.005 <= g <= hi + 0.5 for g in gaps), (gaps, lo, hi)
            # A command for node B sent to bridge A reaches B over the mesh, once.
            a, b = fleet.devices[0], fleet.devices[1]
            assert a.member.mesh == b.member.mesh
            want = not b.state.on
            sent = cloud.send_command(PowerCommand(0, b.member.mesh_node, want), a.device_id)
            await fleet.devices[1].wait_for(lambda: b.state.on is want)

            def reported() -> bool:
                link = cloud.link_for(b.device_id)
                return link is not None and any(
                    (st := decode_status_report(p)) is not None
                    and st.node_id == b.member.mesh_node
                    and st.on is want
                    for _, s, p in link.packets
                    if s == "device"
                )

            await cloud.wait_for(reported)
            await relays_settled(fleet, cloud, [(a.device_id, sent)])
            assert b.state.toggle_count == 1 and a.state.toggle_count == 0
            stats = fleet.stats()
            assert stats.connected == 50 and stats.connections == 50
            assert stats.packets_out >= 50 * 4 and stats.faults_total == 0
        finally:
            await fleet.stop()
            await fleet.stop()
        await cloud.wait_for(lambda: not any(lk.open for lk in cloud.links))
    await assert_no_other_tasks()
    assert socket_fds() <= before


async def test_relay_delivers_each_command_once_per_node() -> None:
    async with CyncCloudSimulator(seed=4, time_scale=SCALE) as cloud:
        fleet = CyncFleet(3, seed=1, time_scale=SCALE, identities="generate")
        try:
            await fleet.connect("127.0.0.1", cloud.port)
            await cloud.wait_for(lambda: sum(lk.open for lk in cloud.links) == 3)
            a, b, c = fleet.devices
            for dev in (a, b, c):
                await dev.wait_handshaken()
            command = PowerCommand(5, c.member.mesh_node, True)
            sent = [  # a controller sending to every bridge, same sequence
                (bridge.device_id, cloud.send_command(command, bridge.device_id))
                for bridge in (a, b, c)
            ]
            await c.wait_for(lambda: c.state.on)
            await relays_settled(fleet, cloud, sent)
            assert c.state.toggle_count == 1
            assert a.state.toggle_count == b.state.toggle_count == 0
        finally:
            await fleet.stop()


async def test_one_recording_for_the_whole_fleet(tmp_path: Path) -> None:
    path = tmp_path / "fleet.txt"
    async with CyncCloudSimulator(seed=4, time_scale=SCALE) as cloud:
        fleet = CyncFleet(
            4, seed=6, time_scale=SCALE, record=path, chaos_config=ChaosConfig(latency_ms=1.0)
        )
        try:
            await fleet.connect("127.0.0.1", cloud.port)
            await cloud.wait_for(lambda: len(cloud.received(0xD3)) >= 8, timeout=10)
        finally:
            await fleet.stop()
        stats = fleet.stats()
        assert stats.faults.get("delay", 0) >= stats.packets_out > 0
    result = read_capture(path)
    flows = [f for f in result.flows if f.packets]
    assert sorted(f.device_id for f in flows if f.device_id) == sorted(
        m.device_id for m in fleet.members
    )
    sent = sum(1 for f in flows for fp in f.packets if fp.sender == "device")
    assert sent == stats.packets_out


async def test_start_failure_names_the_device_and_stops_cleanly() -> None:
    holder = CyncFleet(1, seed=1, time_scale=SCALE)
    await holder.start()
    port = holder.devices[0].port
    fleet = CyncFleet(2, seed=2, time_scale=SCALE, port=port)  # device 0 collides
    try:
        with pytest.raises(CyncError, match=r"[12] of 2 devices failed to start") as err:
            await fleet.start()
        assert err.value.reason == "start_failed" and "already in use" in str(err.value)
        if str(err.value).startswith("fleet: 1 of 2"):  # port + 1 was free: it listens
            assert fleet.devices[1].running and fleet.devices[1].port == port + 1
    finally:
        await fleet.stop()
        await holder.stop()
    assert not any(d.running for d in (*fleet.devices, *holder.devices))
    await assert_no_other_tasks()


# ---------------------------------------------------------------------------- processes
async def test_fleet_split_over_two_worker_processes(tmp_path: Path) -> None:
    record = tmp_path / "w.pcapng"
    async with CyncCloudSimulator(seed=3, time_scale=SCALE) as cloud:
        workers = FleetWorkers(5, 2, seed=9, time_scale=SCALE, record=record)
        try:
            await workers.connect("127.0.0.1", cloud.port)
            lines = workers.lines()
            assert [line.split()[1] for line in lines] == [
                m.device_id.hex() for m in workers.members
            ]
            assert [len(s) for s in workers.shares] == [2, 3]
            await cloud.wait_for(
                lambda: (
                    {lk.device_id for lk in cloud.links if lk.open}
                    == {m.device_id for m in workers.members}
                ),
                timeout=20,
            )
            peers = {lk.conn.peer[0] for lk in cloud.links if lk.open}
            assert peers == {m.source_host for m in workers.members}
            live = await workers.refresh_stats()
            assert live.devices == 5 and live.connected == 5
        finally:
            await workers.stop()
            await workers.stop()
        stats = workers.stats()
        assert stats.devices == 5 and stats.connections == 5 and stats.packets_out >= 10
        assert [w.exitcode for w in workers.workers] == [0, 0]
        await cloud.wait_for(lambda: not any(lk.open for lk in cloud.links))
    for k in (0, 1):
        flows = [f for f in read_capture(worker_record_path(record, k)).flows if f.packets]
        assert len(flows) == len(workers.shares[k])
    got = {p.encode()[6:10] for p in cloud.received(0x23)}
    assert got == {m.device_id for m in workers.members}
    assert decode_packet(cloud.received(0x23)[0].encode()).type == 0x23


async def test_worker_errors_come_back_as_one_error() -> None:
    from cyncsim.simulator.ports import find_free_port

    workers = FleetWorkers(2, 2, seed=1, time_scale=SCALE)
    with pytest.raises(CyncError, match=r"fleet worker \d: fleet: 1 of 1 devices failed to "
                       r"connect") as err:  # fmt: skip
        await workers.connect("127.0.0.1", find_free_port(), timeout=0.3)
    assert err.value.reason == "connect_failed"
    assert all(w.exitcode == 2 for w in workers.workers)  # every worker stopped
    await workers.stop()  # safe after a failed start
    with pytest.raises(ValueError, match="workers=3"):
        FleetWorkers(2, 3)
