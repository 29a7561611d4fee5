# `cyncsim bench overhead`: what one simulated round trip costs, against two echo servers.
#
# Strategy: three servers in their own processes answer a 36-byte toggle with the device's
# 78-byte answer set: floor (blocking sockets, a thread each), buffered (an asyncio
# BufferedProtocol echo), simulator (time_scale 0).  One client, one request outstanding per
# connection, times round trips on 1 connection and counts them on 100, in interleaved rounds.
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
from cyncsim.tools.bench import common, simkit
from cyncsim.tools.bench.common import BenchOptions, Check, Column, Log, SuiteResult, SuiteSpec

__all__ = ["SERVERS", "SPEC", "Size", "round_trips", "run", "serve_main"]

SERVERS = ("floor", "buffered", "simulator")
TARGET_P50_VS_BUFFERED = 1.5
TARGET_RATE_VS_BUFFERED = 0.7
DEVICE_BASE = 0x5E000000
HOST = "127.0.0.1"
_BASES = ("floor", "buffered")


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
        *(Column(f"{a}_vs_{b}", f"{a}/{b}", ".2f") for a in ("p50", "rate") for b in _BASES),
        Column("client_cpu", "client cpu", ".0%"),
        Column("server_cpu", "server cpu", ".0%"),
    ],
)


def device_id(i: int) -> bytes:
    return (DEVICE_BASE + i).to_bytes(4, "big")


def _fail(message: str) -> Exception:
    return common.fail("overhead", message)


class _Echo(asyncio.BufferedProtocol):
    """For every whole request received, writes the answer (one write per read)."""

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


def _floor(listener: socket.socket, request: int, answer: bytes) -> None:  # _Echo in threads

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
    await simkit.Child.serve(ctl, lambda msg: None)
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


def _server(kind: str, count: int, request: int, answer: bytes, profile: bool = False) -> Any:
    return simkit.Child(
        serve_main, kind, count, request, answer, profile, name=f"the {kind} server"
    )


