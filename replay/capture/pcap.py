# pcap / pcapng reader: capture records -> TCP segments -> reassembled Cync flows.
#
# Strategy: speed comes from never building per-packet objects.  The record walkers (classic
# pcap, both byte orders, micro- or nanosecond stamps; pcapng blocks, any number of sections
# and interfaces, each with its own link type and timestamp resolution) unpack record headers
# with struct at known offsets and hand the frame's position to ``FrameDecoder.frame``
# (capture/_decode.py), which passes the TCP segment to the TcpReassembler.  A walker is a
# small object with state: ``walk`` consumes the complete records of a buffer and returns
# where it stopped, so the same code reads a whole file in one call and a live stream
# (capture/stream.py) chunk by chunk, with file offsets in every finding and error.  dpkt's
# readers are not used: they keep only the first pcapng interface and cannot say where in
# the file a corrupt record is.  A corrupt file raises CaptureError with the byte offset; a
# file cut inside its last record keeps everything before and reports ``truncated``.
from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path

from cyncsim.replay.capture._decode import FrameDecoder
from cyncsim.replay.capture._format import PCAP_MAGICS, PCAPNG_MAGIC
from cyncsim.replay.capture.model import (
    DEFAULT_CLOUD_PORTS,
    TIME_RANGE,
    CaptureResult,
    Finding,
    gc_paused,
    time_problem,
)
from cyncsim.replay.capture.tcp import TcpReassembler
from cyncsim.replay.errors import CaptureError

__all__ = ["Walker", "open_walker", "read_pcap"]

_BOM_LE = b"\x4d\x3c\x2b\x1a"
_BOM_BE = b"\x1a\x2b\x3c\x4d"
_MAX_RECORD = 262_144  # largest frame a capture tool writes (Wireshark's limit)
# What a record or block of a stream may claim: a file's size bounds its records, a stream's
# nothing does, so a lying length would have the reader buffer without end (Wireshark refuses
# pcapng blocks over 16 MiB too).
_MAX_STREAM_RECORD = 16 << 20
_PROGRESS_EVERY = 8192

# Fast path, Ethernet + 20-byte IPv4 header + TCP in one unpack: ethertype, version/IHL,
# total length, flags/fragment offset, protocol, addresses + ports (the 4-tuple key), seq,
# ack, data offset + flags.
_ETH_IP4_TCP = struct.Struct(">12xHBxH2xHxB2x12sIIH")
_FAST_MIN = 54  # 14 + 20 + 20

Progress = Callable[[int, int], None]


class _PcapWalker:
    """Classic pcap records: consumes whole records from a buffer, keeps its place between calls.

    ``walk(buf, pos, base)`` reads the records that are complete in ``buf[pos:]`` and returns
    where the first incomplete one starts; ``base`` is the file offset of ``buf[0]``, so
    findings and errors carry file offsets however the input was cut.
    """

    __slots__ = (
        "dec",
        "i",
        "limit",
        "linktype",
        "mark",
        "path",
        "progress",
        "rec",
        "snaplen",
        "start",
        "total",
        "units",
    )

    def __init__(self, path: str, dec: FrameDecoder, head: bytes, *, stream: bool) -> None:
        order, self.units = PCAP_MAGICS[head[:4]]
        if len(head) < 24:
            raise CaptureError(path, "pcap file header cut short", reason="truncated", offset=0)
        self.path = path
        self.dec = dec
        self.snaplen, linktype = struct.unpack_from(order + "II", head, 16)
        self.linktype = linktype & 0xFFFF  # the upper bits may carry FCS information
        self.limit = max(self.snaplen, _MAX_RECORD)
        if stream:  # a file's size bounds what a record can claim; a stream's does not
            self.limit = min(self.limit, _MAX_STREAM_RECORD)
        self.rec = struct.Struct(order + "IIII")
        self.start = 24
        self.i = 0
        self.mark = _PROGRESS_EVERY
        self.progress: Progress | None = None
        self.total = 0

    def walk(self, buf: bytes, pos: int, base: int = 0) -> int:
        dec = self.dec
        unpack = self.rec.unpack_from
        frame = dec.frame
        segment = dec.segment
        units, limit, linktype = self.units, self.limit, self.linktype
        progress = self.progress
        # the fast path covers untruncated Ethernet / IPv4 / TCP; everything else takes frame()
        fast = _ETH_IP4_TCP.unpack_from if linktype == 1 else None
        n = len(buf)
        i = self.i
        mark = self.mark
        while pos + 16 <= n:
            sec, frac, caplen, origlen = unpack(buf, pos)
            start = pos + 16
            end = start + caplen
            if caplen > limit:
                raise CaptureError(
                    self.path,
                    f"record {i} claims {caplen} captured bytes (snap length {self.snaplen}): "
                    "corrupt file",
                    reason="corrupt",
                    offset=base + pos,
                )
            if end > n:
                break
            ts = sec + frac / units
            if fast is not None and caplen >= _FAST_MIN:
                et, vihl, total, frag, proto, key, seq, ack, offflags = fast(buf, start)
                if et == 0x0800 and vihl == 0x45 and proto == 6 and not frag & 0x3FFF:
                    data = start + 34 + ((offflags >> 10) & 0x3C)
                    ip_end = start + 14 + total
                    if start + _FAST_MIN <= data <= ip_end <= end:
                        segment(key, ts, seq, ack, offflags & 0x3F, buf[data:ip_end])
                        pos = end
                        i += 1
                        if i == mark:
                            mark += _PROGRESS_EVERY
                            if progress is not None:
                                progress(base + pos, self.total)
                        continue
            cut = origlen - caplen if origlen > caplen else 0
            frame(buf, start, end, linktype, ts, cut, base + pos)
            pos = end
            i += 1
            if i == mark:
                mark += _PROGRESS_EVERY
                if progress is not None:
                    progress(base + pos, self.total)
        self.i = i
        self.mark = mark
        return pos

    def cut(self, pos: int, n: int) -> None:
        """The input ended at file offset ``n`` inside the record at file offset ``pos``."""
        _cut_file(self.dec, pos, n, f"record {self.i} starts at offset {pos} but the file ends")


