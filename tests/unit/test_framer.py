# Tests of replay/framer.py, and of the codec over every shared capture file.
#
# Strategy: small hand-made streams built from real packets pin the framer's behaviour exactly
# (buffering, several packets per call, skipped garbage with offsets and lengths, trailing
# bytes, strict-mode errors and recovery, stream offsets, chunking); the real 1,024 + 740 byte
# split burst checks framing across reads; the last test frames every record of every shared
# capture and checks that each packet decodes, round-trips byte for byte, and that packets
# plus findings account for every byte.
from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

import pytest

from cyncsim.captures import shared_captures_dir
from cyncsim.replay.errors import PacketDecodeError
from cyncsim.replay.framer import FramerFinding, PacketFramer
from cyncsim.replay.protocol import CyncPacket, FramedPacket, GenericPacket, decode_packet
from tests.support import HELLO, PING, PONG, CaptureRecord, capture_path, capture_records


def h(text: str) -> bytes:
    return bytes.fromhex(text)


DATA_ACK = h("7b 00 00 00 07 64 57 e7 f2 00 00 00")
RESULT = h("73 00 00 00 13 64 57 e7 f2 00 05 00 7e 03 00 00 00 f9 d0 01 00 00 d1 7e")
STALE_83 = h(
    "83 00 00 00 25 64 57 e7 f2 02 ff 00 7e 65 65 22 11 fa db 13 00 11 11 11 0b 00 0b 00 db"
    " 11 02 01 00 0d 0a 00 00 00 00 00 29 7e"
)
CRAFTED_30 = h(  # MITM injection: the header says 29 bytes, the record has 30
    "73 00 00 00 18 45 88 0f 3a 00 00 00 00 7e 1f 00 00 00 f8 52 06 00 00 00 ff ff 00 00 56 7e"
)
TLS_HEAD = h("16 03 03 00 8b 01 00 00 87 03 03 a7")  # a ClientHello start: not Cync
CAPTURE_152132 = "capture_20251107_152132.txt"


def frame_all(data: bytes, chunks: list[int] | None = None) -> PacketFramer:
    """A framer fed ``data`` in pieces of the given sizes (then the rest)."""
    framer = PacketFramer()
    pos = 0
    for size in chunks or [len(data)]:
        framer.feed(data[pos : pos + size])
        pos += size
    framer.feed(data[pos:])
    return framer


def test_partial_input_is_kept_across_calls() -> None:
    framer = PacketFramer()
    for i, byte in enumerate(HELLO[:-1]):
        assert framer.feed(bytes((byte,))) == []
        assert framer.buffered == i + 1 and framer.offset == 0
    [pkt] = framer.feed(HELLO[-1:])
    assert pkt.encode() == HELLO and pkt.type == 0x23
    assert framer.buffered == 0 and framer.offset == len(HELLO)
    assert framer.flush() is None and framer.findings == []


def test_several_packets_in_one_feed() -> None:
    # The "36-byte compound reply": a 0x7B and an f9 result in one device write.
    framer = PacketFramer()
    out = framer.feed_with_offsets(DATA_ACK + RESULT + PING[:3])
    assert [(off, p.encode()) for off, p in out] == [(0, DATA_ACK), (12, RESULT)]
    assert framer.buffered == 3 and framer.offset == 36
    assert framer.feed_with_offsets(PING[3:]) == [(36, decode_packet(PING))]
    assert framer.findings == []


def test_garbage_is_skipped_and_reported_with_offsets() -> None:
    stream = TLS_HEAD + HELLO + h("ff ee") + PING
    framer = PacketFramer()
    out = framer.feed_with_offsets(stream)
    assert [(off, p.type) for off, p in out] == [(12, 0x23), (45, 0xD3)]
    assert framer.findings == [
        FramerFinding(0, 12, "not_cync", TLS_HEAD),  # "01 00 00" inside it is not a header
        FramerFinding(43, 2, "not_cync", h("ff ee")),
    ]
    assert framer.flush() is None
    assert framer.findings[1].as_dict() == {
        "offset": 43, "length": 2, "reason": "not_cync", "head": "ffee",
    }  # fmt: skip


def test_garbage_head_is_at_most_16_bytes() -> None:
    junk = bytes(range(0x80, 0xA0))  # 32 bytes, never a header
    framer = frame_all(junk + PING, chunks=[5, 7, 1])
    assert framer.findings == [FramerFinding(0, 32, "not_cync", junk[:16])]


