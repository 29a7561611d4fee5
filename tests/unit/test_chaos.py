# Tests of chaos: config validation and files (replay.chaos) and each fault of the pure policy,
# driven with plain numbers for time.  ChaosWriter (asyncio) is in
# tests/integration/test_chaos_writer.py.
#
# Statistical checks use fixed seeds, so they are deterministic; their bounds are still the
# binomial (or normal) ones a correct implementation meets, so a wrong rate fails them.
from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import statistics
from pathlib import Path
from typing import Any

import pytest
from scipy.stats import binom

from cyncsim.replay.chaos import (
    BurstLoss,
    ChaosConfig,
    ChaosPolicy,
    Direction,
    Emission,
    PacketFaults,
    PartitionSpec,
    ResetSpec,
    SlicingSpec,
    StallSpec,
)
from cyncsim.replay.errors import ChaosConfigError
from cyncsim.replay.framer import PacketFramer
from cyncsim.replay.protocol import IdPacket, PacketType

TO, FROM = Direction.TO_DEVICE, Direction.FROM_DEVICE


def pkt(i: int, size: int = 16) -> bytes:
    return (i.to_bytes(4, "big") * (size // 4 + 1))[:size]


def feed(
    policy: ChaosPolicy, n: int, d: Direction = FROM, step: float = 0.0
) -> list[list[Emission]]:
    return [policy.on_packet(d, pkt(i), now=i * step) for i in range(1, n + 1)]


def dropped(out: list[list[Emission]]) -> set[int]:
    return {i for i, ems in enumerate(out, 1) if not ems}


def binom_ok(count: int, n: int, p: float) -> bool:
    return bool(binom.ppf(1e-6, n, p) <= count <= binom.isf(1e-6, n, p))


def build(cls: Any, **kwargs: Any) -> Any:
    """cls(**kwargs) without static type checks, to pass values of the wrong type."""
    return cls(**kwargs)


# --- config -----------------------------------------------------------------------------------

BAD = [
    (lambda: ChaosConfig(latency_ms=-1), "latency_ms=-1", "latency_ms >= 0"),
    (lambda: ChaosConfig(latency_ms=float("nan")), "latency_ms=nan", "latency_ms >= 0"),
    (lambda: build(ChaosConfig, latency_ms="10"), "latency_ms='10'", "a number"),
    (lambda: ChaosConfig(latency_ms=True), "latency_ms=True", "a number"),
    (lambda: ChaosConfig(latency_variance=-0.5), "latency_variance=-0.5", ">= 0"),
    (
        lambda: ChaosConfig(packet_loss_rate=1.5),
        "packet_loss_rate=1.5",
        "0 <= packet_loss_rate <= 1",
    ),
    (lambda: ChaosConfig(packet_loss_rate=-0.1), "packet_loss_rate=-0.1", "<= 1"),
    (lambda: ChaosConfig(drop_pattern=(3, 0)), "drop_pattern item 0", "1-based"),
    (lambda: build(ChaosConfig, drop_pattern=[1, "2"]), "drop_pattern item='2'", "integer"),
    (lambda: build(ChaosConfig, drop_pattern="12"), "drop_pattern='12'", "list of packet numbers"),
    (lambda: ChaosConfig(duplicate_rate=2), "duplicate_rate=2", "0 <= duplicate_rate <= 1"),
    (lambda: ChaosConfig(reorder_rate=-1), "reorder_rate=-1", "0 <= reorder_rate <= 1"),
    (lambda: ChaosConfig(reorder_delay_ms=-5), "reorder_delay_ms=-5", "reorder_delay_ms >= 0"),
    (lambda: ChaosConfig(reorder_rate=0.5, reorder_delay_ms=0), "reorder_rate=0.5", "> 0"),
    (lambda: ChaosConfig(corruption_rate=1.01), "corruption_rate=1.01", "<= 1"),
    (lambda: ChaosConfig(corruption_bytes=0), "corruption_bytes=0", "corruption_bytes >= 1"),
    (lambda: build(ChaosConfig, corruption_bytes=1.5), "corruption_bytes=1.5", "an integer"),
    (lambda: BurstLoss(p=1.5), "p=1.5", "0 <= p <= 1"),
    (lambda: BurstLoss(r=-0.1), "r=-0.1", "0 <= r <= 1"),
    (lambda: BurstLoss(loss_good=2), "loss_good=2", "0 <= loss_good <= 1"),
    (lambda: BurstLoss(loss_bad=-1), "loss_bad=-1", "0 <= loss_bad <= 1"),
    (lambda: SlicingSpec(rate=3), "rate=3", "0 <= rate <= 1"),
    (lambda: SlicingSpec(max_pieces=1), "max_pieces=1", "max_pieces >= 2"),
    (lambda: SlicingSpec(delay_ms=-1), "delay_ms=-1", "delay_ms >= 0"),
    (lambda: StallSpec(duration_s=0, at_s=1), "duration_s=0", "duration_s > 0"),
    (lambda: StallSpec(duration_s=1, at_s=-1), "at_s=-1", "at_s >= 0 or None"),
    (lambda: StallSpec(duration_s=1, after_packet=0), "after_packet=0", "after_packet >= 1"),
    (lambda: StallSpec(duration_s=1), "at_s=None and after_packet=None", "needs a trigger"),
    (lambda: ResetSpec(after_packet=0), "after_packet=0", ">= 1"),
    (lambda: ResetSpec(at_s=-2), "at_s=-2", ">= 0"),
    (lambda: ResetSpec(probability=1.2), "probability=1.2", "0 <= probability <= 1"),
    (ResetSpec, "after_packet=None, at_s=None, probability=0", "needs a trigger"),
    (lambda: build(ResetSpec, after_packet=1, direction="up"), "direction='up'", "'to_device'"),
    (lambda: PartitionSpec(start_s=-1), "start_s=-1", "start_s >= 0"),
    (lambda: PartitionSpec(start_s=5, end_s=2), "end_s=2.0", "start_s < end_s"),
    (lambda: PartitionSpec(end_s=2), "end_s=2.0", "start_s=None"),
    (
        lambda: build(PartitionSpec, refuse_connections="yes"),
        "refuse_connections='yes'",
        "true or false",
    ),
    (
        lambda: PartitionSpec(start_s=0, refuse_connections=False, blackhole=False),
        "refuse_connections=False and blackhole=False",
        "nothing",
    ),
    (lambda: build(ChaosConfig, burst={"p": 0.1}), "burst={'p': 0.1}", "expected BurstLoss"),
    (lambda: ChaosConfig(to_device=ChaosConfig()), "to_device=", "PacketFaults or None"),
    (lambda: build(ChaosConfig, stall=StallSpec), "stall=", "StallSpec or None"),
]


@pytest.mark.parametrize(("make", "what", "allowed"), BAD, ids=[b[1] for b in BAD])
def test_validation_names_field_value_and_range(make: Any, what: str, allowed: str) -> None:
    with pytest.raises(ChaosConfigError) as info:
        make()
    assert what in str(info.value)
    assert allowed in str(info.value)
    assert info.value.reason == "chaos_config"


@pytest.mark.parametrize("cls", [ChaosConfig, PacketFaults, BurstLoss, SlicingSpec, ResetSpec])
def test_every_rate_field_is_checked(cls: Any) -> None:
    rates = [f.name for f in dataclasses.fields(cls) if f.metadata.get("hi") == 1.0]
    assert rates
    for name in rates:
        for bad in (1.0001, -0.0001):
            extra = {"after_packet": 1} if cls is ResetSpec else {}
            with pytest.raises(ChaosConfigError, match=rf"{name}={bad}.*0 <= {name} <= 1"):
                cls(**{name: bad, **extra})


def test_normalises_values() -> None:
    c = build(ChaosConfig, latency_ms=5, drop_pattern=[9, 3, 3])
    assert c.latency_ms == 5.0 and isinstance(c.latency_ms, float)
    assert c.drop_pattern == (3, 9)
    assert build(ResetSpec, after_packet=1, direction="to_device").direction is TO


FULL = ChaosConfig(
    latency_ms=10,
    latency_variance=2,
    packet_loss_rate=0.05,
    duplicate_rate=0.1,
    reorder_rate=0.1,
    reorder_delay_ms=30,
    corruption_rate=0.05,
    corruption_bytes=2,
    burst=BurstLoss(p=0.01, r=0.5),
    slicing=SlicingSpec(rate=0.2, max_pieces=4, delay_ms=1),
    to_device=PacketFaults(drop_pattern=(4, 9), duplicate_rate=0.5, latency_ms=3),
    stall=StallSpec(duration_s=1, at_s=2, after_packet=3),
    reset=ResetSpec(after_packet=7, probability=0.01, direction=FROM),
    partition=PartitionSpec(start_s=5, end_s=6, blackhole=False),
)


def test_dict_round_trip_including_json() -> None:
    assert ChaosConfig.from_dict(FULL.to_dict()) == FULL
    assert ChaosConfig.from_dict(json.loads(json.dumps(FULL.to_dict()))) == FULL
    assert ChaosConfig.from_dict({}) == ChaosConfig()


TOML = """
latency_ms = 25
packet_loss_rate = 0.1
drop_pattern = [2, 5]

[burst]
p = 0.02
r = 0.4

[from_device]
duplicate_rate = 0.3

[from_device.slicing]
rate = 1.0
max_pieces = 5

[stall]
duration_s = 2.5
after_packet = 10

[reset]
at_s = 30

[partition]
start_s = 60
"""


def test_load_toml_with_inheriting_override(tmp_path: Path) -> None:
    path = tmp_path / "chaos.toml"
    path.write_text(TOML)
    c = ChaosConfig.load(path)
    assert (c.latency_ms, c.packet_loss_rate, c.drop_pattern) == (25.0, 0.1, (2, 5))
    assert c.burst == BurstLoss(p=0.02, r=0.4)
    down = c.faults(FROM)
    assert down.duplicate_rate == 0.3 and down.latency_ms == 25.0 and down.drop_pattern == (2, 5)
    assert down.slicing == SlicingSpec(rate=1.0, max_pieces=5)
    assert c.faults(TO).duplicate_rate == 0.0 and c.faults("to_device").slicing.rate == 0.0
    assert c.stall == StallSpec(duration_s=2.5, after_packet=10)
    assert c.reset == ResetSpec(at_s=30) and c.partition == PartitionSpec(start_s=60)


def test_load_json_and_sniff_content(tmp_path: Path) -> None:
    (tmp_path / "c.json").write_text(json.dumps(FULL.to_dict()))
    assert ChaosConfig.load(tmp_path / "c.json") == FULL
    (tmp_path / "json.conf").write_text(json.dumps({"duplicate_rate": 0.25}))
    assert ChaosConfig.load(tmp_path / "json.conf").duplicate_rate == 0.25
    (tmp_path / "toml.conf").write_text("corruption_rate = 0.5\n")
    assert ChaosConfig.load(tmp_path / "toml.conf").corruption_rate == 0.5


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("a.toml", "latency_ms = 1\nlatncy = 2\n", "unknown key 'latncy'"),
        ("b.toml", "[burst]\np = 0.1\nq = 0.2\n", "unknown key 'burst.q'"),
        ("c.json", '{"to_device": {"slicing": {"pieces": 2}}}', "'to_device.slicing.pieces'"),
        ("d.toml", "[to_device]\nreset = 1\n", "unknown key 'to_device.reset'"),
        ("e.toml", "packet_loss_rate = 2.0\n", "packet_loss_rate=2.0 is out of range"),
        ("f.toml", "[burst]\np = 3\n", "burst.p=3 is out of range: allowed 0 <= p <= 1"),
        ("g.toml", "[stall]\nat_s = 1\n", "stall.duration_s is required"),
        ("h.toml", "stall = 3\n", "stall must be a table"),
        ("i.toml", "latency_ms = \n", "not valid TOML"),
        ("j.json", "{nope", "not valid JSON"),
        ("k.json", "[1, 2]", "must be a table/object"),
    ],
)
def test_bad_files_are_named(tmp_path: Path, name: str, text: str, message: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ChaosConfigError) as info:
        ChaosConfig.load(path)
    assert str(info.value).startswith(f"{path}: ")
    assert message in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ChaosConfigError, match=r"nope\.toml: cannot read chaos config"):
        ChaosConfig.load(tmp_path / "nope.toml")


