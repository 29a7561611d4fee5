# Cync packet codec: outer header, ID prefix, inner 0x7E frame, checksum, encode/decode.
#
# Strategy: every wire layout is declared once, as a field table in ``_layout.py``, from which
# the struct.Struct, offsets and sizes used here are derived (exported from this module); a
# table from packet type to decoder class picks the layout.  A decoded packet keeps every byte
# it was made from in typed fields (including a stored checksum and the marker bytes), so
# ``encode()`` rebuilds the exact input; encoders that build a packet from fields leave
# ``checksum=None`` and get it computed.  There is no byte escaping (PROTOCOL.md section 7.3):
# frame boundaries come only from the outer length, and the inner frame sits at fixed offsets
# (packet byte 12).
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from enum import IntEnum
from typing import ClassVar

from cyncsim.replay._layout import (
    ACK_BODY,
    FIRMWARE_DATA,
    FRAME_HEAD,
    FRAME_TAIL,
    HEADER,
    HELLO_BODY,
    ID_PREFIX,
    LIGHT_DATA,
    POWER_DATA,
    STATUS_DATA,
    STATUS_ENTRY,
    TIME_BODY,
    Field,
    Layout,
)
from cyncsim.replay.errors import PacketDecodeError

__all__ = [
    "ACK_BODY",
    "DEVICE_ID",
    "EXCHANGE_KEY",
    "FIRMWARE_DATA",
    "FRAME_HEAD",
    "FRAME_MARKER",
    "FRAME_TAIL",
    "HEADER",
    "HEADER_LEN",
    "HELLO_BODY",
    "ID_PREFIX",
    "LIGHT_DATA",
    "MSG_ID",
    "POWER_DATA",
    "STATUS_DATA",
    "STATUS_ENTRY",
    "TIME_BODY",
    "AckPacket",
    "CyncPacket",
    "Field",
    "FrameKind",
    "FramedPacket",
    "GenericPacket",
    "HelloPacket",
    "IdPacket",
    "InnerFrame",
    "Layout",
    "PacketType",
    "decode_packet",
    "exchange_key",
    "frame_checksum",
    "packet_name",
]


class PacketType(IntEnum):
    """Outer packet types seen on the device <-> cloud connection (PROTOCOL.md section 3)."""

    HELLO = 0x23
    HELLO_ACK = 0x28
    STATUS = 0x43
    STATUS_ACK = 0x48
    DATA = 0x73
    DATA_REJECT = 0x78
    DATA_ACK = 0x7B
    REPORT = 0x83
    REPORT_ACK = 0x88
    CONTROL = 0xA3
    CONTROL_ACK = 0xAB
    TIME_REQUEST = 0xC3
    TIME_REPLY = 0xC8
    PING = 0xD3
    PONG = 0xD8


class FrameKind(IntEnum):
    """Direction/kind byte of the inner frame."""

    REQUEST = 0xF8  # command from the cloud
    RESULT = 0xF9  # device's reply to a command
    REPORT = 0xFA  # unsolicited device report


HEADER_LEN = HEADER.size
FRAME_MARKER = 0x7E
FIRMWARE_MARKER = 0x00  # 0x83 firmware reports carry 0x00 where the first 0x7E would be
# The exchange key (PROTOCOL.md section 8): device id + message id, right after the header.
# An ack echoes it, so it pairs a 0x73/0x83/0xA3 with its 0x7B/0x88/0xAB.
EXCHANGE_KEY = ID_PREFIX.span
DEVICE_ID = ID_PREFIX["device_id"].slice  # of an ID-bearing packet (the 0x23 has its own)
MSG_ID = ID_PREFIX["msg_id"].slice


def exchange_key(data: bytes | bytearray | memoryview) -> bytes:
    """The exchange key of an encoded packet (bytes 5-11; shorter when the packet is)."""
    return bytes(data[EXCHANGE_KEY])


