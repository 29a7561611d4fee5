# TCP stream reassembly for the pcap/pcapng readers: segments in, ordered payload bytes out.
#
# Strategy: a connection is keyed by its raw 4-tuple (source address, destination address,
# ports: exactly the bytes the reader slices from the IP and TCP headers, so the hot path
# never formats an address).  Each direction keeps the 32-bit sequence number it expects
# next and the stream offset of that byte; an in-order segment (the common case) goes
# straight to the flow's FlowBuilder.  Everything else takes the slow path: out-of-order
# bytes wait in a sorted, non-overlapping list (first-seen bytes win; a retransmission with
# different bytes is reported as ``overlap_conflict``), retransmitted bytes are checked against
# a bounded history of delivered bytes, and a hole becomes a ``gap`` (exact stream offset and
# length, via FlowBuilder.gap) when the connection ends or when the held data exceeds a bound.
# Which side is the device is decided per connection (cloud port, else first 0x23 hello,
# else the SYN sender); until that is known, deliveries are held (bounded) and replayed.
#
# A whole file keeps every connection until ``finish``, which returns the flows in order.  A
# live stream (``stream=True``) cannot: ``sweep`` finishes a connection once it has been
# quiet for ``linger`` seconds of capture time after its FIN or RST, or for ``idle`` seconds
# without an end (devices talk at least every ~21 s, PROTOCOL.md 10.2), and hands its flow
# out through ``closed``, so the state kept is that of the connections still open.
from __future__ import annotations

import ipaddress
from bisect import bisect_left
from collections.abc import Iterable

from cyncsim.replay.capture._tcpconn import PORTS, Conn, Dir, addr
from cyncsim.replay.capture.model import (
    CLOUD,
    DEFAULT_CLOUD_PORTS,
    DEVICE,
    Finding,
    Flow,
    FlowBuilder,
    PacketSink,
    Sender,
)

__all__ = [
    "ACK",
    "FIN",
    "NOT_FED_REASONS",
    "PSH",
    "RST",
    "SYN",
    "TcpReassembler",
    "tuple_key",
]

FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10
_MASK = 0xFFFFFFFF
_WRAP = 1 << 32
_HALF = 1 << 31
_HELLO = b"\x23\x00\x00\x00\x1a"  # start of a 0x23 hello: marks the device side

# Per-flow findings whose bytes were never fed to the FlowBuilder, so byte accounting
# (packet lengths + finding lengths == bytes_seen) must leave them out.
NOT_FED_REASONS = frozenset({"gap", "overlap_conflict", "before_start", "out_of_window"})


def tuple_key(src: str, sport: int, dst: str, dport: int) -> bytes:
    """The raw 4-tuple key the readers build: src address, dst address, sport, dport."""
    a = ipaddress.ip_address(src).packed
    b = ipaddress.ip_address(dst).packed
    if len(a) != len(b):
        raise ValueError(f"mixed address families: {src} and {dst}")
    return a + b + PORTS.pack(sport, dport)


