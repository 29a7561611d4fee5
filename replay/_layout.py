# Every wire layout of the protocol, declared once as a field table.
#
# Strategy (dpkt's ``__hdr__``, scapy's ``fields_desc``): a layout is a table of rows
# (name, struct code, role), and everything else is derived from the table once, at import: the
# ``struct.Struct`` the codec packs and unpacks with, each field's offset and size, and slices
# for code that reads bytes of an encoded packet.  ``start`` places a layout in the packet: an
# offset from the first byte, or, when negative, from the last (the frame tail); ``Field.pos``
# is the offset inside the layout's own bytes (for code that holds only those bytes, such as a
# frame's data).  The role is the field's class for template learning (model/layout.py): fixed,
# length, id, msg, seq, checksum, state, tick, clock, auth, body.  Offsets follow PROTOCOL.md
# sections 2, 4, 5, 6 and 7.
from __future__ import annotations

import builtins
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import pairwise

__all__ = [
    "ACK_BODY",
    "FIRMWARE_DATA",
    "FRAME_HEAD",
    "FRAME_TAIL",
    "HEADER",
    "HELLO_BODY",
    "ID_PREFIX",
    "LIGHT_DATA",
    "POWER_DATA",
    "STATUS_DATA",
    "STATUS_ENTRY",
    "TIME_BODY",
    "Field",
    "Layout",
]

_ORDERLESS = frozenset("xcbB?s")  # struct codes whose bytes do not depend on the byte order


@dataclass(frozen=True, slots=True)
class Field:
    """One row of a layout, placed: ``offset`` in the packet (negative: from its end)."""

    name: str
    code: str  # struct code, e.g. "B", "H", "4s"
    role: str  # field class for template learning
    pos: int  # offset inside the layout
    offset: int  # offset in the packet; negative counts from the end
    size: int

    @property
    def end(self) -> int:
        return self.offset + self.size

    # ``builtins.slice``: inside the class, ``slice`` names the property below.
    @property
    def slice(self) -> builtins.slice:
        """The field's bytes in an encoded packet."""
        end = self.end
        return slice(self.offset, None if end == 0 else end)

    @property
    def local(self) -> builtins.slice:
        """The field's bytes in the layout's own bytes (e.g. a frame's data)."""
        return slice(self.pos, self.pos + self.size)


class Layout:
    """A field table with its derived ``struct.Struct``, offsets and sizes."""

    __slots__ = (
        "_by_name",
        "fields",
        "format",
        "name",
        "order",
        "pack",
        "size",
        "start",
        "struct",
        "unpack",
        "unpack_from",
    )

    def __init__(
        self, name: str, order: str, rows: Sequence[tuple[str, str, str]], *, start: int = 0
    ) -> None:
        if order not in "<>":
            raise ValueError(f"layout {name}: byte order must be '<' or '>', not {order!r}")
        self.name = name
        self.order = order
        self.struct = struct.Struct(order + "".join(code for _, code, _ in rows))
        self.size = self.struct.size
        self.format = self.struct.format
        self.start = start
        self.pack = self.struct.pack
        self.unpack = self.struct.unpack
        self.unpack_from = self.struct.unpack_from
        fields: list[Field] = []
        pos = 0
        for fname, code, role in rows:
            size = struct.calcsize(order + code)
            fields.append(Field(fname, code, role, pos, start + pos, size))
            pos += size
        if pos != self.size:  # "<" and ">" never pad, so this holds unless a code is wrong
            raise ValueError(f"layout {name}: fields cover {pos} bytes, the struct {self.size}")
        if start < 0 and start + pos != 0:
            raise ValueError(f"layout {name}: a layout placed from the end must reach it")
        self.fields: tuple[Field, ...] = tuple(fields)
        self._by_name = {f.name: f for f in fields}
        if len(self._by_name) != len(fields):
            raise ValueError(f"layout {name}: two fields share a name")

    @classmethod
    def at_end(cls, name: str, order: str, rows: Sequence[tuple[str, str, str]]) -> Layout:
        """A layout that ends the packet (its offsets count from the last byte)."""
        return cls(name, order, rows, start=-struct.calcsize(order + "".join(r[1] for r in rows)))

    @classmethod
    def join(cls, name: str, *parts: Layout) -> Layout:
        """Adjacent layouts as one (one unpack for all their fields)."""
        orders = {p.order for p in parts if not set(_codes(p)) <= _ORDERLESS}
        if len(orders) > 1:
            raise ValueError(f"layout {name}: parts with different byte orders")
        for a, b in pairwise(parts):
            if a.start + a.size != b.start:
                raise ValueError(f"layout {name}: {a.name} and {b.name} are not adjacent")
        rows = [(f.name, f.code, f.role) for p in parts for f in p.fields]
        return cls(name, orders.pop() if orders else parts[0].order, rows, start=parts[0].start)

    @property
    def end(self) -> int:
        """Offset in the packet just past the layout."""
        return self.start + self.size

    @property
    def span(self) -> slice:
        """The layout's bytes in an encoded packet."""
        return slice(self.start, None if self.end == 0 else self.end)

    def __getitem__(self, name: str) -> Field:
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"layout {self.name} has no field {name!r}") from None

    def __iter__(self) -> Iterator[Field]:
        return iter(self.fields)

    def __repr__(self) -> str:
        return f"Layout({self.name!r}, {self.format!r}, start={self.start})"


