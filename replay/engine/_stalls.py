# Stall episodes in a device's ack queue (the learned process of replay/model/stalls.py).
#
# Strategy: pure, and only for the queued 0x7B answers of a device whose model learned stalls
# (a model without them keeps the plain FIFO of _base.py).  An ack's departure is decided when
# its command arrives, from the previous ack's departure ``free``:
#   * idle (free <= now): now + a sample of the idle latency (the exchange's by_outstanding
#     "0": nothing queued in front), so one command at a time keeps its learned latency;
#   * queued behind a stall that has not ended yet, when the model learned flushes: it leaves
#     with the stall, at its end (the commands sent together get identical latencies);
#   * else busy: with the learned onset probability for its backlog (acks still owed at its
#     arrival) it begins a stall, free + a learned duration; otherwise free + a sample of the
#     busy pace of its request kind (stalls and flushes taken out of it).
# The other queued answers (f9 results) to a command queued behind a stall leave in its flush
# too, right after its ack, as in 152132 (_base.py asks ``flush_end``).
# Serial results: a command that, when the device could take it (its arrival, or the previous
# ack when it queued behind one; not in a stall), still finds an earlier command's result
# owed (the work between an ack and its f9) waits for that result when most commands of its
# kind did (toggles on the strip bridge: 6 of 6), and leaves a learned gap after it (4.5-11.7
# ms); otherwise its ack runs ahead (brightness: 55 of 57).  A kind follows its majority,
# not a coin: the captures split cleanly, and the two brightness acks that waited left
# within 24 ms of the result, where a drawn wait behind a result with a long work time would
# pause a burst for seconds, which no capture shows.
# Every draw is seeded: the onsets from the engine's "engine/<name>/stall" stream, the
# latencies and durations stratified per (answer key, idle|busy|stall) like the engine's other
# delays, over "engine/<name>/stall-delay".
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from cyncsim.replay.model import Distribution, ExchangeModel, StratifiedUniform
from cyncsim.replay.model.stalls import BUCKETS, StallModel
from cyncsim.replay.seeds import SeedTree

__all__ = ["ACK", "StallPlan", "StallQueue", "stall_plan"]

ACK = "0x7b"  # the answer kind the stall process applies to


@dataclass(frozen=True, slots=True)
class StallPlan:
    """What the ack of one request kind needs: idle latency, busy pace, the stall process."""

    idle: Distribution
    busy: Distribution
    onset: tuple[float, float]  # per backlog bucket (BUCKETS: 1-4, 5+)
    durations: Distribution
    flush: bool
    gap: Distribution | None = None  # the ack waits for the results owed: this long after


def stall_plan(ex: ExchangeModel, stalls: StallModel | None) -> StallPlan | None:
    """The StallPlan of ``ex``'s 0x7b, or None without stalls learned.  A kind without idle
    or busy samples of its own falls back to the 0x7b's service time, then its latency."""
    if stalls is None or not ex.responses or ex.responses[0].key != ACK:
        return None
    ack = ex.responses[0]
    plain = ack.service or ack.latency
    idle = ex.by_outstanding.get("0") or plain
    busy = stalls.service.get(ex.request) or plain
    onset = (stalls.onset(BUCKETS[0]), stalls.onset(BUCKETS[1]))
    if not stalls.durations:
        onset = (0.0, 0.0)
    gap = stalls.serial_gap if stalls.serial_gap and stalls.wait_p(ex.request) > 0.5 else None
    return StallPlan(idle, busy, onset, stalls.durations, stalls.flush, gap)


class StallQueue:
    """One connection's ack departures under the stall process (see the module comment)."""

    __slots__ = ("_delays", "_deps", "_onset", "_strata", "flush_end", "stall_end")

    def __init__(self, seeds: SeedTree, name: str) -> None:
        self._onset = seeds.stream(f"engine/{name}/stall")  # one draw per busy command
        self._delays = seeds.stream(f"engine/{name}/stall-delay")  # under the stratifiers
        self._strata: dict[str, StratifiedUniform] = {}
        self._deps: deque[float] = deque()  # departures of acks still owed, in order
        self.stall_end = -math.inf  # end of the last stall
        self.flush_end = -math.inf  # the same when it flushes the commands queued behind it

    def reset(self) -> None:
        """A new connection: nothing queued, no stall."""
        self._deps.clear()
        self.stall_end = self.flush_end = -math.inf

    def _draw(self, dist: Distribution, which: str) -> float:
        strat = self._strata.get(which)
        if strat is None:
            strat = self._strata[which] = StratifiedUniform(self._delays, strata=100)
        return max(0.0, dist.sample(strat))

    def depart(
        self, plan: StallPlan, key: str, now: float, free: float, scale: float,
        owed: float = -math.inf,
    ) -> float:  # fmt: skip
        """Departure of an ack whose command arrived at ``now``; ``free``: the previous ack's
        departure (-inf: none); ``scale``: the engine's time scale (> 0); ``owed``: when the
        last result owed to an earlier command leaves (-inf: none)."""
        deps = self._deps
        while deps and deps[0] <= now:
            deps.popleft()
        if free <= now:
            at = self._serial_wait(
                plan, now, owed, now + self._draw(plan.idle, f"{key}/idle") * scale, scale
            )
        elif now < self.stall_end and plan.flush:
            at = self.stall_end
        else:
            p = plan.onset[0 if len(deps) < 5 else 1]
            if p > 0.0 and self._onset.random() < p:
                at = self.stall_end = free + self._draw(plan.durations, "stall") * scale
                self.flush_end = at if plan.flush else -math.inf
            else:
                at = free + self._draw(plan.busy, f"{key}/busy") * scale
                at = self._serial_wait(plan, free, owed, at, scale)
        deps.append(at)
        return at

    def _serial_wait(
        self, plan: StallPlan, start: float, owed: float, at: float, scale: float
    ) -> float:
        """``at``, or later when the ack waits for the results owed at ``start`` (when the
        device could take the command: its arrival, or the previous ack), as learned."""
        gap = plan.gap
        if owed > start and gap is not None:
            after = owed + self._draw(gap, "serial-gap") * scale
            return after if after > at else at
        return at
