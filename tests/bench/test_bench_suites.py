# The bench's helpers: percentiles, the KS distance (scipy), the chaos rows' configs, the
# asyncio meters, the report's tables and blocks.  No timing asserts: the machines are shared.
from __future__ import annotations

import asyncio
import math
import random

import numpy as np
import pytest
import scipy.stats

from cyncsim import CyncError, load_default_model
from cyncsim.replay.model import Distribution, StratifiedUniform
from cyncsim.tools.bench import chaos_suite as chaos
from cyncsim.tools.bench import fuzz_suite as fuzz
from cyncsim.tools.bench.acks_suite import TimerAudit
from cyncsim.tools.bench.chaos_suite import cloud_variant_model
from cyncsim.tools.bench.common import Column, format_table
from cyncsim.tools.bench.report import update_document
from cyncsim.tools.bench.simkit import (
    GRID,
    LockMeter,
    device_view,
    ks,
    ks_random,
    loop_lateness,
    percentile,
    summary,
)

pytestmark = pytest.mark.bench


# ---------------------------------------------------------------------------- helpers
def test_percentiles_match_the_learned_distribution_rule() -> None:
    vals = [0.3, 0.1, 0.2, 0.4]
    dist = Distribution.from_samples(vals)
    for q in (0.0, 0.25, 0.5, 0.99, 1.0):
        assert math.isclose(percentile(vals, q), dist.quantile(q))
    s = summary(vals)
    assert math.isclose(s["p50_ms"], 250.0) and math.isclose(s["max_ms"], 400.0)
    assert math.isclose(s["p90_ms"], dist.quantile(0.9) * 1e3)
    assert math.isclose(summary(vals, "us", "x_")["x_p99_us"], dist.quantile(0.99) * 1e6)
    assert math.isnan(percentile([], 0.5)) and math.isnan(summary([])["p99_ms"])


def test_ks_is_the_distance_to_the_sampled_piecewise_linear_cdf() -> None:
    dist = Distribution.from_samples([0.01, 0.02, 0.05, 0.1, 0.4])
    tol = 1 / GRID  # the grid's empirical CDF is within 0.5 / GRID of the sampled CDF
    rng = StratifiedUniform(random.Random(5), strata=100)
    draws = [dist.sample(rng) for _ in range(1000)]
    # the same figure as scipy's one-sample test against that CDF, written out here
    xs, ps = list(dist.values), np.linspace(0.0, 1.0, len(dist.values))
    exact = scipy.stats.kstest(draws, lambda x: np.interp(x, xs, ps)).statistic
    assert abs(ks(draws, dist) - exact) <= tol
    assert ks(draws, dist) < 0.01  # stratified draws follow the CDF closely
    assert ks([x + 0.005 for x in draws], dist) > 0.1  # a shift is seen
    at_quantiles = [dist.quantile((i + 0.5) / 200) for i in range(200)]
    assert abs(ks(at_quantiles, dist) - 0.5 / 200) <= tol
    assert abs(ks([x * 2 for x in draws], dist, scale=2.0) - ks(draws, dist)) <= tol
    # repeated values are spread, not a jump (dist.py, Ties): the run 0, 0, 0 is one knot at
    # rank 0, so the CDF of [0, 0, 0, 1] is linear from 0 to 1 and F(0.5) = 0.5
    tied = Distribution.from_samples([0.0, 0.0, 0.0, 1.0])
    assert abs(ks([0.5] * 10, tied) - 0.5) <= tol
    assert abs(ks([0.25, 0.75], tied) - 0.25) <= tol
    assert math.isnan(ks([], dist))
    # the median KS of n random draws is scipy's Kolmogorov distribution
    assert ks_random(300) == scipy.stats.kstwo.ppf(0.5, 300)
    assert math.isclose(ks_random(20), 0.17734150203326088, rel_tol=1e-6)


def test_cloud_variant_model_answers_toggles_with_the_cloud_0x7b() -> None:
    model = cloud_variant_model(load_default_model())
    assert {e.variant for e in model.exchanges} == {"cloud"}
    plan = device_view(model).split("0x73:f8:d0").acks[0]
    cloud_ack = next(
        r
        for e in load_default_model().exchanges
        if e.role == "device" and e.variant == "cloud"
        for r in e.responses
        if r.key == "0x7b"
    )
    assert plan.delay == cloud_ack.latency
    with pytest.raises(ValueError, match="no exchanges of variant"):
        cloud_variant_model(load_default_model(), "nowhere")


