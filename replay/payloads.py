# Typed views of what packets carry, and builders for every packet kind.
#
# Strategy: each body layout is a field table declared with the codec's (replay/_layout.py,
# exported by protocol.py); ``decode_*`` functions unpack it with the table's struct into a
# small frozen dataclass and return None when the bytes are not of that layout; ``build_*``
# functions make packets from fields with lengths and checksums computed by the codec.
# Layouts follow PROTOCOL.md sections 4-7.
from __future__ import annotations

from dataclasses import dataclass

from cyncsim.replay.protocol import (
    FIRMWARE_DATA,
    ID_PREFIX,
    LIGHT_DATA,
    POWER_DATA,
    STATUS_DATA,
    STATUS_ENTRY,
    TIME_BODY,
    AckPacket,
    CyncPacket,
    FramedPacket,
    FrameKind,
    GenericPacket,
    HelloPacket,
    IdPacket,
    InnerFrame,
    PacketType,
)

__all__ = [
    "UNCHANGED",
    "LightStateCommand",
    "PowerCommand",
    "StatusEntry",
    "StatusReport",
    "TimeReply",
    "build_ack_for",
    "build_command",
    "build_control",
    "build_control_answer",
    "build_data_ack",
    "build_hello",
    "build_report",
    "build_result",
    "build_simple",
    "build_status",
    "build_time_reply",
    "decode_command",
    "decode_status_entries",
    "decode_status_report",
    "decode_time_reply",
    "firmware_version",
]

UNCHANGED = 0xFF  # brightness / colour temperature byte meaning "leave as it is"
RGB_MODE = 0xFE  # colour temperature byte meaning "switch to RGB"
GROUP_BASE = 0x8000  # mesh addresses from here on are groups

# The ``op`` field of the frame data: the opcode again, then the Telink vendor bytes 11 02.
_POWER_OP = b"\xd0\x11\x02"
_LIGHT_OP = b"\xf0\x11\x02"
_STATUS_OP = b"\xdb\x11\x02"
_TIME_MARKER = 0x0D
_ENTRY_FLAGS = 0x0010  # the "flags" field of every 0x43 status entry
_ENTRY_FLAGS_AT = STATUS_ENTRY["flags"].local
_ENTRY_FLAGS_BYTES = _ENTRY_FLAGS.to_bytes(STATUS_ENTRY["flags"].size, "big")
_FW_WHICH = FIRMWARE_DATA["which"].pos
_FW_VERSION = slice(FIRMWARE_DATA["version"].pos, None)
_SIMPLE_BODIES: dict[int, bytes] = {
    PacketType.HELLO_ACK: b"\x00\x00",
    PacketType.STATUS_ACK: b"\x01\x01\x00",
    PacketType.TIME_REQUEST: b"\x0c",
    PacketType.PING: b"",
    PacketType.PONG: b"",
}


@dataclass(frozen=True, slots=True)
class PowerCommand:
    """f8 d0: switch a mesh node or group on or off."""

    ctr: int
    target: int
    on: bool

    @property
    def is_group(self) -> bool:
        return self.target >= GROUP_BASE

    def data(self) -> bytes:
        return POWER_DATA.pack(self.ctr, b"\0\0\0\0", self.target, _POWER_OP, int(self.on), b"\0\0")


@dataclass(frozen=True, slots=True)
class LightStateCommand:
    """f8 f0: brightness, colour temperature or RGB; 0xff leaves a value unchanged."""

    ctr: int
    target: int
    brightness: int = UNCHANGED
    color_temp: int = UNCHANGED
    rgb: tuple[int, int, int] = (0xFF, 0xFF, 0xFF)
    mode: int = 0x01

    @property
    def is_group(self) -> bool:
        return self.target >= GROUP_BASE

    def data(self) -> bytes:
        return LIGHT_DATA.pack(
            self.ctr,
            b"\0\0\0\0",
            self.target,
            _LIGHT_OP,
            self.mode,
            self.brightness,
            self.color_temp,
            bytes(self.rgb),
        )


Command = PowerCommand | LightStateCommand


