# `cyncsim bench fleet`: thousands of dial-mode devices against one local controller.
#
# Strategy: fresh spawned processes.  The controller (a CyncCloudSimulator, gc paused) notes
# the gap before each 0xD3 it reads, its loop lateness and CPU.  Per row a fleet process dials
# it (CyncFleet, FleetWorkers or a RayFleet of 2 shards), settles, takes its RSS delta per
# device, then times a window of heartbeats: time since the last packet minus the learned idle
# time.  The commands row: the controller toggles the devices round-robin, timing each 0x7B.
from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib.util
import math
import multiprocessing
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from cyncsim import CyncCloudSimulator, CyncError, CyncFleet, load_default_model
from cyncsim.replay.payloads import PowerCommand, decode_status_entries
from cyncsim.replay.protocol import decode_packet
from cyncsim.simulator.fleet import FleetWorkers, raise_fd_limit, ray_fleet_row
from cyncsim.tools._extras import require
from cyncsim.tools.bench import simkit
from cyncsim.tools.bench.common import BenchOptions, Check, Column, Log, SuiteResult, SuiteSpec

__all__ = ["SPEC", "Size", "controller_main", "expected_idle", "fleet_row", "run"]

TARGET_RSS_MB = 1024.0
TARGET_HEARTBEAT_P99_MS = 50.0
SEED = 41
COMMANDS_PER_1000 = 100.0  # the commands row's rate per 1,000 devices
HOST = "127.0.0.1"
Row = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Size:
    devices: tuple[int, ...]  # one-process rows
    worker_devices: int  # the workers rows' fleet size
    time_scale: float
    warmup_s: float  # after the last device connected, on top of one heartbeat idle time
    window_s: float  # heartbeats measured; at least 2.2 idle times (every device pings twice)
    ray: tuple[int, int]  # the ray row: shards, devices per shard
    real_cadence: tuple[int, ...] = ()  # one-process rows at time_scale 1.0
    commands: tuple[int, float] = (0, 1.0)  # the commands row: devices, time scale


SPEC = SuiteSpec(
    "fleet",
    full=Size((1000, 5000, 10_000), 10_000, 0.2, 2.0, 15.0, (2, 1000), (10_000,), (1000, 1.0)),
    quick=Size((200, 500), 500, 0.1, 1.0, 5.0, (2, 200), (), (200, 0.1)),
    columns=[
        Column("name", "fleet"),
        Column("time_scale", "scale", ".1f"),
        Column("devices", "devices", ",d"),
        Column("processes", "procs", ",d"),
        Column("connected", "connected", ",d"),
        Column("connect_per_s", "dials/s", ",.0f"),
        Column("rss_mb", "RSS MB", ",.1f"),
        Column("kib_per_device", "KiB/device", ",.1f"),
        Column("driver_kib_per_device", "driver KiB/dev", ",.1f"),
        Column("heartbeats", "heartbeats", ",d"),
        *Column.latency("hb_err_", "hb err ", spec=",.2f"),
        Column("ctrl_err_p99_ms", "at ctrl p99 ms", ",.1f"),
        Column("cpu", "CPU", ".1%"),
        Column("cpu_max_process", "busiest proc", ".1%"),
        Column("us_per_heartbeat", "CPU us/hb", ",.0f"),
        Column("devices_per_core", "devices/core", ",.0f"),
        Column("commands", "cmds", ",d"),
        Column("acked", "acked", ",d"),
        *Column.latency("ack_", "ack ", keys="p50 p99", spec=",.2f"),
        Column("controller_cpu", "ctrl CPU", ".1%"),
        Column("loop_late_p99_ms", "loop late p99 ms", ",.1f"),
        Column("controller_late_p99_ms", "ctrl late p99 ms", ",.1f"),
    ],
)


def expected_idle(time_scale: float) -> tuple[float, bool]:
    """The heartbeat idle time a fleet device waits (s, scaled) and whether it is one value."""
    dist = simkit.device_view().heartbeat
    if dist is None or not dist.values:
        return 21.0 * time_scale, True  # the engine's documented default
    return dist.quantile(0.5) * time_scale, len(set(dist.values)) == 1


