# `cyncsim replay` end to end: against `cyncsim serve --cloud` (a subprocess learned from the
# same capture) the devices side is conformant, with the same report, --json and exit codes as
# `cyncsim diff`; bad input is one line and exit status 2 (nothing listening, a TLS handshake
# failure, a capture with no devices).
from __future__ import annotations

import io
import json
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from cyncsim.replay.capture import read_capture
from cyncsim.simulator.ports import find_free_port
from cyncsim.tools.cli import main
from tests.support import HELLO_ACK, capture_path

LOCAL = "capture_20251107_152132.txt"
TLS_ONLY = "capture_20251106_081101.txt"
FAST = ["--device", "6457e7f2", "--time-scale", "0.1", "--max-gap", "0.2", "--seed", "7"]


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("model") / "local.msgpack"
    assert main(["import", str(capture_path(LOCAL)), "-o", str(path)], io.StringIO()) == 0
    return path


@pytest.fixture
def cloud(model: Path) -> Iterator[int]:
    """`cyncsim serve --cloud` in a subprocess; yields its port once it says it listens."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "cyncsim.tools.cli", "serve", "--cloud", "--model", str(model),
         "--seed", "3", "--port", "0", "--duration", "60"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        port = 0
        for line in proc.stdout:
            m = re.search(r"cloud listening on 127\.0\.0\.1:(\d+)", line)
            if m:
                port = int(m.group(1))
                break
        assert port, proc.stderr.read() if proc.stderr else "no output"
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    out = io.StringIO()
    code = main(argv, out)
    return code, out.getvalue(), capsys.readouterr().err


def test_devices_side_against_serve_cloud_is_conformant(
    cloud: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    record = tmp_path / "session.txt"
    code, out, err = _run(
        ["replay", str(capture_path(LOCAL)), "--against", f"127.0.0.1:{cloud}", *FAST,
         "--record", str(record)],
        capsys,
    )  # fmt: skip
    assert code == 0, out + err
    assert "verdict: CONFORMANT" in out
    assert "0x23 -> 0x28" in out and "0x83:fa:db -> 0x88" in out
    assert "replay --side devices: the controller under test is judged" in out
    assert f"session recorded to {record}" in out
    flows = read_capture(record).flows
    assert {f.device_id for f in flows} == {bytes.fromhex("6457e7f2")}


def test_json_has_the_diff_report(cloud: int, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(
        ["replay", str(capture_path(LOCAL)), "--against", f"127.0.0.1:{cloud}", *FAST, "--json"],
        capsys,
    )
    assert code == 0
    doc = json.loads(out)
    assert doc["verdict"] == "conformant"
    assert {"findings", "timing", "coverage", "notes", "finding_counts"} <= set(doc)


def test_nothing_listening_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    port = find_free_port()
    code, out, err = _run(["replay", str(capture_path(LOCAL)), "--against", f"127.0.0.1:{port}"],
                          capsys)  # fmt: skip
    assert code == 2 and out == ""
    assert err.strip().splitlines() == [
        f"cyncsim replay: error: nothing listening at 127.0.0.1:{port} "
        + err.split(f"127.0.0.1:{port} ", 1)[1].strip()
    ]


@pytest.fixture
def plain_peer() -> Iterator[int]:
    """A plain-TCP peer that speaks Cync at once (a 0x28) to whoever connects: a TLS client's
    handshake fails on its first bytes, whatever else the machine is doing."""
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:  # closed at teardown
                return
            with conn:
                conn.sendall(HELLO_ACK)
                conn.recv(4096)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        server.shutdown(socket.SHUT_RDWR)  # wakes the accept() (close alone does not)
        server.close()
        thread.join(10)
        assert not thread.is_alive()


def test_tls_handshake_failure_is_exit_2(
    plain_peer: int, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = _run(
        ["replay", str(capture_path(LOCAL)), "--against", f"127.0.0.1:{plain_peer}", "--tls"],
        capsys,
    )
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert f"TLS handshake with 127.0.0.1:{plain_peer} failed" in err


def test_capture_without_devices_is_exit_2(cloud: int, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(
        ["replay", str(capture_path(TLS_ONLY)), "--against", f"127.0.0.1:{cloud}"], capsys
    )
    assert code == 2
    assert err.strip() == (
        f"cyncsim replay: error: {TLS_ONLY}: no devices to replay (no decodable Cync traffic)"
    )


@pytest.mark.parametrize(
    "extra",
    [["--max-gap", "0"], ["--time-scale", "-1"], ["--against", "10.0.0.1:23779"]],
    ids=["max-gap", "time-scale", "not-loopback"],
)
def test_usage_errors_are_exit_2(extra: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["replay", str(capture_path(LOCAL)), "--against", "127.0.0.1:1", *extra]
    code, _, err = _run(argv, capsys)
    assert code == 2
    assert len(err.strip().splitlines()) == 1
