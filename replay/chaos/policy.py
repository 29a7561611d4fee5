# Chaos, the pure decisions: ChaosPolicy turns whole packets into what to emit, and when.
#
# Strategy: randomness comes from a cyncsim.replay.seeds.SeedTree (one root seed split into
# named streams).  A ChaosPolicy takes whole packets with their direction and the caller's
# clock value and returns what to emit as data (Emission), logging every decision
# (FaultEvent).  Nothing here awaits, touches a socket or reads a clock; the asyncio side
# (ChaosWriter, abort_connection, wait_stall) is cyncsim.simulator.chaos.
#
# Stream discipline: every fault has its own stream per direction, and every stream is
# consumed the same way for every packet whatever the other faults decide, so changing one
# fault's setting never changes another fault's decisions.
from __future__ import annotations

import itertools
import math
import random
from collections import Counter
from dataclasses import dataclass
from typing import Any

from cyncsim.replay.chaos._fields import Direction
from cyncsim.replay.chaos.config import ChaosConfig, PacketFaults
from cyncsim.replay.seeds import SeedTree, root_seed

__all__ = ["ChaosPolicy", "Emission", "FaultEvent"]


@dataclass(frozen=True)
class Emission:
    """What to send for one handed-over packet (a packet may give 0, 1 or 2 emissions).

    ``delay_s`` is relative to the ``now`` given to ``on_packet``; ``chunks`` are the writes
    (one, or several slices ``slice_gap_s`` apart); ``tags`` among "corrupt", "sliced",
    "reordered", "dup" (the second copy of a duplicated packet).
    """

    packet_no: int
    delay_s: float
    chunks: tuple[bytes, ...]
    slice_gap_s: float = 0.0
    tags: tuple[str, ...] = ()

    @property
    def data(self) -> bytes:
        return b"".join(self.chunks)

    @property
    def span_s(self) -> float:
        """Time from the first to the last chunk."""
        return (len(self.chunks) - 1) * self.slice_gap_s


@dataclass(frozen=True)
class FaultEvent:
    """One logged decision.  packet_no 0 / direction None: not about one packet."""

    packet_no: int
    direction: Direction | None
    kind: str
    details: dict[str, Any]
    time: float


LOG_LIMIT = 100_000  # fault events kept in ChaosPolicy.log (counts are kept for all)
_FAULT_STREAMS = ("latency", "loss", "burst", "duplicate", "reorder", "corrupt", "slice")


@dataclass
class _Lane:
    faults: PacketFaults
    rng: dict[str, random.Random]
    pattern: frozenset[int]
    count: int = 0
    floor: float = -math.inf  # earliest time the next in-order packet may start
    bad: bool = False  # Gilbert-Elliott state


