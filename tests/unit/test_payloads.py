# Tests of replay/payloads.py: every builder reproduces a real captured packet byte for byte.
#
# Strategy: each test gives a builder the fields of one packet quoted in PROTOCOL.md section 12
# or protocol-examples.md (or read from a shared capture) and compares the encoded bytes with
# the real ones; the typed decoders are checked both ways (real bytes -> fields -> bytes) and
# on packets of the wrong kind, where they must answer None / [] rather than fail.
from __future__ import annotations

import pytest

from cyncsim.replay.payloads import (
    UNCHANGED,
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
    firmware_version,
)
from cyncsim.replay.protocol import (
    AckPacket,
    FramedPacket,
    FrameKind,
    GenericPacket,
    HelloPacket,
    IdPacket,
    InnerFrame,
    PacketType,
    decode_packet,
)
from tests.support import capture_path, capture_records

BRIDGE = bytes.fromhex("6457e7f2")


def h(text: str) -> bytes:
    return bytes.fromhex(text)


def framed(raw: bytes) -> FramedPacket:
    pkt = decode_packet(raw)
    assert isinstance(pkt, FramedPacket) and pkt.frame is not None
    return pkt


POWER_OFF_206 = h(
    "73 00 00 00 1f 64 57 e7 f2 00 00 00 7e 03 00 00 00 f8 d0 0d 00 03 00 00 00 00 ce 00 d0 11"
    " 02 00 00 00 91 7e"
)


@pytest.mark.parametrize(
    ("raw", "command"),
    [
        (POWER_OFF_206.hex(" "), PowerCommand(ctr=3, target=0xCE, on=False)),
        (
            "73 00 00 00 1f 64 57 e7 f2 00 00 00 7e 04 00 00 00 f8 d0 0d 00 04 00 00 00 00 ce 00"
            " d0 11 02 01 00 00 93 7e",
            PowerCommand(ctr=4, target=0xCE, on=True),
        ),
        (
            "73 00 00 00 1f 64 57 e7 f2 00 00 00 7e 09 00 00 00 f8 d0 0d 00 09 00 00 00 00 0a 80"
            " d0 11 02 00 00 00 53 7e",
            PowerCommand(ctr=9, target=0x8000 + 10, on=False),
        ),
        (
            "73 00 00 00 1f 64 57 e7 f2 00 00 00 7e 0b 00 00 00 f8 d0 0d 00 0b 00 00 00 00 12 80"
            " d0 11 02 01 00 00 5e 7e",
            PowerCommand(ctr=11, target=0x8012, on=True),
        ),
        (
            "73 00 00 00 22 64 57 e7 f2 00 00 00 7e 01 00 00 00 f8 f0 10 00 01 00 00 00 00 10 80"
            " f0 11 02 01 64 ff ff ff ff f5 7e",
            LightStateCommand(ctr=1, target=0x8010, brightness=100),
        ),
        (
            "73 00 00 00 22 64 57 e7 f2 00 00 00 7e 02 00 00 00 f8 f0 10 00 02 00 00 00 00 10 80"
            " f0 11 02 01 ff 3a 00 00 00 cf 7e",
            LightStateCommand(ctr=2, target=0x8010, color_temp=58, rgb=(0, 0, 0)),
        ),
        (
            "73 00 00 00 22 64 57 e7 f2 00 00 00 7e 06 00 00 00 f8 f0 10 00 06 00 00 00 00 ce 00"
            " f0 11 02 01 64 ff ff ff ff 38 7e",
            LightStateCommand(ctr=6, target=0xCE, brightness=100, color_temp=UNCHANGED),
        ),
    ],
)
def test_build_command_equals_capture(raw: str, command: PowerCommand | LightStateCommand) -> None:
    pkt = build_command(BRIDGE, h("00 00 00"), command)
    assert pkt.encode() == h(raw)
    assert decode_packet(h(raw)) == pkt  # built (checksum computed) equals decoded
    assert pkt.frame is not None and pkt.frame.checksum is None
    assert decode_command(framed(h(raw)).frame) == command  # type: ignore[arg-type]


def test_build_command_power_on_checksum_0x93() -> None:
    pkt = build_command(BRIDGE, h("00 00 00"), PowerCommand(ctr=4, target=0xCE, on=True))
    assert pkt.frame is not None and pkt.frame.expected_checksum() == 0x93
    assert pkt.encode()[-2:] == h("93 7e") and pkt.checksum_ok is True


