# replay_capture against live peers learned from the same capture (152132): a faithful cloud
# and device are conformant; mutants, each with one planted defect, are not, with the right
# finding kind at the right packet of the recorded session.
#
# Mutants are the simulators with their engine's answers rewritten (CloudEngine / DeviceEngine
# subclasses patched into the simulator modules for one test).  Each replay runs the bridge's
# session at time scale 0.25 with idle gaps cut to 0.2 s (about 10 s).
from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from cyncsim.replay.capture import read_capture
from cyncsim.replay.conformance import DiffReport, Reference
from cyncsim.replay.engine import Action, CloudEngine, DeviceEngine, Send
from cyncsim.replay.protocol import ACK_BODY, MSG_ID
from cyncsim.simulator import cloud as cloud_mod
from cyncsim.simulator import device as device_mod
from cyncsim.simulator.cloud import CyncCloudSimulator
from cyncsim.simulator.device import CyncDeviceSimulator
from cyncsim.simulator.replay import replay_capture
from tests.support import capture_path

LOCAL = "capture_20251107_152132.txt"
BRIDGE = bytes.fromhex("6457e7f2")
FAST = (0.1, 0.2)  # time scale, max gap
SLOW = (0.15, 0.1)  # the device runs at the same scale
Mutation = Callable[[list[Action], float], list[Action]]


@pytest.fixture(scope="module")
def ref() -> Reference:
    return Reference.from_result(read_capture(capture_path(LOCAL)))


def _mutant(base: type, mutate: Mutation) -> type:
    class Mutant(base):  # type: ignore[misc]
        def receive(self, data: bytes, now: float) -> list[Action]:
            return mutate(super().receive(data, now), now)

    return Mutant


async def _devices_side(ref: Reference, record: Path) -> DiffReport:
    async with CyncCloudSimulator(ref.model, seed=3) as cloud:
        return await replay_capture(
            [capture_path(LOCAL)], "127.0.0.1", cloud.port, devices=[BRIDGE], record=record,
            time_scale=FAST[0], max_gap=FAST[1], seed=7,
        )  # fmt: skip


async def _controller_side(ref: Reference, record: Path) -> DiffReport:
    scale, gap = SLOW
    async with CyncDeviceSimulator(BRIDGE, model=ref.model, seed=3, time_scale=scale) as dev:
        return await replay_capture(
            [capture_path(LOCAL)], "127.0.0.1", dev.port, side="controller", record=record,
            peer_time_scale=scale, time_scale=scale, max_gap=gap, seed=7,
        )  # fmt: skip


def _packet(record: Path, flow: str, index: int) -> bytes:
    for f in read_capture(record).flows:
        if f.id == flow:
            return f.packets[index].packet.encode()
    raise AssertionError(f"no flow {flow}")


def _errors(report: DiffReport) -> list[str]:
    return sorted({f.kind for f in report.findings if f.severity == "error"})


# ---------------------------------------------------------------------- devices side
def test_cloud_learned_from_the_capture_is_conformant(ref: Reference, tmp_path: Path) -> None:
    report = asyncio.run(_devices_side(ref, tmp_path / "s.txt"))
    assert report.conformant, [f.message for f in report.findings]
    assert {r.label for r in report.timing} >= {
        "0x23 -> 0x28",
        "0xd3 -> 0xd8",
        "0x83:fa:db -> 0x88",
    }
    assert all(r.role == "cloud" for r in report.timing)


def _wrong_echo(actions: list[Action], now: float) -> list[Action]:
    out: list[Action] = []
    for a in actions:
        if isinstance(a, Send) and a.key == "0x88":
            data = bytearray(a.data)
            data[ACK_BODY["msg_id"].slice.start] ^= 0x5A
            a = a._replace(data=bytes(data))
        out.append(a)
    return out


def _no_pong(actions: list[Action], now: float) -> list[Action]:
    return [a for a in actions if not (isinstance(a, Send) and a.key == "0xd8")]


def _slow_hello_ack(actions: list[Action], now: float) -> list[Action]:
    return [a._replace(at=now + 5 * (a.at - now)) if isinstance(a, Send) and a.key == "0x28"
            else a for a in actions]  # fmt: skip


@pytest.mark.parametrize(
    ("mutation", "kind", "first_byte"),
    [
        (_wrong_echo, "echo_mismatch", 0x88),  # the 0x88 itself
        (_no_pong, "unanswered", 0xD3),  # the ping left unanswered
        (_slow_hello_ack, "latency", 0x28),  # the slow 0x28
    ],
    ids=["wrong-0x88-echo", "never-answers-0xd3", "0x23-five-times-slower"],
)
def test_mutant_controllers_are_nonconformant(
    ref: Reference,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    mutation: Mutation,
    kind: str,
    first_byte: int,
) -> None:
    monkeypatch.setattr(cloud_mod, "CloudEngine", _mutant(CloudEngine, mutation))
    record = tmp_path / "s.txt"
    report = asyncio.run(_devices_side(ref, record))
    assert not report.conformant
    assert _errors(report) == [kind], [f.message for f in report.findings]
    for f in report.findings:
        if f.kind == kind:
            assert f.index is not None
            assert _packet(record, f.flow, f.index)[0] == first_byte


# ---------------------------------------------------------------------- controller side
def test_device_learned_from_the_capture_is_conformant(ref: Reference, tmp_path: Path) -> None:
    report = asyncio.run(_controller_side(ref, tmp_path / "s.txt"))
    assert report.conformant, [f.message for f in report.findings]
    assert {r.request for r in report.timing} >= {"0xa3", "0x73:f8:52", "0x73:f8:d0"}
    assert all(r.role == "device" for r in report.timing)


def _planted_defect(actions: list[Action], now: float) -> list[Action]:
    out: list[Action] = []
    for a in actions:
        if isinstance(a, Send) and a.key.startswith("0x73:f9") and a.key != "0x73:f9:52":
            continue  # the f9 result of a command is skipped
        if isinstance(a, Send) and a.key == "0x7b":
            data = bytearray(a.data)
            data[MSG_ID.start] ^= 0x33  # the 0x7B echoes the wrong message id
            a = a._replace(data=bytes(data))
        out.append(a)
    return out


def test_device_with_planted_defect_is_nonconformant(
    ref: Reference, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(device_mod, "DeviceEngine", _mutant(DeviceEngine, _planted_defect))
    record = tmp_path / "s.txt"
    report = asyncio.run(_controller_side(ref, record))
    assert not report.conformant
    errors = _errors(report)
    assert "echo_mismatch" in errors and "unanswered" in errors, errors
    for f in report.findings:
        if f.kind == "echo_mismatch":
            assert _packet(record, f.flow, f.index or 0)[0] == 0x7B
        if f.kind == "unanswered":
            assert _packet(record, f.flow, f.index or 0)[0] == 0x73
