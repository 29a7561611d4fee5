# `cyncsim bench all --quick --json FILE` at its real reduced sizes, run once: it completes,
# the JSON holds every suite and is strict, and every derived number (rates, ratios,
# percentiles, pass/fail) follows from the measured samples.  No timing asserts: the machines
# are shared.  The tests share one run (about 2 min) in one xdist group; `make test` runs the
# bench tests on their own before the others, so the suites have the machine to themselves.
from __future__ import annotations

import importlib.util
import io
import json
import math
import statistics
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cyncsim.replay.model import Distribution
from cyncsim.tools.bench import acks_suite as acks
from cyncsim.tools.bench import baseline_suite as baseline
from cyncsim.tools.bench import chaos_suite as chaos
from cyncsim.tools.bench import fleet_suite as fleet
from cyncsim.tools.bench import fuzz_suite as fuzz
from cyncsim.tools.bench import group_suite as group
from cyncsim.tools.bench import overhead_suite as overhead
from cyncsim.tools.bench import startup_suite as startup
from cyncsim.tools.bench.common import SUITES
from cyncsim.tools.bench.report import main as report_main
from cyncsim.tools.bench.simkit import ks, percentile
from cyncsim.tools.cli import main

SIM_SUITES = ["baseline", "acks", "chaos", "group", "overhead", "fleet", "startup", "fuzz"]
pytestmark = [pytest.mark.slow, pytest.mark.bench, pytest.mark.xdist_group("bench_quick")]


def _strict(text: str) -> Any:
    """json.loads that refuses NaN and infinities (the JSON must be strict)."""

    def bad(name: str) -> None:
        raise ValueError(f"non-strict JSON constant {name}")

    return json.loads(text, parse_constant=bad)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dict[str, Any], str]]:
    """`cyncsim bench all --quick --json FILE`, the real reduced sizes: it completes, every
    suite is in its JSON, and the JSON is strict."""
    dest = tmp_path_factory.mktemp("bench") / "all.json"
    out = io.StringIO()
    code = main(["bench", "all", "--quick", "--json", str(dest)], out=out)
    assert code == 0
    yield _strict(dest.read_text()), out.getvalue()


def _suite(run: tuple[dict[str, Any], str], name: str) -> dict[str, Any]:
    obj, _ = run
    found = [s for s in obj["suites"] if s["suite"] == name]
    assert len(found) == 1, f"suite {name} missing or doubled"
    suite: dict[str, Any] = found[0]
    assert suite["quick"] is True and suite["rows"] and suite["title"]
    for c in suite["checks"]:
        value, target = c["value"], c["target"]
        if value is None:  # NaN in the run: null in strict JSON, and never a pass
            assert c["passed"] is False, c
            continue
        want = (value >= target) if c["op"] == ">=" else (value <= target)
        assert c["passed"] is want, c
    all_met = all(c["passed"] for c in suite["checks"]) if suite["checks"] else None
    assert suite["passed"] is all_met
    return suite


def _ordered(row: dict[str, Any], prefix: str = "") -> None:
    vals = [row[f"{prefix}{k}_ms"] for k in ("p50", "p90", "p95", "p99", "max")]
    assert all(v is not None for v in vals), row
    assert vals == sorted(vals), row


# ---------------------------------------------------------------------------- tiny runs
def test_bench_all_runs_every_suite_and_prints_each(quick_run: tuple[dict[str, Any], str]) -> None:
    obj, printed = quick_run
    assert set(obj) == {"machine", "suites"}
    assert [s["suite"] for s in obj["suites"]] == list(SUITES)
    assert set(SIM_SUITES) <= set(SUITES)
    for name in SUITES:
        assert f"== bench {name} (quick)" in printed


def test_baseline_rows(quick_run: tuple[dict[str, Any], str]) -> None:
    suite = _suite(quick_run, "baseline")
    rows = {r["name"]: r for r in suite["rows"]}
    assert list(rows) == ["toggle", "light", "back to back", "no delay"]
    for name in ("toggle", "light", "back to back"):
        r = rows[name]
        assert r["commands"] == baseline.SPEC.quick.learned and r["time_scale"] == 1.0
        assert len(r["samples_ms"]) == r["acked"]
        assert r["success"] == r["acked"] / baseline.SPEC.quick.learned
        kind = "service" if name == "back to back" else "idle latency"
        assert r["learned_kind"] == kind and r["learned_values"] == len(r["learned_ms"])
        assert math.isclose(r["p99_ms"], percentile(r["samples_ms"], 0.99))
        assert math.isclose(r["vs_learned_p99"], r["p99_ms"] / r["learned_p99_ms"])
        _ordered(r)
        _ordered(r, "learned_")
    nd = rows["no delay"]
    assert nd["repeats"] == 3 == len(nd["per_s_samples"]) and nd["time_scale"] == 0.0
    assert nd["commands"] == baseline.SPEC.quick.no_delay * nd["repeats"]
    assert nd["per_s"] == statistics.median(nd["per_s_samples"])
    checks = {c["name"]: c for c in suite["checks"]}
    assert checks["toggle p99"]["value"] == rows["toggle"]["p99_ms"]
    assert checks["toggle p99"]["target"] == 800.0


