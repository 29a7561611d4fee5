# Deterministic chaos: every fault is patterned or seeded, so each run sees the same faults.
# The transport must get every command through (or fail exactly as configured).
from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from cyncsim.replay.chaos import ChaosConfig, PacketFaults
from cyncsim.simulator.device import CyncDeviceSimulator
from cyncsim.simulator.transport import ReliableTransport
from tests.support import marker_answered

pytestmark = pytest.mark.chaos

FleetFactory = Callable[..., Awaitable[list[CyncDeviceSimulator]]]
Connect = Callable[..., Awaitable[ReliableTransport]]


@pytest.fixture
async def connect(cync_test_seed: int) -> AsyncIterator[Connect]:
    opened: list[ReliableTransport] = []

    async def make(dev: CyncDeviceSimulator, **kwargs: Any) -> ReliableTransport:
        kwargs.setdefault("backoff_base", 0.02)
        kwargs.setdefault("backoff_max", 0.1)
        t = ReliableTransport("127.0.0.1", dev.port, seed=cync_test_seed, **kwargs)
        opened.append(t)
        await t.connect()
        await t.handshake()
        return t

    yield make
    for t in reversed(opened):
        await t.close()


def _faults(dev: CyncDeviceSimulator) -> list[tuple[Any, ...]]:
    return [
        (e.packet_no, e.direction, e.kind, repr(sorted(e.details.items()))) for e in dev.fault_log
    ]


async def test_20_percent_loss_by_pattern_all_commands_succeed(
    cync_fleet: FleetFactory, connect: Connect
) -> None:
    # Every fifth packet to the device is lost (packet 1 is the controller's 0x28).
    pattern = list(range(5, 2000, 5))
    chaos = ChaosConfig(to_device=_faults_spec(drop_pattern=pattern))
    (dev,) = await cync_fleet(1, chaos_config=chaos)
    t = await connect(dev, ack_timeout_seconds=0.15, max_retries=5)
    node = dev.engine.mesh_node
    results = [await t.send_toggle_command(node, i % 2 == 0) for i in range(100)]
    assert all(r.success for r in results)
    lost = [e for e in dev.fault_log if e.kind == "drop"]
    assert len(lost) >= 20
    # Lost commands were sent again (the other losses were the controller's 0x88 acks).
    assert 0 < t.stats.retransmissions <= len(lost)
    assert t.stats.transmissions == 100 + t.stats.retransmissions
    assert all(e.packet_no % 5 == 0 for e in lost)


async def test_500ms_latency(cync_fleet: FleetFactory, connect: Connect) -> None:
    chaos = ChaosConfig(to_device=_faults_spec(latency_ms=500))
    (dev,) = await cync_fleet(1, chaos_config=chaos)
    t = await connect(dev, ack_timeout_seconds=3.0, handshake_timeout_seconds=5)
    for on in (True, False, True):
        r = await t.send_toggle_command(dev.engine.mesh_node, on)
        assert r.success and r.retry_count == 0
        assert 0.5 <= r.latency_s <= 1.5, r.latency_s


async def test_50_percent_duplicates_applied_once(
    cync_fleet: FleetFactory, connect: Connect
) -> None:
    chaos = ChaosConfig(to_device=_faults_spec(duplicate_rate=0.5))
    (dev,) = await cync_fleet(1, chaos_config=chaos)
    t = await connect(dev)
    node = dev.engine.mesh_node
    before = dev.state.toggle_count
    for i in range(40):
        assert (await t.send_light_state(node, brightness=i + 1)).success
    await marker_answered(t, node)  # a copy is read right after its original: all are in now
    dups = [e for e in dev.fault_log if e.kind == "duplicate"]
    assert len(dups) >= 10  # the chaos really duplicated commands ...
    assert dev.state.toggle_count - before == 41  # ... and each was applied once (+ the marker)
    assert t.stats.duplicate_acks >= 1  # the controller saw the extra 0x7B and ignored it


