"""Live capture streams (replay.capture.stream): any chunking reads as the whole file does.

The stream reader and the whole-file readers share their record walkers; these tests feed
captures of every format cut in every way (whole, 1-byte chunks, fixed sizes, cuts chosen by
hypothesis) and check the same packets per flow, the same findings and the same summary as
``read_pcap`` / ``read_text`` give for the whole file, and the same errors with the same
offsets.  Then what only a stream has: packets out before the end, lying lengths refused
without buffering, ended and idle connections finished (their state dropped) mid-stream.
"""

from __future__ import annotations

import io
import random
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cyncsim.replay.capture.model import CaptureResult, Finding, Flow, FlowPacket
from cyncsim.replay.capture.pcap import read_pcap
from cyncsim.replay.capture.pcapwrite import (
    Frame,
    Interface,
    PcapWriter,
    TcpConversation,
    link_frame,
    udp_packet,
    write_pcap,
    write_pcapng,
)
from cyncsim.replay.capture.stream import CaptureStream
from cyncsim.replay.capture.text import read_text
from cyncsim.replay.errors import CaptureError
from tests.support import CLIENT_HELLO, HELLO, HELLO_ACK, PING, PONG, REPORT, capture_path

SRV4, SRV6 = ("10.0.0.1", 23779), ("fd00::1", 23779)
T0 = 1_762_528_893.25


def _exchange(t: float) -> list[tuple[float, str, bytes]]:
    return [
        (t, "client", HELLO),
        (t + 0.01, "server", HELLO_ACK),
        (t + 0.5, "client", PING + REPORT[:20]),  # a packet split over two segments
        (t + 0.51, "client", REPORT[20:]),
        (t + 0.6, "server", PONG + b"\x01\x02\x03"),  # then bytes that are no Cync packet
    ]


def messy_frames() -> list[Frame]:
    """Connections of every kind a reader meets, interleaved as a capture would have them."""
    frames: list[Frame] = []
    frames += TcpConversation.exchange(("10.0.0.5", 50123), SRV4, _exchange(T0))  # type: ignore[arg-type]
    frames += TcpConversation.exchange(("fd00::5", 50124), SRV6, _exchange(T0 + 1))  # type: ignore[arg-type]
    # out of order and retransmitted segments
    late = TcpConversation.exchange(("10.0.0.6", 50125), SRV4, _exchange(T0 + 2))  # type: ignore[arg-type]
    late[4], late[5] = late[5], late[4]
    frames += [*late, late[6]]
    tls = TcpConversation(("10.0.0.7", 50126), SRV4)
    frames += tls.handshake(T0 + 3) + tls.send(T0 + 3.1, "client", CLIENT_HELLO)
    frames += TcpConversation(("10.0.0.8", 50127), SRV4).handshake(T0 + 4)  # no payload
    udp = udp_packet(("10.0.0.9", 5353), ("224.0.0.251", 5353), b"mdns")
    frames.append(Frame(T0 + 4.5, link_frame(udp)))
    return sorted(frames, key=lambda f: f.ts)


def pcap_bytes(frames: Iterable[Frame], **kw: Any) -> bytes:
    out = io.BytesIO()
    write_pcap(out, frames, **kw)
    return out.getvalue()


def pcapng_bytes(frames: Iterable[Frame], **kw: Any) -> bytes:
    out = io.BytesIO()
    write_pcapng(out, frames, **kw)
    return out.getvalue()


def two_interface_pcapng() -> bytes:
    frames = [
        Frame(f.ts, f.data, interface=i % 2) for i, f in enumerate(messy_frames())
    ]  # each interface with its own resolution
    return pcapng_bytes(frames, interfaces=[Interface(), Interface(tsresol=9)], big_endian=True)