def test_build_command_explicit_sequence() -> None:
    cmd = PowerCommand(ctr=0x3D, target=0xCE, on=True)
    pkt = build_command(BRIDGE, h("00 3a 00"), cmd, seq=h("3d 01 00 00"))
    raw = pkt.encode()
    assert raw[9:17] == h("00 3a 00 7e 3d 01 00 00") and raw[21] == 0x3D
    assert decode_packet(raw) == pkt


def test_rgb_command_encoding() -> None:
    # RGB form documented in PROTOCOL.md section 7.5: 01 ff fe R G B.
    cmd = LightStateCommand(ctr=7, target=0xCE, color_temp=0xFE, rgb=(0x12, 0x34, 0x56))
    assert cmd.data() == h("07 00 00 00 00 ce 00 f0 11 02 01 ff fe 12 34 56")
    pkt = build_command(BRIDGE, h("00 00 00"), cmd)
    assert decode_command(framed(pkt.encode()).frame) == cmd  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("command_raw", "msg_id", "result_raw"),
    [
        (
            POWER_OFF_206.hex(" "),
            "00 05 00",
            "73 00 00 00 13 64 57 e7 f2 00 05 00 7e 03 00 00 00 f9 d0 01 00 00 d1 7e",
        ),
        (
            "73 00 00 00 22 64 57 e7 f2 00 00 00 7e 01 00 00 00 f8 f0 10 00 01 00 00 00 00 10 80"
            " f0 11 02 01 64 ff ff ff ff f5 7e",
            "00 02 00",
            "73 00 00 00 13 64 57 e7 f2 00 02 00 7e 01 00 00 00 f9 f0 01 00 00 f1 7e",
        ),
        (
            "73 00 00 00 18 64 57 e7 f2 00 00 00 7e 1f 00 00 00 f8 52 06 00 00 00 ff ff 00 00 56"
            " 7e",
            "00 00 00",
            "73 00 00 00 13 64 57 e7 f2 00 00 00 7e 1f 00 00 00 f9 52 01 00 00 53 7e",
        ),
        (
            "73 00 00 00 14 64 57 e7 f2 00 00 00 7e 1e 00 00 00 f8 af 02 00 af 01 61 7e",
            "00 04 00",
            "73 00 00 00 13 64 57 e7 f2 00 04 00 7e 1e 00 00 00 f9 af 01 00 00 b0 7e",
        ),
    ],
)
def test_build_result_equals_capture(command_raw: str, msg_id: str, result_raw: str) -> None:
    request = framed(h(command_raw))
    assert request.frame is not None
    pkt = build_result(request.device_id, h(msg_id), request.frame)
    assert pkt.encode() == h(result_raw)
    assert pkt.frame is not None and pkt.frame.kind == FrameKind.RESULT
    assert decode_packet(h(result_raw)) == pkt


@pytest.mark.parametrize(
    ("request_raw", "ack_raw"),
    [
        (POWER_OFF_206.hex(" "), "7b 00 00 00 07 64 57 e7 f2 00 00 00"),
        (  # a MITM-crafted injection: malformed frame, the device acks it all the same
            "73 00 00 00 1f 45 88 0f 3a 00 10 00 00 7e 10 01 00 00 f8 8e 0c 00 10 01 00 00 00 50"
            " 00 f7 11 02 01 01 07 7e",
            "7b 00 00 00 07 45 88 0f 3a 00 10 00",
        ),
    ],
)
def test_build_data_ack_equals_capture(request_raw: str, ack_raw: str) -> None:
    request = decode_packet(h(request_raw), strict=False)
    assert isinstance(request, IdPacket)
    ack = build_data_ack(request)
    assert ack.encode() == h(ack_raw)
    assert decode_packet(h(ack_raw)) == ack


