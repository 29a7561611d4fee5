# Reader for ``socat -v -x`` logs (socat as the TLS-terminating proxy between device and cloud).
#
# Format: a record is a header ``> 2025/10/07 20:10:05.000069602  length=31 from=0 to=30``
# (``>`` device to cloud, ``<`` cloud to device), hex lines of 16 bytes with an ASCII column
# (a line also ends after a 0x0a byte), then ``--``.  With ``-d -d`` socat interleaves notices
# ``2025/10/07 20:10:05 socat[PID] N ...`` (listening, accepting a connection, forking a
# child, TLS set-up).  The time stamp's 9-digit field holds MICROseconds (``.000069602`` is
# 69,602 us); socat logs local time, taken as UTC like the MITM logs.
#
# Connections: records carry no connection id.  ``from``/``to`` are byte offsets within one
# direction of one connection, like TCP sequence numbers, so a record continues the connection
# whose direction has seen exactly ``from`` bytes; ``from=0`` starts a connection.  When several
# connections are at the same offset (identical pings on parallel connections) the choice is
# a guess, counted in one ``ambiguous_split`` finding: a cloud record goes to the connection
# whose device bytes have waited longest for an answer; a device record to the connection whose
# device id (hello, or the id prefix of an ID-bearing packet) matches, else to the one idle the
# longest.  A ``from`` beyond every connection's count is a gap on the closest one below; one
# below them all is an overlap (its repeated bytes are a finding, the rest is kept); a first
# record that starts past 0 is a connection whose start the log missed.  The accept notices
# name each connection (child PID, device and cloud addresses), in the order the children
# start their transfer loop.
#
# Garbling: forked socat processes write into one log at once, so records can be interleaved
# mid-line.  Every hex line is checked against its ASCII column and the header's length; a
# record that fails (or is cut by another header) is a ``bad_record`` finding with its line
# number and reason, its bytes a gap in its connection; stray lines between records are one
# finding per run.  The rest of the file is read.
#
# ``SocatWalker`` is a line-driven state machine with the TextWalker interface, so the same
# loop reads a whole file and a live stream (capture/stream.py).
from __future__ import annotations

import re
from collections import deque
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
from cyncsim.replay.protocol import DEVICE_ID, HELLO_BODY, PacketType

__all__ = ["SocatWalker", "looks_like_socat", "read_socat"]

_DATE = rb"(\d{4})/(\d\d)/(\d\d) (\d\d):(\d\d):(\d\d)"
_HEAD = re.compile(rb"([<>]) " + _DATE + rb"\.(\d{9})\s+length=(\d+) from=(\d+) to=(\d+)[ \t\r]*$")
_NOTICE = re.compile(_DATE + rb"(?:\.\d+)? socat\[(\d+)\] ([DINWEF]) (.*?)\r?$")
_ACCEPT = re.compile(rb"accepting connection from AF=\d+ (\S+)")
_FORKED = re.compile(rb"forked off child process (\d+)")
_OPENING = re.compile(rb"opening connection to AF=\d+ (\S+)")
_ID_TYPES = frozenset(
    {PacketType.STATUS, PacketType.DATA, PacketType.DATA_REJECT, PacketType.DATA_ACK,
     PacketType.REPORT, PacketType.CONTROL, PacketType.CONTROL_ACK}
)  # fmt: skip
_HELLO_ID = HELLO_BODY["device_id"].slice
_HEX_WIDTH = 48  # 16 bytes of "xx " after the leading space
_PRINTABLE = bytes(b if 0x20 <= b < 0x7F else 0x2E for b in range(256))
_MAX_PENDING = 64  # unanswered device records remembered per connection
_MAX_LINE = 1 << 16  # a line that does not end within this many bytes is corrupt


def looks_like_socat(head: bytes) -> bool:
    first = head.split(b"\n", 1)[0]
    return _HEAD.match(first) is not None or _NOTICE.match(first) is not None


