# The loop-lateness estimator (simulator/_lateness.py) on synthetic lateness: it converges to
# the median, leaves out stalls, never goes negative, is shared per loop; the answer floors.
# The epoll loop's precise timers (simulator/_timerfd.py): in order, never early, cancel,
# errors reported, the fd closed with the loop, the fallback to loop.call_at.
from __future__ import annotations

import asyncio
import gc
import os
import random
import selectors

import pytest

from cyncsim.replay.engine import CloudEngine, Send
from cyncsim.replay.engine.view import ModelView
from cyncsim.simulator import _timerfd
from cyncsim.simulator._base import default_model
from cyncsim.simulator._lateness import (
    EVERY,
    OUTLIER_S,
    WINDOW,
    AnswerTimes,
    LoopLateness,
)


def feed(est: LoopLateness, lateness: list[float], start: float = 100.0) -> None:
    for i, late in enumerate(lateness):
        asked = start + i * 0.01
        est.observe(asked, asked + late)


def test_converges_to_the_median_of_epoll_rounding() -> None:
    rng = random.Random(1)  # epoll: late by U(0, 1) ms plus a 50 us wake-up
    est = LoopLateness()
    feed(est, [0.00005 + rng.random() * 0.001 for _ in range(2000)])
    assert est.lead == pytest.approx(0.00055, abs=0.00012)


def test_follows_a_change_within_a_window() -> None:
    est = LoopLateness()
    feed(est, [0.0001] * 500)
    assert est.lead == pytest.approx(0.0001)
    feed(est, [0.0008] * WINDOW, start=200.0)
    assert est.lead == pytest.approx(0.0008)


def test_nothing_before_the_first_observations() -> None:
    est = LoopLateness()
    feed(est, [0.001] * (EVERY - 1))
    assert est.lead == 0.0
    feed(est, [0.001], start=50.0)
    assert est.lead == pytest.approx(0.001)


def test_stalls_are_left_out() -> None:
    rng = random.Random(2)
    est = LoopLateness()
    feed(est, [rng.random() * 0.001 for _ in range(500)])
    before = est.lead
    feed(est, [0.9] * 5000, start=300.0)  # a 0.9 s stall: every timer of a fleet late at once
    assert est.lead == before
    assert est.count == 500
    assert before < OUTLIER_S


def test_a_tail_of_late_timers_does_not_move_the_median_much() -> None:
    rng = random.Random(3)  # a busy loop: 20% of the timers queued 3-5 ms behind others
    est = LoopLateness()
    feed(est, [rng.uniform(0.003, 0.005) if i % 5 == 0 else 0.0002 for i in range(1000)])
    assert est.lead == pytest.approx(0.0002, abs=1e-9)


def test_early_timers_count_as_on_time() -> None:
    est = LoopLateness()
    feed(est, [-0.001] * 100)  # a clock that ran timers early: the estimate is not negative
    assert est.lead == 0.0


def test_one_estimator_per_loop() -> None:
    a, b = asyncio.new_event_loop(), asyncio.new_event_loop()
    try:
        assert LoopLateness.of(a) is LoopLateness.of(a)
        assert LoopLateness.of(a) is not LoopLateness.of(b)
    finally:
        a.close()
        b.close()


def test_answer_floor_is_the_smallest_learned_delay() -> None:
    view = ModelView.get(default_model(), "cloud")
    hello = view.plans("0x23")
    assert hello is not None
    assert view.answer_floor("0x28") == min(p.delay.values[0] for p in hello)
    assert view.answer_floor("0x28") > 0.01  # the cloud answers a hello in about 40 ms
    assert view.answer_floor("nothing learned") == 0.0
    device = ModelView.get(default_model(), "device")
    for key in ("0x7b", "0x83:fa:db"):
        low = device.answer_floor(key)
        plans = [p for p in (device.ack, device.report) if p is not None and p.key == key]
        assert plans and 0.0 <= low <= min(p.delay.values[0] for p in plans)


