# pcap / pcapng reader: capture records -> TCP segments -> reassembled Cync flows.
#
# Strategy: speed comes from never building per-packet objects.  The whole file is one bytes
# object; the record walkers (classic pcap, both byte orders, micro- or nanosecond stamps;
# pcapng blocks, any number of sections and interfaces, each with its own link type and
# timestamp resolution) unpack record headers with struct at known offsets and hand the
# frame's position to ``_Decoder.frame``, which reads the link, IP and TCP headers by direct
# byte indexing and passes (raw 4-tuple key, seq, ack, flags, payload slice) to the
# TcpReassembler.  dpkt's readers are not used: they keep only the first pcapng interface and
# cannot say where in the file a corrupt record is.  Frames that carry no TCP (ARP, UDP...),
# IP fragments, snap-length cuts and malformed headers become one summary finding per
# reason; a corrupt file raises CaptureError with the byte offset; a file cut inside its
# last record keeps everything before and reports ``truncated``.
from __future__ import annotations

import struct
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

from cyncsim.replay.capture.model import (
    TIME_RANGE,
    CaptureResult,
    Finding,
    gc_paused,
    time_problem,
)
from cyncsim.replay.capture.tcp import TcpReassembler
from cyncsim.replay.errors import CaptureError

__all__ = ["read_pcap"]

_PCAP_MAGICS = {
    b"\xd4\xc3\xb2\xa1": ("<", 1e6),
    b"\xa1\xb2\xc3\xd4": (">", 1e6),
    b"\x4d\x3c\xb2\xa1": ("<", 1e9),
    b"\xa1\xb2\x3c\x4d": (">", 1e9),
}
_PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"
_BOM_LE = b"\x4d\x3c\x2b\x1a"
_BOM_BE = b"\x1a\x2b\x3c\x4d"
_MAX_RECORD = 262_144  # largest frame a capture tool writes (Wireshark's limit)
_PROGRESS_EVERY = 8192

_VLAN = frozenset({0x8100, 0x88A8, 0x9100})
_RAW_IP = frozenset({101, 12, 14, 228, 229})
_NULL = frozenset({0, 108})
_IP6_EXT = frozenset({0, 43, 60})  # hop-by-hop, routing, destination options
_TCPH = struct.Struct(">IIH")  # seq, ack, data offset + flags (at TCP byte 4)
# Fast path, Ethernet + 20-byte IPv4 header + TCP in one unpack: ethertype, version/IHL,
# total length, flags/fragment offset, protocol, addresses + ports (the 4-tuple key), seq,
# ack, data offset + flags.
_ETH_IP4_TCP = struct.Struct(">12xHBxH2xHxB2x12sIIH")
_FAST_MIN = 54  # 14 + 20 + 20

Progress = Callable[[int, int], None]


class _Tally:
    """Frames skipped for one reason: counted, not reported one by one."""

    __slots__ = ("count", "first", "kinds", "length", "ts")

    def __init__(self, first: int, ts: float) -> None:
        self.count = 0
        self.first = first  # file offset of the first such record
        self.length = 0
        self.ts = ts
        self.kinds: Counter[str] = Counter()