def test_acks_rows(quick_run: tuple[dict[str, Any], str]) -> None:
    suite = _suite(quick_run, "acks")
    assert [(r["loop"], r["name"]) for r in suite["rows"]] == [
        (loop, k.name) for loop in acks.LOOPS for k in acks.KINDS
    ]
    for r in suite["rows"]:
        assert r["n"] == acks.SPEC.quick.requests == len(r["samples_ms"])
        assert math.isclose(r["p50_ms"], percentile(r["samples_ms"], 0.5))
        learned = Distribution.from_samples(v / 1e3 for v in r["learned_ms"])
        again = ks([x / 1e3 for x in r["samples_ms"]], learned)
        assert math.isclose(r["ks"], again, abs_tol=1e-9)
        assert r["ks_ok"] is (r["ks_own"] is not None and r["ks_own"] <= acks.TARGET_KS)
        assert r["p99_ok"] is (abs(r["p99_err_ms"]) <= r["p99_tol_ms"])
        assert r["late_min_us"] is not None and r["min_margin_us"] is not None
        assert r["ks_off"] is not None and r["min_margin_off_us"] is not None
        assert r["min_over_floor_us"] >= 0  # never before request + learned minimum (built in)
        device = "idle latency" if r["answered_by"] == "device" else "latency"
        assert r["learned_kind"] == device  # a device idle: its next command waits for the f9
    timers = suite["details"]["timer lateness (written at minus asked for)"]
    names = {(t["loop"], t["name"]) for t in timers}
    for loop in acks.LOOPS:
        assert (loop, "simulator answers") in names
        assert (loop, "loop.call_at, during the run") in names
        assert (loop, "simulator answers, compensation off") in names
    answers = [t for t in timers if t["name"] == "simulator answers"]
    assert all(t["n"] == acks.SPEC.quick.requests * len(acks.KINDS) for t in answers)


def test_chaos_rows(quick_run: tuple[dict[str, Any], str]) -> None:
    suite = _suite(quick_run, "chaos")
    assert [r["name"] for r in suite["rows"]] == [row.name for row in chaos.ROWS]
    base = suite["rows"][0]
    timeout = suite["params"]["ack_timeout_rule_s"]
    assert math.isclose(timeout, chaos.TIMEOUT_RULE * suite["params"]["learned_p99_ms"] / 1e3)
    for spec, r in zip(chaos.ROWS, suite["rows"], strict=True):
        assert r["commands"] == chaos.SPEC.quick.lanes * chaos.SPEC.quick.per_lane
        assert r["lanes"] == chaos.SPEC.quick.lanes
        assert r["ack_timeout_s"] == (chaos.DEFAULT_TIMEOUT if spec.default_timeout else timeout)
        assert r["max_retries"] == spec.max_retries
        assert r["retransmit_rate"] == r["retransmits"] / r["commands"]
        assert r["applied"] <= r["commands"] and r["applied_twice"] == 0
        assert r["directions"] == ("to_device" if spec.commands_only else "both")
        assert math.isclose(r["p99_vs_baseline"], r["p99_ms"] / base["p99_ms"])
        if spec.checked:
            ok = r["success"] >= spec.success_target and r["p99_ms"] <= spec.p99_target_ms
            assert r["passed"] is ok
        else:
            assert r["passed"] is None
        if spec.loss:
            assert r["faults"].get("drop", 0) > 0 or r["retransmits"] == 0
        if spec.faults.get("duplicate_rate", 0) >= 0.5:
            assert r["faults"].get("duplicate", 0) > 0
    assert base["faults"] == {} and base["retransmits"] == 0


