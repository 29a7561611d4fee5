# Tests of simulator/_stream.py's PacketQueue: what a connection read and has not handed on.
#
# Strategy: whatever the reads and however many packets are taken between them, the packets
# given out are those of the whole stream, in order (hypothesis picks the cuts and the takes);
# and a reader that stops taking holds the bytes it put plus at most one chunk's packets.
from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cyncsim.simulator._stream import PacketQueue, PacketStream
from tests.support import PING, POWER_OFF

H = bytes.fromhex
CONTROL = H("a3 00 00 00 07 64 57 e7 f2 9f 52 00")


def _stream(seed: int = 0) -> tuple[bytes, list[bytes]]:
    rng = random.Random(seed)
    packets = [rng.choice((PING, POWER_OFF, CONTROL)) for _ in range(300)]
    noise = bytes(rng.randrange(1, 256) for _ in range(40))
    return b"".join(packets[:150]) + noise + b"".join(packets[150:]), packets


def _drain(q: PacketQueue, limit: int | None = None) -> list[bytes]:
    out: list[bytes] = []
    while limit is None or len(out) < limit:
        p = q.get()
        if p is None:
            break
        out.append(p)
    return out


@settings(max_examples=200, deadline=None)
@given(
    cuts=st.lists(st.integers(0, 6000), max_size=12),
    takes=st.lists(st.integers(0, 40), min_size=13, max_size=13),
    chunk=st.integers(1, 2048),
)
def test_packets_do_not_depend_on_reads_takes_or_chunk(
    cuts: list[int], takes: list[int], chunk: int
) -> None:
    data, packets = _stream()
    bounds = [0, *sorted(c % (len(data) + 1) for c in cuts), len(data)]
    q = PacketQueue(PacketStream(1024), chunk)
    out: list[bytes] = []
    for (a, b), take in zip(itertools.pairwise(bounds), takes, strict=False):
        q.put(data[a:b])
        out += _drain(q, take)
    out += _drain(q)
    assert out == packets
    assert not q and q.held == 0


def test_a_reader_that_stops_holds_bytes_not_a_read_of_packets() -> None:
    q = PacketQueue(PacketStream(1024), 1024)
    flood = CONTROL * 20000  # 240,000 bytes: one big read of 20,000 requests
    q.put(flood)
    first = q.get()
    assert first == CONTROL
    assert q and q.held == len(flood) - len(CONTROL)
    assert len(q._packets) < 1024 // len(CONTROL)  # framed: one chunk's packets at most
    q.put(PING)  # a read while held goes behind what is held
    assert len(_drain(q)) == 19999 + 1
    assert not q


def test_clear_drops_what_is_held() -> None:
    q = PacketQueue(PacketStream(1024), 64)
    q.put(POWER_OFF * 10)
    assert q.get() == POWER_OFF
    q.clear()
    assert not q and q.get() is None


def test_chunk_must_be_positive() -> None:
    with pytest.raises(ValueError, match="chunk"):
        PacketQueue(PacketStream(1024), 0)