def test_drop_patterns_spare_the_handshake_and_follow_the_rate() -> None:
    pattern = chaos.drop_pattern(0.2, 20_000, seed=3)
    assert 1 not in pattern and pattern == sorted(set(pattern))
    assert 0.18 < len(pattern) / 20_000 < 0.22
    assert chaos.drop_pattern(0.2, 20_000, seed=3) == pattern
    cfg = chaos.chaos_config(chaos.ROWS[2], lane=0, commands=10)
    assert cfg is not None and cfg.to_device is not None and cfg.from_device is not None
    assert cfg.to_device.drop_pattern != cfg.from_device.drop_pattern
    only = chaos.chaos_config(chaos.ROWS[7], lane=0, commands=10)
    assert only is not None and only.from_device is not None
    assert only.from_device.drop_pattern == ()
    assert chaos.chaos_config(chaos.ROWS[0], lane=0, commands=10) is None


async def test_lock_meter_counts_asyncio_locks_and_restores_them() -> None:
    original = asyncio.Lock.acquire
    lock, sem = asyncio.Lock(), asyncio.Semaphore(2)
    meter = LockMeter()
    with meter.active():
        async with lock:
            await asyncio.sleep(0.01)
        async with sem:
            pass
    assert meter.acquisitions == 2 and dict(meter.by_class) == {"Lock": 1, "Semaphore": 1}
    assert meter.held_s > 0
    assert asyncio.Lock.acquire is original
    async with lock:  # no longer counted
        pass
    assert meter.acquisitions == 2


async def test_loop_lateness_and_timer_audit_never_report_early_timers() -> None:
    late = await loop_lateness(5, 0.001, 0.003)
    assert len(await loop_lateness(3, 0.001, 0.003, sleep=True)) == 3
    assert len(late) == 5 and min(late) >= 0
    audit = TimerAudit()
    audit.observe("out", b"never asked")  # not an answer the engine made: ignored
    assert not audit.late


def test_markdown_table_and_document_blocks() -> None:
    table = format_table(
        [Column("a", "A"), Column("b", "B", ".1f"), Column("ok", "ok")],
        [{"a": "x|y", "b": 1.25, "ok": True}, {"a": "z", "b": None, "ok": False}],
        markdown=True,
    )
    assert table.splitlines() == [
        "| A | B | ok |",
        "| --- | ---: | --- |",
        "| x\\|y | 1.2 | PASS |",
        "| z | - | FAIL |",
    ]
    doc = "intro\n<!-- bench:one -->\nold\n<!-- /bench:one -->\nend\n"
    new = update_document(doc, {"one": "new\n", "two": "added\n"})
    assert new.startswith("intro\n<!-- bench:one -->\nnew\n<!-- /bench:one -->\nend")
    assert new.endswith("## two\n\n<!-- bench:two -->\nadded\n<!-- /bench:two -->\n")


def test_fuzz_is_seeded_and_counts_untyped_exceptions_with_their_input() -> None:
    seeds = fuzz.seed_packets(None)
    assert len(seeds) > 10 and all(s[1:3] == b"\0\0" for s in seeds)
    a, b = random.Random(1), random.Random(1)
    assert [fuzz.mutate(a, seeds) for _ in range(200)] == [
        fuzz.mutate(b, seeds) for _ in range(200)
    ]

    def broken(rng: random.Random, data: bytes) -> None:
        if len(data) % 2:
            raise KeyError("odd")
        if not data:
            raise CyncError("empty")  # typed: counted, not listed

    targets = {"broken": lambda: broken, **{k: fuzz.TARGETS[k] for k in list(fuzz.TARGETS)[:1]}}
    tallies, first, kinds = fuzz.fuzz(300, seeds, targets, lambda _: None)
    assert sum(kinds.values()) == 300
    odd = tallies["broken"].untyped
    assert odd > 0 and tallies["decode_packet strict"].untyped == 0
    assert len(first) == min(odd, fuzz.LISTED)
    assert all(f["target"] == "broken" and "KeyError" in f["exception"] for f in first)
    assert all(len(bytes.fromhex(f["input"])) % 2 == 1 for f in first)
