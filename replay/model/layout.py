# Declared field layout of each packet kind, as data, for template learning.
#
# Strategy: the codec's field tables (replay/_layout.py, exported by protocol.py) placed in
# the packet as (name, class, start, end) byte ranges: each table row's role is its class.
# The ranges are built once at import; only the parts whose place depends on the packet's
# length (the frame tail, a variable body) are placed per packet.  The learner labels each
# field with a role from data (echo, counter, identity, state, constant, ...); the class is
# only the tie-break where the data cannot tell (a value that never varied can be an echo or
# a constant).
from __future__ import annotations

from dataclasses import dataclass

from cyncsim.replay.protocol import (
    ACK_BODY,
    FRAME_HEAD,
    FRAME_TAIL,
    HEADER,
    HELLO_BODY,
    ID_PREFIX,
    STATUS_DATA,
    TIME_BODY,
    AckPacket,
    CyncPacket,
    FramedPacket,
    FrameKind,
    HelloPacket,
    IdPacket,
    Layout,
    PacketType,
)

__all__ = ["FieldSpec", "fields_of"]

# classes: "fixed" (type, markers, opcodes), "length", "id" (device id), "msg" (message id),
# "seq" (inner sequence), "checksum", "state", "tick", "clock", "auth", "body"


@dataclass(frozen=True, slots=True)
class FieldSpec:
    name: str
    cls: str
    start: int
    end: int  # exclusive; absolute offsets in the packet


def _specs(*layouts: Layout) -> list[FieldSpec]:
    """The rows of layouts that sit at a fixed place in the packet."""
    return [FieldSpec(f.name, f.role, f.offset, f.end) for lay in layouts for f in lay]


_HEAD = _specs(HEADER)
_HELLO = _HEAD + _specs(HELLO_BODY)
_ACK = _HEAD + _specs(ACK_BODY)
_ID = _HEAD + _specs(ID_PREFIX)
_FRAMED = _HEAD + _specs(ID_PREFIX, FRAME_HEAD)
_STATUS = _FRAMED + _specs(STATUS_DATA)
_TIME = [*_HEAD, FieldSpec("time", "clock", TIME_BODY.start, TIME_BODY.end)]  # one field
_DATA = FRAME_HEAD.end  # first byte of a frame's data
_TAIL = [(f.name, f.role, f.offset, f.size) for f in FRAME_TAIL]  # offsets from the end
_STATUS_OP = 0xDB  # fa db: a node's status when its data has the STATUS_DATA layout
_STATUS_LEN = STATUS_DATA.size


def fields_of(pkt: CyncPacket) -> list[FieldSpec]:
    """The declared fields of a packet, covering every byte exactly once."""
    n = len(pkt)
    if isinstance(pkt, HelloPacket):
        return list(_HELLO)
    if isinstance(pkt, AckPacket):
        return list(_ACK)
    if isinstance(pkt, FramedPacket) and pkt.frame is not None:
        f = pkt.frame
        if f.kind == FrameKind.REPORT and f.opcode == _STATUS_OP and len(f.data) == _STATUS_LEN:
            out = list(_STATUS)
        else:
            out = list(_FRAMED)
            end_data = n + FRAME_TAIL.start
            if end_data > _DATA:
                out.append(FieldSpec("data", "body", _DATA, end_data))
        out += [FieldSpec(name, cls, n + at, n + at + size) for name, cls, at, size in _TAIL]
        return out
    if isinstance(pkt, IdPacket):
        out = list(_ID)
        if n > ID_PREFIX.end:
            cls = "state" if pkt.type == PacketType.STATUS else "body"
            out.append(FieldSpec("body", cls, ID_PREFIX.end, n))
        return out
    if pkt.type == PacketType.TIME_REPLY and n == TIME_BODY.end:
        return list(_TIME)
    out = list(_HEAD)
    if n > HEADER.end:
        out.append(FieldSpec("body", "body", HEADER.end, n))
    return out
