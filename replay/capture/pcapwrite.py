# A small, fast pcap / pcapng writer: Ethernet (or other link) / IPv4 or IPv6 / TCP frames.
#
# Strategy: every header is one struct.Struct, packed directly (no scapy, no dpkt objects),
# so tests, the simulator's ``--record`` and benchmarks can turn an application-level
# exchange into a valid capture quickly.  Checksums use the "a big-endian number modulo
# 0xFFFF is the ones'-complement sum of its 16-bit words" identity, so they cost one
# int.from_bytes.  TcpConversation keeps sequence and acknowledgement numbers of both sides;
# ``segment`` writes any segment at any stream offset, for hostile captures.
from __future__ import annotations

import ipaddress
import random
import struct
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal, NamedTuple

from cyncsim.replay.protocol import FramedPacket, GenericPacket, HelloPacket, IdPacket, InnerFrame

__all__ = [
    "ACK",
    "FIN",
    "PSH",
    "RST",
    "SYN",
    "Frame",
    "Interface",
    "PcapWriter",
    "TcpConversation",
    "generate_benchmark_pcap",
    "internet_checksum",
    "ip_packet",
    "link_frame",
    "tcp_frame",
    "tcp_packet",
    "udp_packet",
    "write_pcap",
    "write_pcapng",
]

FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10

_IP4 = struct.Struct(">BBHHHBBH4s4s")  # ver/ihl, tos, total, id, flags/frag, ttl, proto, csum
_IP6 = struct.Struct(">IHBB16s16s")  # ver/class/label, payload length, next header, hops
_TCP = struct.Struct(">HHIIHHHH")  # ports, seq, ack, offset/flags, window, csum, urgent
_UDP = struct.Struct(">HHHH")
_PCAP_HDR = ">IHHiIII"  # magic, version 2.4, thiszone, sigfigs, snaplen, linktype
_PCAP_REC = "IIII"  # ts seconds, ts fraction, captured length, original length
_DEFAULT_SNAPLEN = 262144
_MAC_A = bytes.fromhex("020000000001")
_MAC_B = bytes.fromhex("020000000002")

Dest = str | Path | BinaryIO


class Frame(NamedTuple):
    """One captured frame: ``origlen`` > len(data) means the snap length cut it."""

    ts: float
    data: bytes
    origlen: int | None = None
    interface: int = 0


@dataclass(frozen=True, slots=True)
class Interface:
    """A pcapng interface: link type and timestamp resolution (10**-tsresol seconds)."""

    linktype: int = 1
    tsresol: int = 6
    snaplen: int = _DEFAULT_SNAPLEN
    tsoffset: int = 0


def internet_checksum(data: bytes, initial: int = 0) -> int:
    """RFC 1071 checksum of ``data`` (plus an already summed ``initial`` part)."""
    if len(data) & 1:
        data += b"\0"
    total = int.from_bytes(data, "big") + initial
    if not total:
        return 0xFFFF
    folded = total % 0xFFFF
    return 0 if folded == 0 else 0xFFFF - folded


def _packed(ip: str) -> bytes:
    return ipaddress.ip_address(ip).packed


def _ip_raw(a: bytes, b: bytes, proto: int, payload: bytes, ident: int = 0) -> bytes:
    if len(a) == 4:
        head = _IP4.pack(0x45, 0, 20 + len(payload), ident & 0xFFFF, 0x4000, 64, proto, 0, a, b)
        csum = internet_checksum(head)
        return head[:10] + csum.to_bytes(2, "big") + head[12:] + payload
    return _IP6.pack(0x60000000, len(payload), proto, 64, a, b) + payload


def ip_packet(src: str, dst: str, proto: int, payload: bytes, *, ident: int = 0) -> bytes:
    """An IPv4 or IPv6 packet (chosen by the addresses) carrying ``payload``."""
    a, b = _packed(src), _packed(dst)
    if len(a) != len(b):
        raise ValueError(f"mixed address families: {src} and {dst}")
    return _ip_raw(a, b, proto, payload, ident)


def _tcp_raw(
    a: bytes,
    b: bytes,
    ports: tuple[int, int],
    seq: int,
    ack: int,
    flags: int,
    payload: bytes,
    window: int,
    checksum: bool,
    ident: int,
) -> bytes:
    head = _TCP.pack(
        ports[0], ports[1], seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, 0x5000 | flags, window, 0, 0
    )
    segment = head + payload
    if checksum:
        pseudo = int.from_bytes(a + b, "big") + 6 + len(segment)
        csum = internet_checksum(segment, pseudo)
        segment = head[:16] + csum.to_bytes(2, "big") + head[18:] + payload
    return _ip_raw(a, b, 6, segment, ident)