# 0x73/0x83 body: the ID prefix then the frame head, in one unpack.
_FRAMED_HEAD = Layout.join("framed_head", ID_PREFIX, FRAME_HEAD)
_FRAME_OVERHEAD = FRAME_HEAD.size + FRAME_TAIL.size
_FRAMED_MIN = ID_PREFIX.size + _FRAME_OVERHEAD  # smallest 0x73/0x83 body with a whole frame
# Offsets the decoders use, from the tables.  In a packet body (the bytes after the header):
_BODY_DEVICE_ID = ID_PREFIX["device_id"].local
_BODY_MSG_ID = ID_PREFIX["msg_id"].local
_BODY_AFTER_ID = slice(ID_PREFIX.size, None)
_FRAME_IN_BODY = FRAME_HEAD.start - HEADER_LEN
_DATA_IN_BODY = _FRAMED_HEAD.end - HEADER_LEN
_unpack_header = HEADER.unpack_from
_unpack_framed_head = _FRAMED_HEAD.unpack_from
# In an inner frame (the bytes from its first marker):
_FRAME_LENGTH_AT = FRAME_HEAD["frame_length"].pos
_CHECKSUM_AT = FRAME_TAIL["checksum"].offset  # negative: from the end
_END_AT = FRAME_TAIL["end"].offset
_LENGTH_OFFSET = HEADER["length"].offset  # where a "does not fit" error points
_AUTH_LEN_OFFSET = HELLO_BODY["auth_len"].offset
_SHORT_PREFIX = f"shorter than the {ID_PREFIX.end}-byte prefix"
_new = object.__new__  # see "decoding" below
_REPORT = 0x83  # PacketType.REPORT as a plain int: an enum attribute lookup costs ~0.1 us
# Body sizes of the packets that have exactly one: from their layouts, and for the packets
# with a constant body (PROTOCOL.md section 3), their length.
_FIXED_SIZES: dict[int, int] = {
    0x23: HELLO_BODY.size,
    0x28: 2,
    0x48: 3,
    0x78: ID_PREFIX.size,
    0x7B: ID_PREFIX.size,
    0x88: ACK_BODY.size,
    0xA3: ID_PREFIX.size,
    0xC3: 1,
    0xC8: TIME_BODY.size,
    0xD3: 0,
    0xD8: 0,
}


def packet_name(ptype: int) -> str:
    try:
        return PacketType(ptype).name.lower()
    except ValueError:
        return f"unknown_0x{ptype:02x}"


def frame_checksum(opcode: int, length_le: bytes, data: bytes) -> int:
    """Checksum of an inner frame: sum of opcode, the two length bytes and the data, mod 256."""
    return (opcode + length_le[0] + length_le[1] + sum(data)) & 0xFF


@dataclass(slots=True, eq=False)
class InnerFrame:
    """The 0x7E-framed message inside a 0x73 or 0x83 (PROTOCOL.md section 7.1).

    Two frames are equal when they encode to the same bytes: ``checksum=None`` (computed on
    encode) equals the explicit correct checksum, so a built frame equals its own decode.
    """

    seq: bytes
    kind: int
    opcode: int
    data: bytes
    checksum: int | None = None  # None: computed on encode
    marker: int = FRAME_MARKER
    end_marker: int = FRAME_MARKER

    @property
    def seq_byte(self) -> int:
        """The first sequence byte: the command counter copied into f9 results."""
        return self.seq[0]

    def expected_checksum(self) -> int:
        n = len(self.data)
        return (self.opcode + (n & 0xFF) + (n >> 8) + sum(self.data)) & 0xFF

    @property
    def checksum_ok(self) -> bool:
        return self.checksum is None or self.checksum == self.expected_checksum()

    def _key(self) -> tuple[bytes, int, int, bytes, int, int, int]:
        cs = self.expected_checksum() if self.checksum is None else self.checksum
        return (
            bytes(self.seq),
            self.kind,
            self.opcode,
            bytes(self.data),
            cs,
            self.marker,
            self.end_marker,
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, InnerFrame):
            return NotImplemented
        return self._key() == other._key()

    __hash__ = None  # type: ignore[assignment]  # mutable, like any eq dataclass

    def encode(self) -> bytes:
        cs = self.expected_checksum() if self.checksum is None else self.checksum
        head = FRAME_HEAD.pack(self.marker, self.seq, self.kind, self.opcode, len(self.data))
        return head + self.data + FRAME_TAIL.pack(cs, self.end_marker)

    @classmethod
    def decode(cls, body: bytes, offset: int, *, firmware_marker: bool = True) -> InnerFrame:
        """Decode a frame from ``body``; ``offset`` is where ``body`` starts in the packet.

        ``firmware_marker`` accepts 0x00 as the first marker (the 0x83 firmware report form);
        a 0x73 always starts its frame with 0x7e.
        """
        return _decode_frame(body, 0, offset, firmware_marker)


