# Link, IP and TCP header decoding for the pcap/pcapng walkers, straight from the capture buffer.
#
# Strategy: no per-packet objects.  ``frame`` reads the headers of one frame by direct byte
# indexing at its position in the walker's buffer and hands (raw 4-tuple key, seq, ack,
# flags, payload slice) to the TcpReassembler.  Frames that carry no TCP (ARP, UDP...), IP
# fragments, snap-length cuts and malformed headers are tallied, one summary finding per
# reason (``findings``), with the file offset of the first such record.
from __future__ import annotations

import struct
from collections import Counter
from collections.abc import Iterable

from cyncsim.replay.capture.model import Finding
from cyncsim.replay.capture.tcp import TcpReassembler

__all__ = ["FrameDecoder"]

_VLAN = frozenset({0x8100, 0x88A8, 0x9100})
_RAW_IP = frozenset({101, 12, 14, 228, 229})
_NULL = frozenset({0, 108})
_IP6_EXT = frozenset({0, 43, 60})  # hop-by-hop, routing, destination options
_TCPH = struct.Struct(">IIH")  # seq, ack, data offset + flags (at TCP byte 4)


class _Tally:
    """Frames skipped for one reason: counted, not reported one by one."""

    __slots__ = ("count", "first", "kinds", "length", "ts")

    def __init__(self, first: int, ts: float) -> None:
        self.count = 0
        self.first = first  # file offset of the first such record
        self.length = 0
        self.ts = ts
        self.kinds: Counter[str] = Counter()


class FrameDecoder:
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
