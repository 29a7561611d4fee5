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
#
# ``TextWalker`` keeps the reader's state between calls, so the same loop reads a whole file
# at once and a live stream chunk by chunk (capture/stream.py).
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
    PacketSink,
    Sender,
    gc_paused,
    time_problem,
)
from cyncsim.replay.errors import CaptureError
from cyncsim.replay.framer import PacketFramer
from cyncsim.replay.protocol import PacketType

__all__ = ["TextWalker", "looks_like_text", "read_text"]

_HEAD = re.compile(
    rb"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:?\d\d)?)\s+"
    rb"(DEV(?:\xe2\x86\x92|->)CLOUD|CLOUD(?:\xe2\x86\x92|->)DEV)"
    rb"((?:\s+\[[^\]]*\])*)\s+\((\d+) bytes\)\s*$"
)
_TAG = re.compile(rb"\[([^\]]*)\]")
_HEX_OK = re.compile(rb"^[0-9a-fA-F\s]*$")
# A stream's record whose lines do not end within this many bytes is refused, not buffered on:
# one proxy read() is at most 64 KiB, about 200 KB of hex.
_MAX_PENDING = 4 << 20


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
    result = CaptureResult(sources=[path])
    walker = TextWalker(path, result.findings)
    walker.progress = progress
    with gc_paused():  # everything made here is kept: see model.gc_paused
        walker.walk(data, 0, final=True)
        walker.finish()
    result.flows = walker.flows
    if progress is not None:
        progress(len(data), len(data))
    return result


