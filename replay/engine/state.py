# What a light is and says about itself: DeviceState and the packets built from it directly.
#
# Strategy: plain data and pure functions.  DeviceState is the state a light reports (its 0x83
# fa db 13 status and 0x43 entries); the 0x43 status and the 0x83 firmware report are built
# with the codec (replay.payloads, replay.protocol), with no learned template, because the
# captures hold too few of them to learn from.
from __future__ import annotations

from dataclasses import dataclass

from cyncsim.replay.payloads import StatusEntry, build_status
from cyncsim.replay.protocol import (
    FIRMWARE_DATA,
    FramedPacket,
    FrameKind,
    InnerFrame,
    PacketType,
)

__all__ = ["DeviceState", "firmware_report", "status_packet"]

_FIRMWARE_INFO = bytes(7) + b"\xea" + bytes(3) + b"\x86\x01"  # as captured (PROTOCOL.md 12)


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
    data = FIRMWARE_DATA.pack(
        _FIRMWARE_INFO, 1 if which == "device" else 0, version.encode("ascii", "replace")
    )  # the version field is zero-padded (or cut) to its size
    frame = InnerFrame(bytes(4), FrameKind.REPORT, 0x00, data, marker=0x00)
    return FramedPacket(PacketType.REPORT, device_id=device_id, msg_id=msg_id, frame=frame).encode()
