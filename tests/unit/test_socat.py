# The socat -v -x reader: both real logs decode with every byte accounted for, the interleaved
# records of clean_capture_test.txt are reported by line and the records around them kept, the
# 9-digit microsecond field, offsets that split connections, gaps, overlaps, garbled lines,
# chunking invariance of the stream reader, and the hello latency a model learns from them.
from __future__ import annotations

import random
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

from cyncsim.replay.capture import accounting_errors, detect_format, read_capture, read_captures
from cyncsim.replay.capture.stream import CaptureStream
from cyncsim.replay.errors import CaptureError
from cyncsim.replay.model import learn_model
from tests.support import capture_path

LOGS = ["socat/mode_test_capture.txt", "socat/clean_capture_test.txt"]
_HEADER = re.compile(rb"[<>] \d{4}/\d\d/\d\d \d\d:\d\d:\d\d\.\d{9}\s+length=(\d+) from=")


def _record(sender: str, when: str, frm: int, data: bytes) -> str:
    """One socat record as socat writes it (16 bytes a line, ASCII column, a line ends at \\n)."""
    lines, line = [], b""
    for b in data:
        line += bytes([b])
        if len(line) == 16 or b == 0x0A:
            lines.append(line)
            line = b""
    if line:
        lines.append(line)
    head = f"{sender} 2025/10/07 {when}  length={len(data)} from={frm} to={frm + len(data) - 1}"
    body = [
        " " + (chunk.hex(" ") + " ").ljust(48) + " "
        + "".join(chr(c) if 0x20 <= c < 0x7F else "." for c in chunk)
        for chunk in lines
    ]  # fmt: skip
    return "\n".join([head, *body, "--"]) + "\n"


HELLO = bytes.fromhex("230000001a0360b17c4a00103165303764326363616235666438356500003c")
HELLO_B = bytes.fromhex("230000001a0364a4f2da00103165303764326363616235666438356500003c")
HELLO_ACK = bytes.fromhex("28000000020000")
PING, PONG = bytes.fromhex("d300000000"), bytes.fromhex("d800000000")


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "log.txt"
    p.write_text(text, encoding="ascii")
    return p


@pytest.mark.parametrize("name", LOGS)
def test_real_logs_decode_with_every_byte_accounted(name: str) -> None:
    path = capture_path(name)
    result = read_capture(path)
    assert accounting_errors(result) == []
    assert len(result.flows) == 5
    assert {f.kind for f in result.flows} == {"cync"}
    ids = {f.device_id for f in result.flows}
    assert None not in ids and len(ids) == 5  # one device per connection
    for flow in result.flows:  # named from the accept notices: child pid, both addresses
        assert re.fullmatch(r".*#\d+", flow.id)
        assert flow.endpoints is not None and flow.endpoints[1] == "35.196.85.236:23779"
    # Independently of the reader: every header's length is in a flow or in a lost record.
    raw = path.read_bytes()
    declared = sum(int(m.group(1)) for m in _HEADER.finditer(raw))
    lost = sum(f.length for f in result.findings if f.reason == "bad_record" and f.sender)
    assert sum(sum(f.bytes_seen.values()) for f in result.flows) + lost == declared


def test_interleaved_records_are_reported_by_line_and_neighbours_kept() -> None:
    result = read_capture(capture_path("socat/clean_capture_test.txt"))
    bad = sorted(f.detail for f in result.findings if f.reason == "bad_record")
    assert [d.split(":")[0] for d in bad] == [
        "line 342", "line 343", "line 382", "line 383", "lines 389-391"
    ]  # fmt: skip
    assert "cut by the record header at line 343" in bad[0]
    assert "interleaved with the record at line 382" in bad[3]
    # Each lost record is a gap in its connection, so framing resumes after it.
    gaps = sorted((f.offset, f.length) for f in result.findings if f.reason == "gap")
    assert gaps == [(110, 5), (234, 43), (736, 35), (771, 43)]
    # The records right before and after each interleaving are kept.
    stamps = {round(fp.ts % 60, 6) for f in result.flows for fp in f.packets}
    for kept in (27.668397, 27.677515, 46.970555, 46.976295, 5.098436, 5.736609, 7.345222):
        assert kept in stamps


def test_nine_digit_field_is_microseconds() -> None:
    result = read_capture(capture_path("socat/mode_test_capture.txt"))
    first = min(fp.ts for f in result.flows for fp in f.packets)
    assert first == datetime(2025, 10, 7, 20, 39, 19, 824797, tzinfo=UTC).timestamp()


def test_imported_hello_latency_is_the_cloud_s() -> None:
    paths = [capture_path(n) for n in LOGS]
    model = learn_model(read_captures(paths))
    hello = model.exchange("0x23", "cloud")
    assert hello is not None and hello.responses[0].key == "0x28"
    assert 0.040 <= hello.responses[0].latency.p50 <= 0.050
    assert hello.responses[0].latency.count == 10