@pytest.mark.parametrize(
    ("report_raw", "ack_raw"),
    [
        (
            "83 00 00 00 25 38 e8 cf 46 00 09 00 7e 1f 00 00 00 fa db 13 00 87 25 11 ee 00 ee 00"
            " db 11 02 01 01 0a 0a ff ff ff 00 00 88 7e",
            "88 00 00 00 03 00 09 00",
        ),
        (
            "83 00 00 00 25 64 57 e7 f2 02 fe 00 7e 64 65 22 11 fa db 13 00 11 11 11 67 00 67 00"
            " db 11 02 01 01 4b ff 00 00 00 00 00 29 7e",
            "88 00 00 00 03 02 fe 00",
        ),
        (
            "83 00 00 00 32 32 5d 53 17 00 02 00 00 00 00 00 00 fa 00 20 00 00 00 00 00 00 00 00"
            " ea 00 00 00 86 01 01 31 31 31 35 38 00 00 00 00 00 00 00 00 00 00 00 00 00 92 7e",
            "88 00 00 00 03 00 02 00",
        ),
    ],
)
def test_build_ack_for_equals_capture(report_raw: str, ack_raw: str) -> None:
    ack = build_ack_for(framed(h(report_raw)))
    assert isinstance(ack, AckPacket) and ack.encode() == h(ack_raw)
    assert decode_packet(h(ack_raw)) == ack


@pytest.mark.parametrize(
    ("raw", "device", "msg_id", "seq", "report"),
    [
        (
            "83 00 00 00 25 38 e8 cf 46 00 09 00 7e 1f 00 00 00 fa db 13 00 87 25 11 ee 00 ee 00"
            " db 11 02 01 01 0a 0a ff ff ff 00 00 88 7e",
            "38 e8 cf 46",
            "00 09 00",
            "1f 00 00 00",
            StatusReport(0xEE, True, 10, 10, (255, 255, 255), tick=h("87 25")),
        ),
        (
            "83 00 00 00 25 60 b1 8e 42 00 0e 00 7e 24 00 00 00 fa db 13 00 6d 25 11 2c 00 2c 00"
            " db 11 02 01 01 0a 00 00 00 00 00 00 e3 7e",
            "60 b1 8e 42",
            "00 0e 00",
            "24 00 00 00",
            StatusReport(0x2C, True, 10, 0, (0, 0, 0), tick=h("6d 25")),
        ),
        (
            "83 00 00 00 25 60 b1 7c b4 00 0c 00 7e 1f 00 00 00 fa db 13 00 74 25 11 c0 00 c0 00"
            " db 11 02 01 01 18 00 00 00 00 00 00 20 7e",
            "60 b1 7c b4",
            "00 0c 00",
            "1f 00 00 00",
            StatusReport(0xC0, True, 24, 0, (0, 0, 0), tick=h("74 25")),
        ),
        (
            "83 00 00 00 25 64 57 e7 f2 02 fe 00 7e 64 65 22 11 fa db 13 00 11 11 11 67 00 67 00"
            " db 11 02 01 01 4b ff 00 00 00 00 00 29 7e",
            "64 57 e7 f2",
            "02 fe 00",
            "64 65 22 11",
            StatusReport(0x67, True, 75, 0xFF, (0, 0, 0)),
        ),
    ],
)
def test_build_report_equals_capture(
    raw: str, device: str, msg_id: str, seq: str, report: StatusReport
) -> None:
    pkt = build_report(h(device), h(msg_id), report, seq=h(seq))
    assert pkt.encode() == h(raw)
    if seq == "1f 00 00 00":  # the default sequence of the real-cloud firmware
        assert build_report(h(device), h(msg_id), report) == pkt
    assert decode_status_report(decode_packet(h(raw))) == report
    assert decode_packet(h(raw)) == pkt


ENTRY_EE = StatusEntry(5, 0xEE, True, 10, 10, (255, 255, 255), fresh=1, relay=0, bridge_id=0xEE)


def test_build_status_equals_capture() -> None:
    raw = h(
        "43 00 00 00 1a 38 e8 cf 46 01 01 06 05 00 10 ee 01 0a 0a ff ff ff 01 00 ee 00 00 00"
        " 00 00 00"
    )
    pkt = build_status(h("38 e8 cf 46"), [ENTRY_EE])
    assert pkt.encode() == raw and decode_packet(raw) == pkt
    assert decode_status_entries(decode_packet(raw)) == [ENTRY_EE]
    off = h(
        "43 00 00 00 1a 60 b1 8e 42 01 01 06 05 00 10 2c 01 0a 00 00 00 00 01 00 2c 00 00 00"
        " 00 00 00"
    )
    entry = StatusEntry(5, 0x2C, True, 10, 0, (0, 0, 0), 1, 0, 0x2C)
    assert build_status(h("60 b1 8e 42"), [entry]).encode() == off