def test_garbage_reported_the_same_in_any_chunking() -> None:
    stream = TLS_HEAD + HELLO + h("ff ee") + PING + h("aa bb cc")
    whole = frame_all(stream)
    whole.flush()
    for size in (1, 2, 3, 5, 13):
        framer = PacketFramer()
        got = []
        for i in range(0, len(stream), size):
            got += framer.feed_with_offsets(stream[i : i + size])
        framer.flush()
        assert got == [(12, decode_packet(HELLO)), (45, decode_packet(PING))]
        assert framer.findings == whole.findings


def test_unknown_type_inside_garbage_does_not_start_a_packet_at_a_chunk_edge() -> None:
    # "01 00 00" after garbage is skipped when fed whole; cut after "aa 01 00" it must be too
    # (a framer that forgot it was skipping read "01 00 00 05 d3" as a 1,496-byte packet).
    stream = h("aa 01 00 00 05") + PING
    for cut in range(1, len(stream)):
        framer = PacketFramer()
        out = framer.feed_with_offsets(stream[:cut]) + framer.feed_with_offsets(stream[cut:])
        assert out == [(5, decode_packet(PING))], cut
        assert framer.flush() is None
        assert framer.findings == [FramerFinding(0, 5, "not_cync", h("aa 01 00 00 05"))]


def test_unknown_type_at_a_packet_boundary_is_a_packet() -> None:
    framer = PacketFramer()
    out = framer.feed(h("11 00 00 00 02 fa db") + PING)
    assert [type(p) for p in out] == [GenericPacket, GenericPacket]
    assert out[0].type == 0x11 and out[0].name == "unknown_0x11"


def test_stray_trailing_byte_reported_by_flush() -> None:
    framer = PacketFramer()
    [pkt] = framer.feed(CRAFTED_30)
    assert isinstance(pkt, FramedPacket) and pkt.defect == "bad_marker"
    assert pkt.encode() == CRAFTED_30[:29] and framer.buffered == 1
    assert framer.findings == []
    finding = framer.flush()
    assert finding == FramerFinding(29, 1, "trailing_partial", h("7e"))
    assert framer.findings == [finding] and framer.buffered == 0 and framer.offset == 30
    assert framer.flush() is None and framer.findings == [finding]


def test_flush_reports_open_garbage_then_the_kept_bytes() -> None:
    framer = PacketFramer()
    assert framer.feed(h("16 03 03 00")) == [] and framer.findings == []
    finding = framer.flush()
    assert framer.findings == [
        FramerFinding(0, 2, "not_cync", h("16 03")),
        FramerFinding(2, 2, "trailing_partial", h("03 00")),
    ]
    assert finding == framer.findings[-1]


def test_strict_framer_raises_then_hands_over_earlier_packets() -> None:
    framer = PacketFramer(strict=True)
    with pytest.raises(PacketDecodeError) as err:
        framer.feed(PING + STALE_83 + PONG)
    exc = err.value
    assert exc.reason == "invalid_checksum"
    assert exc.offset == len(PING) + 40  # the checksum byte, as a stream offset
    assert exc.data == STALE_83
    assert "stream offset 5" in str(exc) and "offset 45" in str(exc)
    # The good packet before the bad one is not lost; the one after it is framed next.
    assert framer.feed_with_offsets(b"") == [(0, decode_packet(PING)), (47, decode_packet(PONG))]
    assert framer.feed_with_offsets(HELLO) == [(52, decode_packet(HELLO))]
    assert framer.findings == [] and framer.offset == 83


def test_strict_framer_bad_marker_offset_in_stream() -> None:
    framer = PacketFramer(strict=True, offset=100)
    with pytest.raises(PacketDecodeError) as err:
        framer.feed(HELLO + CRAFTED_30[:29])
    assert (err.value.reason, err.value.offset) == ("bad_marker", 100 + 31 + 12)
    assert framer.feed(b"") == [decode_packet(HELLO)]


def test_lenient_framer_keeps_bad_packets_flagged() -> None:
    framer = PacketFramer()
    out = framer.feed(PING + STALE_83 + PONG)
    assert [p.defect for p in out] == [None, "invalid_checksum", None]
    assert out[1].checksum_ok is False and out[1].encode() == STALE_83


