# `cyncsim bench acks`: does the simulator reproduce the learned answer timing?
#
# Strategy: per exchange a raw Probe sends requests one at a time on its own connection to a
# cloud or device simulator (time_scale 1.0, all kinds at once) and times the answer at the
# socket; each kind is compared (KS, p99) with the distribution its engine samples.  Timer
# fidelity: a TimerAudit notes each answer's asked departure against its real write,
# next to bare loop timers, on two event loops.
from __future__ import annotations

import asyncio
import collections
import math
import selectors
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from cyncsim import CyncCloudSimulator, CyncDeviceSimulator, PacketType
from cyncsim.replay.engine.actions import Send
from cyncsim.replay.engine.state import firmware_report
from cyncsim.replay.payloads import StatusReport, build_hello, build_report, build_simple
from cyncsim.replay.protocol import CyncPacket, exchange_key
from cyncsim.tools.bench.common import BenchOptions, Check, Column, Log, SuiteResult, SuiteSpec
from cyncsim.tools.bench.simkit import Probe, command_packet, lateness_monitor, loop_lateness
from cyncsim.tools.bench.stats import ks, ks_random, learned_summary, summary

__all__ = ["KINDS", "LOOPS", "SPEC", "TARGET_KS", "TIMERS", "Kind", "Size", "TimerAudit", "run"]

TARGET_KS = 0.05
P99_REL, P99_ABS_S = 0.05, 0.002  # p99 within 5% or 2 ms of the learned p99
# answers late by no more than bare loop timers of the same run, plus percentile noise
LATE_P50_SLACK_US, LATE_P99_SLACK_US = 100.0, 500.0
SEED = 11
DEVICE_ID = bytes.fromhex("5a000001")
TIMERS = "timer lateness (written at minus asked for)"


@dataclass(frozen=True, slots=True)
class Kind:
    name: str
    role: str  # who answers: cloud | device
    request: str  # request key the engine plans by
    answer: str  # answer key (TimerAudit key)
    checked: bool  # one of the four exchanges (targets checked)


KINDS = (
    Kind("0x23 -> 0x28", "cloud", "0x23", "0x28", True),
    Kind("0x73 -> 0x7B", "device", "0x73:f8:d0", "0x7b", True),
    Kind("0x83 -> 0x88", "cloud", "0x83:fa:db", "0x88", True),
    Kind("0xD3 -> 0xD8", "cloud", "0xd3", "0xd8", True),
    Kind("0x83 fa 00 -> 0x88", "cloud", "0x83:fa:00", "0x88", False),
    Kind("0x73 f8 f0 -> 0x7B", "device", "0x73:f8:f0", "0x7b", False),
)


@dataclass(frozen=True, slots=True)
class Size:
    requests: int  # per kind
    per_connection: int  # requests on one connection (one engine, one stratified stream)


# asyncio's default (epoll: whole milliseconds, rounded up) and select() (microseconds)
LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "epoll": asyncio.new_event_loop,
    "select": lambda: asyncio.SelectorEventLoop(selectors.SelectSelector()),
}
_US = {"unit": "us", "spec": ",.0f"}
SPEC = SuiteSpec(
    "acks",
    full=Size(1000, 100),  # 10 connections per kind at once
    quick=Size(20, 10),
    columns=[
        Column("loop", "loop"),
        Column("name", "exchange"),
        Column("n", "n", ",d"),
        *Column.latency(),
        Column("learned_kind", "learned"),
        *Column.latency("learned_", "l."),
        Column("ks", "KS", ".3f"),
        Column("ks_asked", "KS asked", ".3f"),
        Column("ks_random", "KS rnd", ".3f"),
        Column("p99_err_ms", "p99 err ms", "+.1f"),
        Column("late_p50_us", "late p50 us", ",.0f"),
        Column("targets", "targets"),
    ],
    details={
        TIMERS: [
            Column("loop", "loop"),
            Column("name", "timer"),
            Column("n", "n", ",d"),
            *Column.latency(keys="min p50 p99 max", **_US),
        ]
    },
)


def _msg_id(number: int) -> bytes:
    return (number % 0xFFFF + 1).to_bytes(2, "big") + b"\0"


def _status(i: int) -> bytes:  # a 0x83 fa db status report of node 1
    report = StatusReport(1, bool(i % 2), 50, 50, (255, 255, 255))
    return build_report(DEVICE_ID, _msg_id(i), report).encode()


_HELLO = build_hello(DEVICE_ID, b"1e07d0000000abcd").encode()
_REQUESTS: dict[str, Callable[[int], bytes]] = {
    "0x23": lambda i: _HELLO,
    "0xd3": lambda i: build_simple(PacketType.PING).encode(),
    "0x83:fa:db": _status,
    "0x83:fa:00": lambda i: firmware_report(DEVICE_ID, _msg_id(i), "device", "10052"),
    "0x73:f8:d0": lambda i: command_packet(DEVICE_ID, i),
    "0x73:f8:f0": lambda i: command_packet(DEVICE_ID, i, light=True),
}
_ANSWERS = {"0x28": PacketType.HELLO_ACK, "0xd8": PacketType.PONG, "0x88": 0x88, "0x7b": 0x7B}