class _Decoder:
    """Link / IP / TCP header decoding, straight from the capture buffer."""

    __slots__ = ("notes", "reasm", "segment")

    def __init__(self, reasm: TcpReassembler) -> None:
        self.reasm = reasm
        self.segment = reasm.segment
        self.notes: dict[str, _Tally] = {}

    def note(self, reason: str, rec_off: int, length: int, ts: float, kind: str) -> None:
        tally = self.notes.get(reason)
        if tally is None:
            tally = self.notes[reason] = _Tally(rec_off, ts)
        tally.count += 1
        tally.length += length
        tally.kinds[kind] += 1

    def frame(self, buf: bytes, pos: int, end: int, lt: int, ts: float, cut: int, rec: int) -> None:
        """Decode frame ``buf[pos:end]`` of link type ``lt``; ``cut`` bytes were not captured."""
        # -- link layer: find the IP header and its version ---------------------------------
        if lt == 1:
            ip = pos + 14
            if ip > end:
                return self._short(rec, end - pos, ts, cut, "ethernet header")
            et = (buf[pos + 12] << 8) | buf[pos + 13]
            while et in _VLAN:
                if ip + 4 > end:
                    return self._short(rec, end - pos, ts, cut, "vlan tag")
                et = (buf[ip + 2] << 8) | buf[ip + 3]
                ip += 4
            if et == 0x0800:
                ver = 4
            elif et == 0x86DD:
                ver = 6
            else:
                return self.note("not_tcp", rec, end - pos, ts, f"ethertype 0x{et:04x}")
        elif lt in _RAW_IP or lt in _NULL:
            ip = pos if lt in _RAW_IP else pos + 4
            if ip >= end:
                return self._short(rec, end - pos, ts, cut, "link header")
            ver = buf[ip] >> 4
        elif lt in (113, 276):
            ip = pos + (16 if lt == 113 else 20)
            if ip > end:
                return self._short(rec, end - pos, ts, cut, "linux cooked header")
            at = pos + 14 if lt == 113 else pos
            et = (buf[at] << 8) | buf[at + 1]
            ver = 4 if et == 0x0800 else 6 if et == 0x86DD else 0
            if not ver:
                return self.note("not_tcp", rec, end - pos, ts, f"protocol 0x{et:04x}")
        else:
            return self.note("not_tcp", rec, end - pos, ts, f"link type {lt}")
        # -- IP -----------------------------------------------------------------------------
        if ver == 4:
            if ip + 20 > end:
                return self._short(rec, end - pos, ts, cut, "ipv4 header")
            ihl = (buf[ip] & 15) << 2
            proto = buf[ip + 9]
            if ((buf[ip + 6] << 8) | buf[ip + 7]) & 0x3FFF:
                return self.note("ip_fragment", rec, end - pos, ts, f"ipv4 proto {proto}")
            if proto != 6:
                return self.note("not_tcp", rec, end - pos, ts, f"ip proto {proto}")
            if ihl < 20:
                return self.note("malformed", rec, end - pos, ts, "ipv4 header length")
            total = (buf[ip + 2] << 8) | buf[ip + 3]
            ip_end = ip + total if total else end + cut  # 0: segmentation offload
            tcp = ip + ihl
            if tcp + 20 > end:
                return self._short(rec, end - pos, ts, cut, "tcp header")
            key = (
                buf[ip + 12 : ip + 24] if ihl == 20 else buf[ip + 12 : ip + 20] + buf[tcp : tcp + 4]
            )
        elif ver == 6:
            if ip + 40 > end:
                return self._short(rec, end - pos, ts, cut, "ipv6 header")
            nh = buf[ip + 6]
            tcp = ip + 40
            while nh in _IP6_EXT and tcp + 8 <= end:
                nh = buf[tcp]
                tcp += (buf[tcp + 1] + 1) << 3
            if nh == 44:
                return self.note("ip_fragment", rec, end - pos, ts, "ipv6")
            if nh in _IP6_EXT:
                return self._short(rec, end - pos, ts, cut, "ipv6 extension header")
            if nh != 6:
                return self.note("not_tcp", rec, end - pos, ts, f"ipv6 next header {nh}")
            plen = (buf[ip + 4] << 8) | buf[ip + 5]
            ip_end = ip + 40 + plen if plen else end + cut
            if tcp + 20 > end:
                return self._short(rec, end - pos, ts, cut, "tcp header")
            contiguous = tcp == ip + 40  # no extension headers: addresses, then ports
            key = (
                buf[ip + 8 : ip + 44] if contiguous else buf[ip + 8 : ip + 40] + buf[tcp : tcp + 4]
            )
        else:
            return self.note("not_tcp", rec, end - pos, ts, f"ip version {ver}")
        # -- TCP ----------------------------------------------------------------------------
        seq, ack, offflags = _TCPH.unpack_from(buf, tcp + 4)
        start = tcp + ((offflags >> 10) & 0x3C)
        if start < tcp + 20 or start > ip_end:
            return self.note("malformed", rec, end - pos, ts, "tcp data offset")
        if ip_end <= end:
            self.segment(key, ts, seq, ack, offflags & 0x3F, buf[start:ip_end])
            return None
        # The frame ends before the IP packet does.
        if not cut:
            return self.note("malformed", rec, end - pos, ts, "ip length beyond frame")
        self.note("truncated", rec, cut, ts, "tcp payload")
        self.segment(key, ts, seq, ack, offflags & 0x3F, buf[start:end], ip_end - max(start, end))
        return None

    def _short(self, rec: int, length: int, ts: float, cut: int, what: str) -> None:
        # Headers incomplete: cut by the snap length (the segment is lost), or malformed.
        if cut:
            self.note("truncated", rec, cut, ts, what)
        else:
            self.note("malformed", rec, length, ts, what)

    def findings(self, source: str) -> Iterable[Finding]:
        text = {
            "not_tcp": "frames without TCP (skipped)",
            "ip_fragment": "IP fragments (not reassembled; their bytes show up as gaps)",
            "truncated": "frames cut by the snap length",
            "malformed": "frames with malformed headers (skipped)",
        }
        for reason, t in self.notes.items():
            what = ", ".join(f"{k}: {n}" for k, n in t.kinds.most_common(6))
            unit = "bytes not captured" if reason == "truncated" else "bytes"
            detail = f"{t.count} {text[reason]}, {t.length} {unit} ({what})"
            yield Finding(source, "", None, t.first, t.length, reason, detail, t.ts)