def _decode_frame(buf: bytes, start: int, offset: int, firmware_marker: bool) -> InnerFrame:
    """The frame that fills ``buf[start:]`` (no copy of the frame bytes is made first)."""
    size = len(buf) - start
    if size < _FRAME_OVERHEAD:
        raise PacketDecodeError(
            "too_short", f"inner frame shorter than {_FRAME_OVERHEAD} bytes", offset=offset
        )
    marker, seq, kind, opcode, length = FRAME_HEAD.unpack_from(buf, start)
    if marker != FRAME_MARKER and not (firmware_marker and marker == FIRMWARE_MARKER):
        raise PacketDecodeError(
            "bad_marker", f"inner frame starts with 0x{marker:02x}, not 0x7e", offset=offset
        )
    end_marker = buf[_END_AT]
    if end_marker != FRAME_MARKER:
        raise PacketDecodeError(
            "bad_marker",
            f"inner frame ends with 0x{end_marker:02x}, not 0x7e",
            offset=offset + size + _END_AT,
        )
    if _FRAME_OVERHEAD + length != size:
        raise PacketDecodeError(
            "length_mismatch",
            f"inner length {length} does not fit a {size}-byte frame",
            offset=offset + _FRAME_LENGTH_AT,
        )
    data_start = start + FRAME_HEAD.size
    end = data_start + length
    frame = _new(InnerFrame)
    frame.seq = seq
    frame.kind = kind
    frame.opcode = opcode
    frame.data = buf[data_start:end]
    frame.checksum = buf[end]
    frame.marker = marker
    frame.end_marker = end_marker
    return frame


@dataclass(slots=True)
class CyncPacket:
    """Base of every decoded packet.  ``encode()`` gives the bytes back."""

    type: int
    reserved: int = field(default=0, kw_only=True)  # bytes 1-2, zero in every real packet
    defect: str | None = field(default=None, kw_only=True)  # set only by non-strict decoding

    has_frame: ClassVar[bool] = False

    @property
    def name(self) -> str:
        return packet_name(self.type)

    @property
    def checksum_ok(self) -> bool | None:
        """None for packets that carry no checksum."""
        return None

    def body(self) -> bytes:
        raise NotImplementedError

    def encode(self) -> bytes:
        body = self.body()
        return HEADER.pack(self.type, self.reserved, len(body)) + body

    def __len__(self) -> int:
        return HEADER_LEN + len(self.body())


@dataclass(slots=True)
class GenericPacket(CyncPacket):
    """A packet with no further structure (0x28, 0xC3, 0xD3, 0xD8, 0x48, 0xC8, unknown types)."""

    payload: bytes = b""

    def body(self) -> bytes:
        return self.payload


@dataclass(slots=True)
class AckPacket(CyncPacket):
    """0x88: acknowledges a 0x83 by echoing its 3-byte message id."""

    msg_id: bytes = b"\0\0\0"

    def body(self) -> bytes:
        return self.msg_id


@dataclass(slots=True)
class HelloPacket(CyncPacket):
    """0x23 hello: device id and 16-character auth code (PROTOCOL.md section 4.1)."""

    device_id: bytes = b"\0\0\0\0"
    auth_code: bytes = b"0" * 16
    version: int = 0x03
    pad: int = 0x00
    tail: bytes = b"\x00\x00\x3c"

    def body(self) -> bytes:
        return HELLO_BODY.pack(
            self.version, self.device_id, self.pad, len(self.auth_code), self.auth_code, self.tail
        )


@dataclass(slots=True)
class IdPacket(CyncPacket):
    """Packets with the 12-byte prefix: 0x43, 0x78, 0x7B, 0xA3, 0xAB (and base of 0x73/0x83)."""

    device_id: bytes = b"\0\0\0\0"
    msg_id: bytes = b"\0\0\0"
    payload: bytes = b""

    @property
    def counter(self) -> int:
        """Sender's counter: message id bytes 0-1, big-endian."""
        return (self.msg_id[0] << 8) | self.msg_id[1]

    def body(self) -> bytes:
        return self.device_id + self.msg_id + self.payload


@dataclass(slots=True)
class FramedPacket(IdPacket):
    """0x73 data channel and 0x83 report: ID prefix, then an inner frame at packet byte 12.

    ``frame`` is None only for a non-strict decode of a packet whose frame is malformed
    (``defect`` names why); ``payload`` then holds the raw bytes after the prefix.
    """

    frame: InnerFrame | None = None

    has_frame: ClassVar[bool] = True

    @property
    def checksum_ok(self) -> bool | None:
        return None if self.frame is None else self.frame.checksum_ok

    @property
    def kind(self) -> int | None:
        return None if self.frame is None else self.frame.kind

    @property
    def opcode(self) -> int | None:
        return None if self.frame is None else self.frame.opcode

    def body(self) -> bytes:
        inner = self.payload if self.frame is None else self.frame.encode()
        return self.device_id + self.msg_id + inner


