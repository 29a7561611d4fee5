# Replay against a real peer: the device side of the local capture (152132, recorded against
# cync-controller) replayed against the real cync-lan 0.1.2 server (PyPI, nCyncServer) over
# TLS, from the interop venv (tests/interop/cync_lan_harness.py; the test skips with the
# reason when that venv cannot be made).
#
# It asserts that the replay runs to the end with a verdict, that every captured device (22)
# connected from its own loopback address, and the differences between cync-lan and the
# server the capture was recorded against that the replay finds (README, "findings about
# cync-lan"): cync-lan answers 0xD3 pings about ten times faster (under 2 ms against 8 ms),
# and it follows the 0x88 to each device 0x83 report with a 0x78 that the captured server
# never sends.  Its answers are otherwise structurally right (no echo, order or unanswered
# finding).
from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from cyncsim.replay.capture import read_capture
from cyncsim.replay.conformance import DiffReport
from cyncsim.replay.session import replay_units
from cyncsim.simulator.replay import replay_capture
from tests.interop.cync_lan_harness import (
    CyncLanServer,
    InteropUnavailable,
    MeshNode,
    interop_python,
)
from tests.support import capture_path

pytestmark = pytest.mark.interop

LOCAL = "capture_20251107_152132.txt"
NODES = (103, 11, 44, 12, 66)  # the first nodes of the bridge's captured mesh table


@pytest.fixture(scope="module")
def interop_py() -> Path:
    try:
        return interop_python()
    except InteropUnavailable as exc:
        pytest.skip(str(exc))


async def _replay(python: Path, workdir: Path, record: Path, devices: int) -> DiffReport:
    nodes = [MeshNode(n, f"replay node {n}") for n in NODES]
    try:
        server = CyncLanServer(workdir, nodes, max_tcp_conn=devices + 5, python=python)
        await server.start()
    except InteropUnavailable as exc:  # e.g. no openssl
        pytest.skip(str(exc))
    try:
        return await replay_capture(
            [capture_path(LOCAL)], "127.0.0.1", server.port, tls=True, time_scale=0.03,
            max_gap=0.2, seed=7, record=record,
        )  # fmt: skip
    finally:
        await server.stop()


def test_replaying_the_devices_of_152132_against_cync_lan(interop_py: Path, tmp_path: Path) -> None:
    units = replay_units(capture_path(LOCAL))
    record = tmp_path / "session.txt"
    report = asyncio.run(_replay(interop_py, tmp_path / "cync_lan", record, len(units)))
    # ran to the end, with a verdict
    assert report.verdict in ("conformant", "nonconformant")
    assert report.packets > 1000
    # every captured device connected (and said hello) from its own address
    flows = read_capture(record).flows
    assert {f.device_id for f in flows} == {u.device_id for u in units}
    # the differences from the captured server
    errors = {f.kind for f in report.findings if f.severity == "error"}
    assert "latency" in errors
    assert not errors & {"echo_mismatch", "unanswered", "wrong_response", "response_order"}
    pong = next(r for r in report.timing if r.label == "0xd3 -> 0xd8")
    assert pong.verdict == "fail" and pong.cand["p50"] < pong.ref["p50"] / 3
    new = {(c.sender, c.kind) for c in report.coverage if c.status == "new"}
    assert ("cloud", "0x78") in new
    assert report.counts().get("unknown_kind", 0) >= 1
