# Fleet identities: who each device of a fleet is.
#
# Strategy: every identity is drawn from named streams of one SeedTree root, in index
# order, so one seed gives the same fleet on every run and in every worker process.  The
# model's captured devices come first (their id, auth code and mesh node); the rest are
# generated in the captured shape.  Source addresses walk 127.0.0.0/8 (loopback_address).
# Private module: import the public names from cyncsim.simulator.fleet.
from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from cyncsim.replay.model import DeviceModel
from cyncsim.replay.seeds import SeedTree
from cyncsim.simulator._base import default_model
from cyncsim.simulator.ports import check_loopback

__all__ = [
    "AUTH_PREFIX",
    "MESH_NODES",
    "FleetMember",
    "Identities",
    "format_address",
    "generate_members",
    "loopback_address",
]

MESH_NODES = 254  # mesh node ids 1..254 per mesh
AUTH_PREFIX = "1e07d"  # every captured auth code starts so (PROTOCOL.md 4.1)
_HEX = "0123456789abcdef"
_ID_FIRST = (0x20, 0x6F)  # first id byte when the model has no captured ids to follow
_BLOCK = 254  # usable last octets 1..254 per 127.a.b.0/24
_ADDRESSES = 256 * 256 * _BLOCK  # source addresses before loopback_address wraps
Identities = Literal["model", "generate"]


@dataclass(frozen=True, slots=True)
class FleetMember:
    """Who one fleet device is; ``captured``: taken from the model's captured devices."""

    index: int
    device_id: bytes
    auth_code: bytes
    mesh: int
    mesh_node: int
    source_host: str | None
    seed: int
    captured: bool = False


# ---------------------------------------------------------------------------- identities
def loopback_address(index: int) -> str:
    """Source address of device ``index``: 127.0.0.2, ..., 127.0.0.254, 127.0.1.1, ...

    Last octets stay in 1..254 (no .0 or .255) and 127.0.0.1 is left to the controller, so
    256 * 256 * 254 - 1 addresses (16.6 million) are handed out before they repeat.
    """
    pos = index % (_ADDRESSES - 1) + 1
    block, last = divmod(pos, _BLOCK)
    return f"127.{block >> 8}.{block & 0xFF}.{last + 1}"


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _auth_prefix(model: DeviceModel | None) -> str:
    codes = [d.auth_code.decode("ascii", "replace") for d in model.devices] if model else []
    codes = [c for c in codes if len(c) == 16 and all(ch in _HEX for ch in c)]
    if not codes:
        return AUTH_PREFIX
    prefix = codes[0]
    for code in codes[1:]:
        while not code.startswith(prefix):
            prefix = prefix[:-1]
    return prefix if len(prefix) >= len(AUTH_PREFIX) else AUTH_PREFIX


def generate_members(
    n: int,
    *,
    model: DeviceModel | None = None,
    seed: int = 0,
    identities: Identities = "model",
    source_hosts: bool | Sequence[str] = True,
    mesh_size: int = MESH_NODES,
) -> list[FleetMember]:
    """``n`` distinct identities, the same for the same arguments.

    ``identities="model"``: the model's captured devices first (their id, auth code and mesh
    node), then generated ones; ``"generate"``: all generated, in the captured shape: 4-byte
    ids whose first byte lies in the captured range, auth codes of 16 lower-case hex digits
    starting with the captured prefix.  Device i is in mesh i // mesh_size, with a node id
    unique in its mesh (1..254).  ``source_hosts``: True = loopback_address(i), False =
    none (the kernel picks), or one loopback address per device.
    """
    if n < 1:
        raise ValueError(f"a fleet needs at least one device, got n={n}")
    if identities not in ("model", "generate"):
        raise ValueError(f"identities={identities!r}: expected 'model' or 'generate'")
    if not 1 <= mesh_size <= MESH_NODES:
        raise ValueError(f"mesh_size={mesh_size} must be 1..{MESH_NODES}")
    hosts = _source_hosts(n, source_hosts)
    model = model if model is not None else default_model()
    tree = SeedTree(seed)
    rng = tree.stream("fleet/identities")
    captured = []
    seen_ids: set[bytes] = set()
    for d in model.devices if identities == "model" else ():
        if len(d.device_id) == 4 and len(d.auth_code) == 16 and d.device_id not in seen_ids:
            seen_ids.add(d.device_id)
            captured.append(d)
    firsts = [d.device_id[0] for d in model.devices if len(d.device_id) == 4]
    lo, hi = (min(firsts), max(firsts)) if firsts else _ID_FIRST
    prefix = _auth_prefix(model)
    used_ids = set(seen_ids)
    pools: dict[int, list[int]] = {}
    taken: dict[int, set[int]] = {}
    # A captured device keeps its node: drawn nodes avoid those of later captured devices too.
    reserved: dict[int, set[int]] = {}
    for i, d in enumerate(captured[:n]):
        if d.mesh_node is not None:
            reserved.setdefault(i // mesh_size, set()).add(d.mesh_node)
    out: list[FleetMember] = []
    for i in range(n):
        mesh = i // mesh_size
        nodes = taken.setdefault(mesh, set())
        if i < len(captured):
            known = captured[i]
            dev, auth, node = known.device_id, known.auth_code, known.mesh_node
        else:
            dev = _fresh_id(rng, lo, hi, used_ids)
            auth = (prefix + "".join(rng.choices(_HEX, k=16 - len(prefix)))).encode("ascii")
            node = None
        if node is None or not 1 <= node <= MESH_NODES or node in nodes:
            if mesh not in pools:
                pools[mesh] = tree.stream(f"fleet/mesh/{mesh}").sample(
                    range(1, MESH_NODES + 1), MESH_NODES
                )
            pool = pools[mesh]
            avoid = reserved.get(mesh, set())
            while pool[-1] in nodes or pool[-1] in avoid:
                pool.pop()
            node = pool.pop()
        nodes.add(node)
        sub = tree.seed(f"fleet/device/{i}")
        out.append(FleetMember(i, dev, auth, mesh, node, hosts[i], sub, i < len(captured)))
    return out


def _fresh_id(rng: random.Random, lo: int, hi: int, used: set[bytes]) -> bytes:
    while True:
        dev = bytes((rng.randint(lo, hi),)) + rng.randbytes(3)
        if dev not in used:
            used.add(dev)
            return dev


def _source_hosts(n: int, source_hosts: bool | Sequence[str]) -> list[str | None]:
    if source_hosts is True:
        return [loopback_address(i) for i in range(n)]
    if source_hosts is False:
        return [None] * n
    hosts = list(source_hosts)
    if len(hosts) < n:
        raise ValueError(f"source_hosts lists {len(hosts)} addresses for {n} devices")
    for h in hosts:
        check_loopback(h)
    return list(hosts[:n])