def _connect(port: int, hello: bool) -> socket.socket:
    sock = socket.create_connection((HOST, port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if hello:  # a device speaks first: its 0x23
        framer, kinds = PacketFramer(), list[int]()
        while not kinds and (chunk := sock.recv(4096)):
            kinds += [p.type for p in framer.feed(chunk)]
        if PacketType.HELLO not in kinds:
            raise _fail("the device did not say hello first")
    return sock


def _matches(buf: bytes | bytearray, request: bytes) -> bool:
    return buf[0] == PacketType.DATA_ACK and exchange_key(buf) == exchange_key(request)


def answer_set(port: int) -> tuple[bytes, bytes]:
    """One toggle to the device at ``port``: (request, its checked 0x7B + f9 + 0x83 answer)."""
    request, framer, data = simkit.command_packet(device_id(0), 0), PacketFramer(), b""
    kinds: list[int] = []
    with _connect(port, hello=True) as sock:
        sock.sendall(request)
        while len(kinds) < 3:
            if not (chunk := sock.recv(4096)):
                raise _fail(f"the device closed after {kinds}, before 3")
            data += chunk
            kinds += [p.type for p in framer.feed(chunk)]
    if kinds != [PacketType.DATA_ACK, PacketType.DATA, PacketType.REPORT] or not _matches(
        data, request
    ):
        raise _fail(f"unexpected answer set {kinds}")
    return request, data


def round_trips(
    ports: list[int], hello: bool, answer: int, n: int = 0, seconds: float = 0.0, warmup: float = 0
) -> tuple[list[int], float]:
    """One request outstanding on a connection to each of ``ports`` (``hello``: devices, answers
    checked) until ``n`` round trips or for ``seconds`` after ``warmup``: (ns each, seconds)."""
    sel, clock = selectors.DefaultSelector(), time.perf_counter_ns
    socks: list[socket.socket] = []
    try:
        for i, port in enumerate(ports):
            socks.append(sock := _connect(port, hello))
            sock.setblocking(len(ports) == 1)
            reqs = [simkit.command_packet(device_id(i if hello else 0), k) for k in range(256)]
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
                    raise _fail("the server closed the connection")
                conn[3] = got = got + k
                if got < answer:
                    continue
                if (now := clock()) >= counting:
                    lat.append(now - since)
                if hello and not _matches(buf, reqs[sent % len(reqs)]):
                    raise _fail("the answer does not match")
                conn[3:] = [0, sent + 1, clock()]
                sock.send(reqs[(sent + 1) % len(reqs)])  # 36 bytes: the socket buffer takes them
        return lat, (clock() - counting) / 1e9
    finally:
        sel.close()
        for sock in socks:
            sock.close()


def _measure_round(servers: dict[str, Any], size: Size, answer: int) -> dict[str, Any]:
    out: dict[str, dict[str, float]] = {}
    for kind, server in servers.items():
        sim = kind == "simulator"
        lat, _ = round_trips(server.ready[:1], sim, answer, n=size.round_trips)
        ports = server.ready[: size.connections] if sim else server.ready * size.connections
        pid = server.process.pid or 0
        before, client = simkit.process_cpu_seconds(pid), simkit.CpuMeter()
        done, seconds = round_trips(ports, sim, answer, seconds=size.seconds, warmup=size.warmup)
        client.stop()
        after = simkit.process_cpu_seconds(pid)
        out[kind] = {"p50_us": simkit.percentile(lat, 0.5) / 1e3, "rate": len(done) / seconds}
        out[kind] |= {"p99_us": simkit.percentile(lat, 0.99) / 1e3}
        out[kind] |= {"mean_us": statistics.fmean(lat) / 1e3, "client_cpu": client.utilisation}
        if before is None or after is None:
            out[kind]["server_cpu"] = math.nan
        else:
            out[kind]["server_cpu"] = (after - before) / client.wall_s
    return out


def _engine_feed(calls: int) -> Any:
    """A function feeding ``calls`` toggles to a device's engine (time_scale 0)."""
    engine = CyncDeviceSimulator(device_id(0), seed=1, time_scale=0.0, mesh_node=1).engine
    engine.connection_made(0.0)
    requests = [simkit.command_packet(device_id(0), i) for i in range(4096)]
    for request in requests[:256]:  # warm-up: plan caches, first-use costs
        engine.receive(request, 1.0)
    return lambda: sum(len(engine.receive(requests[i % 4096], 1.0)) for i in range(calls))


def _rows(rounds: list[dict[str, Any]], size: Size) -> list[dict[str, Any]]:
    """Per server, medians of the rounds: a 1-connection row and a many-connection row."""
    med = {
        k: {f: statistics.median(r[k][f] for r in rounds) for f in rounds[0][k]} for k in SERVERS
    }
    rows: list[dict[str, Any]] = []
    for kind, m in med.items():
        one = {"name": kind, "connections": 1, "p50_us": m["p50_us"], "p99_us": m["p99_us"]}
        many: dict[str, Any] = {"name": kind, "connections": size.connections, "per_s": m["rate"]}
        for base in _BASES:
            one[f"p50_vs_{base}"] = m["p50_us"] / med[base]["p50_us"]
            many[f"rate_vs_{base}"] = m["rate"] / med[base]["rate"]
        one |= {"per_s": 1e6 / m["mean_us"], "p50_samples_us": [r[kind]["p50_us"] for r in rounds]}
        many |= {"rate_samples": [r[kind]["rate"] for r in rounds], "client_cpu": m["client_cpu"]}
        rows += [one, many | {"server_cpu": m["server_cpu"]}]
    return sorted(rows, key=lambda r: r["connections"])  # the 1-connection rows first


def run(opts: BenchOptions, log: Log) -> SuiteResult:
    size = SPEC.size(opts)
    log("overhead: starting the servers (separate processes)")
    servers: dict[str, Any] = {}
    try:
        servers["simulator"] = sim = _server("simulator", size.connections, 36, b"")
        request, answer = answer_set(sim.ready[0])
        for kind in _BASES:
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
    calls = size.round_trips  # each answered by 0x7B, f9 result, 0x83 status
    verify = common.expect("overhead", f"the engine's answers to {calls} toggles", 3 * calls)
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
        f"echo, of which the engine alone takes {engine_us:.0f} us"
    ]
    result = SPEC.result(opts, title, rows, checks, params, notes)
    missed = not all(c.passed for c in checks)
    if missed and opts.quick and not opts.profile:
        result.notes.append("quick size: no profile (a full run or --profile adds one)")
    if opts.profile or (missed and not opts.quick):
        log("overhead: profiling the simulator server (cProfile) under the same load")
        server = _server("simulator", size.connections, len(request), answer, profile=True)
        try:
            round_trips(server.ready[:1], True, len(answer), n=size.round_trips)
            ports = server.ready[: size.connections]
            round_trips(ports, True, len(answer), seconds=size.seconds, warmup=size.warmup)
        finally:
            summary = server.stop()
        if isinstance(summary, dict):
            result.add_profile(summary, "simulator server, under the same load")
        engine_profile = common.profile_by_file(_engine_feed(size.round_trips), top=15)
        result.add_profile(engine_profile, "DeviceEngine.receive")
    return result
