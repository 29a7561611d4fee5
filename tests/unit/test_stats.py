# Tests of replay.stats: a merged histogram is the histogram of the union of the samples,
# quantiles hold to the stated resolution, and RunStats merges, sums and round-trips.
from __future__ import annotations

import json
import math
import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cyncsim.replay.engine import Close, Relay, Send
from cyncsim.replay.payloads import PowerCommand
from cyncsim.replay.stats import (
    GROWTH,
    MIN_S,
    AnswerMeter,
    LatencyHistogram,
    RunStats,
    bucket_bounds,
    request_kind,
)
from tests.support import (
    CONTROL,
    FW_DEVICE,
    HELLO_ACK,
    MESH_REQ,
    POWER_OFF,
    RESULT_BRI,
    marker,
    request_of,
)

_latency = st.floats(min_value=0.0, max_value=900.0, allow_nan=False, allow_infinity=False)
_samples = st.lists(_latency, max_size=200)


def _hist(samples: list[float]) -> LatencyHistogram:
    h = LatencyHistogram()
    for s in samples:
        h.record(s)
    return h


def _nearest_rank(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


@given(st.lists(_samples, min_size=1, max_size=5))
def test_merge_is_the_histogram_of_the_union(parts: list[list[float]]) -> None:
    merged = LatencyHistogram()
    for p in parts:
        merged.merge(_hist(p))
    union = _hist([s for p in parts for s in p])
    assert merged == union
    assert merged.count == sum(len(p) for p in parts)
    assert list(merged.buckets()) == list(union.buckets())


@given(_samples.filter(bool), st.floats(min_value=0.0, max_value=1.0))
@settings(max_examples=300)
def test_quantile_within_the_stated_resolution(samples: list[float], q: float) -> None:
    h = _hist(samples)
    true = _nearest_rank(samples, q)
    est = h.quantile(q)
    assert min(samples) <= est <= max(samples)
    assert abs(est - true) <= max(true * (GROWTH - 1), MIN_S) * 1.000001


@given(_samples)
def test_round_trip_json_and_pickle(samples: list[float]) -> None:
    h = _hist(samples)
    assert LatencyHistogram.from_dict(json.loads(json.dumps(h.to_dict()))) == h
    assert pickle.loads(pickle.dumps(h)) == h


def test_quantiles_of_known_samples() -> None:
    h = _hist([i / 1000 for i in range(1, 1001)])  # 1 ms .. 1 s
    assert h.quantile(0.5) == pytest.approx(0.5, rel=GROWTH - 1)
    assert h.quantile(0.99) == pytest.approx(0.99, rel=GROWTH - 1)
    assert h.quantile(0.0) == 0.001
    assert h.quantile(1.0) == 1.0 and h.min == 0.001 and h.max == 1.0
    assert h.mean == pytest.approx(0.5005)
    zeros = _hist([0.0, 0.0, -1.0])  # an answer due at once; negative counts as 0
    assert zeros.quantile(0.5) == 0.0 and zeros.count == 3
    assert math.isnan(LatencyHistogram().quantile(0.5))
    with pytest.raises(ValueError):
        h.quantile(1.5)


def test_bucket_edges_and_cumulative_counts() -> None:
    assert bucket_bounds(0) == (0.0, MIN_S)
    lo, hi = bucket_bounds(100)
    assert hi / lo == pytest.approx(GROWTH)
    h = _hist([0.001, 0.002, 0.004, 0.1])
    assert h.count_le(0.0005) == 0
    assert h.count_le(0.003) == 2
    assert h.count_le(0.05) == 3
    assert h.count_le(0.1) == h.count_le(math.inf) == 4
    counts = [h.count_le(x / 1000) for x in range(200)]
    assert counts == sorted(counts)


def test_from_dict_refuses_another_layout_or_a_bad_count() -> None:
    d = _hist([0.01]).to_dict()
    with pytest.raises(ValueError, match="layout"):
        LatencyHistogram.from_dict({**d, "layout": [1e-6, 1.1, 10]})
    with pytest.raises(ValueError, match="add up"):
        LatencyHistogram.from_dict({**d, "count": 2})


def _stats(seed: int) -> RunStats:
    return RunStats(
        devices=2 + seed,
        connected=1 + seed,
        connections=3 * seed,
        connect_failures=seed % 2,
        packets_in=10 + seed,
        packets_out=20 + seed,
        commands=5 * seed,
        answers=6 * seed,
        faults={"drop": seed, f"k{seed}": 1},
        latency={"0x73:f8:d0": _hist([0.01 * seed, 0.02]), f"0x{seed:02x}": _hist([0.5])},
    )


def test_run_stats_merge_sums_everything_and_leaves_the_other_alone() -> None:
    a, b = _stats(1), _stats(2)
    b_before = RunStats.from_dict(b.to_dict())
    total = RunStats.merged([a, b])
    a.merge(b)
    assert a == total
    assert b == b_before  # merging copies histograms, never shares them
    total.latency["0x02"].record(1.0)
    assert b.latency["0x02"].count == 1
    assert (a.devices, a.connected, a.connections, a.packets_in) == (7, 5, 9, 23)
    assert (a.commands, a.answers, a.connect_failures) == (15, 18, 1)
    assert a.faults == {"drop": 3, "k1": 1, "k2": 1}
    assert a.latency["0x73:f8:d0"] == _hist([0.01, 0.02, 0.02, 0.02])
    assert a.all_latency().count == 6
    assert a.faults_total == 5


def test_run_stats_round_trip_and_summary() -> None:
    s = _stats(3)
    assert RunStats.from_dict(json.loads(json.dumps(s.to_dict()))) == s
    assert pickle.loads(pickle.dumps(s)) == s
    assert RunStats.from_dict({}) == RunStats()
    one = RunStats(devices=1, connections=1, packets_in=1, packets_out=2)
    assert one.summary() == "1 device, 1 connection, 1 packet in, 2 packets out, 0 faults injected"
    assert s.summary().endswith("4 faults injected (drop 3, k3 1)")


@pytest.mark.parametrize(
    "packet",
    [POWER_OFF, MESH_REQ, RESULT_BRI, FW_DEVICE, CONTROL, HELLO_ACK, marker(3), b"\xd3\0\0\0\0"],
)
def test_request_kind_names_raw_bytes_as_request_key_names_decoded_packets(
    packet: bytes,
) -> None:
    assert request_kind(packet) == request_of(packet)
    assert request_kind(packet[:9]) == f"0x{packet[0]:02x}"  # no frame head: the type alone


def test_answer_meter_counts_commands_answers_and_first_answer_latency() -> None:
    meter = AnswerMeter()
    relay = Relay(1.0, 5, PowerCommand(1, 5, True))
    meter.answered(POWER_OFF, 1.0, [Send(1.25, b"x", "0x7b"), Send(1.1, b"y", "0x73"), relay])
    meter.answered(POWER_OFF, 2.0, [Send(2.0, b"x", "0x7b")])
    meter.answered(POWER_OFF, 3.0, [])  # not answered: counted as a command only
    meter.answered(HELLO_ACK, 4.0, [Close(4.5, "bye")])
    meter.answered(b"\xd3\0\0\0\0", 5.0, [Send(5.5, b"z", "0xd8")])
    assert (meter.commands, meter.answers) == (3, 4)
    assert sorted(meter.latency) == ["0x73:f8:d0", "0xd3"]
    h = meter.latency["0x73:f8:d0"]
    assert h.count == 2 and h.min == 0.0 and h.max == pytest.approx(0.1)
    stats = RunStats(commands=1, latency={"0xd3": _hist([1.0])})
    meter.add_to(stats)
    meter.answered(b"\xd3\0\0\0\0", 6.0, [Send(6.5, b"z", "0xd8")])
    assert (stats.commands, stats.answers) == (4, 4)
    assert stats.latency["0xd3"].count == 2  # a copy: later samples stay in the meter
    assert stats.latency["0x73:f8:d0"] == h
