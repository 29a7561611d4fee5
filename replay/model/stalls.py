# Stall episodes of a device's command queue: learned from the acks of exact flows.
#
# Strategy: a bridge works through its 0x73 commands one after another (PROTOCOL.md 10.1), and
# each ack to a command that arrived while an earlier one was still unacked ("busy") is timed
# from the previous ack: the busy gap S_k = t_k - t_{k-1}.  In the captures these gaps are
# either short (6-26 ms in 152132: the device's own pace) or a stall (0.6-1.8 s), and the
# commands that queued up behind a stall leave together with it, in one write (a flush: a gap
# of 0, so the commands that were sent together get acks with identical latencies).  So a
# busy gap above STALL_GAP_S is a stall episode, and an ack that follows one within
# FLUSH_GAP_S, for a command that arrived before the stall ended, is part of its flush.
# Learned (StallSamples, one StallTrack per flow fed every paired ack in order, bounded):
#   * the onset: per busy command served (the flushed ones are not served), how many began a
#     stall, by backlog at arrival (BUCKETS); a likelihood-ratio test says whether the rate
#     depends on the backlog (``load_dependent``), else one pooled rate is used;
#   * the durations (the stalls' busy gaps), a dist.Distribution;
#   * the flush: of the commands queued behind a stall, how many left with it (none queued
#     behind one: a flush, as after every stall of 152132);
#   * per request kind, the busy service without stalls and flushes (the device's pace).
# The idle latency (nothing queued) is the exchange's by_outstanding["0"], learned already.
# A model without a StallModel (older files, captures without exact flows) has no stalls.
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from cyncsim.replay.model.dist import Distribution, Samples

__all__ = [
    "BUCKETS",
    "FLUSH_GAP_S",
    "LOAD_P",
    "STALL_GAP_S",
    "StallModel",
    "StallSamples",
    "StallTrack",
    "backlog_bucket",
]

# A busy gap above this is a stall.  In 152132 the device's own pace is 6-26 ms between acks
# and the three stalls are 624, 1,038 and 1,736 ms: any threshold between 30 and 600 ms gives
# the same episodes; 0.25 s is about ten times the longest normal gap.
STALL_GAP_S = 0.25
FLUSH_GAP_S = 0.003  # acks this close after a stall's end left in the same write as it
BUCKETS = ("1-4", "5+")  # backlog at arrival: commands still unacked (busy only)
LOAD_P = 0.05  # onset per backlog bucket only when a likelihood-ratio test rejects one rate


def backlog_bucket(depth: int) -> str:
    return BUCKETS[0] if depth < 5 else BUCKETS[1]


@dataclass(slots=True)
class StallModel:
    """Stall episodes of one variant's devices (see the module comment)."""

    threshold: float = STALL_GAP_S
    served: dict[str, int] = field(default_factory=dict)  # busy commands, by backlog bucket
    stalls: dict[str, int] = field(default_factory=dict)  # of which began a stall
    durations: Distribution = field(default_factory=Distribution)  # seconds
    queued: int = 0  # commands queued behind a stall
    flushed: int = 0  # of which left in its flush
    service: dict[str, Distribution] = field(default_factory=dict)  # request key -> busy pace

    @property
    def episodes(self) -> int:
        return sum(self.stalls.values())

    @property
    def flush(self) -> bool:
        """Commands queued behind a stall leave with it: unless most did not in the captures
        (where no command ever queued behind one, the flush every real stall showed)."""
        return 2 * self.flushed >= self.queued

    def load_p(self) -> float:
        """p-value of a likelihood-ratio test of one onset rate against one per bucket."""
        return lr_pvalue([(self.served.get(b, 0), self.stalls.get(b, 0)) for b in BUCKETS])

    @property
    def load_dependent(self) -> bool:
        return self.load_p() < LOAD_P

    def onset(self, bucket: str) -> float:
        """Probability that a busy command at this backlog begins a stall."""
        if self.load_dependent and self.served.get(bucket, 0):
            return self.stalls.get(bucket, 0) / self.served[bucket]
        n = sum(self.served.values())
        return self.episodes / n if n else 0.0

    def merge(self, other: StallModel) -> StallModel:
        """Both as one, as if learned together (counts add, distributions merge)."""
        service = dict(self.service)
        for k, d in other.service.items():
            service[k] = service[k].merge(d) if k in service else d
        return StallModel(
            max(self.threshold, other.threshold),
            _add(self.served, other.served),
            _add(self.stalls, other.stalls),
            _merge_dist(self.durations, other.durations),
            self.queued + other.queued,
            self.flushed + other.flushed,
            dict(sorted(service.items())),
        )

    def summary(self) -> dict[str, Any]:
        served = sum(self.served.values())
        out: dict[str, Any] = {
            "busy_served": served,
            "episodes": self.episodes,
            "onset_per_command": round(self.episodes / served, 4) if served else 0.0,
            "by_backlog": {b: [self.stalls.get(b, 0), self.served.get(b, 0)] for b in BUCKETS},
            "load_p": round(self.load_p(), 4),
            "flushed": [self.flushed, self.queued],
        }
        if self.durations:
            out["duration_ms"] = self.durations.summary(1000.0)
        return out

    def to_obj(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "served": dict(sorted(self.served.items())),
            "stalls": dict(sorted(self.stalls.items())),
            "durations": self.durations.to_obj(),
            "queued": self.queued,
            "flushed": self.flushed,
            "service": {k: d.to_obj() for k, d in sorted(self.service.items())},
        }

    @classmethod
    def from_obj(cls, obj: dict[str, Any]) -> StallModel:
        return cls(
            float(obj["threshold"]),
            {str(k): int(v) for k, v in obj["served"].items()},
            {str(k): int(v) for k, v in obj["stalls"].items()},
            Distribution.from_obj(obj["durations"]),
            int(obj["queued"]),
            int(obj["flushed"]),
            {str(k): Distribution.from_obj(d) for k, d in obj["service"].items()},
        )


