# Property tests of the codec and the framer (hypothesis).
#
# Strategy: strategies build valid packets of every kind from fields, through the builders of
# replay.payloads and the packet dataclasses (arbitrary inner-frame data lengths, arbitrary
# 0x43 / 0xAB payloads, explicit wrong checksums); the properties are (a) encode -> decode ->
# encode is the identity on bytes, (b) any bytes decode or raise PacketDecodeError and nothing
# else, (c) the framer's packets and findings do not depend on how the stream is chunked,
# (d) decode(encode(p)) == p, and the typed payload views invert their builders.
from __future__ import annotations

import itertools
from dataclasses import replace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cyncsim.replay.errors import DECODE_REASONS, PacketDecodeError
from cyncsim.replay.framer import FramerFinding, PacketFramer
from cyncsim.replay.payloads import (
    LightStateCommand,
    PowerCommand,
    StatusEntry,
    StatusReport,
    TimeReply,
    build_ack_for,
    build_command,
    build_control,
    build_control_answer,
    build_data_ack,
    build_hello,
    build_report,
    build_result,
    build_simple,
    build_status,
    build_time_reply,
    decode_command,
    decode_status_entries,
    decode_status_report,
    decode_time_reply,
)
from cyncsim.replay.protocol import (
    AckPacket,
    CyncPacket,
    FramedPacket,
    FrameKind,
    GenericPacket,
    HelloPacket,
    IdPacket,
    InnerFrame,
    PacketType,
    decode_packet,
)

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
KNOWN = sorted(int(t) for t in PacketType)
UNKNOWN = [t for t in range(256) if t not in KNOWN]

u8 = st.integers(0, 255)
u16 = st.integers(0, 0xFFFF)
dev_ids = st.binary(min_size=4, max_size=4)
msg_ids = st.binary(min_size=3, max_size=3)
seqs = st.binary(min_size=4, max_size=4)
rgbs = st.tuples(u8, u8, u8)
auth_codes = st.text("0123456789abcdef", min_size=16, max_size=16).map(str.encode)

power_cmds = st.builds(PowerCommand, ctr=u8, target=u16, on=st.booleans())
light_cmds = st.builds(
    LightStateCommand, ctr=u8, target=u16, brightness=u8, color_temp=u8, rgb=rgbs, mode=u8
)
commands = st.one_of(power_cmds, light_cmds)


@st.composite
def status_reports(draw: st.DrawFn) -> StatusReport:
    node = draw(u16)
    # node_id2=None means "same as node_id"; an explicit second id differs from the first.
    node2 = draw(st.none() | u16.filter(lambda n: n != node))
    return StatusReport(
        node_id=node, on=draw(st.booleans()), brightness=draw(u8), color_temp=draw(u8),
        rgb=draw(rgbs), connected=draw(u8), tick=draw(st.binary(min_size=2, max_size=2)),
        flag=draw(u8), node_id2=node2, tail=draw(st.binary(min_size=2, max_size=2)),
    )  # fmt: skip


status_entries = st.builds(
    StatusEntry,
    index=u8, node_id=u8, on=st.booleans(), brightness=u8, color_temp=u8, rgb=rgbs, fresh=u8,
    relay=u8, bridge_id=u8,
)  # fmt: skip
time_replies = st.builds(
    TimeReply,
    year=u16, month=u8, day=u8, weekday=u8, hour=u8, minute=u8, second=u8,
    utc_offset_hhmm=st.integers(-0x8000, 0x7FFF),
)  # fmt: skip


@st.composite
def inner_frames(draw: st.DrawFn, firmware: bool = False) -> InnerFrame:
    return InnerFrame(
        seq=draw(seqs),
        kind=draw(st.sampled_from(list(FrameKind)) | u8),
        opcode=draw(u8),
        data=draw(st.binary(max_size=800)),
        checksum=None,  # computed on encode
        marker=draw(st.sampled_from([0x7E, 0x00])) if firmware else 0x7E,
    )


@st.composite
def framed_packets(draw: st.DrawFn) -> FramedPacket:
    ptype = draw(st.sampled_from([0x73, 0x83]))
    return FramedPacket(
        ptype, device_id=draw(dev_ids), msg_id=draw(msg_ids),
        frame=draw(inner_frames(firmware=ptype == 0x83)),
    )  # fmt: skip


