# Statistical chaos: 5,000 commands at 10% random loss.  Not part of the default run
# (marker chaos_probabilistic): run with `pytest -m chaos_probabilistic` or --cync-nightly.
#
# A command fails only when all of its max_retries + 1 transmissions are lost, so with loss
# rate p on the way to the device each command succeeds with probability 1 - p^(r+1), and
# the number of successes is binomial.  The test asserts the count is above the binomial
# lower bound at the 0.1% level (scipy), and that the loss itself was close to 10%.
from __future__ import annotations

import asyncio
from typing import Any

import pytest
from scipy.stats import binom

from cyncsim.replay.chaos import ChaosConfig, PacketFaults
from cyncsim.simulator.device import CyncDeviceSimulator
from cyncsim.simulator.transport import ReliableTransport

pytestmark = pytest.mark.chaos_probabilistic

COMMANDS = 5000
LOSS = 0.10
RETRIES = 3


async def test_5000_commands_at_10_percent_loss(cync_model: Any, cync_test_seed: int) -> None:
    chaos = ChaosConfig(to_device=PacketFaults(packet_loss_rate=LOSS))
    dev = CyncDeviceSimulator(
        b"\x51\x52\x53\x54", model=cync_model, seed=cync_test_seed, time_scale=0,
        chaos_config=chaos,
    )  # fmt: skip
    async with dev:
        t = ReliableTransport(
            "127.0.0.1", dev.port, seed=cync_test_seed, max_retries=RETRIES,
            ack_timeout_seconds=0.05, backoff_base=0.005, backoff_max=0.02, max_pending=512,
        )  # fmt: skip
        await t.connect()
        await t.handshake()
        node = dev.engine.mesh_node
        results = []
        for start in range(0, COMMANDS, 100):
            batch = [
                t.send_light_state(node, brightness=i % 101) for i in range(start, start + 100)
            ]
            results += await asyncio.gather(*batch)
        await t.close()
    successes = sum(r.success for r in results)
    p_success = 1 - LOSS ** (RETRIES + 1)
    lower = binom.ppf(0.001, COMMANDS, p_success)
    lost = sum(1 for e in dev.fault_log if e.kind == "drop")
    # The injected loss is itself binomial over all packets sent to the device (commands,
    # retransmissions and the controller's 0x88 acks of the device's reports).
    to_device = max(e.packet_no for e in dev.fault_log)
    print(
        f"\n{successes}/{COMMANDS} succeeded (binomial lower bound {lower:.0f} at p=0.001), "
        f"{t.stats.transmissions} transmissions ({t.stats.retransmissions} retransmissions), "
        f"{lost} of {to_device} packets to the device lost"
    )
    assert successes >= lower
    assert binom.ppf(0.0005, to_device, LOSS) <= lost <= binom.ppf(0.9995, to_device, LOSS)
    assert all(r.reason in ("acked", "timeout") for r in results)
    assert all(r.retry_count == RETRIES for r in results if not r.success)