def _gap_probe(
    way: str, note: Callable[[float, float], object], inner: Any = None, since: Any = None
) -> Callable[[str, bytes], None]:
    """An observer: ``note(loop time, seconds since the last packet)`` per 0xD3 going ``way``."""
    loop, last = asyncio.get_running_loop(), [since]

    def observe(direction: str, data: bytes) -> None:
        now = loop.time()
        if direction == way and data[0] == 0xD3 and last[0] is not None:
            note(now, now - last[0])
        last[0] = now
        if inner is not None:
            inner(direction, data)

    return observe


def controller_main(ctl: Connection, time_scale: float, seed: int) -> None:
    """The controller process: ("reset", commands/s), ("stats", t0, t1, idle), "stop"."""
    asyncio.run(_controller(ctl, time_scale, seed))


async def _controller(ctl: Connection, time_scale: float, seed: int) -> None:
    raise_fd_limit(30_000)  # one fd per device
    gc.disable()  # a full collection over 10,000s of connections would stall its reads
    loop = asyncio.get_running_loop()
    offset = time.time() - loop.time()
    gaps: list[tuple[float, float]] = []  # (wall time of the 0xD3, seconds since last packet)
    late: list[tuple[float, float]] = []  # (wall time, lateness of a bare 10 ms timer)
    cpu: list[tuple[float, float]] = []  # (wall time, CPU seconds so far)
    sent: list[list[float]] = []  # per command: [wall time sent, seconds to its 0x7B or NaN]
    pending: dict[Any, list[float]] = {}  # conn -> its last command's entry in ``sent``
    nodes: dict[Any, int] = {}  # conn -> its device's mesh node (from its first 0x43)
    commander: list[asyncio.Task[None]] = []

    class Controller(CyncCloudSimulator):
        def connection_ready(self, conn: Any) -> bool:
            now = loop.time()  # the first 0xD3's gap counts from here
            probe = _gap_probe("in", lambda t, g: gaps.append((t + offset, g)), None, now)

            def observe(way: str, data: bytes) -> None:
                if way == "in" and data[0] == 0x7B and (entry := pending.pop(conn, None)):
                    entry[1] = time.time() - entry[0]
                elif way == "in" and data[0] == 0x43 and conn not in nodes:
                    entries = decode_status_entries(decode_packet(data, strict=False))
                    nodes.update({conn: entries[0].node_id} if entries else {})
                probe(way, data)

            conn.observer = observe
            return super().connection_ready(conn)

    async def command(rate: float) -> None:  # round-robin over the links, paced
        start, i = loop.time(), 0
        while True:
            i += 1
            await asyncio.sleep(start + i / rate - loop.time())
            link = cloud.links[i % len(cloud.links)] if cloud.links else None
            if link is not None and link.open and (node := nodes.get(link.conn)) is not None:
                pending[link.conn] = entry = [time.time(), math.nan]
                sent.append(entry)
                link.conn.apply(
                    [link.engine.command(PowerCommand(0, node, i % 2 == 0), loop.time())]
                )

    async def monitor() -> None:
        while True:
            when = loop.time() + 0.01
            await asyncio.sleep(0.01)
            now = loop.time()
            late.append((now + offset, now - when))
            cpu.append((now + offset, time.process_time()))

    def handle(msg: Any) -> Any:
        if msg[0] == "reset":
            cloud.links[:] = [link for link in cloud.links if link.open]
            for task in commander:
                task.cancel()
            for series in (gaps, late, cpu, sent, pending, nodes):
                series.clear()
            commander[:] = [asyncio.ensure_future(command(msg[1]))] if msg[1] else []
            gc.collect()
            return "ok"
        _, t0, t1, idle = msg
        window = [c for c in cpu if t0 <= c[0] <= t1]
        in_window = [x for t, x in late if t0 <= t <= t1]
        at_ctrl = [g - idle for t, g in gaps if t0 <= t <= t1]
        cmds = [d for t, d in sent if t0 <= t <= t1]
        acked = [d for d in cmds if not math.isnan(d)]
        (wa, ca), (wb, cb) = (window[0], window[-1]) if len(window) > 1 else ((0, 0), (0, 0))
        commands = {"commands": len(cmds), "acked": len(acked)} | simkit.summary(
            acked, prefix="ack_"
        )
        return {
            "heartbeats": len(at_ctrl),  # a worker row's; a one-process row counts its own
            **simkit.summary(at_ctrl, prefix="ctrl_err_"),
            "controller_cpu": (cb - ca) / (wb - wa) if wb > wa else math.nan,
            **(commands if sent else {}),
            "controller_late_p99_ms": simkit.percentile(in_window, 0.99) * 1e3,
            "controller_late_max_ms": max(in_window, default=math.nan) * 1e3,
        }

    cloud = Controller(seed=seed, time_scale=time_scale)
    await cloud.start()
    watcher = asyncio.ensure_future(monitor())
    ctl.send(cloud.port)
    await simkit.Child.serve(ctl, handle)
    for task in [watcher, *commander]:
        task.cancel()
    await cloud.stop()
    ctl.send(None)


