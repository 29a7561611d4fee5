# `cyncsim bench overhead`: what one simulated round trip costs, against two echo servers.
#
# Strategy: three servers, each in its own process (multiprocessing, spawn) so the client
# never takes the server's core, all answering the same bytes: a 36-byte 0x73 toggle in,
# 78 bytes out (the device's whole answer set at time_scale 0: 0x7B + f9 result + 0x83
# status, which the simulator writes in one write):
#   floor      blocking sockets, one thread per connection (recv_into, sendall)
#   buffered   an asyncio.BufferedProtocol echo server (one reused buffer, one write)
#   simulator  CyncDeviceSimulator devices at time_scale 0 (one device per connection)
# The client is this process: blocking sockets.  1 connection: round trips one after
# another, each timed (perf_counter_ns) from sendall to the last of the 78 bytes, so the
# client waits for the full answer set (not just the 0x7B); 100 connections: one request
# outstanding on each, driven by a selector (epoll) loop for a fixed time, round trips per
# second.  Every simulator answer is checked (0x7B first, echoing the request's bytes 5-11).
# Servers stay up; the measurements run in interleaved rounds (floor, buffered, simulator,
# again), ``repeats`` rounds, medians reported.  When a target is missed (or with
# --profile) the simulator server is run once more under cProfile with the same load and
# the summary added.
from __future__ import annotations

import asyncio
import contextlib
import gc
import math
import multiprocessing
import selectors
import socket
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from cyncsim.replay.errors import CyncError
from cyncsim.replay.framer import PacketFramer
from cyncsim.replay.protocol import PacketType
from cyncsim.tools.bench.common import (
    BenchOptions,
    Check,
    Column,
    Log,
    SuiteResult,
    measure,
    profile_by_file,
)
from cyncsim.tools.bench.latency import percentile
from cyncsim.tools.bench.simkit import CpuMeter, command_packet, process_cpu_seconds

__all__ = ["FULL", "QUICK", "SERVERS", "Size", "run", "serve_main"]

SERVERS = ("floor", "buffered", "simulator")
TARGET_P50_VS_BUFFERED = 1.5
TARGET_RATE_VS_BUFFERED = 0.7
DEVICE_BASE = 0x5E000000
HOST = "127.0.0.1"


@dataclass(frozen=True, slots=True)
class Size:
    round_trips: int  # per 1-connection measurement
    connections: int
    seconds: float  # per many-connection measurement (after a warm-up)
    warmup: float


FULL = Size(20_000, 100, 3.0, 0.5)
QUICK = Size(2_000, 100, 0.5, 0.2)


def device_id(i: int) -> bytes:
    return (DEVICE_BASE + i).to_bytes(4, "big")


# ---------------------------------------------------------------------------- servers
class _Echo(asyncio.BufferedProtocol):
    """Counts request bytes; for every whole request writes the answer, in one write."""

    def __init__(self, request: int, answer: bytes) -> None:
        self._buf = memoryview(bytearray(65536))
        self._request = request
        self._answer = answer
        self._pending = 0
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._buf

    def buffer_updated(self, nbytes: int) -> None:
        whole, self._pending = divmod(self._pending + nbytes, self._request)
        if whole and self._transport is not None:
            self._transport.write(self._answer * whole)


def _floor_connection(conn: socket.socket, request: int, answer: bytes) -> None:
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buf = bytearray(65536)
    pending = 0
    with conn:
        while True:
            try:
                n = conn.recv_into(buf)
            except OSError:
                return
            if not n:
                return
            whole, pending = divmod(pending + n, request)
            if whole:
                conn.sendall(answer * whole)


def _serve_floor(ctl: Connection, request: int, answer: bytes) -> None:
    listener = socket.create_server((HOST, 0), backlog=512)
    port = listener.getsockname()[1]

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(
                target=_floor_connection, args=(conn, request, answer), daemon=True
            ).start()

    threading.Thread(target=accept, daemon=True).start()
    ctl.send(("ready", [port]))
    while ctl.recv() != "stop":
        pass
    listener.close()
    ctl.send(("stopped", None))