class StallSamples:
    """What the learner keeps of one source's (or variant's) stalls while it reads: bounded."""

    __slots__ = ("durations", "flushed", "queued", "served", "service", "stalls")

    def __init__(self) -> None:
        self.served: dict[str, int] = {}
        self.stalls: dict[str, int] = {}
        self.durations = Samples()
        self.queued = 0
        self.flushed = 0
        self.service: dict[str, Samples] = {}

    def track(self) -> StallTrack:
        """The per-flow reader that feeds these samples."""
        return StallTrack(self)

    def merge(self, other: StallSamples) -> None:
        self.served = _add(self.served, other.served)
        self.stalls = _add(self.stalls, other.stalls)
        self.durations.merge(other.durations)
        self.queued += other.queued
        self.flushed += other.flushed
        for k, smp in other.service.items():
            mine = self.service.get(k)
            if mine is None:
                self.service[k] = mine = Samples()
            mine.merge(smp)

    def build(self) -> StallModel | None:
        """The StallModel, or None when no command was ever acked while another waited."""
        if not self.served:
            return None
        return StallModel(
            STALL_GAP_S,
            dict(sorted(self.served.items())),
            dict(sorted(self.stalls.items())),
            self.durations.build() if len(self.durations) else Distribution(),
            self.queued,
            self.flushed,
            {k: s.build() for k, s in sorted(self.service.items()) if len(s)},
        )


class StallTrack:
    """One flow's acks, fed in the order they left: classifies each busy gap."""

    __slots__ = ("out", "stall_end")

    def __init__(self, out: StallSamples) -> None:
        self.out = out
        self.stall_end: float | None = None  # end of the last stall, while its flush lasts

    def add(self, request: str, arrival: float, ack: float, prev: float | None, depth: int) -> None:
        """An ack at ``ack`` to a ``request`` that arrived at ``arrival``; ``prev``: the
        previous ack on the flow (None: the first); ``depth``: acks still owed at arrival."""
        out = self.out
        if prev is None or arrival >= prev:  # idle: nothing queued in front
            self.stall_end = None
            return
        gap = ack - prev
        end = self.stall_end
        if end is not None and arrival < end:  # queued behind a stall
            out.queued += 1
            if gap <= FLUSH_GAP_S:
                out.flushed += 1
                return
        else:
            self.stall_end = None
        b = backlog_bucket(depth)
        out.served[b] = out.served.get(b, 0) + 1
        if gap > STALL_GAP_S:
            out.stalls[b] = out.stalls.get(b, 0) + 1
            out.durations.add(gap)
            self.stall_end = ack
            return
        smp = out.service.get(request)
        if smp is None:
            smp = out.service[request] = Samples()
        smp.add(max(0.0, gap))


def lr_pvalue(cells: list[tuple[int, int]]) -> float:
    """p-value of the G test that every (trials, events) cell has one rate (chi-square with
    cells-1 degrees of freedom; 1.0 when there is nothing to compare)."""
    cells = [(n, k) for n, k in cells if n > 0]
    n_all = sum(n for n, _ in cells)
    k_all = sum(k for _, k in cells)
    df = len(cells) - 1
    if df < 1 or k_all in (0, n_all):
        return 1.0
    p = k_all / n_all
    g = 0.0
    for n, k in cells:
        if k:
            g += k * math.log(k / (n * p))
        if n - k:
            g += (n - k) * math.log((n - k) / (n * (1 - p)))
    return chi2_sf(max(0.0, 2 * g), df)


def chi2_sf(x: float, df: int) -> float:
    """P(X > x) for X chi-square with ``df`` degrees of freedom (regularised gamma series)."""
    if x <= 0:
        return 1.0
    a, z = df / 2.0, x / 2.0
    if z > a + 40:  # far in the tail: the continued fraction is not worth it here
        return 0.0
    term = total = 1.0 / a
    k = a
    while term > total * 1e-15:
        k += 1.0
        term *= z / k
        total += term
    lower = total * math.exp(-z + a * math.log(z) - math.lgamma(a))
    return min(1.0, max(0.0, 1.0 - lower))


def _add(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    out = dict(a)
    for k, n in b.items():
        out[k] = out.get(k, 0) + n
    return dict(sorted(out.items()))


def _merge_dist(a: Distribution, b: Distribution) -> Distribution:
    if not a.count or not b.count:
        return a if a.count else b
    return a.merge(b)
