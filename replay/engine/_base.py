# The part of the replay engine both roles share: the Engine base class.
#
# Strategy: pure and sans-IO, like the whole engine.  Engine holds the model view, the seeded delay
# stream and the per-connection departure bookkeeping, renders learned response plans into timed
# Send actions (``_respond``: queued per response kind for a device, a device's acks under the
# learned stall process when the model has one (_stalls.py), in order for the cloud,
# counters never overtaking each other) and dispatches each whole packet through a table by packet
# type that the roles fill.  ``receive`` and ``_respond`` are the hot path of every answer, written
# for it: comparisons, not max(); no per-packet work nobody reads.  Randomness comes from named
# streams of one replay.seeds.SeedTree ("engine/<name>/delay", "engine/<name>/behaviour").
from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable
from typing import ClassVar

from cyncsim.replay.describe import request_key
from cyncsim.replay.engine._stalls import StallQueue
from cyncsim.replay.engine.actions import Action, Send
from cyncsim.replay.engine.templates import RenderContext
from cyncsim.replay.engine.view import ModelView, ResponsePlan
from cyncsim.replay.errors import PacketDecodeError
from cyncsim.replay.model import DeviceModel, StratifiedUniform
from cyncsim.replay.protocol import HEADER, CyncPacket, decode_packet
from cyncsim.replay.seeds import SeedTree, root_seed

__all__ = ["DEDUP_WINDOW", "INF", "Engine"]

INF = math.inf
DEDUP_WINDOW = 64  # recent (id, message id, sequence) of commands kept for duplicate detection
_new_tuple = tuple.__new__


