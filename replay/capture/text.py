# Reader for the text logs of the TLS-terminating MITM proxy.
#
# Format: a record is a line ``ISO-timestamp DIRECTION [tag]... (N bytes)``, a line of hex,
# then a blank line.  DIRECTION is ``DEV→CLOUD`` or ``CLOUD→DEV`` (``->`` accepted too).  A
# record is one read() by the proxy: it may hold several packets or part of one.
#
# Connections: with ``[conn:N]`` tags each conn id is one byte stream per direction, framed
# continuously (packets split across records are joined).  Conn ids are Python object ids
# and get reused, so a device 0x23 on a conn that already had one starts a new flow.  Without
# conn ids the records of all connections are interleaved: the whole file is one inexact
# flow and every record is framed on its own.
from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime

from cyncsim.replay.capture.model import (
    CLOUD,
    DEVICE,
    CaptureResult,
    Finding,
    Flow,
    FlowBuilder,
    Sender,
    gc_paused,
    time_problem,
)
from cyncsim.replay.errors import CaptureError
from cyncsim.replay.framer import PacketFramer
from cyncsim.replay.protocol import PacketType

__all__ = ["looks_like_text", "read_text"]

_HEAD = re.compile(
    rb"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:?\d\d)?)\s+"
    rb"(DEV(?:\xe2\x86\x92|->)CLOUD|CLOUD(?:\xe2\x86\x92|->)DEV)"
    rb"((?:\s+\[[^\]]*\])*)\s+\((\d+) bytes\)\s*$"
)
_TAG = re.compile(rb"\[([^\]]*)\]")
_HEX_OK = re.compile(rb"^[0-9a-fA-F\s]*$")


def looks_like_text(head: bytes) -> bool:
    first = head.split(b"\n", 1)[0].rstrip(b"\r")
    return _HEAD.match(first) is not None


def _parse_ts(path: str, raw: bytes, line_no: int, offset: int) -> float:
    """The record's time; a date that does not exist is a CaptureError naming the line."""
    text = raw.decode("ascii")
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)  # the proxy logs UTC (PROTOCOL.md section 0)
        ts = dt.timestamp()
    except (ValueError, OverflowError) as exc:
        raise CaptureError(
            path,
            f"line {line_no}: bad timestamp {text!r}: {exc}",
            reason="bad_timestamp",
            offset=offset,
        ) from None
    problem = time_problem(ts)
    if problem is not None:
        raise CaptureError(
            path, f"line {line_no}: {problem} ({text!r})", reason="bad_timestamp", offset=offset
        )
    return ts


class _ConnState:
    __slots__ = ("builder", "epoch", "has_hello")

    def __init__(self, builder: FlowBuilder, epoch: int) -> None:
        self.builder = builder
        self.epoch = epoch
        self.has_hello = False


def read_text(
    path: str,
    data: bytes,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> CaptureResult:
    """Read one MITM text log (already loaded as ``data``) into flows and findings."""
    with gc_paused():  # everything made here is kept: see model.gc_paused
        return _read_text(path, data, progress)


def _read_text(
    path: str, data: bytes, progress: Callable[[int, int], None] | None
) -> CaptureResult:
    name = path.rsplit("/", 1)[-1]
    result = CaptureResult(sources=[path])
    findings = result.findings
    conns: dict[bytes, _ConnState] = {}
    epochs: dict[bytes, int] = {}
    mixed: FlowBuilder | None = None
    total = len(data)
    pos = 0
    line_no = 0
    records = 0
    last_ts = 0.0
    step = max(total // 200, 1 << 16)
    next_report = step
    while pos < total:
        nl = data.find(b"\n", pos)
        end = total if nl < 0 else nl
        line = data[pos:end].rstrip(b"\r")
        line_start = pos
        pos = end + 1
        line_no += 1
        if not line.strip():
            continue
        m = _HEAD.match(line)
        if m is None:
            findings.append(
                Finding(path, name, None, line_start, len(line), "bad_record",
                        f"line {line_no}: not a record header", None)
            )  # fmt: skip
            continue
        nl = data.find(b"\n", pos)
        end = total if nl < 0 else nl
        hex_line = data[pos:end].rstrip(b"\r")
        hex_start = pos
        pos = end + 1
        line_no += 1
        ts = _parse_ts(path, m.group(1), line_no - 1, line_start)
        last_ts = ts
        sender: Sender = DEVICE if m.group(2).startswith(b"DEV") else CLOUD
        declared = int(m.group(4))
        tags = [t.decode("utf-8", "replace") for t in _TAG.findall(m.group(3))]
        conn = next((t for t in tags if t.startswith("conn:")), None)
        tags = [t for t in tags if not t.startswith("conn:")]
        if not _HEX_OK.match(hex_line):
            findings.append(
                Finding(path, name, sender, hex_start, len(hex_line), "bad_record",
                        f"line {line_no}: payload is not hex", ts)
            )  # fmt: skip
            continue
        payload = bytes.fromhex(hex_line.decode("ascii"))
        if len(payload) != declared:
            findings.append(
                Finding(path, name, sender, hex_start, len(hex_line), "bad_record",
                        f"line {line_no}: header says {declared} bytes, hex has {len(payload)}", ts)
            )  # fmt: skip
        records += 1
        tag_t = tuple(tags)
        if conn is None:
            if mixed is None:
                flow = Flow(id=f"{name}#all", source=path, exact=False)
                mixed = FlowBuilder(flow, findings)
                result.flows.append(flow)
            mixed.feed_record(sender, ts, payload, tag_t)
        else:
            key = conn.encode()
            state = conns.get(key)
            if sender == DEVICE and state is not None and state.has_hello and _has_hello(payload):
                state.builder.close(ts)
                state = None
            if state is None:
                epoch = epochs.get(key, 0) + 1
                epochs[key] = epoch
                flow = Flow(id=f"{name}#{conn}/{epoch}", source=path, exact=True)
                state = conns[key] = _ConnState(FlowBuilder(flow, findings), epoch)
                result.flows.append(flow)
            state.builder.feed(sender, ts, payload, tag_t)
            if sender == DEVICE and not state.has_hello:
                state.has_hello = state.builder.flow.device_id is not None
        if progress is not None and pos >= next_report:
            progress(min(pos, total), total)
            next_report = pos + step
    if records == 0:
        bad = next((f for f in findings if f.reason == "bad_record"), None)
        if bad is not None:  # the file has records, all of them bad: say what is wrong
            raise CaptureError(path, bad.detail, reason="bad_record", offset=bad.offset)
        raise CaptureError(path, "no MITM text records found", reason="unknown_format")
    if mixed is not None:
        mixed.close(last_ts)
    for state in conns.values():
        state.builder.close(last_ts)
    if progress is not None:
        progress(total, total)
    return result


def _has_hello(payload: bytes) -> bool:
    """Whether a device record holds a 0x23 hello (framed on its own, without side effects)."""
    if PacketType.HELLO not in payload:
        return False
    return any(p.type == PacketType.HELLO for p in PacketFramer().feed(payload))