def _codes(layout: Layout) -> list[str]:
    return [f.code.lstrip("0123456789") for f in layout.fields]


# -- the outer packet (PROTOCOL.md sections 2 and 2.1) --------------------------------------

HEADER = Layout(
    "header",
    ">",
    [
        ("type", "B", "fixed"),
        ("reserved", "H", "fixed"),  # always zero
        ("length", "H", "length"),  # bytes after the header
    ],
)
ID_PREFIX = Layout(  # 0x43, 0x73, 0x78, 0x7B, 0x83, 0xA3, 0xAB
    "id_prefix",
    ">",
    [
        ("device_id", "4s", "id"),
        ("msg_id", "3s", "msg"),  # sender's counter (BE16), then one byte
    ],
    start=HEADER.end,
)
HELLO_BODY = Layout(  # 0x23 (section 4.1)
    "hello",
    ">",
    [
        ("version", "B", "fixed"),
        ("device_id", "4s", "id"),
        ("pad", "B", "fixed"),
        ("auth_len", "B", "fixed"),
        ("auth", "16s", "auth"),
        ("tail", "3s", "fixed"),
    ],
    start=HEADER.end,
)
ACK_BODY = Layout("ack", ">", [("msg_id", "3s", "msg")], start=HEADER.end)  # 0x88
TIME_BODY = Layout(  # 0xC8 (section 4.3)
    "time",
    ">",
    [
        ("marker", "B", "clock"),  # 0x0d
        ("year", "H", "clock"),
        ("month", "B", "clock"),
        ("day", "B", "clock"),
        ("weekday", "B", "clock"),  # Sunday = 1 ... Saturday = 7
        ("hour", "B", "clock"),
        ("minute", "B", "clock"),
        ("second", "B", "clock"),
        ("utc_offset", "h", "clock"),  # +-hhmm
    ],
    start=HEADER.end,
)
STATUS_ENTRY = Layout(  # one 19-byte entry of a 0x43 (section 5); the first one starts here
    "status_entry",
    ">",
    [
        ("index", "B", "state"),
        ("flags", "H", "fixed"),  # 0x0010
        ("node", "B", "state"),
        ("on", "B", "state"),
        ("brightness", "B", "state"),
        ("color_temp", "B", "state"),
        ("rgb", "3s", "state"),
        ("fresh", "B", "state"),
        ("relay", "B", "state"),
        ("bridge", "B", "state"),
        ("zeros", "6s", "fixed"),
    ],
    start=ID_PREFIX.end,
)

# -- the 0x7E inner frame of 0x73 and 0x83 (section 7.1) -----------------------------------

FRAME_HEAD = Layout(
    "frame_head",
    "<",
    [
        ("marker", "B", "fixed"),  # 0x7e (0x00 in a 0x83 firmware report)
        ("seq", "4s", "seq"),
        ("kind", "B", "fixed"),
        ("opcode", "B", "fixed"),
        ("frame_length", "H", "length"),  # data bytes that follow, LE16
    ],
    start=ID_PREFIX.end,
)
FRAME_TAIL = Layout.at_end(
    "frame_tail",
    "<",
    [
        ("checksum", "B", "checksum"),
        ("end", "B", "fixed"),  # 0x7e
    ],
)

# -- frame data (offsets in the packet; ``pos`` in the frame's data) -------------------------

STATUS_DATA = Layout(  # fa db 13: one mesh node's state, in a 0x83 (section 6)
    "status",
    "<",
    [
        ("tick", "2s", "tick"),
        ("flag", "B", "fixed"),
        ("node", "H", "state"),
        ("node2", "H", "state"),
        ("op", "3s", "fixed"),  # db 11 02
        ("connected", "B", "state"),
        ("on", "B", "state"),
        ("brightness", "B", "state"),
        ("color_temp", "B", "state"),
        ("rgb", "3s", "state"),
        ("tail", "2s", "fixed"),
    ],
    start=FRAME_HEAD.end,
)
POWER_DATA = Layout(  # f8 d0 (section 7.5)
    "power",
    "<",
    [
        ("ctr", "B", "seq"),
        ("zeros", "4s", "fixed"),
        ("target", "H", "state"),  # mesh node, or 0x8000 + group
        ("op", "3s", "fixed"),  # d0 11 02
        ("state", "B", "state"),
        ("tail", "2s", "fixed"),
    ],
    start=FRAME_HEAD.end,
)
LIGHT_DATA = Layout(  # f8 f0 (section 7.5)
    "light",
    "<",
    [
        ("ctr", "B", "seq"),
        ("zeros", "4s", "fixed"),
        ("target", "H", "state"),
        ("op", "3s", "fixed"),  # f0 11 02
        ("mode", "B", "state"),
        ("brightness", "B", "state"),
        ("color_temp", "B", "state"),
        ("rgb", "3s", "state"),
    ],
    start=FRAME_HEAD.end,
)
FIRMWARE_DATA = Layout(  # fa 00: 0x83 firmware report (section 6)
    "firmware",
    "<",
    [
        ("info", "13s", "body"),
        ("which", "B", "state"),  # 01 device, 00 network firmware
        ("version", "18s", "body"),  # ASCII digits up to the first 00
    ],
    start=FRAME_HEAD.end,
)