class Engine:
    """What both roles share: model view, queueing, rendering, dispatch by packet type.

    Subclasses fill ``_handlers`` (packet type -> method) and the session hooks.
    """

    role: ClassVar[str] = ""
    _queued: ClassVar[bool] = True  # device: FIFO service queue per response kind

    def __init__(
        self,
        model: DeviceModel | ModelView,
        *,
        variant: str | None = None,
        seed: int | SeedTree | None = None,
        name: str = "",
        time_scale: float = 1.0,
        wall_offset: float = 0.0,
    ) -> None:
        if not (time_scale >= 0 and math.isfinite(time_scale)):
            raise ValueError(f"time_scale={time_scale!r} must be a finite number >= 0")
        self.view = (
            model if isinstance(model, ModelView) else ModelView.get(model, self.role, variant)
        )
        self.name = name or self.role
        self.seeds = root_seed(seed, f"{self.role} engine {self.name}")
        self.time_scale = time_scale
        self.wall_offset = wall_offset  # wall clock = now + wall_offset (for 0xC8)
        self.stats: dict[str, int] = {}
        self._delay_src: random.Random | None = None  # one seeded stream, shared by ...
        self._delay_rngs: dict[str, StratifiedUniform] = {}  # ... one stratifier per answer key
        self._free_at: dict[str, float] = {}
        self._counter_out: dict[str, float] = {}  # counter -> departure of its last value
        self._last_out = -INF
        self._results_until = -INF  # departure of the last later answer (an f9 result) owed
        self._stall_q: StallQueue | None = None  # made on the first stall-aware ack
        self.last_traffic = -INF
        self.connected = False
        self._handlers: dict[int, Callable[[bytes, CyncPacket | None, float], list[Action]]] = {}

    # ------------------------------------------------------------------ helpers
    def _count(self, what: str, n: int = 1) -> None:
        self.stats[what] = self.stats.get(what, 0) + n

    def sample_delay(self, plan: ResponsePlan) -> float:
        """One learned delay for ``plan``, scaled.

        The draws are stratified per answer key (one seeded stream underneath), so every
        kind's own run of a few hundred answers covers its distribution evenly, tail
        included, even when one request takes draws for several kinds (0x7B, f9, 0x83).
        """
        if self.time_scale == 0:
            return 0.0
        strat = self._delay_rngs.get(plan.key)
        if strat is None:
            if self._delay_src is None:
                self._delay_src = self.seeds.stream(f"engine/{self.name}/delay")
            strat = self._delay_rngs[plan.key] = StratifiedUniform(self._delay_src, strata=100)
        return max(0.0, plan.delay.sample(strat)) * self.time_scale

    def _context(self, now: float) -> RenderContext:
        raise NotImplementedError

    def _respond(
        self, request: bytes, plans: Iterable[ResponsePlan], now: float, ctx: RenderContext
    ) -> list[Action]:
        """Render ``plans`` as answers to ``request`` with their departure times.

        Device: the first answer of a queued kind (the ack) leaves at max(arrival, the kind's
        previous departure) + a service sample, or, for a 0x7B under a learned stall process,
        as _stalls.StallQueue decides (idle latency, busy pace, stalls and their flushes, and
        whether it waits for the results still owed to earlier commands); a later queued
        answer (the f9 result) is worked on once the previous answer to the same request has
        left: it leaves at that departure + a service sample (learned the same way), never
        before the previous one of its kind; the queued answers to a command queued behind a
        stall leave in its flush;
        status reports at arrival + a latency sample;
        an answer learned without a service time (the general 0x7B to an unknown command)
        leaves at arrival + a latency sample, but never before the previous one of its kind.
        Cloud: arrival + a latency sample, never before the previous answer (replies are
        matched by order).  Both: never before the previous response to this request, nor
        before the packet that took the previous value of its counter.
        """
        out: list[Action] = []
        prev = now
        scaled = self.time_scale != 0
        queued = self._queued
        free, slots = self._free_at, self._counter_out
        # The hot path of every answer: max() spelt as conditional expressions (not as if
        # statements, which ruff turns back into max() calls), Send made as the tuple it is
        # (tuple.__new__: no Python-level __new__), each a fraction of the call.
        first = True
        for plan in plans:
            key = plan.key
            if queued and plan.queued:
                f = free.get(key, -INF)
                if plan.stall is not None and scaled:  # a learned stall process (_stalls.py)
                    q = self._stall_q
                    if q is None:
                        q = self._stall_q = StallQueue(self.seeds, self.name)
                    at = q.depart(plan.stall, key, now, f, self.time_scale, self._results_until)
                elif self._stall_q is not None and now < self._stall_q.flush_end:
                    at = f if f > prev else prev  # a result queued behind a stall: its flush
                elif first:
                    at = (f if f > now else now) + (self.sample_delay(plan) if scaled else 0.0)
                else:  # worked on after the previous answer to this request left
                    at = prev + (self.sample_delay(plan) if scaled else 0.0)
                    at = f if f > at else at
                free[key] = at = prev if prev > at else at
                if not first and at > self._results_until:
                    self._results_until = at
            else:
                delay = self.sample_delay(plan) if scaled else 0.0
                at = now + delay
                last = self._last_out
                at = last if last > at else at
                self._last_out = at = prev if prev > at else at
                if queued:  # a device sends the answers of one kind in order, queued or not
                    f = free.get(key, -INF)
                    free[key] = at = f if f > at else at
            tpl = plan.template
            counter = tpl.counter
            if counter:
                f = slots.get(counter, -INF)
                slots[counter] = at = f if f > at else at
            prev = at
            first = False
            out.append(_new_tuple(Send, (at, tpl.render(request, ctx), key)))
        return out

    def _counter_slot(self, counter: str, at: float) -> float:
        """Departure for a packet taking the next value of ``counter``: never before the
        packet that took the previous value, so counters advance by one on the wire."""
        at = max(at, self._counter_out.get(counter, -INF))
        self._counter_out[counter] = at
        return at

    def _sent(self, actions: list[Action]) -> list[Action]:
        last = self.last_traffic
        for a in actions:
            if type(a) is Send and a.at > last:
                last = a.at
        self.last_traffic = last
        return actions

    # ------------------------------------------------------------------ public API
    def connection_made(self, now: float) -> list[Action]:
        """A new connection: per-connection state starts afresh (counters and state stay)."""
        self.connected = True
        self._free_at.clear()
        self._counter_out.clear()
        self._last_out = -INF
        self._results_until = -INF
        if self._stall_q is not None:
            self._stall_q.reset()
        self.last_traffic = now
        return []

    def connection_lost(self, now: float) -> None:
        self.connected = False

    def receive(self, data: bytes, now: float) -> list[Action]:
        """One whole packet (its bytes) arrived at ``now``; returns what to do."""
        last = self.last_traffic
        self.last_traffic = now if now > last else last
        stats = self.stats
        stats["received"] = stats.get("received", 0) + 1
        if len(data) < HEADER.size:
            self._count("undecodable")
            return []
        try:
            pkt: CyncPacket | None = decode_packet(data, strict=False)
        except PacketDecodeError:
            pkt = None
        handler = self._handlers.get(data[0])
        if handler is None:
            handler = self._on_generic
        return self._sent(handler(data, pkt, now))

    def _on_generic(self, data: bytes, pkt: CyncPacket | None, now: float) -> list[Action]:
        if pkt is None:
            self._count("undecodable")
            return []
        plans = self.view.plans(request_key(pkt))
        if plans is None:
            self._count("unanswered")
            return []
        return self._respond(data, plans, now, self._context(now))

    def poll(self, now: float) -> list[Action]:
        """Timers due at ``now``; safe to call at any time."""
        return []

    def next_deadline(self) -> float:
        """Clock value at which ``poll`` has work (inf: none)."""
        return INF
