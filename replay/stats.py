# Mergeable run statistics: counters and answer-latency histograms that add up across
# fleets, worker processes and Ray shards.
#
# Strategy: a LatencyHistogram has fixed log-spaced buckets, the same edges everywhere
# (MIN_S * GROWTH**i), stored sparsely as {bucket index: count} with the exact count, sum,
# min and max beside them, so merging two is adding counts and the merge of histograms is
# the histogram of the union of their samples.  quantile(q) is the nearest-rank sample
# quantile to within one bucket: its relative error is at most GROWTH - 1 (2 %), about 1 %
# typically (a bucket's geometric middle is returned, clamped to [min, max]); below MIN_S
# the error is at most MIN_S in absolute terms.  RunStats is what a fleet did so far (the
# same counters a fleet, a worker or a shard keeps), merge() adds another's; both have a
# compact to_dict()/from_dict() form (JSON-able, picklable).  AnswerMeter is the hook a
# fleet's connections call for every packet they hand to the engine (commands, answers,
# latency per request kind, keyed by request_kind: cheap, from fixed offsets of the raw
# bytes, memoised).  Pure: no clock (times come with the calls), no I/O.
from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cyncsim.replay.engine.actions import Send
from cyncsim.replay.protocol import FIRMWARE_MARKER, FRAME_HEAD, FRAME_MARKER, PacketType

__all__ = [
    "GROWTH",
    "MAX_S",
    "MIN_S",
    "AnswerMeter",
    "LatencyHistogram",
    "RunStats",
    "bucket_bounds",
    "request_kind",
]

MIN_S = 1e-6  # lower edge of bucket 1 (bucket 0 holds everything below, zeros included)
MAX_S = 1000.0  # values above land in the last bucket (max stays exact)
GROWTH = 1.02  # each bucket's upper edge is 2 % above its lower edge
_INV_LOG = 1.0 / math.log(GROWTH)
_INV_MIN = 1.0 / MIN_S
_log = math.log
_LAST = int(math.log(MAX_S / MIN_S) * _INV_LOG) + 1  # index of the last bucket
_LAYOUT = (MIN_S, GROWTH, _LAST)


def _index(seconds: float) -> int:
    if seconds < MIN_S:
        return 0
    return min(_LAST, int(_log(seconds * _INV_MIN) * _INV_LOG) + 1)


def bucket_bounds(index: int) -> tuple[float, float]:
    """[lower, upper) edges in seconds of bucket ``index`` (bucket 0: [0, MIN_S))."""
    if index <= 0:
        return 0.0, MIN_S
    upper = math.inf if index >= _LAST else MIN_S * GROWTH**index
    return MIN_S * GROWTH ** (index - 1), upper


