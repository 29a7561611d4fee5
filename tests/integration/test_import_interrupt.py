"""Ctrl-C during `cyncsim import`: exit 130, and no model file, whole or partial, is left."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

from cyncsim.replay.capture.pcapwrite import generate_benchmark_pcap


def _read(fd: int, deadline: float) -> str:
    ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
    if not ready:
        return ""
    try:
        return os.read(fd, 65536).decode(errors="replace")
    except OSError:  # EIO: the child closed the terminal
        return ""


def test_ctrl_c_while_learning_leaves_no_model(tmp_path: Path) -> None:
    pcap = tmp_path / "big.pcap"
    generate_benchmark_pcap(pcap, 400_000, 20, seed=1)
    out = tmp_path / "model.msgpack"
    master, slave = pty.openpty()  # the progress bar is drawn on a terminal only
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 160, 0, 0))
    env = {**os.environ, "TERM": "xterm-256color"}
    for var in ("NO_COLOR", "COLUMNS", "LINES", "CI"):
        env.pop(var, None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "cyncsim.tools.cli", "import", str(pcap), "-o", str(out)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=slave, env=env,
    )  # fmt: skip
    os.close(slave)
    text = ""
    try:
        deadline = time.monotonic() + 60
        while "reading and learning" not in text and (chunk := _read(master, deadline)):
            text += chunk
        assert "reading and learning big.pcap" in text, text  # the learning phase is on
        proc.send_signal(signal.SIGINT)
        deadline = time.monotonic() + 30
        while chunk := _read(master, deadline):
            text += chunk
        assert proc.wait(timeout=30) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.pcap"]  # no model, no temp file
