"""Real capture payloads through hostile TCP segmentation, written by scapy, read back.

The payload bytes of capture_20251107_152132.txt (split into connections by [conn:N] id and
re-anchored on each new 0x23 hello, since the ids are reused) become TCP connections in one
pcap and one pcapng written by scapy (an independent writer): records cut into pieces,
merged with their neighbours, reordered, duplicated, retransmitted with partial overlaps, a
subset cut into 1-byte segments; connections with a full handshake and FIN, with a RST, or
starting mid-stream; IPv4 and IPv6, some with a VLAN tag; 4-tuples reused by later
connections.  Reading the files back must give, per connection and direction, exactly the
packets and framer findings that decoding the text records directly gives.
"""

from __future__ import annotations

import random
import re
from bisect import bisect_left
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pytest

from cyncsim.replay.capture.model import CaptureResult
from cyncsim.replay.capture.pcap import read_pcap
from cyncsim.replay.framer import PacketFramer
from tests.support import capture_path

CAPTURE = "capture_20251107_152132.txt"
HELLO = b"\x23\x00\x00\x00\x1a"
SERVER4, SERVER6 = "10.0.0.1", "fd00::1"
CLOUD_PORT = 23779
ONE_BYTE_BUDGET = 1200  # payload bytes sent as 1-byte segments
_RECORD = re.compile(
    r"^(\S+) (DEV→CLOUD|CLOUD→DEV) \[([^\]]*)\] \((\d+) bytes\)\n([0-9a-f ]*)\n", re.M
)


@dataclass
class Conn:
    tag: str
    records: list[tuple[float, str, bytes]] = field(default_factory=list)  # ts, side, data
    hello: bool = False
    client: tuple[str, int] = ("", 0)
    flow_id: str = ""


def parse_text_capture(path: Path) -> list[Conn]:
    """Records grouped into connections: [conn:N] id, re-anchored on a repeated hello."""
    text = path.read_text(encoding="utf-8")
    conns: list[Conn] = []
    current: dict[str, Conn] = {}
    count = 0
    for stamp, direction, tags, size, hexdata in _RECORD.findall(text):
        count += 1
        data = bytes.fromhex(hexdata)
        assert len(data) == int(size)
        ts = datetime.fromisoformat(stamp).timestamp()
        side = "client" if direction == "DEV→CLOUD" else "server"
        tag = next(t for t in tags.split() if t.startswith("conn:"))
        conn = current.get(tag)
        is_hello = side == "client" and HELLO in data
        if conn is None or (is_hello and conn.hello):
            conn = current[tag] = Conn(tag)
            conns.append(conn)
        conn.records.append((ts, side, data))
        conn.hello = conn.hello or is_hello
    assert count == text.count(" bytes)\n")  # every record parsed
    return conns


def expected(conn: Conn, side: str) -> tuple[list[bytes], list[tuple[str, int, int]]]:
    """Packets and findings from framing the records directly (the reference)."""
    framer = PacketFramer()
    pkts: list[bytes] = []
    notes: list[tuple[str, int, int]] = []
    for _, s, data in conn.records:
        if s != side:
            continue
        for off, pkt in framer.feed_with_offsets(data):
            pkts.append(pkt.encode())
            if pkt.defect is not None:
                notes.append((f"defect:{pkt.defect}", off, len(pkt)))
    framer.flush()
    notes += [(f.reason, f.offset, f.length) for f in framer.findings]
    return pkts, sorted(notes)


# -- building the hostile capture ------------------------------------------------------------


@dataclass
class Seg:
    ts: float
    src: tuple[str, int]
    dst: tuple[str, int]
    seq: int
    ack: int
    flags: str
    payload: bytes = b""
    vlan: int | None = None


def hostile_pieces(
    rng: random.Random,
    stream_records: list[tuple[float, bytes]],
    one_byte: bool,
    fixed_first: bool,
    stats: Counter[str],
) -> list[tuple[float, int, bytes]]:
    """(ts, stream offset, bytes) segments covering the stream, in a hostile order."""
    pieces: list[tuple[float, int, bytes]] = []
    off = 0
    i = 0
    while i < len(stream_records):
        ts, data = stream_records[i]
        # several records (several packets) in one segment
        while i + 1 < len(stream_records) and rng.random() < 0.35:
            stats["merged_records"] += 1
            i += 1
            ts, more = stream_records[i]
            data += more
        if one_byte:
            cuts = list(range(1, len(data)))
        elif len(data) > 1 and rng.random() < 0.2:
            cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randint(1, 2))))
        else:
            cuts = []
        for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True):
            pieces.append((ts, off + a, data[a:b]))
        off += len(data)
        i += 1
    stream = b"".join(d for _, d in stream_records)
    # reorder: shuffle small windows (the first piece stays first when there is no SYN)
    start = 1 if fixed_first else 0
    k = start
    while k < len(pieces):
        width = rng.choice((1, 2, 3, 4))
        window = pieces[k : k + width]
        rng.shuffle(window)
        pieces[k : k + width] = window
        k += width
    # retransmissions: exact duplicates and partial overlaps, placed later in the stream
    out: list[tuple[float, int, bytes]] = []
    for n, piece in enumerate(pieces):
        out.append(piece)
        if n < start:
            continue
        roll = rng.random()
        if roll < 0.08:
            stats["duplicates"] += 1
            out.append(piece)
        elif roll < 0.16 and len(stream) > 1:
            stats["overlaps"] += 1
            a = max(0, piece[1] - rng.randint(1, 20))
            b = min(len(stream), piece[1] + len(piece[2]) + rng.randint(1, 20))
            out.append((piece[0], a, stream[a:b]))
    high = 0
    for _, off, data in out:
        stats["reordered"] += off > high
        high = max(high, off + len(data))
    stats["one_byte"] += sum(len(d) == 1 for _, _, d in out)
    # capture times in slot order, so sorting the file by time keeps this hostile order
    times = sorted(t for t, _, _ in out)
    return [(t, off, data) for t, (_, off, data) in zip(times, out, strict=True)]


