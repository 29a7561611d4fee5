# `cyncsim bench overhead`: what one simulated round trip costs, against two echo servers.
#
# Strategy: three servers in their own processes answer a 36-byte toggle with the device's
# 78-byte answer set: floor (blocking sockets, a thread per connection), buffered (an asyncio
# BufferedProtocol echo) and simulator (CyncDeviceSimulator at time_scale 0).  One client loop
# (one request outstanding per connection; a blocking socket when there is one, else select)
# times round trips on 1 connection and counts them on 100, in interleaved rounds; a last row
# times the engine alone.  Missed targets get a profile.
from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import selectors
import socket
import statistics
import threading
import time
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from typing import Any

from cyncsim import CyncDeviceSimulator, PacketType
from cyncsim.replay.framer import PacketFramer
from cyncsim.replay.protocol import exchange_key
from cyncsim.tools.bench import common
from cyncsim.tools.bench.common import BenchOptions, Check, Column, Log, SuiteResult, SuiteSpec
from cyncsim.tools.bench.simkit import (
    Child,
    CpuMeter,
    command_packet,
    percentile,
    process_cpu_seconds,
)

__all__ = ["SERVERS", "SPEC", "Size", "round_trips", "run", "serve_main"]

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
        *Column.latency(unit="us", spec=",.1f", keys="p50 p99"),
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


def _floor(listener: socket.socket, request: int, answer: bytes) -> None:
    """Blocking sockets, a thread per connection, the same counting as _Echo."""

    def serve(conn: socket.socket) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buf, pending = bytearray(65536), 0
        with conn, contextlib.suppress(OSError):
            while n := conn.recv_into(buf):
                whole, pending = divmod(pending + n, request)
                if whole:
                    conn.sendall(answer * whole)

    with contextlib.suppress(OSError):
        while True:
            threading.Thread(target=serve, args=(listener.accept()[0],), daemon=True).start()


async def _serve(ctl: Connection, kind: str, count: int, request: int, answer: bytes) -> None:
    devices = [
        CyncDeviceSimulator(device_id(i), seed=i, time_scale=0.0, mesh_node=1)
        for i in range(count if kind == "simulator" else 0)
    ]
    for dev in devices:
        await dev.start()
    closer: Any = None
    if kind == "floor":
        closer = socket.create_server((HOST, 0), backlog=512)
        threading.Thread(target=_floor, args=(closer, request, answer), daemon=True).start()
        ports = [closer.getsockname()[1]]
    elif kind == "buffered":
        loop = asyncio.get_running_loop()
        closer = await loop.create_server(lambda: _Echo(request, answer), HOST, 0, backlog=512)
        ports = [closer.sockets[0].getsockname()[1]]
    else:
        ports = [d.port for d in devices]
    ctl.send(ports)
    await Child.serve(ctl, lambda msg: None)
    if closer is not None:
        closer.close()
    for dev in devices:
        await dev.stop()


def serve_main(
    ctl: Connection, kind: str, count: int, request: int, answer: bytes, profile: bool
) -> None:
    """A server process: serve until "stop"; with ``profile``, send its cProfile summary."""
    serve = functools.partial(asyncio.run, _serve(ctl, kind, count, request, answer))
    ctl.send(common.profile_by_file(serve, top=15) if profile else serve())


def _server(kind: str, count: int, request: int, answer: bytes, profile: bool = False) -> Child:
    return Child(serve_main, kind, count, request, answer, profile, name=f"the {kind} server")


