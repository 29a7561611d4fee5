# Captures as pytest suites, through pytester: `pytest --cync-replay CAPTURE` collects one item
# per captured device, passes against a conformant controller (the project's cloud simulator
# learned from the same capture, started by the conftest's cync_replay_target), under xdist
# too, and fails against defective ones with the finding in the output: its kind, flow, packet
# index and bytes.  Without a cync_replay_target the items fail saying how to define one; a
# capture without devices skips with the reason.  The cync_replay fixture returns the verdict.
from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from cyncsim.replay.capture import read_capture
from cyncsim.replay.conformance import DiffReport
from cyncsim.replay.conformance.render import render_failure
from cyncsim.replay.model.importer import learn_model
from cyncsim.replay.session import replay_units
from cyncsim.simulator.cloud import CyncCloudSimulator

LOCAL = "capture_20251107_152132.txt"
TLS_ONLY = "capture_20251106_081101.txt"
# Two plain bulbs: quick to replay (no 0x83 bursts), and conformant at this time scale.
QUICK = "325d4a5f or 38e8eb35"
FAST = ["--cync-replay-time-scale=0.05", "--cync-replay-max-gap=1", "--cync-seed=12"]
# A bridge that reports its state with 0x83 (answered by 0x88).
BRIDGE = "device-6457e7f2"
BRIDGE_RUN = ["-k", BRIDGE, "--cync-replay-time-scale=0.1", "--cync-replay-max-gap=0.5"]

CONFTEST = """
import pytest_asyncio

from cyncsim.replay.capture import read_capture
from cyncsim.replay.model.importer import learn_model
from cyncsim.simulator.cloud import CyncCloudSimulator

MODEL = learn_model(read_capture({capture!r}))
DEFECT = {defect!r}


def garble(send):  # a 0x88 whose echo of the 0x83's bytes 9-11 (its bytes 5-7) is wrong
    d = send.data
    return send._replace(data=d[:5] + bytes(b ^ 0xFF for b in d[5:8]) + d[8:])


class Defective(CyncCloudSimulator):
    # The learned controller, with one planted defect when DEFECT names one.
    def _protocol(self):
        conn = super()._protocol()
        receive = conn.engine.receive

        def defective(data, now):
            if DEFECT == "no_d8" and data[:1] == b"\\xd3":
                return []  # never answers 0xD3
            actions = receive(data, now)
            if DEFECT == "bad_88":  # 0x88 echoing the wrong bytes
                actions = [garble(a) if a[1][:1] == b"\\x88" else a for a in actions]
            return actions

        conn.engine.receive = defective
        return conn


@pytest_asyncio.fixture
async def cync_replay_target():
    async with Defective(MODEL, seed=1) as controller:
        yield "127.0.0.1", controller.port, False
"""


@pytest.fixture
def capture(cync_captures_dir: Path) -> Path:
    path = cync_captures_dir / LOCAL
    if not path.is_file():
        pytest.skip(f"{LOCAL} is not in {cync_captures_dir}")
    return path


def make_suite(pytester: pytest.Pytester, capture: Path, defect: str = "") -> pytest.Pytester:
    pytester.makeini(
        "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n"
    )
    pytester.makeconftest(CONFTEST.format(capture=str(capture), defect=defect))
    return pytester


@pytest.fixture
def suite(pytester: pytest.Pytester, capture: Path) -> pytest.Pytester:
    return make_suite(pytester, capture)


def test_collects_one_item_per_captured_device(suite: pytest.Pytester, capture: Path) -> None:
    result = suite.runpytest(f"--cync-replay={capture}", "--collect-only", "-q")
    ids = [line for line in result.stdout.lines if "::device-" in line]
    expected = [f"{LOCAL}::{unit.name}" for unit in replay_units(capture)]
    assert len(expected) == 22
    assert ids == expected
    picked = suite.runpytest(f"--cync-replay={capture}", "--collect-only", "-q", "-k", BRIDGE)
    assert [line for line in picked.stdout.lines if "::device-" in line] == [f"{LOCAL}::{BRIDGE}"]


