# Capture readers: MITM text logs, socat -v -x logs, pcap and pcapng, told from content.
#
# ``read_capture`` loads a file, sniffs its format from the first bytes and hands it to the
# matching reader; every reader returns a CaptureResult of flows and findings, with every
# payload byte accounted for (``accounting_errors`` checks that).  Live streams (stdin, a
# FIFO) are read by capture.stream.CaptureStream with the same record walkers.
from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from cyncsim.replay.capture._format import HEAD_BYTES, detect_format, refuse, refuse_model
from cyncsim.replay.capture.model import (
    CLOUD,
    DEFAULT_CLOUD_PORTS,
    DEVICE,
    CaptureResult,
    Finding,
    Flow,
    FlowBuilder,
    FlowPacket,
    Sender,
)
from cyncsim.replay.capture.socat import read_socat
from cyncsim.replay.capture.text import read_text
from cyncsim.replay.errors import CaptureError

__all__ = [
    "CLOUD",
    "DEFAULT_CLOUD_PORTS",
    "DEVICE",
    "HEAD_BYTES",
    "CaptureResult",
    "Finding",
    "Flow",
    "FlowBuilder",
    "FlowPacket",
    "Sender",
    "accounting_errors",
    "detect_format",
    "read_capture",
    "read_captures",
]

# Flow findings for bytes that were never fed to a FlowBuilder (see capture/tcp.py).
_NOT_FED = frozenset({"gap", "overlap", "overlap_conflict", "before_start", "out_of_window"})

Progress = Callable[[int, int], None]


def load_bytes(path: str | Path, limit: int = -1) -> bytes:
    """Read a whole file (or its first ``limit`` bytes), OS errors as one clear CaptureError."""
    p = str(path)
    try:
        with Path(p).open("rb") as fh:
            return fh.read(limit)
    except OSError as exc:
        raise _os_error(p, exc) from None


def _os_error(p: str, exc: OSError) -> CaptureError:
    if isinstance(exc, FileNotFoundError):
        return CaptureError(p, "no such file", reason="not_found")
    if isinstance(exc, IsADirectoryError):
        return CaptureError(p, "is a directory, not a capture file", reason="unreadable")
    return CaptureError(p, f"cannot read: {exc.strerror or exc}", reason="unreadable")


def read_capture(
    path: str | Path,
    *,
    cloud_ports: tuple[int, ...] = DEFAULT_CLOUD_PORTS,
    progress: Progress | None = None,
) -> CaptureResult:
    """Read one capture file of any supported format."""
    p = str(path)
    # The format is told from the first bytes, before the rest is read: a large file that is
    # not a capture is refused without reading it whole.
    fmt, data = _read_known(p)
    if fmt == "text":
        return read_text(p, data, progress=progress)
    if fmt == "socat":
        return read_socat(p, data, progress=progress)
    from cyncsim.replay.capture.pcap import read_pcap

    return read_pcap(p, data, cloud_ports=cloud_ports, progress=progress)


def _read_known(p: str) -> tuple[str, bytes]:
    """(format, whole content) of a capture file, read once (a FIFO cannot be read twice)."""
    try:
        with Path(p).open("rb") as fh:
            head = fh.read(HEAD_BYTES)
            fmt = detect_format(head)
            if fmt == "unknown":
                refuse(p, head)
            if fmt == "model":
                refuse_model(p)
            return fmt, head + fh.read()
    except OSError as exc:
        raise _os_error(p, exc) from None


def read_captures(
    paths: Iterable[str | Path],
    *,
    cloud_ports: tuple[int, ...] = DEFAULT_CLOUD_PORTS,
    progress: Progress | None = None,
) -> CaptureResult:
    result = CaptureResult()
    for p in paths:
        result.extend(read_capture(p, cloud_ports=cloud_ports, progress=progress))
    return result


def accounting_errors(result: CaptureResult) -> list[str]:
    """Flows and directions whose payload bytes are not all in packets or findings.

    Packets flagged as defective are still packets (their ``defect:`` findings are flags, not
    extra bytes); ``gap`` findings count bytes that were never captured, so they are left out.
    """
    covered: dict[tuple[str, str], int] = {}
    for flow in result.flows:
        for fp in flow.packets:
            key = (flow.id, fp.sender)
            covered[key] = covered.get(key, 0) + len(fp.packet)
    for f in result.findings:
        if f.sender is None or f.reason in _NOT_FED or f.reason.startswith("defect:"):
            continue
        if f.reason in ("not_tcp", "ip_fragment", "bad_record", "truncated_file"):
            continue
        key = (f.flow, f.sender)
        covered[key] = covered.get(key, 0) + f.length
    errors = []
    for flow in result.flows:
        for sender, seen in flow.bytes_seen.items():
            got = covered.get((flow.id, sender), 0)
            if got != seen:
                errors.append(f"{flow.id} {sender}: {seen} bytes seen, {got} accounted")
    return errors
