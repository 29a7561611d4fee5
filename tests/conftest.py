# Shared test helpers: where the shared reference data (captures, protocol notes) lives.
#
# Tests never copy capture files into the repository; they read them from the directory named
# by env CYNCSIM_CAPTURES (default <repo>/../shared/captures) and skip, with the reason, when a
# file is missing.
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

pytest_plugins = ("pytester",)

REPO_ROOT = Path(__file__).resolve().parent.parent


def captures_dir() -> Path:
    """Directory of the shared capture files (env CYNCSIM_CAPTURES, else ../shared/captures)."""
    env = os.environ.get("CYNCSIM_CAPTURES")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "captures"


def capture_path(name: str) -> Path:
    """Path of one shared capture; skips the calling test when the file is missing."""
    path = captures_dir() / name
    if not path.is_file():
        pytest.skip(f"capture {name} not found in {captures_dir()} (set CYNCSIM_CAPTURES)")
    return path


def shared_doc(name: str) -> Path | None:
    """A shared reference document (e.g. protocol-examples.md) beside the captures folder."""
    for folder in (captures_dir().parent, REPO_ROOT.parent / "shared"):
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