# --- per-packet faults ------------------------------------------------------------------------


def test_no_faults_passes_everything_unchanged() -> None:
    policy = ChaosPolicy(ChaosConfig(), 1)
    for i, ems in enumerate(feed(policy, 50), 1):
        assert ems == [Emission(i, 0.0, (pkt(i),))]
    assert policy.log == [] and policy.fault_counts() == {}


def test_drop_pattern_drops_exactly_those_numbers_per_direction() -> None:
    cfg = ChaosConfig(drop_pattern=(2, 5, 9), packet_loss_rate=1.0, to_device=PacketFaults())
    policy = ChaosPolicy(cfg, 1)
    out_from, out_to = [], []
    for i in range(1, 13):  # interleaved: each direction counts its own packets
        out_from.append(policy.on_packet(FROM, pkt(i), 0.0))
        out_to.append(policy.on_packet("to_device", pkt(i), 0.0))
        out_from.append(policy.on_packet(FROM, pkt(100 + i), 0.0))
    assert dropped(out_from) == {2, 5, 9}  # the pattern wins over packet_loss_rate=1
    assert dropped(out_to) == set()  # to_device has its own (empty) settings
    assert [e.packet_no for e in policy.log] == [2, 5, 9]
    assert policy.fault_counts(FROM) == {"drop": 3} and policy.fault_counts(TO) == {}
    assert policy.packets_seen(FROM) == 24 and policy.packets_seen(TO) == 12


