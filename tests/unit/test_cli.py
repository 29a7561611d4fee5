# The `cyncsim inspect` and `cyncsim import` front ends, run in-process.
from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from cyncsim.replay.capture import DEFAULT_CLOUD_PORTS
from cyncsim.tools._capture_args import cloud_ports
from cyncsim.tools.cli import build_parser, main
from tests.support import capture_path


def _run(argv: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    code = main([*argv, "--no-progress"], out=out)
    return code, out.getvalue()


def test_inspect_json_lines_and_summary() -> None:
    path = capture_path("capture_20251107_152132.txt")
    code, text = _run(["inspect", "--json", str(path)])
    assert code == 0
    lines = [json.loads(line) for line in text.splitlines()]
    packets, summary = lines[:-1], lines[-1]["summary"]
    assert len(packets) == summary["packets"] == 2647
    first = packets[0]
    assert {"ts", "flow", "sender", "type", "length", "hex", "checksum_ok"} <= set(first)
    assert first["type"] == 0x23 and first["sender"] == "device" and first["length"] == 31
    assert bytes.fromhex(first["hex"])[:5] == bytes.fromhex("230000001a")
    stale = [p for p in packets if p["checksum_ok"] is False]
    assert len(stale) == summary["flagged_packets"] == 104
    assert all(p["type"] == 0x83 for p in stale)


def test_inspect_human_output_and_tls_capture() -> None:
    code, text = _run(["inspect", str(capture_path("capture_20251106_081101.txt"))])
    assert code == 0
    assert "0 packets in 1 flows {'tls': 1}" in text
    assert "tls: capture_20251106_081101.txt#all device offset 0 length 144" in text


def test_missing_file_is_one_clear_line(capsys: pytest.CaptureFixture[str]) -> None:
    code, _ = _run(["inspect", "/nonexistent/capture.pcap"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip() == "cyncsim inspect: error: /nonexistent/capture.pcap: no such file"


def test_unknown_format_names_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x00\x01\x02not a capture")
    code, _ = _run(["inspect", str(junk)])
    assert code == 2
    assert f"{junk}: unknown format" in capsys.readouterr().err


def test_import_json_and_model_inspect(tmp_path: Path) -> None:
    path = capture_path("capture_20251106_085753.txt")
    model = tmp_path / "m.msgpack"
    code, text = _run(["import", "--json", str(path), "-o", str(model)])
    assert code == 0
    obj = json.loads(text)
    d3 = next(k for k in obj["kinds"] if k["request"] == "0xd3")
    assert d3["role"] == "cloud" and d3["responses"] == ["0xd8"]
    assert set(d3["latency_ms"]) == {"p50", "p95", "p99"} and d3["samples"] > 1000
    assert 20 <= obj["heartbeat_idle_s"]["p50"] <= 22.5
    assert obj["devices"] == 25
    code, text = _run(["inspect", "--json", str(model)])
    assert code == 0 and json.loads(text) == obj


@pytest.mark.parametrize("command", ["inspect", "import", "diff"])
def test_capture_commands_share_cloud_port_and_progress_options(command: str) -> None:
    extra = ["ref.msgpack"] if command == "diff" else []
    parser = build_parser()
    args = parser.parse_args([command, *extra, "x.pcap"])
    assert cloud_ports(args) == DEFAULT_CLOUD_PORTS and args.no_progress is False
    args = parser.parse_args(
        [command, *extra, "x.pcap", "--cloud-port", "1", "--cloud-port", "2", "--no-progress"]
    )
    assert cloud_ports(args) == (1, 2) and args.no_progress is True