@st.composite
def built_packets(draw: st.DrawFn) -> CyncPacket:
    """Valid packets of every kind, made from fields."""
    kind = draw(st.integers(0, 15))
    dev, mid = draw(dev_ids), draw(msg_ids)
    if kind == 0:
        return build_hello(dev, draw(auth_codes))
    if kind == 1:
        return HelloPacket(
            0x23, device_id=dev, auth_code=draw(st.binary(min_size=16, max_size=16)),
            version=draw(u8), pad=draw(u8), tail=draw(st.binary(min_size=3, max_size=3)),
        )  # fmt: skip
    if kind == 2:
        simple = [PacketType(t) for t in (0x28, 0x48, 0xC3, 0xD3, 0xD8)]
        return build_simple(draw(st.sampled_from(simple)))
    if kind == 3:
        return build_time_reply(draw(time_replies))
    if kind == 4:
        return AckPacket(0x88, msg_id=mid)
    if kind == 5:  # 0x43 with an arbitrary payload
        return IdPacket(0x43, device_id=dev, msg_id=mid, payload=draw(st.binary(max_size=900)))
    if kind == 6:
        entries = draw(st.lists(status_entries, max_size=45))
        return build_status(dev, entries, trailer=draw(st.binary(max_size=18)))
    if kind == 7:
        return IdPacket(draw(st.sampled_from([0x78, 0x7B, 0xA3])), device_id=dev, msg_id=mid)
    if kind == 8:  # 0xAB with an arbitrary payload
        return IdPacket(0xAB, device_id=dev, msg_id=mid, payload=draw(st.binary(max_size=1100)))
    if kind == 9:
        return draw(framed_packets())
    if kind == 10:
        return build_command(dev, mid, draw(commands), seq=draw(st.none() | seqs))
    if kind == 11:
        request = build_command(dev, mid, draw(commands))
        assert request.frame is not None
        return build_result(dev, draw(msg_ids), request.frame)
    if kind == 12:
        return build_report(dev, mid, draw(status_reports()), seq=draw(seqs))
    if kind == 13:
        control = build_control(dev, draw(st.binary(min_size=2, max_size=2)))
        return draw(st.sampled_from([control, build_control_answer(control)]))
    if kind == 14:
        command = build_command(dev, mid, draw(commands))
        report = build_report(dev, mid, draw(status_reports()))
        return draw(st.sampled_from([build_data_ack(command), build_ack_for(report)]))
    # Unknown type bytes: a generic packet with any payload.
    return GenericPacket(draw(st.sampled_from(UNKNOWN)), payload=draw(st.binary(max_size=300)))


known_packets = built_packets().filter(lambda p: p.type in KNOWN)


# ------------------------------------------------------------------- (a) and (d): round trip


@FAST
@given(built_packets())
def test_built_packets_round_trip(pkt: CyncPacket) -> None:
    raw = pkt.encode()
    assert len(raw) == len(pkt) == 5 + int.from_bytes(raw[3:5], "big")
    assert raw[0] == pkt.type and raw[1:3] == b"\0\0"
    decoded = decode_packet(raw)  # strict: a built packet is valid
    assert decoded.encode() == raw
    assert decoded == pkt  # (d)
    assert type(decoded) is type(pkt)
    assert decode_packet(raw, strict=False) == pkt
    assert pkt.defect is None and decoded.checksum_ok in (None, True)


@FAST
@given(framed_packets(), u8)
def test_frames_with_explicit_checksum_round_trip(pkt: FramedPacket, checksum: int) -> None:
    assert pkt.frame is not None
    frame = replace(pkt.frame, checksum=checksum)
    stored = replace(pkt, frame=frame)
    raw = stored.encode()
    assert raw[-2:] == bytes((checksum, 0x7E))
    lenient = decode_packet(raw, strict=False)
    assert lenient.encode() == raw
    if checksum == pkt.frame.expected_checksum():
        assert decode_packet(raw) == stored == pkt
    else:
        assert lenient == replace(stored, defect="invalid_checksum")
        assert lenient.checksum_ok is False
        try:
            decode_packet(raw)
        except PacketDecodeError as exc:
            assert (exc.reason, exc.offset, exc.data) == ("invalid_checksum", len(raw) - 2, raw)
        else:
            raise AssertionError("strict decoding accepted a wrong checksum")


@FAST
@given(dev_ids, msg_ids, commands, msg_ids)
def test_command_views_invert_builders(dev: bytes, mid: bytes, cmd: object, mid2: bytes) -> None:
    assert isinstance(cmd, PowerCommand | LightStateCommand)
    pkt = decode_packet(build_command(dev, mid, cmd).encode())
    assert isinstance(pkt, FramedPacket) and pkt.frame is not None
    assert decode_command(pkt.frame) == cmd
    assert pkt.frame.seq_byte == cmd.ctr
    result = decode_packet(build_result(dev, mid2, pkt.frame).encode())
    assert isinstance(result, FramedPacket) and result.frame is not None
    assert (result.frame.seq, result.frame.opcode) == (pkt.frame.seq, pkt.frame.opcode)
    assert decode_command(result.frame) is None


@FAST
@given(dev_ids, msg_ids, status_reports(), st.lists(status_entries, max_size=12), time_replies)
def test_payload_views_invert_builders(
    dev: bytes,
    mid: bytes,
    report: StatusReport,
    entries: list[StatusEntry],
    t: TimeReply,
) -> None:
    assert decode_status_report(decode_packet(build_report(dev, mid, report).encode())) == report
    status = decode_packet(build_status(dev, entries, trailer=b"\xf7\x04").encode())
    assert decode_status_entries(status) == entries
    assert decode_time_reply(decode_packet(build_time_reply(t).encode())) == t