def _host(idx: int, ipv6: bool) -> str:
    if ipv6:
        return f"fd00::1:{idx:x}"
    return f"10.{1 + idx // 60000}.{idx // 250 % 240}.{idx % 250 + 2}"


class _Acks:
    """Acknowledgement numbers: what the peer had sent before a time (never more)."""

    def __init__(self, conn: Conn, isn: dict[str, int]) -> None:
        self.isn = isn
        self.times: dict[str, list[float]] = {"client": [], "server": []}
        self.totals: dict[str, list[int]] = {"client": [0], "server": [0]}
        for ts, side, data in sorted(conn.records, key=lambda r: r[0]):
            self.times[side].append(ts)
            self.totals[side].append(self.totals[side][-1] + len(data))

    def __call__(self, side: str, ts: float) -> int:
        peer = "server" if side == "client" else "client"
        sent = self.totals[peer][bisect_left(self.times[peer], ts)]
        return (self.isn[peer] + 1 + sent) % 2**32


def build_segments(conns: list[Conn], seed: int, stats: Counter[str]) -> list[Seg]:
    rng = random.Random(seed)
    segs: list[Seg] = []
    one_byte_left = ONE_BYTE_BUDGET
    last_end: dict[str, tuple[tuple[str, int], float]] = {}
    counts: dict[tuple[str, int], int] = {}
    for idx, conn in enumerate(conns):
        vlan = 42 if idx % 7 == 3 else None
        roll = rng.random()
        style = "fin" if roll < 0.15 else "rst" if roll < 0.25 else "mid"
        first_ts, last_ts = conn.records[0][0], conn.records[-1][0]
        prev = last_end.get(conn.tag)
        if style != "mid" and prev is not None and prev[1] < first_ts - 0.01:
            client = prev[0]  # reuse the 4-tuple of the connection this id had before
            stats["reused_4tuple"] += 1
        else:
            client = (_host(idx, idx % 5 == 4), 20000 + idx % 40000)
        server = (SERVER6 if ":" in client[0] else SERVER4, CLOUD_PORT)
        n = counts[client] = counts.get(client, 0) + 1
        stats[style] += 1
        stats["ipv6"] += ":" in client[0]
        stats["vlan"] += vlan is not None
        conn.client = client
        if ":" in client[0]:
            conn.flow_id = f"[{client[0]}]:{client[1]}>[{server[0]}]:{CLOUD_PORT}#{n}"
        else:
            conn.flow_id = f"{client[0]}:{client[1]}>{server[0]}:{CLOUD_PORT}#{n}"
        isn = {
            "client": rng.choice((rng.getrandbits(32), 2**32 - rng.randint(1, 300))),
            "server": rng.getrandbits(32),
        }
        acked = _Acks(conn, isn)
        ends = {"client": (client, server), "server": (server, client)}
        sent = {"client": 0, "server": 0}
        if style != "mid":
            c, s = client, server
            synack = (isn["client"] + 1) % 2**32
            segs.append(Seg(first_ts - 0.0003, c, s, isn["client"], 0, "S", vlan=vlan))
            segs.append(Seg(first_ts - 0.0002, s, c, isn["server"], synack, "SA", vlan=vlan))
        for side in ("client", "server"):
            records = [(ts, d) for ts, sd, d in conn.records if sd == side]
            if not records:
                continue
            size = sum(len(d) for _, d in records)
            one_byte = size <= one_byte_left and rng.random() < 0.3
            if one_byte:
                one_byte_left -= size
            src, dst = ends[side]
            for ts, off, data in hostile_pieces(rng, records, one_byte, style == "mid", stats):
                seq = (isn[side] + 1 + off) % 2**32
                segs.append(Seg(ts, src, dst, seq, acked(side, ts), "PA", data, vlan))
            sent[side] = size
        end_ts = last_ts + 0.0001
        closers = {"fin": ("client", "server"), "rst": ("server",), "mid": ()}[style]
        for side in closers:
            src, dst = ends[side]
            seq = (isn[side] + 1 + sent[side]) % 2**32
            flags = "FA" if style == "fin" else "RA"
            segs.append(Seg(end_ts, src, dst, seq, acked(side, end_ts + 1), flags, vlan=vlan))
            end_ts += 0.0001
        last_end[conn.tag] = (client, end_ts)
    segs.sort(key=lambda s: s.ts)  # stable: each connection keeps its hostile order
    return segs


