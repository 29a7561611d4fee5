# Real packets for the tests: the commands and replies of PROTOCOL.md section 12 (bridge
# 6457e7f2 and the local server, capture 152132), a harmless marker command, and small
# decoders the assertions use.
#
# Strategy: bytes exactly as captured, written once here and shared by the engine, device,
# dial and chaos tests; anything derived (keys, statuses) goes through the project's codec.
from __future__ import annotations

from cyncsim.replay.describe import request_key
from cyncsim.replay.payloads import LightStateCommand, build_command, decode_status_report
from cyncsim.replay.protocol import FramedPacket, decode_packet

__all__ = [
    "ACK_7B",
    "AUTH",
    "CLIENT_HELLO",
    "CONTROL",
    "CT_58",
    "DEV",
    "FW_DEVICE",
    "FW_NETWORK",
    "GROUP_BRI",
    "GROUP_OFF",
    "HELLO",
    "HELLO_ACK",
    "MARKER_BRIGHTNESS",
    "MESH_ACK",
    "MESH_REQ",
    "PING",
    "PONG",
    "POWER_OFF",
    "POWER_ON",
    "REPORT",
    "RESULT_52",
    "RESULT_AF",
    "RESULT_BRI",
    "RESULT_CT",
    "RESULT_OFF",
    "RESULT_ON",
    "frame_seq",
    "marker",
    "request_of",
    "status_of",
]

H = bytes.fromhex
DEV = H("6457e7f2")
AUTH = b"1e07d4c9dd546401"
HELLO = H("23 00 00 00 1a 03 64 57 e7 f2 00 10 31 65 30 37 64 34 63 39 64 64 35 34 36 34 30 31"
          " 00 00 3c")  # fmt: skip
HELLO_ACK = H("28 00 00 00 02 00 00")
PING = H("d3 00 00 00 00")
PONG = H("d8 00 00 00 00")
# A 0x83 fa db 13 status report of node 103 (on, brightness 75).
REPORT = H("83 00 00 00 25 64 57 e7 f2 02 fe 00 7e 64 65 22 11 fa db 13 00 11 11 11 67 00 67 00"
           " db 11 02 01 01 4b ff 00 00 00 00 00 29 7e")  # fmt: skip
# Not Cync: the start of a TLS ClientHello, as a device speaking TLS would send it.
CLIENT_HELLO = H("16 03 01 00 2f 01 00 00 2b 03 03" + " 11" * 32 + " 00 00 04 00 3d 00 35 01 00")
# PROTOCOL.md section 12, 0x73 commands from the local server (152132).
POWER_OFF = H("73 00 00 00 1f 64 57 e7 f2 00 00 00 7e 03 00 00 00 f8 d0 0d 00 03 00 00 00 00"
              " ce 00 d0 11 02 00 00 00 91 7e")  # fmt: skip
POWER_ON = H("73 00 00 00 1f 64 57 e7 f2 00 00 00 7e 04 00 00 00 f8 d0 0d 00 04 00 00 00 00"
             " ce 00 d0 11 02 01 00 00 93 7e")  # fmt: skip
GROUP_OFF = H("73 00 00 00 1f 64 57 e7 f2 00 00 00 7e 09 00 00 00 f8 d0 0d 00 09 00 00 00 00"
              " 0a 80 d0 11 02 00 00 00 53 7e")  # fmt: skip
GROUP_BRI = H("73 00 00 00 22 64 57 e7 f2 00 00 00 7e 01 00 00 00 f8 f0 10 00 01 00 00 00 00"
              " 10 80 f0 11 02 01 64 ff ff ff ff f5 7e")  # fmt: skip
CT_58 = H("73 00 00 00 22 64 57 e7 f2 00 00 00 7e 05 00 00 00 f8 f0 10 00 05 00 00 00 00"
          " ce 00 f0 11 02 01 ff 3a 00 00 00 10 7e")  # fmt: skip
MESH_REQ = H(
    "73 00 00 00 18 64 57 e7 f2 00 00 00 7e 1f 00 00 00 f8 52 06 00 00 00 ff ff 00 00 56 7e"
)
MESH_ACK = H("73 00 00 00 14 64 57 e7 f2 00 00 00 7e 1e 00 00 00 f8 af 02 00 af 01 61 7e")
CONTROL = H("a3 00 00 00 07 64 57 e7 f2 9f 52 00")
# ... and the device replies quoted there.
ACK_7B = H("7b 00 00 00 07 64 57 e7 f2 00 00 00")
RESULT_OFF = H("73 00 00 00 13 64 57 e7 f2 00 05 00 7e 03 00 00 00 f9 d0 01 00 00 d1 7e")
RESULT_ON = H("73 00 00 00 13 64 57 e7 f2 00 06 00 7e 04 00 00 00 f9 d0 01 00 00 d1 7e")
RESULT_BRI = H("73 00 00 00 13 64 57 e7 f2 00 02 00 7e 01 00 00 00 f9 f0 01 00 00 f1 7e")
RESULT_CT = H("73 00 00 00 13 64 57 e7 f2 00 07 00 7e 05 00 00 00 f9 f0 01 00 00 f1 7e")
RESULT_52 = H("73 00 00 00 13 64 57 e7 f2 00 00 00 7e 1f 00 00 00 f9 52 01 00 00 53 7e")
RESULT_AF = H("73 00 00 00 13 64 57 e7 f2 00 04 00 7e 1e 00 00 00 f9 af 01 00 00 b0 7e")
FW_NETWORK = H("83 00 00 00 32 32 5d 53 17 00 01 00 00 00 00 00 00 fa 00 20 00 00 00 00 00 00"
               " 00 00 ea 00 00 00 86 01 00 30" + " 00" * 17 + " c1 7e")  # fmt: skip
FW_DEVICE = H("83 00 00 00 32 32 5d 53 17 00 02 00 00 00 00 00 00 fa 00 20 00 00 00 00 00 00"
              " 00 00 ea 00 00 00 86 01 01 31 31 31 35 38" + " 00" * 13 + " 92 7e")  # fmt: skip

# A marker command sets this brightness: its status report is told apart by it.
MARKER_BRIGHTNESS = 77


def marker(n: int, node: int = 206, dev: bytes = DEV) -> bytes:
    """A harmless light-state command with a message id and a sequence of its own (0xE0 + n)."""
    cmd = LightStateCommand(0xE0 + n, node, brightness=MARKER_BRIGHTNESS)
    return build_command(dev, bytes((0x7F, n, 0)), cmd).encode()


def request_of(data: bytes) -> str:
    """The request key of raw packet bytes (e.g. ``0x73:f9:d0``, ``0x7b``)."""
    return request_key(decode_packet(data, strict=False))


def frame_seq(data: bytes) -> bytes | None:
    """The inner frame's sequence number of a 0x73/0x83 packet (None without a frame)."""
    pkt = decode_packet(data, strict=False)
    if isinstance(pkt, FramedPacket) and pkt.frame is not None:
        return pkt.frame.seq
    return None


def status_of(data: bytes) -> tuple[int, bool, int, int]:
    """(node, on, brightness, colour temperature) of a 0x83 ``fa db 13`` status report."""
    st = decode_status_report(decode_packet(data))
    assert st is not None
    return st.node_id, st.on, st.brightness, st.color_temp