def text_log() -> bytes:
    """A MITM text log: conn ids (one reused after a new hello), mixed records, bad records."""

    def rec(t: str, d: str, tags: str, data: bytes, hexed: str = "", size: int = -1) -> str:
        size = len(data) if size < 0 else size
        return f"2025-11-07T15:21:{t} {d}{tags} ({size} bytes)\n{hexed or data.hex(' ')}\n\n"

    parts = [
        rec("32.000001", "DEV→CLOUD", " [conn:1]", HELLO),
        rec("32.010000", "CLOUD→DEV", " [conn:1]", HELLO_ACK),
        rec("32.100000", "DEV→CLOUD", " [conn:1]", PING + REPORT[:9]),
        rec("32.200000", "DEV->CLOUD", " [conn:1] [INJECTED]", REPORT[9:]),
        "garbage line that is no record header\n\n",
        rec("33.000000", "DEV→CLOUD", " [conn:1]", HELLO),  # the id reused: a new flow
        rec("33.100000", "CLOUD→DEV", " [conn:2]", PONG),
        rec("33.200000", "DEV→CLOUD", " [conn:2]", PING, hexed="zz zz"),
        rec("33.300000", "DEV→CLOUD", "", PING + b"\x07\x07"),  # no conn id: the mixed flow
        rec("33.400000", "CLOUD→DEV", "", PONG, size=6),  # the header's count is wrong
        rec("33.500000", "CLOUD→DEV", " [conn:2]", CLIENT_HELLO),  # TLS
    ]
    return "".join(parts).encode()


@dataclass
class Outcome:
    packets: dict[str, list[tuple[str, int, float, bytes, tuple[str, ...]]]] = field(
        default_factory=dict
    )
    findings: list[tuple[object, ...]] = field(default_factory=list)
    flows: dict[str, tuple[str, int, int]] = field(default_factory=dict)
    summary: dict[str, object] = field(default_factory=dict)

    def add_packet(self, flow: Flow, fp: FlowPacket) -> None:
        row = (fp.sender, fp.offset, fp.ts, fp.packet.encode(), fp.tags)
        self.packets.setdefault(flow.id, []).append(row)

    def add_flow(self, flow: Flow) -> None:
        self.flows[flow.id] = (flow.kind, flow.bytes_seen["device"], flow.bytes_seen["cloud"])

    def add_findings(self, findings: Iterable[Finding]) -> None:
        self.findings = sorted(
            [*self.findings, *(tuple(f.as_dict().values()) for f in findings)], key=repr
        )


def whole(result: CaptureResult) -> Outcome:
    out = Outcome(summary=result.summary())
    for flow in result.flows:
        out.add_flow(flow)
        for fp in flow.packets:
            out.add_packet(flow, fp)
    out.add_findings(result.findings)
    return out


def streamed(name: str, data: bytes, cuts: Iterable[int]) -> Outcome:
    """Feed ``data`` cut at ``cuts`` (sorted offsets), then close the stream."""
    stream = CaptureStream(name)
    out = Outcome()
    pos = 0
    for cut in [*(c for c in cuts if 0 < c < len(data)), len(data)]:
        batches = [stream.feed(data[pos:cut])]
        pos = cut
        if cut == len(data):
            batches.append(stream.close())
        for batch in batches:
            for flow, fp in batch.packets:
                out.add_packet(flow, fp)
            for flow in batch.flows:
                out.add_flow(flow)
            out.add_findings(batch.findings)
    out.summary = stream.totals.as_dict()
    assert stream.summary().as_dict() == out.summary  # nothing open any more
    return out


def read_whole(name: str, data: bytes) -> CaptureResult:
    return read_text(name, data) if name.endswith(".txt") else read_pcap(name, data)


def fixed(data: bytes, size: int) -> range:
    return range(size, len(data), size)


def captures() -> dict[str, bytes]:
    frames = messy_frames()
    pcap = pcap_bytes(frames)
    return {
        "messy.pcap": pcap,
        "messy-ns-be.pcap": pcap_bytes(frames, nanosecond=True, big_endian=True),
        "messy.pcapng": pcapng_bytes(frames),
        "two-interfaces.pcapng": two_interface_pcapng(),
        "cut.pcap": pcap[:-30],  # the last record cut short
        "cut.pcapng": pcapng_bytes(frames)[:-8],
        "log.txt": text_log(),
        "cut-log.txt": text_log()[:-25],  # the last hex line without its end
    }


