# Chaos applied by the device simulator on real sockets, at whole-packet granularity: each
# fault happens as configured (drop_pattern, latency, duplicates, stall, reset, partition with
# stop/start), and two runs with one seed give identical fault logs.  Learned delays are off
# (time_scale=0) where the test measures a chaos delay, so only the fault shows.
from __future__ import annotations

import asyncio
from typing import Any

from cyncsim.replay.chaos import (
    ChaosConfig,
    Direction,
    PacketFaults,
    PartitionSpec,
    ResetSpec,
    SlicingSpec,
    StallSpec,
)
from cyncsim.replay.payloads import LightStateCommand, build_command
from cyncsim.replay.protocol import exchange_key
from cyncsim.simulator.device import CyncDeviceSimulator
from tests.support import (
    ACK_7B,
    DEV,
    HELLO_ACK,
    POWER_OFF,
    POWER_ON,
    MiniController,
    RawController,
    answered,
    assert_no_other_tasks,
    eventually,
    marker,
    socket_fds,
)

H = bytes.fromhex


def device(config: ChaosConfig | None, **kw: Any) -> CyncDeviceSimulator:
    args: dict[str, Any] = {"mesh_node": 206, "seed": 5, "time_scale": 0.0}
    args.update(kw)
    return CyncDeviceSimulator(DEV, chaos_config=config, **args)


def commands(n: int, first: int = 1) -> list[bytes]:
    return [build_command(DEV, bytes((0, i, 0)), LightStateCommand(i, 206, i % 101)).encode()
            for i in range(first, first + n)]  # fmt: skip


async def hello(sim: CyncDeviceSimulator) -> RawController:
    ctl = RawController()
    await ctl.connect(sim.port)
    await ctl.wait_count("0x23", 1)
    await ctl.send(HELLO_ACK)
    await sim.wait_handshaken()
    return ctl


async def test_drop_pattern_drops_exactly_those_packets() -> None:
    cfg = ChaosConfig(to_device=PacketFaults(drop_pattern=(3,)))
    async with device(cfg) as sim:
        ctl = await hello(sim)  # 0x28 = packet 1
        c2, c3, c4 = commands(3)
        await ctl.send(c2, c3, c4)
        acks = await ctl.wait_count("0x7b", 2)
        await answered(ctl, m := marker(1))  # packet 5: an ack for c3 would have come first
        assert [exchange_key(a) for a in ctl.of("0x7b")] == [exchange_key(c) for c in (c2, c4, m)]
        drops = [(e.packet_no, e.direction) for e in sim.fault_log if e.kind == "drop"]
        assert drops == [(3, Direction.TO_DEVICE)] and len(acks) == 2
        await ctl.close()


async def test_latency_delays_every_outgoing_packet() -> None:
    cfg = ChaosConfig(from_device=PacketFaults(latency_ms=80.0))
    async with device(cfg) as sim:
        ctl = await hello(sim)
        sent = await ctl.send(POWER_OFF)
        await ctl.wait_count("0x7b", 1)
        t, ack = ctl.timed("0x7b")[0]
        assert ack == ACK_7B and t - sent >= 0.08  # never earlier than asked
        delays = [e.details["delay_s"] for e in sim.fault_log if e.kind == "delay"]
        assert delays and all(abs(d - 0.08) < 1e-9 for d in delays)
        await ctl.close()


async def test_duplicates_both_directions() -> None:
    cfg = ChaosConfig(duplicate_rate=1.0)
    async with device(cfg) as sim:
        ctl = RawController()
        await ctl.connect(sim.port)
        hellos = await ctl.wait_count("0x23", 2)  # every device packet comes twice
        assert hellos[0] == hellos[1]
        await ctl.send(HELLO_ACK)
        await sim.wait_handshaken()
        await ctl.send(POWER_ON)  # delivered twice: acked twice (each sent twice), applied once
        await ctl.wait_count("0x7b", 4)
        await answered(ctl, marker(1))  # duplicated too: its copy is read right after it
        assert len(ctl.of("0x73:f9:d0")) == 2  # POWER_ON's one result, sent twice
        assert sim.state.toggle_count == 2 and sim.stats["duplicates"] == 2  # + the marker's
        kinds = {(e.direction, e.kind) for e in sim.fault_log}
        assert {(Direction.TO_DEVICE, "duplicate"), (Direction.FROM_DEVICE, "duplicate")} <= kinds
        await ctl.close()


async def test_stall_stops_reading_for_the_configured_time() -> None:
    cfg = ChaosConfig(stall=StallSpec(duration_s=0.3, after_packet=2))
    async with device(cfg) as sim:
        ctl = await hello(sim)
        await ctl.send(POWER_OFF)  # packet 2 starts the stall
        await ctl.wait_count("0x7b", 1)
        sent = await ctl.send(POWER_ON)
        await ctl.wait_count("0x7b", 2)
        stall = [e for e in sim.fault_log if e.kind == "stall"]
        assert len(stall) == 1
        assert ctl.timed("0x7b")[1][0] >= stall[0].details["until"] - 1e-3
        assert ctl.timed("0x7b")[1][0] - sent > 0.1
        await ctl.close()


