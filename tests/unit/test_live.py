# Tests of serve's live view, without sockets: the status line rendered from RunStats
# snapshots, the Prometheus families built from a RunStats, and the --metrics address checks.
from __future__ import annotations

import argparse

import pytest

from cyncsim.replay.errors import CyncError
from cyncsim.replay.stats import LatencyHistogram, RunStats
from cyncsim.tools._live import check_live, parse_metrics_address, render_status
from cyncsim.tools._metrics import LATENCY_BUCKETS, metric_families


def _hist(*samples: float) -> LatencyHistogram:
    h = LatencyHistogram()
    for s in samples:
        h.record(s)
    return h


def _stats(commands: int, answers: int) -> RunStats:
    return RunStats(
        devices=4,
        connected=3,
        connections=5,
        packets_in=40,
        packets_out=90,
        commands=commands,
        answers=answers,
        faults={"drop": 2, "delay": 1},
        latency={
            "0x73:f8:d0": _hist(*[0.002] * 98, 0.05, 0.05),
            "0xd3": _hist(0.002, 0.002),
        },
    )


def test_status_line_rates_from_two_snapshots() -> None:
    before, now = _stats(10, 30), _stats(30, 90)
    line = render_status(now, before, 2.0, 3725.0)
    assert line == (
        "1:02:05  3/4 connected, 10.0 commands/s, 30.0 answers/s, 3 faults, "
        "answer p50 2 ms p99 50 ms"
    )


def test_status_line_before_anything_happened() -> None:
    line = render_status(RunStats(devices=2))
    assert line == "0:00:00  0/2 connected, - commands/s, - answers/s, 0 faults, answer p50 - p99 -"


def test_metric_families_of_a_run() -> None:
    stats = _stats(12, 40)
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in metric_families(stats)
        for s in family.samples
    }
    assert samples["cyncsim_devices", ()] == 4
    assert samples["cyncsim_devices_connected", ()] == 3
    assert samples["cyncsim_connections_total", ()] == 5
    assert samples["cyncsim_packets_total", (("direction", "in"),)] == 40
    assert samples["cyncsim_packets_total", (("direction", "out"),)] == 90
    assert samples["cyncsim_commands_total", ()] == 12
    assert samples["cyncsim_answers_total", ()] == 40
    assert samples["cyncsim_faults_total", (("kind", "drop"),)] == 2
    kind = (("request", "0x73:f8:d0"),)
    assert samples["cyncsim_answer_latency_seconds_count", kind] == 100
    assert samples["cyncsim_answer_latency_seconds_sum", kind] == pytest.approx(0.296)
    buckets = [
        samples["cyncsim_answer_latency_seconds_bucket", (("le", f"{le:g}"), *kind)]
        for le in LATENCY_BUCKETS
    ]
    assert buckets == sorted(buckets)
    assert samples["cyncsim_answer_latency_seconds_bucket", (("le", "0.001"), *kind)] == 0
    assert samples["cyncsim_answer_latency_seconds_bucket", (("le", "0.0025"), *kind)] == 98
    assert samples["cyncsim_answer_latency_seconds_bucket", (("le", "0.05"), *kind)] == 100
    assert samples["cyncsim_answer_latency_seconds_bucket", (("le", "+Inf"), *kind)] == 100


@pytest.mark.parametrize(
    ("text", "expected"),
    [("127.0.0.1:0", ("127.0.0.1", 0)), ("[::1]:9464", ("::1", 9464)), ("localhost:1", None)],
)
def test_metrics_address(text: str, expected: tuple[str, int] | None) -> None:
    assert parse_metrics_address(text) == (expected or ("localhost", 1))


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("10.0.0.1:9464", "not a loopback address"),
        ("0.0.0.0:9464", "not a loopback address"),
        ("127.0.0.1", "expected HOST:PORT"),
        ("127.0.0.1:70000", "expected HOST:PORT"),
    ],
)
def test_metrics_address_refused(text: str, needle: str) -> None:
    with pytest.raises(CyncError, match=needle) as info:
        parse_metrics_address(text)
    assert info.value.reason == "usage" and "\n" not in str(info.value)


def test_metrics_not_with_cloud() -> None:
    with pytest.raises(CyncError, match="not --cloud"):
        check_live(argparse.Namespace(metrics="127.0.0.1:0", cloud=True))
    check_live(argparse.Namespace(metrics=None, cloud=True))