def tcp_packet(
    src: tuple[str, int],
    dst: tuple[str, int],
    seq: int,
    ack: int,
    flags: int,
    payload: bytes = b"",
    *,
    window: int = 65535,
    checksum: bool = True,
    ident: int = 0,
) -> bytes:
    """An IP packet with one TCP segment (20-byte TCP header, no options)."""
    a, b = _packed(src[0]), _packed(dst[0])
    if len(a) != len(b):
        raise ValueError(f"mixed address families: {src[0]} and {dst[0]}")
    return _tcp_raw(a, b, (src[1], dst[1]), seq, ack, flags, payload, window, checksum, ident)


def udp_packet(src: tuple[str, int], dst: tuple[str, int], payload: bytes) -> bytes:
    """An IP packet with one UDP datagram (checksum left zero)."""
    return ip_packet(src[0], dst[0], 17, _UDP.pack(src[1], dst[1], 8 + len(payload), 0) + payload)


def link_frame(packet: bytes, linktype: int = 1, *, vlan: tuple[int, ...] = ()) -> bytes:
    """Wrap an IP packet in the link-layer header of ``linktype``.

    1 Ethernet (``vlan`` adds 802.1Q tags), 113 Linux SLL, 276 Linux SLL2, 0 BSD null
    (little-endian family), 101/12/14/228/229 raw IP.
    """
    v6 = packet[0] >> 4 == 6
    ethertype = 0x86DD if v6 else 0x0800
    if linktype == 1:
        tags = b"".join(struct.pack(">HH", 0x8100, tag) for tag in vlan)
        return _MAC_B + _MAC_A + tags + struct.pack(">H", ethertype) + packet
    if linktype == 113:
        return struct.pack(">HHH8sH", 0, 1, 6, _MAC_A + b"\0\0", ethertype) + packet
    if linktype == 276:
        return struct.pack(">HHIHBB8s", ethertype, 0, 2, 1, 0, 6, _MAC_A + b"\0\0") + packet
    if linktype == 0:
        return struct.pack("<I", 30 if v6 else 2) + packet
    if linktype in (101, 12, 14, 228, 229):
        return packet
    raise ValueError(f"no link-layer builder for link type {linktype}")


def tcp_frame(
    src: tuple[str, int],
    dst: tuple[str, int],
    seq: int,
    ack: int,
    flags: int,
    payload: bytes = b"",
    *,
    linktype: int = 1,
    checksum: bool = True,
) -> bytes:
    """Link header + IP + TCP, ready for a capture file."""
    return link_frame(tcp_packet(src, dst, seq, ack, flags, payload, checksum=checksum), linktype)


def _as_frame(f: Frame | tuple[float, bytes]) -> Frame:
    return f if isinstance(f, Frame) else Frame(f[0], f[1])


@contextmanager
def _open(dest: Dest) -> Iterator[BinaryIO]:
    if isinstance(dest, (str, Path)):
        with open(dest, "wb") as fh:
            yield fh
    else:
        yield dest


