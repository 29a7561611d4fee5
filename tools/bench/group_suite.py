# `cyncsim bench group`: one command to 10 devices at once, with asyncio.gather.
#
# Strategy: 10 listening devices of the shipped model, each driven by its own
# ReliableTransport (a controller holds one connection per device); each round toggles all
# 10 with one asyncio.gather and waits for every ACK.  Two rows: the learned real-device
# latency (time_scale 1.0) and no injected latency (time_scale 0: what concurrency itself
# costs).  Per row: the round time (until the last ACK) and the per-command latency, as
# p50/p95/p99/max, success, retries, timeouts, and the time any asyncio lock was held, as
# measured by wrapping asyncio.Lock and asyncio.Semaphore for the run (simkit.LockMeter).  A
# round waits for the slowest of 10 independent answers, so its expected percentiles are
# those of the maximum of 10 draws: the learned quantile at q ** (1/10); the ratio of the
# measured round p50 to that says whether anything besides the devices' own times (a lock,
# a queue) slowed the round down.
from __future__ import annotations

import asyncio
import gc
from dataclasses import dataclass
from typing import Any

from cyncsim.replay.model import Distribution
from cyncsim.tools.bench.common import BenchOptions, Check, Column, Log, SuiteResult
from cyncsim.tools.bench.latency import summary_ms
from cyncsim.tools.bench.simkit import NODE, Lane, LockMeter, command_summary, open_lane

__all__ = ["DEVICES", "FULL", "QUICK", "Size", "run"]

DEVICES = 10
SEED = 31
TARGET_SUCCESS = 0.999


@dataclass(frozen=True, slots=True)
class Size:
    rounds: int  # at time_scale 1.0
    no_delay_rounds: int


FULL = Size(100, 100)
QUICK = Size(10, 100)

COLUMNS = [
    Column("name", "row"),
    Column("rounds", "rounds", ",d"),
    Column("success", "success", ".2%"),
    Column("round_p50_ms", "round p50", ",.1f"),
    Column("round_p95_ms", "round p95", ",.1f"),
    Column("round_p99_ms", "round p99", ",.1f"),
    Column("round_max_ms", "round max", ",.1f"),
    Column("expected_round_p50_ms", "max-of-10 p50", ",.1f"),
    Column("p50_ms", "cmd p50", ",.2f"),
    Column("p99_ms", "cmd p99", ",.2f"),
    Column("retries", "retries", ",d"),
    Column("timeouts", "timeouts", ",d"),
    Column("lock_acquisitions", "locks", ",d"),
    Column("lock_held_ms", "lock held ms", ",.3f"),
]


async def _rounds(lanes: list[Lane], rounds: int) -> tuple[list[float], LockMeter]:
    loop = asyncio.get_running_loop()
    times: list[float] = []
    meter = LockMeter()
    with meter.active():
        for r in range(rounds):
            start = loop.time()
            results = await asyncio.gather(
                *(lane.transport.send_toggle_command(NODE, bool(r % 2)) for lane in lanes)
            )
            times.append(loop.time() - start)
            for lane, res in zip(lanes, results, strict=True):
                lane.results.append(res)
    return times, meter


async def _row(name: str, time_scale: float, rounds: int) -> dict[str, Any]:
    lanes = list(
        await asyncio.gather(
            *(open_lane(i, seed=SEED, time_scale=time_scale) for i in range(DEVICES))
        )
    )
    try:
        times, meter = await _rounds(lanes, rounds)
        dist = lanes[0].device.engine.view.split("0x73:f8:d0").acks[0].delay
    finally:
        await asyncio.gather(*(lane.close() for lane in lanes))
    results = [res for lane in lanes for res in lane.results]
    retx = sum(lane.transport.stats.retransmissions for lane in lanes)
    rt = summary_ms(times)
    row: dict[str, Any] = {
        "name": name,
        "time_scale": time_scale,
        "devices": DEVICES,
        "rounds": rounds,
        **{f"round_{k}": v for k, v in rt.items()},
        **command_summary(results, retx),
        "retries": sum(res.retry_count for res in results),
        "lock_acquisitions": meter.acquisitions,
        "lock_held_ms": meter.held_s * 1e3,
        "round_samples_ms": [t * 1e3 for t in times],
        "samples_ms": [res.latency_s * 1e3 for res in results if res.success],
    }
    if time_scale:
        row.update(_expected_round(dist, time_scale))
        row["round_p50_vs_expected"] = row["round_p50_ms"] / row["expected_round_p50_ms"]
    return row


def _expected_round(dist: Distribution, scale: float) -> dict[str, float]:
    """Percentiles of the slowest of DEVICES independent learned draws."""
    return {
        f"expected_round_{name}_ms": dist.quantile(q ** (1 / DEVICES)) * scale * 1e3
        for name, q in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))
    }


async def _run(size: Size, log: Log) -> list[dict[str, Any]]:
    log(f"group: {size.no_delay_rounds} rounds of {DEVICES} toggles, no injected latency")
    no_delay = await _row("no delay", 0.0, size.no_delay_rounds)
    log(f"group: {size.rounds} rounds of {DEVICES} toggles, learned latency")
    learned = await _row("learned latency", 1.0, size.rounds)
    return [learned, no_delay]


def run(opts: BenchOptions, log: Log) -> SuiteResult:
    gc.collect()  # no garbage of an earlier suite for this one's collections to walk
    size = QUICK if opts.quick else FULL
    rows = asyncio.run(_run(size, log))
    learned, no_delay = rows
    checks = [
        Check(f"{r['name']} success", r["success"], TARGET_SUCCESS, ">=", "", ".4f") for r in rows
    ]
    checks.append(
        Check(
            "round p50 / max-of-10 expectation",
            learned["round_p50_vs_expected"],
            1.25,
            "<=",
            "x",
            ".2f",
        )
    )
    result = SuiteResult(
        suite="group",
        title=(
            f"a toggle to {DEVICES} devices at once (asyncio.gather over {DEVICES} "
            "ReliableTransports), round = until the last ACK"
        ),
        columns=COLUMNS,
        rows=rows,
        checks=checks,
        quick=opts.quick,
        params={
            "devices": DEVICES,
            "seed": SEED,
            "rounds": size.rounds,
            "no_delay_rounds": size.no_delay_rounds,
        },
    )
    locks = learned["lock_acquisitions"] + no_delay["lock_acquisitions"]
    result.notes += [
        "locks: asyncio.Lock and asyncio.Semaphore were wrapped for every round and counted "
        f"{locks} acquisitions: ReliableTransport holds no lock (each exchange waits on its "
        "own future; ACKs are matched in the protocol callback), so the time spent holding "
        "one is measured, not assumed, to be 0"
        if locks == 0
        else f"locks: {locks} asyncio lock acquisitions, held "
        f"{learned['lock_held_ms'] + no_delay['lock_held_ms']:.3f} ms in total",
        f"learned latency: the round p50 ({learned['round_p50_ms']:.0f} ms) is "
        f"{learned['round_p50_vs_expected']:.2f}x the p50 of the slowest of {DEVICES} learned "
        f"draws ({learned['expected_round_p50_ms']:.0f} ms): a round costs what its slowest "
        "device takes (target <= 1.25x: nothing else adds up)",
        f"no delay: a round of {DEVICES} takes {no_delay['round_p50_ms'] * 1e3:.0f} us (p50), "
        f"{DEVICES / no_delay['round_p50_ms'] * 1e3:,.0f} commands/s through {DEVICES} "
        "transports at once: the simulator's and the transport's own cost",
        "the 1.25x bound on the round p50 is this suite's sanity check, not a spec target",
    ]
    return result
