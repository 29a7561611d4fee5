"""`cyncsim inspect -` and FIFOs as live streams (issue 16, item 6), through a real pipe.

A child `python -m cyncsim.tools.cli inspect -` gets the first records of a capture; the test
reads its stdout until those packets are printed, and only then writes the rest and closes
the pipe, so the packets were printed before the writer closed, not at the end.  The same for
a FIFO path, for a stream stopped by SIGINT (summary so far, exit status 130), and for a long
generated stream whose peak memory must stay far below what keeping its packets would take.
"""

from __future__ import annotations

import io
import json
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

from cyncsim.replay.capture.pcapwrite import Frame, PcapWriter, TcpConversation, write_pcapng
from tests.support import HELLO, HELLO_ACK, PING, PONG

SRV = ("10.0.0.1", 23779)
T0 = 1_762_528_893.0
WAIT = 30.0  # seconds to wait for the child's output (a loaded machine is slow, never wrong)


def _first_and_rest_frames() -> tuple[list[Frame], list[Frame]]:
    """A hello and its 0x28 on one connection, then pings on a second one."""
    a = TcpConversation(("10.0.0.5", 50000), SRV)
    b = TcpConversation(("10.0.0.6", 50001), SRV)
    first = [*a.handshake(T0), *a.send(T0 + 0.1, "client", HELLO)]
    first += a.send(T0 + 0.2, "server", HELLO_ACK)
    rest = [*b.handshake(T0 + 1), *b.send(T0 + 1.1, "client", HELLO)]
    for i in range(5):
        rest += a.send(T0 + 2 + i, "client", PING) + a.send(T0 + 2.01 + i, "server", PONG)
    return first, [*rest, *a.close(T0 + 9), *b.close(T0 + 9)]


def _pcap_parts() -> tuple[bytes, bytes]:
    first, rest = _first_and_rest_frames()
    out = io.BytesIO()
    writer = PcapWriter(out)
    for f in first:
        writer.write(f)
    head = out.getvalue()
    return head, b"".join(writer.record(f) for f in rest)


def _pcapng_parts() -> tuple[bytes, bytes]:
    first, rest = _first_and_rest_frames()
    out = io.BytesIO()
    write_pcapng(out, first + rest)
    whole = out.getvalue()
    out = io.BytesIO()
    write_pcapng(out, first)
    head = out.getvalue()
    return head, whole[len(head) :]


def _text_parts() -> tuple[bytes, bytes]:
    def rec(t: float, d: str, conn: int, data: bytes) -> str:
        stamp = f"2025-11-07T15:21:{t:09.6f}"
        return f"{stamp} {d} [conn:{conn}] ({len(data)} bytes)\n{data.hex(' ')}\n\n"

    head = rec(1.0, "DEV→CLOUD", 1, HELLO) + rec(1.1, "CLOUD→DEV", 1, HELLO_ACK)
    rest = rec(2.0, "DEV→CLOUD", 2, HELLO)
    for i in range(5):
        rest += rec(3.0 + i, "DEV→CLOUD", 1, PING) + rec(3.1 + i, "CLOUD→DEV", 1, PONG)
    return head.encode(), rest.encode()


PARTS = {"pcap": _pcap_parts, "pcapng": _pcapng_parts, "text": _text_parts}


class Lines:
    """The child's output lines, read by a thread, waited for with a timeout."""

    def __init__(self, stream: IO[str]) -> None:
        self._queue: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            self._queue.put(line)
        self._queue.put(None)

    def until(self, *needles: str) -> list[str]:
        """Read lines until each needle has appeared in one of them (in any order)."""
        missing = list(needles)
        while missing:
            try:
                line = self._queue.get(timeout=WAIT)
            except queue.Empty:
                pytest.fail(f"no line with {missing} within {WAIT} s; got {self.seen}")
            if line is None:
                pytest.fail(f"output ended without {missing}; got {self.seen}")
            self.seen.append(line)
            missing = [n for n in missing if n not in line]
        return self.seen

    def rest(self) -> list[str]:
        """Every line up to the end of the output."""
        while (line := self._queue.get(timeout=WAIT)) is not None:
            self.seen.append(line)
        return self.seen