class PcapWriter:
    """Incremental classic-pcap writer (for recording live traffic frame by frame)."""

    def __init__(
        self,
        fh: BinaryIO,
        *,
        linktype: int = 1,
        nanosecond: bool = False,
        big_endian: bool = False,
        snaplen: int = _DEFAULT_SNAPLEN,
    ) -> None:
        order = ">" if big_endian else "<"
        self._fh = fh
        self._units = 1_000_000_000 if nanosecond else 1_000_000
        self._rec = struct.Struct(order + _PCAP_REC)
        magic = 0xA1B23C4D if nanosecond else 0xA1B2C3D4
        fh.write(struct.pack(order + _PCAP_HDR[1:], magic, 2, 4, 0, 0, snaplen, linktype))
        self.count = 0

    def record(self, frame: Frame | tuple[float, bytes]) -> bytes:
        """The bytes of one record (header + frame)."""
        f = _as_frame(frame)
        sec = int(f.ts // 1)
        frac = round((f.ts - sec) * self._units)
        if frac >= self._units:
            sec, frac = sec + 1, frac - self._units
        orig = len(f.data) if f.origlen is None else f.origlen
        return self._rec.pack(sec, frac, len(f.data), orig) + f.data

    def write(self, frame: Frame | tuple[float, bytes]) -> None:
        self._fh.write(self.record(frame))
        self.count += 1


def write_pcap(
    dest: Dest,
    frames: Iterable[Frame | tuple[float, bytes]],
    *,
    linktype: int = 1,
    nanosecond: bool = False,
    big_endian: bool = False,
    snaplen: int = _DEFAULT_SNAPLEN,
) -> int:
    """Write a classic pcap file; returns the number of frames written."""
    with _open(dest) as fh:
        w = PcapWriter(
            fh, linktype=linktype, nanosecond=nanosecond, big_endian=big_endian, snaplen=snaplen
        )
        records = [w.record(f) for f in frames]
        fh.write(b"".join(records))
    return len(records)


def _pcapng_block(order: str, btype: int, body: bytes) -> bytes:
    body += b"\0" * (-len(body) % 4)
    n = len(body) + 12
    return struct.pack(order + "II", btype, n) + body + struct.pack(order + "I", n)


def write_pcapng(
    dest: Dest,
    frames: Iterable[Frame | tuple[float, bytes]],
    *,
    interfaces: Iterable[Interface] = (Interface(),),
    big_endian: bool = False,
) -> int:
    """Write a pcapng file (one section); ``Frame.interface`` picks the interface."""
    order = ">" if big_endian else "<"
    ifaces = list(interfaces)
    shb = struct.pack(order + "IHHq", 0x1A2B3C4D, 1, 0, -1)
    parts = [_pcapng_block(order, 0x0A0D0D0A, shb)]
    for itf in ifaces:
        opts = struct.pack(order + "HHB3x", 9, 1, itf.tsresol)
        if itf.tsoffset:
            opts += struct.pack(order + "HHq", 14, 8, itf.tsoffset)
        body = struct.pack(order + "HHI", itf.linktype, 0, itf.snaplen) + opts + b"\0" * 4
        parts.append(_pcapng_block(order, 1, body))
    units = [2 ** (i.tsresol & 0x7F) if i.tsresol & 0x80 else 10**i.tsresol for i in ifaces]
    epb = struct.Struct(order + "IIIII")
    count = 0
    for f in map(_as_frame, frames):
        unit = units[f.interface]
        sec = int(f.ts // 1) - ifaces[f.interface].tsoffset
        stamp = sec * unit + round((f.ts - int(f.ts // 1)) * unit)
        orig = len(f.data) if f.origlen is None else f.origlen
        body = epb.pack(f.interface, stamp >> 32, stamp & 0xFFFFFFFF, len(f.data), orig)
        parts.append(_pcapng_block(order, 6, body + f.data))
        count += 1
    with _open(dest) as fh:
        fh.write(b"".join(parts))
    return count


Side = Literal["client", "server"]


class TcpConversation:
    """Builds the frames of one TCP connection with consistent seq/ack numbers.

    ``handshake`` / ``send`` / ``close`` give a well-behaved connection; ``segment`` writes
    one segment at any stream offset (reordering, retransmission, overlaps) without
    moving the conversation's own counters.
    """

    def __init__(
        self,
        client: tuple[str, int],
        server: tuple[str, int],
        *,
        isn_client: int = 1000,
        isn_server: int = 500_000,
        mss: int = 1460,
        linktype: int = 1,
        checksum: bool = True,
        interface: int = 0,
    ) -> None:
        self.ends: dict[Side, tuple[str, int]] = {"client": client, "server": server}
        self._raw: dict[Side, bytes] = {"client": _packed(client[0]), "server": _packed(server[0])}
        if len(self._raw["client"]) != len(self._raw["server"]):
            raise ValueError(f"mixed address families: {client[0]} and {server[0]}")
        self.isn: dict[Side, int] = {"client": isn_client, "server": isn_server}
        self.sent: dict[Side, int] = {"client": 0, "server": 0}  # stream bytes sent
        self.mss = mss
        self.linktype = linktype
        self.checksum = checksum
        self.interface = interface
        self._fin: dict[Side, bool] = {"client": False, "server": False}

    @staticmethod
    def _other(side: Side) -> Side:
        return "server" if side == "client" else "client"

    def seq_at(self, side: Side, offset: int) -> int:
        """Sequence number of stream byte ``offset`` of ``side`` (wraps at 2**32)."""
        return (self.isn[side] + 1 + offset) & 0xFFFFFFFF

    def _ack(self, side: Side) -> int:
        peer = self._other(side)
        return self.seq_at(peer, self.sent[peer] + (1 if self._fin[peer] else 0))

    def segment(
        self,
        ts: float,
        side: Side,
        payload: bytes = b"",
        *,
        offset: int | None = None,
        flags: int = ACK | PSH,
        snap: int | None = None,
    ) -> Frame:
        """One segment from ``side`` carrying ``payload`` at stream ``offset``.

        ``snap`` keeps only the first ``snap`` bytes of the frame, as a capture with that
        snap length would (the frame's original length is still recorded).
        """
        off = self.sent[side] if offset is None else offset
        peer = self._other(side)
        data = _tcp_raw(
            self._raw[side],
            self._raw[peer],
            (self.ends[side][1], self.ends[peer][1]),
            self.seq_at(side, off),
            self._ack(side) if flags & ACK else 0,
            flags,
            payload,
            65535,
            self.checksum,
            0,
        )
        frame = link_frame(data, self.linktype)
        if snap is not None and snap < len(frame):
            return Frame(ts, frame[:snap], len(frame), self.interface)
        return Frame(ts, frame, None, self.interface)

    def handshake(self, ts: float, gap: float = 0.0001) -> list[Frame]:
        """SYN, SYN+ACK, ACK."""
        syn = self.segment(ts, "client", flags=SYN, offset=-1)
        synack = self.segment(ts + gap, "server", flags=SYN | ACK, offset=-1)
        last = self.segment(ts + 2 * gap, "client", flags=ACK)
        return [syn, synack, last]

    def send(self, ts: float, side: Side, payload: bytes) -> list[Frame]:
        """Payload from ``side`` in MSS-sized segments; advances that side's counter."""
        out = []
        for i in range(0, len(payload), self.mss):
            chunk = payload[i : i + self.mss]
            out.append(self.segment(ts, side, chunk))
            self.sent[side] += len(chunk)
        return out

    def ack(self, ts: float, side: Side) -> Frame:
        """A pure ACK from ``side`` for everything the peer sent."""
        return self.segment(ts, side, b"", flags=ACK)

    def close(self, ts: float, side: Side = "client", gap: float = 0.0001) -> list[Frame]:
        """FIN from ``side``, FIN+ACK from the peer, final ACK."""
        peer = self._other(side)
        first = self.segment(ts, side, flags=FIN | ACK)
        self._fin[side] = True
        second = self.segment(ts + gap, peer, flags=FIN | ACK)
        self._fin[peer] = True
        third = self.segment(ts + 2 * gap, side, flags=ACK, offset=self.sent[side] + 1)
        return [first, second, third]

    def reset(self, ts: float, side: Side) -> Frame:
        return self.segment(ts, side, flags=RST | ACK)

    @classmethod
    def exchange(
        cls,
        client: tuple[str, int],
        server: tuple[str, int],
        items: Iterable[tuple[float, Side, bytes]],
        **kw: Any,
    ) -> list[Frame]:
        """Handshake, then each (ts, side, payload) in order, then FIN: a whole connection."""
        conv = cls(client, server, **kw)
        items = list(items)
        start = items[0][0] - 0.001 if items else 0.0
        frames = conv.handshake(start)
        ts = start
        for ts, side, payload in items:
            frames += conv.send(ts, side, payload)
        frames += conv.close(ts + 0.001)
        return frames


def _bench_packets(
    rng: random.Random, dev: bytes, counters: list[int]
) -> list[tuple[Side, bytes, int]]:
    """One realistic exchange for the benchmark generator: (side, payload, packets in it)."""
    roll = rng.random()
    if roll < 0.45:
        return [("client", b"\xd3\0\0\0\0", 1), ("server", b"\xd8\0\0\0\0", 1)]
    if roll < 0.75:
        counters[0] = (counters[0] + 1) & 0xFFFF
        mid = counters[0].to_bytes(2, "big") + b"\0"
        node = rng.randrange(256)
        state = bytes([node, 0, node, 0]) + b"\xdb\x11\x02\x01\x01"
        data = b"\x00\x11\x11\x11" + state + bytes([rng.randrange(101)]) + b"\x0a\0\0\0\0"
        frame = InnerFrame(bytes([counters[0] & 0xFF, 0x65, 0x22, 0x11]), 0xFA, 0xDB, data)
        report = FramedPacket(0x83, device_id=dev, msg_id=mid, frame=frame).encode()
        return [("client", report, 1), ("server", b"\x88\0\0\0\x03" + mid, 1)]
    if roll < 0.9:
        counters[1] = (counters[1] + 1) & 0xFF
        seq = bytes([counters[1], 0, 0, 0])
        node = rng.randrange(256)
        cmd = InnerFrame(
            seq,
            0xF8,
            0xD0,
            bytes([0, counters[1], 0, 0, 0, 0, node, 0, 0xD0, 0x11, 2, rng.randrange(2), 0, 0]),
        )
        command = FramedPacket(0x73, device_id=dev, msg_id=b"\0\0\0", frame=cmd).encode()
        ack = IdPacket(0x7B, device_id=dev, msg_id=b"\0\0\0").encode()
        counters[2] = (counters[2] + 1) & 0xFFFF
        res = InnerFrame(seq, 0xF9, 0xD0, b"\0")
        result = FramedPacket(
            0x73, device_id=dev, msg_id=counters[2].to_bytes(2, "big") + b"\0", frame=res
        ).encode()
        return [("server", command, 1), ("client", ack + result, 2)]
    state = bytes([rng.randrange(256), 1, rng.randrange(101)])
    entry = b"\x05\x00\x10" + state + b"\x0a\xff\xff\xff\x01\x00\x2c" + bytes(6)
    status = IdPacket(0x43, device_id=dev, msg_id=b"\x01\x01\x06", payload=entry).encode()
    ack48 = GenericPacket(0x48, payload=b"\x01\x01\x00").encode()
    return [("client", status, 1), ("server", ack48, 1)]


def generate_benchmark_pcap(
    dest: Dest, segments: int = 200_000, connections: int = 20, seed: int = 0
) -> dict[str, int]:
    """A pcap of ``connections`` interleaved Cync connections, about ``segments`` segments.

    Device -> cloud traffic like the real captures: hello / 0x28, then pings, 0x83 reports
    with 0x88 acks, 0x73 commands with 0x7B + f9 results, 0x43 status with 0x48, and a pure
    ACK now and then.  Returns counts: segments, data_segments, packets, payload_bytes.
    """
    rng = random.Random(seed)
    convs: list[TcpConversation] = []
    devs: list[bytes] = []
    frames: list[Frame] = []
    ts = 1_762_528_893.0
    stats = {"segments": 0, "data_segments": 0, "packets": 0, "payload_bytes": 0}
    for i in range(connections):
        conv = TcpConversation(
            (f"10.0.{i // 250}.{i % 250 + 2}", 40000 + i),
            ("10.0.0.1", 23779),
            isn_client=rng.getrandbits(32),
            isn_server=rng.getrandbits(32),
            checksum=False,
        )
        dev = rng.getrandbits(32).to_bytes(4, "big")
        convs.append(conv)
        devs.append(dev)
        frames += conv.handshake(ts)
        hello = HelloPacket(0x23, device_id=dev, auth_code=b"1e07d%011x" % rng.getrandbits(40))
        frames += conv.send(ts + 0.001, "client", hello.encode())
        frames += conv.send(ts + 0.002, "server", b"\x28\0\0\0\x02\0\0")
        stats["packets"] += 2
        stats["payload_bytes"] += 38
        ts += 0.01
    counters = [[0, 0, 0] for _ in range(connections)]
    budget = segments - 3 * connections
    while len(frames) < budget:
        i = rng.randrange(connections)
        conv = convs[i]
        for side, payload, count in _bench_packets(rng, devs[i], counters[i]):
            ts += rng.random() * 0.002
            frames += conv.send(ts, side, payload)
            stats["payload_bytes"] += len(payload)
            stats["packets"] += count
            if rng.random() < 0.25:
                frames.append(conv.ack(ts + 0.0002, "server" if side == "client" else "client"))
    for conv in convs:
        ts += 0.001
        frames += conv.close(ts)
    stats["segments"] = len(frames)
    stats["data_segments"] = stats["segments"] - sum(1 for f in frames if len(f.data) == 54)
    write_pcap(dest, frames)
    return stats