# ---------------------------------------------------------------------------- client
def _connect(port: int, hello: bool) -> socket.socket:
    sock = socket.create_connection((HOST, port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if hello and PacketType.HELLO not in _read(sock, 1)[1]:  # a device speaks first: its 0x23
        raise common.fail("overhead", "the device did not say hello first")
    return sock


def _read(sock: socket.socket, packets: int) -> tuple[bytes, list[int]]:
    """Bytes and packet types read until ``packets`` whole packets came."""
    framer, data, kinds = PacketFramer(), b"", list[int]()
    while len(kinds) < packets:
        if not (chunk := sock.recv(4096)):
            raise common.fail("overhead", f"the device closed after {kinds}, before {packets}")
        data += chunk
        kinds += [p.type for p in framer.feed(chunk)]
    return data, kinds


def _matches(buf: bytes | bytearray, request: bytes) -> bool:
    return buf[0] == PacketType.DATA_ACK and exchange_key(buf) == exchange_key(request)


def answer_set(port: int) -> tuple[bytes, bytes]:
    """One toggle to the device at ``port``: (request, its checked 0x7B + f9 + 0x83 answer)."""
    request = command_packet(device_id(0), 0)
    with _connect(port, hello=True) as sock:
        sock.sendall(request)
        data, kinds = _read(sock, 3)
    if kinds != [PacketType.DATA_ACK, PacketType.DATA, PacketType.REPORT] or not _matches(
        data, request
    ):
        raise common.fail("overhead", f"unexpected answer set {kinds}")
    return request, data


def round_trips(
    ports: list[int], hello: bool, answer: int, n: int = 0, seconds: float = 0.0, warmup: float = 0
) -> tuple[list[int], float]:
    """One request outstanding on a connection to each of ``ports`` (``hello``: devices,
    whose answers are checked), until ``n`` round trips or for ``seconds`` after ``warmup``:
    (nanoseconds of each counted round trip, seconds counted)."""
    sel, clock = selectors.DefaultSelector(), time.perf_counter_ns
    socks: list[socket.socket] = []
    try:
        for i, port in enumerate(ports):
            socks.append(sock := _connect(port, hello))
            sock.setblocking(len(ports) == 1)
            reqs = [command_packet(device_id(i if hello else 0), k) for k in range(256)]
            # the socket, requests, answer buffer, bytes got, requests sent, the last one's time
            conn = [sock, reqs, bytearray(answer), 0, 0, clock()]
            sel.register(sock, selectors.EVENT_READ, conn)
            sock.send(reqs[0])
        # one connection blocks in recv_into, as a plain client would; more go through select
        one = [(sel.get_key(socks[0]), selectors.EVENT_READ)] if len(socks) == 1 else None
        counting = clock() + int(warmup * 1e9)
        end, lat = counting + int(seconds * 1e9), list[int]()
        while len(lat) < n if n else clock() < end:
            for key, _ in one or sel.select(0.5):
                sock, reqs, buf, got, sent, since = conn = key.data
                k = sock.recv_into(memoryview(buf)[got:], answer - got)
                if not k:
                    raise common.fail("overhead", "the server closed the connection")
                conn[3] = got = got + k
                if got < answer:
                    continue
                if (now := clock()) >= counting:
                    lat.append(now - since)
                if hello and not _matches(buf, reqs[sent % len(reqs)]):
                    raise common.fail("overhead", "the answer does not match")
                nxt = reqs[(sent + 1) % len(reqs)]
                conn[3:] = [0, sent + 1, clock()]
                if sock.send(nxt) != len(nxt):
                    raise common.fail("overhead", "short send")
        return lat, (clock() - counting) / 1e9
    finally:
        sel.close()
        for sock in socks:
            sock.close()


# ---------------------------------------------------------------------------- the suite
def _measure_round(servers: dict[str, Child], size: Size, answer: int) -> dict[str, Any]:
    out: dict[str, dict[str, float]] = {}
    for kind, server in servers.items():
        sim = kind == "simulator"
        lat, _ = round_trips(server.ready[:1], sim, answer, n=size.round_trips)
        ports = server.ready[: size.connections] if sim else server.ready * size.connections
        pid = server.process.pid or 0
        server_cpu, client = process_cpu_seconds(pid), CpuMeter()
        done, seconds = round_trips(ports, sim, answer, seconds=size.seconds, warmup=size.warmup)
        client.stop()
        server_after = process_cpu_seconds(pid)
        out[kind] = {
            "p50_us": percentile(lat, 0.5) / 1e3,
            "p99_us": percentile(lat, 0.99) / 1e3,
            "mean_us": statistics.fmean(lat) / 1e3,
            "rate": len(done) / seconds,
            "client_cpu": client.utilisation,
            "server_cpu": (server_after - server_cpu) / client.wall_s
            if server_cpu is not None and server_after is not None
            else math.nan,
        }
    return out


def _engine_feed(calls: int) -> Any:
    """A function feeding ``calls`` toggles to a device's engine at time_scale 0, in-process."""
    engine = CyncDeviceSimulator(device_id(0), seed=1, time_scale=0.0, mesh_node=1).engine
    engine.connection_made(0.0)
    requests = [command_packet(device_id(0), i) for i in range(4096)]
    for request in requests[:256]:  # warm-up: plan caches, first-use costs
        engine.receive(request, 1.0)
    return lambda: sum(len(engine.receive(requests[i % 4096], 1.0)) for i in range(calls))


def _rows(rounds: list[dict[str, Any]], size: Size) -> list[dict[str, Any]]:
    """Per server the medians of the rounds: a 1-connection row and a many-connection row."""
    med = {
        k: {f: statistics.median(r[k][f] for r in rounds) for f in rounds[0][k]} for k in SERVERS
    }
    rows: list[dict[str, Any]] = []
    for kind, m in med.items():
        one = {"name": kind, "connections": 1, "p50_us": m["p50_us"], "p99_us": m["p99_us"]}
        many: dict[str, Any] = {"name": kind, "connections": size.connections, "per_s": m["rate"]}
        for base in ("floor", "buffered"):
            one[f"p50_vs_{base}"] = m["p50_us"] / med[base]["p50_us"]
            many[f"rate_vs_{base}"] = m["rate"] / med[base]["rate"]
        one |= {"per_s": 1e6 / m["mean_us"], "p50_samples_us": [r[kind]["p50_us"] for r in rounds]}
        many |= {"rate_samples": [r[kind]["rate"] for r in rounds], "client_cpu": m["client_cpu"]}
        rows += [one, many | {"server_cpu": m["server_cpu"]}]
    return sorted(rows, key=lambda r: r["connections"])  # the 1-connection rows first


def _profile(result: SuiteResult, size: Size, request: bytes, answer: bytes) -> None:
    """The simulator server's cProfile summary under the same load, and the engine's."""
    server = _server("simulator", size.connections, len(request), answer, profile=True)
    try:
        round_trips(server.ready[:1], True, len(answer), n=size.round_trips)
        ports = server.ready[: size.connections]
        round_trips(ports, True, len(answer), seconds=size.seconds, warmup=size.warmup)
    finally:
        summary = server.stop()
    if isinstance(summary, dict):
        result.add_profile(summary, "simulator server, under the same load")
    engine = common.profile_by_file(_engine_feed(size.round_trips), top=15)
    result.add_profile(engine, "DeviceEngine.receive")


def run(opts: BenchOptions, log: Log) -> SuiteResult:
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
            raise common.fail("overhead", f"{answers} engine answers to {calls} toggles")

    engine = common.measure(_engine_feed(calls), opts.repeats, verify)
    engine_us = engine.median / calls * 1e6
    rows = _rows(rounds, size)
    what = "DeviceEngine.receive of a toggle, in-process (median of repeats, per call)"
    rows.append({"name": "engine only", "connections": 0, "p50_us": engine_us, "what": what})
    rows[-1] |= {"per_s": calls / engine.median, "samples_s": list(engine.samples)}
    by = {(r["name"], r["connections"]): r for r in rows}
    sim1, buf1 = by[("simulator", 1)], by[("buffered", 1)]
    many = f"simulator rate / buffered rate ({size.connections} conns)"
    one, rate = sim1["p50_vs_buffered"], by[("simulator", size.connections)]["rate_vs_buffered"]
    checks = [
        Check("simulator p50 / buffered p50 (1 conn)", one, TARGET_P50_VS_BUFFERED, "<=", "x"),
        Check(many, rate, TARGET_RATE_VS_BUFFERED, ">=", "x", ".2f"),
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
        _profile(result, size, request, answer)
    return result