class TimerAudit:
    """When each engine answer of a simulator was asked to leave, and when it really did."""

    def __init__(self) -> None:
        self._pending: dict[bytes, collections.deque[tuple[float, float, str]]] = {}
        self.asked: dict[str, list[float]] = collections.defaultdict(list)
        self.late: dict[str, list[float]] = collections.defaultdict(list)
        self.loop = asyncio.get_running_loop()

    def attach(self, sim: Any) -> Any:
        """Audit every connection of ``sim`` (a device or cloud simulator) from its start,
        through a connection's hooks: ``answered`` (the engine's actions), ``observer``."""
        ready = sim.connection_ready

        def connection_ready(conn: Any) -> bool:
            conn.answered = self.answered
            conn.observer = self.observe  # instead of a cloud's own log of every packet
            return bool(ready(conn))

        setattr(sim, "connection_ready", connection_ready)  # noqa: B010 (on purpose)
        return sim

    def answered(self, request: bytes, now: float, actions: list[Any]) -> None:
        for a in actions:  # a Send: data to write at loop time ``at``
            if isinstance(a, Send):
                self._pending.setdefault(a.data, collections.deque()).append((now, a.at, a.key))

    def observe(self, way: str, data: bytes) -> None:
        queue = self._pending.get(data) if way == "out" else None
        if not queue:
            return
        now, at, key = queue.popleft()
        if not queue:
            del self._pending[data]
        self.asked[key].append(at - now)
        self.late[key].append(self.loop.time() - at)


def _wants(kind: Kind, request: bytes) -> Callable[[CyncPacket], bool]:
    """What answers ``request``: a device's 0x7B echoes its exchange key."""
    if kind.role == "device":
        key = exchange_key(request)
        return lambda p: p.type == PacketType.DATA_ACK and exchange_key(p.encode()) == key
    return lambda p: p.type == _ANSWERS[kind.answer]


async def _connection(kind: Kind, n: int, seed: int) -> tuple[list[float], Any, TimerAudit]:
    """``n`` requests of ``kind`` on one connection to a simulator of its own: the seconds
    to each answer at the socket, the simulator's model view, its TimerAudit."""
    audit, device = TimerAudit(), kind.role == "device"
    sim = audit.attach(
        CyncDeviceSimulator(DEVICE_ID, seed=seed, time_scale=1.0, mesh_node=1)
        if device
        else CyncCloudSimulator(seed=seed, time_scale=1.0)
    )
    view = sim.engine.view if device else sim.view
    await sim.start()
    try:
        probe = await Probe.open(sim.port)
        try:
            if device:  # a device says hello first (not measured)
                await probe.exchange(b"", lambda p: p.type == PacketType.HELLO)
                probe.transport.write(build_simple(PacketType.HELLO_ACK).encode())
            elif kind.request != "0x23":
                await probe.exchange(_HELLO, lambda p: p.type == PacketType.HELLO_ACK)
            latencies = []
            for i in range(n):
                request = _REQUESTS[kind.request](i)
                seconds, answer = await probe.exchange(request, _wants(kind, request))
                if kind.answer == "0x88" and answer.encode()[5:8] != request[9:12]:
                    raise ValueError(f"0x88 does not echo the 0x83's bytes 9-11 ({kind.name})")
                latencies.append(seconds)
        finally:
            probe.close()
    finally:
        await sim.stop()
    return latencies, view, audit


async def _kind(
    kind: Kind, index: int, size: Size, loop: str
) -> tuple[dict[str, Any], list[float]]:
    """``size.requests`` of ``kind`` over connections of ``size.per_connection`` each, at once:
    its row and the lateness of its answers."""
    each, n = size.per_connection, size.requests
    counts = [min(each, n - k) for k in range(0, n, each)]
    parts = await asyncio.gather(
        *(_connection(kind, c, SEED + 100 * index + j) for j, c in enumerate(counts))
    )
    latencies, asked, late, margins = list[float](), list[float](), list[float](), list[float]()
    for got, _, audit in parts:
        wanted = audit.asked.get(kind.answer, [])
        latencies, asked = latencies + got, asked + wanted
        late += audit.late.get(kind.answer, [])
        margins += [t - want for t, want in zip(got, wanted, strict=True)]
    view, device = parts[0][1], kind.role == "device"
    plan = view.split(kind.request).acks[0] if device else view.plans(kind.request)[0]
    row: dict[str, Any] = {
        "name": kind.name,
        "loop": loop,
        "answered_by": kind.role,
        "request": kind.request,
        "checked": kind.checked,
        "targets": "checked" if kind.checked else "shown only",
        "n": len(latencies),
        **summary(latencies),
        **learned_summary(plan.delay),
        "learned_values": plan.delay.count,
        "learned_kind": "service" if plan.queued else "latency",
        "ks": ks(latencies, plan.delay),
        "ks_asked": ks(asked, plan.delay) if asked else None,
        "ks_random": ks_random(len(latencies)),
        **_lateness(late, "late_"),
        "min_margin_us": min(margins) * 1e6 if margins else None,
        "samples_ms": [x * 1e3 for x in latencies],
        "learned_ms": [v * 1e3 for v in plan.delay.values],
    }
    row["p99_err_ms"] = row["p99_ms"] - row["learned_p99_ms"]
    row["p99_tol_ms"] = max(P99_REL * row["learned_p99_ms"], P99_ABS_S * 1e3)
    row["p99_ok"] = abs(row["p99_err_ms"]) <= row["p99_tol_ms"]
    row["ks_ok"] = row["ks"] <= TARGET_KS
    ex = view.model.exchange(kind.request, "device", view.variant) if device else None
    captured = next((r.latency for r in ex.responses if r.key == "0x7b"), None) if ex else None
    if captured is not None:
        row["captured_latency_p99_ms"] = captured.quantile(0.99) * 1e3
    return row, late


