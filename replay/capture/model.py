# What a capture reader produces: flows of (timestamp, sender, packet) and findings.
#
# Strategy: readers (text, pcap, pcapng) differ only in how they find connection boundaries
# and payload bytes; they all hand payload bytes per connection and direction to a
# FlowBuilder, which frames them into packets and keeps the byte accounting, so every
# payload byte ends up in a packet or in a Finding.
#
# Speed: FlowBuilder.feed runs once per TCP segment or text record, so its common case (a
# direction that already has a framer) takes no detour, and FlowPackets are built with direct
# slot stores instead of the frozen dataclass __init__ (which goes through object.__setattr__
# per field).  Readers wrap their loops in ``gc_paused``: every object they make is kept, so
# the cyclic collector would only rescan a growing heap.
from __future__ import annotations

import gc
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from typing import Literal

from cyncsim.replay.framer import PacketFramer
from cyncsim.replay.protocol import CyncPacket, HelloPacket

__all__ = [
    "CLOUD",
    "DEVICE",
    "TIME_RANGE",
    "CaptureResult",
    "Finding",
    "Flow",
    "FlowBuilder",
    "FlowPacket",
    "Sender",
    "gc_paused",
    "time_problem",
]

# Capture times every reader accepts, in Unix seconds: what a datetime can show in UTC, a day
# short of each end. A time outside is a corrupt record, refused with its place in the file,
# never a traceback later when something formats it.
TIME_RANGE = (-62135596800.0 + 86400.0, 253402300800.0 - 86400.0)  # 0001-01-02 .. 9999-12-30


def time_problem(ts: float) -> str | None:
    """Why ``ts`` cannot be a capture time, or None when it can."""
    if TIME_RANGE[0] <= ts <= TIME_RANGE[1]:
        return None
    return f"timestamp {ts:.6g} s is outside the years 1-9999"


Sender = Literal["device", "cloud"]
DEVICE: Sender = "device"
CLOUD: Sender = "cloud"

# Finding reasons a reader may report (the set is open; these are the ones used here):
#   tls               a flow that carries TLS records, not plaintext Cync
#   not_cync          bytes that cannot be a Cync packet
#   gap               bytes missing from the capture (lost segments); length = missing bytes
#   truncated         a frame cut by the capture's snap length
#   trailing_partial  a packet started but not finished when the flow ended
#   defect:<reason>   a packet that decoded only non-strictly (kept, flagged)


@dataclass(frozen=True, slots=True)
class FlowPacket:
    ts: float
    sender: Sender
    packet: CyncPacket
    offset: int  # offset of the packet's first byte in its direction's byte stream
    tags: tuple[str, ...] = ()


_FLOW_PACKET_FIELDS = ("ts", "sender", "packet", "offset", "tags")
if tuple(f.name for f in fields(FlowPacket)) != _FLOW_PACKET_FIELDS:
    raise TypeError("model.py builds FlowPacket field by field: update _FLOW_PACKET_FIELDS")
_new = object.__new__
# The slot descriptors' setters: they store without the frozen-dataclass check.
_fp_ts, _fp_sender, _fp_packet, _fp_offset, _fp_tags = (
    getattr(FlowPacket, name).__set__ for name in _FLOW_PACKET_FIELDS
)


@dataclass(frozen=True, slots=True)
class Finding:
    source: str
    flow: str
    sender: Sender | None
    offset: int
    length: int
    reason: str
    detail: str = ""
    ts: float | None = None

    def as_dict(self) -> dict[str, object]:
        return {
            "source": self.source,
            "flow": self.flow,
            "sender": self.sender,
            "offset": self.offset,
            "length": self.length,
            "reason": self.reason,
            "detail": self.detail,
            "ts": self.ts,
        }


