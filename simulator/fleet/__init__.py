# Fleets: many simulated devices, in this process (CyncFleet), over worker processes
# (FleetWorkers) or over Ray actors on one machine or many (RayFleet).
#
# Modules: _members (who each device is: identities drawn from one seed, source addresses),
# _device (a fleet's device and the mesh relay between bridges), _fleet (CyncFleet: start,
# dial and stop many devices with a concurrency bound), _workers (FleetWorkers: shares of one
# fleet in spawned processes), _placement (shards on mesh boundaries, source address pools),
# _ray_shard (ShardActor: one shard inside a Ray actor), _ray (RayFleet: the Ray driver);
# they import one another in that order only.  ray itself is imported only when a RayFleet
# starts (the optional extra cyncsim[ray]).  Their stats are replay.stats.RunStats.
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
from cyncsim.simulator.fleet._placement import (
    assign_source_hosts,
    ephemeral_ports,
    mesh_shards,
    shard_record_path,
)
from cyncsim.simulator.fleet._ray import POOL_RESOURCE, RayFleet, ray_fleet_row
from cyncsim.simulator.fleet._ray_shard import ShardActor
from cyncsim.simulator.fleet._workers import FleetWorkers, worker_record_path

__all__ = [
    "MESH_NODES",
    "POOL_RESOURCE",
    "RELAY_DELAY_S",
    "RELAY_WINDOW_S",
    "CyncFleet",
    "FleetDevice",
    "FleetMember",
    "FleetWorkers",
    "Identities",
    "RayFleet",
    "ShardActor",
    "assign_source_hosts",
    "ephemeral_ports",
    "format_address",
    "generate_members",
    "loopback_address",
    "mesh_shards",
    "raise_fd_limit",
    "ray_fleet_row",
    "shard_record_path",
    "worker_record_path",
]
