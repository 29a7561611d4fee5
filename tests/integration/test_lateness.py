# Lateness compensation over loopback sockets: answers leave the socket closer to their asked
# time with it than without (both at once, same load), and never before request + the smallest
# learned delay of their kind, in order, however large the estimate.  On epoll the timerfd
# (simulator/_timerfd.py) wakes timers well inside epoll's millisecond, and answers use it.
from __future__ import annotations

import asyncio
import collections
import statistics
from typing import Any

import pytest

from cyncsim.replay.engine import Send
from cyncsim.replay.payloads import StatusReport, build_report
from cyncsim.simulator import CyncCloudSimulator, _timerfd
from cyncsim.simulator._lateness import LoopLateness
from tests.support import DEV, PING, RawController

Peer = tuple[str, int]


class Audit:
    """Per connection of ``sim`` (by its peer): each answer's (arrival, asked time), and the
    loop time each packet was written."""

    def __init__(self, sim: CyncCloudSimulator) -> None:
        self.asked: dict[Peer, list[tuple[float, float]]] = collections.defaultdict(list)
        self.written: dict[Peer, list[float]] = collections.defaultdict(list)
        loop, ready = asyncio.get_running_loop(), sim.connection_ready

        def connection_ready(conn: Any) -> bool:
            peer, seen = conn.peer, conn.observer

            def answered(request: bytes, now: float, actions: list[Any]) -> None:
                self.asked[peer] += [(now, a.at) for a in actions if isinstance(a, Send)]

            def observer(way: str, data: bytes) -> None:
                if way == "out":
                    self.written[peer].append(loop.time())
                if seen is not None:
                    seen(way, data)

            conn.answered, conn.observer = answered, observer
            return ready(conn)

        setattr(sim, "connection_ready", connection_ready)  # noqa: B010 (on purpose)


def _status(i: int) -> bytes:
    report = StatusReport(1, bool(i % 2), 50, 50, (255, 255, 255))
    return build_report(DEV, (i + 1).to_bytes(2, "big") + b"\0", report).encode()


async def test_answers_never_leave_before_request_plus_learned_minimum(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An estimate far larger than every delay: each answer still waits for the learned
    minimum of its kind, and the answers keep their order."""
    monkeypatch.setattr(LoopLateness, "observe", lambda self, asked, now: None)
    LoopLateness.of(asyncio.get_running_loop()).lead = 0.004
    scale = 0.05  # the cloud's 0x88 after about 2 ms
    sim = CyncCloudSimulator(seed=7, time_scale=scale)
    audit = Audit(sim)
    floor = sim.view.answer_floor("0x88") * scale
    assert floor > 0.001
    async with sim:
        client = RawController()
        await client.connect(sim.port)
        requests = [_status(i) for i in range(20)]
        await client.send(*requests)
        answers = await client.wait_count("0x88", len(requests))
        assert client.writer is not None
        client.writer.close()
    ((peer, asked),) = audit.asked.items()
    written = audit.written[peer]
    assert len(asked) == len(written) == len(requests)
    for (arrival, _), out in zip(asked, written, strict=True):
        assert out - arrival >= floor - 1e-9
    # ... where ``at - lead`` alone would have sent every one of them before its request came
    assert all(at - 0.004 < arrival for arrival, at in asked)
    assert [a[5:8] for a in answers] == [r[9:12] for r in requests]  # in order


async def _pings(port: int, n: int) -> tuple[Peer, list[float]]:
    """``n`` pings one at a time on a connection of its own: (its address, seconds from each
    write to its pong at the socket)."""
    client = RawController()
    await client.connect(port)
    assert client.writer is not None
    loop, took = asyncio.get_running_loop(), []
    for i in range(n):
        start = loop.time()
        client.writer.write(PING)
        await client.wait_count("0xd8", i + 1)
        took.append(client.timed("0xd8")[i][0] - start)
    client.writer.close()
    return client.writer.get_extra_info("sockname")[:2], took


async def _errors(compensate: bool, connections: int, n: int) -> tuple[list[float], list[float]]:
    """Pings to a cloud simulator with compensation on or off: per pong, (time at the socket
    minus the delay asked), (time written minus the time asked)."""
    sim = CyncCloudSimulator(seed=3, time_scale=0.25)  # pongs after about 10 ms
    sim.lateness_compensation = compensate
    audit = Audit(sim)
    async with sim:
        runs = await asyncio.gather(*(_pings(sim.port, n) for _ in range(connections)))
    at_socket, written = [], []
    for peer, took in runs:
        asked = audit.asked[peer]
        at_socket += [t - (at - now) for t, (now, at) in zip(took, asked, strict=True)]
        written += [w - at for w, (_, at) in zip(audit.written[peer], asked, strict=True)]
    return at_socket, written


async def test_compensation_brings_answers_closer_to_their_time() -> None:
    """Both at once, under the same load: the median error at the socket is smaller with
    compensation, and the median error of the writes is closer to zero."""
    (on_socket, on_written), (off_socket, off_written) = await asyncio.gather(
        _errors(True, 4, 50), _errors(False, 4, 50)
    )
    assert len(on_socket) == len(off_socket) == 200
    assert min(off_written) >= 0.0  # without it, a timer never runs early
    assert statistics.median(on_socket) < statistics.median(off_socket)
    assert abs(statistics.median(on_written)) < statistics.median(off_written)


async def _timer_lateness(call_at: Any, n: int) -> list[float]:
    """``n`` timers one after another, each asked for 1-3 ms ahead: how late each ran (s)."""
    loop, late = asyncio.get_running_loop(), []
    for i in range(n):
        done = loop.create_future()
        when = loop.time() + 0.001 + (i % 7) * 0.0003

        def ran(when: float = when, done: asyncio.Future[None] = done) -> None:
            late.append(loop.time() - when)
            done.set_result(None)

        call_at(when, ran)
        await done
    return late


async def test_timerfd_wakes_epoll_timers_precisely() -> None:
    """On an epoll loop, timers of the timerfd run far closer to their time than loop.call_at
    timers of the same loop: median under 0.2 ms, and never early.  One after the other: at
    once, the timerfd's wake-ups would run the call_at timers early too."""
    loop = asyncio.get_running_loop()
    timers = _timerfd.PreciseTimers.of(loop)
    if timers is None:
        pytest.skip("no precise timers on this loop (not epoll, or no timerfd)")
    plain = await _timer_lateness(loop.call_at, 200)
    precise = await _timer_lateness(timers.call_at, 200)
    assert min(precise) >= 0.0 and min(plain) >= 0.0
    assert statistics.median(precise) < 0.0002
    assert statistics.median(precise) < statistics.median(plain) - 0.0001


async def test_answers_use_the_timerfd_and_the_fallback_works(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Compensated answers on epoll leave within a fraction of a millisecond of their asked
    time (median of |written - asked|); with the timerfd forced off they still never leave
    before request + the learned minimum, and are centred by the lead alone."""
    if _timerfd.PreciseTimers.of(asyncio.get_running_loop()) is None:
        pytest.skip("no precise timers on this loop (not epoll, or no timerfd)")
    _, written = await _errors(True, 2, 50)
    assert statistics.median(abs(w) for w in written) < 0.0003
    monkeypatch.setattr(_timerfd, "_LOOPS", {})  # forget this loop's timers ...
    monkeypatch.setattr(_timerfd, "ENABLED", False)  # ... and make none: loop.call_at
    _, written = await _errors(True, 2, 50)
    assert len(written) == 100
    assert abs(statistics.median(written)) < 0.0005