def _walk_pcap(path: str, buf: bytes, dec: _Decoder, progress: Progress | None) -> None:
    order, units = _PCAP_MAGICS[buf[:4]]
    if len(buf) < 24:
        raise CaptureError(path, "pcap file header cut short", reason="truncated", offset=0)
    snaplen, linktype = struct.unpack_from(order + "II", buf, 16)
    linktype &= 0xFFFF  # the upper bits may carry FCS information
    limit = max(snaplen, _MAX_RECORD)
    rec = struct.Struct(order + "IIII")
    unpack = rec.unpack_from
    frame = dec.frame
    segment = dec.segment
    # the fast path covers untruncated Ethernet / IPv4 / TCP; everything else takes frame()
    fast = _ETH_IP4_TCP.unpack_from if linktype == 1 else None
    n = len(buf)
    pos = 24
    i = 0
    mark = _PROGRESS_EVERY
    while pos + 16 <= n:
        sec, frac, caplen, origlen = unpack(buf, pos)
        start = pos + 16
        end = start + caplen
        if caplen > limit:
            raise CaptureError(
                path,
                f"record {i} claims {caplen} captured bytes (snap length {snaplen}): corrupt file",
                reason="corrupt",
                offset=pos,
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
                            progress(pos, n)
                    continue
        frame(buf, start, end, linktype, ts, origlen - caplen if origlen > caplen else 0, pos)
        pos = end
        i += 1
        if i == mark:
            mark += _PROGRESS_EVERY
            if progress is not None:
                progress(pos, n)
    if pos < n:
        _cut_file(dec, pos, n, f"record {i} starts at offset {pos} but the file ends")


def _cut_file(dec: _Decoder, pos: int, n: int, why: str) -> None:
    dec.reasm.findings.append(
        Finding(dec.reasm.source, "", None, pos, n - pos, "truncated", f"{why}: {n - pos} bytes")
    )


def _walk_pcapng(path: str, buf: bytes, dec: _Decoder, progress: Progress | None) -> None:
    n = len(buf)
    pos = 0
    order = "<"
    head = struct.Struct("<II")
    epb = struct.Struct("<IIIII")
    # per interface: (link type, units per second, offset seconds, snap length)
    ifaces: list[tuple[int, float, int, int]] = []
    frame = dec.frame
    segment = dec.segment
    fast = _ETH_IP4_TCP.unpack_from
    i = 0
    last_ts = 0.0
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
                    offset=pos,
                )
            order = "<" if bom == _BOM_LE else ">"
            head, epb = struct.Struct(order + "II"), struct.Struct(order + "IIIII")
            blen = head.unpack_from(buf, pos)[1]
            ifaces = []
        if blen < 12 or blen & 3:
            raise CaptureError(
                path, f"pcapng block {i} has an invalid length {blen}", reason="corrupt", offset=pos
            )
        if pos + blen > n:
            break
        if btype in (6, 2):  # enhanced / obsolete packet block
            if btype == 6:
                itf, hi, lo, caplen, origlen = epb.unpack_from(buf, pos + 8)
            else:
                itf, hi, lo, caplen, origlen = struct.unpack_from(order + "H2xIIII", buf, pos + 8)
            if itf >= len(ifaces):
                raise CaptureError(
                    path,
                    f"packet block {i} names interface {itf}, only {len(ifaces)} defined",
                    reason="corrupt",
                    offset=pos,
                )
            if 28 + caplen > blen - 4:
                raise CaptureError(
                    path,
                    f"packet block {i} claims {caplen} captured bytes in a {blen}-byte block",
                    reason="corrupt",
                    offset=pos,
                )
            lt, units, tsoff, _ = ifaces[itf]
            last_ts = ((hi << 32) | lo) / units + tsoff
            if not ts_lo <= last_ts <= ts_hi:  # (a pcap's 32-bit seconds always fit)
                raise CaptureError(
                    path,
                    f"packet block {i}: {time_problem(last_ts)}",
                    reason="bad_timestamp",
                    offset=pos,
                )
            start, end = pos + 28, pos + 28 + caplen
            if lt == 1 and caplen >= _FAST_MIN:  # same fast path as in _walk_pcap
                et, vihl, total, frag, proto, key, seq, ack, offflags = fast(buf, start)
                if et == 0x0800 and vihl == 0x45 and proto == 6 and not frag & 0x3FFF:
                    data = start + 34 + ((offflags >> 10) & 0x3C)
                    ip_end = start + 14 + total
                    if start + _FAST_MIN <= data <= ip_end <= end:
                        segment(key, last_ts, seq, ack, offflags & 0x3F, buf[data:ip_end])
                        pos += blen
                        i += 1
                        continue
            frame(buf, start, end, lt, last_ts, origlen - caplen if origlen > caplen else 0, pos)
        elif btype == 3:  # simple packet block: interface 0, no timestamp
            if not ifaces:
                raise CaptureError(
                    path,
                    f"simple packet block {i} before any interface",
                    reason="corrupt",
                    offset=pos,
                )
            (origlen,) = struct.unpack_from(order + "I", buf, pos + 8)
            lt, _, _, snap = ifaces[0]
            caplen = min(origlen, blen - 16, snap or origlen)
            frame(buf, pos + 12, pos + 12 + caplen, lt, last_ts, origlen - caplen, pos)
        elif btype == 1:
            ifaces.append(_interface(path, buf, pos, blen, order))
        pos += blen
        i += 1
        if progress is not None and not i % _PROGRESS_EVERY:
            progress(pos, n)
    if pos < n:
        _cut_file(dec, pos, n, f"block {i} at offset {pos} is cut off by the end of the file")


