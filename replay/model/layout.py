# Declared field layout of each packet kind, as data, for template learning.
#
# Strategy: the codec's struct layouts, restated as (name, class, start, end) byte ranges of
# the whole packet.  The learner labels each field with a role from data (echo, counter,
# identity, state, constant, ...); the class is only the tie-break where the data cannot
# tell (a value that never varied can be an echo or a constant).
from __future__ import annotations

from dataclasses import dataclass

from cyncsim.replay.protocol import (
    AckPacket,
    CyncPacket,
    FramedPacket,
    HelloPacket,
    IdPacket,
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
    end: int  # exclusive; may be negative-free absolute offsets


_HEAD = [
    FieldSpec("type", "fixed", 0, 1),
    FieldSpec("reserved", "fixed", 1, 3),
    FieldSpec("length", "length", 3, 5),
]
_STATUS_DATA = [  # fa db 13: offsets inside the frame data
    ("tick", "tick", 0, 2),
    ("flag", "fixed", 2, 3),
    ("node", "state", 3, 5),
    ("node2", "state", 5, 7),
    ("op", "fixed", 7, 10),
    ("connected", "state", 10, 11),
    ("on", "state", 11, 12),
    ("brightness", "state", 12, 13),
    ("color_temp", "state", 13, 14),
    ("rgb", "state", 14, 17),
    ("tail", "fixed", 17, 19),
]


def fields_of(pkt: CyncPacket) -> list[FieldSpec]:
    """The declared fields of a packet, covering every byte exactly once."""
    n = len(pkt)
    out = list(_HEAD)
    if isinstance(pkt, HelloPacket):
        out += [
            FieldSpec("version", "fixed", 5, 6),
            FieldSpec("device_id", "id", 6, 10),
            FieldSpec("pad", "fixed", 10, 11),
            FieldSpec("auth_len", "fixed", 11, 12),
            FieldSpec("auth", "auth", 12, 28),
            FieldSpec("tail", "fixed", 28, 31),
        ]
    elif isinstance(pkt, AckPacket):
        out.append(FieldSpec("msg_id", "msg", 5, 8))
    elif isinstance(pkt, FramedPacket) and pkt.frame is not None:
        f = pkt.frame
        end_data = n - 2
        out += [
            FieldSpec("device_id", "id", 5, 9),
            FieldSpec("msg_id", "msg", 9, 12),
            FieldSpec("marker", "fixed", 12, 13),
            FieldSpec("seq", "seq", 13, 17),
            FieldSpec("kind", "fixed", 17, 18),
            FieldSpec("opcode", "fixed", 18, 19),
            FieldSpec("frame_length", "length", 19, 21),
        ]
        if f.kind == 0xFA and f.opcode == 0xDB and len(f.data) == 19:
            out += [FieldSpec(nm, c, 21 + a, 21 + b) for nm, c, a, b in _STATUS_DATA]
        elif end_data > 21:
            out.append(FieldSpec("data", "body", 21, end_data))
        out += [
            FieldSpec("checksum", "checksum", n - 2, n - 1),
            FieldSpec("end", "fixed", n - 1, n),
        ]
    elif isinstance(pkt, IdPacket):
        out += [FieldSpec("device_id", "id", 5, 9), FieldSpec("msg_id", "msg", 9, 12)]
        if n > 12:
            cls = "state" if pkt.type == PacketType.STATUS else "body"
            out.append(FieldSpec("body", cls, 12, n))
    elif pkt.type == PacketType.TIME_REPLY and n == 16:
        out.append(FieldSpec("time", "clock", 5, 16))
    elif n > 5:
        out.append(FieldSpec("body", "body", 5, n))
    return out