def test_rate_loss_is_binomial() -> None:
    n, p = 10_000, 0.1
    policy = ChaosPolicy(ChaosConfig(packet_loss_rate=p), 1234)
    lost = dropped(feed(policy, n))
    assert binom_ok(len(lost), n, p)
    assert policy.fault_counts() == {"drop": len(lost)}


def _bursts(lost: set[int], n: int) -> list[int]:
    runs, run = [], 0
    for i in range(1, n + 2):
        if i in lost:
            run += 1
        elif run:
            runs.append(run)
            run = 0
    return runs


def test_gilbert_elliott_makes_bursts_of_mean_one_over_r() -> None:
    n, p, r = 20_000, 0.05, 0.25
    policy = ChaosPolicy(ChaosConfig(burst=BurstLoss(p=p, r=r)), 99)
    lost = dropped(feed(policy, n))
    runs = _bursts(lost, n)
    assert abs(statistics.mean(runs) - 1 / r) < 0.5
    assert abs(len(lost) / n - p / (p + r)) < 0.02
    assert policy.fault_counts() == {"burst_drop": len(lost)}
    # independent loss at the same rate has bursts of about 1 / (1 - rate) = 1.2
    iid = ChaosPolicy(ChaosConfig(packet_loss_rate=p / (p + r)), 99)
    assert statistics.mean(_bursts(dropped(feed(iid, n)), n)) < 1.5