class TcpReassembler:
    """Reassembles TCP segments into per-connection Cync flows.

    Call ``segment`` for every TCP segment in capture order, then ``finish`` once; it
    returns the flows that carried payload, in order of their first segment.  With
    ``stream=True``, packets go to ``sink`` (see FlowBuilder), call ``sweep`` now and then,
    and finished flows are appended to ``closed`` instead (the caller empties it).
    """

    def __init__(
        self,
        source: str,
        findings: list[Finding],
        *,
        cloud_ports: Iterable[int] = DEFAULT_CLOUD_PORTS,
        max_pending: int = 1 << 20,
        history: int = 1 << 16,
        max_hold: int = 1 << 16,
        max_ahead: int = 1 << 26,
        stream: bool = False,
        sink: PacketSink | None = None,
        linger: float = 60.0,
        idle: float = 900.0,
    ) -> None:
        self.source = source
        self.findings = findings
        self.cloud_ports = frozenset(cloud_ports)
        self.max_pending = max_pending  # out-of-order bytes held per direction before a gap
        self.history = history  # delivered bytes kept per direction to check retransmissions
        self.max_hold = max_hold  # bytes held while the device side is unknown
        self.max_ahead = max_ahead  # a segment further ahead than this is out of window
        self._hist2 = 2 * history
        self.stream = stream
        self.sink = sink
        self.linger = linger  # a stream keeps an ended connection this long (capture time)
        self.idle = idle  # and one that is neither ended nor active this long
        self.closed: list[Flow] = []  # stream: flows finished since the caller last looked
        self._next_sweep = 0.0
        self._dirs: dict[bytes, Dir] = {}
        self._conns: dict[Conn, None] = {}  # open ones (all of them for a whole file)
        self._count: dict[bytes, int] = {}
        self._last_ts = 0.0
        self._empty = 0  # connections without payload: how many, and the first few ids
        self._empty_ids: list[str] = []

    # -- hot path -----------------------------------------------------------------------

    def segment(
        self,
        key: bytes,
        ts: float,
        seq: int,
        ack: int,
        flags: int,
        payload: bytes,
        missing: int = 0,
    ) -> None:
        """One TCP segment.  ``missing`` = payload bytes cut off by the snap length."""
        d = self._dirs.get(key)
        if d is not None and not flags & 7 and not missing:
            if flags & ACK:
                d.ack = ack
            if payload:
                if seq == d.next and d.builder is not None and not d.pend_start:
                    n = len(payload)
                    d.next = (seq + n) & _MASK
                    d.off += n
                    h = d.hist
                    h += payload
                    if len(h) > self._hist2:
                        del h[: len(h) - self.history]
                    d.builder.feed(d.sender, ts, payload)  # type: ignore[arg-type]
                    self._last_ts = ts
                else:
                    self._data(d, ts, seq, payload)
            return
        self._slow(key, d, ts, seq, ack, flags, payload, missing)

    def add(
        self,
        ts: float,
        src: tuple[str, int],
        dst: tuple[str, int],
        seq: int,
        flags: int = ACK,
        payload: bytes = b"",
        *,
        ack: int = 0,
        missing: int = 0,
    ) -> None:
        """``segment`` with printable addresses (for tests and small tools)."""
        self.segment(
            tuple_key(src[0], src[1], dst[0], dst[1]), ts, seq, ack, flags, payload, missing
        )

    # -- slow path ----------------------------------------------------------------------

    def _slow(
        self,
        key: bytes,
        d: Dir | None,
        ts: float,
        seq: int,
        ack: int,
        flags: int,
        payload: bytes,
        missing: int,
    ) -> None:
        self._last_ts = ts
        syn = flags & SYN
        if syn and not flags & ACK and d is not None and d.syn != seq:
            # A fresh SYN on a known 4-tuple (a retransmitted SYN has the same number):
            # the old connection is over, this is a new one.
            self._finalize(d.conn)
            d = None
        if flags & RST:
            payload, missing = b"", 0  # RST payload is a diagnostic, not stream data
        if d is None:
            if flags & RST or not (syn or payload or missing or flags & FIN):
                return  # a bare ACK/RST of a connection we never saw carries nothing
            d = self._open(key)
        if flags & ACK:
            d.ack = ack
        conn = d.conn
        if syn:
            if not flags & ACK:
                conn.client = d
            elif conn.client is None:
                conn.client = d.peer
            if d.next is None:
                d.syn = seq
                d.next = (seq + 1) & _MASK
            seq = (seq + 1) & _MASK
        if d.next is None:
            d.next = seq
        if payload:
            self._data(d, ts, seq, payload)
        if missing and d.next == (seq + len(payload)) & _MASK:
            self._truncated(d, ts, missing)
        if flags & FIN:
            d.fin_off = d.off + self._rel(d, (seq + len(payload) + missing) & _MASK)
        if flags & RST:
            d.rst_off = d.off + self._rel(d, seq)

    def _open(self, key: bytes) -> Dir:
        alen = (len(key) - 4) // 2
        rkey = key[alen : 2 * alen] + key[:alen] + key[-2:] + key[-4:-2]
        canon = min(key, rkey)
        n = self._count[canon] = self._count.get(canon, 0) + 1
        conn = Conn(key, rkey, n)
        self._conns[conn] = None
        self._dirs[key] = conn.a
        self._dirs[rkey] = conn.b
        a_cloud = conn.a.port in self.cloud_ports
        b_cloud = conn.b.port in self.cloud_ports
        if a_cloud != b_cloud:
            self._resolve(conn, conn.b if a_cloud else conn.a)
        return conn.a

    @staticmethod
    def _rel(d: Dir, seq: int) -> int:
        """Signed distance from ``d.next`` to ``seq`` (modulo 2**32)."""
        rel = (seq - d.next) & _MASK  # type: ignore[operator]
        return rel - _WRAP if rel >= _HALF else rel

    def _data(self, d: Dir, ts: float, seq: int, payload: bytes) -> None:
        if d.next is None:  # first bytes of a direction whose start we never saw
            d.next = seq
        start = d.off + self._rel(d, seq)
        end = start + len(payload)
        if start < 0:
            cut = min(end, 0)
            self._note(d, ts, start, cut - start, "before_start", "bytes before the first seen")
            if end <= 0:
                return
            payload = payload[-start:]
            start = 0
        if start < d.off:
            self._check_old(d, ts, start, payload[: d.off - start])
            if end <= d.off:
                return
            payload = payload[d.off - start :]
            start = d.off
        if start - d.off > self.max_ahead:
            self._note(d, ts, start, len(payload), "out_of_window", "too far ahead; dropped")
            return
        if start == d.off and not d.pend_start:
            self._deliver(d, ts, payload)
            return
        self._insert(d, ts, start, payload)
        self._advance(d, ts)

    def _check_old(self, d: Dir, ts: float, start: int, data: bytes) -> None:
        """Retransmitted bytes ``start ..`` that were delivered already: first seen wins."""
        hist_start = d.off - len(d.hist)
        lo = max(start, hist_start)
        if lo >= start + len(data):
            return  # older than the kept history: cannot be checked
        self._compare(
            d,
            ts,
            lo,
            bytes(d.hist[lo - hist_start : start + len(data) - hist_start]),
            data[lo - start :],
        )

    def _compare(self, d: Dir, ts: float, off: int, kept: bytes, new: bytes) -> None:
        if kept == new:
            return
        first = next(i for i in range(len(kept)) if kept[i] != new[i])
        last = next(i for i in range(len(kept) - 1, -1, -1) if kept[i] != new[i])
        self._note(
            d,
            ts,
            off + first,
            last - first + 1,
            "overlap_conflict",
            f"retransmitted bytes differ from the first-seen ones (kept "
            f"{kept[first : first + 8].hex()}, dropped {new[first : first + 8].hex()})",
        )

    def _insert(self, d: Dir, ts: float, start: int, payload: bytes) -> None:
        starts, datas = d.pend_start, d.pend_data
        end = start + len(payload)
        cur = start
        j = bisect_left(starts, start)
        if j and starts[j - 1] + len(datas[j - 1]) > start:
            ps, pd = starts[j - 1], datas[j - 1]
            pend = min(ps + len(pd), end)
            self._compare(d, ts, start, pd[start - ps : pend - ps], payload[: pend - start])
            cur = pend
        pieces: list[tuple[int, bytes]] = []
        while j < len(starts) and starts[j] < end:
            ps, pd = starts[j], datas[j]
            if ps > cur:
                pieces.append((cur, payload[cur - start : ps - start]))
            pend = min(ps + len(pd), end)
            self._compare(d, ts, ps, pd[: pend - ps], payload[ps - start : pend - start])
            cur = max(cur, ps + len(pd))
            j += 1
        if cur < end:
            pieces.append((cur, payload[cur - start :]))
        for ps, pd in pieces:
            i = bisect_left(starts, ps)
            starts.insert(i, ps)
            datas.insert(i, pd)
            d.pend_bytes += len(pd)

    def _advance(self, d: Dir, ts: float, final: bool = False) -> None:
        """Deliver held bytes that became contiguous; turn holes into gaps when over bound."""
        starts, datas = d.pend_start, d.pend_data
        while starts:
            if starts[0] > d.off:
                if not final and d.pend_bytes <= self.max_pending:
                    return
                self._gap(d, ts, starts[0] - d.off)
            k, off = 0, d.off
            while k < len(starts) and starts[k] == off:
                off += len(datas[k])
                k += 1
            chunk = datas[0] if k == 1 else b"".join(datas[:k])
            del starts[:k], datas[:k]
            d.pend_bytes -= len(chunk)
            self._deliver(d, ts, chunk)

    def _gap(self, d: Dir, ts: float, length: int) -> None:
        conn = d.conn
        if conn.flow is not None:
            conn.flow.gap(d.sender, ts, d.off, length)  # type: ignore[arg-type]
        else:
            conn.events.append((d, ts, None, d.off, length, "", ""))
        conn.notes += 1
        d.off += length
        d.next = (d.next + length) & _MASK  # type: ignore[operator]
        d.hist.clear()
        d.tail = b""

    def _truncated(self, d: Dir, ts: float, missing: int) -> None:
        # The segment's tail was cut by the snap length: those bytes are a hole right now
        # (up to any later bytes already held).
        if d.pend_start:
            missing = min(missing, d.pend_start[0] - d.off)
        if missing > 0:
            self._gap(d, ts, missing)
            self._advance(d, ts)

    def _deliver(self, d: Dir, ts: float, data: bytes) -> None:
        n = len(data)
        d.next = (d.next + n) & _MASK  # type: ignore[operator]
        d.off += n
        h = d.hist
        h += data
        if len(h) > self._hist2:
            del h[: len(h) - self.history]
        conn = d.conn
        if conn.flow is not None:
            conn.flow.feed(d.sender, ts, data)  # type: ignore[arg-type]
            return
        conn.events.append((d, ts, data, 0, 0, "", ""))
        conn.held += n
        if _HELLO in d.tail + data:
            self._resolve(conn, d)
        elif conn.held > self.max_hold:
            self._resolve(conn, None)
        else:
            d.tail = (d.tail + data)[-4:]

    def _note(self, d: Dir, ts: float, off: int, length: int, reason: str, detail: str) -> None:
        conn = d.conn
        conn.notes += 1
        if conn.flow is None:
            conn.events.append((d, ts, None, off, length, reason, detail))
            return
        flow = conn.flow.flow
        self.findings.append(
            Finding(flow.source, flow.id, d.sender, off, length, reason, detail, ts)
        )

    # -- device side, end of connection -------------------------------------------------

    def _resolve(self, conn: Conn, device: Dir | None) -> None:
        """Fix which side is the device, create the Flow and replay held events."""
        if device is None:
            if conn.client is not None:
                device = conn.client
            else:  # no SYN seen: the side on the higher (ephemeral) port is the client
                device = conn.a if conn.a.port >= conn.b.port else conn.b
        cloud = device.peer
        device.sender, cloud.sender = DEVICE, CLOUD
        dev_addr, cloud_addr = addr(device.addr, device.port), addr(cloud.addr, cloud.port)
        flow = Flow(
            f"{dev_addr}>{cloud_addr}#{conn.n}",
            self.source,
            exact=True,
            endpoints=(dev_addr, cloud_addr),
        )
        builder = conn.flow = FlowBuilder(flow, self.findings, self.sink)
        device.builder = cloud.builder = builder
        events, conn.events, conn.held = conn.events, [], 0
        for d, ts, data, off, length, reason, detail in events:
            sender: Sender = d.sender  # type: ignore[assignment]
            if data is not None:
                builder.feed(sender, ts, data)
            elif not reason:
                builder.gap(sender, ts, off, length)
            else:
                self.findings.append(
                    Finding(self.source, flow.id, sender, off, length, reason, detail, ts)
                )

    def _finalize(self, conn: Conn) -> None:
        """End of a connection: remaining holes become gaps, then the flow is closed."""
        ts = self._last_ts
        for d in (conn.a, conn.b):
            if d.next is None:
                continue
            self._advance(d, ts, final=True)
            end = d.fin_off if d.fin_off is not None else d.rst_off
            if end is None and d.peer.ack is not None:
                # The peer acknowledged bytes we never saw (one more is a lost FIN).
                acked = d.off + self._rel(d, d.peer.ack)
                end = acked if acked - d.off > 1 else None
            if end is not None and 0 < end - d.off <= self.max_ahead:
                self._gap(d, ts, end - d.off)
        if conn.flow is None:
            self._resolve(conn, None)
        assert conn.flow is not None
        flow = conn.flow.close(ts)
        for d in (conn.a, conn.b):  # nothing can arrive any more: free the buffers
            d.hist = bytearray()
            d.pend_start, d.pend_data, d.pend_bytes = [], [], 0
        for key in conn.keys:
            held = self._dirs.get(key)
            if held is not None and held.conn is conn:
                del self._dirs[key]
        if not any(flow.bytes_seen.values()) and not conn.notes:
            conn.empty = True
            self._empty += 1
            if len(self._empty_ids) < 5:
                self._empty_ids.append(flow.id)
        conn.done = True
        if self.stream:
            del self._conns[conn]
            if not conn.empty:
                self.closed.append(flow)

    def sweep(self) -> None:
        """Stream: finish the connections that ended or went idle (at most every 10 s).

        Times are capture times (the last segment's), so the outcome does not depend on how
        fast the capture is read; a segment that arrives for a connection already finished
        starts a new flow.
        """
        now = self._last_ts
        if now < self._next_sweep:
            return
        self._next_sweep = now + 10.0
        for conn in list(self._conns):
            a, b = conn.a, conn.b
            fin_a, fin_b, rst_a, rst_b = a.fin_off, b.fin_off, a.rst_off, b.rst_off
            sig: tuple[int | None, ...] = (a.off, b.off, a.ack, b.ack, a.pend_bytes, b.pend_bytes)
            sig += (fin_a, fin_b, rst_a, rst_b)
            if sig != conn.sig:
                conn.sig, conn.quiet = sig, now
                continue
            ended = (
                rst_a is not None or rst_b is not None or (fin_a is not None and fin_b is not None)
            )
            if now - conn.quiet >= (self.linger if ended else self.idle):
                self._finalize(conn)

    def open_flows(self) -> list[Flow]:
        """The flows of the connections not finished yet (those with a known device side)."""
        return [c.flow.flow for c in self._conns if c.flow is not None and not c.done]

    def finish(self) -> list[Flow]:
        """Close every connection; return the flows with payload, in order of first segment.

        Connections without a payload byte (handshake only, scans) are left out and counted
        in one ``no_payload`` finding.
        """
        for conn in list(self._conns):
            if not conn.done:
                self._finalize(conn)
        flows = [c.flow.flow for c in self._conns if c.flow is not None and not c.empty]
        if self._empty:
            ids = ", ".join(self._empty_ids)
            more = f" (+{self._empty - 5} more)" if self._empty > 5 else ""
            self.findings.append(
                Finding(
                    self.source,
                    "",
                    None,
                    0,
                    0,
                    "no_payload",
                    f"{self._empty} TCP connections carried no payload: {ids}{more}",
                )
            )
        self._conns = {}
        self._dirs = {}
        return flows
