# What a capture reader produces: flows of (timestamp, sender, packet) and findings.
#
# Strategy: readers (text, pcap, pcapng) differ only in how they find connection boundaries
# and payload bytes; they all hand payload bytes per connection and direction to a
# FlowBuilder, which frames them into packets and keeps the byte accounting, so every
# payload byte ends up in a packet or in a Finding.
#
# Packets go to ``Flow.packets`` when a whole file is read, or to a sink (a list the stream
# reader empties after each batch) when a live stream is, so a stream keeps no packet it has
# handed out; ``Summary`` keeps the summary block's counters without the packets.
#
# Speed: FlowBuilder.feed runs once per TCP segment or text record, so its common case (a
# direction that already has a framer) takes no detour, and FlowPackets are built with direct
# slot stores instead of the frozen dataclass __init__ (which goes through object.__setattr__
# per field).  Readers wrap their loops in ``gc_paused``: every object they make is kept, so
# the cyclic collector would only rescan a growing heap.
from __future__ import annotations

import gc
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from typing import Literal

from cyncsim.replay.framer import PacketFramer
from cyncsim.replay.protocol import CyncPacket, HelloPacket

__all__ = [
    "CLOUD",
    "DEFAULT_CLOUD_PORTS",
    "DEVICE",
    "TIME_RANGE",
    "CaptureResult",
    "Finding",
    "Flow",
    "FlowBuilder",
    "FlowPacket",
    "FlowSink",
    "PacketBuffer",
    "PacketSink",
    "Sender",
    "Summary",
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
DEFAULT_CLOUD_PORTS = (23779, 23778)  # TCP ports of the cloud side in pcap/pcapng captures

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
        return self.tally().as_dict()

    def tally(self) -> Summary:
        """The summary's counters, to merge with others (see Summary)."""
        tally = Summary(self.sources)
        for flow in self.flows:
            tally.add_flow(flow)
            tally.add_packets(fp.packet for fp in flow.packets)
        for f in self.findings:
            tally.add_finding(f)
        return tally


class Summary:
    """The counters of the summary block, kept without the packets they count.

    ``CaptureResult.summary`` fills one from a whole result; a stream reader adds packets,
    findings and finished flows as they go by, so its memory does not grow with the stream.
    """

    __slots__ = (
        "bytes",
        "finding_reasons",
        "flagged",
        "flow_kinds",
        "flows",
        "packet_types",
        "packets",
        "sources",
    )

    def __init__(self, sources: Iterable[str] = ()) -> None:
        self.sources = list(sources)
        self.packets = 0
        self.flagged = 0
        self.packet_types: Counter[int] = Counter()
        self.flows = 0
        self.flow_kinds: Counter[str] = Counter()
        self.bytes = 0
        self.finding_reasons: Counter[str] = Counter()

    def add_packets(self, packets: Iterable[CyncPacket]) -> None:
        types = self.packet_types
        n = flagged = 0
        for pkt in packets:
            n += 1
            types[pkt.type] += 1
            if pkt.defect is not None:
                flagged += 1
        self.packets += n
        self.flagged += flagged

    def add_flow(self, flow: Flow) -> None:
        """A flow as it stands (its kind and payload bytes); its packets are added apart."""
        self.flows += 1
        self.flow_kinds[flow.kind] += 1
        self.bytes += sum(flow.bytes_seen.values())

    def add_finding(self, finding: Finding) -> None:
        self.finding_reasons[finding.reason] += 1

    def merge(self, other: Summary) -> None:
        self.sources.extend(other.sources)
        self.packets += other.packets
        self.flagged += other.flagged
        self.packet_types.update(other.packet_types)
        self.flows += other.flows
        self.flow_kinds.update(other.flow_kinds)
        self.bytes += other.bytes
        self.finding_reasons.update(other.finding_reasons)

    def copy(self) -> Summary:
        new = Summary()
        new.merge(self)
        return new

    def as_dict(self) -> dict[str, object]:
        types = {f"0x{t:02x}": n for t, n in sorted(self.packet_types.items())}
        return {
            "sources": list(self.sources),
            "packets": self.packets,
            "flows": self.flows,
            "flow_kinds": dict(sorted(self.flow_kinds.items())),
            "flagged_packets": self.flagged,
            "findings": sum(self.finding_reasons.values()),
            "finding_reasons": dict(sorted(self.finding_reasons.items())),
            "packet_types": types,
            "bytes": self.bytes,
        }


# Where a FlowSink's FlowBuilder appends the packets of its flow: (sender, ts, packet).
PacketBuffer = list[tuple[Sender, float, CyncPacket]]


class FlowSink:
    """A stream's packets handed over flow by flow, without FlowPackets (the importer's
    learner): ``open(flow)`` is called once per flow, when its FlowBuilder is made, and
    gives the list the flow's packets are appended to as (sender, ts, packet), in stream
    order; its owner empties it as it likes (after each chunk, say).  The packets are not
    counted in the stream's batches (``CaptureStream(consumer=...)``)."""

    __slots__ = ("open",)

    def __init__(self, open_flow: Callable[[Flow], PacketBuffer]) -> None:
        self.open = open_flow


# Where a stream reader's FlowBuilders put their packets, in the order they were framed:
# a list of (flow, packet), or a FlowSink.
PacketSink = list[tuple[Flow, FlowPacket]] | FlowSink


class FlowBuilder:
    """Frames the payload bytes of one flow, direction by direction, with byte accounting.

    Feed payload bytes in stream order with ``feed(sender, ts, data)``; report holes with
    ``gap(sender, ts, offset, length)``; call ``close()`` at the end.  A direction whose first bytes
    are a TLS record marks the flow as TLS and its bytes become one ``tls`` finding.  Packets
    are appended to ``flow.packets``, or to ``sink`` as (flow, packet) when one is given (a
    FlowSink: to its buffer of the flow, as they are framed); ``emitted`` counts them.
    """

    def __init__(self, flow: Flow, findings: list[Finding], sink: PacketSink | None = None) -> None:
        self.flow = flow
        self._findings = findings
        self._direct: PacketBuffer | None = None  # a FlowSink's buffer of this flow
        self._direct_count = 0
        self._to_sink = None
        if isinstance(sink, FlowSink):
            self._direct = sink.open(flow)
        elif sink is not None:
            self._to_sink = _ToSink(flow, sink)
        self._put: Callable[[FlowPacket], None] = (
            flow.packets.append if self._to_sink is None else self._to_sink
        )
        self._framers: dict[Sender, PacketFramer] = {}
        self._tls: dict[Sender, list[int]] = {}  # sender -> [offset, length, first ts]
        self._tags: tuple[str, ...] = ()

    @property
    def emitted(self) -> int:
        """Packets framed so far (kept in the flow or handed to the sink)."""
        if self._direct is not None:
            return self._direct_count
        return len(self.flow.packets) if self._to_sink is None else self._to_sink.count

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
        # (A direction with a framer is never TLS: ``gap`` does not give a TLS one a framer.)
        pkt = framer.feed_whole(data)  # one whole packet per segment is the common case
        if pkt is not None:
            direct = self._direct
            if direct is not None and pkt.defect is None and pkt.__class__ is not HelloPacket:
                self._direct_count += 1  # _emit_one's FlowSink case, without the call
                direct.append((sender, ts, pkt))
                return
            self._emit_one(sender, ts, framer.offset - len(data), pkt, tags)  # (it was whole)
            return
        for offset, pkt in framer.feed_with_offsets(data):
            self._emit_one(sender, ts, offset, pkt, tags)
        if framer.findings:
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
            flow.kind = "tls" if not self.emitted else flow.kind
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
        direct = self._direct
        if direct is not None:
            self._direct_count += 1
            direct.append((sender, ts, pkt))
        else:
            fp = _new(FlowPacket)  # == FlowPacket(ts, sender, pkt, off, tags), faster
            _fp_ts(fp, ts)
            _fp_sender(fp, sender)
            _fp_packet(fp, pkt)
            _fp_offset(fp, off)
            _fp_tags(fp, tags)
            self._put(fp)
        if pkt.defect is not None:
            self._add(sender, off, len(pkt), f"defect:{pkt.defect}", pkt.encode()[:16].hex(), ts)
        flow = self.flow
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

    def close(self, ts: float | None = None) -> Flow:
        for sender, framer in self._framers.items():
            framer.flush()
            self._drain(sender, framer, ts)
        for sender, (off, length, us) in self._tls.items():
            self._add(sender, off, length, "tls", "TLS records, not plaintext Cync", us / 1e6)
        flow = self.flow
        if flow.kind == "cync" and not self.emitted:
            seen = sum(flow.bytes_seen.values())
            flow.kind = "empty" if seen == 0 else "not_cync"
        return flow

    def _drain(self, sender: Sender, framer: PacketFramer, ts: float | None) -> None:
        # Reported findings leave the framer's list, which would otherwise grow with a stream.
        for f in framer.findings:
            self._add(sender, f.offset, f.length, f.reason, f.head.hex(), ts)
        framer.findings.clear()

    def _add(
        self, sender: Sender, offset: int, length: int, reason: str, detail: str, ts: float | None
    ) -> None:
        self._findings.append(
            Finding(self.flow.source, self.flow.id, sender, offset, length, reason, detail, ts)
        )


class _ToSink:
    """A stream's FlowBuilder puts its packets in the shared sink, tagged with the flow."""

    __slots__ = ("count", "flow", "sink")

    def __init__(self, flow: Flow, sink: list[tuple[Flow, FlowPacket]]) -> None:
        self.flow = flow
        self.sink = sink
        self.count = 0

    def __call__(self, fp: FlowPacket) -> None:
        self.sink.append((self.flow, fp))
        self.count += 1


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
