# Fleets: many simulated devices, in this process (CyncFleet) or over worker processes
# (FleetWorkers).
#
# Modules: _members (who each device is: identities drawn from one seed, source addresses),
# _device (a fleet's device and the mesh relay between bridges), _fleet (CyncFleet: start,
# dial and stop many devices with a concurrency bound), _workers (FleetWorkers: shares of one
# fleet in spawned processes); they import one another in that order only.  Their stats are
# replay.stats.RunStats.
from __future__ import annotations

from cyncsim.simulator.fleet._device import RELAY_DELAY_S, RELAY_WINDOW_S, FleetDevice
from cyncsim.simulator.fleet._fleet import CyncFleet, raise_fd_limit
from cyncsim.simulator.fleet._members import (
    MESH_NODES,
    FleetMember,
    Identities,
    format_address,
    generate_members,
    loopback_address,
)
from cyncsim.simulator.fleet._workers import FleetWorkers, worker_record_path

__all__ = [
    "MESH_NODES",
    "RELAY_DELAY_S",
    "RELAY_WINDOW_S",
    "CyncFleet",
    "FleetDevice",
    "FleetMember",
    "FleetWorkers",
    "Identities",
    "format_address",
    "generate_members",
    "loopback_address",
    "raise_fd_limit",
    "worker_record_path",
]
