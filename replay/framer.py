# Incremental framer: bytes of one direction of a connection in, whole packets out.
#
# Strategy: the outer header alone delimits packets (no escaping).  ``feed`` never raises for
# "not yet": a partial packet stays buffered for the next call.  Bytes that cannot start a
# packet (bytes 1-2 of a header are always zero, so a non-zero pair means we are not at a
# packet boundary) are skipped one at a time until a plausible header, and every skipped run
# is recorded in ``findings`` with its stream offset, so no byte is lost silently.
from __future__ import annotations

from dataclasses import dataclass

from replay.errors import PacketDecodeError
from replay.protocol import HEADER_LEN, CyncPacket, PacketType, decode_packet

__all__ = ["FramerFinding", "PacketFramer"]

_KNOWN_TYPES = frozenset(int(t) for t in PacketType)


@dataclass(frozen=True, slots=True)
class FramerFinding:
    """Bytes of the stream that are not part of any packet."""

    offset: int
    length: int
    reason: str
    head: bytes  # the first bytes of the run (at most 16), for the report

    def as_dict(self) -> dict[str, object]:
        return {
            "offset": self.offset,
            "length": self.length,
            "reason": self.reason,
            "head": self.head.hex(),
        }


class PacketFramer:
    """Split a byte stream into Cync packets.

    ``strict=False`` (the default) returns packets with a bad checksum or layout flagged
    (``defect``); ``strict=True`` raises PacketDecodeError for such a packet after consuming
    it, and keeps the good packets decoded before it for the next ``feed`` call.
    """

    __slots__ = ("_base", "_buf", "_held", "findings", "strict")

    def __init__(self, *, strict: bool = False, offset: int = 0) -> None:
        self.strict = strict
        self._buf = b""
        self._base = offset  # stream offset of _buf[0]
        self._held: list[tuple[int, CyncPacket]] = []
        self.findings: list[FramerFinding] = []

    @property
    def buffered(self) -> int:
        """Bytes held back waiting for the rest of a packet."""
        return len(self._buf)

    @property
    def offset(self) -> int:
        """Stream offset of the next byte to be framed."""
        return self._base

    def feed(self, data: bytes) -> list[CyncPacket]:
        return [pkt for _, pkt in self.feed_with_offsets(data)]

    def feed_with_offsets(self, data: bytes) -> list[tuple[int, CyncPacket]]:
        """Like ``feed`` but each packet comes with its stream offset."""
        buf = self._buf + bytes(data) if self._buf else bytes(data)
        out = self._held
        self._held = []
        pos = 0
        n = len(buf)
        base = self._base
        skip_start = -1
        while n - pos >= 3:
            if buf[pos + 1] or buf[pos + 2] or (skip_start >= 0 and buf[pos] not in _KNOWN_TYPES):
                if skip_start < 0:
                    skip_start = pos
                pos += 1
                continue
            if skip_start >= 0:
                self._skip(buf, skip_start, pos, "not_cync")
                skip_start = -1
            if n - pos < HEADER_LEN:
                break
            end = pos + HEADER_LEN + ((buf[pos + 3] << 8) | buf[pos + 4])
            if end > n:
                break
            try:
                pkt = decode_packet(buf[pos:end], strict=self.strict)
            except PacketDecodeError as exc:
                self._buf = buf[end:]
                self._base = base + end
                self._held = out
                exc.offset += base + pos
                raise
            out.append((base + pos, pkt))
            pos = end
        if skip_start >= 0:
            # Bytes that cannot begin a header even with more input: report them now, but keep
            # the last two, which could still be the start of a packet.
            keep = max(skip_start, n - 2)
            if keep > skip_start:
                self._skip(buf, skip_start, keep, "not_cync")
            pos = keep
        self._buf = buf[pos:]
        self._base = base + pos
        return out

    def _skip(self, buf: bytes, start: int, end: int, reason: str) -> None:
        self.findings.append(
            FramerFinding(self._base + start, end - start, reason, buf[start:end][:16])
        )

    def flush(self) -> FramerFinding | None:
        """End of stream: report what is still buffered as a trailing partial packet."""
        if not self._buf:
            return None
        finding = FramerFinding(self._base, len(self._buf), "trailing_partial", self._buf[:16])
        self.findings.append(finding)
        self._base += len(self._buf)
        self._buf = b""
        return finding
