# The state of one TCP connection being reassembled (capture/tcp.py holds the logic): per
# direction the sequence numbers, held out-of-order bytes and delivered history; per
# connection the two directions, the flow once the device side is known, and the events held
# until then.  Connections are keyed by their raw 4-tuple bytes (tcp.tuple_key).
from __future__ import annotations

import ipaddress
import struct

from cyncsim.replay.capture.model import FlowBuilder, Sender

__all__ = ["PORTS", "Conn", "Dir", "Event", "addr"]

PORTS = struct.Struct(">HH")  # the ports after the addresses in a 4-tuple key


def _split_key(key: bytes) -> tuple[str, int, str, int]:
    alen = (len(key) - 4) // 2
    src = str(ipaddress.ip_address(key[:alen]))
    dst = str(ipaddress.ip_address(key[alen : 2 * alen]))
    sport, dport = PORTS.unpack_from(key, 2 * alen)
    return src, sport, dst, dport


def addr(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


class Dir:
    """One direction of a connection: sequence state, held bytes, delivered history."""

    __slots__ = (
        "ack",
        "addr",
        "builder",
        "conn",
        "fin_off",
        "hist",
        "next",
        "off",
        "peer",
        "pend_bytes",
        "pend_data",
        "pend_start",
        "port",
        "rst_off",
        "sender",
        "syn",
        "tail",
    )

    def __init__(self, conn: Conn, addr: str, port: int) -> None:
        self.conn = conn
        self.addr = addr
        self.port = port
        self.peer: Dir = self
        self.sender: Sender | None = None
        self.builder: FlowBuilder | None = None
        self.next: int | None = None  # 32-bit sequence number of the next in-order byte
        self.off = 0  # stream offset of that byte
        self.syn: int | None = None  # sequence number of this side's SYN
        self.ack: int | None = None  # last acknowledgement number this side sent
        self.fin_off: int | None = None
        self.rst_off: int | None = None
        self.pend_start: list[int] = []  # out-of-order bytes: sorted, non-overlapping
        self.pend_data: list[bytes] = []
        self.pend_bytes = 0
        self.hist = bytearray()  # the last delivered bytes, ending at ``off``
        self.tail = b""  # last 4 delivered bytes, to find a hello split over segments


# A held event: (direction, ts, data, offset, length, reason, detail); data is None for a
# gap (reason "") or a finding (reason set).
Event = tuple[Dir, float, bytes | None, int, int, str, str]


class Conn:
    __slots__ = (
        "a",
        "b",
        "client",
        "done",
        "empty",
        "events",
        "flow",
        "held",
        "keys",
        "n",
        "notes",
        "quiet",
        "sig",
    )

    def __init__(self, key: bytes, rkey: bytes, n: int) -> None:
        src, sport, dst, dport = _split_key(key)
        self.keys = (key, rkey)
        self.n = n
        self.a = Dir(self, src, sport)
        self.b = Dir(self, dst, dport)
        self.a.peer = self.b
        self.b.peer = self.a
        self.client: Dir | None = None  # the side that sent the SYN
        self.done = False
        self.flow: FlowBuilder | None = None
        self.events: list[Event] = []  # held until the device side is known
        self.held = 0
        self.notes = 0
        self.empty = False  # finished without a payload byte or a note
        self.sig: tuple[int | None, ...] = ()  # progress as seen by the last sweep
        self.quiet = 0.0  # capture time since when ``sig`` has not changed