# -- decoding ------------------------------------------------------------------------------
# Decoded packets (and frames) are built with ``object.__new__`` and direct slot stores: the
# dataclass ``__init__`` (keyword-only fields) costs several times more, and a capture import
# builds one packet per few payload bytes.  ``_check_fast_build`` below fails at import time if
# a field is added to a class without being set here.


def _generic(ptype: int, body: bytes, defect: str | None = None) -> GenericPacket:
    pkt = _new(GenericPacket)
    pkt.type = ptype
    pkt.reserved = 0
    pkt.defect = defect
    pkt.payload = body
    return pkt


def _decode_generic(ptype: int, body: bytes, strict: bool) -> CyncPacket:
    pkt = _new(GenericPacket)  # _generic(ptype, body), one call fewer: pings are half the traffic
    pkt.type = ptype
    pkt.reserved = 0
    pkt.defect = None
    pkt.payload = body
    return pkt


def _decode_ack(ptype: int, body: bytes, strict: bool) -> CyncPacket:
    pkt = _new(AckPacket)
    pkt.type = ptype
    pkt.reserved = 0
    pkt.defect = None
    pkt.msg_id = body
    return pkt


def _decode_hello(ptype: int, body: bytes, strict: bool) -> CyncPacket:
    version, dev, pad, alen, auth, tail = HELLO_BODY.unpack(body)
    if alen != len(auth):
        why = f"auth length byte {alen} is not {len(auth)}"
        return _layout_error(ptype, body, strict, why, _AUTH_LEN_OFFSET)
    return HelloPacket(ptype, device_id=dev, auth_code=auth, version=version, pad=pad, tail=tail)


def _decode_id(ptype: int, body: bytes, strict: bool) -> CyncPacket:
    if len(body) < ID_PREFIX.size:
        return _layout_error(ptype, body, strict, _SHORT_PREFIX, _LENGTH_OFFSET)
    pkt = _new(IdPacket)
    pkt.type = ptype
    pkt.reserved = 0
    pkt.defect = None
    pkt.device_id = body[_BODY_DEVICE_ID]
    pkt.msg_id = body[_BODY_MSG_ID]
    pkt.payload = body[_BODY_AFTER_ID]
    return pkt


def _decode_framed(ptype: int, body: bytes, strict: bool) -> CyncPacket:
    size = len(body)
    if size < ID_PREFIX.size:
        return _layout_error(ptype, body, strict, _SHORT_PREFIX, _LENGTH_OFFSET)
    frame = None
    if size >= _FRAMED_MIN:
        # One unpack for the prefix and the frame head; a well-formed frame (the usual case)
        # is built right here, anything else goes to _decode_frame, which names the problem.
        dev, mid, marker, seq, kind, opcode, length = _unpack_framed_head(body)
        if (
            length + _FRAMED_MIN == size
            and body[_END_AT] == FRAME_MARKER
            and (marker == FRAME_MARKER or (marker == FIRMWARE_MARKER and ptype == _REPORT))
        ):
            end = size + _CHECKSUM_AT
            data = body[_DATA_IN_BODY:end]
            checksum = body[end]
            frame = _new(InnerFrame)
            frame.seq = seq
            frame.kind = kind
            frame.opcode = opcode
            frame.data = data
            frame.checksum = checksum
            frame.marker = marker
            frame.end_marker = FRAME_MARKER
    pkt = _new(FramedPacket)
    pkt.type = ptype
    pkt.reserved = 0
    if frame is None:
        dev = body[_BODY_DEVICE_ID]
        mid = body[_BODY_MSG_ID]
        try:
            frame = _decode_frame(body, _FRAME_IN_BODY, FRAME_HEAD.start, ptype == _REPORT)
        except PacketDecodeError as exc:
            if strict:
                raise
            pkt.device_id = dev
            pkt.msg_id = mid
            pkt.payload = body[_BODY_AFTER_ID]
            pkt.frame = None
            pkt.defect = exc.reason
            return pkt
        data, opcode, checksum = frame.data, frame.opcode, body[_CHECKSUM_AT]
    n = len(data)
    expected = (opcode + (n & 0xFF) + (n >> 8) + sum(data)) & 0xFF
    if checksum != expected:
        if strict:
            raise PacketDecodeError(
                "invalid_checksum",
                f"inner checksum 0x{checksum:02x}, expected 0x{expected:02x}",
                offset=HEADER_LEN + size + _CHECKSUM_AT,
            )
        pkt.defect = "invalid_checksum"
    else:
        pkt.defect = None
    pkt.device_id = dev
    pkt.msg_id = mid
    pkt.payload = b""
    pkt.frame = frame
    return pkt