async def _serve_async(kind: str, ctl: Connection, count: int, request: int, answer: bytes) -> None:
    from cyncsim.simulator.device import CyncDeviceSimulator

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    devices: list[CyncDeviceSimulator] = []
    server: asyncio.Server | None = None
    if kind == "buffered":
        server = await loop.create_server(lambda: _Echo(request, answer), HOST, 0, backlog=512)
        ports = [server.sockets[0].getsockname()[1]]
    else:
        for i in range(count):
            dev = CyncDeviceSimulator(device_id(i), seed=i, time_scale=0.0, mesh_node=1)
            await dev.start()
            devices.append(dev)
        ports = [d.port for d in devices]

    def readable() -> None:
        with contextlib.suppress(EOFError, OSError):
            while ctl.poll():
                if ctl.recv() == "stop":
                    stop.set()
            return
        stop.set()  # the parent is gone

    loop.add_reader(ctl.fileno(), readable)
    ctl.send(("ready", ports))
    await stop.wait()
    loop.remove_reader(ctl.fileno())
    if server is not None:
        server.close()
    for dev in devices:
        await dev.stop()
    ctl.send(("stopped", None))


def serve_main(
    kind: str, ctl: Connection, count: int, request: int, answer: bytes, profile: bool
) -> None:
    """Entry point of a server process (spawned): serve until told "stop"; with ``profile``
    the whole life of the server runs under cProfile and its summary is sent last."""
    if kind == "floor":
        _serve_floor(ctl, request, answer)
        return

    def serve() -> None:
        asyncio.run(_serve_async(kind, ctl, count, request, answer))

    if profile:
        ctl.send(("profile", profile_by_file(serve, top=15)))
    else:
        serve()


class _Server:
    """A server process and its control pipe."""

    def __init__(self, kind: str, count: int, request: int, answer: bytes, profile: bool):
        ctx = multiprocessing.get_context("spawn")
        self.kind = kind
        self.ctl, child = ctx.Pipe()
        self.process = ctx.Process(
            target=serve_main,
            args=(kind, child, count, request, answer, profile),
            name=f"cyncsim-bench-{kind}",
            daemon=True,
        )
        self.process.start()
        child.close()
        self.ports = self._expect("ready", 60.0)

    def _expect(self, what: str, timeout: float) -> Any:
        if not self.ctl.poll(timeout):
            raise CyncError(
                f"bench overhead: the {self.kind} server sent no {what!r}", reason="bench"
            )
        tag, value = self.ctl.recv()
        if tag != what:
            raise CyncError(
                f"bench overhead: the {self.kind} server sent {tag!r}, not {what!r}", reason="bench"
            )
        return value

    def stop(self) -> Any:
        """Stop the server; its profile summary when it was profiled."""
        result = None
        with contextlib.suppress(OSError, EOFError, CyncError):
            self.ctl.send("stop")
            self._expect("stopped", 10.0)
            if self.ctl.poll(10.0):
                tag, value = self.ctl.recv()
                result = value if tag == "profile" else None
        self.process.join(5.0)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(5.0)
        self.ctl.close()
        return result


