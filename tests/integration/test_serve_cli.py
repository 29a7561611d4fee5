# `cyncsim serve` as a real subprocess: no arguments (a controller handshakes and toggles),
# --devices 3, --connect to a controller running in the test, --record read back by
# `cyncsim inspect`, a --chaos profile with an option overriding it, --workers 2 stopped
# by Ctrl-C sent to the whole process group, SIGINT/SIGTERM -> exit 0 with a summary, and
# bad options -> exit 2 with one line.  Fast: small time scales and --duration.
from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from cyncsim.replay.protocol import HelloPacket, exchange_key
from cyncsim.simulator.cloud import CyncCloudSimulator
from cyncsim.simulator.fleet import generate_members
from cyncsim.simulator.ports import find_free_port
from cyncsim.simulator.record import FLUSH_AFTER_S
from cyncsim.simulator.transport import ReliableTransport
from cyncsim.tools.cli import build_parser, main
from cyncsim.tools.serve_cmd import build_chaos
from tests.support import REPO_ROOT

PREFIX = "cyncsim serve:"


@dataclass
class Serve:
    proc: asyncio.subprocess.Process
    lines: list[str] = field(default_factory=list)

    @property
    def devices(self) -> list[list[str]]:
        return [line.split() for line in self.lines if line.startswith("device ")]

    async def finish(self, sig: signal.Signals | None = None, group: bool = False) -> str:
        """Send ``sig`` (to the process group with ``group``), wait; returns stderr."""
        if sig is not None:
            if group:
                os.killpg(self.proc.pid, sig)
            else:
                self.proc.send_signal(sig)
        assert self.proc.stdout is not None and self.proc.stderr is not None
        out, err = await asyncio.wait_for(self.proc.communicate(), 60)
        self.lines += out.decode().splitlines()
        return err.decode()

    @property
    def summary(self) -> str:
        return self.lines[-1]


