# The engine under the learned stall process (replay/engine/_stalls.py): one command at a time
# keeps the real idle latency per opcode (the must-show of issue 13); in a burst a stall holds
# the queue and the commands behind it leave in one flush, so the commands sent together get
# identical latencies; seeded; a model without stalls keeps the plain FIFO.
from __future__ import annotations

import dataclasses
import itertools
import statistics

import pytest

from cyncsim.captures import load_default_model
from cyncsim.replay.engine import DeviceEngine, ModelView, Send
from cyncsim.replay.model import DeviceModel, Distribution
from cyncsim.replay.model.stalls import StallModel
from cyncsim.replay.payloads import Command, LightStateCommand, PowerCommand, build_command

DEV = b"\x64\x57\xe7\xf2"
AUTH = b"1e07d0000000abcd"
# PROTOCOL.md 10.1 / issue 13: the strip bridge of 152132 with one command outstanding
IDLE_P50_MS = {"f8 d0": 127.5, "f8 f0": 33.7}


def _engine(model: DeviceModel, seed: int, variant: str | None = "local") -> DeviceEngine:
    eng = DeviceEngine(model, DEV, AUTH, mesh_node=9, seed=seed, variant=variant)
    eng.connection_made(0.0)
    return eng


def _cmd(op: str, i: int) -> bytes:
    command: Command = LightStateCommand(i % 256, 9, 50)
    if op == "f8 d0":
        command = PowerCommand(i % 256, 9, bool(i % 2))
    return build_command(DEV, b"\0\0\0", command).encode()


def _acks(eng: DeviceEngine, data: bytes, now: float) -> list[float]:
    return [a.at for a in eng.receive(data, now) if isinstance(a, Send) and a.key == "0x7b"]


def _burst(eng: DeviceEngine, start: float, n: int = 20) -> list[tuple[float, float]]:
    """(arrival, ack) of ``n`` commands sent two at a time, 6 ms apart (as in 152132)."""
    out = []
    for i in range(n):
        now = start + 0.006 * (i // 2)
        (at,) = _acks(eng, _cmd("f8 f0", i), now)
        out.append((now, at))
    return out


@pytest.mark.parametrize("variant", ["local", None])
@pytest.mark.parametrize("op", sorted(IDLE_P50_MS))
def test_idle_commands_keep_the_real_latency(op: str, variant: str | None) -> None:
    """One command outstanding at a time: command -> 0x7B p50 within 10 % of the real one."""
    model = load_default_model()
    lats = []
    for seed in range(8):
        eng = _engine(model, seed, variant)
        for i in range(100):
            now = 10.0 + 30.0 * i  # long after the previous ack
            lats += [(at - now) * 1000 for at in _acks(eng, _cmd(op, i), now)]
    assert len(lats) == 800
    assert statistics.median(lats) == pytest.approx(IDLE_P50_MS[op], rel=0.10)


def _certain_stall(model: DeviceModel) -> DeviceModel:
    """``model`` whose devices stall on every busy command, for 1.0 s, and flush."""
    stalls = StallModel(
        served={"1-4": 10, "5+": 10},
        stalls={"1-4": 10, "5+": 10},
        durations=Distribution.constant(1.0, method="measured"),
        queued=5,
        flushed=5,
        service=model.stalls["local"].service,
    )
    return dataclasses.replace(model, stalls={"local": stalls})


def test_a_stall_holds_the_queue_and_flushes_it() -> None:
    model = _certain_stall(load_default_model())
    got = _burst(_engine(model, 1), 5.0)
    departures = [at for _, at in got]
    assert departures == sorted(departures)
    first, second = departures[0], departures[1]
    assert second == pytest.approx(first + 1.0)  # the first busy command stalls for 1.0 s ...
    assert set(departures[1:]) == {second}  # ... and every later one leaves in its flush
    # commands sent together (one write) get identical latencies
    for (t1, a1), (t2, a2) in zip(got[0::2], got[1::2], strict=True):
        assert t1 == t2
        if a1 == a2:
            assert a1 - t1 == a2 - t2
    # the f9 results of the commands queued behind the stall leave in its flush too
    eng = _engine(model, 1)
    results = []
    for i in range(20):
        sends = eng.receive(_cmd("f8 f0", i), 5.0 + 0.006 * (i // 2))
        results += [a.at for a in sends if isinstance(a, Send) and a.key == "0x73:f9:f0"]
    assert len(results) == 20 and set(results[1:]) == {second}
    # after the flush the device is idle again: the next command takes the idle latency
    (after,) = _acks(_engine(model, 1), _cmd("f8 f0", 99), 100.0)
    assert after - 100.0 < 0.5


def test_stalls_show_in_some_bursts_of_the_shipped_model() -> None:
    """152132: stalls in 2 of its 4 bursts; the learned onset (3 in 57 busy commands) gives
    a stall in about half of the bursts of 20, each followed by a flush of those behind it."""
    model = load_default_model()
    stalled = 0
    for seed in range(40):
        got = _burst(_engine(model, seed), 5.0)
        deps = [at for _, at in got]
        gaps = [b - a for a, b in itertools.pairwise(deps)]
        long = [i for i, g in enumerate(gaps) if g > 0.25]
        if long:
            stalled += 1
            i = long[0] + 1  # the stalled command; the rest queued behind it left with it
            assert all(at == deps[i] for at in deps[i:])
        assert all(0.0 <= g < 2.0 for g in gaps)
    assert 0.15 * 40 <= stalled <= 0.9 * 40


def test_seeded() -> None:
    model = load_default_model()
    runs = [_burst(_engine(model, seed), 5.0) for seed in (7, 7, 8)]
    assert runs[0] == runs[1] and runs[0] != runs[2]


def test_a_new_connection_starts_without_a_stall() -> None:
    model = _certain_stall(load_default_model())
    eng = _engine(model, 3)
    got = _burst(eng, 5.0)
    end = got[-1][1]
    eng.connection_lost(5.1)
    eng.connection_made(5.2)  # before the stall's end: the new connection does not inherit it
    (at,) = _acks(eng, _cmd("f8 f0", 50), 5.3)
    assert at < end


def test_a_model_without_stalls_keeps_the_plain_fifo() -> None:
    model = dataclasses.replace(load_default_model(), stalls={})
    plans = ModelView.get(model, "device", "local").split("0x73:f8:f0").plans
    assert [p.stall for p in plans] == [None] * len(plans)
    with_stalls = ModelView.get(load_default_model(), "device", "local").split("0x73:f8:f0")
    assert [p.key for p in with_stalls.plans if p.stall is not None] == ["0x7b"]
    eng = _engine(model, 1)
    deps = [at for _, at in _burst(eng, 5.0)]
    assert deps == sorted(deps)


def test_time_scale_zero_has_no_stalls() -> None:
    model = _certain_stall(load_default_model())
    eng = DeviceEngine(model, DEV, AUTH, mesh_node=9, seed=1, variant="local", time_scale=0)
    eng.connection_made(0.0)
    for i in range(10):
        assert _acks(eng, _cmd("f8 f0", i), 1.0) == [1.0]