def test_duplicates_follow_the_original() -> None:
    n, p = 5000, 0.3
    policy = ChaosPolicy(ChaosConfig(duplicate_rate=p), 5)
    out = feed(policy, n)
    dups = [ems for ems in out if len(ems) == 2]
    assert binom_ok(len(dups), n, p) and all(len(ems) in (1, 2) for ems in out)
    for first, second in dups:
        assert second.data == first.data and second.tags == ("dup",) and "dup" not in first.tags
        assert second.delay_s >= first.delay_s
    assert policy.fault_counts() == {"duplicate": len(dups)}


def test_reorder_holds_packets_back_and_others_keep_order() -> None:
    n, step = 2000, 0.010
    policy = ChaosPolicy(ChaosConfig(reorder_rate=0.2, reorder_delay_ms=50), 3)
    out = feed(policy, n, step=step)
    due = [(i * step + ems[0].delay_s, i) for i, ems in enumerate(out, 1)]
    held = {i for i, ems in enumerate(out, 1) if "reordered" in ems[0].tags}
    assert binom_ok(len(held), n, 0.2)
    assert all(out[i - 1][0].delay_s == pytest.approx(0.050) for i in held)
    in_order = [t for t, i in due if i not in held]
    assert in_order == sorted(in_order)
    delivered = [i for _, i in sorted(due)]
    for i in held - {n} - {j - 1 for j in held}:
        assert delivered.index(i + 1) < delivered.index(i)  # the next one overtakes it