@pytest.mark.parametrize("scale", [1.0, 0.01])
def test_answer_times_never_make_a_delay_shorter_than_the_learned_minimum(scale: float) -> None:
    loop = asyncio.new_event_loop()
    try:
        engine = CloudEngine(default_model(), seed=1, time_scale=scale)
        times = AnswerTimes(loop, engine)
        floor = engine.view.answer_floor("0xd8") * scale
        now = 1000.0
        times.late.lead = 0.0  # no estimate yet: the asked time
        assert times.fire(Send(now + 0.05, b"", "0xd8"), now) == now + 0.05
        for lead in (0.0005, 0.004, 0.05, 5.0):
            times.late.lead = lead
            for delay in (0.0, floor * 0.5, floor, floor + 0.0001, floor + 0.01, 0.2):
                fire = times.fire(Send(now + delay, b"", "0xd8"), now)
                assert fire <= now + delay  # never later than asked
                assert fire >= now + min(delay, floor)  # nor before request + learned minimum
                if delay - lead >= floor:
                    assert fire == pytest.approx(now + delay - lead)  # early by the lead
            assert times.fire(Send(now + 0.01, b"", "raw"), now) >= now  # nothing learned: 0
            assert times.fire(Send(now - 1.0, b"", "0xd8"), now) == now - 1.0  # due already
    finally:
        loop.close()


needs_timerfd = pytest.mark.skipif(
    _timerfd._LIBC is None, reason="no timerfd (not Linux, or libc not reachable)"
)


def _epoll_loop() -> asyncio.AbstractEventLoop:
    return asyncio.SelectorEventLoop(selectors.EpollSelector())


@needs_timerfd
def test_precise_timers_fire_in_order_and_never_early() -> None:
    async def run() -> tuple[list[tuple[float, float]], list[float]]:
        loop = asyncio.get_running_loop()
        timers = _timerfd.PreciseTimers.of(loop)
        assert timers is not None and timers is _timerfd.PreciseTimers.of(loop)
        rng, ran, order = random.Random(5), [], []
        start = loop.time()
        whens = [start + 0.002 + rng.random() * 0.05 for _ in range(300)]
        whens += whens[:20]  # ties run in the order they were scheduled
        for i, when in enumerate(whens):

            def note(when: float = when, i: int = i) -> None:
                ran.append((when, loop.time()))
                order.append(i)

            timers.call_at(when, note)
        cancelled = timers.call_at(start + 0.01, lambda: ran.append((-1.0, -1.0)))
        cancelled.cancel()
        assert cancelled.cancelled()
        timers.call_at(start - 1.0, lambda: order.append(-1))  # past: runs at once
        await asyncio.sleep(0.08)
        return ran, [whens[i] if i >= 0 else -1.0 for i in order]

    with asyncio.Runner(loop_factory=_epoll_loop) as runner:
        ran, whens = runner.run(run())
    assert len(ran) == 320 and whens[0] == -1.0  # the cancelled one never ran
    assert all(at >= when for when, at in ran)  # never before its time
    assert whens[1:] == sorted(whens[1:])  # in order of time


@needs_timerfd
def test_precise_timers_report_errors_and_go_on() -> None:
    async def run() -> tuple[list[str], list[int]]:
        loop = asyncio.get_running_loop()
        errors: list[str] = []
        loop.set_exception_handler(lambda _, ctx: errors.append(str(ctx["exception"])))
        timers = _timerfd.PreciseTimers.of(loop)
        assert timers is not None
        ran: list[int] = []

        def boom() -> None:
            raise ValueError("boom")

        now = loop.time()
        timers.call_at(now + 0.001, boom)
        timers.call_at(now + 0.002, lambda: ran.append(1))
        handles = [timers.call_at(now + 10.0, lambda: None) for _ in range(200)]
        for h in handles:  # many cancelled: the heap is rebuilt without them
            h.cancel()
        assert len(timers._heap) < 100
        await asyncio.sleep(0.01)
        return errors, ran

    with asyncio.Runner(loop_factory=_epoll_loop) as runner:
        errors, ran = runner.run(run())
    assert errors == ["boom"] and ran == [1]


@needs_timerfd
def test_precise_timers_fd_closes_with_the_loop() -> None:
    loop = _epoll_loop()
    timers = _timerfd.PreciseTimers.of(loop)
    assert timers is not None
    fd = timers.fileno
    os.fstat(fd)
    del timers
    loop.close()
    del loop
    gc.collect()
    with pytest.raises(OSError):
        os.fstat(fd)


def test_fallback_to_call_at(monkeypatch: pytest.MonkeyPatch) -> None:
    engine = CloudEngine(default_model(), seed=1)
    select = asyncio.SelectorEventLoop(selectors.SelectSelector())
    try:  # not epoll: plain call_at
        assert _timerfd.PreciseTimers.of(select) is None
        assert AnswerTimes(select, engine).call_at == select.call_at
    finally:
        select.close()
    monkeypatch.setattr(_timerfd, "ENABLED", False)  # forced off (as where timerfd is missing)
    epoll = _epoll_loop()
    try:
        assert _timerfd.PreciseTimers.of(epoll) is None
        assert AnswerTimes(epoll, engine).call_at == epoll.call_at
    finally:
        epoll.close()