async def test_30_percent_reorder_all_succeed(cync_fleet: FleetFactory, connect: Connect) -> None:
    spec = _faults_spec(reorder_rate=0.3, reorder_delay_ms=30)
    (dev,) = await cync_fleet(1, chaos_config=ChaosConfig(to_device=spec, from_device=spec))
    t = await connect(dev, ack_timeout_seconds=1.0)
    node = dev.engine.mesh_node
    results = await asyncio.gather(*(t.send_light_state(node, brightness=i) for i in range(50)))
    assert all(r.success for r in results)
    assert sum(1 for e in dev.fault_log if e.kind == "reorder") >= 10


async def test_partition_stop_fail_start_succeed(
    cync_fleet: FleetFactory, connect: Connect
) -> None:
    (dev,) = await cync_fleet(1)
    t = await connect(dev, ack_timeout_seconds=0.2, max_retries=1)
    node = dev.engine.mesh_node
    assert (await t.send_toggle_command(node, True)).success
    await dev.stop()
    failed = await t.send_toggle_command(node, False)
    assert not failed.success
    await dev.start()
    await t.wait_connected(10)
    ok = await t.send_toggle_command(node, False)
    assert ok.success and dev.state.on is False


async def test_partition_blackhole_window(cync_fleet: FleetFactory, connect: Connect) -> None:
    (dev,) = await cync_fleet(1, chaos_config=ChaosConfig.from_dict({"partition": {}}))
    t = await connect(dev, ack_timeout_seconds=0.1, max_retries=1)
    assert dev.chaos_policy is not None
    node = dev.engine.mesh_node
    loop = asyncio.get_running_loop()
    dev.chaos_policy.partition_start(loop.time())
    r = await t.send_toggle_command(node, True)
    assert not r.success and r.reason == "timeout"
    dev.chaos_policy.partition_end(loop.time())
    r = await t.send_toggle_command(node, True)
    assert r.success and dev.state.on


async def test_gilbert_elliott_burst_loss(cync_model: Any, connect: Connect) -> None:
    burst = {"burst": {"p": 0.1, "r": 0.4, "loss_good": 0.0, "loss_bad": 1.0}}
    dev = CyncDeviceSimulator(
        b"\x0c\x0c\x0c\x0c", model=cync_model, seed=12, time_scale=0,
        chaos_config=ChaosConfig.from_dict({"to_device": burst}),
    )  # fmt: skip
    async with dev:
        t = await connect(dev, ack_timeout_seconds=0.1, max_retries=20)
        node = dev.engine.mesh_node
        results = [await t.send_toggle_command(node, i % 2 == 0) for i in range(60)]
        await t.close()
    assert all(r.success for r in results), [(r.reason, r.retry_count) for r in results]
    lost = sorted(e.packet_no for e in dev.fault_log if e.kind == "burst_drop")
    runs, run = [], 1
    for a, b in itertools.pairwise(lost):
        if b == a + 1:
            run += 1
        else:
            runs.append(run)
            run = 1
    runs.append(run)
    assert len(lost) >= 5 and max(runs) >= 2  # losses come in bursts, not alone
    assert t.stats.retransmissions >= len(runs)


async def test_same_seed_same_faults(cync_model: Any, connect: Connect) -> None:
    spec = _faults_spec(packet_loss_rate=0.2, duplicate_rate=0.2)
    logs = []
    for seed in (7, 7, 8):
        # time_scale 0: no spontaneous traffic, so the packets (and their numbers) are the same
        # on every run and only the seed decides the faults.
        dev = CyncDeviceSimulator(
            b"\x11\x22\x33\x44", model=cync_model, seed=seed, time_scale=0,
            chaos_config=ChaosConfig(to_device=spec),
        )  # fmt: skip
        async with dev:
            t = await connect(dev, ack_timeout_seconds=0.1, max_retries=8)
            for i in range(30):
                assert (await t.send_light_state(dev.engine.mesh_node, brightness=i)).success
            await t.close()
            logs.append(_faults(dev))
    assert len(logs[0]) >= 5
    assert logs[0] == logs[1]  # one seed: identical fault sequence
    assert logs[0] != logs[2]  # another seed: other faults


def _faults_spec(**fields: Any) -> PacketFaults:
    return PacketFaults(**fields)