def _cut_file(dec: FrameDecoder, pos: int, n: int, why: str) -> None:
    dec.reasm.findings.append(
        Finding(dec.reasm.source, "", None, pos, n - pos, "truncated", f"{why}: {n - pos} bytes")
    )


class _PcapngWalker:
    """pcapng blocks, any number of sections and interfaces; same interface as _PcapWalker."""

    __slots__ = (
        "dec",
        "epb",
        "head",
        "i",
        "ifaces",
        "last_ts",
        "order",
        "path",
        "progress",
        "start",
        "stream",
        "total",
    )

    def __init__(self, path: str, dec: FrameDecoder, head: bytes, *, stream: bool) -> None:
        if len(head) < 28 or head[8:12] not in (_BOM_LE, _BOM_BE):
            raise CaptureError(path, "pcapng section header is damaged", reason="corrupt")
        self.path = path
        self.dec = dec
        self.stream = stream
        self.order = "<"
        self.head = struct.Struct("<II")
        self.epb = struct.Struct("<IIIII")
        # per interface: (link type, units per second, offset seconds, snap length)
        self.ifaces: list[tuple[int, float, int, int]] = []
        self.start = 0
        self.i = 0
        self.last_ts = 0.0
        self.progress: Progress | None = None
        self.total = 0

    def walk(self, buf: bytes, pos: int, base: int = 0) -> int:
        path = self.path
        n = len(buf)
        order, head, epb, ifaces = self.order, self.head, self.epb, self.ifaces
        frame = self.dec.frame
        segment = self.dec.segment
        fast = _ETH_IP4_TCP.unpack_from
        progress = self.progress
        i = self.i
        last_ts = self.last_ts
        ts_lo, ts_hi = TIME_RANGE
        while pos + 12 <= n:
            btype, blen = head.unpack_from(buf, pos)
            if btype == 0x0A0D0D0A:  # section header: byte order may change, interfaces reset
                bom = buf[pos + 8 : pos + 12]
                if bom not in (_BOM_LE, _BOM_BE):
                    raise CaptureError(
                        path,
                        "pcapng section header with a bad byte-order mark",
                        reason="corrupt",
                        offset=base + pos,
                    )
                order = "<" if bom == _BOM_LE else ">"
                head, epb = struct.Struct(order + "II"), struct.Struct(order + "IIIII")
                blen = head.unpack_from(buf, pos)[1]
                ifaces = self.ifaces = []
            if blen < 12 or blen & 3:
                raise CaptureError(
                    path,
                    f"pcapng block {i} has an invalid length {blen}",
                    reason="corrupt",
                    offset=base + pos,
                )
            if pos + blen > n:
                if self.stream and blen > _MAX_STREAM_RECORD:
                    raise CaptureError(
                        path,
                        f"pcapng block {i} claims {blen} bytes: corrupt file",
                        reason="corrupt",
                        offset=base + pos,
                    )
                break
            if btype in (6, 2):  # enhanced / obsolete packet block
                if btype == 6:
                    itf, hi, lo, caplen, origlen = epb.unpack_from(buf, pos + 8)
                else:
                    itf, hi, lo, caplen, origlen = struct.unpack_from(
                        order + "H2xIIII", buf, pos + 8
                    )
                if itf >= len(ifaces):
                    raise CaptureError(
                        path,
                        f"packet block {i} names interface {itf}, only {len(ifaces)} defined",
                        reason="corrupt",
                        offset=base + pos,
                    )
                if 28 + caplen > blen - 4:
                    raise CaptureError(
                        path,
                        f"packet block {i} claims {caplen} captured bytes in a {blen}-byte block",
                        reason="corrupt",
                        offset=base + pos,
                    )
                lt, units, tsoff, _ = ifaces[itf]
                last_ts = ((hi << 32) | lo) / units + tsoff
                if not ts_lo <= last_ts <= ts_hi:  # (a pcap's 32-bit seconds always fit)
                    raise CaptureError(
                        path,
                        f"packet block {i}: {time_problem(last_ts)}",
                        reason="bad_timestamp",
                        offset=base + pos,
                    )
                start, end = pos + 28, pos + 28 + caplen
                if lt == 1 and caplen >= _FAST_MIN:  # same fast path as in _PcapWalker
                    et, vihl, total, frag, proto, key, seq, ack, offflags = fast(buf, start)
                    if et == 0x0800 and vihl == 0x45 and proto == 6 and not frag & 0x3FFF:
                        data = start + 34 + ((offflags >> 10) & 0x3C)
                        ip_end = start + 14 + total
                        if start + _FAST_MIN <= data <= ip_end <= end:
                            segment(key, last_ts, seq, ack, offflags & 0x3F, buf[data:ip_end])
                            pos += blen
                            i += 1
                            continue
                cut = origlen - caplen if origlen > caplen else 0
                frame(buf, start, end, lt, last_ts, cut, base + pos)
            elif btype == 3:  # simple packet block: interface 0, no timestamp
                if not ifaces:
                    raise CaptureError(
                        path,
                        f"simple packet block {i} before any interface",
                        reason="corrupt",
                        offset=base + pos,
                    )
                (origlen,) = struct.unpack_from(order + "I", buf, pos + 8)
                lt, _, _, snap = ifaces[0]
                caplen = min(origlen, blen - 16, snap or origlen)
                frame(buf, pos + 12, pos + 12 + caplen, lt, last_ts, origlen - caplen, base + pos)
            elif btype == 1:
                ifaces.append(_interface(path, buf, pos, blen, order, base))
            pos += blen
            i += 1
            if progress is not None and not i % _PROGRESS_EVERY:
                progress(base + pos, self.total)
        self.order, self.head, self.epb = order, head, epb
        self.i = i
        self.last_ts = last_ts
        return pos

    def cut(self, pos: int, n: int) -> None:
        """The input ended at file offset ``n`` inside the block at file offset ``pos``."""
        why = f"block {self.i} at offset {pos} is cut off by the end of the file"
        _cut_file(self.dec, pos, n, why)