CAPTURES = captures()


@pytest.mark.parametrize("name", sorted(CAPTURES))
@pytest.mark.parametrize("chunk", [0, 1, 7, 1000], ids=["whole", "1-byte", "7-byte", "1000-byte"])
def test_fixed_chunkings_read_as_the_whole_file(name: str, chunk: int) -> None:
    data = CAPTURES[name]
    expected = whole(read_whole(name, data))
    assert expected.packets  # (the capture has something to compare)
    got = streamed(name, data, fixed(data, chunk) if chunk else ())
    assert got == expected


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(sorted(CAPTURES)), seeds=st.lists(st.floats(0, 1), max_size=40))
def test_any_chunking_reads_as_the_whole_file(name: str, seeds: Sequence[float]) -> None:
    data = CAPTURES[name]
    cuts = sorted({int(s * len(data)) for s in seeds})
    assert streamed(name, data, cuts) == whole(read_whole(name, data))


def test_the_largest_shared_text_capture_in_chunks() -> None:
    path = capture_path("capture_20251107_152132.txt")
    data = path.read_bytes()
    expected = whole(read_text(path.name, data))
    rng = random.Random(7)
    cuts = sorted(rng.sample(range(1, len(data)), 300))
    assert streamed(path.name, data, cuts) == expected


# -- errors: the file's CaptureError, with the file's offset, however the stream is cut ------


def _corrupt_pcap() -> bytes:
    frames = messy_frames()
    data = bytearray(pcap_bytes(frames))
    bad = 24 + 16 + len(frames[0].data) + 16 + len(frames[1].data)  # third record header
    data[bad + 8 : bad + 12] = struct.pack("<I", 50_000_000)
    return bytes(data)


def _corrupt_pcapng() -> bytes:
    data = bytearray(pcapng_bytes(messy_frames()))
    pos = 0
    for _ in range(4):  # section header, interface, two packets: the fifth block
        pos += struct.unpack_from("<I", data, pos + 4)[0]
    data[pos + 4 : pos + 8] = struct.pack("<I", 13)  # not a multiple of 4
    return bytes(data)


def _bad_date_log() -> bytes:
    return text_log().replace(b"15:21:33.100000", b"15:21:99.100000")


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("c.pcap", _corrupt_pcap()),
        ("c.pcapng", _corrupt_pcapng()),
        ("d.txt", _bad_date_log()),
        ("short.pcap", pcap_bytes([])[:20]),
        ("short.pcapng", pcapng_bytes([])[:20]),
    ],
)
@pytest.mark.parametrize("chunk", [0, 1, 13])
def test_errors_are_the_whole_file_errors(name: str, data: bytes, chunk: int) -> None:
    with pytest.raises(CaptureError) as whole_error:
        read_whole(name, data)
    with pytest.raises(CaptureError) as stream_error:
        streamed(name, data, fixed(data, chunk) if chunk else ())
    assert str(stream_error.value) == str(whole_error.value)
    assert stream_error.value.reason == whole_error.value.reason
    assert stream_error.value.offset == whole_error.value.offset


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"", "file is empty"),
        (b"hello world, this is not a capture\n" * 10, "unknown format"),
        (b"\x82\xa6format\xadcyncsim-model" + bytes(300), "model file"),
    ],
)
def test_no_capture_is_refused_from_its_first_bytes(data: bytes, why: str) -> None:
    stream = CaptureStream("-")
    with pytest.raises(CaptureError, match=why) as info:
        stream.feed(data)  # 256 bytes or more decide without waiting for the end
        stream.close()
    assert info.value.reason in ("unknown_format", "not_a_capture")


# -- what only a stream has ---------------------------------------------------------------