def test_ini_globs_collect_the_same_items(suite: pytest.Pytester, capture: Path) -> None:
    suite.makeini(
        "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n"
        f"cync_replay = {capture.parent}/capture_2025110[7]_*.txt\n"
    )
    result = suite.runpytest("--collect-only", "-q")
    assert sum("::device-" in line for line in result.stdout.lines) == 22


def test_conformant_controller_passes_under_xdist(suite: pytest.Pytester, capture: Path) -> None:
    result = suite.runpytest(
        f"--cync-replay={capture}", "-k", QUICK, *FAST, "-n", "2", "-p", "xdist"
    )
    result.assert_outcomes(passed=2)


def test_controller_that_never_answers_d3_fails_naming_the_finding(
    pytester: pytest.Pytester, capture: Path
) -> None:
    suite = make_suite(pytester, capture, "no_d8")
    result = suite.runpytest(f"--cync-replay={capture}", *BRIDGE_RUN, "--cync-seed=12")
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    assert f"{LOCAL}::{BRIDGE} replayed against 127.0.0.1:" in out
    assert re.search(r"replay nonconformant: \d+ unanswered", out)
    assert re.search(r"packet \d+ at [-0-9T:.]+: 0xd3 got no 0xd8", out)
    assert "packet:    d3 00 00 00 00" in out


def test_wrong_0x88_echo_fails_with_the_bytes_marked(
    pytester: pytest.Pytester, capture: Path
) -> None:
    suite = make_suite(pytester, capture, "bad_88")
    result = suite.runpytest(f"--cync-replay={capture}", *BRIDGE_RUN, "--cync-seed=12")
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    assert re.search(r"replay nonconformant: \d+ echo_mismatch", out)
    assert re.search(r"packet \d+ at \S+: 0x88 answering 0x83\S* does not copy msg_id", out)
    assert "packet:    88 00 00 00 03 [" in out  # the differing bytes marked


def test_without_a_target_the_items_fail_saying_how_to_define_one(
    pytester: pytest.Pytester, capture: Path
) -> None:
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    result = pytester.runpytest(f"--cync-replay={capture}", "-k", "325d4a5f")
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    assert "no replay target: define a fixture `cync_replay_target` in your conftest.py" in out
    assert "Traceback" not in out


def test_capture_without_devices_skips_with_the_reason(
    pytester: pytest.Pytester, cync_captures_dir: Path
) -> None:
    path = cync_captures_dir / TLS_ONLY
    if not path.is_file():
        pytest.skip(f"{TLS_ONLY} is not in {cync_captures_dir}")
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    result = pytester.runpytest(f"--cync-replay={path}", "-rs")
    result.assert_outcomes(skipped=1)
    assert "no devices to replay" in result.stdout.str()


def test_missing_replay_path_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    result = pytester.runpytest("--cync-replay=nowhere/capture.txt")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "--cync-replay nowhere/capture.txt: no such file or directory" in result.stderr.str()


async def test_cync_replay_fixture_returns_the_verdict_as_data(
    cync_replay: Callable[..., Awaitable[DiffReport]], capture: Path
) -> None:
    model = learn_model(read_capture(capture))
    bulb = bytes.fromhex("325d4a5f")
    async with CyncCloudSimulator(model, seed=1) as controller:
        verdict = await cync_replay(
            LOCAL, "127.0.0.1", controller.port, devices=[bulb], time_scale=0.05, max_gap=1.0
        )
    assert verdict.conformant, render_failure(verdict)
    assert verdict.packets > 0


async def test_cync_replay_fixture_skips_a_missing_capture(
    cync_replay: Callable[..., Awaitable[DiffReport]],
) -> None:
    with pytest.raises(pytest.skip.Exception, match=r"capture_19990101_000000\.txt not found"):
        await cync_replay("capture_19990101_000000.txt", "127.0.0.1", 9)
