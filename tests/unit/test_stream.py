# Tests of simulator/_stream.py: whole packets out of a byte stream, with a length limit.
#
# Strategy: streams built from real packets, noise and lying headers; the packets, the skipped
# byte count and the oversize reports must not depend on how the stream is cut into reads
# (hypothesis picks the cuts), and what is held back never exceeds the limit.
from __future__ import annotations

import itertools
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from cyncsim.simulator._stream import MAX_PACKET, PacketStream
from tests.support import HELLO, PING, POWER_OFF

H = bytes.fromhex
OVERSIZE = H("73 00 00 ff ff")  # claims 65,540 bytes
LIMIT = 1024


def _noise(n: int, seed: int) -> bytes:
    rng = random.Random(seed)
    return bytes(rng.randrange(1, 256) for _ in range(n))  # no zero: never a header


PACKETS = [HELLO, PING, POWER_OFF, PING, POWER_OFF]
STREAM = (
    HELLO
    + PING
    + _noise(50, 1)
    + POWER_OFF
    + OVERSIZE
    + PING
    + _noise(3000, 2)
    + POWER_OFF
    + OVERSIZE
)


def _run(chunks: list[bytes], limit: int = LIMIT) -> tuple[list[bytes], PacketStream, list[int]]:
    reports: list[int] = []
    stream = PacketStream(limit, lambda offset, ptype, length: reports.append(offset))
    out: list[bytes] = []
    for chunk in chunks:
        out.extend(stream.feed(chunk))
        assert stream.buffered <= limit
    return out, stream, reports


def test_packets_noise_and_lying_headers() -> None:
    out, stream, reports = _run([STREAM])
    assert out == PACKETS
    first, last = STREAM.index(OVERSIZE), STREAM.rindex(OVERSIZE)
    assert reports == [first, last]  # the stream offsets of the lying headers
    assert stream.oversize == 2 and stream.skipped >= 50 + 3000 + 2
    assert stream.buffered == 2  # "ff ff": could still start a header


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=40))
def test_any_chunking_gives_the_same_result(cuts: list[int]) -> None:
    bounds = [0, *sorted(cuts), len(STREAM)]
    chunks = [STREAM[a:b] for a, b in itertools.pairwise(bounds)]
    out, stream, reports = _run(chunks)
    whole_out, whole, whole_reports = _run([STREAM])
    assert out == whole_out and reports == whole_reports
    assert stream.oversize == whole.oversize and stream.buffered == whole.buffered


def test_one_byte_reads() -> None:
    out, _, reports = _run([STREAM[i : i + 1] for i in range(len(STREAM))])
    assert out == PACKETS and len(reports) == 2


def test_packet_of_exactly_the_limit_passes_one_byte_more_does_not() -> None:
    body = bytes(LIMIT - 5)
    fits = bytes((0x43, 0, 0)) + (LIMIT - 5).to_bytes(2, "big") + body
    out, stream, _ = _run([fits + PING])
    assert out == [fits, PING] and stream.oversize == 0
    over = bytes((0x43, 0, 0)) + (LIMIT - 4).to_bytes(2, "big") + body + b"\x01"
    out, stream, _ = _run([over + PING])
    assert stream.oversize == 1 and out[-1:] == [PING]


def test_default_limit_is_what_a_header_can_say() -> None:
    big = bytes((0x73, 0, 0, 0xFF, 0xFF)) + bytes(0xFFFF)
    out, stream, _ = _run([big[:30000], big[30000:]], limit=MAX_PACKET)
    assert out == [big] and stream.oversize == 0
