# Precise timer wake-ups for an epoll event loop: one Linux timerfd per loop.
#
# Strategy: asyncio's EpollSelector waits in whole milliseconds, rounded up, so a loop.call_at
# timer runs up to 1 ms after its time (U(0, 1) ms).  A timerfd armed for an absolute
# CLOCK_MONOTONIC time (the clock of loop.time(), time.monotonic()) becomes readable at that
# time to the kernel's timer slack (tens of microseconds), and epoll returns at once.
# PreciseTimers keeps one heap of (time, order, Timer) per event loop and one timerfd, armed
# for the earliest live timer; its reader callback runs every timer due, in order of time then
# of scheduling, and re-arms the fd once.  Cheap for fleets: one fd and one heap per loop, a
# push and at most one timerfd_settime per call_at.  The price of precision: timers denser than
# one per millisecond each get a wake-up of their own instead of sharing epoll's (measured:
# 20,000 timers over 2 s, 0.4-0.5 s of CPU against 0.24 s with loop.call_at).  Cancelled
# timers stay in the heap until popped; it is rebuilt without them when they outnumber the
# live ones.  A timer never
# runs before its time (the deadline is rounded up to the next nanosecond, and a wake-up
# before it re-arms).  The fd closes when the loop is collected (weakref.finalize).
#
# Used only where it helps and is available: a loop whose selector is an EpollSelector and
# whose time() is the stock time.monotonic(); on Linux, with libc's timerfd_create reachable by
# ctypes (Python 3.11 has no os.timerfd_*).  Elsewhere PreciseTimers.of returns None and the
# caller keeps loop.call_at.  ENABLED switches it off for the whole process (tests of the
# fallback).
from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import heapq
import itertools
import math
import os
import selectors
import sys
import time
import weakref
from collections.abc import Callable
from typing import Any

__all__ = ["ENABLED", "PreciseTimers", "Timer", "available"]

ENABLED = True  # False: PreciseTimers.of always gives None (plain loop.call_at)

_CLOCK_MONOTONIC = 1
_TFD_TIMER_ABSTIME = 1
_TFD_FLAGS = os.O_NONBLOCK | os.O_CLOEXEC  # TFD_NONBLOCK | TFD_CLOEXEC have these values
_INF = float("inf")


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


def _libc() -> Any:
    """libc's timerfd_create / timerfd_settime through ctypes, or None (not Linux, no libc)."""
    if sys.platform != "linux":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        create, settime = libc.timerfd_create, libc.timerfd_settime
    except (OSError, AttributeError):
        return None
    create.argtypes, create.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    settime.argtypes = [
        ctypes.c_int, ctypes.c_int, ctypes.POINTER(_Itimerspec), ctypes.POINTER(_Itimerspec)
    ]  # fmt: skip
    settime.restype = ctypes.c_int
    return libc


_LIBC = _libc()
_LOOPS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, PreciseTimers | None] = (
    weakref.WeakKeyDictionary()
)


def available(loop: asyncio.AbstractEventLoop) -> bool:
    """True when ``loop`` would get precise timers: an epoll selector loop on stock
    time.monotonic(), on Linux with timerfd reachable, and ENABLED."""
    selector = getattr(loop, "_selector", None)
    return (
        ENABLED
        and _LIBC is not None
        and isinstance(selector, selectors.EpollSelector)
        and type(loop).time is asyncio.BaseEventLoop.time
    )


class Timer:
    """A scheduled callback of PreciseTimers (cancel() as asyncio's TimerHandle)."""

    __slots__ = ("_callback", "_owner", "when")

    def __init__(self, owner: PreciseTimers, when: float, callback: Callable[[], object]) -> None:
        self._owner = owner
        self.when = when
        self._callback: Callable[[], object] | None = callback

    def cancel(self) -> None:
        if self._callback is not None:
            self._callback = None
            self._owner._cancelled_one()

    def cancelled(self) -> bool:
        return self._callback is None


class PreciseTimers:
    """One event loop's timers woken by one timerfd (see the module comment)."""

    __slots__ = ("__weakref__", "_armed", "_cancelled", "_fd", "_heap", "_loop", "_order", "_spec")

    def __init__(self, loop: asyncio.AbstractEventLoop, fd: int) -> None:
        self._loop = weakref.ref(loop)  # no strong reference: the loop's finaliser closes fd
        self._fd = fd
        self._heap: list[tuple[float, int, Timer]] = []
        self._order = itertools.count()
        self._armed = _INF  # the time the fd is armed for (-inf while running timers)
        self._cancelled = 0  # cancelled timers still in the heap
        self._spec = _Itimerspec()
        loop.add_reader(fd, self._ready)
        weakref.finalize(loop, os.close, fd)

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop) -> PreciseTimers | None:
        """The precise timers of ``loop`` (made on the first call), or None where they are not
        available (then use loop.call_at)."""
        try:
            return _LOOPS[loop]
        except KeyError:
            pass
        got = None
        if available(loop) and not loop.is_closed():
            fd = _LIBC.timerfd_create(_CLOCK_MONOTONIC, _TFD_FLAGS)
            if fd >= 0:
                got = cls(loop, fd)
        _LOOPS[loop] = got
        return got

    @property
    def fileno(self) -> int:
        return self._fd

    def call_at(self, when: float, callback: Callable[[], object]) -> Timer:
        """Run ``callback`` at loop time ``when`` (never before)."""
        timer = Timer(self, when, callback)
        heapq.heappush(self._heap, (when, next(self._order), timer))
        if when < self._armed:
            self._set(when)
        return timer

    def _set(self, when: float) -> None:
        """Arm the fd for loop time ``when`` (rounded up to the nanosecond), or disarm it."""
        self._armed = when
        value = self._spec.it_value
        if when == _INF:
            value.tv_sec = value.tv_nsec = 0  # disarm
        else:
            ns = math.ceil(when * 1e9) + 1
            value.tv_sec, value.tv_nsec = divmod(max(ns, 1), 1_000_000_000)
        if _LIBC.timerfd_settime(self._fd, _TFD_TIMER_ABSTIME, self._spec, None) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"timerfd_settime: {os.strerror(err)}")

    def _cancelled_one(self) -> None:
        self._cancelled = n = self._cancelled + 1
        heap = self._heap
        if n > 64 and n * 2 > len(heap):
            self._heap = [item for item in heap if item[2]._callback is not None]
            heapq.heapify(self._heap)
            self._cancelled = 0

    def _ready(self) -> None:
        with contextlib.suppress(BlockingIOError, InterruptedError):
            os.read(self._fd, 8)  # the expiry count: reading it clears readiness
        self._armed = -_INF  # callbacks' own call_at: no re-arm until all due ones ran
        heap, now = self._heap, time.monotonic()
        try:
            while heap and heap[0][0] <= now:
                timer = heapq.heappop(heap)[2]
                callback = timer._callback
                if callback is None:
                    self._cancelled -= 1
                    continue
                timer._callback = None
                try:
                    callback()
                except (SystemExit, KeyboardInterrupt):
                    raise
                except BaseException as exc:  # as asyncio's Handle: report, go on
                    loop = self._loop()
                    if loop is not None:
                        loop.call_exception_handler(
                            {"message": f"Exception in timer callback {callback!r}",
                             "exception": exc}
                        )  # fmt: skip
                heap = self._heap  # a cancel may have rebuilt it
        finally:
            while heap and heap[0][2]._callback is None:
                heapq.heappop(heap)
                self._cancelled -= 1
            self._set(heap[0][0] if heap else _INF)