async def test_reset_closes_abruptly_and_dial_mode_redials() -> None:
    cfg = ChaosConfig(reset=ResetSpec(after_packet=2, direction=Direction.TO_DEVICE))
    async with device(cfg) as sim:
        ctl = await hello(sim)
        await ctl.send(POWER_OFF)
        await asyncio.wait_for(ctl.eof.wait(), 5)
        assert [e.kind for e in sim.fault_log if e.kind == "reset"] == ["reset"]
        await sim.wait_for(lambda: not sim.connected)
        await ctl.close()
    ctl2 = MiniController()
    port = await ctl2.start()
    cfg = ChaosConfig(reset=ResetSpec(after_packet=3, direction=Direction.FROM_DEVICE))
    sim2 = device(cfg, time_scale=0.01)
    try:
        await sim2.connect("127.0.0.1", port)
        await ctl2.wait_links(2)  # reset after the third packet, then the device dials again
        assert sim2.connections >= 2
    finally:
        await sim2.stop()
        await ctl2.close()


async def test_partition_refuses_blackholes_and_heals_with_stop_start() -> None:
    before = socket_fds()
    cfg = ChaosConfig(partition=PartitionSpec(refuse_connections=True, blackhole=True))
    sim = device(cfg)
    await sim.start()
    ctl = await hello(sim)
    sim.partition(True)  # black-hole: the command vanishes
    await ctl.send(POWER_OFF)
    await eventually(lambda: any(e.kind == "partition_drop" for e in sim.fault_log))
    refused = RawController()  # ... and new connections are refused
    await refused.connect(sim.port)
    await asyncio.wait_for(refused.eof.wait(), 5)
    assert refused.packets == []
    await refused.close()
    sim.partition(False)
    m = marker(1)
    await answered(ctl, m)  # the device reads in order: POWER_OFF was read before it
    assert ctl.of("0x7b") == [ACK_7B[:5] + exchange_key(m)]  # the marker's only: POWER_OFF
    assert sim.state.toggle_count == 1  # was never acked nor applied, then or later
    await ctl.send(POWER_ON)
    await ctl.wait_count("0x7b", 2)
    kinds = [e.kind for e in sim.fault_log]
    assert "partition_drop" in kinds and kinds.count("partition_start") == 1
    port = sim.port
    await sim.stop()  # the link goes down ...
    await asyncio.wait_for(ctl.eof.wait(), 5)
    await ctl.close()
    try:
        await RawController().connect(port)
        raise AssertionError("a stopped device accepted a connection")
    except OSError:
        pass
    await sim.start()  # ... and heals: same port, state kept
    assert sim.port == port
    ctl = await hello(sim)
    await ctl.send(POWER_OFF)
    await ctl.wait_count("0x7b", 1)
    await ctl.close()
    await sim.stop()
    assert socket_fds() == before
    await assert_no_other_tasks()


async def _faults(seed: int) -> list[tuple[int, str, str, str]]:
    cfg = ChaosConfig(
        to_device=PacketFaults(packet_loss_rate=0.3, duplicate_rate=0.2, corruption_rate=0.1),
        from_device=PacketFaults(latency_ms=2.0, packet_loss_rate=0.2,
                                 duplicate_rate=0.2, slicing=SlicingSpec(rate=0.3)),
    )  # fmt: skip
    async with device(cfg, seed=seed) as sim:
        ctl = RawController()
        await ctl.connect(sim.port)
        for cmd in [HELLO_ACK, *commands(30)]:
            await ctl.send(cmd)
        policy = sim.chaos_policy
        assert policy is not None
        await sim.wait_for(lambda: policy.packets_seen(Direction.TO_DEVICE) == 31, timeout=10)
        await sim.wait_for(lambda: not any(c.pending for c in sim.open_connections))
        await ctl.close()
        log = list(sim.fault_log)
    # Times (delay_s, until) depend on when packets happened to arrive; the decisions do not.
    return [(e.packet_no, str(e.direction), e.kind,
             repr(sorted((k, v) for k, v in e.details.items() if k not in ("delay_s", "until"))))
            for e in sorted(log, key=lambda e: (str(e.direction), e.packet_no))]  # fmt: skip


async def test_same_seed_same_fault_sequence() -> None:
    first, second = await _faults(77), await _faults(77)
    assert first == second
    kinds = {k for _, _, k, _ in first}
    assert {"drop", "duplicate", "delay"} <= kinds
    assert await _faults(78) != first