def _steal() -> tuple[int, int]:
    """(CPU time stolen by the hypervisor, all CPU time) so far, in ticks (Linux)."""
    with contextlib.suppress(OSError, ValueError), open("/proc/stat", encoding="ascii") as f:
        values = [int(v) for v in f.readline().split()[1:]]
        return (values[7] if len(values) > 7 else 0), sum(values)
    return 0, 0


def fleet_row(
    n: int, workers: int, time_scale: float, port: int, warmup: float, window: float
) -> tuple[Row, tuple[float, float] | None]:
    """A fleet process (one row): its figures and measuring window (wall times; none for the
    ray row, ``workers`` -K: K shards, which time their own heartbeats)."""
    if workers >= 0:
        return asyncio.run(_fleet_row(n, workers, time_scale, port, warmup, window))
    idle = expected_idle(time_scale)[0]
    row = asyncio.run(
        ray_fleet_row(
            n, -workers, port, idle=idle, time_scale=time_scale, warmup=warmup, window=window
        )
    )
    per_cpu_s = row["heartbeats_per_cpu_s"]
    row |= {"workers": 0, "connect_per_s": n / row["connect_s"]}
    return row | {"us_per_heartbeat": 1e6 / per_cpu_s if per_cpu_s else None}, None


async def _fleet_row(
    n: int, workers: int, time_scale: float, port: int, warmup: float, window: float
) -> tuple[Row, tuple[float, float]]:
    load_default_model()  # loaded before the baseline, as every worker loads it too
    gc.collect()
    rss0, idle = simkit.process_rss_bytes() or 0, expected_idle(time_scale)[0]
    fleet: Any = (
        FleetWorkers(n, workers, seed=SEED, time_scale=time_scale)
        if workers
        else CyncFleet(n, seed=SEED, time_scale=time_scale)
    )
    errors: list[float] = []
    start = time.perf_counter()
    try:
        await fleet.connect(HOST, port, timeout=120.0)
        connect_s = time.perf_counter() - start
        await asyncio.sleep(warmup)
        pids = [w.process.pid or 0 for w in fleet.workers] if workers else [os.getpid()]
        rss = sum(simkit.process_rss_bytes(p) or 0 for p in pids)  # settled, before any probe
        for conn in [] if workers else (d.connection for d in fleet.devices if d.connection):
            conn.observer = _gap_probe("out", lambda _, g: errors.append(g - idle), conn.observer)
        cpu0, steal0 = [simkit.process_cpu_seconds(p) or 0.0 for p in pids], _steal()
        async with simkit.loop_health() as health:
            t0 = time.time()
            await asyncio.sleep(window)
            t1 = time.time()
            device = None if workers else errors[:]  # not those late by the shutdown
        cpu = [(simkit.process_cpu_seconds(p) or 0.0) - c for p, c in zip(pids, cpu0, strict=True)]
        steal1 = _steal()
        stats = await fleet.refresh_stats() if workers else fleet.stats()
    finally:
        await fleet.stop()
    ticks = steal1[1] - steal0[1]
    hb = simkit.summary(device or [], prefix="hb_err_")
    hb["hb_err_min_ms"] = min(device or [math.nan]) * 1e3
    procs, wall = max(workers, 1), t1 - t0
    row: Row = {"engine": "workers" if workers else "process", "devices": n, "processes": procs}
    row |= {"workers": workers, "connected": stats.connected, "connect_s": connect_s}
    row |= {"connect_per_s": n / connect_s, "rss_mb": rss / 2**20, "baseline_rss_mb": rss0 / 2**20}
    row["kib_per_device"] = (rss - rss0 * procs) / n / 1024
    row |= {"heartbeats": len(device)} if device is not None else {}
    row |= dict.fromkeys(hb) if device is None else hb
    row |= {"cpu": sum(cpu) / wall, "cpu_max_process": max(cpu) / wall}
    row["us_per_device_s"] = sum(cpu) / wall / n * 1e6
    row["steal"] = (steal1[0] - steal0[0]) / ticks if ticks > 0 else math.nan
    row |= {"packets_in": stats.packets_in, "packets_out": stats.packets_out}
    return row | {k: v for k, v in health.items() if k.startswith(("loop_late", "gc_"))}, (t0, t1)