def test_jitter_has_the_asked_mean_and_deviation_and_never_reorders() -> None:
    policy = ChaosPolicy(ChaosConfig(latency_ms=20, latency_variance=5), 11)
    delays = [ems[0].delay_s * 1000 for ems in feed(policy, 4000, step=1.0)]
    assert abs(statistics.mean(delays) - 20) < 0.5
    assert abs(statistics.stdev(delays) - 5) < 0.5
    tight = ChaosPolicy(ChaosConfig(latency_ms=5, latency_variance=10), 11)
    due = [i * 0.001 + ems[0].delay_s for i, ems in enumerate(feed(tight, 500, step=0.001), 1)]
    assert due == sorted(due) and min(ems[0].delay_s for ems in feed(tight, 50)) >= 0.0


@pytest.mark.parametrize(("n_bytes", "size"), [(1, 16), (3, 16), (5, 2)])
def test_corruption_changes_exactly_n_bytes(n_bytes: int, size: int) -> None:
    policy = ChaosPolicy(ChaosConfig(corruption_rate=1.0, corruption_bytes=n_bytes), 8)
    for i in range(1, 500):
        original = pkt(i, size)
        (em,) = policy.on_packet(FROM, original, 0.0)
        diff = [k for k in range(size) if em.data[k] != original[k]]
        assert len(diff) == min(n_bytes, size) and em.tags == ("corrupt",)
        assert policy.log[-1].kind == "corrupt" and policy.log[-1].details["positions"] == diff


def test_slicing_cuts_into_nonempty_pieces_that_reassemble() -> None:
    cfg = ChaosConfig(slicing=SlicingSpec(rate=1.0, max_pieces=4, delay_ms=5))
    policy = ChaosPolicy(cfg, 21)
    out = feed(policy, 300)
    sizes = set()
    for i, (em,) in enumerate(out, 1):
        assert em.data == pkt(i) and all(em.chunks) and em.tags == ("sliced",)
        assert em.slice_gap_s == 0.005 and em.span_s == pytest.approx(0.005 * (len(em.chunks) - 1))
        sizes.add(len(em.chunks))
    assert sizes == {2, 3, 4}
    for (a,), (b,) in itertools.pairwise(out):  # a packet starts after the last piece
        assert b.delay_s >= a.delay_s + a.span_s - 1e-12
    assert policy.on_packet(FROM, b"x", 0.0)[0].chunks == (b"x",)  # one byte cannot be cut


def test_sliced_real_packets_reassemble_through_the_framer() -> None:
    packets = [
        IdPacket(PacketType.STATUS, device_id=bytes([1, 2, 3, i]), payload=b"\x01" * i)
        for i in range(1, 30)
    ]
    policy = ChaosPolicy(ChaosConfig(slicing=SlicingSpec(rate=0.7, max_pieces=6)), 4)
    framer = PacketFramer(strict=True)
    got = []
    for p in packets:
        for chunk in policy.on_packet(FROM, p.encode(), 0.0)[0].chunks:
            got += framer.feed(chunk)
    assert [g.encode() for g in got] == [p.encode() for p in packets]
    assert 0 < policy.fault_counts()["slice"] < len(packets)


