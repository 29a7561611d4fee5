# Chaos, the pure part: the config (what may go wrong, validated, from code or a TOML/JSON file)
# and the seeded policy that decides, packet by packet, what to emit and when.
#
# Strategy: config.py declares the settings (their field rules are in _fields.py), policy.py
# makes every decision from named seed streams and the caller's clock value, so a run is
# reproducible from one seed and testable without a loop.  The asyncio side that applies the
# decisions to a real stream (ChaosWriter, abort_connection, wait_stall) is
# cyncsim.simulator.chaos.
from cyncsim.replay.chaos._fields import Direction
from cyncsim.replay.chaos.config import (
    BurstLoss,
    ChaosConfig,
    PacketFaults,
    PartitionSpec,
    ResetSpec,
    SlicingSpec,
    StallSpec,
)
from cyncsim.replay.chaos.policy import ChaosPolicy, Emission, FaultEvent

__all__ = [
    "BurstLoss",
    "ChaosConfig",
    "ChaosPolicy",
    "Direction",
    "Emission",
    "FaultEvent",
    "PacketFaults",
    "PartitionSpec",
    "ResetSpec",
    "SlicingSpec",
    "StallSpec",
]
