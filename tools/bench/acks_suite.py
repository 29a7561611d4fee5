# `cyncsim bench acks`: does the simulator reproduce the learned answer timing?
#
# Strategy: for each exchange a raw Probe (simulator/transport-free) sends requests one at a
# time on its own connection and measures, at the socket, the time to the answer:
#   0x23 -> 0x28, 0xD3 -> 0xD8, 0x83 fa db -> 0x88, 0x83 fa 00 -> 0x88   to a CyncCloudSimulator
#   0x73 f8 d0 -> 0x7B, 0x73 f8 f0 -> 0x7B                                to a CyncDeviceSimulator
# all at time_scale 1.0, every kind at once (independent simulators, one event loop).  Each
# kind is compared with the distribution the simulator samples for it (read from the
# engine's model view): KS statistic against its piecewise-linear CDF, and p99.  One
# connection per kind and one request at a time: a cloud engine is made per connection and
# draws its delays from one stratified stream, so all draws of a kind come from one stream
# (with one draw per connection they would be plain random draws, and the KS statistic of n
# random draws is itself about 0.87/sqrt(n) at the median); a device answers its commands in
# order (service time per 0x7B), so with one outstanding the answer time is the service
# sample, which is the distribution compared.  Timer fidelity: the engines are audited
# (simkit.TimerAudit): each answer's asked departure against its real write, next to the
# lateness of bare loop timers measured on an idle loop and during the run.
from __future__ import annotations

import asyncio
import gc
import math
import selectors
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from cyncsim.replay.engine import ModelView
from cyncsim.replay.model import Distribution
from cyncsim.replay.payloads import StatusReport, build_hello, build_report, build_simple
from cyncsim.replay.protocol import FramedPacket, FrameKind, InnerFrame, PacketType
from cyncsim.simulator._device_conn import EngineConnection, default_model
from cyncsim.simulator.cloud import CyncCloudSimulator
from cyncsim.simulator.device import CyncDeviceSimulator
from cyncsim.tools.bench.common import BenchOptions, Check, Column, Log, SuiteResult
from cyncsim.tools.bench.latency import (
    ks_median,
    ks_statistic,
    learned_summary,
    percentile,
    summary_ms,
)
from cyncsim.tools.bench.simkit import (
    Probe,
    TimerAudit,
    acks,
    command_packet,
    is_type,
    lateness_monitor,
    light_packet,
    loop_lateness,
)

__all__ = ["FULL", "KINDS", "QUICK", "TARGET_KS", "Kind", "run"]

TARGET_KS = 0.05
P99_REL = 0.05  # p99 within 5% ...
P99_ABS_S = 0.002  # ... or 2 ms of the learned p99
# "late by no more than the event loop's own lateness": answers against bare loop timers of
# the same run, allowing for the noise of percentiles of a few hundred timers on a shared
# machine (tails of two runs of the same timer differ by some 100 us here)
LATE_P50_SLACK_US = 100.0
LATE_P99_SLACK_US = 500.0
SEED = 11
DEVICE_ID = bytes.fromhex("5a000001")
AUTH = b"1e07d0000000abcd"


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


FULL = Size(1000, 100)  # 10 connections per kind at once: the p99 of 1,000 stratified draws
QUICK = Size(20, 10)
# The event loops measured: asyncio's default (epoll: waits in whole milliseconds, rounded
# up) and a select()-based one (microsecond timeouts).
LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "epoll": asyncio.new_event_loop,
    "select": lambda: asyncio.SelectorEventLoop(selectors.SelectSelector()),
}


def firmware_report(number: int) -> bytes:
    """A 0x83 fa 00 firmware report (PROTOCOL.md section 12) with message id ``number``."""
    data = bytes(7) + b"\xea" + bytes(3) + b"\x86\x01\x01" + b"10052"
    frame = InnerFrame(bytes(4), FrameKind.REPORT, 0x00, data.ljust(32, b"\0"), marker=0x00)
    msg_id = (number % 0xFFFF + 1).to_bytes(2, "big") + b"\0"
    pkt = FramedPacket(PacketType.REPORT, device_id=DEVICE_ID, msg_id=msg_id, frame=frame)
    return pkt.encode()


