# `cyncsim serve`'s live view as a real subprocess: --metrics scraped over loopback while a
# controller drives devices split over two workers (the counters and the latency histogram
# add up to what the controller did), a non-loopback --metrics refused in one line, and on a
# terminal (a pty) a status line that keeps updating and is gone before the summary.
from __future__ import annotations

import asyncio
import fcntl
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from cyncsim.replay.protocol import HelloPacket, decode_packet
from tests.support import REPO_ROOT, MiniController, answered, eventually, marker

PREFIX = "cyncsim serve:"
MARKERS = 3  # commands per device
CLI = [sys.executable, "-m", "cyncsim.tools.cli", "serve"]


def _scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(url, timeout=10) as r:
        text = r.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_metrics_add_up_to_what_the_controller_did_over_two_workers() -> None:
    ctl = MiniController()
    port = await ctl.start()
    proc = await asyncio.create_subprocess_exec(
        *CLI, "--connect", f"127.0.0.1:{port}", "--devices", "4", "--workers", "2",
        "--metrics", "127.0.0.1:0", "--time-scale", "0.02", "--seed", "21",
        "--identities", "generate",
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO_ROOT,
    )  # fmt: skip
    assert proc.stdout is not None
    lines: list[str] = []
    try:
        while not lines or not lines[-1].startswith(f"{PREFIX} metrics at "):
            raw = await asyncio.wait_for(proc.stdout.readline(), 60)
            assert raw, f"serve ended early: {lines}"
            lines.append(raw.decode().rstrip("\n"))
        url = lines[-1].split()[-1]
        assert url.startswith("http://127.0.0.1:") and url.endswith("/metrics")
        nodes = {w[1]: int(w[5]) for w in (line.split() for line in lines) if w[0] == "device"}
        assert len(nodes) == 4
        await ctl.wait_links(4, timeout=20)
        await eventually(lambda: all(link.of("0x23") for link in ctl.links), 20, "4 hellos")
        for link in ctl.links:
            hello = decode_packet(link.of("0x23")[0])
            assert isinstance(hello, HelloPacket)
            dev = hello.device_id
            node = nodes[dev.hex()]
            for n in range(1, MARKERS + 1):
                await answered(link, marker(n, node, dev), node)
        commands = 4 * MARKERS
        kind = (("request", "0x73:f8:f0"),)
        deadline = time.monotonic() + 20
        while True:  # the endpoint serves a snapshot refreshed once a second
            m = await asyncio.to_thread(_scrape, url)
            if m.get(("cyncsim_commands_total", ())) == commands or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)  # poll interval between scrapes
        assert m["cyncsim_commands_total", ()] == commands
        assert m["cyncsim_answer_latency_seconds_count", kind] == commands
        assert m["cyncsim_answer_latency_seconds_bucket", (("le", "+Inf"), *kind)] == commands
        # each marker: an ack, a result and a status report
        assert m["cyncsim_answers_total", ()] >= 3 * commands
        assert m["cyncsim_devices", ()] == 4
        assert m["cyncsim_devices_connected", ()] == 4
        assert m["cyncsim_connections_total", ()] == 4
        assert m["cyncsim_packets_total", (("direction", "in"),)] >= commands + 4
        sent = sum(len(link.packets) for link in ctl.links)
        assert m["cyncsim_packets_total", (("direction", "out"),)] <= sent
        proc.send_signal(signal.SIGTERM)
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await ctl.close()
    assert proc.returncode == 0, err.decode()
    tail = out.decode().splitlines()
    assert len(tail) == 1 and tail[0].startswith(f"{PREFIX} stopped (SIGTERM)")
    assert "4 devices, 4 connections," in tail[0]


def test_non_loopback_metrics_is_one_line_and_exit_2() -> None:
    done = subprocess.run(
        [*CLI, "--metrics", "192.0.2.1:9464"],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert len(done.stderr.splitlines()) == 1
    assert "--metrics" in done.stderr and "not a loopback address" in done.stderr
    assert done.stdout == ""


_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\r")
_STATUS = re.compile(r"(\d+:\d\d:\d\d)  0/1 connected, (?:[\d.]+|-) commands/s")


def test_a_terminal_shows_a_status_line_that_updates() -> None:
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 160, 0, 0))
    env = {**os.environ, "TERM": "xterm-256color"}
    for var in ("NO_COLOR", "COLUMNS", "LINES", "CI"):
        env.pop(var, None)
    proc = subprocess.Popen(
        [*CLI, "--devices", "1", "--seed", "4"],
        stdin=subprocess.DEVNULL, stdout=slave, stderr=subprocess.DEVNULL, cwd=REPO_ROOT,
        env=env,
    )  # fmt: skip
    os.close(slave)
    text = ""
    try:
        clocks: set[str] = set()
        deadline = time.monotonic() + 30
        while len(clocks) < 3 and (chunk := _read(master, deadline)):
            text += chunk
            clocks = set(_STATUS.findall(_ANSI.sub("\n", text)))
        assert len(clocks) >= 3, f"no status line updating in {text!r}"
        assert "device " in text and f"{PREFIX} 1 device listening on" in text
        proc.send_signal(signal.SIGINT)
        deadline = time.monotonic() + 30
        while chunk := _read(master, deadline):  # to the end of the child's output
            text += chunk
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    lines = [line for line in _ANSI.sub("\n", text).splitlines() if line.strip()]
    assert lines[-1].startswith(f"{PREFIX} stopped (SIGINT)"), lines
    assert not _STATUS.search(lines[-1])


def _read(fd: int, deadline: float) -> str:
    """What the pty has within the time left ('' at its end or when the time is up)."""
    ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
    if not ready:
        return ""
    try:
        return os.read(fd, 65536).decode(errors="replace")
    except OSError:  # EIO: the child closed the terminal
        return ""
