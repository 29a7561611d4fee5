# `cyncsim bench group`: one command to 10 devices at once, with asyncio.gather.
#
# Strategy: 10 devices, one ReliableTransport each; a round toggles all 10, at the learned
# latency and at none, and lasts until the last ACK; the next round waits for every f9 result
# too, so each device meets it idle (docs/fidelity.md: a toggle's ack waits for the previous
# result).  A round waits for the slowest of 10 answers, so its expected quantile q is the
# learned idle quantile at q ** (1/10); asyncio locks are metered.
from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass
from typing import Any

from cyncsim.tools.bench.common import BenchOptions, Check, Column, Log, SuiteResult, SuiteSpec
from cyncsim.tools.bench.simkit import (
    NODE,
    LockMeter,
    command_summary,
    idle_delay,
    lanes,
    summary,
)

__all__ = ["DEVICES", "SPEC", "Size", "run"]

DEVICES = 10
SEED = 31
TARGET_SUCCESS = 0.999


@dataclass(frozen=True, slots=True)
class Size:
    rounds: int  # at time_scale 1.0
    no_delay_rounds: int


SPEC = SuiteSpec(
    "group",
    full=Size(100, 100),
    quick=Size(10, 100),
    columns=[
        Column("name", "row"),
        Column("rounds", "rounds", ",d"),
        Column("success", "success", ".2%"),
        *Column.latency("round_", "round ", spec=",.1f"),
        Column("expected_round_p50_ms", "max-of-10 p50", ",.1f"),
        *Column.latency(label="cmd ", spec=",.2f", keys="p50 p99"),
        Column("retries", "retries", ",d"),
        Column("timeouts", "timeouts", ",d"),
        Column("lock_acquisitions", "locks", ",d"),
        Column("lock_held_ms", "lock held ms", ",.3f"),
    ],
)


async def _row(name: str, time_scale: float, rounds: int) -> dict[str, Any]:
    times, meter = list[float](), LockMeter()
    async with lanes(DEVICES, seed=SEED, time_scale=time_scale) as group:
        with meter.active():
            for r in range(rounds):
                on = bool(r % 2)
                sends = (
                    lane.transport.send_toggle_command(NODE, on, wait_result=True) for lane in group
                )
                results = await asyncio.gather(*sends)
                times.append(max(res.ack_latency_s or res.latency_s for res in results))
                for lane, res in zip(group, results, strict=True):
                    lane.results.append(res)
        plan = group[0].device.engine.view.split("0x73:f8:d0").acks[0]
        dist = idle_delay(plan) or plan.delay
    row: dict[str, Any] = {"name": name, "time_scale": time_scale, "devices": DEVICES}
    row["rounds"] = rounds
    row |= {**summary(times, prefix="round_"), **command_summary(group)}
    row["retries"] = sum(res.retry_count for lane in group for res in lane.results)
    row |= {"lock_acquisitions": meter.acquisitions, "lock_held_ms": meter.held_s * 1e3}
    row["round_samples_ms"] = [t * 1e3 for t in times]
    if time_scale:
        for key, q in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99)):
            expected = dist.inverse_cdf(q ** (1 / DEVICES)) * time_scale  # of the draws
            row[f"expected_round_{key}_ms"] = expected * 1e3
        row["round_p50_vs_expected"] = row["round_p50_ms"] / row["expected_round_p50_ms"]
    return row


def run(opts: BenchOptions, log: Log) -> SuiteResult:
    size = SPEC.size(opts)
    log(f"group: {size.no_delay_rounds} rounds of {DEVICES} toggles, no injected latency")
    no_delay = asyncio.run(_row("no delay", 0.0, size.no_delay_rounds))
    log(f"group: {size.rounds} rounds of {DEVICES} toggles, learned latency")
    learned = asyncio.run(_row("learned latency", 1.0, size.rounds))
    rows = [learned, no_delay]
    checks = [
        Check(f"{r['name']} success", r["success"], TARGET_SUCCESS, ">=", "", ".4f") for r in rows
    ]
    ratio = learned["round_p50_vs_expected"]
    checks.append(Check("round p50 / max-of-10 expectation", ratio, 1.25, "<=", "x", ".2f"))
    locks = learned["lock_acquisitions"] + no_delay["lock_acquisitions"]
    notes = [
        f"locks: {locks} asyncio.Lock/Semaphore acquisitions, held "
        f"{learned['lock_held_ms'] + no_delay['lock_held_ms']:.3f} ms in total",
        f"no delay: a round of {DEVICES} takes {no_delay['round_p50_ms'] * 1e3:.0f} us (p50)",
    ]
    title = (
        f"a toggle to {DEVICES} devices at once (asyncio.gather over {DEVICES} "
        "ReliableTransports), round = until the last ACK"
    )
    params = {"devices": DEVICES, "seed": SEED, **asdict(size)}
    return SPEC.result(opts, title, rows, checks, params, notes)