@dataclass(frozen=True, slots=True)
class StatusReport:
    """fa db 13: the state of one mesh node, reported in a 0x83 (PROTOCOL.md section 6)."""

    node_id: int
    on: bool
    brightness: int
    color_temp: int
    rgb: tuple[int, int, int]
    connected: int = 1
    tick: bytes = b"\x11\x11"
    flag: int = 0x11
    node_id2: int | None = None  # second copy of the id; None means "same as node_id"
    tail: bytes = b"\0\0"

    def data(self) -> bytes:
        second = self.node_id if self.node_id2 is None else self.node_id2
        return STATUS_DATA.pack(
            self.tick,
            self.flag,
            self.node_id,
            second,
            _STATUS_OP,
            self.connected,
            int(self.on),
            self.brightness,
            self.color_temp,
            bytes(self.rgb),
            self.tail,
        )


@dataclass(frozen=True, slots=True)
class StatusEntry:
    """One 19-byte entry of a 0x43 status packet (PROTOCOL.md section 5)."""

    index: int
    node_id: int
    on: bool
    brightness: int
    color_temp: int
    rgb: tuple[int, int, int]
    fresh: int
    relay: int
    bridge_id: int

    def data(self) -> bytes:
        return STATUS_ENTRY.pack(
            self.index,
            _ENTRY_FLAGS,
            self.node_id,
            int(self.on),
            self.brightness,
            self.color_temp,
            bytes(self.rgb),
            self.fresh,
            self.relay,
            self.bridge_id,
            b"\0" * 6,
        )


@dataclass(frozen=True, slots=True)
class TimeReply:
    """0xC8 body: wall-clock date and time with the UTC offset as +-hhmm."""

    year: int
    month: int
    day: int
    weekday: int  # Sunday = 1 ... Saturday = 7
    hour: int
    minute: int
    second: int
    utc_offset_hhmm: int

    def data(self) -> bytes:
        return TIME_BODY.pack(
            _TIME_MARKER,
            self.year,
            self.month,
            self.day,
            self.weekday,
            self.hour,
            self.minute,
            self.second,
            self.utc_offset_hhmm,
        )


def decode_command(frame: InnerFrame) -> Command | None:
    """The command in an f8 d0 / f8 f0 frame, or None for other frames."""
    if frame.kind != FrameKind.REQUEST:
        return None
    if frame.opcode == 0xD0 and len(frame.data) == POWER_DATA.size:
        ctr, _, target, op, state, _ = POWER_DATA.unpack(frame.data)
        return PowerCommand(ctr, target, bool(state)) if op[0] == 0xD0 else None
    if frame.opcode == 0xF0 and len(frame.data) == LIGHT_DATA.size:
        ctr, _, target, op, mode, bri, ct, rgb = LIGHT_DATA.unpack(frame.data)
        if op[0] != 0xF0:
            return None
        return LightStateCommand(ctr, target, bri, ct, (rgb[0], rgb[1], rgb[2]), mode)
    return None


def decode_status_report(pkt: CyncPacket) -> StatusReport | None:
    """The node state in a 0x83 fa db 13 report, or None for other packets."""
    if not isinstance(pkt, FramedPacket) or pkt.frame is None:
        return None
    f = pkt.frame
    if f.kind != FrameKind.REPORT or f.opcode != 0xDB or len(f.data) != STATUS_DATA.size:
        return None
    tick, flag, node, node2, op, conn, on, bri, ct, rgb, tail = STATUS_DATA.unpack(f.data)
    if op[0] != 0xDB:
        return None
    return StatusReport(
        node, bool(on), bri, ct, (rgb[0], rgb[1], rgb[2]), conn, tick, flag,
        None if node2 == node else node2, tail,
    )  # fmt: skip


def decode_status_entries(pkt: CyncPacket) -> list[StatusEntry]:
    """Status entries of a 0x43 (empty for the other 0x43 forms and other packets)."""
    if not isinstance(pkt, IdPacket) or pkt.type != PacketType.STATUS:
        return []
    body = pkt.payload
    if not body or body[_ENTRY_FLAGS_AT] != _ENTRY_FLAGS_BYTES:
        return []
    out = []
    for off in range(0, len(body) - STATUS_ENTRY.size + 1, STATUS_ENTRY.size):
        idx, _, node, on, bri, ct, rgb, fresh, relay, bridge, _ = STATUS_ENTRY.unpack_from(
            body, off
        )
        out.append(StatusEntry(idx, node, bool(on), bri, ct, (rgb[0], rgb[1], rgb[2]), fresh,
                               relay, bridge))  # fmt: skip
    return out