def write_with_scapy(segs: list[Seg], pcap: Path, pcapng: Path) -> None:
    from scapy.layers.inet import IP, TCP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import Dot1Q, Ether
    from scapy.packet import Raw
    from scapy.utils import RawPcapNgWriter, RawPcapWriter

    raws: list[tuple[float, bytes]] = []
    built: dict[tuple[object, ...], bytes] = {}  # exact retransmissions: same bytes
    for s in segs:
        key = (s.src, s.dst, s.seq, s.ack, s.flags, s.payload, s.vlan)
        if key in built:
            raws.append((s.ts, built[key]))
            continue
        eth = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
        if s.vlan is not None:
            eth = eth / Dot1Q(vlan=s.vlan)
        ip = IPv6(src=s.src[0], dst=s.dst[0]) if ":" in s.src[0] else IP(src=s.src[0], dst=s.dst[0])
        tcp = TCP(sport=s.src[1], dport=s.dst[1], seq=s.seq, ack=s.ack, flags=s.flags)
        pkt = eth / ip / tcp / Raw(s.payload) if s.payload else eth / ip / tcp
        raws.append((s.ts, built.setdefault(key, bytes(pkt))))
    w = RawPcapWriter(str(pcap), linktype=1, nano=True)
    w.write_header(None)
    for ts, raw in raws:
        sec = int(ts)
        w.write_packet(raw, sec=sec, usec=round((ts - sec) * 1e9))
    w.close()
    ng = RawPcapNgWriter(str(pcapng))
    ng.linktype = 1
    ng.write_header(None)
    for ts, raw in raws:
        ng.write_packet(raw, sec=ts)
    ng.close()


# -- the test --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hostile_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Conn], Path, Path]:
    conns = parse_text_capture(capture_path(CAPTURE))
    stats: Counter[str] = Counter()
    segs = build_segments(conns, 20251107, stats)
    # the capture really is hostile: every kind of abuse occurs many times
    for what in ("merged_records", "duplicates", "overlaps", "reordered", "one_byte"):
        assert stats[what] > 100, (what, stats)
    for what in ("reused_4tuple", "fin", "rst", "mid", "ipv6", "vlan"):
        assert stats[what] > 10, (what, stats)
    out = tmp_path_factory.mktemp("hostile")
    pcap, pcapng = out / "hostile.pcap", out / "hostile.pcapng"
    write_with_scapy(segs, pcap, pcapng)
    return conns, pcap, pcapng


def check(result: CaptureResult, conns: list[Conn]) -> None:
    flows = {f.id: f for f in result.flows}
    assert len(flows) == len(conns)
    assert set(flows) == {c.flow_id for c in conns}
    by_flow: dict[tuple[str, str | None], list[tuple[str, int, int]]] = {}
    for f in result.findings:
        by_flow.setdefault((f.flow, f.sender), []).append((f.reason, f.offset, f.length))
    assert set(by_flow) <= {(c.flow_id, s) for c in conns for s in ("device", "cloud")}
    total = 0
    for conn in conns:
        flow = flows[conn.flow_id]
        assert flow.endpoints is not None and flow.endpoints[1].endswith(f":{CLOUD_PORT}")
        for side, sender in (("client", "device"), ("server", "cloud")):
            want_pkts, want_notes = expected(conn, side)
            got = [fp.packet.encode() for fp in flow.packets if fp.sender == sender]
            assert got == want_pkts, (conn.flow_id, sender)
            got_notes = sorted(by_flow.get((conn.flow_id, sender), []))
            assert got_notes == want_notes, (conn.flow_id, sender)
            size = sum(len(d) for _, s, d in conn.records if s == side)
            assert flow.bytes_seen[sender] == size
            total += len(got)
    assert total > 2500  # the whole capture went through


@pytest.mark.needs_capture
def test_hostile_pcap_gives_the_same_packets_as_the_text_capture(
    hostile_files: tuple[list[Conn], Path, Path],
) -> None:
    conns, pcap, _ = hostile_files
    check(read_pcap(str(pcap)), conns)


@pytest.mark.needs_capture
def test_hostile_pcapng_gives_the_same_packets_as_the_text_capture(
    hostile_files: tuple[list[Conn], Path, Path],
) -> None:
    conns, _, pcapng = hostile_files
    check(read_pcap(str(pcapng)), conns)
