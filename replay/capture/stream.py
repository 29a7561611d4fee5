# Live capture streams (stdin, a FIFO): bytes in as they arrive, packets and findings out as
# soon as their records are complete.
#
# Strategy: sans-IO, like the framer: ``feed(data)`` never blocks and never raises for "not
# yet"; the caller reads however it likes (`cyncsim inspect -` reads a pipe with os.read). The
# format is told from the first bytes as soon as they decide it: pcap and pcapng from the
# magic number, a text or socat log from its first complete line, anything else (refused)
# after HEAD_BYTES.  The records are walked by the very walkers that read a whole file
# (pcap.open_walker, text.TextWalker, socat.SocatWalker), over the unconsumed tail plus the
# new bytes, with a base offset so that findings and errors carry offsets in the stream as
# they would in a file.
#
# Memory stays bounded however long the stream runs.  Kept: the unconsumed tail (at most one
# record, whose size the walkers bound), the reassembly and framing state of the connections
# still open (the reassembler finishes ended or idle ones, see tcp.TcpReassembler.sweep), and
# the summary counters.  Packets, findings and finished flows are handed out in each batch
# and not kept.
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from cyncsim.replay.capture._decode import FrameDecoder
from cyncsim.replay.capture._format import HEAD_BYTES, detect_format, refuse, refuse_model
from cyncsim.replay.capture.model import (
    DEFAULT_CLOUD_PORTS,
    Finding,
    Flow,
    FlowPacket,
    FlowSink,
    PacketBuffer,
    PacketSink,
    Summary,
)
from cyncsim.replay.capture.pcap import Walker, open_walker
from cyncsim.replay.capture.socat import SocatWalker
from cyncsim.replay.capture.tcp import TcpReassembler
from cyncsim.replay.capture.text import TextWalker

__all__ = ["CaptureStream", "StreamBatch"]

_PCAP_HEAD = 28  # the pcap file header (24) or the fixed part of a pcapng section header


@dataclass(slots=True)
class StreamBatch:
    """What one ``feed`` (or ``close``) completed, in the order it was framed."""

    packets: list[tuple[Flow, FlowPacket]] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    flows: list[Flow] = field(default_factory=list)  # flows finished (kind and bytes final)


class CaptureStream:
    """Read a capture of any supported format from a stream, chunk by chunk.

    ``feed(data)`` for every chunk as it arrives, ``close()`` at the end of the stream; each
    returns a StreamBatch.  A corrupt stream raises the CaptureError a file would, with the
    stream offset.  ``summary()`` gives the counters of everything so far at any time.
    """

    def __init__(
        self,
        source: str = "<stdin>",
        *,
        cloud_ports: tuple[int, ...] = DEFAULT_CLOUD_PORTS,
        consumer: Callable[[Flow], PacketBuffer] | None = None,
    ) -> None:
        self.source = source
        self.cloud_ports = cloud_ports
        self.format: str | None = None  # pcap, pcapng, text or socat once the first bytes tell
        self.totals = Summary([source])  # what the batches handed out so far
        self._buf = b""  # bytes not consumed yet
        self._base = 0  # stream offset of _buf[0]
        # ``consumer``: the packets of each flow go to the list consumer(flow) gives, as they
        # are framed (a FlowSink), not into the batches, which then carry findings and flows.
        self._sink: PacketSink = [] if consumer is None else FlowSink(consumer)
        self._findings: list[Finding] = []
        self._text: TextWalker | SocatWalker | None = None  # the line-based formats
        self._walker: Walker | None = None
        self._reasm: TcpReassembler | None = None
        self._dec: FrameDecoder | None = None
        self._closed = False

    def feed(self, data: bytes) -> StreamBatch:
        if self._closed:
            raise ValueError("feed() after close()")
        if data:
            self._buf = self._buf + data if self._buf else bytes(data)
            self._consume(final=False)
        return self._batch()

    def close(self) -> StreamBatch:
        """End of stream: a record cut short is reported (``truncated``), every flow ends."""
        if self._closed:
            return StreamBatch()
        self._closed = True
        self._consume(final=True)
        if self._text is not None:
            self._text.finish()
        elif self._dec is not None:
            walker = self._walker
            if self._buf and walker is not None:
                walker.cut(self._base, self._base + len(self._buf))
            self._dec.reasm.finish()
            self._findings.extend(self._dec.findings(self.source))
        self._buf = b""
        return self._batch()

    def summary(self) -> Summary:
        """The counters so far: the batches handed out, plus the flows still open."""
        tally = self.totals.copy()
        opened: list[Flow] = []
        if self._text is not None:
            opened = self._text.open_flows()
        elif self._reasm is not None and not self._closed:
            opened = self._reasm.open_flows()
        for flow in opened:
            if any(flow.bytes_seen.values()):
                tally.add_flow(flow)
        if self._dec is not None and not self._closed:
            for finding in self._dec.findings(self.source):  # tallies of skipped frames
                tally.add_finding(finding)
        return tally

    # -- internals ------------------------------------------------------------------------

    def _consume(self, *, final: bool) -> None:
        if self.format is None and not self._start(final=final):
            return
        buf = self._buf
        if self._text is not None:
            pos = self._text.walk(buf, 0, self._base, final=final)
        elif self._walker is not None:
            pos = self._walker.walk(buf, 0, self._base)
            assert self._reasm is not None
            self._reasm.sweep()
        else:  # (a pcap whose header is still incomplete)
            return
        if pos:
            self._base += pos
            self._buf = buf[pos:]

    def _start(self, *, final: bool) -> bool:
        """Tell the format from the first bytes once they decide it; False: wait for more."""
        head = self._buf[:HEAD_BYTES]
        fmt = detect_format(head)
        # pcap and pcapng are told by their magic number; a text log by its first line, once
        # complete; other bytes are refused only when no more bytes can change the verdict.
        told = fmt in ("pcap", "pcapng") or (fmt in ("text", "socat") and b"\n" in head)
        if not told and not final and len(head) < HEAD_BYTES:
            return False
        if fmt == "unknown":
            refuse(self.source, head)
        if fmt == "model":
            refuse_model(self.source)
        if fmt == "text":
            self._text = TextWalker(self.source, self._findings, self._sink)
        elif fmt == "socat":
            self._text = SocatWalker(self.source, self._findings, self._sink)
        else:
            if len(self._buf) < _PCAP_HEAD and not final:
                return False
            reasm = self._reasm = TcpReassembler(
                self.source,
                self._findings,
                cloud_ports=self.cloud_ports,
                stream=True,
                sink=self._sink,
            )
            self._dec = FrameDecoder(reasm)
            walker = self._walker = open_walker(self.source, self._buf, self._dec, stream=True)
            self._base, self._buf = walker.start, self._buf[walker.start :]
        self.format = fmt
        return True

    def _batch(self) -> StreamBatch:
        batch = StreamBatch()
        if isinstance(self._sink, list) and self._sink:
            batch.packets = self._sink[:]  # the builders hold the list itself: copy, clear
            self._sink.clear()
            self.totals.add_packets(fp.packet for _, fp in batch.packets)
        if self._findings:
            batch.findings = self._findings[:]
            self._findings.clear()
            for finding in batch.findings:
                self.totals.add_finding(finding)
        closed = (
            self._text.closed
            if self._text is not None
            else self._reasm.closed
            if self._reasm is not None
            else None
        )
        if closed:
            batch.flows = closed[:]
            closed.clear()
            for flow in batch.flows:
                self.totals.add_flow(flow)
        return batch