async def serve(*argv: str, new_group: bool = False) -> Serve:
    """Start `cyncsim serve ARGV` and read its output up to the line saying it is ready."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cyncsim.tools.cli", "serve", *argv,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO_ROOT,
        start_new_session=new_group,
    )  # fmt: skip
    s = Serve(proc)
    assert proc.stdout is not None
    while True:
        raw = await asyncio.wait_for(proc.stdout.readline(), 60)
        if not raw:
            err = (await proc.stderr.read()).decode() if proc.stderr else ""
            pytest.fail(f"serve ended before it was ready: {s.lines} {err}")
        line = raw.decode().rstrip("\n")
        s.lines.append(line)
        if line.startswith(PREFIX) and ("listening" in line or "connected to" in line):
            return s


def _port(device_line: list[str]) -> int:
    return int(device_line[-1].rpartition(":")[2])


# ---------------------------------------------------------------------------- listen
async def test_serve_without_arguments_then_ctrl_c() -> None:
    s = await serve()
    assert s.lines[0].startswith(f"{PREFIX} seed ")
    ((_, dev_id, _, auth, _, node, mode, addr),) = s.devices
    assert mode == "listen" and addr.startswith("127.0.0.1:")
    t = ReliableTransport(port=_port(s.devices[0]), seed=1, ack_timeout_seconds=5)
    try:
        await t.connect()
        hello = await t.handshake(timeout=10)
        assert isinstance(hello, HelloPacket)
        assert hello.device_id.hex() == dev_id and hello.auth_code.decode() == auth
        r = await t.send_toggle_command(int(node), True, wait_result=True)
        assert r.success and r.ack is not None and r.ack.type == 0x7B
        assert r.ack.encode()[5:9] == hello.device_id
    finally:
        await t.close()
    err = await s.finish(signal.SIGINT)
    assert s.proc.returncode == 0, err
    assert s.summary.startswith(f"{PREFIX} stopped (SIGINT)")
    assert "1 device, 1 connection," in s.summary and "0 faults injected" in s.summary
    assert err == ""


async def test_serve_three_devices_then_sigterm() -> None:
    s = await serve("--devices", "3", "--seed", "7", "--time-scale", "0.05")
    ids = [d[1] for d in s.devices]
    assert ids == [m.device_id.hex() for m in generate_members(3, seed=7)]
    ports = [_port(d) for d in s.devices]
    assert len(set(ports)) == 3
    transports = [ReliableTransport(port=p, seed=i) for i, p in enumerate(ports)]
    try:
        for t, dev_id in zip(transports, ids, strict=True):
            await t.connect()
            assert (await t.handshake(timeout=10)).device_id.hex() == dev_id
    finally:
        for t in transports:
            await t.close()
    err = await s.finish(signal.SIGTERM)
    assert s.proc.returncode == 0, err
    assert s.summary.startswith(f"{PREFIX} stopped (SIGTERM)")
    assert "3 devices, 3 connections," in s.summary and s.summary.endswith("seed 7")


# ---------------------------------------------------------------------------- dial
async def test_serve_connect_and_record_then_inspect(tmp_path: Path) -> None:
    rec = tmp_path / "serve.pcapng"
    async with CyncCloudSimulator(seed=1, time_scale=0.02) as cloud:
        s = await serve(
            "--connect", f"127.0.0.1:{cloud.port}", "--devices", "2", "--seed", "3",
            "--time-scale", "0.02", "--duration", "1.5", "--record", str(rec),
        )  # fmt: skip
        assert [d[6] for d in s.devices] == ["dial", "dial"]
        assert [d[7].rpartition(":")[0] for d in s.devices] == ["127.0.0.2", "127.0.0.3"]
        err = await s.finish()
        assert s.proc.returncode == 0, err
        ids = {bytes.fromhex(d[1]) for d in s.devices}
        assert {lk.device_id for lk in cloud.links} == ids
        assert {lk.conn.peer[0] for lk in cloud.links} == {"127.0.0.2", "127.0.0.3"}
        pings = len(cloud.received(0xD3))
    assert s.summary.startswith(f"{PREFIX} stopped (duration)")
    assert "2 devices, 2 connections," in s.summary and pings >= 2
    inspect = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cyncsim.tools.cli", "inspect", "--json", "--no-progress", str(rec),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO_ROOT,
    )  # fmt: skip
    out, err_b = await asyncio.wait_for(inspect.communicate(), 60)
    assert inspect.returncode == 0, err_b.decode()
    rows = [json.loads(line) for line in out.decode().splitlines()]
    hellos = {bytes.fromhex(r["hex"])[6:10] for r in rows if r.get("type") == 0x23}
    assert hellos == ids
    recorded_pings = [r for r in rows if r.get("type") == 0xD3]
    assert len(recorded_pings) >= pings


async def test_serve_chaos_profile_with_an_option_overriding_it(tmp_path: Path) -> None:
    profile = tmp_path / "chaos.toml"
    profile.write_text("latency_ms = 2.0\nduplicate_rate = 1.0\n", encoding="utf-8")
    async with CyncCloudSimulator(seed=1, time_scale=0.02) as cloud:
        s = await serve(
            "--connect", f"127.0.0.1:{cloud.port}", "--time-scale", "0.02", "--seed", "5",
            "--duration", "1", "--chaos", str(profile), "--duplicate", "0",
        )  # fmt: skip
        err = await s.finish()
        hellos = cloud.received(0x23)
    assert s.proc.returncode == 0, err
    assert "faults injected (delay " in s.summary and "duplicate" not in s.summary
    assert len(hellos) == 1  # the profile's duplicate_rate = 1 was overridden


def test_chaos_options_merge_over_the_profile(tmp_path: Path) -> None:
    toml = tmp_path / "p.toml"
    toml.write_text(
        "latency_ms = 3\n[from_device]\nduplicate_rate = 0.5\n[burst]\nr = 0.5\n",
        encoding="utf-8",
    )
    as_json = tmp_path / "p.json"
    as_json.write_text(
        json.dumps({"latency_ms": 3, "from_device": {"duplicate_rate": 0.5}, "burst": {"r": 0.5}}),
        encoding="utf-8",
    )
    for path in (toml, as_json):
        args = build_parser().parse_args(
            ["serve", "--chaos", str(path), "--loss", "0.25", "--burst-p", "0.1",
             "--to-device", "latency_ms=7", "--drop-pattern", "1,5,9",
             "--partition-start", "1", "--partition-mode", "refuse"]
        )  # fmt: skip
        cfg = build_chaos(args)
        assert cfg is not None
        assert (cfg.latency_ms, cfg.packet_loss_rate, cfg.drop_pattern) == (3.0, 0.25, (1, 5, 9))
        assert (cfg.burst.p, cfg.burst.r) == (0.1, 0.5)  # one key set, the other kept
        assert cfg.from_device is not None and cfg.to_device is not None
        assert cfg.from_device.duplicate_rate == 0.5
        assert cfg.from_device.packet_loss_rate == 0.25  # inherited from the top level
        assert (cfg.to_device.latency_ms, cfg.to_device.packet_loss_rate) == (7.0, 0.25)
        assert cfg.partition is not None and cfg.partition.start_s == 1.0
        assert (cfg.partition.refuse_connections, cfg.partition.blackhole) == (True, False)
    assert build_chaos(build_parser().parse_args(["serve"])) is None


# ---------------------------------------------------------------------------- processes
async def test_serve_workers_stop_on_ctrl_c_to_the_group() -> None:
    async with CyncCloudSimulator(seed=2, time_scale=0.02) as cloud:
        s = await serve(
            "--connect", f"127.0.0.1:{cloud.port}", "--devices", "4", "--workers", "2",
            "--time-scale", "0.02", "--seed", "11", "--identities", "generate",
            new_group=True,
        )  # fmt: skip
        assert "in 2 processes" in s.lines[-1]
        ids = {bytes.fromhex(d[1]) for d in s.devices}
        assert len(ids) == 4
        await cloud.wait_for(
            lambda: {lk.device_id for lk in cloud.links if lk.open} == ids, timeout=20
        )
        assert len({lk.conn.peer[0] for lk in cloud.links}) == 4
        err = await s.finish(signal.SIGINT, group=True)  # Ctrl-C reaches every process
        assert s.proc.returncode == 0, err
        await cloud.wait_for(lambda: not any(lk.open for lk in cloud.links))
    assert s.summary.startswith(f"{PREFIX} stopped (SIGINT)")
    assert "4 devices, 4 connections," in s.summary
    assert "Traceback" not in err


# ---------------------------------------------------------------------------- errors
def test_bad_option_value_is_one_line_and_exit_2() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "cyncsim.tools.cli", "serve", "--loss", "2"],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"{PREFIX} error: command line: packet_loss_rate=2.0 is out of range: "
        "allowed 0 <= packet_loss_rate <= 1"
    ]
    assert done.stdout == ""


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--devices", "0"], "--devices 0"),
        (["--devices", "x"], "invalid int value"),
        (["--workers", "3"], "--workers 3"),
        (["--time-scale", "-1"], "--time-scale"),
        (["--port", "65535", "--devices", "2"], "65535..65536"),
        (["--host", "10.0.0.1"], "not a loopback address"),
        (["--connect", "127.0.0.1"], "expected HOST:PORT"),
        (["--connect", "192.168.1.5:23779"], "not a loopback address"),
        (["--tls"], "needs --connect"),
        (["--spread", "--connect", "127.0.0.1:9"], "--spread is for listening"),
        (["--connect", "127.0.0.1:9", "--verify"], "need --connect ... --tls"),
        (["--stall-at", "1"], "stall.duration_s is required"),
        (["--reset-direction", "sideways"], "is not a direction"),
        (["--to-device", "nonsense"], "KEY=VALUE"),
        (["--to-device", "bogus=1"], "unknown key"),
        (["--drop-pattern", "1,x"], "1,5,9"),
        (["--identities", "other"], "invalid choice"),
        (["--model", "MISSING"], "cannot read"),
        (["--chaos", "MISSING"], "cannot read chaos config"),
    ],
)
def test_bad_options_exit_2_with_one_line(
    argv: list[str], needle: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    argv = [str(tmp_path / a) if a == "MISSING" else a for a in argv]
    try:
        code = main(["serve", *argv])
    except SystemExit as exc:  # argparse's own checks
        code = exc.code  # type: ignore[assignment]
    err = capsys.readouterr().err.splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith(f"{PREFIX} error: ") and needle in err[0], err


def test_bad_model_and_chaos_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "bad.msgpack"
    model.write_bytes(b"\x93not a model")
    chaos = tmp_path / "bad.toml"
    chaos.write_text("packet_loss_rate = [", encoding="utf-8")
    out_of_range = tmp_path / "range.json"
    out_of_range.write_text('{"reset": {"probability": 3}}', encoding="utf-8")
    for argv, needle in (
        (["--model", str(model)], "not a model file"),
        (["--chaos", str(chaos)], "not valid TOML"),
        (["--chaos", str(out_of_range)], "reset.probability=3"),
    ):
        assert main(["serve", *argv]) == 2
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 1 and needle in err[0], err


def test_port_in_use_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", find_free_port()))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["serve", "--port", str(port), "--duration", "1"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and f"127.0.0.1:{port}" in err[0] and "in use" in err[0], err


# ----------------------------------------------------------------- recording vs SIGKILL
# A recording is flushed within FLUSH_AFTER_S of its first unflushed write (simulator/
# record.py), so a killed serve loses at most that much of the traffic, quiet or busy.
def _recorded_ack_keys(path: Path) -> set[bytes]:
    from cyncsim.replay.capture import read_capture

    result = read_capture(path)
    return {
        exchange_key(fp.packet.encode())
        for flow in result.flows
        for fp in flow.packets
        if fp.sender == "device" and fp.packet.type == 0x7B
    }


@pytest.mark.parametrize("suffix", [".pcapng", ".txt"])
async def test_sigkill_after_quiet_traffic_keeps_it(tmp_path: Path, suffix: str) -> None:
    rec = tmp_path / f"quiet{suffix}"
    s = await serve("--seed", "5", "--record", str(rec))
    acked: set[bytes] = set()
    t = ReliableTransport(port=_port(s.devices[0]), seed=1, ack_timeout_seconds=5)
    try:
        await t.connect()
        await t.handshake(timeout=10)
        node = int(s.devices[0][5])
        for i in range(10):
            r = await t.send_toggle_command(node, i % 2 == 0)
            assert r.success and r.ack is not None
            acked.add(exchange_key(r.ack.encode()))
        # Quiet for longer than the flush bound (this wait is the scenario, not a sync).
        await asyncio.sleep(FLUSH_AFTER_S + 1.0)
        s.proc.kill()
        await s.finish()
    finally:
        await t.close()
    assert s.proc.returncode == -signal.SIGKILL
    assert acked <= _recorded_ack_keys(rec), "acked commands missing from the recording"


@pytest.mark.parametrize("suffix", [".pcapng", ".txt"])
async def test_sigkill_under_load_loses_at_most_the_last_second(
    tmp_path: Path, suffix: str
) -> None:
    rec = tmp_path / f"busy{suffix}"
    s = await serve("--seed", "6", "--time-scale", "0", "--record", str(rec))
    loop = asyncio.get_running_loop()
    acked: list[tuple[float, bytes]] = []
    t = ReliableTransport(port=_port(s.devices[0]), seed=2, ack_timeout_seconds=5)
    try:
        await t.connect()
        await t.handshake(timeout=10)
        node = int(s.devices[0][5])
        start = loop.time()
        # Busy: commands back to back for 2.5 s, then the kill while they still flow.
        while loop.time() - start < 2.5:
            r = await t.send_toggle_command(node, len(acked) % 2 == 0)
            assert r.success and r.ack is not None
            acked.append((loop.time(), exchange_key(r.ack.encode())))
        killed_at = loop.time()
        s.proc.kill()
        await s.finish()
    finally:
        await t.close()
    assert len(acked) > 50, "not busy enough to mean anything"
    recorded = _recorded_ack_keys(rec)
    # Everything acked more than the flush bound (plus 0.5 s for a loaded event loop)
    # before the kill is on disk.
    old = {key for at, key in acked if at < killed_at - FLUSH_AFTER_S - 0.5}
    assert old and old <= recorded, f"{len(old - recorded)} of {len(old)} old acks lost"
