# Serial results learned from acks and f9 results (replay/model/stalls.py, learn.py, _hot.py):
# a synthetic device whose toggle acks wait for the result still owed (a gap of U(4, 12) ms
# after it) and whose brightness acks run ahead of it goes through the real learner (pairing
# included, both paths) and comes back: which kinds wait, the gap, and a result's service
# timed from its own ack (U(200, 260) ms) rather than from the command's arrival.  Merging adds
# up as learning together; older model files load without the new fields.
from __future__ import annotations

import random

import pytest

from cyncsim.replay.capture import CLOUD, DEVICE, CaptureResult, Flow, FlowPacket
from cyncsim.replay.capture.model import Sender
from cyncsim.replay.model import learn_model
from cyncsim.replay.model.importer import ModelLearner
from cyncsim.replay.model.learn import ExchangeModel
from cyncsim.replay.model.stalls import StallModel, StallSamples
from cyncsim.replay.payloads import (
    LightStateCommand,
    PowerCommand,
    build_command,
    build_data_ack,
    build_result,
)
from cyncsim.replay.protocol import CyncPacket

DEV = b"\x64\x57\xe7\xf2"
TOGGLE, BRIGHTNESS = "0x73:f8:d0", "0x73:f8:f0"

Event = tuple[float, Sender, CyncPacket]  # (time, sender, packet)


class _Device:
    """Emits the packets of one command: its arrival, its ack and its f9 result."""

    def __init__(self) -> None:
        self.n = 0
        self.events: list[Event] = []

    def command(self, toggle: bool, arrival: float, ack: float, result: float | None) -> None:
        ctr = self.n % 256
        self.n += 1
        cmd = build_command(
            DEV,
            b"\0\0\0",
            PowerCommand(ctr, 9, True) if toggle else LightStateCommand(ctr, 9, 50),
        )
        self.events.append((arrival, CLOUD, cmd))
        self.events.append((ack, DEVICE, build_data_ack(cmd)))
        if result is not None:
            assert cmd.frame is not None
            msg = self.n.to_bytes(3, "big")
            self.events.append((result, DEVICE, build_result(DEV, msg, cmd.frame)))


def _serial_trace(
    episodes: int, seed: int, chain: int = 4
) -> tuple[list[Event], list[float], list[float]]:
    """Chains of ``chain`` commands, each sent 5-50 ms after the previous ack, 5 s apart;
    toggle and brightness chains alternate.  A toggle's ack waits for the result still owed,
    U(4, 12) ms after it; a brightness ack leaves 20-60 ms after its command, before the
    owed result.  Results follow their own acks by U(200, 260) ms (toggles) or U(150,
    250) ms (brightness).  Also the toggle gaps and works drawn."""
    rng = random.Random(seed)
    dev = _Device()
    gaps: list[float] = []
    works: list[float] = []
    t = 10.0
    for ep in range(episodes):
        toggle = ep % 2 == 0
        arrival = t
        ack = arrival + rng.uniform(0.020, 0.150 if toggle else 0.060)
        last = ack
        for j in range(chain):
            work = rng.uniform(0.200, 0.260) if toggle else rng.uniform(0.150, 0.250)
            if toggle:
                works.append(work)
            result = ack + work
            dev.command(toggle, arrival, ack, result)
            last = max(last, result)
            if j == chain - 1:
                break
            arrival = ack + rng.uniform(0.005, 0.050 if toggle else 0.030)
            if toggle:
                gaps.append(rng.uniform(0.004, 0.012))
                ack = result + gaps[-1]
            else:
                ack = arrival + rng.uniform(0.020, 0.060)
        t = last + 5.0
    return dev.events, gaps, works


def _flow(events: list[Event], name: str = "synthetic") -> Flow:
    pkts = [FlowPacket(ts, sender, pkt, 0) for ts, sender, pkt in events]
    pkts.sort(key=lambda fp: fp.ts)  # stable: emission order on ties
    return Flow(f"{name}#1", name, exact=True, device_id=DEV, packets=pkts)


def _stalls(events: list[Event]) -> StallModel:
    model = learn_model(CaptureResult(sources=["synthetic"], flows=[_flow(events)]))
    (stalls,) = model.stalls.values()
    return stalls


def _exchange(exchanges: list[ExchangeModel], request: str) -> ExchangeModel:
    (ex,) = [ex for ex in exchanges if ex.request == request]
    return ex