def _interface(
    path: str, buf: bytes, pos: int, blen: int, order: str, base: int
) -> tuple[int, float, int, int]:
    if blen < 20:
        raise CaptureError(path, "interface block too short", reason="corrupt", offset=base + pos)
    lt, _, snap = struct.unpack_from(order + "HHI", buf, pos + 8)
    units, tsoff = 1e6, 0
    opt = pos + 16
    stop = pos + blen - 4
    while opt + 4 <= stop:
        code, olen = struct.unpack_from(order + "HH", buf, opt)
        if code == 0:
            break
        val = buf[opt + 4 : opt + 4 + olen]
        if code == 9 and olen >= 1:
            r = val[0]
            units = float(2 ** (r & 0x7F)) if r & 0x80 else float(10**r)
        elif code == 14 and olen == 8:
            (tsoff,) = struct.unpack(order + "q", val)
        opt += 4 + olen + (-olen & 3)
    return lt, units, tsoff, snap


Walker = _PcapWalker | _PcapngWalker


def open_walker(path: str, head: bytes, dec: FrameDecoder, *, stream: bool = False) -> Walker:
    """The record walker for a capture that starts with ``head`` (its first 28 bytes or more,
    or all of it when shorter); a damaged or unknown file header is a CaptureError."""
    magic = head[:4]
    if magic in PCAP_MAGICS:
        return _PcapWalker(path, dec, head, stream=stream)
    if magic == PCAPNG_MAGIC:
        return _PcapngWalker(path, dec, head, stream=stream)
    raise CaptureError(
        path,
        f"not a pcap or pcapng file (first bytes {head[:8].hex(' ') or 'none'})",
        reason="unknown_format",
    )


def read_pcap(
    path: str,
    data: bytes | None = None,
    *,
    cloud_ports: tuple[int, ...] = DEFAULT_CLOUD_PORTS,
    progress: Progress | None = None,
) -> CaptureResult:
    """Read a pcap or pcapng file (format from the magic bytes) into Cync flows."""
    if data is None:
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise CaptureError(
                path, f"cannot read: {exc.strerror or exc}", reason="unreadable"
            ) from None
    buf = bytes(data)
    n = len(buf)
    result = CaptureResult(sources=[path])
    dec = FrameDecoder(TcpReassembler(path, result.findings, cloud_ports=cloud_ports))
    walker = open_walker(path, buf, dec)
    walker.progress, walker.total = progress, n
    # Every object made here is kept (packets, flows), so the cyclic collector would only
    # rescan a growing heap again and again; pausing it roughly doubles the throughput.
    with gc_paused():
        pos = walker.walk(buf, walker.start)
        if pos < n:
            walker.cut(pos, n)
        result.flows = dec.reasm.finish()
    result.findings.extend(dec.findings(path))
    if progress is not None:
        progress(n, n)
    return result