def test_stream_offsets_with_a_start_offset() -> None:
    framer = PacketFramer(offset=1000)
    assert framer.offset == 1000
    out = framer.feed_with_offsets(PING + h("ff") + PONG[:2])
    out += framer.feed_with_offsets(PONG[2:] + DATA_ACK)
    assert [off for off, _ in out] == [1000, 1006, 1011]
    assert framer.findings == [FramerFinding(1005, 1, "not_cync", h("ff"))]
    assert framer.offset == 1023


def test_feed_accepts_bytearray_and_memoryview() -> None:
    framer = PacketFramer()
    # Typed as bytes; at run time any bytes-like object is copied into bytes.
    out = framer.feed(bytearray(PING)) + framer.feed(memoryview(PONG))  # type: ignore[arg-type]
    assert [p.encode() for p in out] == [PING, PONG]


# ---------------------------------------------------------------- the real split burst


def _records_at(name: str, *stamps: str) -> list[bytes]:
    by_time = {r.timestamp: r.data for r in capture_records(capture_path(name))}
    return [by_time[s] for s in stamps]


@pytest.mark.needs_capture
def test_split_0x83_burst_framed_across_two_reads() -> None:
    first, second = _records_at(
        CAPTURE_152132, "2025-11-07T15:21:34.417458", "2025-11-07T15:21:34.429060"
    )
    assert (len(first), len(second)) == (1024, 740)
    framer = PacketFramer()
    out1 = framer.feed_with_offsets(first)
    assert len(out1) == 24 and framer.buffered == 1024 - 24 * 42 == 16
    out2 = framer.feed_with_offsets(second)
    assert len(out2) == 18 and framer.buffered == 0 and framer.findings == []
    assert framer.flush() is None
    offsets = [off for off, _ in out1 + out2]
    assert offsets == list(range(0, 1764, 42))
    split = out2[0][1]
    assert split.encode() == first[1008:] + second[:26]
    assert isinstance(split, FramedPacket) and split.counter == 0x0316
    packets = [p for _, p in out1 + out2]
    assert all(isinstance(p, FramedPacket) and p.device_id == h("64 57 e7 f2") for p in packets)
    assert [p.defect for p in packets] == [None] + ["invalid_checksum"] * 41
    # The second read alone does not start at a packet boundary.
    alone = PacketFramer()
    rest = alone.feed_with_offsets(second)
    assert alone.findings == [FramerFinding(0, 26, "not_cync", second[:16])]
    assert [p.encode() for _, p in rest] == [p.encode() for p in packets[25:]]


@pytest.mark.needs_capture
def test_split_burst_with_a_strict_framer() -> None:
    first, second = _records_at(
        CAPTURE_152132, "2025-11-07T15:21:34.417458", "2025-11-07T15:21:34.429060"
    )
    framer = PacketFramer(strict=True)
    errors: list[PacketDecodeError] = []

    def feed(data: bytes) -> list[tuple[int, CyncPacket]]:
        # Strict mode: each bad packet raises once; feeding nothing resumes after it.
        try:
            return framer.feed_with_offsets(data)
        except PacketDecodeError as exc:
            errors.append(exc)
            return feed(b"")

    got = feed(first) + feed(second)
    assert [(off, p.checksum_ok) for off, p in got] == [(0, True)]
    assert [e.reason for e in errors] == ["invalid_checksum"] * 41
    assert [e.offset for e in errors] == [42 * i + 40 for i in range(1, 42)]
    assert errors[23].data == first[1008:] + second[:26]  # the packet cut across the reads
    assert framer.buffered == 0 and framer.findings == []


# ------------------------------------------------------------ every shared capture file

KNOWN_CAPTURES = [
    "capture_20251106_081101.txt",
    "capture_20251106_085753.txt",
    "capture_20251107_152132.txt",
]


def _capture_names() -> list[str]:
    found = sorted(p.name for p in shared_captures_dir().glob("capture_*.txt"))
    return sorted(set(KNOWN_CAPTURES) | set(found))


