# The engine's small value types and the packets it builds without a learned template.
#
# Strategy: plain data and pure functions only.  DeviceState is what a light reports;
# Send / Close / Relay are the actions an engine returns (NamedTuples: cheap to make by the
# thousand); SeedSource names the seed interface, and an int root is turned into named
# streams with blake2b (never hash()), so a seed reproduces a run on any machine.  The 0x43
# status and the 0x83 firmware report are built with the codec, and ``pick_script`` picks a
# learned connect script by its share.
# Private module: the public names are re-exported by replay.engine (and replay._engine_render).
from __future__ import annotations

import hashlib
import logging
import random
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from cyncsim.replay.payloads import Command, StatusEntry, build_status
from cyncsim.replay.protocol import FramedPacket, FrameKind, InnerFrame, PacketType

__all__ = [
    "Action",
    "Close",
    "DeviceState",
    "Relay",
    "SeedSource",
    "Send",
    "firmware_report",
    "frame_key",
    "pick_script",
    "root_seed",
    "status_packet",
]

logger = logging.getLogger("cyncsim.engine")


@dataclass(slots=True)
class DeviceState:
    """State of one light, as its 0x83 ``fa db 13`` status and 0x43 entries report it.

    ``color_temp`` is 0-100, or 0xFE in RGB mode (``rgb`` then holds the colour); ``online``
    is the status byte "connected to the mesh"; ``toggle_count`` counts the state changes
    applied (commands addressed to this node and ``set_state`` calls, duplicates excluded).
    """

    on: bool = False
    brightness: int = 100
    color_temp: int = 50
    rgb: tuple[int, int, int] = (255, 255, 255)
    online: bool = True
    toggle_count: int = 0


_KEYS: dict[tuple[int, int], str] = {}


def frame_key(kind: int, opcode: int) -> str:
    """request_key of a 0x73 with this frame kind and opcode (cached)."""
    key = _KEYS.get((kind, opcode))
    if key is None:
        key = f"0x73:{kind:02x}:{opcode:02x}"
        if len(_KEYS) < 4096:
            _KEYS[(kind, opcode)] = key
    return key


class Send(NamedTuple):
    """Write ``data`` at clock value ``at``; ``key`` names it like a request key ("0x7b")."""

    at: float
    data: bytes
    key: str


class Close(NamedTuple):
    at: float
    reason: str


class Relay(NamedTuple):
    """A command this node does not (only) handle itself: for a fleet to pass to ``target``."""

    at: float
    target: int
    command: Command


Action = Send | Close | Relay


class SeedSource(Protocol):
    """Named independent random streams from one root (simulator.chaos.SeedTree fits)."""

    @property
    def root(self) -> int: ...

    def stream(self, name: str) -> random.Random: ...


class _Seeds:
    """The engine's own SeedSource for an int root: blake2b(root, name) seeds each stream."""

    __slots__ = ("root",)

    def __init__(self, root: int) -> None:
        self.root = root

    def stream(self, name: str) -> random.Random:
        digest = hashlib.blake2b(
            f"{self.root}\x00{name}".encode(), digest_size=16, person=b"cyncsim.engine"
        ).digest()
        return random.Random(int.from_bytes(digest, "big"))


def root_seed(seed: int | SeedSource | None, what: str) -> SeedSource:
    if seed is None:
        seed = secrets.randbits(63)
        logger.info("%s: no seed given, drew root seed %d (pass it to reproduce)", what, seed)
    if isinstance(seed, int):
        return _Seeds(seed)
    return seed


def status_packet(device_id: bytes, node: int, st: DeviceState) -> bytes:
    """A 0x43 with the node's own 19-byte status entry (index 05, PROTOCOL.md section 5)."""
    entry = StatusEntry(
        5,
        node & 0xFF,
        st.on,
        st.brightness & 0xFF,
        st.color_temp & 0xFF,
        st.rgb,
        int(st.online),
        0,
        node & 0xFF,
    )
    return build_status(device_id, [entry]).encode()


def firmware_report(device_id: bytes, msg_id: bytes, which: str, version: str) -> bytes:
    """A 0x83 firmware report (the ``00``-led ``fa 00`` form, PROTOCOL.md section 12):
    ``which`` is "network" or "device", ``version`` the ASCII digits it carries."""
    digits = version.encode("ascii", "replace")[:18]
    data = bytes(7) + b"\xea" + bytes(3) + b"\x86\x01" + (b"\x01" if which == "device" else b"\x00")
    frame = InnerFrame(
        bytes(4), FrameKind.REPORT, 0x00, (data + digits).ljust(32, b"\0"), marker=0x00
    )
    return FramedPacket(PacketType.REPORT, device_id=device_id, msg_id=msg_id, frame=frame).encode()


def pick_script(
    scripts: Sequence[tuple[int, list[tuple[str, float]]]], u: float
) -> list[tuple[str, float]]:
    """The script whose cumulative count share covers ``u`` in [0, 1)."""
    total = sum(n for n, _ in scripts)
    if total <= 0:
        return []
    target = u * total
    for n, steps in scripts:
        if target < n:
            return steps
        target -= n
    return scripts[-1][1]