def test_group_rows(quick_run: tuple[dict[str, Any], str]) -> None:
    suite = _suite(quick_run, "group")
    rows = {r["name"]: r for r in suite["rows"]}
    assert list(rows) == ["learned latency", "no delay"]
    assert rows["learned latency"]["rounds"] == group.SPEC.quick.rounds
    assert rows["no delay"]["rounds"] == group.SPEC.quick.no_delay_rounds
    for r in rows.values():
        assert r["commands"] == r["rounds"] * group.DEVICES
        assert len(r["round_samples_ms"]) == r["rounds"]
        # a round ends with its last ACK: never shorter than any of its commands' median
        assert r["round_max_ms"] >= r["p50_ms"]
        assert r["lock_acquisitions"] == 0 and r["lock_held_ms"] == 0.0
    learned = rows["learned latency"]
    assert math.isclose(
        learned["round_p50_vs_expected"],
        learned["round_p50_ms"] / learned["expected_round_p50_ms"],
    )


def test_overhead_rows(quick_run: tuple[dict[str, Any], str]) -> None:
    suite = _suite(quick_run, "overhead")
    params = suite["params"]
    assert params["request_bytes"] == 36 and params["answer_bytes"] == 78
    rows = {(r["name"], r["connections"]): r for r in suite["rows"]}
    for kind in overhead.SERVERS:
        one, many = rows[(kind, 1)], rows[(kind, overhead.SPEC.quick.connections)]
        assert one["p50_us"] > 0 and many["per_s"] > 0
        assert math.isclose(one["p50_vs_buffered"], one["p50_us"] / rows[("buffered", 1)]["p50_us"])
        floor = rows[("floor", overhead.SPEC.quick.connections)]
        assert math.isclose(many["rate_vs_floor"], many["per_s"] / floor["per_s"])
    assert rows[("engine only", 0)]["p50_us"] > 0
    checks = {c["name"]: c for c in suite["checks"]}
    assert (
        checks["simulator p50 / buffered p50 (1 conn)"]["value"]
        == rows[("simulator", 1)]["p50_vs_buffered"]
    )


def test_fleet_rows(quick_run: tuple[dict[str, Any], str]) -> None:
    suite = _suite(quick_run, "fleet")
    size = fleet.SPEC.quick
    rows = [r for r in suite["rows"] if r["engine"] != "ray"]
    one_process = [r for r in rows if r["engine"] == "process"]
    assert [r["devices"] for r in one_process] == list(size.devices)
    assert one_process[0]["name"] == f"{size.devices[0]:,} devices"
    assert all(r["time_scale"] == size.time_scale for r in suite["rows"])
    for r in rows:
        assert r["connected"] == r["devices"]
        assert r["loop_late_p99_ms"] >= 0
        assert r["rss_mb"] > 0 and r["kib_per_device"] is not None
        assert r["packets_in"] > 0 and r["packets_out"] > 0
        view = "ctrl_err" if r["workers"] else "hb_err"  # workers: the controller's view only
        if r["heartbeats"]:
            assert r[f"{view}_p50_ms"] <= r[f"{view}_p99_ms"] <= r[f"{view}_max_ms"]
        if r["workers"]:
            assert r["devices"] == size.worker_devices and r["engine"] == "workers"
            assert r["hb_err_p99_ms"] is None and r["processes"] == r["workers"]
        else:
            assert r["processes"] == 1
    (cmd,) = [r for r in rows if r["engine"] == "commands"]  # toggles at 100/s per 1,000
    assert cmd["devices"] == size.commands[0] and cmd["commands_per_s"] == cmd["devices"] / 10
    assert 0 < cmd["acked"] <= cmd["commands"] and cmd["ack_p50_ms"] <= cmd["ack_p99_ms"]
    assert cmd["devices_per_core"] == cmd["devices"] / cmd["cpu"]
    ray = [r for r in suite["rows"] if r["engine"] == "ray"]
    if importlib.util.find_spec("ray") is None:
        assert not ray and any(n.startswith("no ray row") for n in suite["notes"])
    else:  # the ray row: its shards' own heartbeat timing, memory of actors and driver
        (r,) = ray
        shards, per_shard = size.ray
        assert r["processes"] == shards and r["devices"] == r["connected"] == shards * per_shard
        assert r["heartbeats"] > 0 and r["packets_in"] > 0
        assert r["hb_err_min_ms"] <= r["hb_err_p50_ms"] <= r["hb_err_p99_ms"] <= r["hb_err_max_ms"]
        assert r["kib_per_device"] > 0 and r["driver_kib_per_device"] is not None
        assert math.isclose(r["connect_per_s"], r["devices"] / r["connect_s"])
    assert suite["params"]["time_scale"] == size.time_scale
    idle = fleet.expected_idle(size.time_scale)[0]
    assert math.isclose(suite["params"]["heartbeat_idle_s"], idle)


