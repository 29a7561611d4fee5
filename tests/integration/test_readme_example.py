# The example the README shows for the pytest plugin: a controller under test (here the
# project's own ReliableTransport) against simulated devices, with and without chaos.
import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from cyncsim.replay.payloads import decode_status_report
from cyncsim.simulator.device import CyncDeviceSimulator
from cyncsim.simulator.transport import ReliableTransport


async def test_toggle_reaches_the_light(
    cync_device: CyncDeviceSimulator, cync_transport: ReliableTransport
) -> None:
    node = cync_device.engine.mesh_node
    result = await cync_transport.send_toggle_command(node, True)
    assert result.success and result.reason == "acked"
    assert cync_device.state.on
    while True:  # the device reports its new state in a 0x83
        report = decode_status_report(await cync_transport.recv_reliable(timeout=5))
        if report is not None and report.node_id == node:
            break
    assert report.on


async def test_commands_survive_20_percent_loss(
    cync_fleet: Callable[..., Awaitable[list[CyncDeviceSimulator]]],
    cync_chaos: Callable[..., Any],
    cync_test_seed: int,
) -> None:
    (light,) = await cync_fleet(1, chaos_config=cync_chaos(packet_loss_rate=0.2))
    async with ReliableTransport(
        "127.0.0.1", light.port, seed=cync_test_seed, ack_timeout_seconds=0.2, max_retries=6
    ) as controller:
        await controller.connect()
        await controller.handshake()
        results = await asyncio.gather(
            *(controller.send_light_state(light.engine.mesh_node, brightness=b) for b in range(20))
        )
    assert all(r.success for r in results)