def status_report(number: int) -> bytes:
    """A 0x83 fa db status report of node 1 with message id ``number``."""
    msg_id = (number % 0xFFFF + 1).to_bytes(2, "big") + b"\0"
    report = StatusReport(1, bool(number % 2), 50, 50, (255, 255, 255))
    return build_report(DEVICE_ID, msg_id, report).encode()


_HELLO = build_hello(DEVICE_ID, AUTH).encode()
_PING = build_simple(PacketType.PING).encode()
_REQUESTS: dict[str, Callable[[int], bytes]] = {
    "0x23": lambda i: _HELLO,
    "0xd3": lambda i: _PING,
    "0x83:fa:db": status_report,
    "0x83:fa:00": firmware_report,
    "0x73:f8:d0": lambda i: command_packet(DEVICE_ID, i),
    "0x73:f8:f0": lambda i: light_packet(DEVICE_ID, i),
}
_ANSWER_TYPES = {"0x28": PacketType.HELLO_ACK, "0xd8": PacketType.PONG, "0x88": 0x88}


class _AuditedCloud(CyncCloudSimulator):
    def __init__(self, audit: TimerAudit, **kw: Any) -> None:
        super().__init__(**kw)
        self.audit = audit

    def connection_ready(self, conn: EngineConnection) -> bool:
        self.audit.watch(conn.engine)
        conn.observer = self.audit.observe  # instead of the cloud's own log of every packet
        return super().connection_ready(conn)