class LatencyHistogram:
    """Mergeable latency histogram: fixed log-spaced buckets from MIN_S (1 us) to MAX_S
    (1000 s), each 2 % wide, counts per bucket, count, sum, min, max.  The same bucket
    edges everywhere, so merging is adding counts.  ``quantile(q)`` is accurate to one
    bucket: within 2 % of the nearest-rank sample quantile (within 1 us below 1 us), and
    exact for the first and last rank (min and max are kept)."""

    __slots__ = ("_buckets", "count", "max", "min", "sum")

    def __init__(self) -> None:
        self._buckets: dict[int, int] = {}
        self.count = 0
        self.sum = 0.0
        self.min = math.inf
        self.max = -math.inf

    def record(self, seconds: float) -> None:
        """One sample (negative values count as 0).  Called per answered packet: inlined."""
        if seconds < MIN_S:
            if seconds < 0.0:  # noqa: PLR1730 (a hot path: no call)
                seconds = 0.0
            i = 0
        else:
            i = int(_log(seconds * _INV_MIN) * _INV_LOG) + 1
            if i > _LAST:  # noqa: PLR1730 (a hot path: no call)
                i = _LAST
        b = self._buckets
        b[i] = b.get(i, 0) + 1
        self.count += 1
        self.sum += seconds
        if seconds < self.min:  # noqa: PLR1730 (a hot path: no call)
            self.min = seconds
        if seconds > self.max:  # noqa: PLR1730 (a hot path: no call)
            self.max = seconds

    def merge(self, other: LatencyHistogram) -> None:
        """Add ``other``'s samples to this one."""
        b = self._buckets
        for i, n in other._buckets.items():
            b[i] = b.get(i, 0) + n
        self.count += other.count
        self.sum += other.sum
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)

    def copy(self) -> LatencyHistogram:
        out = LatencyHistogram()
        out.merge(self)
        return out

    def buckets(self) -> Iterator[tuple[int, int]]:
        """(bucket index, count) of the non-empty buckets, in increasing order."""
        return iter(sorted(self._buckets.items()))

    def quantile(self, q: float) -> float:
        """The nearest-rank ``q`` quantile (sample k = ceil(q * count), at least 1), to one
        bucket's resolution; nan when empty."""
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"q={q} must be in [0, 1]")
        if self.count == 0:
            return math.nan
        rank = max(1, math.ceil(q * self.count))
        if rank == self.count:
            return self.max  # the extremes are kept exactly
        if rank == 1:
            return self.min
        seen = 0
        for i, n in self.buckets():
            seen += n
            if seen >= rank:
                lo, hi = bucket_bounds(i)
                mid = lo if i == 0 else (lo if hi == math.inf else math.sqrt(lo * hi))
                return min(self.max, max(self.min, mid))
        return self.max  # not reached: the buckets hold count samples

    def count_le(self, seconds: float) -> int:
        """Samples in buckets whose upper edge is at most ``seconds`` (a cumulative count
        for a coarser histogram, such as Prometheus's, to one bucket's resolution)."""
        if seconds >= self.max:
            return self.count
        limit = _index(seconds)  # buckets below the one holding ``seconds``
        return sum(n for i, n in self._buckets.items() if i < limit)

    @property
    def mean(self) -> float:
        return self.sum / self.count if self.count else math.nan

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LatencyHistogram):
            return NotImplemented
        return (
            self._buckets == other._buckets
            and self.count == other.count
            and self.min == other.min
            and self.max == other.max
            and math.isclose(self.sum, other.sum, rel_tol=1e-9, abs_tol=1e-12)
        )

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        if not self.count:
            return "LatencyHistogram(empty)"
        return (
            f"LatencyHistogram(count={self.count}, p50={self.quantile(0.5):.6g}, "
            f"p99={self.quantile(0.99):.6g}, max={self.max:.6g})"
        )

    def to_dict(self) -> dict[str, Any]:
        """Compact and JSON-able: the non-empty buckets as [index, count] pairs."""
        return {
            "layout": list(_LAYOUT),
            "count": self.count,
            "sum": self.sum,
            "min": self.min if self.count else None,
            "max": self.max if self.count else None,
            "buckets": [[i, n] for i, n in self.buckets()],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LatencyHistogram:
        layout = tuple(d.get("layout", _LAYOUT))
        if layout != _LAYOUT:
            raise ValueError(f"histogram layout {layout} is not this version's {_LAYOUT}")
        out = cls()
        out._buckets = {int(i): int(n) for i, n in d["buckets"]}
        out.count = int(d["count"])
        if sum(out._buckets.values()) != out.count:
            raise ValueError("histogram buckets do not add up to its count")
        out.sum = float(d["sum"])
        if out.count:
            out.min = float(d["min"])
            out.max = float(d["max"])
        return out


# ---------------------------------------------------------------------------- per request
_MARKER_AT = FRAME_HEAD["marker"].offset
_KIND_AT = FRAME_HEAD["kind"].offset
_OPCODE_AT = FRAME_HEAD["opcode"].offset
_DATA, _REPORT = int(PacketType.DATA), int(PacketType.REPORT)
_KINDS: dict[int, str] = {}  # (type << 16 | kind << 8 | opcode) or type -> its name


def request_kind(data: bytes) -> str:
    """A packet's request key from its bytes alone: "0x73:f8:d0" when it carries an inner
    frame head (type, frame kind, opcode), else "0xd3" (as describe.request_key names a
    decoded packet)."""
    ptype = data[0]
    marker = data[_MARKER_AT] if len(data) > _OPCODE_AT else -1
    if (ptype == _DATA and marker == FRAME_MARKER) or (
        ptype == _REPORT and marker in (FRAME_MARKER, FIRMWARE_MARKER)
    ):
        code = ptype << 16 | data[_KIND_AT] << 8 | data[_OPCODE_AT]
    else:
        code = ptype
    name = _KINDS.get(code)
    if name is None:
        name = _KINDS[code] = (
            f"0x{ptype:02x}:{data[_KIND_AT]:02x}:{data[_OPCODE_AT]:02x}"
            if code > 0xFF
            else f"0x{ptype:02x}"
        )
    return name


class AnswerMeter:
    """Counts what a fleet's connections hand to their engines: ``commands`` (0x73 packets
    received), ``answers`` (packets sent in answer) and, per request kind, the latency from
    a request's arrival to its first answer's departure (as scheduled: a connection never
    writes early, and the loop's own lateness is not in it).  ``answered`` is the hook an
    EngineConnection calls for every packet."""

    __slots__ = ("answers", "commands", "latency")

    def __init__(self) -> None:
        self.commands = 0
        self.answers = 0
        self.latency: dict[str, LatencyHistogram] = {}

    def answered(self, request: bytes, arrival: float, actions: Sequence[object]) -> None:
        if request[0] == _DATA:
            self.commands += 1
        first = math.inf
        sends = 0
        for a in actions:
            if type(a) is Send:
                sends += 1
                first = min(first, a.at)
        if not sends:
            return
        self.answers += sends
        kind = request_kind(request)
        h = self.latency.get(kind)
        if h is None:
            h = self.latency[kind] = LatencyHistogram()
        h.record(first - arrival)

    def add_to(self, stats: RunStats) -> None:
        """Add what was counted so far to ``stats`` (the histograms are copied)."""
        stats.commands += self.commands
        stats.answers += self.answers
        for kind, h in self.latency.items():
            mine = stats.latency.get(kind)
            if mine is None:
                stats.latency[kind] = h.copy()
            else:
                mine.merge(h)


def _n(count: int, what: str) -> str:
    return f"{count} {what}{'' if count == 1 else 's'}"


@dataclass(slots=True)
class RunStats:
    """What a fleet (one process, a worker, a Ray shard) did so far; ``merge()`` adds
    another's.  Packets are counted as the devices read and wrote them, before chaos acted
    on them.  ``commands``: data packets (0x73) the devices received; ``answers``: packets
    they sent in answer to anything received; ``latency``: per request kind (request_key,
    e.g. "0x73:f8:d0"), the time from a request's arrival to its first answer's departure;
    ``faults``: chaos events by kind."""

    devices: int = 0
    connected: int = 0
    connections: int = 0
    connect_failures: int = 0
    packets_in: int = 0
    packets_out: int = 0
    commands: int = 0
    answers: int = 0
    faults: dict[str, int] = field(default_factory=dict)
    latency: dict[str, LatencyHistogram] = field(default_factory=dict)

    @property
    def faults_total(self) -> int:
        return sum(self.faults.values())

    def merge(self, other: RunStats) -> None:
        """Add ``other``'s counters and histograms to this one's (``other`` is unchanged)."""
        self.devices += other.devices
        self.connected += other.connected
        self.connections += other.connections
        self.connect_failures += other.connect_failures
        self.packets_in += other.packets_in
        self.packets_out += other.packets_out
        self.commands += other.commands
        self.answers += other.answers
        for kind, n in other.faults.items():
            self.faults[kind] = self.faults.get(kind, 0) + n
        for kind, h in other.latency.items():
            mine = self.latency.get(kind)
            if mine is None:
                self.latency[kind] = h.copy()
            else:
                mine.merge(h)

    @classmethod
    def merged(cls, parts: Iterator[RunStats] | list[RunStats]) -> RunStats:
        """A new RunStats holding the sum of ``parts``."""
        out = cls()
        for p in parts:
            out.merge(p)
        return out

    def all_latency(self) -> LatencyHistogram:
        """The answer latency of every request kind in one histogram."""
        out = LatencyHistogram()
        for h in self.latency.values():
            out.merge(h)
        return out

    def summary(self) -> str:
        """The one-line summary `cyncsim serve` prints when it stops."""
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(self.faults.items()))
        return (
            f"{_n(self.devices, 'device')}, {_n(self.connections, 'connection')}, "
            f"{_n(self.packets_in, 'packet')} in, {_n(self.packets_out, 'packet')} out, "
            f"{_n(self.faults_total, 'fault')} injected" + (f" ({kinds})" if kinds else "")
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "devices": self.devices,
            "connected": self.connected,
            "connections": self.connections,
            "connect_failures": self.connect_failures,
            "packets_in": self.packets_in,
            "packets_out": self.packets_out,
            "commands": self.commands,
            "answers": self.answers,
            "faults": dict(sorted(self.faults.items())),
            "latency": {k: h.to_dict() for k, h in sorted(self.latency.items())},
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RunStats:
        counters = {
            name: int(d.get(name, 0))
            for name in (
                "devices", "connected", "connections", "connect_failures",
                "packets_in", "packets_out", "commands", "answers",
            )
        }  # fmt: skip
        return cls(
            **counters,
            faults={str(k): int(n) for k, n in d.get("faults", {}).items()},
            latency={
                str(k): LatencyHistogram.from_dict(h) for k, h in d.get("latency", {}).items()
            },
        )