# ---------------------------------------------------------------------------- client
def _connect(port: int, hello: bool) -> socket.socket:
    sock = socket.create_connection((HOST, port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if hello:  # a device speaks first: its 0x23
        framer = PacketFramer()
        while True:
            data = sock.recv(4096)
            if not data:
                raise CyncError("bench overhead: device closed before its 0x23", reason="bench")
            if any(p.type == PacketType.HELLO for p in framer.feed(data)):
                break
    return sock


def _read_exact(sock: socket.socket, view: memoryview, size: int) -> None:
    got = 0
    while got < size:
        n = sock.recv_into(view[got:], size - got)
        if not n:
            raise CyncError("bench overhead: server closed the connection", reason="bench")
        got += n


def answer_set(port: int) -> tuple[bytes, bytes]:
    """One toggle to the device at ``port``: (request bytes, the whole answer written back),
    checked to be 0x7B + f9 result + 0x83 status."""
    sock = _connect(port, hello=True)
    with sock:
        request = command_packet(device_id(0), 0)
        sock.sendall(request)
        framer = PacketFramer()
        data = b""
        kinds: list[int] = []
        while len(kinds) < 3:
            chunk = sock.recv(4096)
            if not chunk:
                raise CyncError("bench overhead: device closed mid-answer", reason="bench")
            data += chunk
            kinds += [p.type for p in framer.feed(chunk)]
    want = [PacketType.DATA_ACK, PacketType.DATA, PacketType.REPORT]
    if kinds != want or data[5:12] != request[5:12]:
        raise CyncError(f"bench overhead: unexpected answer set {kinds}", reason="bench")
    return request, data


def _requests(count: int, conn: int = 0) -> list[bytes]:
    return [command_packet(device_id(conn), i) for i in range(count)]


def one_connection(port: int, hello: bool, n: int, answer: int, check: bool) -> list[int]:
    """``n`` round trips on one connection, one at a time: nanoseconds each."""
    requests = _requests(min(n, 4096))
    buf = bytearray(answer)
    view = memoryview(buf)
    out = [0] * n
    clock = time.perf_counter_ns
    sock = _connect(port, hello)
    with sock:
        for i in range(n):
            request = requests[i % len(requests)]
            start = clock()
            sock.sendall(request)
            _read_exact(sock, view, answer)
            out[i] = clock() - start
            if check and (buf[0] != PacketType.DATA_ACK or buf[5:12] != request[5:12]):
                raise CyncError("bench overhead: the answer does not match", reason="bench")
    return out


@dataclass(slots=True)
class _Conn:
    sock: socket.socket
    requests: list[bytes]
    buf: bytearray
    view: memoryview
    got: int = 0
    sent: int = 0


def many_connections(
    ports: list[int], hello: bool, seconds: float, warmup: float, answer: int, check: bool
) -> tuple[int, float]:
    """One request outstanding on each connection for ``seconds`` (after ``warmup``):
    (round trips completed, seconds measured)."""
    conns: list[_Conn] = []
    sel = selectors.DefaultSelector()
    try:
        for i, port in enumerate(ports):
            sock = _connect(port, hello)
            sock.setblocking(False)
            buf = bytearray(answer)
            conn = _Conn(sock, _requests(256, i if hello else 0), buf, memoryview(buf))
            conns.append(conn)
            sel.register(sock, selectors.EVENT_READ, conn)
        for conn in conns:
            conn.sock.send(conn.requests[0])
        done = 0
        clock = time.perf_counter
        start = clock()
        counting_from = start + warmup
        counted_at = 0
        end = counting_from + seconds
        while True:
            now = clock()
            if now >= end:
                break
            if not counted_at and now >= counting_from:
                counted_at, done = 1, 0
                start = now
            for key, _ in sel.select(0.5):
                conn = key.data
                n = conn.sock.recv_into(conn.view[conn.got :], answer - conn.got)
                if not n:
                    raise CyncError("bench overhead: server closed", reason="bench")
                conn.got += n
                if conn.got < answer:
                    continue
                request = conn.requests[conn.sent % len(conn.requests)]
                if check and (
                    conn.buf[0] != PacketType.DATA_ACK or conn.buf[5:12] != request[5:12]
                ):
                    raise CyncError("bench overhead: the answer does not match", reason="bench")
                conn.got = 0
                conn.sent += 1
                done += 1
                nxt = conn.requests[conn.sent % len(conn.requests)]
                if conn.sock.send(nxt) != len(nxt):
                    raise CyncError("bench overhead: short send", reason="bench")
        return done, clock() - start
    finally:
        sel.close()
        for conn in conns:
            conn.sock.close()


# ---------------------------------------------------------------------------- the suite
COLUMNS = [
    Column("name", "server"),
    Column("connections", "conns", ",d"),
    Column("p50_us", "p50 us", ",.1f"),
    Column("p99_us", "p99 us", ",.1f"),
    Column("per_s", "round trips/s", ",.0f"),
    Column("p50_vs_floor", "p50/floor", ".2f"),
    Column("p50_vs_buffered", "p50/buffered", ".2f"),
    Column("rate_vs_floor", "rate/floor", ".2f"),
    Column("rate_vs_buffered", "rate/buffered", ".2f"),
    Column("client_cpu", "client cpu", ".0%"),
    Column("server_cpu", "server cpu", ".0%"),
]


def _measure_round(
    servers: dict[str, _Server], size: Size, answer: int
) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for kind, server in servers.items():
        sim = kind == "simulator"
        lat = one_connection(server.ports[0], sim, size.round_trips, answer, sim)
        ports = server.ports[: size.connections] if sim else server.ports * size.connections
        server_cpu = process_cpu_seconds(server.process.pid or 0)
        client = CpuMeter()
        done, seconds = many_connections(ports, sim, size.seconds, size.warmup, answer, sim)
        client.stop()
        server_after = process_cpu_seconds(server.process.pid or 0)
        out[kind] = {
            "p50_us": percentile(lat, 0.5) / 1e3,
            "p99_us": percentile(lat, 0.99) / 1e3,
            "mean_us": statistics.fmean(lat) / 1e3,
            "rate": done / seconds,
            "client_cpu": client.utilisation,
            "server_cpu": (server_after - server_cpu) / client.wall_s
            if server_cpu is not None and server_after is not None
            else math.nan,
        }
    return out


def _engine(calls: int) -> Callable[[], int]:
    """A DeviceEngine at time_scale 0 (as the simulator server's) and a function that feeds
    it ``calls`` toggles, in-process, no sockets: the engine's own share of a round trip."""
    from cyncsim.replay.engine import DeviceEngine
    from cyncsim.simulator._device_conn import default_model

    engine = DeviceEngine(
        default_model(), device_id(0), b"1e07d0000000abcd", mesh_node=1, seed=1, time_scale=0
    )
    engine.connection_made(0.0)
    requests = _requests(4096)
    for request in requests[:256]:  # warm-up: plan caches, first-use costs
        engine.receive(request, 1.0)

    def feed() -> int:
        answers = 0
        for i in range(calls):
            answers += len(engine.receive(requests[i % len(requests)], 1.0))
        return answers

    return feed


def _profile(size: Size, request: bytes, answer: bytes, log: Log) -> dict[str, Any] | None:
    log("overhead: profiling the simulator server (cProfile) under the same load")
    server = _Server("simulator", size.connections, len(request), answer, profile=True)
    try:
        one_connection(server.ports[0], True, size.round_trips, len(answer), True)
        many_connections(
            server.ports[: size.connections], True, size.seconds, size.warmup, len(answer), True
        )
    finally:
        summary = server.stop()
    return summary if isinstance(summary, dict) else None


def run(opts: BenchOptions, log: Log) -> SuiteResult:
    gc.collect()  # no garbage of an earlier suite for this one's collections to walk
    size = QUICK if opts.quick else FULL
    log("overhead: starting the servers (separate processes)")
    servers: dict[str, _Server] = {}
    try:
        sim = _Server("simulator", size.connections, 36, b"", profile=False)
        servers["simulator"] = sim
        request, answer = answer_set(sim.ports[0])
        servers = {
            "floor": _Server("floor", 0, len(request), answer, profile=False),
            "buffered": _Server("buffered", 0, len(request), answer, profile=False),
            "simulator": sim,
        }
        rounds: list[dict[str, dict[str, float]]] = []
        for r in range(opts.repeats):
            log(f"  overhead: round {r + 1}/{opts.repeats} (floor, buffered, simulator)")
            rounds.append(_measure_round(servers, size, len(answer)))
    finally:
        for server in servers.values():
            server.stop()
    log("overhead: the engine alone, in-process")
    calls = size.round_trips
    feed = _engine(calls)

    def verify(answers: int) -> None:
        if answers != 3 * calls:  # 0x7B, f9 result, 0x83 status for every toggle
            raise CyncError(
                f"bench overhead: {answers} engine answers to {calls} toggles", reason="bench"
            )

    engine_timing = measure(feed, opts.repeats, verify)
    rows = _rows(rounds, size)
    engine_us = engine_timing.median / calls * 1e6
    rows.append(
        {
            "name": "engine only",
            "connections": 0,
            "p50_us": engine_us,
            "per_s": calls / engine_timing.median,
            "what": "DeviceEngine.receive of a toggle, in-process (median of repeats, per call)",
            "samples_s": list(engine_timing.samples),
        }
    )
    by = {(r["name"], r["connections"]): r for r in rows}
    sim1, buf1 = by[("simulator", 1)], by[("buffered", 1)]
    simn, bufn = by[("simulator", size.connections)], by[("buffered", size.connections)]
    checks = [
        Check(
            "simulator p50 / buffered p50 (1 conn)",
            sim1["p50_vs_buffered"],
            TARGET_P50_VS_BUFFERED,
            "<=",
            "x",
            ".2f",
        ),
        Check(
            f"simulator rate / buffered rate ({size.connections} conns)",
            simn["rate_vs_buffered"],
            TARGET_RATE_VS_BUFFERED,
            ">=",
            "x",
            ".2f",
        ),
    ]
    result = SuiteResult(
        suite="overhead",
        title=(
            f"round trips of a {len(request)}-byte 0x73 answered by {len(answer)} bytes "
            "(0x7B + f9 + 0x83), time_scale 0, blocking-socket client, servers in their own "
            f"processes; median of {opts.repeats} interleaved rounds"
        ),
        columns=COLUMNS,
        rows=rows,
        checks=checks,
        quick=opts.quick,
        params={
            "request_bytes": len(request),
            "answer_bytes": len(answer),
            "round_trips": size.round_trips,
            "connections": size.connections,
            "seconds": size.seconds,
            "warmup_s": size.warmup,
            "repeats": opts.repeats,
        },
    )
    result.notes += [
        f"1 connection: the simulator's p50 is {sim1['p50_us']:.0f} us, "
        f"{sim1['p50_vs_buffered']:.2f}x the BufferedProtocol echo ({buf1['p50_us']:.0f} us) "
        f"and {sim1['p50_vs_floor']:.2f}x the blocking floor; simulator work per round trip "
        f"about {sim1['p50_us'] - buf1['p50_us']:.0f} us",
        f"the engine alone (DeviceEngine.receive, no sockets) takes {engine_us:.0f} us per "
        f"toggle: {engine_us / (sim1['p50_us'] - buf1['p50_us']):.0%} of what the simulator "
        "adds to the echo's round trip",
        f"{size.connections} connections: {simn['per_s']:,.0f} round trips/s, "
        f"{simn['rate_vs_buffered']:.2f}x the echo's {bufn['per_s']:,.0f}/s",
        "the client waits for the whole 78-byte answer set, written by the simulator in one "
        "write, as the echo servers write their 78 bytes",
    ]
    missed = not all(c.passed for c in checks)
    if missed and opts.quick and not opts.profile:
        result.notes.append("quick size: no profile (a full run or --profile adds one)")
    if opts.profile or (missed and not opts.quick):
        summary = _profile(size, request, answer, log)
        if summary is not None:
            _add_profile(result, summary, "simulator server, under the same load")
        _add_profile(result, profile_by_file(_engine(calls), top=15), "DeviceEngine.receive")
    return result


def _rows(rounds: list[dict[str, dict[str, float]]], size: Size) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    med = {
        kind: {k: statistics.median(r[kind][k] for r in rounds) for k in rounds[0][kind]}
        for kind in SERVERS
    }
    for kind in SERVERS:
        m = med[kind]
        rows.append(
            {
                "name": kind,
                "connections": 1,
                "p50_us": m["p50_us"],
                "p99_us": m["p99_us"],
                "per_s": 1e6 / m["mean_us"],
                "p50_vs_floor": m["p50_us"] / med["floor"]["p50_us"],
                "p50_vs_buffered": m["p50_us"] / med["buffered"]["p50_us"],
                "p50_samples_us": [r[kind]["p50_us"] for r in rounds],
            }
        )
    for kind in SERVERS:
        m = med[kind]
        rows.append(
            {
                "name": kind,
                "connections": size.connections,
                "per_s": m["rate"],
                "rate_vs_floor": m["rate"] / med["floor"]["rate"],
                "rate_vs_buffered": m["rate"] / med["buffered"]["rate"],
                "rate_samples": [r[kind]["rate"] for r in rounds],
                "client_cpu": m["client_cpu"],
                "server_cpu": m["server_cpu"],
            }
        )
    return rows


def _add_profile(result: SuiteResult, summary: dict[str, Any], what: str) -> None:
    result.sections.append(
        (
            f"profile: {what} (cProfile; shares of own time by file)",
            [Column("file", "file"), Column("own_share", "share", ".1%")],
            summary.get("files", []),
        )
    )
    result.sections.append(
        (
            f"profile: {what}, top functions by own time",
            [
                Column("function", "function"),
                Column("calls", "calls", ",d"),
                Column("own_share", "own", ".1%"),
                Column("cum_share", "cumulative", ".1%"),
            ],
            summary.get("functions", []),
        )
    )