class _AuditedDevice(CyncDeviceSimulator):
    def __init__(self, audit: TimerAudit, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.audit = audit
        audit.watch(self.engine)

    def connection_ready(self, conn: EngineConnection) -> bool:
        conn.observer = self.audit.observe
        return super().connection_ready(conn)


@dataclass(slots=True)
class _Measured:
    kind: Kind
    latencies: list[float]
    dist: Distribution  # what the engine samples for this answer
    queued: bool
    learned_latency: Distribution | None  # request -> answer as captured (with queueing)
    audit: TimerAudit
    margins: list[float] = field(default_factory=list)  # socket time - asked delay, each


async def _cloud_kind(kind: Kind, n: int, seed: int) -> _Measured:
    """``n`` requests of ``kind`` on one connection to a cloud of its own."""
    audit = TimerAudit()
    cloud = _AuditedCloud(audit, seed=seed, time_scale=1.0)
    await cloud.start()
    try:
        plans = cloud.view.plans(kind.request)
        if not plans:
            raise ValueError(f"the model's cloud answers no {kind.request}")
        probe = await Probe.open("127.0.0.1", cloud.port)
        try:
            if kind.request != "0x23":  # a device says hello first (not measured)
                await probe.exchange(_HELLO, is_type(PacketType.HELLO_ACK))
            make, want = _REQUESTS[kind.request], is_type(_ANSWER_TYPES[kind.answer])
            latencies = []
            for i in range(n):
                request = make(i)
                seconds, answer = await probe.exchange(request, want)
                if kind.answer == "0x88" and answer.encode()[5:8] != request[9:12]:
                    raise ValueError(f"0x88 does not echo the 0x83's bytes 9-11 ({kind.name})")
                latencies.append(seconds)
        finally:
            probe.close()
    finally:
        await cloud.stop()
    return _Measured(kind, latencies, plans[0].delay, plans[0].queued, None, audit)


async def _device_kind(kind: Kind, n: int, seed: int) -> _Measured:
    """``n`` commands of ``kind`` to a device of its own, one outstanding."""
    audit = TimerAudit()
    device = _AuditedDevice(audit, DEVICE_ID, seed=seed, time_scale=1.0, mesh_node=1)
    await device.start()
    try:
        plan = device.engine.view.split(kind.request).acks[0]
        probe = await Probe.open("127.0.0.1", device.port)
        try:
            await asyncio.wait_for(probe.wait_for(is_type(PacketType.HELLO), backlog=True), 10)
            probe.send(build_simple(PacketType.HELLO_ACK).encode())
            make = _REQUESTS[kind.request]
            latencies = []
            for i in range(n):
                request = make(i)
                seconds, _ = await probe.exchange(request, acks(request))
                latencies.append(seconds)
        finally:
            probe.close()
        view = device.engine.view
        ex = view.model.exchange(kind.request, "device", view.variant)
        learned = next((r.latency for r in ex.responses if r.key == "0x7b"), None) if ex else None
    finally:
        await device.stop()
    return _Measured(kind, latencies, plan.delay, plan.queued, learned, audit)


async def _kind(kind: Kind, index: int, size: Size) -> _Measured:
    """``size.requests`` of ``kind`` over connections of ``size.per_connection`` each, at
    once; the answer key's audit entries only (a device's hello answer is not counted)."""
    one = _cloud_kind if kind.role == "cloud" else _device_kind
    counts = [size.per_connection] * (size.requests // size.per_connection)
    if size.requests % size.per_connection:
        counts.append(size.requests % size.per_connection)
    parts = await asyncio.gather(
        *(one(kind, c, SEED + 100 * index + j) for j, c in enumerate(counts))
    )
    audit = TimerAudit()  # the answers of every connection (each audited on its own)
    for part in parts:
        audit.asked[kind.answer] += part.audit.asked.get(kind.answer, [])
        audit.late[kind.answer] += part.audit.late.get(kind.answer, [])
    first = parts[0]
    latencies = [x for p in parts for x in p.latencies]
    margins = [
        got - want
        for p in parts
        for got, want in zip(p.latencies, p.audit.asked.get(kind.answer, []), strict=True)
    ]
    return _Measured(
        kind, latencies, first.dist, first.queued, first.learned_latency, audit, margins
    )


async def _run(size: Size, loop_name: str, log: Log) -> tuple[list[_Measured], dict[str, Any]]:
    log(f"acks ({loop_name} loop): bare timers on an idle loop")
    ref = {
        "loop.call_at, idle loop": await loop_lateness(200, 0.001, 0.01),
        "asyncio.sleep, idle loop": await loop_lateness(200, 0.001, 0.01, sleep=True),
    }
    log(f"acks ({loop_name} loop): {size.requests} requests of each of {len(KINDS)} kinds")
    stop = asyncio.Event()
    background = asyncio.ensure_future(lateness_monitor(stop, 0.001, 0.02))
    jobs: list[Awaitable[_Measured]] = [_kind(k, i, size) for i, k in enumerate(KINDS)]
    try:
        measured = await asyncio.gather(*jobs)
    finally:
        stop.set()
        ref["loop.call_at, during the run"] = await background
    return list(measured), ref


def _measure(size: Size, loop_name: str, log: Log) -> tuple[list[_Measured], dict[str, Any]]:
    with asyncio.Runner(loop_factory=LOOPS[loop_name]) as runner:
        return runner.run(_run(size, loop_name, log))


def _kind_row(m: _Measured, loop_name: str) -> dict[str, Any]:
    k = m.kind
    learned = learned_summary(m.dist)
    measured = summary_ms(m.latencies)
    asked = m.audit.asked.get(k.answer, [])
    late = m.audit.late.get(k.answer, [])
    p99_err = measured["p99_ms"] - learned["learned_p99_ms"]
    p99_tol = max(P99_REL * learned["learned_p99_ms"], P99_ABS_S * 1e3)
    row: dict[str, Any] = {
        "name": k.name,
        "loop": loop_name,
        "answered_by": k.role,
        "request": k.request,
        "checked": k.checked,
        "targets": "checked" if k.checked else "shown only",
        "n": len(m.latencies),
        **measured,
        **learned,
        "learned_values": m.dist.count,
        "learned_kind": "service" if m.queued else "latency",
        "ks": ks_statistic(m.latencies, m.dist),
        "ks_asked": ks_statistic(asked, m.dist) if asked else None,
        "ks_random": ks_median(len(m.latencies)),
        "p99_err_ms": p99_err,
        "p99_tol_ms": p99_tol,
        "p99_ok": abs(p99_err) <= p99_tol,
        **_lateness(late, "late_"),
        "min_margin_us": min(m.margins) * 1e6 if m.margins else None,
        "samples_ms": [x * 1e3 for x in m.latencies],
        "learned_ms": [v * 1e3 for v in m.dist.values],
    }
    row["ks_ok"] = row["ks"] <= TARGET_KS
    if m.learned_latency is not None:
        row["captured_latency_p99_ms"] = m.learned_latency.quantile(0.99) * 1e3
    return row


def _lateness(late: list[float], prefix: str) -> dict[str, float | None]:
    if not late:
        return {f"{prefix}{k}_us": None for k in ("min", "p50", "p99", "max")}
    return {
        f"{prefix}min_us": min(late) * 1e6,
        f"{prefix}p50_us": percentile(late, 0.5) * 1e6,
        f"{prefix}p99_us": percentile(late, 0.99) * 1e6,
        f"{prefix}max_us": max(late) * 1e6,
    }


COLUMNS = [
    Column("loop", "loop"),
    Column("name", "exchange"),
    Column("n", "n", ",d"),
    Column("p50_ms", "p50 ms", ".1f"),
    Column("p95_ms", "p95 ms", ".1f"),
    Column("p99_ms", "p99 ms", ".1f"),
    Column("max_ms", "max ms", ".1f"),
    Column("learned_kind", "learned"),
    Column("learned_p50_ms", "l.p50", ".1f"),
    Column("learned_p95_ms", "l.p95", ".1f"),
    Column("learned_p99_ms", "l.p99", ".1f"),
    Column("learned_max_ms", "l.max", ".1f"),
    Column("ks", "KS", ".3f"),
    Column("ks_asked", "KS asked", ".3f"),
    Column("ks_random", "KS rnd", ".3f"),
    Column("p99_err_ms", "p99 err ms", "+.1f"),
    Column("late_p50_us", "late p50 us", ",.0f"),
    Column("targets", "targets"),
]
TIMER_COLUMNS = [
    Column("loop", "loop"),
    Column("name", "timer"),
    Column("n", "n", ",d"),
    Column("min_us", "min us", ",.0f"),
    Column("p50_us", "p50 us", ",.0f"),
    Column("p99_us", "p99 us", ",.0f"),
    Column("max_us", "max us", ",.0f"),
]


def _timer_row(loop_name: str, name: str, late: list[float]) -> dict[str, Any]:
    return {"loop": loop_name, "name": name, "n": len(late), **_lateness(late, "")}


def _loop_checks(
    loop_name: str, rows: list[dict[str, Any]], timers: list[dict[str, Any]]
) -> list[Check]:
    checks: list[Check] = []
    for row in rows:
        if row["checked"]:
            name = f"{loop_name} {row['name']}"
            checks.append(Check(f"{name} KS", row["ks"], TARGET_KS, "<=", "", ".3f"))
            checks.append(
                Check(
                    f"{name} |p99 err|",
                    abs(row["p99_err_ms"]),
                    row["p99_tol_ms"],
                    "<=",
                    " ms",
                    ".1f",
                )
            )
    during = next(t for t in timers if t["name"] == "loop.call_at, during the run")
    sim = next(t for t in timers if t["name"] == "simulator answers")
    margins = [r["min_margin_us"] for r in rows if r["min_margin_us"] is not None]
    checks += [
        Check(f"{loop_name} answers early (min lateness)", sim["min_us"], 0.0, ">=", " us", ".0f"),
        Check(
            f"{loop_name} socket time - asked delay (min)",
            min(margins, default=math.nan),
            0.0,
            ">=",
            " us",
            ".0f",
        ),
        Check(
            f"{loop_name} answer lateness p50 - loop's p50",
            sim["p50_us"] - during["p50_us"],
            LATE_P50_SLACK_US,
            "<=",
            " us",
            "+.0f",
        ),
        Check(
            f"{loop_name} answer lateness p99 - loop's p99",
            sim["p99_us"] - during["p99_us"],
            LATE_P99_SLACK_US,
            "<=",
            " us",
            "+.0f",
        ),
    ]
    return checks


def run(opts: BenchOptions, log: Log) -> SuiteResult:
    gc.collect()  # no garbage of an earlier suite for this one's collections to walk
    size = QUICK if opts.quick else FULL
    rows: list[dict[str, Any]] = []
    timers: list[dict[str, Any]] = []
    checks: list[Check] = []
    for loop_name in LOOPS:
        measured, ref = _measure(size, loop_name, log)
        loop_rows = [_kind_row(m, loop_name) for m in measured]
        loop_timers = [_timer_row(loop_name, name, late) for name, late in ref.items()]
        answers = [x for m in measured for x in m.audit.late.get(m.kind.answer, [])]
        loop_timers.append(_timer_row(loop_name, "simulator answers", answers))
        checks += _loop_checks(loop_name, loop_rows, loop_timers)
        rows += loop_rows
        timers += loop_timers
    result = SuiteResult(
        suite="acks",
        title=(
            f"{size.requests} requests per exchange at time_scale 1.0 ({size.per_connection} "
            "per connection, one outstanding), measured at the socket against the learned "
            "distribution each is sampled from, on two event loops"
        ),
        columns=COLUMNS,
        rows=rows,
        checks=checks,
        quick=opts.quick,
        params={
            "requests": size.requests,
            "per_connection": size.per_connection,
            "seed": SEED,
            "time_scale": 1.0,
            "loops": {"epoll": "asyncio default (EpollSelector)", "select": "SelectSelector"},
            "model": _model_note(),
        },
        sections=[("timer lateness (written at minus asked for)", TIMER_COLUMNS, timers)],
    )
    result.notes += _notes(rows, timers)
    return result


def _model_note() -> str:
    view = ModelView.get(default_model(), "cloud")
    return f"shipped default model, cloud role variant {view.variant!r}"


def _notes(rows: list[dict[str, Any]], timers: list[dict[str, Any]]) -> list[str]:
    notes = [
        "KS: sup |F_measured - F_learned|, F_learned the piecewise-linear CDF the engine "
        "samples; KS asked: the same for the delays the engine asked for (its sampler alone, "
        "no timers or sockets); KS rnd: the median KS of n independent draws, for scale",
        "'learned' says whether the sampled distribution is a latency (request -> answer) or, "
        "for a device's queued answers, a service time (with one outstanding they coincide)",
    ]
    late = {t["loop"]: t for t in timers if t["name"] == "simulator answers"}
    if {"epoll", "select"} <= set(late):
        notes.append(
            f"answers leave {late['epoll']['p50_us']:,.0f} us late (p50) on asyncio's default "
            f"epoll loop, {late['select']['p50_us']:,.0f} us on a select() loop: epoll waits "
            "in whole milliseconds, rounded up, so a timer is late by the fraction of a "
            "millisecond it falls on; a bare loop timer in the same run is just as late"
        )
    seen: set[str] = set()
    for row in rows:
        if row["name"] in seen:
            continue
        seen.add(row["name"])
        if "captured_latency_p99_ms" in row:
            notes.append(
                f"{row['name']}: compared with the learned service time (p99 "
                f"{row['learned_p99_ms']:.0f} ms); the captured request -> 0x7B latency, which "
                f"includes queueing behind earlier commands, has p99 "
                f"{row['captured_latency_p99_ms']:.0f} ms"
            )
        zeros = sum(1 for v in row["learned_ms"] if v == 0.0)
        if zeros:
            notes.append(
                f"{row['name']}: {zeros} of the {len(row['learned_ms'])} learned values are 0 ms "
                "(answers sent back to back); a socket round trip cannot be 0, so the "
                "measured CDF starts later and KS is at least that step "
                f"({(zeros - 1) / max(len(row['learned_ms']) - 1, 1):.3f})"
            )
        if not row["checked"]:
            notes.append(f"{row['name']}: shown for comparison, no target checked")
    for row in rows:
        if row["checked"] and not row["ks_ok"] and (row["ks_asked"] or 1.0) <= TARGET_KS:
            vals = sorted(row["learned_ms"])
            iqr = percentile(vals, 0.75) - percentile(vals, 0.25)
            notes.append(
                f"{row['loop']} {row['name']}: KS {row['ks']:.3f} although the sampler matches "
                f"(KS asked {row['ks_asked']:.3f}): the answers are "
                f"{row['p50_ms'] - row['learned_p50_ms']:+.2f} ms off at p50 (timer lateness "
                f"p50 {row['late_p50_us'] / 1e3:.2f} ms plus the loopback hop) and the learned "
                f"middle half spans only {iqr:.2f} ms"
            )
    return notes