@pytest.mark.needs_capture
@pytest.mark.parametrize("name", _capture_names())
def test_every_capture_decodes_and_round_trips(name: str) -> None:
    path: Path = capture_path(name)
    records = capture_records(path)
    assert records
    with_conn = any(r.conn is not None for r in records)
    streams: dict[object, bytearray] = defaultdict(bytearray)
    framers: dict[object, PacketFramer] = {}
    packets: list[tuple[CaptureRecord, object, int, CyncPacket]] = []
    findings: list[tuple[object, FramerFinding]] = []
    for i, rec in enumerate(records):
        key: object = (rec.conn, rec.direction) if with_conn else i
        framer = framers.setdefault(key, PacketFramer())
        streams[key] += rec.data
        packets += [(rec, key, off, pkt) for off, pkt in framer.feed_with_offsets(rec.data)]
        if not with_conn:
            framer.flush()
    for framer in framers.values():
        framer.flush()
    for key, framer in framers.items():
        findings += [(key, f) for f in framer.findings]

    covered: Counter[object] = Counter()
    for _, key, off, pkt in packets:
        raw = pkt.encode()
        assert bytes(streams[key][off : off + len(raw)]) == raw  # byte-identical round trip
        assert decode_packet(raw, strict=False) == pkt
        if pkt.defect is None:
            assert decode_packet(raw) == pkt
        covered[key] += len(raw)
    for key, f in findings:
        covered[key] += f.length
    assert covered == Counter({k: len(v) for k, v in streams.items() if len(v)})

    defects = Counter((p.type, p.defect) for _, _, _, p in packets if p.defect)
    if name == "capture_20251106_081101.txt":
        # TLS ClientHellos only: no Cync packet, every byte reported.
        assert packets == []
        assert all(r.data[:2] == h("16 03") for r in records)
        assert {f.reason for _, f in findings} <= {"not_cync", "trailing_partial"}
    elif name == "capture_20251106_085753.txt":
        check_085753(records, packets, findings)
    elif name == CAPTURE_152132:
        check_152132(packets, findings)
    else:  # another capture: nothing but known defects
        assert set(defects) <= {(0x83, "invalid_checksum"), (0x73, "bad_marker")}


def check_085753(
    records: list[CaptureRecord],
    packets: list[tuple[CaptureRecord, object, int, CyncPacket]],
    findings: list[tuple[object, FramerFinding]],
) -> None:
    injected = {r.line for r in records if "INJECTED" in r.tags}
    bad = [(rec, p) for rec, _, _, p in packets if p.defect]
    # Exactly the MITM's crafted 0x73 are flagged, every one of them.
    assert {rec.line for rec, _ in bad} == injected and len(bad) == len(injected) > 0
    assert all(p.type == 0x73 and p.defect == "bad_marker" for _, p in bad)
    types = Counter(p.type for _, _, _, p in packets)
    assert types[0x73] == types[0x7B] == types[0x78] == len(injected)
    # The 30-byte injections leave one stray 0x7e each, reported as trailing bytes.
    assert len(findings) == 25
    assert all(f.reason == "trailing_partial" and f.head == h("7e") for _, f in findings)
    for key, _ in findings:  # one framer per record here: the key is the record's index
        assert isinstance(key, int) and records[key].line in injected


def check_152132(
    packets: list[tuple[CaptureRecord, object, int, CyncPacket]],
    findings: list[tuple[object, FramerFinding]],
) -> None:
    assert findings == []
    reports = [(key, p) for _, key, _, p in packets if p.type == 0x83]
    flagged = [(key, p) for key, p in reports if p.defect]
    # Independent check of the checksum rule on the raw bytes (PROTOCOL.md section 7.2).
    stale = [p for _, p in reports if sum(p.encode()[18:-2]) % 256 != p.encode()[-2]]
    assert [p for _, p in flagged] == stale
    assert len(flagged) == 104  # all relayed statuses of the strip bridge's bursts
    assert all(p.defect == "invalid_checksum" and p.checksum_ok is False for _, p in flagged)
    assert {p.device_id for _, p in flagged} == {h("64 57 e7 f2")}  # type: ignore[attr-defined]
    # Each stale checksum is the checksum of the last good 0x83 on the same connection.
    last_good: dict[object, int] = {}
    for key, p in reports:
        assert isinstance(p, FramedPacket) and p.frame is not None
        if p.defect is None:
            last_good[key] = p.frame.checksum or 0
        else:
            assert p.frame.checksum == last_good[key]
    assert all(p.defect in (None, "invalid_checksum") for _, _, _, p in packets)
