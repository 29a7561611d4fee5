# Bad input through the CLI (issue 16, items 4 and 5): impossible times, a huge file that is
# not a capture, a capture with nothing in it, and a log whose only record is bad. Each is one
# line on stderr naming the file and the place, exit status 2, and no traceback or file left.
from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import pytest

from cyncsim.replay.capture.pcapwrite import (
    Frame,
    Interface,
    TcpConversation,
    write_pcap,
    write_pcapng,
)
from cyncsim.tools.cli import main

# A real hello (protocol-examples.md, 0x23 DEV->CLOUD)
HELLO = bytes.fromhex(
    "23 00 00 00 1a 03 38 e8 cf 46 00 10 31 65 30 37 64 38 63 65 30 61 36 31 37 61 33 37 00 00 3c"
)


def _one_line_error(capsys: pytest.CaptureFixture[str], code: int, *needles: str) -> str:
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, err
    return err


def _conversation_frames(ts: float) -> list[Frame]:
    conv = TcpConversation(("127.0.0.2", 40000), ("127.0.0.1", 23779))
    return [*conv.handshake(ts), *conv.send(ts + 0.01, "client", HELLO)]


def _first_packet_block(data: bytes | bytearray) -> int:
    """Offset of the first enhanced packet block (type 6), walking the blocks."""
    pos = 0
    while True:
        btype, blen = struct.unpack_from("<II", data, pos)
        if btype == 6:
            return pos
        pos += blen


def _pcapng_with_stamp(path: Path, hi: int, lo: int) -> None:
    write_pcapng(path, _conversation_frames(1_700_000_000.0))
    data = bytearray(path.read_bytes())
    struct.pack_into("<II", data, _first_packet_block(data) + 12, hi, lo)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("verb", ["inspect", "diff"])
def test_pcapng_time_past_year_9999(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], verb: str
) -> None:
    cap = tmp_path / "late.pcapng"
    _pcapng_with_stamp(cap, 0xFFFFFFFF, 0xFFFFFFFF)
    argv = [verb, str(cap)] if verb == "inspect" else [verb, str(cap), str(cap)]
    code = main([*argv, "--no-progress"])
    _one_line_error(capsys, code, "late.pcapng at offset", "packet block", "outside the years")


def test_pcapng_interface_offset_minus_2_63(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cap = tmp_path / "offset.pcapng"
    write_pcapng(cap, _conversation_frames(1_700_000_000.0))
    data = bytearray(cap.read_bytes())
    # Rewrite with an interface whose tsoffset option is -2**63.
    write_pcapng(cap, [], interfaces=[Interface(tsoffset=-(2**63))])
    head = cap.read_bytes()
    epbs = bytes(data[_first_packet_block(data) :])
    cap.write_bytes(head + epbs)
    code = main(["inspect", str(cap), "--no-progress"])
    _one_line_error(capsys, code, "offset.pcapng at offset", "outside the years")


@pytest.mark.parametrize(
    ("stamp", "why"),
    [("2025-13-45T99:99:99", "bad timestamp"), ("9999-12-31T23:59:59.999999", "outside the years")],
)
def test_text_log_impossible_dates(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], stamp: str, why: str
) -> None:
    cap = tmp_path / "dates.txt"
    good = "2025-11-07T15:21:32.000001 DEV→CLOUD [conn:1] (31 bytes)\n" + HELLO.hex() + "\n\n"
    bad = f"{stamp} DEV→CLOUD [conn:1] (31 bytes)\n" + HELLO.hex() + "\n\n"
    cap.write_text(good + bad, encoding="utf-8")
    code = main(["inspect", str(cap), "--no-progress"])
    _one_line_error(capsys, code, "dates.txt at offset", "line 4:", why, stamp)


def test_only_record_with_bad_hex_names_the_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cap = tmp_path / "badhex.txt"
    cap.write_text("2025-11-07T15:21:32.000001 DEV→CLOUD (3 bytes)\nzz zz zz\n\n", encoding="utf-8")
    code = main(["inspect", str(cap), "--no-progress"])
    _one_line_error(capsys, code, "line 2: payload is not hex")


def test_a_pcap_with_only_its_header_is_nothing_to_learn(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cap = tmp_path / "empty.pcap"
    write_pcap(cap, [])
    model = tmp_path / "model.msgpack"
    code = main(["import", str(cap), "-o", str(model), "--no-progress"])
    _one_line_error(capsys, code, "nothing to learn", "empty.pcap")
    assert not model.exists()


def test_a_huge_file_that_is_not_a_capture_is_refused_from_its_first_bytes(
    tmp_path: Path,
) -> None:
    junk = tmp_path / "junk.bin"
    with junk.open("wb") as fh:
        fh.write(bytes.fromhex("32303235 2f31302f 00ff00ff"))
        fh.truncate(200 * 1024 * 1024)  # 200 MB (sparse: writing it costs nothing)
    # The child reports its own peak (VmHWM belongs to the process image, so unlike
    # ru_maxrss it does not count the pages of the forked test runner).
    probe = (
        "import sys\n"
        "from cyncsim.tools.cli import main\n"
        "code = main(sys.argv[1:])\n"
        "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0]\n"
        "print(int(hwm.split()[1]) // 1024)\n"
        "sys.exit(code)\n"
    )
    for verb in ("inspect", "import"):
        ran = subprocess.run(
            [sys.executable, "-c", probe, verb, str(junk), "--no-progress"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert ran.returncode == 2, ran.stderr
        assert "unknown format" in ran.stderr and ran.stderr.count("\n") == 1
        peak_mb = int(ran.stdout)
        assert peak_mb < 100, f"{verb} peaked at {peak_mb} MB for a 200 MB file"
