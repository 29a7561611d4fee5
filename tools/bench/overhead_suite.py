# `cyncsim bench overhead`: what one simulated round trip costs, against two echo servers.
#
# Strategy: three servers in their own processes answer a 36-byte toggle with the device's
# 78-byte answer set: floor (blocking sockets, a thread per connection), buffered (an asyncio
# BufferedProtocol echo) and simulator (CyncDeviceSimulator at time_scale 0).  A blocking
# client times round trips on 1 connection, and counts them on 100 (a selector loop), in
# interleaved rounds; a last row times the engine alone.  Missed targets get a profile.
from __future__ import annotations

import asyncio
import gc
import math
import selectors
import socket
import statistics
import threading
import time
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from typing import Any

from cyncsim import CyncDeviceSimulator, CyncError, PacketType
from cyncsim.replay.framer import PacketFramer
from cyncsim.replay.protocol import exchange_key
from cyncsim.tools.bench.common import (
    BenchOptions,
    Check,
    Column,
    Log,
    SuiteResult,
    SuiteSpec,
    measure,
    profile_by_file,
    profile_sections,
)
from cyncsim.tools.bench.simkit import (
    Child,
    CpuMeter,
    command_packet,
    process_cpu_seconds,
    serve_control,
)
from cyncsim.tools.bench.stats import percentile

__all__ = ["SERVERS", "SPEC", "Size", "run", "serve_main"]

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


SPEC = SuiteSpec(
    "overhead",
    full=Size(20_000, 100, 3.0, 0.5),
    quick=Size(2_000, 100, 0.5, 0.2),
    columns=[
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
    ],
)


def device_id(i: int) -> bytes:
    return (DEVICE_BASE + i).to_bytes(4, "big")


def _fail(message: str) -> CyncError:
    return CyncError(f"bench overhead: {message}", reason="bench")


# ---------------------------------------------------------------------------- servers
class _Echo(asyncio.BufferedProtocol):
    """Counts request bytes; for every whole request writes the answer, in one write."""

    def __init__(self, request: int, answer: bytes) -> None:
        self._buf = memoryview(bytearray(65536))
        self._request, self._answer, self._pending = request, answer, 0
        self._transport: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._buf

    def buffer_updated(self, nbytes: int) -> None:
        whole, self._pending = divmod(self._pending + nbytes, self._request)
        if whole:
            self._transport.write(self._answer * whole)


def _floor_connection(conn: socket.socket, request: int, answer: bytes) -> None:
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buf, pending = bytearray(65536), 0
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


def _floor_accept(listener: socket.socket, request: int, answer: bytes) -> None:
    while True:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        args = (conn, request, answer)
        threading.Thread(target=_floor_connection, args=args, daemon=True).start()


async def _serve(ctl: Connection, kind: str, count: int, request: int, answer: bytes) -> None:
    loop = asyncio.get_running_loop()
    devices: list[CyncDeviceSimulator] = []
    closers: list[Any] = []
    if kind == "floor":
        listener = socket.create_server((HOST, 0), backlog=512)
        args = (listener, request, answer)
        threading.Thread(target=_floor_accept, args=args, daemon=True).start()
        ports, closers = [listener.getsockname()[1]], [listener]
    elif kind == "buffered":
        server = await loop.create_server(lambda: _Echo(request, answer), HOST, 0, backlog=512)
        ports, closers = [server.sockets[0].getsockname()[1]], [server]
    else:
        for i in range(count):
            devices.append(CyncDeviceSimulator(device_id(i), seed=i, time_scale=0.0, mesh_node=1))
            await devices[-1].start()
        ports = [d.port for d in devices]
    ctl.send(ports)
    await serve_control(ctl, lambda msg: None)
    for closer in closers:
        closer.close()
    for dev in devices:
        await dev.stop()


def serve_main(
    ctl: Connection, kind: str, count: int, request: int, answer: bytes, profile: bool
) -> None:
    """A server process: serve until "stop"; with ``profile``, send its cProfile summary."""

    def serve() -> None:
        asyncio.run(_serve(ctl, kind, count, request, answer))

    if not profile:
        serve()
    ctl.send(profile_by_file(serve, top=15) if profile else None)


def _server(kind: str, count: int, request: int, answer: bytes, profile: bool = False) -> Child:
    args = (kind, count, request, answer, profile)
    return Child(serve_main, *args, name=f"the {kind} server")


