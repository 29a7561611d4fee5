# `cyncsim bench baseline`: commands through ReliableTransport to one simulated device.
#
# Strategy: a listening CyncDeviceSimulator and a default ReliableTransport, one exchange
# outstanding.  Rows: toggle (f8 d0) and light (f8 f0) at time_scale 1.0, each command sent
# once the previous one's f9 result came (the device idle, as the captures' one-at-a-time
# commands were), latency to the ack against the learned idle latency; back to back: toggles
# each sent on the previous ack, which a serial device answers after the previous command's
# work (docs/fidelity.md); no delay (time_scale 0, median of the repeats): the simulator +
# transport cost.  Targets (the spec's, toggles): p99 < 800 ms, success > 99.9%.
from __future__ import annotations

import asyncio
import statistics
from dataclasses import asdict, dataclass
from typing import Any

from cyncsim.tools.bench.common import BenchOptions, Check, Column, Log, SuiteResult, SuiteSpec
from cyncsim.tools.bench.simkit import (
    CpuMeter,
    command_summary,
    idle_delay,
    lanes,
    learned_figures,
)

__all__ = ["SPEC", "TARGET_P99_MS", "TARGET_SUCCESS", "Size", "run"]

TARGET_P99_MS = 800.0
TARGET_SUCCESS = 0.999
SEED = 7


@dataclass(frozen=True, slots=True)
class Size:
    learned: int  # commands per learned-latency row
    no_delay: int  # commands per repeat of the time_scale 0 row


SPEC = SuiteSpec(
    "baseline",
    full=Size(1000, 1000),
    quick=Size(60, 300),
    columns=[
        Column("name", "row"),
        Column("time_scale", "scale", ".1f"),
        Column("commands", "cmds", ",d"),
        Column("success", "success", ".2%"),
        *Column.latency(spec=".2f"),
        *Column.latency("learned_", "learned ", spec=".1f", keys="p50 p99"),
        Column("retransmits", "retx", ",d"),
        Column("timeouts", "timeouts", ",d"),
        Column("per_s", "cmd/s", ",.0f"),
    ],
)


async def _row(name: str, index: int, n: int, repeats: int, log: Log) -> dict[str, Any]:
    """``n`` commands ``repeats`` times (no delay: at time_scale 0, after a warm-up)."""
    light, no_delay, idle = name == "light", name == "no delay", name in ("toggle", "light")
    key, scale = "0x73:f8:f0" if light else "0x73:f8:d0", 0.0 if no_delay else 1.0
    rates, cpu = list[float](), list[float]()
    async with lanes(1, first=index, seed=SEED, time_scale=scale) as (lane,):
        if no_delay:
            await lane.commands(min(n, 100))  # warm-up: caches, first-use costs
            lane.results.clear()
        retx0 = lane.transport.stats.retransmissions
        for i in range(repeats):
            log(f"  baseline: {name} round {i + 1}/{repeats}")
            meter = CpuMeter()
            await lane.commands(n, light=light, wait_result=idle)
            rates.append(n / meter.stop().wall_s)
            cpu.append(meter.utilisation)
        retx = lane.transport.stats.retransmissions - retx0
    row = {"name": name, "request": key, "time_scale": scale, **command_summary([lane], retx)}
    row |= {"per_s": statistics.median(rates)}
    if no_delay:
        row["cpu_utilisation"] = statistics.median(cpu)
        return row | {"per_s_samples": rates, "repeats": repeats}
    plan = lane.device.engine.view.split(key).acks[0]  # what it samples: idle, or its pace
    row |= learned_figures(plan, idle_delay(plan) if idle else None)
    timeout, retries = lane.transport.ack_timeout_seconds, lane.transport.max_retries
    return row | {"ack_timeout_s": timeout, "max_retries": retries}


async def _rows(size: Size, repeats: int, log: Log) -> list[dict[str, Any]]:
    log(f"baseline: {size.no_delay:,} toggles x {repeats} with no injected latency")
    no_delay = await _row("no delay", 0, size.no_delay, repeats, log)
    log(f"baseline: {size.learned:,} toggles, light commands and back-to-back toggles")
    names = ("toggle", "light", "back to back")
    rows = (_row(name, i + 1, size.learned, 1, log) for i, name in enumerate(names))
    return [*await asyncio.gather(*rows), no_delay]


def run(opts: BenchOptions, log: Log) -> SuiteResult:
    size = SPEC.size(opts)
    toggle, light, back, no_delay = rows = asyncio.run(_rows(size, opts.repeats, log))
    for row in (toggle, light, back):
        row["vs_learned_p50"] = row["p50_ms"] / row["learned_p50_ms"]
        row["vs_learned_p99"] = row["p99_ms"] / row["learned_p99_ms"]
        row["own_cost_share"] = no_delay["p50_ms"] / row["p50_ms"]
    checks = [
        Check("toggle p99", toggle["p99_ms"], TARGET_P99_MS, "<=", " ms", ",.1f"),
        Check("toggle success", toggle["success"], TARGET_SUCCESS, ">=", "", ".4f"),
        Check("no-delay success", no_delay["success"], TARGET_SUCCESS, ">=", "", ".4f"),
    ]
    title = (
        f"commands through ReliableTransport (defaults: ack timeout {toggle['ack_timeout_s']} s,"
        f" {toggle['max_retries']} retries) to one simulated device, one exchange outstanding"
    )
    params = {**asdict(size), "repeats": opts.repeats, "seed": SEED}
    params["model"] = "shipped default model (variant: cloud, toggles use the local f8 d0)"
    notes = [
        f"toggle: measured p99 {toggle['p99_ms']:.1f} ms, {toggle['vs_learned_p99']:.3f}x the "
        f"learned 0x7B {toggle['learned_kind']}'s ({toggle['learned_values']} values)",
        f"no delay: {no_delay['per_s']:,.0f} commands/s, p50 {no_delay['p50_ms'] * 1e3:.0f} us, "
        f"{toggle['own_cost_share']:.2%} of the toggle p50",
        f"back to back: p50 {back['p50_ms']:.1f} ms, {back['per_s']:.1f} commands/s: each ack "
        "waits for the previous toggle's f9 result, as on the real bridge; no target",
    ]
    if opts.quick:
        notes.append(f"quick size: the p99 of {size.learned} commands is a top value")
    return SPEC.result(opts, title, rows, checks, params, notes)