async def _run(size: Size, loop: str, log: Log) -> tuple[list[Any], dict[str, list[float]]]:
    """Every kind at once on this event loop: rows, and bare timer lateness for reference."""
    log(f"acks ({loop} loop): bare timers on an idle loop")
    ref = {
        "loop.call_at, idle loop": await loop_lateness(200, 0.001, 0.01),
        "asyncio.sleep, idle loop": await loop_lateness(200, 0.001, 0.01, sleep=True),
    }
    log(f"acks ({loop} loop): {size.requests} requests of each of {len(KINDS)} kinds")
    stop = asyncio.Event()
    background = asyncio.ensure_future(lateness_monitor(stop, 0.001, 0.02))
    try:
        measured = await asyncio.gather(*(_kind(k, i, size, loop) for i, k in enumerate(KINDS)))
    finally:
        stop.set()
        ref["loop.call_at, during the run"] = await background
    ref["simulator answers"] = [x for _, late in measured for x in late]
    return [row for row, _ in measured], ref


def _lateness(late: list[float], prefix: str = "") -> dict[str, Any]:
    return {**summary(late, "us", prefix), f"{prefix}min_us": min(late, default=math.nan) * 1e6}


def _loop_checks(
    loop: str, rows: list[dict[str, Any]], timers: list[dict[str, Any]]
) -> list[Check]:
    checks: list[Check] = []
    for row in (r for r in rows if r["checked"]):
        name = f"{loop} {row['name']}"
        checks.append(Check(f"{name} KS", row["ks"], TARGET_KS, "<=", "", ".3f"))
        err, tol = abs(row["p99_err_ms"]), row["p99_tol_ms"]
        checks.append(Check(f"{name} |p99 err|", err, tol, "<=", " ms", ".1f"))
    during = next(t for t in timers if t["name"] == "loop.call_at, during the run")
    sim = next(t for t in timers if t["name"] == "simulator answers")
    margin = min(
        (r["min_margin_us"] for r in rows if r["min_margin_us"] is not None), default=math.nan
    )
    p50, p99 = sim["p50_us"] - during["p50_us"], sim["p99_us"] - during["p99_us"]
    return [
        *checks,
        Check(f"{loop} answers early (min lateness)", sim["min_us"], 0.0, ">=", " us", ".0f"),
        Check(f"{loop} socket time - asked delay (min)", margin, 0.0, ">=", " us", ".0f"),
        Check(f"{loop} answer lateness p50 - loop's p50", p50, LATE_P50_SLACK_US, "<=", " us"),
        Check(f"{loop} answer lateness p99 - loop's p99", p99, LATE_P99_SLACK_US, "<=", " us"),
    ]


def run(opts: BenchOptions, log: Log) -> SuiteResult:
    size = SPEC.size(opts)
    rows: list[dict[str, Any]] = []
    timers: list[dict[str, Any]] = []
    checks: list[Check] = []
    for loop_name, factory in LOOPS.items():
        with asyncio.Runner(loop_factory=factory) as runner:
            loop_rows, ref = runner.run(_run(size, loop_name, log))
        loop_timers = [
            {"loop": loop_name, "name": name, "n": len(late), **_lateness(late)}
            for name, late in ref.items()
        ]
        checks += _loop_checks(loop_name, loop_rows, loop_timers)
        rows += loop_rows
        timers += loop_timers
    title = (
        f"{size.requests} requests per exchange at time_scale 1.0 ({size.per_connection} per "
        "connection), at the socket, against the learned distributions, on two event loops"
    )
    params = {**asdict(size), "seed": SEED, "time_scale": 1.0, "loops": list(LOOPS)}
    return SPEC.result(opts, title, rows, checks, params, _notes(rows), {TIMERS: timers})


def _notes(rows: list[dict[str, Any]]) -> list[str]:
    notes = [
        "KS: sup |F_measured - F_learned| (scipy ks_2samp against the learned quantiles); KS "
        "asked: of the delays the engine asked for; KS rnd: the median KS of n random draws"
    ]
    for row in (r for r in rows if r["loop"] == "epoll" and "captured_latency_p99_ms" in r):
        p99 = row["captured_latency_p99_ms"]
        notes.append(f"{row['name']}: the captured latency (with queueing) has p99 {p99:.0f} ms")
    return notes