def _interface(
    path: str, buf: bytes, pos: int, blen: int, order: str
) -> tuple[int, float, int, int]:
    if blen < 20:
        raise CaptureError(path, "interface block too short", reason="corrupt", offset=pos)
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


def read_pcap(
    path: str,
    data: bytes | None = None,
    *,
    cloud_ports: tuple[int, ...] = (23779, 23778),
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
    result = CaptureResult(sources=[path])
    reasm = TcpReassembler(path, result.findings, cloud_ports=cloud_ports)
    dec = _Decoder(reasm)
    magic = buf[:4]
    if magic in _PCAP_MAGICS:
        walk = _walk_pcap
    elif magic == _PCAPNG_MAGIC:
        if len(buf) < 28 or buf[8:12] not in (_BOM_LE, _BOM_BE):
            raise CaptureError(path, "pcapng section header is damaged", reason="corrupt")
        walk = _walk_pcapng
    else:
        raise CaptureError(
            path,
            f"not a pcap or pcapng file (first bytes {buf[:8].hex(' ') or 'none'})",
            reason="unknown_format",
        )
    # Every object made here is kept (packets, flows), so the cyclic collector would only
    # rescan a growing heap again and again; pausing it roughly doubles the throughput.
    with gc_paused():
        walk(path, buf, dec, progress)
        result.flows = reasm.finish()
    result.findings.extend(dec.findings(path))
    if progress is not None:
        progress(len(buf), len(buf))
    return result
