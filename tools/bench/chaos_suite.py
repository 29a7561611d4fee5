# `cyncsim bench chaos`: the spec's chaos matrix through ReliableTransport.
#
# Strategy: devices of the shipped model's real-cloud variant at time_scale 1.0; the ACK
# timeout by the spec's rule, 2.5 x the learned p99 (some rows: the 2.0 s default).  Faults
# are a ChaosConfig per device, both directions unless "commands only"; loss is a seeded drop
# pattern that spares the hello.  Each row runs its commands over independent lanes, all rows
# at once in one event loop.
from __future__ import annotations

import asyncio
import collections
import dataclasses
import functools
import random
from dataclasses import dataclass, field
from typing import Any

from cyncsim import ChaosConfig, DeviceModel, load_default_model
from cyncsim.tools.bench import simkit
from cyncsim.tools.bench.common import BenchOptions, Check, Column, Log, SuiteResult, SuiteSpec

__all__ = ["DEFAULT_TIMEOUT", "ROWS", "SPEC", "TIMEOUT_RULE", "Row", "Size", "chaos_config", "run"]

TIMEOUT_RULE = 2.5  # ack timeout = p99 x 2.5 (the spec's rule)
DEFAULT_TIMEOUT = 2.0  # ReliableTransport's default ack_timeout_seconds
SEED = 23


@dataclass(frozen=True, slots=True)
class Row:
    name: str
    loss: float = 0.0  # Bernoulli drop rate per packet
    faults: dict[str, float] = field(default_factory=dict)  # other per-packet chaos fields
    commands_only: bool = False  # faults on to_device only
    default_timeout: bool = False  # the transport's default ack timeout, not the rule's
    max_retries: int = 3  # ReliableTransport's default
    success_target: float = 0.99
    p99_target_ms: float = 1500.0
    checked: bool = True  # one of the spec's matrix rows


ROWS = (
    Row("baseline", success_target=0.999, p99_target_ms=800.0),
    Row("5% loss", loss=0.05),
    Row("20% loss", loss=0.20),
    Row("500 ms latency", faults={"latency_ms": 500.0}),
    Row("50% duplicates", faults={"duplicate_rate": 0.5}),
    Row("30% reorder", faults={"reorder_rate": 0.3}),
    Row(
        "combined",
        loss=0.10,
        faults={"latency_ms": 100.0, "duplicate_rate": 0.1, "reorder_rate": 0.1},
        success_target=0.98,
    ),
    Row("20% loss, commands only", loss=0.20, commands_only=True, checked=False),
    Row("20% loss, 5 retries", loss=0.20, max_retries=5, checked=False),
    Row("20% loss, 2.0 s timeout", loss=0.20, default_timeout=True, checked=False),
    Row(
        "500 ms latency, 2.0 s timeout",
        faults={"latency_ms": 500.0},
        default_timeout=True,
        checked=False,
    ),
)


@dataclass(frozen=True, slots=True)
class Size:
    lanes: int
    per_lane: int


SPEC = SuiteSpec(
    "chaos",
    full=Size(20, 50),
    quick=Size(40, 5),
    columns=[
        Column("name", "row"),
        Column("commands", "cmds", ",d"),
        Column("success", "success", ".2%"),
        *Column.latency(spec=",.0f"),
        Column("retransmit_rate", "retx rate", ".1%"),
        Column("timeouts", "timeouts", ",d"),
        Column("p99_vs_baseline", "p99/base", ".2f"),
        Column("passed", "targets"),
    ],
)


def drop_pattern(rate: float, packets: int, seed: int) -> list[int]:
    """Packet numbers 2..packets, each dropped with probability ``rate`` (seeded)."""
    rng = random.Random(seed)
    return [n for n in range(2, packets + 1) if rng.random() < rate]


def chaos_config(row: Row, lane: int, commands: int) -> ChaosConfig | None:
    """The ChaosConfig of ``row`` for lane number ``lane`` (its own drop patterns)."""
    if not (row.loss or row.faults):
        return None
    span = 12 * commands + 200  # more packets than a lane can send either way

    def faults(seed: int) -> dict[str, Any]:
        pattern = drop_pattern(row.loss, span, SEED * 10**7 + seed) if row.loss else []
        return {"drop_pattern": pattern, **row.faults}

    quiet = {} if row.commands_only else faults(2 * lane + 1)
    return ChaosConfig.from_dict({"to_device": faults(2 * lane), "from_device": quiet})


def cloud_variant_model(model: DeviceModel, variant: str = "cloud") -> DeviceModel:
    """``model`` restricted to one setup variant."""
    exchanges = [e for e in model.exchanges if e.variant == variant]
    if not exchanges:
        raise ValueError(f"the model has no exchanges of variant {variant!r}")
    behaviour = {v: b for v, b in model.behaviour.items() if v == variant}
    return dataclasses.replace(model, exchanges=exchanges, behaviour=behaviour)