@pytest.mark.parametrize("name", LOGS)
def test_stream_reads_any_chunking_like_the_file(name: str) -> None:
    path = capture_path(name)
    whole = read_capture(path)
    data = path.read_bytes()
    want = sorted((f.id, fp.ts, fp.packet.encode()) for f in whole.flows for fp in f.packets)
    for seed in range(3):
        rnd = random.Random(seed)
        stream = CaptureStream(str(path))
        got, findings = [], []
        pos = 0
        while pos < len(data):
            n = rnd.randint(1, 400)
            batch = stream.feed(data[pos : pos + n])
            pos += n
            got += batch.packets
            findings += batch.findings
        batch = stream.close()
        got += batch.packets
        findings += batch.findings
        assert stream.format == "socat"
        assert sorted((f.id, fp.ts, fp.packet.encode()) for f, fp in got) == want
        assert sorted(map(repr, findings)) == sorted(map(repr, whole.findings))
        assert stream.summary().as_dict() == whole.summary()


def test_detected_from_content(tmp_path: Path) -> None:
    notice = b"2025/10/07 20:39:16 socat[12346] N listening on AF=2 0.0.0.0:23779\n"
    assert detect_format(notice) == "socat"
    assert detect_format(_record(">", "20:39:19.000824797", 0, HELLO).encode()) == "socat"
    assert detect_format(b"2025/10/07 20:39:16 something else\n") == "unknown"


def test_offsets_split_connections_and_find_gaps_and_overlaps(tmp_path: Path) -> None:
    log = (
        _record(">", "20:00:00.000000100", 0, HELLO)
        + _record(">", "20:00:00.000000200", 0, HELLO_B)
        + _record("<", "20:00:00.000040100", 0, HELLO_ACK)  # answers the first hello
        + _record("<", "20:00:00.000041200", 0, HELLO_ACK)
        + _record(">", "20:00:10.000000000", 31, PING)
        + _record("<", "20:00:10.000040000", 7, PONG)
        + _record(">", "20:00:20.000000000", 41, PING)  # 5 bytes (36..40) never logged
        + _record("<", "20:00:20.000040000", 12, PONG)
    )
    result = read_capture(_write(tmp_path, log))
    assert accounting_errors(result) == []
    a, b = result.flows
    assert a.device_id == HELLO[6:10] and b.device_id == HELLO_B[6:10]
    lat = [fp.ts for fp in a.packets[:2]]
    assert round((lat[1] - lat[0]) * 1000, 3) == 40.0  # the first ack went to the first hello
    reasons = {(f.reason, f.offset, f.length) for f in result.findings}
    assert ("gap", 36, 5) in reasons
    assert any(f.reason == "ambiguous_split" for f in result.findings)
    # One connection: a record that starts inside bytes already seen overlaps them.
    log = (
        _record(">", "20:00:00.000000100", 0, HELLO)
        + _record("<", "20:00:00.000040100", 0, HELLO_ACK)
        + _record("<", "20:00:00.000050000", 5, PONG)  # bytes 5, 6 seen already
    )
    result = read_capture(_write(tmp_path, log))
    assert accounting_errors(result) == []
    found = [(f.reason, f.offset, f.length) for f in result.findings]
    assert found == [("overlap", 5, 2), ("trailing_partial", 7, 3)]  # the rest is kept
    assert result.flows[0].bytes_seen == {"device": 31, "cloud": 10}


def test_garbled_lines_are_findings_and_the_rest_is_read(tmp_path: Path) -> None:
    good = _record(">", "20:00:00.000000100", 0, HELLO)
    bad = _record("<", "20:00:00.000040100", 0, HELLO_ACK).replace("(......", "(..x...")
    tail = _record(">", "20:00:10.000000000", 31, PING)
    result = read_capture(_write(tmp_path, good + bad + "stray line\n" + tail))
    assert accounting_errors(result) == []
    details = [f.detail for f in result.findings if f.reason == "bad_record"]
    assert details[0].startswith("line 5: garbled record (line 6 is not a hex line of it)")
    assert details[1] == "line 8: not part of any record"
    assert [fp.packet.type for fp in result.flows[0].packets] == [0x23, 0xD3]


def test_line_break_after_newline_byte_and_end_of_log(tmp_path: Path) -> None:
    data = bytes.fromhex("c8000000 0b0d07e90a 07030f271efe0c".replace(" ", ""))
    log = _record("<", "20:00:00.000000100", 0, data)
    assert log.count("\n") == 4  # header, two hex lines (the first ends at the 0x0a), --
    result = read_capture(_write(tmp_path, log + _record(">", "20:00:01.000000000", 0, HELLO)[:-3]))
    assert [fp.packet.type for f in result.flows for fp in f.packets] == [0xC8]
    assert any("cut short by the end of the log" in f.detail for f in result.findings)
    assert accounting_errors(result) == []


def test_a_log_of_only_bad_records_names_the_line(tmp_path: Path) -> None:
    bad = _record(">", "20:00:00.001000000", 0, HELLO)  # 1,000,000 us: no such time
    with pytest.raises(
        CaptureError, match=r"line 1: garbled record \(microsecond field 001000000"
    ) as err:
        read_capture(_write(tmp_path, bad))
    assert err.value.reason == "bad_record"
