"""pcap / pcapng reader (replay.capture.pcap) and writer (replay.capture.pcapwrite)."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import dpkt
import pytest

from cyncsim.replay.capture.model import CaptureResult, Finding
from cyncsim.replay.capture.pcap import read_pcap
from cyncsim.replay.capture.pcapwrite import (
    ACK,
    PSH,
    Frame,
    Interface,
    PcapWriter,
    TcpConversation,
    internet_checksum,
    link_frame,
    tcp_frame,
    tcp_packet,
    udp_packet,
    write_pcap,
    write_pcapng,
)
from cyncsim.replay.capture.tcp import NOT_FED_REASONS
from cyncsim.replay.errors import CaptureError
from tests.support import CLIENT_HELLO, HELLO, HELLO_ACK, PING, PONG, REPORT

DEV4, SRV4 = ("10.0.0.5", 50123), ("10.0.0.1", 23779)
DEV6, SRV6 = ("fd00::5", 50123), ("fd00::1", 23779)
T0 = 1_762_528_893.25

EXCHANGE = [
    (T0, "client", HELLO),
    (T0 + 0.01, "server", HELLO_ACK),
    (T0 + 0.5, "client", PING + REPORT),
    (T0 + 0.6, "server", PONG),
]


def conversation_frames(
    client: tuple[str, int] = DEV4, server: tuple[str, int] = SRV4, **kw: int
) -> list[Frame]:
    return TcpConversation.exchange(client, server, EXCHANGE, **kw)  # type: ignore[arg-type]


def packets(result: CaptureResult, sender: str) -> list[bytes]:
    assert len(result.flows) == 1, result.flows
    return [fp.packet.encode() for fp in result.flows[0].packets if fp.sender == sender]


def assert_exchange(result: CaptureResult) -> None:
    assert packets(result, "device") == [HELLO, PING, REPORT]
    assert packets(result, "cloud") == [HELLO_ACK, PONG]
    assert_accounting(result)


def assert_accounting(result: CaptureResult) -> None:
    """For every flow and direction: packets + fed findings == bytes seen."""
    for flow in result.flows:
        for sender, seen in flow.bytes_seen.items():
            total = sum(len(fp.packet) for fp in flow.packets if fp.sender == sender)
            total += sum(
                f.length
                for f in result.findings
                if f.flow == flow.id
                and f.sender == sender
                and f.reason not in NOT_FED_REASONS
                and not f.reason.startswith("defect:")
            )
            assert total == seen, (flow.id, sender)


def by_reason(result: CaptureResult, reason: str) -> list[Finding]:
    return [f for f in result.findings if f.reason == reason]


def pcap_bytes(frames: list[Frame], **kw: int) -> bytes:
    out = io.BytesIO()
    write_pcap(out, frames, **kw)  # type: ignore[arg-type]
    return out.getvalue()


def pcapng_bytes(frames: list[Frame], **kw: object) -> bytes:
    out = io.BytesIO()
    write_pcapng(out, frames, **kw)  # type: ignore[arg-type]
    return out.getvalue()


# -- link types, IP versions, file flavours ------------------------------------------------


@pytest.mark.parametrize("linktype", [1, 113, 276, 101, 12, 14, 0])
@pytest.mark.parametrize("ipv6", [False, True])
def test_link_types_ipv4_and_ipv6(linktype: int, ipv6: bool) -> None:
    client, server = (DEV6, SRV6) if ipv6 else (DEV4, SRV4)
    frames = conversation_frames(client, server, linktype=linktype)
    result = read_pcap("x.pcap", pcap_bytes(frames, linktype=linktype))
    assert_exchange(result)
    flow = result.flows[0]
    if ipv6:
        assert flow.id == "[fd00::5]:50123>[fd00::1]:23779#1"
    else:
        assert flow.id == "10.0.0.5:50123>10.0.0.1:23779#1"
    assert result.findings == []
    assert result.sources == ["x.pcap"]


@pytest.mark.parametrize("nanosecond", [False, True])
@pytest.mark.parametrize("big_endian", [False, True])
def test_pcap_byte_orders_and_nanosecond_timestamps(nanosecond: bool, big_endian: bool) -> None:
    frames = conversation_frames()
    data = pcap_bytes(frames, nanosecond=nanosecond, big_endian=big_endian)
    magic = data[:4] if big_endian else data[3::-1]
    assert magic.hex() == ("a1b23c4d" if nanosecond else "a1b2c3d4")
    result = read_pcap("x.pcap", data)
    assert_exchange(result)
    stamps = [fp.ts for fp in result.flows[0].packets]
    assert stamps == pytest.approx([T0, T0 + 0.01, T0 + 0.5, T0 + 0.5, T0 + 0.6], abs=2e-6)


def test_pcap_nanosecond_resolution_is_kept() -> None:
    conv = TcpConversation(DEV4, SRV4)
    frames = [conv.segment(1000.000000123, "client", PING)]
    result = read_pcap("x.pcap", pcap_bytes(frames, nanosecond=True))
    assert result.flows[0].packets[0].ts == pytest.approx(1000.000000123, abs=1e-10)


@pytest.mark.parametrize("big_endian", [False, True])
def test_pcapng_two_interfaces_with_own_link_type_and_resolution(big_endian: bool) -> None:
    eth = conversation_frames(DEV4, SRV4, interface=0)
    raw = conversation_frames(DEV6, SRV6, linktype=101, interface=1)
    itfs = [Interface(linktype=1, tsresol=6), Interface(linktype=101, tsresol=9)]
    frames = sorted(eth + raw, key=lambda f: f.ts)
    data = pcapng_bytes(frames, interfaces=itfs, big_endian=big_endian)
    result = read_pcap("x.pcapng", data)
    assert [f.id for f in result.flows] == [
        "10.0.0.5:50123>10.0.0.1:23779#1",
        "[fd00::5]:50123>[fd00::1]:23779#1",
    ]
    for flow in result.flows:
        assert [fp.packet.encode() for fp in flow.packets] == [HELLO, HELLO_ACK, PING, REPORT, PONG]
        assert flow.packets[0].ts == pytest.approx(T0, abs=1e-6)
    assert result.findings == []


def test_pcapng_binary_resolution_offset_and_several_sections() -> None:
    conv = TcpConversation(DEV4, SRV4)
    first = pcapng_bytes(
        [conv.segment(100.5, "client", PING)],
        interfaces=[Interface(tsresol=0x80 | 10, tsoffset=50)],
    )
    conv.sent["client"] += 5
    second = pcapng_bytes([conv.segment(200.25, "client", PING)], big_endian=True)
    result = read_pcap("x.pcapng", first + second)
    assert [fp.ts for fp in result.flows[0].packets] == [100.5, 200.25]
    assert result.findings == []


@pytest.mark.parametrize("tags", [(5,), (5, 7)])
def test_vlan_tagged_frames(tags: tuple[int, ...]) -> None:
    conv = TcpConversation(DEV4, SRV4, linktype=101)
    frames = [f._replace(data=link_frame(f.data, 1, vlan=tags)) for f in conv.handshake(T0)]
    frames += [
        f._replace(data=link_frame(f.data, 1, vlan=tags))
        for f in conv.send(T0 + 1, "client", HELLO)
    ]
    result = read_pcap("x.pcap", pcap_bytes(frames))
    assert packets(result, "device") == [HELLO]
    assert result.findings == []


def test_ethernet_padding_is_not_payload() -> None:
    conv = TcpConversation(DEV4, SRV4)
    frames = [
        f._replace(data=f.data + bytes(60 - len(f.data))) for f in conv.send(T0, "client", PING)
    ]
    assert len(frames[0].data) == 60
    result = read_pcap("x.pcap", pcap_bytes(frames))
    assert packets(result, "device") == [PING]
    assert result.flows[0].bytes_seen["device"] == 5


def test_ipv4_options_and_zero_total_length() -> None:
    pkt = tcp_packet(DEV4, SRV4, 1, 0, ACK | PSH, PING)
    opts = b"\x01\x01\x01\x01"  # four NOPs: IHL 6
    head = bytearray(pkt[:20] + opts)
    head[0] = 0x46
    head[2:4] = (len(pkt) + 4).to_bytes(2, "big")
    head[10:12] = b"\0\0"
    head[10:12] = internet_checksum(bytes(head)).to_bytes(2, "big")
    with_opts = bytes(head) + pkt[20:]
    offload = bytearray(tcp_packet(DEV4, SRV4, 6, 0, ACK | PSH, PING))
    offload[2:4] = b"\0\0"  # segmentation offload: the kernel left the length empty
    frames = [Frame(1.0, link_frame(with_opts)), Frame(2.0, link_frame(bytes(offload)))]
    result = read_pcap("x.pcap", pcap_bytes(frames))
    assert packets(result, "device") == [PING, PING]
    assert result.findings == []


# -- what is not a usable TCP segment ------------------------------------------------------


def test_non_tcp_frames_are_counted_in_one_finding() -> None:
    frames = conversation_frames()
    arp = Frame(T0, bytes(12) + b"\x08\x06" + bytes(28))
    udp = Frame(T0, link_frame(udp_packet(DEV4, ("10.0.0.1", 53), b"query")))
    udp6 = Frame(T0, link_frame(udp_packet(DEV6, ("fd00::1", 53), b"query")))
    data = pcap_bytes([frames[0], arp, udp, udp6, *frames[1:]])
    result = read_pcap("x.pcap", data)
    assert_exchange(result)
    (note,) = result.findings
    assert note.reason == "not_tcp"
    assert note.flow == "" and note.sender is None
    assert note.detail.startswith("3 frames without TCP")
    assert "ethertype 0x0806: 1" in note.detail and "ip proto 17: 1" in note.detail
    assert "ipv6 next header 17: 1" in note.detail
    assert note.offset == 24 + 16 + len(frames[0].data)  # file offset of the ARP record


def test_ip_fragments_are_reported_and_leave_a_gap() -> None:
    conv = TcpConversation(DEV4, SRV4)
    frames = conv.handshake(T0)
    frames += conv.send(T0 + 1, "client", HELLO)
    frag = bytearray(conv.send(T0 + 2, "client", PING)[0].data)
    frag[14 + 6] = 0x20  # more fragments
    frames.append(Frame(T0 + 2, bytes(frag)))
    frames += conv.send(T0 + 3, "client", REPORT)
    result = read_pcap("x.pcap", pcap_bytes(frames))
    assert packets(result, "device") == [HELLO, REPORT]
    assert [f.reason for f in result.findings] == ["gap", "ip_fragment"]
    gap = result.findings[0]
    assert (gap.sender, gap.offset, gap.length) == ("device", 31, 5)
    assert result.findings[1].detail.startswith("1 IP fragments")


def test_frames_cut_by_snap_length() -> None:
    conv = TcpConversation(DEV4, SRV4)
    frames = conv.handshake(T0)
    frames.append(conv.segment(T0 + 1, "client", HELLO, snap=14 + 20 + 20 + 10))
    conv.sent["client"] += len(HELLO)
    frames += conv.send(T0 + 2, "client", PING)
    frames.append(conv.segment(T0 + 3, "client", REPORT, snap=14 + 10))  # IP header cut
    conv.sent["client"] += len(REPORT)
    frames += conv.send(T0 + 4, "client", PING)
    result = read_pcap("x.pcap", pcap_bytes(frames))
    assert packets(result, "device") == [PING, PING]
    gaps = [(f.offset, f.length) for f in by_reason(result, "gap")]
    assert gaps == [(10, 21), (36, 42)]
    (cut,) = by_reason(result, "truncated")
    assert cut.detail.startswith("2 frames cut by the snap length")
    assert cut.length == 21 + (20 + 20 + len(REPORT) - 10)  # bytes not captured
    assert_accounting(result)


def test_truncated_last_record_keeps_everything_before() -> None:
    frames = conversation_frames()
    data = pcap_bytes(frames)
    last = len(data) - (16 + len(frames[-1].data))
    for cut in (last + 10, last + 16 + 30):
        result = read_pcap("x.pcap", data[:cut])
        assert_exchange(result)
        (note,) = by_reason(result, "truncated")
        assert (note.offset, note.length) == (last, cut - last)
        assert "file ends" in note.detail


def test_truncated_pcapng_keeps_everything_before() -> None:
    data = pcapng_bytes(conversation_frames())
    result = read_pcap("x.pcapng", data[:-8])
    assert_exchange(result)
    (note,) = by_reason(result, "truncated")
    assert note.offset + note.length == len(data) - 8


@pytest.mark.parametrize(
    "data",
    [b"", b"hello world, this is not a capture", b"\xd4\xc3\xb2", bytes(100)],
    ids=["empty", "text", "short-magic", "zeros"],
)
def test_garbage_file_raises_capture_error_naming_file_and_reason(data: bytes) -> None:
    with pytest.raises(CaptureError) as info:
        read_pcap("/some/where/garbage.bin", data)
    assert info.value.reason == "unknown_format"
    assert info.value.path == "/some/where/garbage.bin"
    assert "/some/where/garbage.bin" in str(info.value)


def test_corrupt_pcap_record_raises_with_offset() -> None:
    frames = conversation_frames()
    data = bytearray(pcap_bytes(frames))
    bad = 24 + 16 + len(frames[0].data)  # second record header
    data[bad + 8 : bad + 12] = struct.pack("<I", 50_000_000)
    with pytest.raises(CaptureError) as info:
        read_pcap("c.pcap", bytes(data))
    assert info.value.reason == "corrupt"
    assert info.value.offset == bad
    assert f"c.pcap at offset {bad}" in str(info.value)


def test_corrupt_pcapng_block_raises_with_offset() -> None:
    data = bytearray(pcapng_bytes(conversation_frames()))
    shb_len = struct.unpack_from("<I", data, 4)[0]
    idb_len = struct.unpack_from("<I", data, shb_len + 4)[0]
    bad = shb_len + idb_len
    data[bad + 4 : bad + 8] = struct.pack("<I", 13)  # not a multiple of 4
    with pytest.raises(CaptureError) as info:
        read_pcap("c.pcapng", bytes(data))
    assert (info.value.reason, info.value.offset) == ("corrupt", bad)


def test_missing_file_raises_capture_error(tmp_path: Path) -> None:
    with pytest.raises(CaptureError) as info:
        read_pcap(str(tmp_path / "nope.pcap"))
    assert info.value.reason == "unreadable"


# -- flows, TLS, accounting ----------------------------------------------------------------


def test_tls_flow_is_reported_as_tls() -> None:
    conv = TcpConversation(("10.0.0.7", 40000), SRV4)
    frames = conv.handshake(T0) + conv.send(T0 + 1, "client", CLIENT_HELLO)
    frames += conversation_frames()
    result = read_pcap("x.pcap", pcap_bytes(frames))
    tls_flow, cync_flow = result.flows
    assert tls_flow.kind == "tls" and cync_flow.kind == "cync"
    assert tls_flow.packets == []
    (tls,) = by_reason(result, "tls")
    assert (tls.flow, tls.sender, tls.offset, tls.length) == (
        tls_flow.id,
        "device",
        0,
        len(CLIENT_HELLO),
    )
    assert_accounting(result)


def test_byte_accounting_over_a_messy_capture() -> None:
    frames: list[Frame] = []
    for i in range(6):
        conv = TcpConversation((f"10.0.1.{i + 2}", 41000 + i), SRV4, isn_client=2**32 - 40 * i)
        frames += conv.handshake(T0 + i)
        frames += conv.send(T0 + i + 0.1, "client", HELLO + b"\x01\x02junk" + PING)
        lost = conv.send(T0 + i + 0.2, "client", REPORT[:20])  # never written: a gap
        assert lost
        frames += conv.send(T0 + i + 0.3, "client", REPORT[20:] + PING)
        frames.append(conv.segment(T0 + i + 0.4, "client", b"\xff" * 4, offset=3))  # conflict
        frames += conv.send(T0 + i + 0.5, "server", PONG + PONG[:2])  # trailing partial
    result = read_pcap("x.pcap", pcap_bytes(frames))
    assert len(result.flows) == 6
    assert_accounting(result)
    reasons = {f.reason for f in result.findings}
    assert reasons == {"gap", "overlap_conflict", "not_cync", "trailing_partial"}
    for flow in result.flows:
        dev = [fp.packet.encode() for fp in flow.packets if fp.sender == "device"]
        assert dev == [HELLO, PING, PING]
        assert [fp.packet.encode() for fp in flow.packets if fp.sender == "cloud"] == [PONG]


def test_read_from_path_and_progress(tmp_path: Path) -> None:
    path = tmp_path / "c.pcap"
    write_pcap(path, conversation_frames())
    calls: list[tuple[int, int]] = []
    result = read_pcap(str(path), progress=lambda done, total: calls.append((done, total)))
    assert_exchange(result)
    size = path.stat().st_size
    assert calls and calls[-1] == (size, size)


# -- interop with dpkt's writers -----------------------------------------------------------


def test_reads_files_written_by_dpkt() -> None:
    frames = conversation_frames()
    for writer in (dpkt.pcap.Writer, dpkt.pcapng.Writer):
        out = io.BytesIO()
        w = writer(out)
        for f in frames:
            w.writepkt(f.data, ts=f.ts)
        result = read_pcap("dpkt", out.getvalue())
        assert_exchange(result)


def test_writer_output_parses_with_dpkt() -> None:
    frame = tcp_frame(DEV4, SRV4, 77, 88, ACK | PSH, PING)
    eth = dpkt.ethernet.Ethernet(frame)
    ip = eth.data
    assert isinstance(ip, dpkt.ip.IP) and isinstance(ip.data, dpkt.tcp.TCP)
    assert (ip.data.seq, ip.data.ack, ip.data.data) == (77, 88, PING)
    # both checksums verify: summing a header with its checksum gives zero
    assert internet_checksum(frame[14:34]) == 0
    tcp = frame[34:]
    pseudo = ip.src + ip.dst + struct.pack(">HH", 6, len(tcp))
    assert internet_checksum(pseudo + tcp) == 0
    assert internet_checksum(pseudo + tcp[:16] + b"\x00\x00" + tcp[18:]) == ip.data.sum


def test_malformed_headers_and_unknown_link_types_are_counted() -> None:
    good = conversation_frames()
    conv = TcpConversation(("10.0.0.9", 40000), SRV4)
    (frame,) = conv.send(T0, "client", PING)
    long_ip = bytearray(frame.data)
    long_ip[14 + 2 : 14 + 4] = (200).to_bytes(2, "big")  # IP says 200 bytes, frame has 59
    bad_offset = bytearray(frame.data)
    bad_offset[14 + 20 + 12] = 0x30  # TCP data offset 3 (< 5 words)
    data = pcapng_bytes(
        [
            *good,
            Frame(T0, bytes(long_ip)),
            Frame(T0, bytes(bad_offset)),
            Frame(T0, b"x" * 30, None, 1),
        ],
        interfaces=[Interface(linktype=1), Interface(linktype=127)],
    )
    result = read_pcap("x.pcapng", data)
    assert_exchange(result)
    (malformed,) = by_reason(result, "malformed")
    assert malformed.detail.startswith("2 frames with malformed headers")
    assert (
        "ip length beyond frame: 1" in malformed.detail and "tcp data offset: 1" in malformed.detail
    )
    (other,) = by_reason(result, "not_tcp")
    assert "link type 127: 1" in other.detail


def test_pcapng_simple_packet_block_uses_interface_zero() -> None:
    conv = TcpConversation(DEV4, SRV4)
    data = pcapng_bytes([conv.segment(5.0, "client", PING)])
    conv.sent["client"] += 5
    (frame,) = conv.send(6.0, "client", REPORT)
    body = struct.pack("<I", len(frame.data)) + frame.data + bytes(-len(frame.data) % 4)
    spb = struct.pack("<II", 3, len(body) + 12) + body + struct.pack("<I", len(body) + 12)
    result = read_pcap("x.pcapng", data + spb)
    assert packets(result, "device") == [PING, REPORT]
    assert [fp.ts for fp in result.flows[0].packets] == [5.0, 5.0]  # SPB has no time stamp


def test_incremental_writer_matches_write_pcap(tmp_path: Path) -> None:
    frames = conversation_frames()
    out = io.BytesIO()
    w = PcapWriter(out, nanosecond=True)
    for f in frames:
        w.write(f)
    assert w.count == len(frames)
    assert out.getvalue() == pcap_bytes(frames, nanosecond=True)
    assert write_pcap(tmp_path / "c.pcap", frames, nanosecond=True) == len(frames)
    assert (tmp_path / "c.pcap").read_bytes() == out.getvalue()


def test_conversation_sequence_and_ack_numbers() -> None:
    conv = TcpConversation(DEV4, SRV4, isn_client=2**32 - 3, isn_server=77)
    frames = (
        conv.handshake(1.0) + conv.send(2.0, "client", HELLO) + conv.send(3.0, "server", HELLO_ACK)
    )
    frames += conv.close(4.0)
    segs = []
    for f in frames:
        tcp = dpkt.ethernet.Ethernet(f.data).data.data
        segs.append((tcp.sport, tcp.flags, tcp.seq, tcp.ack, len(tcp.data)))
    c, s = DEV4[1], SRV4[1]
    syn, fin = dpkt.tcp.TH_SYN, dpkt.tcp.TH_FIN
    a = dpkt.tcp.TH_ACK
    pa = a | dpkt.tcp.TH_PUSH
    assert segs == [
        (c, syn, 2**32 - 3, 0, 0),
        (s, syn | a, 77, 2**32 - 2, 0),
        (c, a, 2**32 - 2, 78, 0),
        (c, pa, 2**32 - 2, 78, 31),  # the hello wraps the sequence space
        (s, pa, 78, 29, 7),
        (c, fin | a, 29, 85, 0),
        (s, fin | a, 85, 30, 0),
        (c, a, 30, 86, 0),
    ]
