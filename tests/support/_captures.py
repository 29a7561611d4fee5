# Shared reference data for the tests: where the repository and the shared captures are, one
# capture by name (skipping with the reason when it is absent), the reference documents beside
# them, a tiny independent reader of MITM text records, and writers of candidate logs.
#
# Strategy: the captures folder comes from cyncsim.captures.shared_captures_dir() (env
# CYNCSIM_CAPTURES, else the shared folder beside the repository), the one place that knows;
# tests never copy capture files into the repository.  The text reader here is deliberately
# separate from replay.capture, so codec tests do not check the reader against itself.
from __future__ import annotations

import heapq
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from cyncsim.captures import shared_captures_dir
from cyncsim.replay.capture import CaptureResult
from tests.support._packets import request_of

__all__ = [
    "REPO_ROOT",
    "CaptureRecord",
    "Flows",
    "Packet",
    "capture_path",
    "capture_records",
    "decoded_flows",
    "indices",
    "shared_doc",
    "write_text_log",
]

REPO_ROOT = Path(__file__).resolve().parents[2]

Packet = tuple[float, str, bytes]  # (ts, sender, raw bytes)
Flows = list[list[Packet]]


def capture_path(name: str) -> Path:
    """Path of one shared capture; skips the calling test when the file is missing."""
    path = shared_captures_dir() / name
    if not path.is_file():
        pytest.skip(f"capture {name} not found in {path.parent} (set CYNCSIM_CAPTURES)")
    return path


def shared_doc(name: str) -> Path | None:
    """A shared reference document (e.g. protocol-examples.md) beside the captures folder."""
    for folder in (shared_captures_dir().parent, REPO_ROOT.parent / "shared"):
        if (folder / name).is_file():
            return folder / name
    return None


@dataclass(frozen=True, slots=True)
class CaptureRecord:
    """One record of a MITM text capture: a single read() by the proxy."""

    line: int  # 1-based line of the record header
    timestamp: str
    direction: str  # "DEV→CLOUD" or "CLOUD→DEV"
    conn: str | None  # the [conn:N] id, when the file has them
    tags: tuple[str, ...]  # every [tag], e.g. ("conn:281473324703696",) or ("INJECTED",)
    data: bytes


_RECORD_HEAD = re.compile(r"^(\S+) (DEV→CLOUD|CLOUD→DEV)((?: \[[^\]]*\])*) \((\d+) bytes\)$")


def capture_records(path: Path) -> list[CaptureRecord]:
    """Tiny reader for tests of the codec (the real reader is replay.capture).

    Format: a line ``ISO-timestamp DIRECTION [tags] (N bytes)``, a line of hex, a blank line.
    """
    lines = path.read_text(encoding="utf-8").splitlines()
    out: list[CaptureRecord] = []
    i = 0
    while i < len(lines):
        if not lines[i].strip():
            i += 1
            continue
        m = _RECORD_HEAD.match(lines[i])
        assert m, f"{path.name}:{i + 1}: not a record header: {lines[i][:80]!r}"
        data = bytes.fromhex(lines[i + 1])
        assert len(data) == int(m.group(4)), f"{path.name}:{i + 1}: byte count differs"
        tags = tuple(re.findall(r"\[([^\]]*)\]", m.group(3)))
        conn = next((t[5:] for t in tags if t.startswith("conn:")), None)
        out.append(CaptureRecord(i + 1, m.group(1), m.group(2), conn, tags, data))
        i += 2
    return out


def decoded_flows(result: CaptureResult) -> Flows:
    """Each flow of a read capture as (ts, sender, raw bytes) packets."""
    return [[(fp.ts, fp.sender, fp.packet.encode()) for fp in f.packets] for f in result.flows]


def indices(flow: Sequence[Packet], request: str, sender: str) -> list[int]:
    """Positions in ``flow`` of the packets of ``sender`` whose request key is ``request``."""
    return [i for i, (_, s, raw) in enumerate(flow) if s == sender and request_of(raw) == request]


def write_text_log(path: Path, flows: Sequence[Sequence[Packet]]) -> None:
    """One MITM text record per packet; flow n gets [conn:n+1]; per-flow order is kept."""
    streams = [[(ts, n, s, raw) for ts, s, raw in pk] for n, pk in enumerate(flows)]
    lines = []
    for ts, n, sender, raw in heapq.merge(*streams, key=lambda r: r[0]):
        arrow = "DEV→CLOUD" if sender == "device" else "CLOUD→DEV"
        stamp = datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")
        lines.append(f"{stamp} {arrow} [conn:{n + 1}] ({len(raw)} bytes)\n{raw.hex(' ')}\n")
    path.write_text("\n".join(lines), encoding="utf-8")
