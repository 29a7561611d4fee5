# The bytes a connection reads, cut into whole packets by replay.framer.PacketFramer, with a
# limit on how long a packet may be.
#
# Strategy: PacketFramer finds the packets (and skips, as noise, bytes that cannot start one);
# this class only hands on each packet's own bytes, sliced from what was read at the offset the
# framer reports (the framer keeps a suffix of the stream, so the bytes it holds back are
# mirrored here as ``pending``), and enforces ``limit``: a header that claims more, whether
# its packet came whole or the header waits for the rest, is reported once through
# ``on_oversize`` and its first byte is skipped as noise; framing resumes one byte later with a
# fresh framer, exactly as it does after any other stray byte.  The outcome does not depend on
# how the stream was cut into reads, what one connection holds back never exceeds ``limit``
# bytes however the peer lies, and a lying header costs no packet after it.
# Pure: no asyncio; private to simulator/.
from __future__ import annotations

from collections.abc import Callable

from cyncsim.replay.errors import PacketDecodeError
from cyncsim.replay.framer import PacketFramer
from cyncsim.replay.protocol import HEADER, HEADER_LEN

__all__ = ["MAX_PACKET", "PacketStream"]

MAX_PACKET = HEADER_LEN + 0xFFFF  # the longest packet the outer header can describe

# (stream offset, packet type, claimed packet length) of a header longer than the limit
Oversize = Callable[[int, int, int], None]


class PacketStream:
    """Whole packets (their bytes, in order) out of one direction of a connection."""

    __slots__ = ("_framer", "_pending", "limit", "on_oversize", "oversize", "skipped")

    def __init__(self, limit: int = MAX_PACKET, on_oversize: Oversize | None = None) -> None:
        if not HEADER_LEN <= limit <= MAX_PACKET:
            raise ValueError(f"limit={limit} must be {HEADER_LEN}..{MAX_PACKET}")
        self.limit = limit
        self.on_oversize = on_oversize
        self.skipped = 0  # bytes skipped as noise (reported once a run of them ends)
        self.oversize = 0  # headers that claimed more than ``limit`` bytes
        self._framer = PacketFramer()
        self._pending = b""  # the bytes the framer holds back (always a suffix of the stream)

    @property
    def buffered(self) -> int:
        """Bytes held back waiting for the rest of a packet (at most ``limit``)."""
        return len(self._pending)

    def feed(self, data: bytes) -> list[bytes]:
        """The packets completed by ``data``; never raises for what a peer sends."""
        out: list[bytes] = []
        while True:
            framer = self._framer
            base = framer.offset  # stream offset of stream[0]
            stream = self._pending + data if self._pending else data
            try:
                found = framer.feed_with_offsets(data)
            except PacketDecodeError:  # strict framers only; kept for safety: drop the packet
                found = framer.feed_with_offsets(b"")
            cut = -1  # where in ``stream`` a header claims more than the limit
            for offset, _ in found:
                start = offset - base
                end = start + HEADER_LEN + HEADER.unpack_from(stream, start)[2]
                if end - start > self.limit:  # it came whole, but is too long all the same
                    cut = start
                    break
                out.append(stream if start == 0 and end == len(stream) else stream[start:end])
            if cut < 0:
                held = framer.buffered
                self._pending = stream[len(stream) - held :] if held else b""
                self._count_skipped(framer, base + len(stream))
                if held < HEADER_LEN:
                    return out
                cut = len(stream) - held  # a header waits for its packet: is it too long?
                if HEADER_LEN + HEADER.unpack_from(stream, cut)[2] <= self.limit:
                    return out
            else:
                self._count_skipped(framer, base + cut)
            # A header claiming more than we accept is not a packet start: skip its first byte
            # and frame the rest again, as after any other stray byte.
            ptype, _, length = HEADER.unpack_from(stream, cut)
            self.oversize += 1
            self.skipped += 1
            if self.on_oversize is not None:
                self.on_oversize(base + cut, ptype, HEADER_LEN + length)
            data = stream[cut + 1 :]
            self._pending = b""
            self._framer = PacketFramer(offset=base + cut + 1)

    def _count_skipped(self, framer: PacketFramer, before: int) -> None:
        """Count the noise the framer reported, up to stream offset ``before``."""
        if framer.findings:
            self.skipped += sum(f.length for f in framer.findings if f.offset < before)
            framer.findings.clear()