def test_build_status_empty_keepalive_equals_capture() -> None:
    pkt = build_status(h("3d 54 66 a6"), [])
    assert pkt.encode() == h("43 00 00 00 07 3d 54 66 a6 01 01 06")
    assert decode_status_entries(pkt) == []


@pytest.mark.needs_capture
def test_status_entries_with_relays_and_trailer_from_capture() -> None:
    # The strip bridge's long 0x43 in capture 152132: many relayed entries + a 2-byte trailer.
    records = capture_records(capture_path("capture_20251107_152132.txt"))
    longest = max(
        (r.data for r in records if r.data[0] == 0x43 and r.data[12:13] == b"\x05"),
        key=len,
        default=b"",
    )
    assert len(longest) > 12 + 19 * 10
    pkt = decode_packet(longest)
    assert isinstance(pkt, IdPacket)
    entries = decode_status_entries(pkt)
    n, trailer = divmod(len(pkt.payload), 19)
    assert len(entries) == n and trailer == 2
    assert entries[0].index == 5 and entries[0].relay == 0
    assert [e.index for e in entries] == list(range(5, 5 + n))
    assert all(e.bridge_id == entries[0].node_id for e in entries)
    assert any(e.relay != 0 for e in entries[1:])
    rebuilt = build_status(pkt.device_id, entries, trailer=pkt.payload[-2:])
    assert rebuilt.encode() == longest


def test_build_hello_equals_capture() -> None:
    raw = h(
        "23 00 00 00 1a 03 64 57 e7 f2 00 10 31 65 30 37 64 34 63 39 64 64 35 34 36 34 30 31"
        " 00 00 3c"
    )
    pkt = build_hello(BRIDGE, b"1e07d4c9dd546401")
    assert isinstance(pkt, HelloPacket) and pkt.encode() == raw
    assert decode_packet(raw) == pkt


@pytest.mark.parametrize(
    ("raw", "t"),
    [
        ("c8 00 00 00 0b 0d 07 e9 0b 06 05 02 14 28 fd a8",
         TimeReply(2025, 11, 6, 5, 2, 20, 40, -600)),
        ("c8 00 00 00 0b 0d 07 e9 0b 06 05 03 1f 36 fd a8",
         TimeReply(2025, 11, 6, 5, 3, 31, 54, -600)),
        ("c8 00 00 00 0b 0d 07 e8 03 0a 01 0c 04 1f fe 0c",
         TimeReply(2024, 3, 10, 1, 12, 4, 31, -500)),
    ],
)  # fmt: skip
def test_build_time_reply_equals_capture(raw: str, t: TimeReply) -> None:
    pkt = build_time_reply(t)
    assert isinstance(pkt, GenericPacket) and pkt.encode() == h(raw)
    assert decode_time_reply(decode_packet(h(raw))) == t
    assert decode_packet(h(raw)) == pkt


@pytest.mark.parametrize(
    ("token", "raw"),
    [
        ("9f 52", "a3 00 00 00 07 64 57 e7 f2 9f 52 00"),
        ("8c 0f", "a3 00 00 00 07 64 57 e7 f2 8c 0f 00"),
    ],
)
def test_build_control_equals_capture(token: str, raw: str) -> None:
    pkt = build_control(BRIDGE, h(token))
    assert pkt.encode() == h(raw) and decode_packet(h(raw)) == pkt


def test_build_control_answer_prefix_and_size() -> None:
    request = decode_packet(h("a3 00 00 00 07 64 57 e7 f2 9f 52 00"))
    assert isinstance(request, IdPacket)
    raw = build_control_answer(request).encode()
    assert len(raw) == 1024
    assert raw[:24] == h("ab 00 00 03 fb 64 57 e7 f2 9f 52 00 07 00 09 78 6c 69 6e 6b 5f 64 65 76")
    assert raw[24:] == bytes(1000)


@pytest.mark.needs_capture
def test_build_control_answer_equals_capture() -> None:
    records = capture_records(capture_path("capture_20251107_152132.txt"))
    by_time = {r.timestamp: r.data for r in records}
    request = decode_packet(by_time["2025-11-07T15:21:34.114838"])
    answer = by_time["2025-11-07T15:21:34.228996"]
    assert isinstance(request, IdPacket) and request.type == PacketType.CONTROL
    pkt = build_control_answer(request)
    assert pkt.encode() == answer and decode_packet(answer) == pkt


