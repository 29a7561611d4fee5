# Stall episodes learned from the acks (replay/model/stalls.py): synthetic bursts from a device
# with known parameters (onset per busy command, possibly by backlog, stall durations, flush,
# busy pace) go through the real learner (pairing included) and come back within stated
# tolerances; the numbers of 152132 (stalls and serial results); the model file keeps them,
# older files load without them, and merging adds them up as importing together does.
from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable

import pytest

from cyncsim.replay.capture import CLOUD, DEVICE, CaptureResult, Flow, FlowPacket
from cyncsim.replay.model import DeviceModel, import_captures, learn_model
from cyncsim.replay.model.stalls import (
    STALL_GAP_S,
    StallModel,
    StallSamples,
    chi2_sf,
    lr_pvalue,
)
from cyncsim.replay.payloads import LightStateCommand, build_command, build_data_ack
from tests.support import capture_path

DEV = b"\x64\x57\xe7\xf2"


def _device_trace(
    onset: Callable[[int], float],
    *,
    bursts: int,
    seed: int,
    burst_len: int = 20,
    flush: bool = True,
) -> tuple[list[tuple[float, float]], dict[str, int], list[float]]:
    """(arrival, ack) of every command of ``bursts`` bursts through a device that works
    through its commands one by one: idle latency U(20, 150) ms, busy pace U(8, 20) ms, a busy
    command begins a stall of U(0.6, 1.8) s with probability ``onset(backlog)``, and the
    commands queued behind a stall leave with it (``flush``).  Also the true tallies and the
    stall durations drawn."""
    rng = random.Random(seed)
    out: list[tuple[float, float]] = []
    truth = {"served": 0, "stalls": 0, "queued": 0}
    drawn: list[float] = []
    free, stall_end = -1.0, -1.0
    owed: deque[float] = deque()
    t = 10.0
    for _ in range(bursts):
        # commands two at a time (one write), 5-12 ms apart, as the local server sends them
        arrivals = []
        for i in range(burst_len):
            arrivals.append(t)
            if i % 2:
                t += rng.uniform(0.005, 0.012)
        for now in arrivals:
            while owed and owed[0] <= now:
                owed.popleft()
            if free <= now:
                ack = now + rng.uniform(0.020, 0.150)
            elif now < stall_end and flush:
                truth["queued"] += 1
                ack = stall_end
            else:
                if now < stall_end:
                    truth["queued"] += 1
                truth["served"] += 1
                if rng.random() < onset(len(owed)):
                    truth["stalls"] += 1
                    drawn.append(rng.uniform(0.6, 1.8))
                    ack = stall_end = free + drawn[-1]
                else:
                    ack = free + rng.uniform(0.008, 0.020)
            owed.append(ack)
            out.append((now, ack))
            free = ack
        t = free + 5.0
    return out, truth, drawn


def _learn(trace: list[tuple[float, float]]) -> StallModel:
    """Learn a model from the trace as a capture: one exact flow of 0x73 and 0x7B packets."""
    pkts = []
    for i, (arrival, ack) in enumerate(trace):
        cmd = build_command(DEV, b"\0\0\0", LightStateCommand(i % 256, 9, 50))
        pkts.append(FlowPacket(arrival, CLOUD, cmd, 0))
        pkts.append(FlowPacket(ack, DEVICE, build_data_ack(cmd), 0))
    pkts.sort(key=lambda fp: fp.ts)
    flow = Flow("synthetic#1", "synthetic", exact=True, device_id=DEV, packets=pkts)
    model = learn_model(CaptureResult(sources=["synthetic"], flows=[flow]))
    (stalls,) = model.stalls.values()
    return stalls


def test_onset_durations_flush_and_pace_are_recovered() -> None:
    p = 0.06
    trace, truth, drawn = _device_trace(lambda backlog: p, bursts=200, seed=1)
    got = _learn(trace)
    served = sum(got.served.values())
    assert served == truth["served"] and got.episodes == truth["stalls"]  # every one found
    # onset: about 2,300 busy commands, standard error 0.005: within 0.015 of the truth
    assert got.onset("1-4") == pytest.approx(p, abs=0.015)
    assert not got.load_dependent
    # durations: exactly the ones drawn (to the nanosecond the model rounds to)
    assert got.durations.values == pytest.approx(sorted(drawn), abs=1e-9)
    assert got.durations.quantile(0.0) >= 0.6 and got.durations.quantile(1.0) <= 1.8
    # every command queued behind a stall left with it
    assert got.flush and got.flushed == got.queued == truth["queued"] > 0
    # busy pace U(8, 20) ms, stalls and flushes taken out
    pace = got.service["0x73:f8:f0"]
    assert pace.p50 == pytest.approx(0.014, abs=0.001)
    assert pace.quantile(0.0) >= 0.008 and pace.quantile(1.0) <= 0.020


def test_an_onset_that_grows_with_the_backlog_is_recovered() -> None:
    rates = {"1-4": 0.01, "5+": 0.15}
    trace, _, _ = _device_trace(
        lambda backlog: rates["1-4" if backlog < 5 else "5+"], bursts=300, seed=2
    )
    got = _learn(trace)
    assert got.load_dependent and got.load_p() < 1e-3
    assert got.onset("1-4") == pytest.approx(0.01, abs=0.006)
    assert got.onset("5+") == pytest.approx(0.15, abs=0.03)


