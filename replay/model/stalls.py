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
#   * per request kind, the busy service without stalls and flushes (the device's pace);
#   * serial results: a command the device could take (at its arrival, or at the previous
#     ack when it queued behind it) while an earlier command's result was owed (its ack had
#     left, its result, the first answer after the ack, had not) either waited: its ack left
#     at or after that result (toggles in 152132, 4.5-11.7 ms after it: the gap), or ran
#     ahead: its ack left while a result owed then was still owed (brightness).  Counted per
#     request kind, each command at most once, stalls and the commands queued behind them
#     left out (the stall explains their acks; in 152132 their flushes carried owed results
#     with a gap of 0).  A command whose owed results are not all known yet waits in
#     ``pending`` until they are (a result that never came within MAX_WAIT was not owed).
#     What a track keeps is bounded: the commands of the last MAX_WAIT seconds, at most
#     SERIAL_KEEP awaiting a result and SERIAL_KEEP pending (the oldest go first, as if
#     their unknown results never came), so a command costs O(SERIAL_KEEP) at worst.
# The idle latency (nothing queued) is the exchange's by_outstanding["0"], learned already.
# A model without a StallModel (older files, captures without exact flows) has no stalls.
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from cyncsim.replay.model._pairing import MAX_WAIT
from cyncsim.replay.model.dist import Distribution, Samples

__all__ = [
    "BUCKETS",
    "FLUSH_GAP_S",
    "LOAD_P",
    "SERIAL_KEEP",
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
SERIAL_KEEP = 64  # commands awaiting a result, and commands pending, kept per flow


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
    serial: dict[str, tuple[int, int]] = field(default_factory=dict)  # key -> (waited, ahead)
    serial_gap: Distribution = field(default_factory=Distribution)  # result -> waiting ack, s

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

    def wait_p(self, request: str) -> float:
        """Share of the commands of this kind that arrived while a result was owed whose ack
        waited for that result (0.0 when none of this kind arrived so)."""
        waited, ahead = self.serial.get(request, (0, 0))
        return waited / (waited + ahead) if waited + ahead else 0.0

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
            _add_pairs(self.serial, other.serial),
            _merge_dist(self.serial_gap, other.serial_gap),
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
        if self.serial:
            out["serial"] = {k: list(v) for k, v in self.serial.items()}  # [waited, ahead]
        if self.serial_gap:
            out["serial_gap_ms"] = self.serial_gap.summary(1000.0)
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
            "serial": {k: list(v) for k, v in sorted(self.serial.items())},
            "serial_gap": self.serial_gap.to_obj(),
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
            # files written before serial results were learned have none
            {str(k): (int(v[0]), int(v[1])) for k, v in obj.get("serial", {}).items()},
            Distribution.from_obj(obj["serial_gap"]) if "serial_gap" in obj else Distribution(),
        )


class StallSamples:
    """What the learner keeps of one source's (or variant's) stalls while it reads: bounded."""

    __slots__ = ("ahead", "durations", "flushed", "gap", "queued", "served", "service", "stalls",
                 "waited")  # fmt: skip

    def __init__(self) -> None:
        self.served: dict[str, int] = {}
        self.stalls: dict[str, int] = {}
        self.durations = Samples()
        self.queued = 0
        self.flushed = 0
        self.service: dict[str, Samples] = {}
        self.waited: dict[str, int] = {}  # serial results: acks that waited for one owed
        self.ahead: dict[str, int] = {}  # acks that left while one was still owed
        self.gap = Samples()  # owed result -> the ack that waited for it, seconds

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
        self.waited = _add(self.waited, other.waited)
        self.ahead = _add(self.ahead, other.ahead)
        self.gap.merge(other.gap)

    def build(self) -> StallModel | None:
        """The StallModel, or None when no command was ever acked while another waited nor
        arrived while a result was owed."""
        if not self.served and not self.waited and not self.ahead:
            return None
        return StallModel(
            STALL_GAP_S,
            dict(sorted(self.served.items())),
            dict(sorted(self.stalls.items())),
            self.durations.build() if len(self.durations) else Distribution(),
            self.queued,
            self.flushed,
            {k: s.build() for k, s in sorted(self.service.items()) if len(s)},
            {
                k: (self.waited.get(k, 0), self.ahead.get(k, 0))
                for k in sorted({*self.waited, *self.ahead})
            },
            self.gap.build() if len(self.gap) else Distribution(),
        )


class _Command:
    """A command whose ack left, for the serial results: kept while its result may come
    (``awaiting``) or while it is not classified yet (``pending``)."""

    __slots__ = ("ack", "arrival", "n", "request", "start", "unknown", "waited_on")

    def __init__(self, request: str, arrival: float, start: float, ack: float, n: int) -> None:
        self.request = request
        self.arrival = arrival
        self.start = start  # when the device could take it: arrival, or the previous ack
        self.ack = ack
        self.n = n  # ack order on the flow
        self.waited_on: float | None = None  # latest owed result that left by the ack
        self.unknown = 0  # results owed at ``start`` not known yet