@pytest.mark.parametrize(
    ("ptype", "raw"),
    [
        (PacketType.HELLO_ACK, "28 00 00 00 02 00 00"),
        (PacketType.STATUS_ACK, "48 00 00 00 03 01 01 00"),
        (PacketType.TIME_REQUEST, "c3 00 00 00 01 0c"),
        (PacketType.PING, "d3 00 00 00 00"),
        (PacketType.PONG, "d8 00 00 00 00"),
    ],
)
def test_build_simple_equals_capture(ptype: PacketType, raw: str) -> None:
    pkt = build_simple(ptype)
    assert pkt.encode() == h(raw) and decode_packet(h(raw)) == pkt


def test_build_simple_rejects_types_without_a_fixed_body() -> None:
    with pytest.raises(KeyError):
        build_simple(PacketType.DATA)


# ------------------------------------------------------- typed decoders on the wrong input


def test_decoders_answer_none_for_other_packets() -> None:
    ping = decode_packet(h("d3 00 00 00 00"))
    result = framed(h("73 00 00 00 13 64 57 e7 f2 00 05 00 7e 03 00 00 00 f9 d0 01 00 00 d1 7e"))
    status43 = decode_packet(h("43 00 00 00 07 3d 54 66 a6 01 01 06"))
    assert result.frame is not None
    assert decode_command(result.frame) is None  # f9, not a command
    assert decode_status_report(ping) is None and decode_status_report(result) is None
    assert decode_status_report(status43) is None
    assert decode_status_entries(ping) == [] and decode_status_entries(result) == []
    assert decode_time_reply(ping) is None and decode_time_reply(status43) is None
    assert firmware_version(result) is None and firmware_version(ping) is None
    # A lenient decode of a malformed 0x73 has no frame: nothing to read from it.
    crafted = decode_packet(
        h(
            "73 00 00 00 1f 45 88 0f 3a 00 10 00 00 7e 10 01 00 00 f8 8e 0c 00 10 01 00 00 00 50"
            " 00 f7 11 02 01 01 07 7e"
        ),
        strict=False,
    )
    assert crafted.defect is not None
    assert decode_status_report(crafted) is None and firmware_version(crafted) is None


def test_decode_command_wrong_length_or_repeated_opcode() -> None:
    data = PowerCommand(ctr=3, target=0xCE, on=False).data()
    assert decode_command(InnerFrame(b"\3\0\0\0", FrameKind.REQUEST, 0xD0, data[:-1])) is None
    bad = data[:7] + b"\xf0" + data[8:]  # opcode repeated in the data does not match
    assert decode_command(InnerFrame(b"\3\0\0\0", FrameKind.REQUEST, 0xD0, bad)) is None
    assert decode_command(InnerFrame(b"\3\0\0\0", FrameKind.REPORT, 0xD0, data)) is None


def test_time_reply_with_wrong_lead_byte_is_not_a_time() -> None:
    pkt = decode_packet(h("c8 00 00 00 0b 0e 07 e9 0b 06 05 02 14 28 fd a8"))
    assert isinstance(pkt, GenericPacket) and decode_time_reply(pkt) is None


def test_firmware_version_short_data_is_none_not_an_error() -> None:
    # A fa 00 report with fewer data bytes than the version field needs.
    for n in range(14):
        frame = InnerFrame(bytes(4), FrameKind.REPORT, 0x00, bytes(n), marker=0x00)
        pkt = FramedPacket(0x83, device_id=BRIDGE, msg_id=h("00 01 00"), frame=frame)
        assert firmware_version(decode_packet(pkt.encode())) is None
    frame = InnerFrame(bytes(4), FrameKind.REPORT, 0x00, bytes(13) + b"\x01", marker=0x00)
    pkt = FramedPacket(0x83, device_id=BRIDGE, msg_id=h("00 01 00"), frame=frame)
    assert firmware_version(pkt) == ("device", "")


def test_status_report_second_node_id_kept() -> None:
    report = StatusReport(0x67, True, 50, 20, (1, 2, 3), node_id2=0x68)
    pkt = build_report(BRIDGE, h("00 01 00"), report)
    assert decode_status_report(decode_packet(pkt.encode())) == report
    assert report.data()[3:7] == h("67 00 68 00")
