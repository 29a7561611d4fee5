# A device's results (f9) in the engine: each is worked on once its command's ack has left, so
# commands sent back to back keep a bounded backlog (they used to pile up without end); under
# a learned serial process (most toggles waited in the captures) a toggle that finds an
# earlier result owed gets its ack only after that result, a learned gap later
# (docs/fidelity.md, results under back-to-back commands).
from __future__ import annotations

import dataclasses

import pytest

from cyncsim.captures import load_default_model
from cyncsim.replay.engine import DeviceEngine, Send
from cyncsim.replay.model import DeviceModel, Distribution
from cyncsim.replay.payloads import LightStateCommand, PowerCommand, build_command

DEV = b"\x64\x57\xe7\xf2"
AUTH = b"1e07d0000000abcd"
TOGGLE, BRIGHT = "0x73:f8:d0", "0x73:f8:f0"
RESULT = {TOGGLE: "0x73:f9:d0", BRIGHT: "0x73:f9:f0"}


def _engine(model: DeviceModel, seed: int) -> DeviceEngine:
    eng = DeviceEngine(model, DEV, AUTH, mesh_node=9, seed=seed, variant="local")
    eng.connection_made(0.0)
    return eng


def _cmd(kind: str, i: int) -> bytes:
    if kind == TOGGLE:
        return build_command(DEV, b"\0\0\0", PowerCommand(i % 256, 9, bool(i % 2))).encode()
    return build_command(DEV, b"\0\0\0", LightStateCommand(i % 256, 9, 10 + i % 80)).encode()


def _send(eng: DeviceEngine, kind: str, i: int, now: float) -> tuple[float, float]:
    """(ack, result) departures of command ``i`` arriving at ``now``."""
    sends = {a.key: a.at for a in eng.receive(_cmd(kind, i), now) if isinstance(a, Send)}
    return sends["0x7b"], sends[RESULT[kind]]


def _back_to_back(eng: DeviceEngine, kind: str, n: int) -> list[tuple[float, float, float]]:
    """(arrival, ack, result) of ``n`` commands, each sent 1 ms after the previous ack."""
    out, now = [], 10.0
    for i in range(n):
        ack, result = _send(eng, kind, i, now)
        out.append((now, ack, result))
        now = ack + 0.001
    return out


def _with_serial(model: DeviceModel, wait: tuple[int, int], gap_s: float) -> DeviceModel:
    stalls = dataclasses.replace(
        model.stalls["local"],
        serial={TOGGLE: wait},
        serial_gap=Distribution.constant(gap_s, method="measured"),
    )
    return dataclasses.replace(model, stalls={"local": stalls})


@pytest.mark.parametrize("kind", [TOGGLE, BRIGHT])
def test_back_to_back_commands_keep_a_bounded_backlog(kind: str) -> None:
    """One command outstanding, 600 in a row: no result lags its own ack by more than the
    learned work time's maximum (they lagged by up to 47 s when results queued on each other's
    whole service time), and the acks do not drift."""
    model = load_default_model()
    view = _engine(model, 0).view
    work = next(p for p in view.split(kind).plans if p.key == RESULT[kind]).delay
    got = _back_to_back(_engine(model, 5), kind, 600)
    lags = [result - ack for _, ack, result in got]
    assert max(lags) <= work.values[-1] + 1e-9
    # the last hundred commands take as long as the first hundred (no drift)
    lat = [ack - now for now, ack, _ in got]
    first, last = sorted(lat[:100]), sorted(lat[-100:])
    assert last[50] <= 2 * first[50] + 0.05


def test_a_result_is_worked_on_after_its_ack() -> None:
    """Idle: the result leaves at its ack + a sample of the learned work time."""
    model = load_default_model()
    eng = _engine(model, 2)
    work = next(p for p in eng.view.split(TOGGLE).plans if p.key == RESULT[TOGGLE]).delay
    for i in range(50):
        now = 10.0 + 30.0 * i
        ack, result = _send(eng, TOGGLE, i, now)
        assert work.values[0] - 1e-9 <= result - ack <= work.values[-1] + 1e-9


def test_a_serial_ack_waits_for_the_result_owed() -> None:
    """All waited: the ack of a toggle arriving while the previous result is owed leaves the
    learned gap after that result; the device settles at one command per ack + work + gap."""
    model = _with_serial(load_default_model(), (5, 0), 0.008)
    got = _back_to_back(_engine(model, 3), TOGGLE, 200)
    waited = 0
    for k in range(1, len(got)):
        now, ack, _ = got[k]
        owed = [r for _, _, r in got[:k] if r > now]
        if owed:
            waited += 1
            assert ack >= max(owed) + 0.008 - 1e-9
    assert waited >= 100  # back to back, most toggles find the previous result owed


@pytest.mark.parametrize("wait", [(0, 5), (2, 55)])  # (2, 55): brightness in 152132
def test_a_kind_whose_acks_mostly_ran_ahead_runs_ahead(wait: tuple[int, int]) -> None:
    """The ack does not wait for the result owed: a kind follows its majority."""
    model = _with_serial(load_default_model(), wait, 0.008)
    got = _back_to_back(_engine(model, 3), TOGGLE, 200)
    ahead = sum(1 for k in range(1, len(got)) if any(r > got[k][1] for _, _, r in got[:k]))
    assert ahead >= 50


def test_seeded() -> None:
    model = _with_serial(load_default_model(), (3, 2), 0.008)  # waits (3 of 5)
    runs = [_back_to_back(_engine(model, s), TOGGLE, 100) for s in (4, 4, 6)]
    assert runs[0] == runs[1] and runs[0] != runs[2]