def test_per_direction_override() -> None:
    cfg = ChaosConfig(duplicate_rate=1.0, from_device=PacketFaults(packet_loss_rate=1.0))
    policy = ChaosPolicy(cfg, 2)
    assert dropped(feed(policy, 20, FROM)) == set(range(1, 21))
    assert all(len(ems) == 2 for ems in feed(policy, 20, TO))
    assert policy.fault_counts(FROM) == {"drop": 20} and policy.fault_counts(TO) == {
        "duplicate": 20
    }
    with pytest.raises(ChaosConfigError, match="direction='sideways'"):
        policy.on_packet("sideways", b"x", 0.0)


# --- connection level ---------------------------------------------------------------------------


def test_stall_at_a_time_and_after_a_packet() -> None:
    policy = ChaosPolicy(ChaosConfig(stall=StallSpec(duration_s=1.5, at_s=2)), 1, t0=100.0)
    assert [policy.stall_until(t) for t in (101.9, 102.0, 103.49, 103.5)] == [
        None,
        103.5,
        103.5,
        None,
    ]
    assert policy.fault_counts() == {"stall": 1}
    policy = ChaosPolicy(ChaosConfig(stall=StallSpec(duration_s=2, after_packet=3)), 1)
    for i in range(1, 6):
        policy.on_packet(FROM, pkt(i), now=float(i))  # sent packets do not count
    assert policy.stall_until(5.0) is None
    for i in range(1, 4):
        policy.on_packet(TO, pkt(i), now=10.0 + i)
    assert policy.stall_until(13.0) == 15.0 and policy.stall_until(14.9) == 15.0
    assert policy.stall_until(15.0) is None and policy.stall_until(12.9) is None
    policy.on_packet(TO, pkt(4), now=20.0)
    assert policy.stall_until(20.0) is None  # fires once


def test_reset_after_packet_in_one_direction() -> None:
    policy = ChaosPolicy(ChaosConfig(reset=ResetSpec(after_packet=2, direction=FROM)), 1)
    assert not policy.should_reset(FROM, 1, 0.0)
    assert policy.should_reset(FROM, 2, 0.0) and policy.should_reset(FROM, 2, 0.0)
    assert not policy.should_reset(TO, 2, 0.0) and not policy.should_reset(FROM, 3, 0.0)
    assert [(e.kind, e.packet_no, e.details["cause"]) for e in policy.log] == [
        ("reset", 2, "packet")
    ]
    assert policy.reset_deadline() is None


def test_reset_at_a_time_fires_once() -> None:
    policy = ChaosPolicy(ChaosConfig(reset=ResetSpec(at_s=4)), 1, t0=10.0)
    assert policy.reset_deadline() == 14.0
    assert not policy.reset_due(13.9) and not policy.should_reset(FROM, 1, 13.9)
    assert policy.should_reset(TO, 5, 14.0)
    assert policy.reset_deadline() is None and not policy.reset_due(20.0)
    assert policy.fault_counts() == {"reset": 1}


def test_reset_probability_is_binomial_and_independent_of_call_order() -> None:
    n, p = 5000, 0.05
    cfg = ChaosConfig(reset=ResetSpec(probability=p))
    first = ChaosPolicy(cfg, 6)
    forward = {i for i in range(1, n + 1) if first.should_reset(TO, i, 0.0)}
    policy = ChaosPolicy(cfg, 6)
    backward = {i for i in range(n, 0, -1) if policy.should_reset(TO, i, 0.0)}
    assert forward == backward and binom_ok(len(forward), n, p)
    assert {i for i in range(1, n + 1) if policy.should_reset(FROM, i, 0.0)} != forward


def test_partition_window_and_modes() -> None:
    policy = ChaosPolicy(ChaosConfig(partition=PartitionSpec(start_s=5, end_s=10)), 1, t0=1.0)
    assert [policy.is_partitioned(t) for t in (5.9, 6.0, 10.99, 11.0)] == [False, True, True, False]
    assert not policy.accepts_connection(7.0) and policy.accepts_connection(12.0)
    assert policy.on_packet(FROM, b"a", 7.0) == [] and policy.on_packet(FROM, b"b", 12.0) != []
    assert policy.fault_counts() == {"partition_drop": 1}
    refuse = ChaosPolicy(ChaosConfig(partition=PartitionSpec(start_s=0, blackhole=False)), 1)
    assert not refuse.accepts_connection(3.0) and refuse.on_packet(TO, b"a", 3.0) != []
    hole = ChaosPolicy(ChaosConfig(partition=PartitionSpec(start_s=0, refuse_connections=False)), 1)
    assert hole.accepts_connection(3.0) and hole.on_packet(TO, b"a", 3.0) == []