def _layout_error(ptype: int, body: bytes, strict: bool, why: str, offset: int) -> CyncPacket:
    # ``offset``: the length field for a size that does not fit, else the offending byte.
    if strict:
        raise PacketDecodeError(
            "bad_layout", f"0x{ptype:02x} body does not fit its layout: {why}", offset=offset
        )
    return _generic(ptype, body, "bad_layout")


_Decoder = Callable[[int, bytes, bool], CyncPacket]
_DECODERS: dict[int, _Decoder] = {
    0x23: _decode_hello,
    0x43: _decode_id,
    0x73: _decode_framed,
    0x78: _decode_id,
    0x7B: _decode_id,
    0x83: _decode_framed,
    0x88: _decode_ack,
    0xA3: _decode_id,
    0xAB: _decode_id,
}
# type -> (body size, or -1 for any; decoder): one lookup per packet on the hot path.
_TABLE: dict[int, tuple[int, _Decoder]] = {
    t: (_FIXED_SIZES.get(t, -1), _DECODERS.get(t, _decode_generic))
    for t in set(_DECODERS) | set(_FIXED_SIZES)
}


def decode_body(ptype: int, body: bytes, strict: bool) -> CyncPacket:
    """Decode the body of a packet whose 5-byte header was already checked.

    For framers, which find the header themselves: bytes 1-2 are zero and ``body`` is exactly
    as long as the header says.  Error offsets count from the start of the packet.
    """
    entry = _TABLE.get(ptype)
    if entry is None:
        return _generic(ptype, body)
    size, decoder = entry
    if size >= 0 and size != len(body):
        why = f"{len(body)} bytes, expected {size}"
        return _layout_error(ptype, body, strict, why, _LENGTH_OFFSET)
    return decoder(ptype, body, strict)


def decode_packet(data: bytes, *, strict: bool = True) -> CyncPacket:
    """Decode exactly one packet.

    Raises PacketDecodeError when ``data`` is not one whole packet.  With ``strict=False`` a
    packet whose inner frame or layout is wrong is still returned, with ``defect`` set and
    (for a bad checksum) ``checksum_ok`` False, so no real packet is lost.
    """
    data = bytes(data)
    n = len(data)
    if n < HEADER_LEN:
        raise PacketDecodeError("too_short", f"{n} bytes, a header needs {HEADER_LEN}", data=data)
    ptype, reserved, length = _unpack_header(data)
    if reserved != 0:
        r = HEADER["reserved"]
        raise PacketDecodeError(
            "bad_header",
            f"bytes {r.offset}-{r.end - 1} are 0x{reserved:04x}, not zero",
            offset=r.offset,
            data=data,
        )
    if HEADER_LEN + length != n:
        raise PacketDecodeError(
            "length_mismatch",
            f"header says {length} bytes follow, {n - HEADER_LEN} do",
            offset=_LENGTH_OFFSET,
            data=data,
        )
    try:
        return decode_body(ptype, data[HEADER_LEN:], strict)
    except PacketDecodeError as exc:
        if not exc.data:
            exc.data = data  # the whole offending packet, for the report
        raise


def _check_fast_build() -> None:
    """The direct builders above set every field of the classes they build."""
    built = {
        GenericPacket: _generic(0, b""),
        AckPacket: _decode_ack(0x88, b"\0\0\0", True),
        IdPacket: _decode_id(0x43, bytes(7), True),
        FramedPacket: _decode_framed(0x73, bytes(7) + b"\x7e" + bytes(8) + b"\x00\x7e", True),
        InnerFrame: _decode_frame(b"\x7e" + bytes(8) + b"\x00\x7e", 0, 0, False),
    }
    for cls, obj in built.items():
        missing = [f.name for f in fields(cls) if not hasattr(obj, f.name)]
        if missing:
            raise TypeError(f"protocol.py builds {cls.__name__} without {missing}")


_check_fast_build()