def _plan(size: Size) -> list[tuple[str, int, int, float, float]]:
    """(name, devices, workers (-K: ray), time scale, commands/s) of each row."""
    ts, cores, wd = size.time_scale, len(os.sched_getaffinity(0)), size.worker_devices
    plan = [(f"{n:,} devices", n, 0, ts, 0.0) for n in size.devices]
    plan += [(f"{wd:,}, {w} workers", wd, w, ts, 0.0) for w in sorted({2, min(4, cores)})]
    plan = plan if cores > 1 else plan[: len(size.devices)]
    shards, ray_devices = size.ray[0], size.ray[0] * size.ray[1]
    if importlib.util.find_spec("ray") is not None:
        plan.append((f"{ray_devices:,}, ray {shards} shards", ray_devices, -shards, ts, 0.0))
    plan += [(f"{n:,} devices, real cadence", n, 0, 1.0, 0.0) for n in size.real_cadence]
    n, scale = size.commands
    rate = COMMANDS_PER_1000 * n / 1000
    return plan + ([(f"{n:,} devices, {rate:g} commands/s", n, 0, scale, rate)] if n else [])


def _measure(size: Size, log: Log) -> list[Row]:
    """Every row of the plan, each fleet in a fresh process, a controller per time scale."""
    controllers: dict[float, simkit.Child] = {}
    rows: list[Row] = []
    try:
        for name, n, workers, scale, rate in _plan(size):
            if scale not in controllers:
                log(f"fleet: starting a controller (time_scale {scale})")
                controllers[scale] = simkit.Child(
                    controller_main, scale, SEED, name="the controller"
                )
            controller = controllers[scale]
            log(f"fleet: {name} (time_scale {scale})")
            controller.ask(("reset", rate))
            row_idle = expected_idle(scale)[0]
            warmup, window = row_idle + size.warmup_s, max(size.window_s, 2.2 * row_idle)
            with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
                args = (n, workers, scale, controller.ready, warmup, window)
                got, span = pool.submit(fleet_row, *args).result(timeout=900)
            row: Row = {"name": name, "time_scale": scale}
            row |= ({} if span is None else controller.ask(("stats", *span, row_idle))) | got
            row |= {"engine": "commands", "commands_per_s": rate} if rate else {}
            if scale == 1.0 or rate:  # how many devices one busy core carries at this load
                row["devices_per_core"] = n / row["cpu"] if row["cpu"] else None
            if span is not None:  # not the ray row: the window's CPU per heartbeat
                cpu_us, hb = row["cpu"] * (span[1] - span[0]) * 1e6, row["heartbeats"]
                row["us_per_heartbeat"] = cpu_us / hb if hb else None
            rows.append(row)
    finally:
        for controller in controllers.values():
            controller.stop()
    return rows