def _inspect(*args: str, stdin: int | None = subprocess.PIPE) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "cyncsim.tools.cli", "inspect", *args],
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _inspect_all(data: bytes, *args: str) -> tuple[int, str, str]:
    """`inspect - ARGS` on ``data`` in one go: exit status, stdout, stderr."""
    ran = subprocess.run(
        [sys.executable, "-m", "cyncsim.tools.cli", "inspect", "-", *args],
        input=data,
        capture_output=True,
        timeout=WAIT,
        check=False,
    )
    return ran.returncode, ran.stdout.decode(), ran.stderr.decode()


def _feed(pipe: IO[str], data: bytes) -> None:
    pipe.buffer.write(data)  # type: ignore[attr-defined]
    pipe.flush()


@pytest.mark.parametrize("fmt", sorted(PARTS))
def test_stdin_packets_are_printed_before_the_writer_closes(fmt: str) -> None:
    head, rest = PARTS[fmt]()
    child = _inspect("-")
    assert child.stdin is not None and child.stdout is not None
    lines = Lines(child.stdout)
    try:
        _feed(child.stdin, head)
        # Printed while the pipe is still open: the rest is not even written yet.
        lines.until("0x23 hello", "0x28 hello_ack")
        _feed(child.stdin, rest)
        child.stdin.close()
        out = "".join(lines.rest())
        assert child.wait(timeout=WAIT) == 0, child.stderr.read() if child.stderr else ""
    finally:
        child.kill()
        child.wait()
    assert out.count("0xd3 ping") == 5 and out.count("0x23 hello") == 2
    assert "\n13 packets in 2 flows {'cync': 2}, 0 flagged, 0 findings" in out


def test_json_lines_stream_too() -> None:
    head, rest = _pcap_parts()
    child = _inspect("-", "--json")
    assert child.stdin is not None and child.stdout is not None
    lines = Lines(child.stdout)
    try:
        _feed(child.stdin, head)
        first = list(lines.until('"name": "hello_ack"'))
        _feed(child.stdin, rest)
        child.stdin.close()
        out = lines.rest()
        assert child.wait(timeout=WAIT) == 0
    finally:
        child.kill()
        child.wait()
    assert [json.loads(line)["name"] for line in first] == ["hello", "hello_ack"]
    summary = json.loads(out[-1])["summary"]
    assert (summary["sources"], summary["packets"], summary["flows"]) == (["<stdin>"], 13, 2)


def test_a_fifo_path_is_read_as_a_stream(tmp_path: Path) -> None:
    fifo = tmp_path / "live.pcapng"
    os.mkfifo(fifo)
    head, rest = _pcapng_parts()
    child = _inspect(str(fifo), stdin=subprocess.DEVNULL)
    assert child.stdout is not None
    lines = Lines(child.stdout)
    opened: list[int] = []
    # Opening a FIFO for writing waits for its reader, the child: in a thread, with a timeout.
    opener = threading.Thread(target=lambda: opened.append(os.open(fifo, os.O_WRONLY)))
    opener.start()
    opener.join(WAIT)
    try:
        assert opened, "the child never opened the FIFO"
        os.write(opened[0], head)
        lines.until("0x23 hello", "0x28 hello_ack")
        os.write(opened[0], rest)
        os.close(opened[0])
        out = "".join(lines.rest())
        assert child.wait(timeout=WAIT) == 0
    finally:
        child.kill()
        child.wait()
    assert "\n13 packets in 2 flows" in out


def test_sigint_prints_the_summary_so_far_and_exits_130() -> None:
    head, _ = _text_parts()
    child = _inspect("-")
    assert child.stdin is not None and child.stdout is not None and child.stderr is not None
    lines = Lines(child.stdout)
    try:
        _feed(child.stdin, head)
        lines.until("0x23 hello", "0x28 hello_ack")
        child.send_signal(signal.SIGINT)  # the pipe stays open: only the signal stops it
        out = "".join(lines.rest())
        code = child.wait(timeout=WAIT)
        err = child.stderr.read()
    finally:
        child.kill()
        child.wait()
    assert code == 130, err
    assert "\n2 packets in 1 flows {'cync': 1}, 0 flagged, 0 findings" in out
    assert "packet types: {'0x23': 1, '0x28': 1}" in out
    assert err == "cyncsim inspect: interrupted\n"