def test_report_and_plots_from_the_run(
    quick_run: tuple[dict[str, Any], str], tmp_path: Path
) -> None:
    obj, _ = quick_run
    src = tmp_path / "all.json"
    src.write_text(json.dumps(obj))
    doc = tmp_path / "docs" / "performance.md"
    doc.parent.mkdir()
    doc.write_text(
        "# Performance\n\nprose kept\n\n<!-- bench:summary -->\nold\n<!-- /bench:summary -->\n"
        "\n## acks\n\n<!-- bench:acks -->\nold acks\n<!-- /bench:acks -->\n\ntail prose\n"
    )
    img = tmp_path / "docs" / "img"
    assert report_main([str(src), "--doc", str(doc), "--img", str(img)]) == 0
    text = doc.read_text()
    assert "prose kept" in text and "tail prose" in text and "old acks" not in text
    for name in SUITES:
        assert text.count(f"<!-- bench:{name} -->") == 1
        assert text.count(f"<!-- /bench:{name} -->") == 1
    assert "| loop | exchange |" in text and "![acks](img/acks-cdf.png)" in text
    pngs = sorted(p.name for p in img.glob("*.png"))
    assert pngs == [
        "acks-cdf.png",
        "baseline-cdf.png",
        "chaos-p99.png",
        "fleet.png",
        "overhead.png",
    ]
    assert all((img / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    # a second run rewrites the blocks in place: nothing is appended twice
    assert report_main([str(src), "--doc", str(doc), "--img", str(img)]) == 0
    assert doc.read_text() == text


def test_startup_rows(quick_run: tuple[dict[str, Any], str]) -> None:
    suite = _suite(quick_run, "startup")
    rows = {r["name"]: r for r in suite["rows"]}
    assert list(rows) == ["python -c pass", "cyncsim --help", "cyncsim inspect"]
    base = rows["python -c pass"]["median_s"]
    for r in rows.values():
        assert len(r["samples_s"]) == startup.SPEC.quick == 5
        assert r["median_s"] == statistics.median(r["samples_s"]) and r["median_s"] > 0
        assert math.isclose(r["vs_baseline"], r["median_s"] / base)
        assert r["min_s"] <= r["median_s"] <= r["max_s"]
    checks = {c["name"]: c for c in suite["checks"]}
    assert set(checks) == {"cyncsim --help median", "cyncsim inspect median"}
    for name in ("cyncsim --help", "cyncsim inspect"):
        assert checks[f"{name} median"]["value"] == rows[name]["median_s"]
        assert checks[f"{name} median"]["target"] == startup.TARGET_S == 0.3


def test_fuzz_rows(quick_run: tuple[dict[str, Any], str]) -> None:
    suite = _suite(quick_run, "fuzz")
    n = fuzz.SPEC.quick
    rows = {r["name"]: r for r in suite["rows"]}
    assert list(rows) == [*fuzz.TARGETS, "all targets"]
    for r in rows.values():
        assert r["inputs"] == n == suite["params"]["inputs"] and r["seconds"] > 0
        assert math.isclose(r["per_s"], r["inputs"] / r["seconds"])
        assert 0 <= r["typed"] + r["untyped"] <= n * (1 if r["name"] != "all targets" else 5)
    total = rows.pop("all targets")
    for key in ("typed", "untyped", "seconds"):
        assert math.isclose(total[key], sum(r[key] for r in rows.values()))
    assert rows["decode_packet strict"]["typed"] > 0  # mutated packets are refused, typed
    assert sum(suite["params"]["mutations"].values()) == n
    listed = suite["details"].get(fuzz.FIRST, [])
    assert len(listed) == sum(min(r["untyped"], fuzz.LISTED) for r in rows.values())
    (check,) = suite["checks"]
    assert check["value"] == total["untyped"] and check["target"] == 0
    assert total["untyped"] == 0, listed


# ---------------------------------------------------------------------------- the real quick run
def test_every_suite_records_the_machine(quick_run: tuple[dict[str, Any], str]) -> None:
    obj, _ = quick_run
    for suite in obj["suites"]:
        assert suite["checks"] is not None
        assert {"python", "cpu_count"} <= set(suite["machine"])