@functools.cache
def chaos_model() -> DeviceModel:
    """The shipped model restricted to its real-cloud variant (made once)."""
    return cloud_variant_model(load_default_model())


async def _row(row: Row, r: int, size: Size, rule_timeout: float) -> dict[str, Any]:
    timeout = DEFAULT_TIMEOUT if row.default_timeout else rule_timeout
    kw: dict[str, Any] = {"model": chaos_model(), "time_scale": 1.0, "ack_timeout_seconds": timeout}
    kw |= {"max_retries": row.max_retries, "handshake_timeout_seconds": 60.0}
    chaos = functools.partial(chaos_config, row, commands=size.per_lane)  # by lane number
    async with simkit.lanes(size.lanes, first=r * 100, seed=SEED, chaos=chaos, **kw) as group:
        await asyncio.gather(*(lane.commands(size.per_lane) for lane in group))
    faults = collections.Counter[str]()
    for policy in (lane.device.chaos_policy for lane in group if lane.device.chaos_policy):
        faults.update(policy.fault_counts())
    out: dict[str, Any] = {"name": row.name, "checked": row.checked, "loss": row.loss}
    out |= row.faults
    out["directions"] = "to_device" if row.commands_only else "both"
    out |= {"ack_timeout_s": timeout, "max_retries": row.max_retries, "lanes": size.lanes}
    out |= simkit.command_summary(group)
    out["applied"] = sum(lane.device.state.toggle_count for lane in group)
    out["duplicate_acks"] = sum(lane.transport.stats.duplicate_acks for lane in group)
    targets = {"success_target": row.success_target, "p99_target_ms": row.p99_target_ms}
    return out | {"faults": dict(faults), **targets}


async def _run(size: Size, rule_timeout: float) -> tuple[list[dict[str, Any]], Any]:
    async with simkit.loop_health() as health:
        rows = await asyncio.gather(*(_row(r, i, size, rule_timeout) for i, r in enumerate(ROWS)))
    return list(rows), health


def run(opts: BenchOptions, log: Log) -> SuiteResult:
    size = SPEC.size(opts)
    sampled = simkit.device_view(chaos_model()).split("0x73:f8:d0").acks[0].delay
    learned = simkit.learned_summary(sampled)
    rule_timeout = TIMEOUT_RULE * sampled.quantile(0.99)
    what = f"{len(ROWS)} rows x {size.lanes} lanes x {size.per_lane} commands, all at once"
    log(f"chaos: {what} (ack timeout {rule_timeout:.3f} s by the rule)")
    rows, health = asyncio.run(_run(size, rule_timeout))
    base = rows[0]
    checks: list[Check] = []
    for spec, row in zip(ROWS, rows, strict=True):
        row["p99_vs_baseline"] = row["p99_ms"] / base["p99_ms"]
        row["p50_vs_baseline"] = row["p50_ms"] / base["p50_ms"]
        row["min_retransmit_rate"] = 1 - (1 - spec.loss) ** (1 if spec.commands_only else 2)
        row["applied_twice"] = max(0, row["applied"] - row["commands"])
        ok = row["success"] >= spec.success_target and row["p99_ms"] <= spec.p99_target_ms
        row["passed"] = (ok and row["applied_twice"] == 0) if spec.checked else None
        if spec.checked:
            checks += [
                Check(f"{spec.name} p99", row["p99_ms"], spec.p99_target_ms, "<=", " ms", ",.0f"),
                Check(f"{spec.name} success", row["success"], spec.success_target, ">=", "", ".4f"),
            ]
    twice = sum(r["applied_twice"] for r in rows)
    checks.append(Check("commands applied twice (all rows)", twice, 0, "<=", "", ",d"))
    title = (
        f"the spec's chaos matrix, {size.lanes * size.per_lane:,} toggles per row, real-cloud "
        f"device latency, ack timeout {rule_timeout:.3f} s (2.5 x learned p99)"
    )
    model = "shipped default model restricted to its real-cloud variant"
    params: dict[str, Any] = {"lanes": size.lanes, "commands_per_lane": size.per_lane, "seed": SEED}
    params |= {"time_scale": 1.0, "model": model, **learned, "ack_timeout_rule_s": rule_timeout}
    params |= {"max_retries": 3, **health}
    p = params
    notes = [
        f"device 0x7B (real-cloud variant) p50 {p['learned_p50_ms']:.0f} ms, p99 "
        f"{p['learned_p99_ms']:.0f} ms; {p['cpu_utilisation']:.0%} of a core over "
        f"{p['wall_s']:.0f} s, loop timers late by {p['loop_late_p99_ms']:.1f} ms (p99)",
    ]
    for row in (r for r in rows if r["loss"]):  # q: a round trip lost
        q, tries = row["min_retransmit_rate"], row["max_retries"] + 1
        notes.append(f"{row['name']}: expected success 1 - q^{tries} = {1 - q**tries:.2%}")
    return SPEC.result(opts, title, rows, checks, params, notes)