# ---------------------------------------------------------------------------- client
def _connect(port: int, hello: bool) -> socket.socket:
    sock = socket.create_connection((HOST, port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    framer = PacketFramer()
    while hello:  # a device speaks first: its 0x23
        data = sock.recv(4096)
        if not data:
            raise _fail("the device closed before its 0x23")
        hello = not any(p.type == PacketType.HELLO for p in framer.feed(data))
    return sock


def _matches(buf: bytes | bytearray, request: bytes) -> bool:
    return buf[0] == PacketType.DATA_ACK and exchange_key(buf) == exchange_key(request)


def answer_set(port: int) -> tuple[bytes, bytes]:
    """One toggle to the device at ``port``: (request, its checked 0x7B + f9 + 0x83 answer)."""
    request = command_packet(device_id(0), 0)
    framer, data, kinds = PacketFramer(), b"", list[int]()
    with _connect(port, hello=True) as sock:
        sock.sendall(request)
        while len(kinds) < 3:
            chunk = sock.recv(4096)
            if not chunk:
                raise _fail("the device closed mid-answer")
            data += chunk
            kinds += [p.type for p in framer.feed(chunk)]
    if kinds != [PacketType.DATA_ACK, PacketType.DATA, PacketType.REPORT] or not _matches(
        data, request
    ):
        raise _fail(f"unexpected answer set {kinds}")
    return request, data


def one_connection(port: int, hello: bool, n: int, answer: int) -> list[int]:
    """``n`` round trips on one connection, one at a time: nanoseconds each."""
    requests = [command_packet(device_id(0), i) for i in range(min(n, 4096))]
    buf = bytearray(answer)
    view = memoryview(buf)
    out = [0] * n
    clock = time.perf_counter_ns
    with _connect(port, hello) as sock:
        for i in range(n):
            request = requests[i % len(requests)]
            start = clock()
            sock.sendall(request)
            got = 0
            while got < answer:
                k = sock.recv_into(view[got:], answer - got)
                if not k:
                    raise _fail("the server closed the connection")
                got += k
            out[i] = clock() - start
            if hello and not _matches(buf, request):
                raise _fail("the answer does not match")
    return out


def many_connections(
    ports: list[int], hello: bool, seconds: float, warmup: float, answer: int
) -> tuple[int, float]:
    """One request outstanding per connection for ``seconds``: (round trips, seconds)."""
    sel = selectors.DefaultSelector()
    socks: list[socket.socket] = []
    try:
        for i, port in enumerate(ports):
            sock = _connect(port, hello)
            socks.append(sock)
            sock.setblocking(False)
            reqs = [command_packet(device_id(i if hello else 0), k) for k in range(256)]
            conn = [reqs, bytearray(answer), 0, 0]  # requests, buffer, bytes got, sent
            sel.register(sock, selectors.EVENT_READ, conn)
            sock.send(reqs[0])
        clock = time.perf_counter
        start = clock()
        counting_from, end, done = start + warmup, start + warmup + seconds, 0
        while (now := clock()) < end:
            if counting_from and now >= counting_from:
                counting_from, done, start = 0.0, 0, now
            for key, _ in sel.select(0.5):
                reqs, buf, got, sent = key.data
                k = key.fileobj.recv_into(memoryview(buf)[got:], answer - got)  # type: ignore[union-attr]
                if not k:
                    raise _fail("the server closed")
                key.data[2] = got = got + k
                if got < answer:
                    continue
                if hello and not _matches(buf, reqs[sent % len(reqs)]):
                    raise _fail("the answer does not match")
                key.data[2:] = [0, sent + 1]
                done += 1
                nxt = reqs[(sent + 1) % len(reqs)]
                if key.fileobj.send(nxt) != len(nxt):  # type: ignore[union-attr]
                    raise _fail("short send")
        return done, clock() - start
    finally:
        sel.close()
        for sock in socks:
            sock.close()


# ---------------------------------------------------------------------------- the suite
def _measure_round(servers: dict[str, Child], size: Size, answer: int) -> dict[str, Any]:
    out: dict[str, dict[str, float]] = {}
    for kind, server in servers.items():
        sim = kind == "simulator"
        lat = one_connection(server.ready[0], sim, size.round_trips, answer)
        ports = server.ready[: size.connections] if sim else server.ready * size.connections
        pid = server.process.pid or 0
        server_cpu, client = process_cpu_seconds(pid), CpuMeter()
        done, seconds = many_connections(ports, sim, size.seconds, size.warmup, answer)
        client.stop()
        server_after = process_cpu_seconds(pid)
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


def _engine_feed(calls: int) -> Any:
    """A device's engine at time_scale 0 (as the simulator server's; the device is never
    started) and a function feeding it ``calls`` toggles in-process: the engine's own share."""
    engine = CyncDeviceSimulator(device_id(0), seed=1, time_scale=0.0, mesh_node=1).engine
    engine.connection_made(0.0)
    requests = [command_packet(device_id(0), i) for i in range(4096)]
    for request in requests[:256]:  # warm-up: plan caches, first-use costs
        engine.receive(request, 1.0)
    return lambda: sum(len(engine.receive(requests[i % 4096], 1.0)) for i in range(calls))


def _rows(rounds: list[dict[str, Any]], size: Size) -> list[dict[str, Any]]:
    med = {
        kind: {k: statistics.median(r[kind][k] for r in rounds) for k in rounds[0][kind]}
        for kind in SERVERS
    }
    floor, buffered = med["floor"], med["buffered"]
    one = [
        {
            "name": kind,
            "connections": 1,
            "p50_us": m["p50_us"],
            "p99_us": m["p99_us"],
            "per_s": 1e6 / m["mean_us"],
            "p50_vs_floor": m["p50_us"] / floor["p50_us"],
            "p50_vs_buffered": m["p50_us"] / buffered["p50_us"],
            "p50_samples_us": [r[kind]["p50_us"] for r in rounds],
        }
        for kind, m in med.items()
    ]
    many = [
        {
            "name": kind,
            "connections": size.connections,
            "per_s": m["rate"],
            "rate_vs_floor": m["rate"] / floor["rate"],
            "rate_vs_buffered": m["rate"] / buffered["rate"],
            "rate_samples": [r[kind]["rate"] for r in rounds],
            "client_cpu": m["client_cpu"],
            "server_cpu": m["server_cpu"],
        }
        for kind, m in med.items()
    ]
    return one + many


def run(opts: BenchOptions, log: Log) -> SuiteResult:
    gc.collect()  # no garbage of an earlier suite for this one's collections to walk
    size = SPEC.size(opts)
    log("overhead: starting the servers (separate processes)")
    servers: dict[str, Child] = {}
    try:
        servers["simulator"] = sim = _server("simulator", size.connections, 36, b"")
        request, answer = answer_set(sim.ready[0])
        for kind in ("floor", "buffered"):
            servers[kind] = _server(kind, 0, len(request), answer)
        servers = {kind: servers[kind] for kind in SERVERS}
        rounds = []
        for r in range(opts.repeats):
            log(f"  overhead: round {r + 1}/{opts.repeats} (floor, buffered, simulator)")
            rounds.append(_measure_round(servers, size, len(answer)))
    finally:
        for server in servers.values():
            server.stop()
    log("overhead: the engine alone, in-process")
    calls = size.round_trips

    def verify(answers: int) -> None:
        if answers != 3 * calls:  # 0x7B, f9 result, 0x83 status for every toggle
            raise _fail(f"{answers} engine answers to {calls} toggles")

    engine = measure(_engine_feed(calls), opts.repeats, verify)
    engine_us = engine.median / calls * 1e6
    rows = _rows(rounds, size)
    rows.append(
        {
            "name": "engine only",
            "connections": 0,
            "p50_us": engine_us,
            "per_s": calls / engine.median,
            "what": "DeviceEngine.receive of a toggle, in-process (median of repeats, per call)",
            "samples_s": list(engine.samples),
        }
    )
    by = {(r["name"], r["connections"]): r for r in rows}
    sim1, buf1 = by[("simulator", 1)], by[("buffered", 1)]
    simn = by[("simulator", size.connections)]
    one_name, many_name = "simulator p50 / buffered p50 (1 conn)", "simulator rate / buffered rate"
    checks = [
        Check(one_name, sim1["p50_vs_buffered"], TARGET_P50_VS_BUFFERED, "<=", "x", ".2f"),
        Check(
            f"{many_name} ({size.connections} conns)",
            simn["rate_vs_buffered"],
            TARGET_RATE_VS_BUFFERED,
            unit="x",
            spec=".2f",
        ),
    ]
    title = (
        f"round trips of a {len(request)}-byte 0x73 answered by {len(answer)} bytes "
        "(0x7B + f9 + 0x83), time_scale 0, blocking-socket client, servers in their own "
        f"processes; median of {opts.repeats} interleaved rounds"
    )
    params = {"request_bytes": len(request), "answer_bytes": len(answer), **asdict(size)}
    params |= {"warmup_s": size.warmup, "repeats": opts.repeats}
    notes = [
        f"simulator work per round trip about {sim1['p50_us'] - buf1['p50_us']:.0f} us over the "
        f"echo, of which the engine alone takes {engine_us:.0f} us",
    ]
    result = SPEC.result(opts, title, rows, checks, params, notes)
    missed = not all(c.passed for c in checks)
    if missed and opts.quick and not opts.profile:
        result.notes.append("quick size: no profile (a full run or --profile adds one)")
    if opts.profile or (missed and not opts.quick):
        log("overhead: profiling the simulator server (cProfile) under the same load")
        server = _server("simulator", size.connections, len(request), answer, profile=True)
        try:
            one_connection(server.ready[0], True, size.round_trips, len(answer))
            ports = server.ready[: size.connections]
            many_connections(ports, True, size.seconds, size.warmup, len(answer))
        finally:
            summary = server.stop()
        if isinstance(summary, dict):
            result.sections += profile_sections(summary, "simulator server, under the same load")
        engine_profile = profile_by_file(_engine_feed(calls), top=15)
        result.sections += profile_sections(engine_profile, "DeviceEngine.receive")
    return result