class ChaosPolicy:
    """Seeded per-packet and per-connection fault decisions for one device; pure.

    The caller passes its clock value ``now`` (seconds, e.g. ``loop.time()``) to every call;
    ``t0`` is that clock's value at which the config's ``*_s`` offsets start.  Packet numbers
    are 1-based, per direction, and count every packet handed to ``on_packet`` over the
    policy's life (make one policy per connection if numbering should restart).

    Use by the I/O layer: hand every outgoing packet to ``on_packet(FROM_DEVICE, ...)`` (or
    use cyncsim.simulator.chaos.ChaosWriter) and every whole incoming packet to
    ``on_packet(TO_DEVICE, ...)`` before processing the emissions' bytes at their times;
    before each read honour ``stall_until``; after each packet ask ``should_reset``; refuse
    connections when ``accepts_connection`` is false.
    """

    def __init__(
        self,
        config: ChaosConfig,
        seed: SeedTree | int | None = None,
        *,
        name: str = "chaos",
        t0: float = 0.0,
    ) -> None:
        self.config = config
        self.seeds = root_seed(seed, what=f"chaos policy {name!r}")
        self.name = name
        self.t0 = t0
        self.log: list[FaultEvent] = []
        self.log_limit = LOG_LIMIT
        self.log_dropped = 0  # oldest events dropped to keep the log bounded
        self._counts: Counter[tuple[Direction | None, str]] = Counter()
        self._lanes = {d: self._lane(d) for d in Direction}
        self._stalls: list[tuple[float, float]] = []
        if config.stall is not None and config.stall.at_s is not None:
            start = t0 + config.stall.at_s
            self._stalls.append((start, start + config.stall.duration_s))
        self._time_stall_logged = False
        self._reset_time_fired = False
        self._reset_decisions: dict[tuple[Direction, int], bool] = {}
        self._manual_partition = False
        self._healed = False

    def _lane(self, d: Direction) -> _Lane:
        f = self.config.faults(d)
        rng = {s: self.seeds.stream(f"{self.name}/{d}/{s}") for s in _FAULT_STREAMS}
        return _Lane(f, rng, frozenset(f.drop_pattern))

    def _detail(self, d: Direction, fault: str, no: int) -> random.Random:
        # Which bytes / where to cut: a stream keyed by the packet, so it does not depend on
        # how many packets before were corrupted, sliced or lost.
        return self.seeds.stream(f"{self.name}/{d}/{fault}/{no}")

    def _note(self, now: float, d: Direction | None, no: int, kind: str, **details: Any) -> None:
        log = self.log
        log.append(FaultEvent(no, d, kind, details, now))
        self._counts[(d, kind)] += 1
        if len(log) > self.log_limit:
            # A long run keeps its most recent decisions; the counts stay exact.
            drop = len(log) - self.log_limit // 2
            del log[:drop]
            self.log_dropped += drop

    def packets_seen(self, direction: Direction | str) -> int:
        """How many packets of ``direction`` were handed to on_packet."""
        return self._lanes[Direction.parse(direction)].count

    def on_packet(self, direction: Direction | str, data: bytes, now: float) -> list[Emission]:
        """Decide the fate of one whole packet; an empty list means it is lost."""
        d = Direction.parse(direction)
        lane, f = self._lanes[d], self._lanes[d].faults
        lane.count += 1
        no = lane.count
        rng = lane.rng
        # Every stream is drawn the same way for every packet (see the module comment).
        z = rng["latency"].normalvariate(0.0, 1.0)
        u_loss = rng["loss"].random()
        u_state, u_step = rng["burst"].random(), rng["burst"].random()
        u_dup, u_reorder = rng["duplicate"].random(), rng["reorder"].random()
        u_corrupt, u_slice = rng["corrupt"].random(), rng["slice"].random()
        burst_lost = u_state < (f.burst.loss_bad if lane.bad else f.burst.loss_good)
        lane.bad = (u_step >= f.burst.r) if lane.bad else (u_step < f.burst.p)
        stall = self.config.stall
        if d is Direction.TO_DEVICE and stall is not None and stall.after_packet == no:
            self._stalls.append((now, now + stall.duration_s))
            self._note(now, d, no, "stall", until=now + stall.duration_s, cause="packet")

        if self.blackholes(now):
            self._note(now, d, no, "partition_drop")
            return []
        if lane.pattern:
            if no in lane.pattern:
                self._note(now, d, no, "drop", cause="pattern")
                return []
        elif u_loss < f.packet_loss_rate:
            self._note(now, d, no, "drop", cause="rate")
            return []
        elif burst_lost:
            self._note(now, d, no, "burst_drop")
            return []

        tags: list[str] = []
        if u_corrupt < f.corruption_rate and data:
            data = self._corrupt(
                self._detail(d, "corrupt", no), data, f.corruption_bytes, now, d, no
            )
            tags.append("corrupt")
        chunks: tuple[bytes, ...] = (data,)
        if u_slice < f.slicing.rate and len(data) >= 2:
            chunks = self._slice(self._detail(d, "slice", no), data, f.slicing.max_pieces)
            self._note(now, d, no, "slice", sizes=[len(c) for c in chunks])
            tags.append("sliced")
        gap = f.slicing.delay_ms / 1000.0 if len(chunks) > 1 else 0.0
        span = (len(chunks) - 1) * gap
        delay = max(0.0, f.latency_ms + f.latency_variance * z) / 1000.0
        reordered = u_reorder < f.reorder_rate
        if reordered:
            due = now + delay + f.reorder_delay_ms / 1000.0
            self._note(now, d, no, "reorder", hold_ms=f.reorder_delay_ms)
            tags.append("reordered")
        else:
            due = max(now + delay, lane.floor)
            lane.floor = due + span
        if due > now:
            self._note(now, d, no, "delay", delay_s=due - now)
        out = [Emission(no, due - now, chunks, gap, tuple(tags))]
        if u_dup < f.duplicate_rate:
            dup_due = due + span
            if not reordered:
                dup_due = lane.floor
                lane.floor = dup_due + span
            out.append(Emission(no, dup_due - now, chunks, gap, (*tags, "dup")))
            self._note(now, d, no, "duplicate", delay_s=dup_due - now)
        return out

    def _corrupt(
        self, rng: random.Random, data: bytes, n: int, now: float, d: Direction, no: int
    ) -> bytes:
        buf = bytearray(data)
        positions = sorted(rng.sample(range(len(buf)), min(n, len(buf))))
        for pos in positions:
            buf[pos] ^= rng.randrange(1, 256)
        self._note(now, d, no, "corrupt", positions=positions)
        return bytes(buf)

    @staticmethod
    def _slice(rng: random.Random, data: bytes, max_pieces: int) -> tuple[bytes, ...]:
        k = rng.randint(2, min(max_pieces, len(data)))
        cuts = [0, *sorted(rng.sample(range(1, len(data)), k - 1)), len(data)]
        return tuple(data[a:b] for a, b in itertools.pairwise(cuts))

    # --- connection level -------------------------------------------------------------------

    def stall_until(self, now: float) -> float | None:
        """While a stall is on: the clock value at which reading may resume; else None."""
        ends = [end for start, end in self._stalls if start <= now < end]
        stall = self.config.stall
        if ends and not self._time_stall_logged and stall is not None and stall.at_s is not None:
            start = self.t0 + stall.at_s
            if start <= now < start + stall.duration_s:
                self._time_stall_logged = True
                self._note(now, None, 0, "stall", until=start + stall.duration_s, cause="time")
        return max(ends) if ends else None

    def reset_deadline(self) -> float | None:
        """Clock value of the pending time-triggered reset (None: none or already fired)."""
        spec = self.config.reset
        if spec is None or spec.at_s is None or self._reset_time_fired:
            return None
        return self.t0 + spec.at_s

    def reset_due(self, now: float) -> bool:
        """True once, at the first call at or after ``reset_deadline()``."""
        deadline = self.reset_deadline()
        if deadline is None or now < deadline:
            return False
        self._reset_time_fired = True
        self._note(now, None, 0, "reset", cause="time")
        return True

    def should_reset(self, direction: Direction | str, packet_no: int, now: float) -> bool:
        """Whether to close the connection abruptly once packet ``packet_no`` of ``direction``
        is out (asking twice about the same packet gives the same answer, logged once)."""
        d = Direction.parse(direction)
        if self.reset_due(now):
            return True
        spec = self.config.reset
        if spec is None or (spec.direction is not None and spec.direction is not d):
            return False
        key = (d, packet_no)
        if key not in self._reset_decisions:
            cause = None
            if spec.after_packet == packet_no:
                cause = "packet"
            elif self.seeds.uniform(f"{self.name}/{d}/reset/{packet_no}") < spec.probability:
                cause = "probability"
            self._reset_decisions[key] = cause is not None
            if cause is not None:
                self._note(now, d, packet_no, "reset", cause=cause)
        return self._reset_decisions[key]

    def is_partitioned(self, now: float) -> bool:
        """True during the configured window (unless healed) or a manual partition."""
        if self._manual_partition:
            return True
        spec = self.config.partition
        if spec is None or spec.start_s is None or self._healed:
            return False
        end = math.inf if spec.end_s is None else self.t0 + spec.end_s
        return self.t0 + spec.start_s <= now < end

    def accepts_connection(self, now: float) -> bool:
        """False while a partition refuses new connections."""
        spec = self.config.partition
        refuses = spec is None or spec.refuse_connections
        return not (refuses and self.is_partitioned(now))

    def blackholes(self, now: float) -> bool:
        """True while a partition swallows packets."""
        spec = self.config.partition
        return (spec is None or spec.blackhole) and self.is_partitioned(now)

    def partition_start(self, now: float) -> None:
        """Start a manual partition (until partition_end)."""
        self._manual_partition = True
        self._note(now, None, 0, "partition_start", cause="manual")

    def partition_end(self, now: float) -> None:
        """End a manual partition and heal the configured window if it has begun."""
        self._manual_partition = False
        spec = self.config.partition
        if spec is not None and spec.start_s is not None and now >= self.t0 + spec.start_s:
            self._healed = True
        self._note(now, None, 0, "partition_end", cause="manual")

    def fault_counts(self, direction: Direction | str | None = None) -> dict[str, int]:
        """How many events of each kind were logged (optionally for one direction)."""
        d = None if direction is None else Direction.parse(direction)
        counts: Counter[str] = Counter()
        for (dd, kind), n in self._counts.items():
            if d is None or dd is d:
                counts[kind] += n
        return dict(sorted(counts.items()))