class StallTrack:
    """One flow's acks (``add``) and results (``result``), fed in the order they left:
    classifies each busy gap, and each command taken while a result was owed."""

    __slots__ = ("acks", "awaiting", "out", "pending", "results", "stall_end")

    def __init__(self, out: StallSamples) -> None:
        self.out = out
        self.stall_end: float | None = None  # end of the last stall, while its flush lasts
        self.acks = 0
        self.awaiting: deque[_Command] = deque()  # acked, no result yet: in ack order
        self.results: deque[tuple[float, float]] = deque()  # (result, its command's ack)
        self.pending: list[_Command] = []  # acked, some owed result not known yet

    def add(self, request: str, arrival: float, ack: float, prev: float | None, depth: int) -> None:
        """An ack at ``ack`` to a ``request`` that arrived at ``arrival``; ``prev``: the
        previous ack on the flow (None: the first); ``depth``: acks still owed at arrival."""
        if prev is None or arrival >= prev:  # idle: nothing queued in front
            self.stall_end = None
            self._serial(request, arrival, arrival, ack, True)
        else:
            paced = self._busy(request, arrival, ack, prev, depth)
            self._serial(request, arrival, prev, ack, paced)

    def _busy(self, request: str, arrival: float, ack: float, prev: float, depth: int) -> bool:
        """The busy gap of an ack; False when it began a stall or was queued behind one."""
        out = self.out
        gap = ack - prev
        end = self.stall_end
        if end is not None and arrival < end:  # queued behind a stall
            out.queued += 1
            if gap <= FLUSH_GAP_S:
                out.flushed += 1
                return False
        else:
            self.stall_end = None
        b = backlog_bucket(depth)
        out.served[b] = out.served.get(b, 0) + 1
        if gap > STALL_GAP_S:
            out.stalls[b] = out.stalls.get(b, 0) + 1
            out.durations.add(gap)
            self.stall_end = ack
            return False
        smp = out.service.get(request)
        if smp is None:
            smp = out.service[request] = Samples()
        smp.add(max(0.0, gap))
        return end is None or arrival >= end

    def result(self, arrival: float, prev: float, at: float) -> None:
        """An answer at ``at`` to the command that arrived at ``arrival``, after its answer at
        ``prev``: the command's result when ``prev`` was its ack (else not: ignored)."""
        self._expire(at)
        for c in self.awaiting:
            if c.arrival == arrival and c.ack == prev:
                break
        else:
            return
        self.awaiting.remove(c)
        self.results.append((at, c.ack))
        self._known(c, at)

    def close(self) -> None:
        """The flow ended: results still unknown never came (so were not owed)."""
        for c in self.pending:
            self._classify(c, False)
        self.pending = []
        self.awaiting.clear()
        self.results.clear()

    def _serial(self, request: str, arrival: float, start: float, ack: float, count: bool) -> None:
        """A command the device could take at ``start`` (``count``: classify it)."""
        self._expire(ack)
        self.acks += 1
        cmd = _Command(request, arrival, start, ack, self.acks)
        awaiting = self.awaiting
        if count:
            cmd.unknown = len(awaiting)  # those acked by ``start``: all but the last few
            for c in reversed(awaiting):
                if c.ack <= start:
                    break
                cmd.unknown -= 1
            for r, ack_c in reversed(self.results):  # the latest owed result that left
                if r <= start:
                    break
                if ack_c <= start:
                    cmd.waited_on = r
                    break
            if cmd.unknown:
                self.pending.append(cmd)
                if len(self.pending) > SERIAL_KEEP:
                    self._classify(self.pending.pop(0), False)
            else:
                self._classify(cmd, False)
        awaiting.append(cmd)
        if len(awaiting) > SERIAL_KEEP:
            self._known(awaiting.popleft(), None)

    def _known(self, c: _Command, at: float | None) -> None:
        """The result of ``c`` left at ``at`` (None: never): the pending commands it was owed
        to learn whether they waited for it."""
        if not self.pending:
            return
        keep = []
        for p in self.pending:
            if c.n < p.n and c.ack <= p.start:
                p.unknown -= 1
                if at is not None:
                    if at > p.ack:  # still owed when p's ack left
                        self._classify(p, True)
                        continue
                    if p.waited_on is None or at > p.waited_on:
                        p.waited_on = at  # left with p's ack (one write): a gap of 0
                if not p.unknown:
                    self._classify(p, False)
                    continue
            keep.append(p)
        self.pending = keep

    def _expire(self, now: float) -> None:
        """Forget what can no longer be answered (the pairing gives up after MAX_WAIT)."""
        awaiting, results = self.awaiting, self.results
        while awaiting and now - awaiting[0].arrival > MAX_WAIT:
            self._known(awaiting.popleft(), None)
        while results and now - results[0][0] > MAX_WAIT:
            results.popleft()

    def _classify(self, c: _Command, ahead: bool) -> None:
        out = self.out
        if ahead:
            out.ahead[c.request] = out.ahead.get(c.request, 0) + 1
        elif c.waited_on is not None:
            out.waited[c.request] = out.waited.get(c.request, 0) + 1
            out.gap.add(c.ack - c.waited_on)


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


def _add_pairs(
    a: dict[str, tuple[int, int]], b: dict[str, tuple[int, int]]
) -> dict[str, tuple[int, int]]:
    out = dict(a)
    for k, (x, y) in b.items():
        x0, y0 = out.get(k, (0, 0))
        out[k] = (x0 + x, y0 + y)
    return dict(sorted(out.items()))


def _merge_dist(a: Distribution, b: Distribution) -> Distribution:
    if not a.count or not b.count:
        return a if a.count else b
    return a.merge(b)
