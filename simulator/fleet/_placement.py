# Where a fleet's devices run: shards cut on mesh boundaries, source addresses from pools.
#
# Strategy: pure arithmetic over the member list generate_members drew once, so every engine
# (processes, Ray shards) sees the same devices in the same order.  A mesh never spans two
# shards (relaying stays inside one process).  Pools are CIDRs of addresses that exist on a
# node: share k dials from pool k % P, the devices of one pool numbered in fleet order over its
# shares; one address serves at most the ephemeral port range's worth of devices (about 28,000
# connections from one source address), checked up front.
# Private module: import the public names from cyncsim.simulator.fleet.
from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from cyncsim.replay.errors import CyncError
from cyncsim.simulator.fleet._members import FleetMember

__all__ = ["assign_source_hosts", "ephemeral_ports", "mesh_shards", "shard_record_path"]


def shard_record_path(path: str | Path, number: int) -> Path:
    """Where shard ``number`` records: FILE.shard<number>.SUFFIX next to FILE (on its node)."""
    p = Path(path)
    return p.with_name(f"{p.stem}.shard{number}{p.suffix}")


def mesh_shards(members: Sequence[FleetMember], shards: int) -> list[list[FleetMember]]:
    """``members`` cut into ``shards`` contiguous shares on mesh boundaries, meshes spread
    evenly (a partial last mesh counts as one)."""
    meshes: list[list[FleetMember]] = []
    for m in members:
        if not meshes or meshes[-1][0].mesh != m.mesh:
            meshes.append([])
        meshes[-1].append(m)
    if not 1 <= shards <= len(meshes):
        raise ValueError(
            f"shards={shards} must be 1..{len(meshes)}: the fleet has {len(meshes)} "
            "mesh(es) and a mesh never spans two shards (a smaller mesh size gives more)"
        )
    bounds = [len(meshes) * k // shards for k in range(shards + 1)]
    return [[m for mesh in meshes[bounds[k] : bounds[k + 1]] for m in mesh] for k in range(shards)]


def ephemeral_ports() -> int:
    """How many local ports one source address has for outgoing connections (Linux)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range", encoding="ascii") as f:
            lo, hi = (int(x) for x in f.read().split())
        return hi - lo + 1
    except (OSError, ValueError):
        return 28_232  # Linux's default range 32768..60999


def _pool(cidr: str, allow_remote: bool) -> tuple[int, int, int | None]:
    """(first address, how many, the one to skip) of a pool CIDR."""
    try:
        net = ipaddress.ip_network(cidr, strict=False)
    except ValueError:
        raise CyncError(
            f"source pool {cidr!r} is not a CIDR like 127.0.0.0/16", reason="usage"
        ) from None
    if not net.is_loopback and not allow_remote:
        raise CyncError(
            f"source pool {cidr} is not loopback: pools of real addresses need the opt-in "
            "for more than one machine (--allow-remote-controller)",
            reason="usage",
        )
    first, count = int(net.network_address), net.num_addresses
    if net.prefixlen < net.max_prefixlen - 1:  # no network and broadcast address
        first, count = first + 1, count - 2
    skip = ipaddress.ip_address("127.0.0.1") if net.version == 4 else ipaddress.ip_address("::1")
    taken = int(skip) if skip in net else None  # left to a controller on loopback
    return first, count - (taken is not None), taken


def assign_source_hosts(
    shares: Sequence[Sequence[FleetMember]],
    pools: Sequence[str],
    *,
    allow_remote: bool = False,
    ports: int | None = None,
) -> list[list[FleetMember]]:
    """Shares whose members dial from pool addresses: share k from pool k % len(pools), the
    devices of one pool numbered in fleet order over its shares.  A pool smaller than its
    devices is reused round robin, at most ``ports`` (ephemeral_ports()) devices per address."""
    limit = ports if ports is not None else ephemeral_ports()
    parsed = [_pool(c, allow_remote) for c in pools]
    counts = [0] * len(pools)
    for k, share in enumerate(shares):
        counts[k % len(pools)] += len(share)
    for (_, size, _), cidr, count in zip(parsed, pools, counts, strict=True):
        if size < 1 or -(-count // size) > limit:
            raise CyncError(
                f"source pool {cidr}: {count} devices over {size} addresses is more than "
                f"{limit} connections per address (the ephemeral port range); use a larger pool",
                reason="usage",
            )
    used = [0] * len(pools)
    out: list[list[FleetMember]] = []
    for k, share in enumerate(shares):
        p = k % len(pools)
        first, size, taken = parsed[p]
        mine = []
        for m in share:
            value = first + used[p] % size
            used[p] += 1
            value += taken is not None and value >= taken
            mine.append(replace(m, source_host=str(ipaddress.ip_address(value))))
        out.append(mine)
    return out