# ----------------------------------------------------- (b) random bytes: decode or typed error


def _decode_or_typed_error(data: bytes) -> None:
    for strict in (True, False):
        try:
            pkt = decode_packet(data, strict=strict)
        except PacketDecodeError as exc:
            assert exc.reason in DECODE_REASONS
            assert 0 <= exc.offset <= len(data)  # len(data): bytes missing at the end
            assert exc.data == data
        else:
            assert pkt.encode() == data  # whatever decodes, encodes back to the same bytes
            if strict:
                assert pkt.defect is None
            elif pkt.checksum_ok is False:
                assert pkt.defect == "invalid_checksum"


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=120))
def test_random_bytes_decode_or_raise_typed_error(data: bytes) -> None:
    _decode_or_typed_error(data)


@FAST
@given(st.sampled_from(KNOWN) | u8, st.binary(max_size=120), st.integers(-2, 2))
def test_random_bodies_with_plausible_header(ptype: int, body: bytes, skew: int) -> None:
    length = max(0, len(body) + skew)  # mostly consistent lengths, sometimes off by a little
    _decode_or_typed_error(bytes((ptype, 0, 0)) + length.to_bytes(2, "big") + body)


@FAST
@given(built_packets(), st.data())
def test_mutated_valid_packets_decode_or_raise_typed_error(
    pkt: CyncPacket, data: st.DataObject
) -> None:
    raw = bytearray(pkt.encode())
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(u8)
    _decode_or_typed_error(bytes(raw))


# --------------------------------------------------------------------- (c) framer chunking


def _chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges)]


def _frame(
    chunks: list[bytes], strict: bool = False
) -> tuple[list[tuple[int, bytes]], list[FramerFinding]]:
    framer = PacketFramer(strict=strict)
    out: list[tuple[int, bytes]] = []
    for chunk in chunks:
        out += [(off, p.encode()) for off, p in framer.feed_with_offsets(chunk)]
    framer.flush()
    return out, framer.findings


# Garbage that cannot look like a header: no zero byte, so bytes 1-2 are never 00 00.
clean_garbage = st.binary(min_size=1, max_size=40).map(lambda b: b.replace(b"\0", b"\x01"))


@FAST
@given(
    st.lists(st.tuples(known_packets, st.none() | clean_garbage), max_size=8),
    st.lists(st.integers(0, 20_000), max_size=12),
)
def test_framer_chunking_invariance_recovers_every_packet(
    items: list[tuple[CyncPacket, bytes | None]], cuts: list[int]
) -> None:
    stream = b""
    expected_packets: list[tuple[int, bytes]] = []
    expected_findings: list[FramerFinding] = []
    for pkt, garbage in items:
        if garbage:
            expected_findings.append(FramerFinding(len(stream), len(garbage), "not_cync",
                                                   garbage[:16]))  # fmt: skip
            stream += garbage
        expected_packets.append((len(stream), pkt.encode()))
        stream += pkt.encode()
    whole = _frame([stream])
    assert whole == (expected_packets, expected_findings)
    assert _frame(_chunked(stream, cuts)) == whole
    if len(stream) < 250:  # byte by byte: the finest chunking
        assert _frame([bytes((b,)) for b in stream]) == whole


@FAST
@given(
    st.lists(st.one_of(known_packets.map(lambda p: p.encode()), st.binary(max_size=30)),
             max_size=8),
    st.lists(st.integers(0, 20_000), max_size=12),
)  # fmt: skip
def test_framer_chunking_invariance_any_bytes(parts: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(parts)
    packets, findings = whole = _frame([stream])
    assert _frame(_chunked(stream, cuts)) == whole
    # Every byte is either in a packet or in a finding, in stream order, without overlap.
    spans = sorted([(off, len(raw)) for off, raw in packets] +
                   [(f.offset, f.length) for f in findings])  # fmt: skip
    pos = 0
    for off, length in spans:
        assert off == pos and length > 0
        pos += length
    assert pos == len(stream)
    for off, raw in packets:
        assert stream[off : off + len(raw)] == raw


@FAST
@given(st.lists(built_packets(), min_size=1, max_size=8), st.lists(u16, max_size=10))
def test_strict_framer_chunking_invariance_for_valid_streams(
    pkts: list[CyncPacket], cuts: list[int]
) -> None:
    # Valid packets of every kind back to back (unknown types included: no garbage here).
    stream = b"".join(p.encode() for p in pkts)
    expected = []
    off = 0
    for p in pkts:
        expected.append((off, p.encode()))
        off += len(p)
    assert _frame([stream], strict=True) == (expected, [])
    assert _frame(_chunked(stream, cuts), strict=True) == (expected, [])
