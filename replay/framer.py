# Incremental framer: bytes of one direction of a connection in, whole packets out.
#
# Strategy: the outer header alone delimits packets (no escaping).  ``feed`` never raises for
# "not yet": a partial packet stays buffered for the next call.  Bytes that cannot start a
# packet (bytes 1-2 of a header are always zero, so a non-zero pair means we are not at a
# packet boundary) are skipped one at a time until a plausible header, and every skipped run
# is recorded in ``findings`` with its stream offset (when the run ends, or at ``flush``; a run
# cut across ``feed`` calls is one finding), so no byte is lost silently and the result does
# not depend on how the stream was chunked.  ``feed_spans`` frames the same way without
# decoding, for callers that hand the packets' bytes on to be decoded once, later (a simulated
# device's engine).
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cyncsim.replay.errors import PacketDecodeError
from cyncsim.replay.protocol import (
    HEADER,
    HEADER_LEN,
    CyncPacket,
    PacketType,
    decode_body,
    packet_name,
)

__all__ = ["FramerFinding", "PacketFramer"]

_KNOWN_TYPES = frozenset(int(t) for t in PacketType)
# The header, read byte by byte on the hot path (indexing is cheaper than an unpack): the
# type byte first, two reserved bytes that are always zero, the big-endian length.
_RES0 = HEADER["reserved"].offset
_RES1 = _RES0 + 1
_LEN0 = HEADER["length"].offset
_LEN1 = _LEN0 + 1
if HEADER.format != ">BHH" or HEADER.fields[0].name != "type":
    raise TypeError("framer.py reads the header byte by byte: update it to the new layout")


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

    __slots__ = ("_base", "_buf", "_held", "_run", "findings", "strict")

    def __init__(self, *, strict: bool = False, offset: int = 0) -> None:
        self.strict = strict
        self._buf = b""
        self._base = offset  # stream offset of _buf[0]
        self._held: list[tuple[int, CyncPacket]] = []
        self._run: tuple[int, int, bytes] | None = None  # open skipped run: offset, length, head
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

    def _whole(self, data: bytes) -> bool:
        """True when nothing is held and ``data`` is exactly one whole packet (the usual TCP
        segment): the fast paths below frame it without the scan."""
        n = len(data)
        return not (
            self._buf
            or self._run is not None
            or self._held
            or n < HEADER_LEN
            or data[_RES0]
            or data[_RES1]
            or HEADER_LEN + ((data[_LEN0] << 8) | data[_LEN1]) != n
        )

    def feed_whole(self, data: bytes) -> CyncPacket | None:
        """Fast path for callers that mostly get one whole packet per chunk (TCP segments).

        When nothing is buffered and ``data`` is exactly one packet, frame it and return it
        (its stream offset is ``offset`` as it was before the call); otherwise consume nothing
        and return None, and the caller hands ``data`` to ``feed_with_offsets``.  The outcome
        is the same as ``feed_with_offsets(data)``, errors included.
        """
        if not self._whole(data):
            return None
        base = self._base
        n = len(data)
        self._base = base + n
        try:
            return decode_body(data[0], bytes(data[HEADER_LEN:]), self.strict)
        except PacketDecodeError as exc:
            raise _stream_error(exc, bytes(data), 0, n, base) from exc

    def feed_with_offsets(self, data: bytes) -> list[tuple[int, CyncPacket]]:
        """Like ``feed`` but each packet comes with its stream offset."""
        data = bytes(data)  # no copy when it is bytes already
        base = self._base
        pkt = self.feed_whole(data)
        if pkt is not None:
            return [(base, pkt)]
        return self._scan(data, True)

    def feed_spans(self, data: bytes) -> list[tuple[int, int]]:
        """The (stream offset, length) of each packet completed by ``data``, not decoded.

        For callers that hand the packets' bytes on (a simulated device decodes each one
        once, in its engine): the same packets, skipped runs and findings as a non-strict
        ``feed_with_offsets``, at a fraction of the cost.  A strict framer must decode a
        packet to judge it, so it refuses (ValueError).
        """
        if self.strict:
            raise ValueError("feed_spans needs a non-strict framer (strict ones decode)")
        data = bytes(data)
        if self._whole(data):
            base = self._base
            self._base = base + len(data)
            return [(base, len(data))]
        return self._scan(data, False)

    def _scan(self, data: bytes, decode: bool) -> list[tuple[int, Any]]:
        """Frame ``data`` after what is buffered: (offset, packet) with ``decode``, else
        (offset, length); skipped runs go to ``findings``."""
        base = self._base
        buf = self._buf + data if self._buf else data
        out: list[tuple[int, Any]] = self._held  # (strict only) decoded before an error
        self._held = []
        pos = 0
        n = len(buf)
        strict = self.strict
        # A run of skipped bytes may continue from the previous call: resume it at buf[0], so
        # that the outcome does not depend on how the stream was cut into calls.
        skip_start = 0 if self._run is not None else -1
        while n - pos > _RES1:
            if (
                buf[pos + _RES0]
                or buf[pos + _RES1]
                or (skip_start >= 0 and buf[pos] not in _KNOWN_TYPES)
            ):
                if skip_start < 0:
                    skip_start = pos
                pos += 1
                continue
            if skip_start >= 0:
                self._grow_run(buf, skip_start, pos)
                self._close_run()
                skip_start = -1
            if n - pos < HEADER_LEN:
                break
            body = pos + HEADER_LEN
            end = body + ((buf[pos + _LEN0] << 8) | buf[pos + _LEN1])
            if end > n:
                break
            if not decode:
                out.append((base + pos, end - pos))
                pos = end
                continue
            # The header is checked here (reserved bytes zero, length fits), so only the body is
            # left to decode: same result as decode_packet(buf[pos:end]), one slice fewer.
            try:
                pkt = decode_body(buf[pos], buf[body:end], strict)
            except PacketDecodeError as exc:
                self._buf = buf[end:]
                self._base = base + end
                self._held = out
                raise _stream_error(exc, buf, pos, end, base) from exc
            out.append((base + pos, pkt))
            pos = end
        if skip_start >= 0:
            # Bytes that cannot begin a header even with more input join the open run (reported
            # when it ends, so a run cut across calls is still one finding); the last two are
            # kept, as they could still be the start of a packet.
            keep = max(skip_start, n - _RES1)
            self._grow_run(buf, skip_start, keep)
            pos = keep
        self._buf = buf[pos:]
        self._base = base + pos
        return out

    def _grow_run(self, buf: bytes, start: int, end: int) -> None:
        """Add ``buf[start:end]`` to the open run of skipped bytes (opening one if needed)."""
        if self._run is None:
            self._run = (self._base + start, 0, b"")
        offset, length, head = self._run
        if len(head) < 16:
            head = (head + buf[start : min(end, start + 16)])[:16]
        self._run = (offset, length + end - start, head)

    def _close_run(self) -> None:
        if self._run is not None:
            offset, length, head = self._run
            self._run = None
            self.findings.append(FramerFinding(offset, length, "not_cync", head))

    def flush(self) -> FramerFinding | None:
        """End of stream: report what is still buffered as a trailing partial packet.

        An open run of skipped bytes is reported first (as ``not_cync``); the return value is
        the ``trailing_partial`` finding, or None when nothing was buffered.
        """
        self._close_run()
        if not self._buf:
            return None
        finding = FramerFinding(self._base, len(self._buf), "trailing_partial", self._buf[:16])
        self.findings.append(finding)
        self._base += len(self._buf)
        self._buf = b""
        return finding


def _stream_error(
    exc: PacketDecodeError, buf: bytes, pos: int, end: int, base: int
) -> PacketDecodeError:
    """The decode error of packet ``buf[pos:end]``, with offsets in the stream."""
    detail = str(exc.args[0]).partition(": ")[2] if exc.args else str(exc)
    return PacketDecodeError(
        exc.reason,
        f"{packet_name(buf[pos])} packet at stream offset {base + pos}: {detail}",
        offset=base + pos + exc.offset,
        data=buf[pos:end],
    )