def test_without_a_flush_the_queued_commands_are_paced() -> None:
    trace, truth, _ = _device_trace(lambda backlog: 0.06, bursts=100, seed=3, flush=False)
    got = _learn(trace)
    assert got.queued == truth["queued"] > 0 and got.flushed == 0 and not got.flush
    assert got.onset("5+") == pytest.approx(0.06, abs=0.02)


def test_no_busy_commands_no_stall_model() -> None:
    trace = [(10.0 + 5 * i, 10.05 + 5 * i) for i in range(20)]  # one at a time
    pkts = []
    for i, (arrival, ack) in enumerate(trace):
        cmd = build_command(DEV, b"\0\0\0", LightStateCommand(i, 9, 50))
        pkts += [
            FlowPacket(arrival, CLOUD, cmd, 0),
            FlowPacket(ack, DEVICE, build_data_ack(cmd), 0),
        ]
    flow = Flow("idle#1", "idle", exact=True, device_id=DEV, packets=pkts)
    model = learn_model(CaptureResult(sources=["idle"], flows=[flow]))
    assert model.stalls == {}
    assert StallSamples().build() is None


def test_the_stalls_of_152132() -> None:
    """PROTOCOL.md 10.1: the strip bridge's bursts; three stalls (0.62, 1.04, 1.74 s), the
    nine commands queued behind them all flushed, no evidence that the onset depends on the
    backlog."""
    model = import_captures([str(capture_path("capture_20251107_152132.txt"))])
    got = model.stalls["local"]
    assert got.episodes == 3 and sum(got.served.values()) == 57
    assert [round(v, 2) for v in got.durations.values] == [0.62, 1.04, 1.74]
    assert got.flushed == got.queued == 9 and got.flush
    assert got.load_p() > 0.5
    assert got.onset("5+") == pytest.approx(3 / 57)
    assert got.service["0x73:f8:f0"].p50 == pytest.approx(0.0142, abs=5e-4)
    assert all(v < STALL_GAP_S / 5 for v in got.service["0x73:f8:f0"].values)


def test_the_serial_results_of_152132() -> None:
    """docs/fidelity.md: a toggle taken while the previous result was owed got its ack after
    that result, 4.5-11.7 ms later (6 cases, counting one that arrived 19 ms before its ack);
    brightness acks ran ahead of owed results (the two that waited left with a result in one
    write, or 24 ms after it).  Stalls and their flushes are left out."""
    model = import_captures([str(capture_path("capture_20251107_152132.txt"))])
    got = model.stalls["local"]
    assert got.serial == {"0x73:f8:d0": (6, 0), "0x73:f8:f0": (2, 55)}
    assert got.wait_p("0x73:f8:d0") == 1.0 and got.wait_p("0x73:f8:f0") < 0.05
    gaps = [round(v * 1000, 1) for v in got.serial_gap.values]
    assert gaps == [0.0, 4.5, 5.8, 5.9, 7.2, 9.8, 11.7, 24.4]


def test_the_model_file_keeps_them_and_older_files_have_none() -> None:
    trace, _, _ = _device_trace(lambda backlog: 0.06, bursts=20, seed=4)
    stalls = _learn(trace)
    model = DeviceModel(stalls={"local": stalls})
    back = DeviceModel.loads(model.dumps())
    assert back.stalls == model.stalls
    assert back.stalls["local"].summary() == stalls.summary()
    old = DeviceModel()
    assert "stalls" not in old.to_obj()  # no stalls: the file is as before
    assert DeviceModel.loads(old.dumps()).stalls == {}


def test_merging_adds_up_as_learning_together() -> None:
    a, _, _ = _device_trace(lambda backlog: 0.06, bursts=30, seed=5)
    b, _, _ = _device_trace(lambda backlog: 0.06, bursts=30, seed=6)
    shift = a[-1][1] + 100.0
    together = _learn(a + [(x + shift, y + shift) for x, y in b])
    sa, sb = _learn(a), _learn(b)
    merged = sa.merge(sb)
    assert merged.to_obj() == sb.merge(sa).to_obj()
    assert (merged.served, merged.stalls) == (together.served, together.stalls)
    assert (merged.queued, merged.flushed) == (together.queued, together.flushed)
    assert merged.durations.values == together.durations.values
    assert merged.service["0x73:f8:f0"].values == together.service["0x73:f8:f0"].values


def test_likelihood_ratio_test() -> None:
    assert chi2_sf(3.841459, 1) == pytest.approx(0.05, abs=1e-6)
    assert chi2_sf(5.991465, 2) == pytest.approx(0.05, abs=1e-6)
    assert lr_pvalue([(100, 5), (100, 5)]) == pytest.approx(1.0)
    assert lr_pvalue([(100, 0), (100, 30)]) < 1e-6
    assert lr_pvalue([(100, 5)]) == 1.0  # nothing to compare


def test_where_no_command_queued_behind_a_stall_it_flushes() -> None:
    """152132 flushed every command queued behind its stalls: where a capture never had one
    queued behind a stall, the flush is kept; it goes only when most were not flushed."""
    assert StallModel(queued=0, flushed=0).flush
    assert StallModel(queued=9, flushed=9).flush
    assert not StallModel(queued=9, flushed=2).flush