class TextWalker:
    """The text log's records: consumes whole records from a buffer, keeps its state between calls.

    ``walk(buf, pos, base)`` reads the records whose lines are complete in ``buf[pos:]`` and
    returns where the first incomplete one starts (``final=True``: the input ends there, so
    the last line needs no newline); ``base`` is the file offset of ``buf[0]``.  ``finish``
    closes the flows at the end of the input.  A whole file keeps its flows in ``flows``; a
    stream (``sink`` given) has its packets put in the sink and finished flows in ``closed``.
    """

    def __init__(self, path: str, findings: list[Finding], sink: PacketSink | None = None):
        self.path = path
        self.name = path.rsplit("/", 1)[-1]
        self.findings = findings
        self.sink = sink
        self.flows: list[Flow] = []  # every flow, in order of creation (whole file)
        self.closed: list[Flow] = []  # stream: flows finished since the caller last looked
        self.conns: dict[bytes, _ConnState] = {}
        self.epochs: dict[bytes, int] = {}
        self.mixed: FlowBuilder | None = None
        self.line_no = 0
        self.records = 0
        self.last_ts = 0.0
        self.first_bad: Finding | None = None
        self.progress: Callable[[int, int], None] | None = None

    def walk(self, data: bytes, pos: int, base: int = 0, *, final: bool = False) -> int:
        path, name, findings = self.path, self.name, self.findings
        conns = self.conns
        progress = self.progress
        total = len(data)
        line_no = self.line_no
        step = max(total // 200, 1 << 16)
        next_report = step
        while pos < total:
            nl = data.find(b"\n", pos)
            if nl < 0 and not final:
                break
            end = total if nl < 0 else nl
            line = data[pos:end].rstrip(b"\r")
            line_start = pos
            if not line.strip():
                pos = end + 1
                line_no += 1
                continue
            m = _HEAD.match(line)
            if m is None:
                pos = end + 1
                line_no += 1
                self._bad(base + line_start, len(line), f"line {line_no}: not a record header")
                continue
            hex_start = end + 1
            nl = data.find(b"\n", hex_start)
            if nl < 0 and not final:
                break  # the record's hex line is still to come
            end = total if nl < 0 else nl
            hex_line = data[hex_start:end].rstrip(b"\r")
            pos = end + 1
            line_no += 2
            ts = _parse_ts(path, m.group(1), line_no - 1, base + line_start)
            self.last_ts = ts
            sender: Sender = DEVICE if m.group(2).startswith(b"DEV") else CLOUD
            declared = int(m.group(4))
            tags = [t.decode("utf-8", "replace") for t in _TAG.findall(m.group(3))]
            conn = next((t for t in tags if t.startswith("conn:")), None)
            tags = [t for t in tags if not t.startswith("conn:")]
            if not _HEX_OK.match(hex_line):
                self._bad(
                    base + hex_start,
                    len(hex_line),
                    f"line {line_no}: payload is not hex",
                    sender,
                    ts,
                )
                continue
            payload = bytes.fromhex(hex_line.decode("ascii"))
            if len(payload) != declared:
                findings.append(
                    Finding(path, name, sender, base + hex_start, len(hex_line), "bad_record",
                            f"line {line_no}: header says {declared} bytes, hex has "
                            f"{len(payload)}", ts)
                )  # fmt: skip
            self.records += 1
            tag_t = tuple(tags)
            if conn is None:
                mixed = self.mixed
                if mixed is None:
                    mixed = self.mixed = self._builder(f"{name}#all", exact=False)
                mixed.feed_record(sender, ts, payload, tag_t)
            else:
                key = conn.encode()
                state = conns.get(key)
                if (
                    sender == DEVICE
                    and state is not None
                    and state.has_hello
                    and _has_hello(payload)
                ):
                    self._close(state.builder, ts)
                    state = None
                if state is None:
                    epoch = self.epochs.get(key, 0) + 1
                    self.epochs[key] = epoch
                    builder = self._builder(f"{name}#{conn}/{epoch}", exact=True)
                    state = conns[key] = _ConnState(builder, epoch)
                state.builder.feed(sender, ts, payload, tag_t)
                if sender == DEVICE and not state.has_hello:
                    state.has_hello = state.builder.flow.device_id is not None
            if progress is not None and pos >= next_report:
                progress(base + min(pos, total), base + total)
                next_report = pos + step
        self.line_no = line_no
        if not final and total - pos > _MAX_PENDING:
            raise CaptureError(
                path,
                f"line {line_no + 1}: no end of record within {_MAX_PENDING} bytes",
                reason="corrupt",
                offset=base + pos,
            )
        return pos

    def finish(self) -> None:
        """End of input: close every flow; a log without a good record is a CaptureError."""
        if self.records == 0:
            bad = self.first_bad
            if bad is not None:  # the file has records, all of them bad: say what is wrong
                raise CaptureError(self.path, bad.detail, reason="bad_record", offset=bad.offset)
            raise CaptureError(self.path, "no MITM text records found", reason="unknown_format")
        if self.mixed is not None:
            self._close(self.mixed, self.last_ts)
        for state in self.conns.values():
            self._close(state.builder, self.last_ts)
        self.conns = {}
        self.mixed = None

    def open_flows(self) -> list[Flow]:
        mixed = [self.mixed.flow] if self.mixed is not None else []
        return mixed + [state.builder.flow for state in self.conns.values()]

    def _builder(self, flow_id: str, *, exact: bool) -> FlowBuilder:
        flow = Flow(id=flow_id, source=self.path, exact=exact)
        if self.sink is None:
            self.flows.append(flow)
        return FlowBuilder(flow, self.findings, self.sink)

    def _close(self, builder: FlowBuilder, ts: float) -> None:
        builder.close(ts)
        if self.sink is not None:
            self.closed.append(builder.flow)

    def _bad(
        self, offset: int, length: int, detail: str, sender: Sender | None = None,
        ts: float | None = None,
    ) -> None:  # fmt: skip
        finding = Finding(self.path, self.name, sender, offset, length, "bad_record", detail, ts)
        self.findings.append(finding)
        if self.first_bad is None:
            self.first_bad = finding


def _has_hello(payload: bytes) -> bool:
    """Whether a device record holds a 0x23 hello (framed on its own, without side effects)."""
    if PacketType.HELLO not in payload:
        return False
    return any(p.type == PacketType.HELLO for p in PacketFramer().feed(payload))
