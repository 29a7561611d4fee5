# The bytes a connection reads, cut into whole packets by replay.framer.PacketFramer, with a limit
# on how long a packet may be.
#
# Strategy: PacketFramer finds the packets (and skips, as noise, bytes that cannot start one)
# without decoding them (``feed_spans``: the engine decodes each packet, once); this class only
# hands on each packet's own bytes (a read that is exactly one packet, as is usual, as it is),
# sliced from what was read at the offset the framer reports (the framer keeps a suffix of the
# stream, so the bytes it holds back are mirrored here as ``pending``), and enforces ``limit``: a
# header that claims more, whether its packet came whole or the header waits for the rest, is
# reported once through ``on_oversize`` and its first byte is skipped as noise; framing resumes one
# byte later with a fresh framer, exactly as it does after any other stray byte.  The outcome does
# not depend on how the stream was cut into reads, what one connection holds back never exceeds
# ``limit`` bytes however the peer lies, and a lying header costs no packet after it.  PacketQueue
# holds what a connection read while it cannot take more packets (backpressure) and frames it a
# chunk at a time, so what is held stays bytes, not a read's worth of packets.  ``read_buffer``
# is the one buffer per thread that connections read into.  Pure: no asyncio; private to
# simulator/.
from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable

from cyncsim.replay.framer import PacketFramer
from cyncsim.replay.protocol import HEADER, HEADER_LEN

__all__ = ["MAX_PACKET", "READ_SIZE", "PacketQueue", "PacketStream", "read_buffer"]

MAX_PACKET = HEADER_LEN + 0xFFFF  # the longest packet the outer header can describe
READ_SIZE = 64 * 1024  # bytes one read takes at most (into the thread's read buffer)
_thread = threading.local()

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
        limit = self.limit
        while True:
            framer = self._framer
            base = framer.offset  # stream offset of stream[0]
            pending = self._pending
            found = framer.feed_spans(data)  # boundaries only: the engine decodes each packet
            if (
                not pending
                and len(found) == 1
                and found[0][1] == len(data) <= limit
                and not framer.findings
            ):
                out.append(data)  # the usual read: exactly one whole packet, nothing skipped
                return out
            stream = pending + data if pending else data
            cut = -1  # where in ``stream`` a header claims more than the limit
            for offset, length in found:
                start = offset - base
                if length > limit:  # it came whole, but is too long all the same
                    cut = start
                    break
                end = start + length
                out.append(stream if start == 0 and end == len(stream) else stream[start:end])
            if cut < 0:
                held = framer.buffered
                self._pending = stream[len(stream) - held :] if held else b""
                self._count_skipped(framer, base + len(stream))
                if held < HEADER_LEN:
                    return out
                cut = len(stream) - held  # a header waits for its packet: is it too long?
                if HEADER_LEN + HEADER.unpack_from(stream, cut)[2] <= limit:
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


class PacketQueue:
    """What a connection read and has not handed on yet, given out one packet at a time.

    ``put`` keeps a read as it is; ``get`` frames it ``chunk`` bytes at a time through
    ``stream`` and returns the next whole packet, or None once everything put is framed (a
    partial packet then waits in ``stream`` for the next read).  A reader that stops calling
    ``get`` therefore holds at most what it put plus one chunk's packets, never a whole read
    cut into thousands of packets.
    """

    __slots__ = ("_at", "_data", "_packets", "chunk", "stream")

    def __init__(self, stream: PacketStream, chunk: int = 1024) -> None:
        if chunk < 1:
            raise ValueError(f"chunk={chunk} must be at least 1")
        self.stream = stream
        self.chunk = chunk
        self._data = b""  # put, not framed yet: self._data[self._at:]
        self._at = 0
        self._packets: deque[bytes] = deque()  # framed, not given out yet

    def __bool__(self) -> bool:
        """True while something put has not been given out (framed or not)."""
        return bool(self._packets) or self._at < len(self._data)

    @property
    def held(self) -> int:
        """Bytes put and not given out, including a partial packet waiting in ``stream``."""
        unframed = len(self._data) - self._at
        return unframed + self.stream.buffered + sum(map(len, self._packets))

    def put(self, data: bytes) -> None:
        if self._at < len(self._data):
            self._data = self._data[self._at :] + data
        else:
            self._data = data
        self._at = 0

    def get(self) -> bytes | None:
        packets = self._packets
        while not packets:
            data, at = self._data, self._at
            if at >= len(data):
                self._data, self._at = b"", 0
                return None
            chunk = data[at : at + self.chunk]  # the whole of a short read: no copy
            self._at = at + len(chunk)
            packets.extend(self.stream.feed(chunk))
        return packets.popleft()

    def clear(self) -> None:
        """Drop what was put and not given out (the stream keeps its own partial packet)."""
        self._data, self._at = b"", 0
        self._packets.clear()


def read_buffer() -> memoryview:
    """The read buffer of this thread's connections (asyncio.BufferedProtocol.get_buffer).

    asyncio (and uvloop) call get_buffer, fill the buffer and call buffer_updated with nothing
    in between, and buffer_updated copies the bytes out first, so one buffer per thread (per
    event loop) serves every connection: no 256 KiB allocation per read, as a plain Protocol's
    reads make, and no buffer per connection in a fleet of thousands.
    """
    view: memoryview | None = getattr(_thread, "view", None)
    if view is None:
        view = _thread.view = memoryview(bytearray(READ_SIZE))
    return view