@dataclass(slots=True)
class Flow:
    """One connection (or, for text captures without connection ids, one whole file).

    ``exact`` is True when the flow is a single TCP connection, so request and reply can be
    paired by order; False when several connections are mixed (MITM text without conn ids).
    """

    id: str
    source: str
    exact: bool = True
    kind: str = "cync"  # cync | tls | not_cync | empty
    device_id: bytes | None = None
    packets: list[FlowPacket] = field(default_factory=list)
    bytes_seen: dict[str, int] = field(default_factory=lambda: {DEVICE: 0, CLOUD: 0})
    endpoints: tuple[str, str] | None = None  # (device address, cloud address) where known

    @property
    def start(self) -> float | None:
        return self.packets[0].ts if self.packets else None


@dataclass(slots=True)
class CaptureResult:
    sources: list[str] = field(default_factory=list)
    flows: list[Flow] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)

    def extend(self, other: CaptureResult) -> None:
        self.sources.extend(other.sources)
        self.flows.extend(other.flows)
        self.findings.extend(other.findings)

    @property
    def packet_count(self) -> int:
        return sum(len(f.packets) for f in self.flows)

    def summary(self) -> dict[str, object]:
        types: Counter[str] = Counter()
        flagged = 0
        for flow in self.flows:
            for fp in flow.packets:
                types[f"0x{fp.packet.type:02x}"] += 1
                if fp.packet.defect is not None:
                    flagged += 1
        reasons = Counter(f.reason for f in self.findings)
        kinds = Counter(f.kind for f in self.flows)
        return {
            "sources": list(self.sources),
            "packets": self.packet_count,
            "flows": len(self.flows),
            "flow_kinds": dict(sorted(kinds.items())),
            "flagged_packets": flagged,
            "findings": len(self.findings),
            "finding_reasons": dict(sorted(reasons.items())),
            "packet_types": dict(sorted(types.items())),
            "bytes": sum(sum(f.bytes_seen.values()) for f in self.flows),
        }