def read_socat(
    path: str,
    data: bytes,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> CaptureResult:
    """Read one socat ``-v -x`` log (already loaded as ``data``) into flows and findings."""
    result = CaptureResult(sources=[path])
    walker = SocatWalker(path, result.findings)
    walker.progress = progress
    with gc_paused():
        walker.walk(data, 0, final=True)
        walker.finish()
    result.flows = walker.flows
    if progress is not None:
        progress(len(data), len(data))
    return result


class _Rec:
    """A record being collected: its header, bytes so far and what is wrong with it."""

    __slots__ = ("data", "frm", "last_short", "length", "line", "offset", "problem", "sender", "ts")

    def __init__(
        self, line: int, offset: int, sender: Sender, ts: float, frm: int, length: int
    ) -> None:
        self.line = line
        self.offset = offset  # file offset of the header
        self.sender: Sender = sender
        self.ts = ts
        self.frm = frm
        self.length = length
        self.data = bytearray()
        self.problem = ""
        self.last_short = False  # a short hex line not ending in 0x0a was seen (must be last)


class _Conn:
    """One socat child's connection: its flow and the bytes seen in each direction."""

    __slots__ = ("builder", "ids", "last_dev", "next", "pending", "touched")

    def __init__(self, builder: FlowBuilder, order: int) -> None:
        self.builder = builder
        self.next: dict[Sender, int] = {DEVICE: 0, CLOUD: 0}
        self.ids: set[bytes] = set()  # device ids seen in its packets
        self.touched = order  # record number of the last record
        self.last_dev = order  # record number of the last device record
        self.pending: deque[int] = deque()  # device records not answered yet (record numbers)


class SocatWalker:
    """The socat log's lines: consumes complete lines, keeps its state between calls.

    Same interface as text.TextWalker: ``walk(buf, pos, base, final=)`` returns where the
    first incomplete line starts; ``finish()`` closes every flow; a whole file keeps its flows
    in ``flows``, a stream (``sink`` given) hands packets to the sink and ends flows in
    ``closed``.
    """

    def __init__(self, path: str, findings: list[Finding], sink: PacketSink | None = None):
        self.path = path
        self.name = path.rsplit("/", 1)[-1]
        self.findings = findings
        self.sink = sink
        self.flows: list[Flow] = []
        self.closed: list[Flow] = []
        self.progress: Callable[[int, int], None] | None = None
        self.line_no = 0
        self.records = 0
        self.last_ts = 0.0
        self._rec: _Rec | None = None
        self._stray: list[int] = []  # [first line, last line, file offset, bytes] of a run
        self._conns: list[_Conn] = []
        self._by_pid: dict[int, _Conn] = {}
        self._serial = 0
        self._pid_uses: dict[int, int] = {}
        # children whose transfer loop started, waiting for their first record:
        # (pid, device address, cloud address)
        self._waiting: list[tuple[int, str, str]] = []
        self._accepted: dict[int, str] = {}  # parent pid -> address of its last accept
        self._child: dict[int, list[str]] = {}  # child pid -> [device addr, cloud addr]
        self._ambiguous = 0
        self._seconds: dict[bytes, float] = {}
        self.first_bad: Finding | None = None

    # -- lines --------------------------------------------------------------------------

    def walk(self, data: bytes, pos: int, base: int = 0, *, final: bool = False) -> int:
        total = len(data)
        progress = self.progress
        step = max(total // 200, 1 << 16)
        next_report = pos + step
        while pos < total:
            nl = data.find(b"\n", pos)
            if nl < 0:
                if not final:
                    if total - pos > _MAX_LINE:
                        raise CaptureError(
                            self.path,
                            f"line {self.line_no + 1}: no end of line within {_MAX_LINE} bytes",
                            reason="corrupt",
                            offset=base + pos,
                        )
                    break
                nl = total
            self.line_no += 1
            self._line(data[pos:nl], base + pos)
            pos = nl + 1
            if progress is not None and pos >= next_report:
                progress(base + min(pos, total), base + total)
                next_report = pos + step
        return min(pos, total)

    def _line(self, line: bytes, offset: int) -> None:
        rec = self._rec
        if (
            line.startswith(b" ")
            and rec is not None
            and not rec.problem
            and self._hex_line(rec, line)
        ):
            return
        if line in (b"--", b"--\r"):
            if rec is not None:
                self._rec = None
                self._end(rec)
            else:
                self._stray_line(offset, len(line))
            return
        m = _HEAD.match(line)
        if m is not None:
            self._flush_stray()
            if rec is not None:
                rec.problem = rec.problem or f"cut by the record header at line {self.line_no}"
                self._rec = None
                self._end(rec)
            self._rec = self._header(m, offset)
            return
        n = _NOTICE.match(line)
        if n is not None:
            self._flush_stray()
            self._notice(int(n.group(7)), n.group(9))
            return
        if not line.strip():
            return
        if rec is None:
            self._stray_line(offset, len(line))
            return
        # A line inside a record that is no hex line of it: garbled.  A record header further
        # on in the line is another record, interleaved with this one.
        if not rec.problem:
            rec.problem = f"line {self.line_no} is not a hex line of it"
        inner = _HEAD.search(line, 1)
        if inner is not None:
            rec.problem = f"interleaved with the record whose header is inside line {self.line_no}"
            other = self._header(inner, offset + inner.start())
            if other is not None:
                other.problem = (
                    f"header inside line {self.line_no}, interleaved with the record at line "
                    f"{rec.line}"
                )
                self._end(other)

    def _hex_line(self, rec: _Rec, line: bytes) -> bool:
        """Add a well-formed hex line to ``rec``; False when the line is not one."""
        hex_area = line[1 : _HEX_WIDTH + 1]
        n = (len(hex_area.rstrip()) + 1) // 3
        if n == 0 or rec.last_short or line[_HEX_WIDTH + 1 : _HEX_WIDTH + 2] != b" ":
            return False
        try:
            chunk = bytes.fromhex(hex_area.decode("ascii"))
        except (ValueError, UnicodeDecodeError):
            return False
        if len(chunk) != n or hex_area != (chunk.hex(" ") + " ").ljust(_HEX_WIDTH).encode():
            return False
        if line[_HEX_WIDTH + 2 :].rstrip(b"\r") != chunk.translate(_PRINTABLE):
            return False
        rec.data += chunk
        rec.last_short = n < 16 and chunk[-1] != 0x0A  # socat also ends a line after a \n
        if len(rec.data) > rec.length:
            rec.problem = f"more bytes than its length={rec.length}"
        return True

    def _header(self, m: re.Match[bytes], offset: int) -> _Rec | None:
        sender: Sender = DEVICE if m.group(1) == b">" else CLOUD
        frm, to, length = int(m.group(10)), int(m.group(11)), int(m.group(9))
        micros = int(m.group(8))
        ts = self._seconds_of(m) + micros / 1e6
        rec = _Rec(self.line_no, offset, sender, ts, frm, length)
        problem = time_problem(ts)
        if micros >= 1_000_000:
            problem = f"microsecond field {m.group(8).decode()} is beyond one second"
        elif problem is None and length and to != frm + length - 1:
            problem = f"from={frm} to={to} does not span length={length}"
        if problem is not None:
            rec.problem = problem
        else:
            self.last_ts = ts
        return rec

    def _seconds_of(self, m: re.Match[bytes]) -> float:
        key = m.group(0)[2:21]
        sec = self._seconds.get(key)
        if sec is None:
            try:
                y, mo, d, h, mi, s = (int(g) for g in m.group(2, 3, 4, 5, 6, 7))
                sec = datetime(y, mo, d, h, mi, s, tzinfo=UTC).timestamp()
            except ValueError:
                sec = float("nan")  # a date that does not exist: the record is garbled
            self._seconds[key] = sec
        return sec

    def _stray_line(self, offset: int, length: int) -> None:
        run = self._stray
        if run:
            run[1] = self.line_no
            run[3] = offset + length - run[2]
        else:
            self._stray = [self.line_no, self.line_no, offset, length]

    def _flush_stray(self) -> None:
        if not self._stray:
            return
        first, last, offset, length = self._stray
        self._stray = []
        where = f"line {first}" if first == last else f"lines {first}-{last}"
        self._bad(offset, length, f"{where}: not part of any record", None, None)

    # -- notices: which child serves which connection -----------------------------------

    def _notice(self, pid: int, text: bytes) -> None:
        if (m := _ACCEPT.match(text)) is not None:
            self._accepted[pid] = m.group(1).decode("ascii", "replace")
        elif (m := _FORKED.match(text)) is not None:
            self._child[int(m.group(1))] = [self._accepted.pop(pid, ""), ""]
        elif (m := _OPENING.match(text)) is not None:
            if pid in self._child:
                self._child[pid][1] = m.group(1).decode("ascii", "replace")
        elif text.startswith(b"starting data transfer loop"):
            dev, cloud = self._child.pop(pid, ["", ""])
            self._waiting.append((pid, dev, cloud))
        elif text.startswith(b"exiting with status"):
            conn = self._by_pid.pop(pid, None)
            if conn is not None:
                self._conns.remove(conn)
                self._close(conn)

    # -- records: which connection --------------------------------------------------------

    def _end(self, rec: _Rec) -> None:
        """A record is complete (or given up on): put its bytes in its connection."""
        if not rec.problem and len(rec.data) != rec.length:
            rec.problem = f"hex lines hold {len(rec.data)} bytes, header says length={rec.length}"
        if rec.problem and time_problem(rec.ts) is not None:  # (NaN too: no such date)
            self._bad(rec.offset, rec.length, f"line {rec.line}: {rec.problem}", None, None)
            return
        sender, frm = rec.sender, rec.frm
        data = bytes(rec.data) if not rec.problem else b""
        conn = self._pick(sender, frm, data)
        if not rec.problem:
            self.records += 1
        self._serial += 1
        order = self._serial
        builder = conn.builder
        seen = conn.next[sender]
        end = frm + rec.length
        if frm > seen:
            builder.gap(sender, rec.ts, seen, frm - seen)
        elif frm < seen:
            repeat = min(seen, end) - frm
            self._overlap(conn, sender, frm, repeat, rec)
            data = data[repeat:]
            frm += repeat
        if rec.problem:
            self._bad(rec.offset, rec.length, f"line {rec.line}: garbled record "
                      f"({rec.problem}); its {rec.length} bytes are lost", sender, rec.ts,
                      builder.flow.id)  # fmt: skip
            if end > frm:
                builder.gap(sender, rec.ts, frm, end - frm)
        elif data:
            builder.feed(sender, rec.ts, data)
            self._note_ids(conn, sender, frm, data)
        conn.next[sender] = max(seen, end)
        conn.touched = order
        if sender == DEVICE:
            conn.last_dev = order
            if len(conn.pending) < _MAX_PENDING:
                conn.pending.append(order)
        elif conn.pending:
            conn.pending.popleft()  # (one record may answer several: a guess that holds here)

    def _pick(self, sender: Sender, frm: int, data: bytes) -> _Conn:
        conns = self._conns
        cands = [c for c in conns if c.next[sender] == frm]
        if len(cands) == 1:
            return cands[0]
        if cands:
            if frm > 0 or sender == CLOUD:
                self._ambiguous += 1
            return self._choose(cands, sender, data)
        if frm == 0:
            return self._new_conn()
        below = [c for c in conns if c.next[sender] < frm]
        if below:
            best = max(c.next[sender] for c in below)
            return self._choose([c for c in below if c.next[sender] == best], sender, data)
        above = [c for c in conns if c.next[sender] > frm]
        if above and frm > 0:
            best = min(c.next[sender] for c in above)
            return self._choose([c for c in above if c.next[sender] == best], sender, data)
        return self._new_conn()  # a connection whose start is not in the log

    def _choose(self, cands: list[_Conn], sender: Sender, data: bytes) -> _Conn:
        if sender == CLOUD:
            waiting = [c for c in cands if c.pending]
            if waiting:
                return min(waiting, key=lambda c: c.pending[0])
            return min(cands, key=lambda c: c.touched)
        if len(data) > DEVICE_ID.stop and data[0] in _ID_TYPES:
            dev = data[DEVICE_ID]
            same = [c for c in cands if dev in c.ids]
            if same:
                cands = same
        return min(cands, key=lambda c: c.last_dev)

    def _note_ids(self, conn: _Conn, sender: Sender, frm: int, data: bytes) -> None:
        if sender != DEVICE:
            return
        if frm == 0 and data[0] == PacketType.HELLO and len(data) >= _HELLO_ID.stop:
            conn.ids.add(data[_HELLO_ID])
        elif len(data) > DEVICE_ID.stop and data[0] in _ID_TYPES:
            conn.ids.add(data[DEVICE_ID])

    def _new_conn(self) -> _Conn:
        pid, dev, cloud = self._waiting.pop(0) if self._waiting else (0, "", "")
        if pid:
            uses = self._pid_uses[pid] = self._pid_uses.get(pid, 0) + 1
            flow_id = f"{self.name}#{pid}" + (f"/{uses}" if uses > 1 else "")
        else:
            flow_id = f"{self.name}#conn{len(self.flows) + len(self.closed) + 1}"
        flow = Flow(id=flow_id, source=self.path, exact=True)
        if dev or cloud:
            flow.endpoints = (dev, cloud)
        if self.sink is None:
            self.flows.append(flow)
        conn = _Conn(FlowBuilder(flow, self.findings, self.sink), self._serial)
        self._conns.append(conn)
        if pid:
            self._by_pid[pid] = conn
        return conn

    def _overlap(self, conn: _Conn, sender: Sender, frm: int, n: int, rec: _Rec) -> None:
        flow = conn.builder.flow
        self.findings.append(
            Finding(self.path, flow.id, sender, frm, n, "overlap",
                    f"line {rec.line}: from={rec.frm} repeats {n} bytes already seen "
                    f"(the connection was at {conn.next[sender]})", rec.ts)
        )  # fmt: skip

    # -- end ------------------------------------------------------------------------------

    def finish(self) -> None:
        """End of input: close every flow; a log without a good record is a CaptureError."""
        if self._rec is not None:
            rec, self._rec = self._rec, None
            rec.problem = rec.problem or "cut short by the end of the log (no --)"
            self._end(rec)
        self._flush_stray()
        if self._ambiguous:
            self.findings.append(
                Finding(self.path, "", None, 0, 0, "ambiguous_split",
                        f"{self._ambiguous} records matched several connections at the same "
                        "offset: a cloud record was given to the connection waiting longest "
                        "for an answer, a device record to the one with its device id, else "
                        "the one idle longest", self.last_ts)
            )  # fmt: skip
            self._ambiguous = 0
        if self.records == 0:
            bad = self.first_bad
            if bad is not None:
                raise CaptureError(self.path, bad.detail, reason="bad_record", offset=bad.offset)
            raise CaptureError(self.path, "no socat records found", reason="unknown_format")
        for conn in self._conns:
            self._close(conn)
        self._conns = []
        self._by_pid = {}

    def open_flows(self) -> list[Flow]:
        return [c.builder.flow for c in self._conns]

    def _close(self, conn: _Conn) -> None:
        conn.builder.close(self.last_ts)
        if self.sink is not None:
            self.closed.append(conn.builder.flow)

    def _bad(
        self, offset: int, length: int, detail: str, sender: Sender | None, ts: float | None,
        flow: str = "",
    ) -> None:  # fmt: skip
        finding = Finding(self.path, flow or self.name, sender, offset, length, "bad_record",
                          detail, ts)  # fmt: skip
        self.findings.append(finding)
        if self.first_bad is None:
            self.first_bad = finding