def decode_time_reply(pkt: CyncPacket) -> TimeReply | None:
    if pkt.type != PacketType.TIME_REPLY or not isinstance(pkt, GenericPacket):
        return None
    if len(pkt.payload) != TIME_BODY.size:
        return None
    marker, *fields = TIME_BODY.unpack(pkt.payload)
    return TimeReply(*fields) if marker == _TIME_MARKER else None


def firmware_version(pkt: CyncPacket) -> tuple[str, str] | None:
    """``("device" | "network", version digits)`` of a 0x83 firmware report, else None."""
    if not isinstance(pkt, FramedPacket) or pkt.frame is None:
        return None
    f = pkt.frame
    if f.kind != FrameKind.REPORT or f.opcode != 0x00 or len(f.data) <= _FW_WHICH:
        return None
    which = "device" if f.data[_FW_WHICH] == 1 else "network"
    digits = f.data[_FW_VERSION].split(b"\0", 1)[0]
    return which, digits.decode("ascii", "replace")


# ---------------------------------------------------------------------------------- builders


def build_simple(ptype: PacketType) -> GenericPacket:
    """0x28, 0x48, 0xC3, 0xD3, 0xD8: packets with one fixed body."""
    return GenericPacket(int(ptype), payload=_SIMPLE_BODIES[ptype])


def build_hello(device_id: bytes, auth_code: bytes) -> HelloPacket:
    return HelloPacket(int(PacketType.HELLO), device_id=device_id, auth_code=auth_code)


def build_time_reply(t: TimeReply) -> GenericPacket:
    return GenericPacket(int(PacketType.TIME_REPLY), payload=t.data())


def build_command(
    device_id: bytes, msg_id: bytes, command: Command, seq: bytes | None = None
) -> FramedPacket:
    """A 0x73 f8 command; the frame sequence defaults to ``ctr 00 00 00``."""
    op = 0xD0 if isinstance(command, PowerCommand) else 0xF0
    frame = InnerFrame(seq or bytes((command.ctr, 0, 0, 0)), FrameKind.REQUEST, op, command.data())
    return FramedPacket(int(PacketType.DATA), device_id=device_id, msg_id=msg_id, frame=frame)


def build_result(device_id: bytes, msg_id: bytes, request: InnerFrame) -> FramedPacket:
    """A device's f9 result to an f8 request: copies the request's sequence field."""
    frame = InnerFrame(request.seq, FrameKind.RESULT, request.opcode, b"\x00")
    return FramedPacket(int(PacketType.DATA), device_id=device_id, msg_id=msg_id, frame=frame)


def build_report(
    device_id: bytes, msg_id: bytes, report: StatusReport, seq: bytes = b"\x1f\0\0\0"
) -> FramedPacket:
    """A 0x83 fa db 13 status report."""
    frame = InnerFrame(seq, FrameKind.REPORT, 0xDB, report.data())
    return FramedPacket(int(PacketType.REPORT), device_id=device_id, msg_id=msg_id, frame=frame)


def build_status(device_id: bytes, entries: list[StatusEntry], trailer: bytes = b"") -> IdPacket:
    """A 0x43 with status entries (empty list: the 12-byte keep-alive form)."""
    body = b"".join(e.data() for e in entries) + trailer
    return IdPacket(
        int(PacketType.STATUS), device_id=device_id, msg_id=b"\x01\x01\x06", payload=body
    )


def build_data_ack(request: IdPacket) -> IdPacket:
    """0x7B: echoes bytes 5-11 (device id and message id) of the 0x73 it answers."""
    return IdPacket(int(PacketType.DATA_ACK), device_id=request.device_id, msg_id=request.msg_id)


def build_ack_for(report: IdPacket) -> AckPacket:
    """0x88: echoes bytes 9-11 (the message id) of the 0x83 it answers."""
    return AckPacket(int(PacketType.REPORT_ACK), msg_id=report.msg_id)


def build_control(device_id: bytes, token: bytes) -> IdPacket:
    """0xA3 "want to control": device id, two token bytes, 00."""
    return IdPacket(int(PacketType.CONTROL), device_id=device_id, msg_id=token[:2] + b"\0")


def build_control_answer(request: IdPacket) -> IdPacket:
    """0xAB: 1,024 bytes echoing the 0xA3's id bytes, then ``07 00 09 xlink_dev`` and zeros."""
    payload = b"\x07\x00\x09xlink_dev".ljust(1024 - ID_PREFIX.end, b"\0")
    return IdPacket(
        int(PacketType.CONTROL_ACK),
        device_id=request.device_id,
        msg_id=request.msg_id,
        payload=payload,
    )