def test_toggles_wait_for_the_owed_result_and_brightness_runs_ahead() -> None:
    events, gaps, works = _serial_trace(episodes=200, seed=1)
    model = learn_model(CaptureResult(sources=["synthetic"], flows=[_flow(events)]))
    (got,) = model.stalls.values()
    # 100 chains of each kind, 3 commands of each chain sent while a result was owed
    assert got.serial == {TOGGLE: (300, 0), BRIGHTNESS: (0, 300)}
    assert got.wait_p(TOGGLE) == 1.0 and got.wait_p(BRIGHTNESS) == 0.0
    assert got.wait_p("0x73:f8:52") == 0.0  # a kind never sent so
    # the gap: exactly the ones drawn (the acks that waited are all toggles)
    assert got.serial_gap.values == pytest.approx(sorted(gaps), abs=1e-9)
    assert got.serial_gap.p50 == pytest.approx(0.008, abs=0.001)
    # no command was ever acked while another waited for its ack: no busy service, no stalls
    assert got.served == {} and got.onset("1-4") == 0.0 and got.flush
    summary = got.summary()
    assert summary["serial"] == {TOGGLE: [300, 0], BRIGHTNESS: [0, 300]}
    assert summary["serial_gap_ms"]["samples"] == 300
    # a toggle's f9 result is timed from its own ack: the work, U(200, 260) ms
    (f9,) = [r for r in _exchange(model.exchanges, TOGGLE).responses if r.key == "0x73:f9:d0"]
    assert f9.service is not None
    assert f9.service.p50 == pytest.approx(0.230, abs=0.010)
    assert f9.service.values == pytest.approx(sorted(works), abs=1e-9)
    # the first answer, the ack, is timed as before: from the arrival (nothing queued), so
    # an ack that waited for a result holds that wait (up to 50 + 260 - 5 + 12 ms)
    ack = _exchange(model.exchanges, TOGGLE).responses[0]
    assert ack.key == "0x7b" and ack.service is not None
    assert 0.150 < ack.service.quantile(1.0) <= 0.267


def test_both_learner_paths_learn_the_same_model() -> None:
    events, _, _ = _serial_trace(episodes=40, seed=2)
    reference = learn_model(CaptureResult(sources=["synthetic"], flows=[_flow(events)]))
    learner = ModelLearner()  # the importer's hot loop (_hot.py)
    learner.add_source("synthetic")
    flow = _flow(events)
    learner.order.append(flow)
    buf = learner.buffer(flow)
    buf.extend((fp.sender, fp.ts, fp.packet) for fp in flow.packets)
    learner.learn_buffered([flow])
    hot = learner.finish()
    (stalls,) = hot.stalls.values()
    assert stalls.serial
    assert hot.to_obj() == reference.to_obj()


def test_merging_adds_up_as_learning_together() -> None:
    a, _, _ = _serial_trace(episodes=30, seed=3)
    b, _, _ = _serial_trace(episodes=31, seed=4)  # ends with a toggle chain: both kinds differ
    shift = max(ts for ts, _, _ in a) + 100.0
    together = _stalls(a + [(ts + shift, s, p) for ts, s, p in b])
    sa, sb = _stalls(a), _stalls(b)
    merged = sa.merge(sb)
    assert merged.to_obj() == sb.merge(sa).to_obj()  # the order does not matter
    assert merged.serial == together.serial
    assert merged.serial_gap.values == together.serial_gap.values
    samples = StallSamples()
    samples.merge(StallSamples())
    assert samples.build() is None  # nothing learned: no model


def test_older_model_files_have_no_serial_results() -> None:
    events, _, _ = _serial_trace(episodes=10, seed=5)
    stalls = _stalls(events)
    obj = stalls.to_obj()
    assert StallModel.from_obj(obj) == stalls
    del obj["serial"], obj["serial_gap"]
    old = StallModel.from_obj(obj)
    assert old.serial == {} and not old.serial_gap and old.wait_p(TOGGLE) == 0.0
    assert "serial" not in old.summary() and old.merge(stalls).serial == stalls.serial


def test_a_result_that_never_came_was_not_owed() -> None:
    """Toggles whose predecessor got no f9 (a crafted command, PROTOCOL.md 8): nothing was
    owed, so they are not counted; one that left with the owed result waited a gap of 0."""
    dev = _Device()
    for i in range(5):
        t = 10.0 + 20 * i
        dev.command(True, t, t + 0.05, None)  # acked, never answered
        dev.command(True, t + 0.1, t + 0.15, t + 0.4)  # sent while no result was owed
    t = 200.0
    dev.command(True, t, t + 0.05, t + 0.3)
    dev.command(True, t + 0.1, t + 0.3, t + 0.55)  # its ack and the owed f9 in one write
    got = _stalls(dev.events)
    assert got.serial == {TOGGLE: (1, 0)} and got.serial_gap.values == (0.0,)
