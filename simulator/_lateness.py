# How late an event loop runs its timers, estimated as it runs, so that answers can be
# scheduled early by that much and leave the socket at the time the engine asked for.
#
# Strategy: a timer callback never runs at its time, it runs when the loop next wakes after it:
# asyncio's EpollSelector waits in whole milliseconds rounded up (a timer is late by U(0, 1) ms
# plus the kernel's wake-up), select() in microseconds (late by tens of us), and a busy loop
# adds the callbacks queued ahead.  One LoopLateness per event loop (LoopLateness.of, kept in a
# weak map), fed by every connection's timer: observed lateness = loop.time() in the callback
# minus the time asked.  The estimate is the median of the last WINDOW observations (sorted
# again every EVERY observations), so subtracting it centres the bulk of the departures on
# their asked times: a mean would follow the long tail a busy loop has (callbacks queued
# behind others) and send most answers early.  Robust to stalls: an observation later than
# OUTLIER_S is a stall of the loop, not timer lateness, and is left out (a stall makes every
# timer of a fleet late at once: thousands of them), the median ignores a few outliers left,
# and the estimate never exceeds OUTLIER_S.  Every timer is observed (a subsample, say the
# first timer of each loop wake-up, is biased: the first one run is the one due earliest, the
# latest one).  A few operations per timer, nothing per answer but a subtraction.
#
# Where it is used (simulator/_connection.py, through AnswerTimes): an answer due at ``at`` is
# written by a timer asked for ``at - lead``, never before ``arrival + floor``
# (``ModelView.answer_floor``: the smallest delay the model can draw for that answer kind) and
# never after ``at``: the compensation can make no delay negative, nor shorter than anything
# learned.  No spinning, no blocking sleep.  On an epoll loop the timers come from one timerfd
# per loop (simulator/_timerfd.py, AnswerTimes.call_at), which wakes to tens of microseconds where
# epoll's millisecond timeout would leave +-0.5 ms after centring; the lead then estimates the
# small lateness left.  Elsewhere, or where timerfd is unavailable, loop.call_at.
from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable

from cyncsim.replay.engine import Engine, Send
from cyncsim.simulator._timerfd import PreciseTimers, Timer

__all__ = ["EVERY", "OUTLIER_S", "WINDOW", "AnswerTimes", "LoopLateness"]

WINDOW = 64  # observations the median is taken over
EVERY = 8  # the median is taken again after this many new observations
OUTLIER_S = 0.005  # later than this is a stall, left out (so the estimate stays below it)

_LOOPS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopLateness] = (
    weakref.WeakKeyDictionary()
)


class LoopLateness:
    """A running estimate (``lead``, seconds) of how late one event loop runs its timers:
    the median of its recent observed lateness, 0 before the first EVERY observations."""

    __slots__ = ("_window", "count", "lead")

    def __init__(self) -> None:
        self.lead = 0.0  # the current estimate: schedule this much early
        self.count = 0  # observations taken
        self._window: list[float] = []  # the last WINDOW observations (a ring)

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop) -> LoopLateness:
        """The estimator shared by everything on ``loop``."""
        got = _LOOPS.get(loop)
        if got is None:
            got = _LOOPS[loop] = cls()
        return got

    def observe(self, asked: float, now: float) -> None:
        """A timer asked for loop time ``asked`` ran at ``now``."""
        late = now - asked
        if late > OUTLIER_S:
            return
        late = 0.0 if late < 0.0 else late
        n, window = self.count, self._window
        if n < WINDOW:
            window.append(late)
        else:
            window[n % WINDOW] = late
        self.count = n = n + 1
        if n % EVERY == 0:
            self.lead = sorted(window)[len(window) // 2]


class AnswerTimes:
    """When the timers of one connection's answers fire: early by its loop's lateness, never
    before the request plus the smallest learned delay of the answer's kind (scaled);
    ``call_at`` schedules the connection's timer (the loop's timerfd where it has one)."""

    __slots__ = ("_engine", "call_at", "late")

    def __init__(self, loop: asyncio.AbstractEventLoop, engine: Engine) -> None:
        self.late = LoopLateness.of(loop)
        precise = PreciseTimers.of(loop)
        self.call_at: Callable[[float, Callable[[], object]], asyncio.TimerHandle | Timer] = (
            loop.call_at if precise is None else precise.call_at
        )
        self._engine = engine

    def fire(self, send: Send, now: float) -> float:
        """The timer time of ``send``, asked for at ``now`` (the request's arrival)."""
        at, lead = send.at, self.late.lead
        if at <= now or not lead:
            return at
        engine = self._engine  # the view caches the floors; the scale is the engine's now
        fire, low = at - lead, now + engine.view.answer_floor(send.key) * engine.time_scale
        return fire if fire > low else low if low < at else at