def test_partition_by_api_and_healing_an_open_window() -> None:
    policy = ChaosPolicy(ChaosConfig(), 1)
    assert not policy.is_partitioned(1.0)
    policy.partition_start(1.0)
    assert policy.is_partitioned(1.0) and not policy.accepts_connection(2.0)
    assert policy.on_packet(FROM, b"a", 2.0) == []
    policy.partition_end(3.0)
    assert not policy.is_partitioned(3.0) and policy.on_packet(FROM, b"a", 3.0) != []
    kinds = [e.kind for e in policy.log]
    assert kinds == ["partition_start", "partition_drop", "partition_end"]
    open_ended = ChaosPolicy(ChaosConfig(partition=PartitionSpec(start_s=5)), 1)
    open_ended.partition_end(1.0)  # before the window: does not cancel it
    assert open_ended.is_partitioned(1000.0)
    open_ended.partition_end(1000.0)
    assert not open_ended.is_partitioned(1000.0) and not open_ended.is_partitioned(2000.0)


# --- reproducibility ----------------------------------------------------------------------------


def _run_all(cfg: ChaosConfig, seed: int | None) -> tuple[ChaosPolicy, list[list[Emission]]]:
    policy = ChaosPolicy(cfg, seed, name="device/64 57 e7 f2")
    out = []
    for i in range(1, 3001):
        d = FROM if i % 3 else TO
        out.append(policy.on_packet(d, pkt(i, 12), now=i * 0.004))
        policy.should_reset(d, policy.packets_seen(d), i * 0.004)
        policy.stall_until(i * 0.004)
    return policy, out


def test_same_seed_same_log_other_seed_other_log() -> None:
    a, out_a = _run_all(FULL, 42)
    b, out_b = _run_all(FULL, 42)
    c, _ = _run_all(FULL, 43)
    assert a.log == b.log and out_a == out_b and len(a.log) > 500
    assert c.log != a.log
    assert set(a.fault_counts()) >= {
        "drop",
        "burst_drop",
        "duplicate",
        "reorder",
        "corrupt",
        "slice",
        "delay",
        "stall",
        "reset",
    }


def test_policy_without_seed_logs_its_drawn_root(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="cyncsim.seeds"):
        a, out_a = _run_all(FULL, None)
    root = a.seeds.root
    assert any(str(root) in r.message and "chaos policy" in r.message for r in caplog.records)
    b, out_b = _run_all(FULL, root)
    assert a.log == b.log and out_a == out_b


def test_streams_are_per_fault() -> None:
    base: dict[str, Any] = {
        "duplicate_rate": 0.2,
        "corruption_rate": 0.2,
        "slicing": SlicingSpec(rate=0.3),
        "reorder_rate": 0.1,
    }
    low, _ = _run_all(ChaosConfig(packet_loss_rate=0.05, **base), 7)
    high, _ = _run_all(ChaosConfig(packet_loss_rate=0.5, **base), 7)

    def events(p: ChaosPolicy, kind: str) -> dict[tuple[Any, int], Any]:
        return {(e.direction, e.packet_no): e.details for e in p.log if e.kind == kind}

    lost = set(events(low, "drop")) | set(events(high, "drop"))
    for kind in ("duplicate", "corrupt", "slice", "reorder"):
        kept_low = {k: v for k, v in events(low, kind).items() if k not in lost}
        kept_high = {k: v for k, v in events(high, kind).items() if k not in lost}
        assert kept_low == kept_high and len(kept_low) > 50, kind
    # and the other way: changing the duplicate rate leaves the losses alone
    more_dups, _ = _run_all(
        ChaosConfig(packet_loss_rate=0.05, **{**base, "duplicate_rate": 0.9}), 7
    )
    assert events(more_dups, "drop") == events(low, "drop")