def run(opts: BenchOptions, log: Log) -> SuiteResult:
    size = SPEC.size(opts)
    ts = size.time_scale
    idle, constant = expected_idle(ts)
    rows = _measure(size, log)
    one = {(r["devices"], r["time_scale"]): r for r in rows if r["engine"] == "process"}
    biggest = max(one.values(), key=lambda r: (r["devices"], -r["time_scale"]))
    name = f"RSS of {biggest['devices']:,} devices in one process"
    checks = [Check(name, biggest["rss_mb"], TARGET_RSS_MB, "<=", " MB", ",.0f")]
    for r in (r for r in one.values() if r["devices"] == biggest["devices"]):
        fast = "" if r["time_scale"] == 1.0 else f" ({1 / r['time_scale']:g}x the real rate)"
        name, p99 = f"{r['name']} heartbeat error p99{fast}", r["hb_err_p99_ms"]
        checks.append(Check(name, p99, TARGET_HEARTBEAT_P99_MS, "<=", " ms", ",.2f"))
    missing = sum(r["devices"] - r["connected"] for r in rows)
    checks.append(Check("devices connected (all rows)", missing, 0, "<=", " missing", ",d"))
    notes = [
        f"heartbeat idle time {idle / ts:.1f} s, {idle:.2f} s at time_scale {ts}; hb err at "
        "each device connection, 'at ctrl' as the controller reads it (two loopback hops "
        "added; the only view of worker rows); memory: settled RSS minus the RSS before the "
        "fleet, per device (ray: the actors', the driver's apart)",
        "the learned idle time is "
        + ("one value: the error is timer and write lateness" if constant else "not one value"),
    ]
    if importlib.util.find_spec("ray") is None:
        try:
            require("ray", "the ray row")
        except CyncError as exc:
            notes.append(f"no ray row: {exc}")
    for r in rows:
        if r["engine"] == "workers" and (base := one.get((r["devices"], ts))) is not None:
            r["connect_speedup"] = r["connect_per_s"] / base["connect_per_s"]
            r["busiest_vs_one"] = r["cpu_max_process"] / base["cpu_max_process"]
            r["ctrl_err_p99_vs_one"] = r["ctrl_err_p99_ms"] / base["ctrl_err_p99_ms"]
    for r in (r for r in rows if r["engine"] == "commands"):
        notes.append(f"{r['name']}: toggles to each device in turn; ack: 0x73 to 0x7B at ctrl")
    for r in rows:
        if r.get("steal", 0) > 0.02:
            notes.append(f"{r['name']}: the hypervisor took {r['steal']:.1%} of the CPU")
        if r.get("gc_full_collections"):
            notes.append(f"{r['name']}: {r['gc_full_collections']} full collection(s)")
        if "connect_speedup" in r:
            notes.append(
                f"{r['name']}: dials {r['connect_speedup']:.2f}x as fast as one process, busiest "
                f"process {r['busiest_vs_one']:.2f}x its CPU, p99 at ctrl "
                f"{r['ctrl_err_p99_vs_one']:.2f}x"
            )
    title = (
        f"dial-mode fleets against one CyncCloudSimulator (its own process), time_scale "
        f"{ts} (heartbeat every {idle:.2f} s idle)"
        + (" and 1.0 (real cadence)" if size.real_cadence else "")
    )
    params: dict[str, Any] = {"time_scale": ts, "heartbeat_idle_s": idle}
    params |= {"heartbeat_constant": constant, "warmup_s": size.warmup_s, "seed": SEED}
    params |= {"window_s": size.window_s, "cores": len(os.sched_getaffinity(0))}
    return SPEC.result(opts, title, rows, checks, params, notes)