def test_packets_come_out_as_soon_as_their_records_are_complete() -> None:
    frames = messy_frames()
    data = pcap_bytes(frames)
    first_data = next(i for i, f in enumerate(frames) if len(f.data) > 66)  # the hello
    end = 24 + sum(16 + len(f.data) for f in frames[: first_data + 1])
    stream = CaptureStream("live.pcap")
    assert stream.feed(data[:10]).packets == []
    batch = stream.feed(data[10:end])  # far less than HEAD_BYTES after the header
    assert [fp.packet.encode() for _, fp in batch.packets] == [HELLO]
    log = text_log()
    stream = CaptureStream("live.txt")
    first_record = log.index(b"\n\n") + 1
    assert stream.feed(log[: first_record - 1]).packets == []  # the hex line's end is missing
    batch = stream.feed(log[first_record - 1 : first_record])
    assert [fp.packet.encode() for _, fp in batch.packets] == [HELLO]


def test_lying_lengths_are_refused_without_buffering() -> None:
    # A pcapng block, a pcap record (snap length 2**32-1) and a text line that claim more
    # than any capture tool writes: a file's size bounds them, a stream's nothing does.
    block = pcapng_bytes([])
    lie = struct.pack("<III", 6, 100 << 20, 0)  # an enhanced packet block of 100 MiB
    stream = CaptureStream("-")
    with pytest.raises(CaptureError, match="claims 104857600 bytes") as info:
        stream.feed(block + lie)
    assert (info.value.reason, info.value.offset) == ("corrupt", len(block))
    header = pcap_bytes([], snaplen=0xFFFFFFFF)
    with pytest.raises(CaptureError, match="claims 50000000 captured bytes"):
        CaptureStream("-").feed(header + struct.pack("<IIII", 1, 0, 50_000_000, 50_000_000))
    log = text_log()
    stream = CaptureStream("-")
    stream.feed(log)
    with pytest.raises(CaptureError, match="no end of record") as info:
        for _ in range(80):
            stream.feed(b"0" * 65536)
    assert info.value.offset == len(log)


def _segments(conv: TcpConversation, t: float, side: str, payload: bytes) -> list[Frame]:
    return conv.send(t, side, payload)  # type: ignore[arg-type]


def test_ended_and_idle_connections_are_finished_mid_stream() -> None:
    """A closed connection is handed out about a minute (capture time) after its FIN, an idle
    one after 15 minutes; their state is dropped, the summary still counts them."""
    ended = TcpConversation(("10.0.0.5", 50000), SRV4)
    idle = TcpConversation(("10.0.0.6", 50001), SRV4)
    busy = TcpConversation(("10.0.0.7", 50002), SRV4)
    head = [*ended.handshake(T0), *idle.handshake(T0), *busy.handshake(T0)]
    head += _segments(ended, T0 + 1, "client", HELLO) + ended.close(T0 + 2)
    head += _segments(idle, T0 + 1, "client", HELLO)
    ticks = [_segments(busy, T0 + 10 * i, "client", PING) for i in range(1, 200)]
    writer_out = io.BytesIO()
    writer = PcapWriter(writer_out)
    for f in head:
        writer.write(f)
    stream = CaptureStream("live.pcap")
    stream.feed(writer_out.getvalue())
    finished_at: dict[str, float] = {}
    for tick in ticks:
        batch = stream.feed(b"".join(writer.record(f) for f in tick))
        for flow in batch.flows:
            finished_at[flow.id] = tick[0].ts - T0
    assert set(finished_at) == {
        "10.0.0.5:50000>10.0.0.1:23779#1",
        "10.0.0.6:50001>10.0.0.1:23779#1",
    }
    assert 60 <= finished_at["10.0.0.5:50000>10.0.0.1:23779#1"] <= 90
    assert 900 <= finished_at["10.0.0.6:50001>10.0.0.1:23779#1"] <= 930
    summary = stream.summary().as_dict()
    assert (summary["flows"], summary["packets"]) == (3, 2 + 199)
    stream.close()
    assert stream.totals.as_dict()["flows"] == 3