def test_a_truncated_stream_reports_its_last_record() -> None:
    head, rest = _pcap_parts()
    data = head + rest
    code, out, err = _inspect_all(data[:-10])
    assert code == 0, err
    cut = len(data) - 16 - 54  # the last record: a 54-byte ACK
    assert f"  truncated:  - offset {cut} length {70 - 10} record 24 starts at offset" in out


def test_a_corrupt_stream_is_one_line_with_its_offset() -> None:
    head, rest = _pcap_parts()
    data = bytearray(head + rest)
    data[len(head) + 8 : len(head) + 12] = (50_000_000).to_bytes(4, "little")
    code, _, err = _inspect_all(bytes(data))
    assert code == 2
    assert err == (
        f"cyncsim inspect: error: <stdin> at offset {len(head)}: record 5 claims 50000000 "
        "captured bytes (snap length 262144): corrupt file\n"
    )


def test_a_stream_lists_100_findings_per_reason_and_counts_the_rest() -> None:
    head, _ = _text_parts()
    data = head + b"no record header\n" * 150
    code, out, err = _inspect_all(data, "--json")
    assert code == 0, err
    summary = json.loads(out.splitlines()[-1])["summary"]
    assert summary["finding_reasons"] == {"bad_record": 150}
    assert len(summary["findings_list"]) == 100 and summary["findings_unlisted"] == 50
    code, out, err = _inspect_all(data)
    assert out.endswith("  bad_record: ... (the first 100 in --json)\n")


# -- memory ---------------------------------------------------------------------------------

SEGMENTS = 300_000
PEAK_MB = 40  # the same capture read as a file (its packets kept) peaks at about 100 MB


def _long_capture(segments: int) -> Iterator[bytes]:
    """A pcap of ``segments`` segments, made piece by piece: 20 connections at a time, each
    replaced by a fresh one (new port) after 200 exchanges, so connections end all along."""
    out = io.BytesIO()
    writer = PcapWriter(out)
    yield out.getvalue()
    ts = T0
    written = 0
    port = 40000
    live: list[tuple[TcpConversation, int]] = []
    while written < segments:
        frames: list[Frame] = []
        while len(live) < 20:
            conv = TcpConversation((f"10.0.{port // 250 % 250}.{port % 250 + 2}", port), SRV)
            port += 1
            frames += conv.handshake(ts) + conv.send(ts + 0.001, "client", HELLO)
            live.append((conv, 0))
        for i, (conv, n) in enumerate(live):
            ts += 0.05
            frames += conv.send(ts, "client", PING) + conv.send(ts + 0.01, "server", PONG)
            if n == 200:
                frames += conv.close(ts + 0.02)
            live[i] = (conv, n + 1)
        live = [(c, n) for c, n in live if n <= 200]
        written += len(frames)
        yield b"".join(writer.record(f) for f in frames)


def test_a_long_stream_runs_in_bounded_memory() -> None:
    # The child reports its own peak (VmHWM, as in test_bad_input_cli.py); its packet lines
    # go to /dev/null, the summary and the peak to stdout.
    probe = (
        "import os, sys\n"
        "from cyncsim.tools.cli import main\n"
        "code = main(['inspect', '-', '--json'], out=open(os.devnull, 'w'))\n"
        "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0]\n"
        "print(int(hwm.split()[1]) // 1024)\n"
        "sys.exit(code)\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", probe],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert child.stdin is not None
    total = 0
    for piece in _long_capture(SEGMENTS):
        child.stdin.write(piece)
        total += len(piece)
    child.stdin.close()
    assert child.stdout is not None and child.stderr is not None
    out, err = child.stdout.read(), child.stderr.read()
    assert child.wait(timeout=300) == 0, err
    peak_mb = int(out)
    assert total > 20_000_000  # (the capture is big enough to matter)
    assert peak_mb < PEAK_MB, f"inspect - peaked at {peak_mb} MB for a {total >> 20} MB stream"
