# read_capture's format detection and its one-line errors, and the text reader's findings.
from __future__ import annotations

from pathlib import Path

import pytest

from cyncsim.captures import DEFAULT_MODEL_PATH
from cyncsim.replay.capture import accounting_errors, detect_format, read_capture, read_captures
from cyncsim.replay.errors import CaptureError


def test_detect_format() -> None:
    assert detect_format(b"\xd4\xc3\xb2\xa1....") == "pcap"
    assert detect_format(b"\x4d\x3c\xb2\xa1....") == "pcap"
    assert detect_format(b"\x0a\x0d\x0d\x0a....") == "pcapng"
    assert detect_format(DEFAULT_MODEL_PATH.read_bytes()[:256]) == "model"
    head = b"2025-11-07T15:21:33.605231 DEV\xe2\x86\x92CLOUD [conn:1] (5 bytes)\nd300000000\n"
    assert detect_format(head) == "text"
    assert detect_format(b"hello world") == "unknown"


@pytest.mark.parametrize(
    ("content", "reason", "text"),
    [
        (b"", "unknown_format", "file is empty"),
        (b"\x01\x02\x03garbage", "unknown_format", "unknown format (first bytes 01 02 03"),
    ],
)
def test_bad_files(tmp_path: Path, content: bytes, reason: str, text: str) -> None:
    f = tmp_path / "x.cap"
    f.write_bytes(content)
    with pytest.raises(CaptureError) as err:
        read_capture(f)
    assert err.value.reason == reason and text in str(err.value) and str(f) in str(err.value)


def test_directory_and_model_are_refused(tmp_path: Path) -> None:
    with pytest.raises(CaptureError, match="is a directory") as err:
        read_capture(tmp_path)
    assert err.value.reason == "unreadable"
    with pytest.raises(CaptureError, match="is a cyncsim model file") as err:
        read_capture(DEFAULT_MODEL_PATH)
    assert err.value.reason == "not_a_capture"


def test_text_log_with_broken_records(tmp_path: Path) -> None:
    log = tmp_path / "broken.txt"
    log.write_text(
        "2025-11-07T15:21:33.000000 DEV→CLOUD [conn:7] (5 bytes)\n"
        "d300000000\n\n"
        "this line is not a record header\n\n"
        "2025-11-07T15:21:33.100000 CLOUD→DEV [conn:7] (5 bytes)\n"
        "d8 00 00 zz 00\n\n"
        "2025-11-07T15:21:33.200000 CLOUD→DEV [conn:7] (6 bytes)\n"
        "d800000000\n\n"
        "2025-11-07T15:21:34.000000 DEV->CLOUD [conn:7] (3 bytes)\n"
        "d30000\n",
        encoding="utf-8",
    )
    result = read_capture(log)
    reasons = [(f.reason, f.detail) for f in result.findings]
    assert ("bad_record", "line 4: not a record header") in reasons
    assert ("bad_record", "line 7: payload is not hex") in reasons
    assert ("bad_record", "line 10: header says 6 bytes, hex has 5") in reasons
    assert any(r == "trailing_partial" for r, _ in reasons)  # d3 00 00 never completed
    (flow,) = result.flows
    assert [fp.packet.type for fp in flow.packets] == [0xD3, 0xD8]
    assert accounting_errors(result) == []


def test_reused_conn_id_starts_a_new_flow_at_each_hello(tmp_path: Path) -> None:
    hello = "230000001a036457e7f200103165303764346339646435343634303100003c"
    log = tmp_path / "reuse.txt"
    log.write_text(
        f"2025-11-07T15:00:00.000000 DEV→CLOUD [conn:9] (31 bytes)\n{hello}\n\n"
        "2025-11-07T15:00:00.010000 CLOUD→DEV [conn:9] (7 bytes)\n28000000020000\n\n"
        f"2025-11-07T15:00:15.000000 DEV→CLOUD [conn:9] (31 bytes)\n{hello}\n\n",
        encoding="utf-8",
    )
    result = read_captures([log])
    assert [f.id for f in result.flows] == ["reuse.txt#conn:9/1", "reuse.txt#conn:9/2"]
    assert all(f.device_id == bytes.fromhex("6457e7f2") for f in result.flows)
    assert len(result.flows[0].packets) == 2 and len(result.flows[1].packets) == 1
