# Output that shows the finding (issue 16, item 7): a difference inside a long field is shown as
# the bytes around it, in the terminal and in the HTML table, with the whole value behind a
# details element; the HTML header gives each finding the severity its table row shows.
from __future__ import annotations

import re
from pathlib import Path

import pytest

from cyncsim.replay.conformance.pairing import FIELD_WINDOW, field_pair
from cyncsim.replay.protocol import decode_packet
from cyncsim.tools.cli import main
from tests.support import capture_path

CAPTURE = "capture_20251107_152132.txt"


def test_field_pair_cuts_long_fields_around_the_first_difference() -> None:
    want = bytes(750)
    got = bytearray(want)
    got[380] = 0xFF
    expected, actual = field_pair(want, bytes(got))
    assert expected.startswith("(bytes 376-391 of 750)") and actual.startswith("(bytes 376-391")
    assert actual.split(") ", 1)[1].split()[4] == "ff"
    assert len(actual.split(") ", 1)[1].split()) == FIELD_WINDOW
    assert field_pair(b"\x01\x02", b"\x01\x03") == ("01 02", "01 03")  # short: whole


def _mesh_table_changed(tmp_path: Path) -> Path:
    """The capture with one byte of its 773-byte mesh table changed (checksum kept right)."""
    lines = capture_path(CAPTURE).read_text(encoding="utf-8").split("\n")
    at = next(i for i, line in enumerate(lines) if "(773 bytes)" in line) + 1
    raw = bytearray.fromhex(lines[at])
    raw[400] ^= 0xFF
    frame = decode_packet(bytes(raw), strict=False).frame  # type: ignore[attr-defined]
    raw[-2] = frame.expected_checksum()
    assert decode_packet(bytes(raw)).type == 0x73
    lines[at] = raw.hex(" ")
    cand = tmp_path / "changed.txt"
    cand.write_text("\n".join(lines), encoding="utf-8")
    return cand


@pytest.mark.needs_capture
def test_a_constant_mismatch_in_the_mesh_table_shows_the_window(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cand = _mesh_table_changed(tmp_path)
    html = tmp_path / "report.html"
    code = main(["diff", str(capture_path(CAPTURE)), str(cand), "--no-progress",
                 "--html", str(html)])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0  # one weak constant is a warning, not a failure
    block = out[out.index("constant_mismatch") :].splitlines()
    expected = next(line for line in block if line.strip().startswith("expected:"))
    actual = next(line for line in block if line.strip().startswith("actual:"))
    assert "of 750)" in expected and len(expected) < 120, expected
    assert "ff" in actual.split(") ", 1)[1] and len(actual) < 120, actual

    page = html.read_text(encoding="utf-8")
    header = re.search(r"findings: ([^<]*)</p>", page)
    assert header is not None and "constant_mismatch: 1 (warning)" in header.group(1)
    row = page[page.index('<tr class="finding"><td>constant_mismatch') :].split("</tr>", 1)[0]
    assert '<td class="warning">warning</td>' in row
    assert "<details><summary>" in row and "of 750)" in row
    assert row.count("<mark>ff</mark>") == 2  # in the window and in the whole value