class FlowBuilder:
    """Frames the payload bytes of one flow, direction by direction, with byte accounting.

    Feed payload bytes in stream order with ``feed(sender, ts, data)``; report holes with
    ``gap(sender, ts, offset, length)``; call ``close()`` at the end.  A direction whose first bytes
    are a TLS record marks the flow as TLS and its bytes become one ``tls`` finding.
    """

    def __init__(self, flow: Flow, findings: list[Finding]) -> None:
        self.flow = flow
        self._findings = findings
        self._framers: dict[Sender, PacketFramer] = {}
        self._reported: dict[Sender, int] = {}
        self._tls: dict[Sender, list[int]] = {}  # sender -> [offset, length, first ts]
        self._tags: tuple[str, ...] = ()

    def feed(self, sender: Sender, ts: float, data: bytes, tags: tuple[str, ...] = ()) -> None:
        if not data:
            return
        bytes_seen = self.flow.bytes_seen
        seen = bytes_seen[sender]
        bytes_seen[sender] = seen + len(data)
        framer = self._framers.get(sender)
        if framer is None:  # first bytes of this direction, or a TLS direction
            tls = self._tls.get(sender)
            if tls is not None:
                tls[1] += len(data)
                return
            if _looks_like_tls(data):
                self._tls[sender] = [seen, len(data), int(ts * 1e6)]
                self.flow.kind = "tls"
                return
            framer = self._framers[sender] = PacketFramer()
            self._reported[sender] = 0
        # (A direction with a framer is never TLS: ``gap`` does not give a TLS one a framer.)
        offset = framer.offset
        pkt = framer.feed_whole(data)  # one whole packet per segment is the common case
        if pkt is not None:
            self._emit_one(sender, ts, offset, pkt, tags)
            return
        for offset, pkt in framer.feed_with_offsets(data):
            self._emit_one(sender, ts, offset, pkt, tags)
        if len(framer.findings) != self._reported[sender]:
            self._drain(sender, framer, ts)

    def feed_record(
        self, sender: Sender, ts: float, data: bytes, tags: tuple[str, ...] = ()
    ) -> None:
        """Frame ``data`` on its own: for logs whose records mix several connections.

        A packet cut at the end of the record cannot be completed by the next record (which
        may come from another connection), so the rest is reported as ``trailing_partial``.
        """
        if not data:
            return
        flow = self.flow
        seen = flow.bytes_seen[sender]
        flow.bytes_seen[sender] = seen + len(data)
        if _looks_like_tls(data):
            self._add(sender, seen, len(data), "tls", "TLS record, not plaintext Cync", ts)
            flow.kind = "tls" if not flow.packets else flow.kind
            return
        framer = PacketFramer(offset=seen)
        self._emit(sender, ts, framer.feed_with_offsets(data), tags)
        framer.flush()
        for f in framer.findings:
            self._add(sender, f.offset, f.length, f.reason, f.head.hex(), ts)

    def _emit(
        self,
        sender: Sender,
        ts: float,
        packets: list[tuple[int, CyncPacket]],
        tags: tuple[str, ...],
    ) -> None:
        for off, pkt in packets:
            self._emit_one(sender, ts, off, pkt, tags)

    def _emit_one(
        self, sender: Sender, ts: float, off: int, pkt: CyncPacket, tags: tuple[str, ...]
    ) -> None:
        fp = _new(FlowPacket)  # == FlowPacket(ts, sender, pkt, off, tags), faster
        _fp_ts(fp, ts)
        _fp_sender(fp, sender)
        _fp_packet(fp, pkt)
        _fp_offset(fp, off)
        _fp_tags(fp, tags)
        flow = self.flow
        flow.packets.append(fp)
        if pkt.defect is not None:
            self._add(sender, off, len(pkt), f"defect:{pkt.defect}", pkt.encode()[:16].hex(), ts)
        if flow.device_id is None and sender == "device" and isinstance(pkt, HelloPacket):
            flow.device_id = pkt.device_id

    def gap(self, sender: Sender, ts: float, offset: int, length: int) -> None:
        """Bytes ``offset .. offset+length`` of a direction were never captured."""
        self._add(sender, offset, length, "gap", f"{length} bytes missing", ts)
        if sender in self._tls:
            return
        framer = self._framers.get(sender)
        if framer is not None:
            # Whatever was buffered cannot be completed across the hole.
            framer.flush()
            self._drain(sender, framer, ts)
        self._framers[sender] = PacketFramer(offset=offset + length)
        self._reported[sender] = 0

    def close(self, ts: float | None = None) -> Flow:
        for sender, framer in self._framers.items():
            framer.flush()
            self._drain(sender, framer, ts)
        for sender, (off, length, us) in self._tls.items():
            self._add(sender, off, length, "tls", "TLS records, not plaintext Cync", us / 1e6)
        flow = self.flow
        if flow.kind == "cync" and not flow.packets:
            seen = sum(flow.bytes_seen.values())
            flow.kind = "empty" if seen == 0 else "not_cync"
        return flow

    def _drain(self, sender: Sender, framer: PacketFramer, ts: float | None) -> None:
        start = self._reported[sender]
        for f in framer.findings[start:]:
            self._add(sender, f.offset, f.length, f.reason, f.head.hex(), ts)
        self._reported[sender] = len(framer.findings)

    def _add(
        self, sender: Sender, offset: int, length: int, reason: str, detail: str, ts: float | None
    ) -> None:
        self._findings.append(
            Finding(self.flow.source, self.flow.id, sender, offset, length, reason, detail, ts)
        )


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while a reader builds its objects.

    A reader keeps every object it makes (packets, flows), so collections during the read
    would only rescan a growing heap.  At the end the new objects are moved straight to the
    oldest generation (``gc.freeze`` then ``gc.unfreeze``, both O(1)) instead of being scanned
    by the first young collection after ``gc.enable``; this is skipped when someone else has
    frozen objects, since ``unfreeze`` would thaw theirs too.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if gc.get_freeze_count() == 0:
            gc.freeze()
            gc.unfreeze()
        if was_enabled:
            gc.enable()


def _looks_like_tls(data: bytes) -> bool:
    # TLS record: content type 20-23, version 3.x; never a Cync header (bytes 1-2 are zero).
    return len(data) >= 3 and 20 <= data[0] <= 23 and data[1] == 3 and data[2] <= 4
