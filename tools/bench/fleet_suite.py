# `cyncsim bench fleet`: thousands of dial-mode devices against one local controller.
#
# Strategy: every process is spawned fresh (multiprocessing) so no row inherits another's
# heap.  One controller process: a CyncCloudSimulator answering as the model's cloud did,
# its per-connection observer replaced by a light one that notes, for each 0xD3 it reads,
# the time since the last packet on that connection; it also samples its own loop lateness
# and CPU, and runs with the garbage collector paused during a row (collected between rows)
# so that its own pauses do not count against the devices.  Per row a fleet process:
# measures its RSS after imports and the model, dials the controller with a CyncFleet of n
# devices (each from its own loopback address) or FleetWorkers over worker processes,
# waits one heartbeat idle time plus a margin (so the reads the connect storm delayed are
# behind the window), takes its RSS (memory per device = RSS delta / n; with workers, their
# RSS minus one baseline each), then puts a probe in front of each device connection's
# observer and measures a window of steady-state heartbeats and its CPU.  Heartbeat timing
# error = time from a device's last packet (read or written) to its 0xD3, minus the learned
# idle time x time_scale: in the fleet process (the devices' own timing; not observable in
# worker processes) and as the controller reads it (two loopback hops and the controller's
# delays added).  Targets: 10,000 devices in one process under 1 GB, error p99 under 50 ms.
from __future__ import annotations

import asyncio
import contextlib
import gc
import math
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from cyncsim.replay.errors import CyncError
from cyncsim.tools.bench.common import BenchOptions, Check, Column, Log, SuiteResult
from cyncsim.tools.bench.latency import percentile
from cyncsim.tools.bench.simkit import (
    GcMeter,
    lateness_monitor,
    process_cpu_seconds,
    process_rss_bytes,
)

__all__ = ["FULL", "QUICK", "Size", "controller_main", "fleet_row", "run"]

TARGET_RSS_MB = 1024.0
TARGET_HEARTBEAT_P99_MS = 50.0
SEED = 41
HOST = "127.0.0.1"


@dataclass(frozen=True, slots=True)
class Size:
    devices: tuple[int, ...]  # one-process rows
    worker_devices: int  # the workers rows' fleet size
    time_scale: float
    warmup_s: float  # after the last device connected, on top of one heartbeat idle time:
    # the window starts once every device has pinged after the connect storm
    window_s: float  # heartbeats measured; at least 2.2 idle times, so that every device's
    # second 0xD3 after the probe is put in falls inside it
    real_cadence: tuple[int, ...] = ()  # one-process rows at time_scale 1.0


FULL = Size((1000, 5000, 10_000), 10_000, 0.2, 2.0, 15.0, (10_000,))
QUICK = Size((200, 500), 500, 0.1, 1.0, 5.0)


def _timing(time_scale: float, size: Size) -> tuple[float, float]:
    """(warm-up, window) in seconds for rows at ``time_scale``."""
    idle = _expected_idle(time_scale)[0]
    return idle + size.warmup_s, max(size.window_s, 2.2 * idle)


# ---------------------------------------------------------------------------- controller
def controller_main(ctl: Connection, time_scale: float, seed: int) -> None:
    """Entry point of the controller process.  Messages: "reset" (forget closed links,
    collect garbage; answers "ok"), ("stats", t0, t1) (answers the heartbeat gaps, its loop
    lateness and CPU use between wall times t0 and t1), "stop"."""
    asyncio.run(_controller(ctl, time_scale, seed))


async def _controller(ctl: Connection, time_scale: float, seed: int) -> None:
    from cyncsim.simulator._device_conn import EngineConnection
    from cyncsim.simulator.cloud import CyncCloudSimulator
    from cyncsim.simulator.fleet import raise_fd_limit

    raise_fd_limit(30_000)
    # The measuring controller must not stall on its own garbage collections (a full one
    # over tens of thousands of connections takes tens of ms, which would show up as
    # device timing errors): the collector is paused during rows and run between them.
    gc.disable()
    loop = asyncio.get_running_loop()
    gaps: list[tuple[float, float]] = []  # (wall time of the 0xD3, seconds since last packet)
    late: list[tuple[float, float]] = []  # (wall time, lateness of a bare 10 ms timer)
    cpu: list[tuple[float, float]] = []  # (wall time, CPU seconds so far)
    offset = time.time() - loop.time()

    class Controller(CyncCloudSimulator):
        def connection_ready(self, conn: EngineConnection) -> bool:
            last = [loop.time()]

            def observe(way: str, data: bytes) -> None:
                now = loop.time()
                if way == "in" and data[0] == 0xD3:
                    gaps.append((now + offset, now - last[0]))
                last[0] = now

            conn.observer = observe
            return super().connection_ready(conn)

    async def monitor() -> None:
        while True:
            when = loop.time() + 0.01
            await asyncio.sleep(0.01)
            now = loop.time()
            late.append((now + offset, now - when))
            t = os.times()
            cpu.append((now + offset, t.user + t.system))

    def stats(t0: float, t1: float) -> dict[str, Any]:
        window = [c for c in cpu if t0 <= c[0] <= t1]
        used = (
            (window[-1][1] - window[0][1]) / (window[-1][0] - window[0][0])
            if len(window) > 1
            else math.nan
        )
        return {
            "gaps": [g for t, g in gaps if t0 <= t <= t1],
            "late": [x for t, x in late if t0 <= t <= t1],
            "cpu": used,
        }

    cloud = Controller(seed=seed, time_scale=time_scale)
    await cloud.start()
    watcher = asyncio.ensure_future(monitor())
    stop = asyncio.Event()

    def readable() -> None:
        with contextlib.suppress(EOFError, OSError):
            while ctl.poll():
                msg = ctl.recv()
                if msg == "stop":
                    stop.set()
                elif msg == "reset":
                    cloud.links[:] = [link for link in cloud.links if link.open]
                    gaps.clear()
                    late.clear()
                    cpu.clear()
                    gc.collect()
                    ctl.send("ok")
                elif msg[0] == "stats":
                    ctl.send(stats(msg[1], msg[2]))
            return
        stop.set()

    loop.add_reader(ctl.fileno(), readable)
    ctl.send(("ready", cloud.port))
    await stop.wait()
    loop.remove_reader(ctl.fileno())
    watcher.cancel()
    await cloud.stop()


class _Controller:
    def __init__(self, time_scale: float) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.ctl, child = ctx.Pipe()
        self.process = ctx.Process(
            target=controller_main,
            args=(child, time_scale, SEED),
            daemon=True,
            name="cyncsim-bench-controller",
        )
        self.process.start()
        child.close()
        _, self.port = self._ask(None, 60.0)

    def _ask(self, msg: Any, timeout: float = 60.0) -> Any:
        try:
            if msg is not None:
                self.ctl.send(msg)
            if self.ctl.poll(timeout):
                return self.ctl.recv()
        except (EOFError, OSError) as exc:
            raise CyncError(
                f"bench fleet: the controller is gone ({exc!r})", reason="bench"
            ) from None
        raise CyncError("bench fleet: the controller did not answer", reason="bench")

    def reset(self) -> None:
        self._ask("reset")

    def stats(self, start: float, end: float) -> dict[str, Any]:
        got: dict[str, Any] = self._ask(("stats", start, end))
        return got

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.ctl.send("stop")
        self.process.join(30)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(5)
        self.ctl.close()


# ---------------------------------------------------------------------------- fleet rows
def fleet_row(
    n: int,
    workers: int,
    time_scale: float,
    port: int,
    warmup: float,
    window: float,
) -> dict[str, Any]:
    """Entry point of a fleet process (one row): connect, settle, measure, stop."""
    return asyncio.run(_fleet_row(n, workers, time_scale, port, warmup, window))


class _HeartbeatProbe:
    """Chained in front of a fleet device's connection observer: for each 0xD3 the device
    writes, the time since the last packet it read or wrote, minus the idle time."""

    __slots__ = ("errors", "idle", "inner", "last", "loop")

    def __init__(
        self, inner: Any, idle: float, errors: list[float], loop: asyncio.AbstractEventLoop
    ) -> None:
        self.inner = inner
        self.idle = idle
        self.errors = errors
        self.loop = loop
        self.last: float | None = None  # nothing seen since the probe was put in

    def __call__(self, way: str, data: bytes) -> None:
        now = self.loop.time()
        if way == "out" and data[0] == 0xD3 and self.last is not None:
            self.errors.append(now - self.last - self.idle)
        self.last = now
        if self.inner is not None:
            self.inner(way, data)


async def _fleet_row(
    n: int,
    workers: int,
    time_scale: float,
    port: int,
    warmup: float,
    window: float,
) -> dict[str, Any]:
    from cyncsim.simulator._device_conn import default_model
    from cyncsim.simulator.fleet import CyncFleet, FleetWorkers

    default_model()  # loaded before the baseline, as every worker loads it too
    gc.collect()
    rss0 = process_rss_bytes() or 0
    idle, _ = _expected_idle(time_scale)
    fleet: CyncFleet | FleetWorkers
    if workers:
        fleet = FleetWorkers(n, workers, seed=SEED, time_scale=time_scale)
    else:
        fleet = CyncFleet(n, seed=SEED, time_scale=time_scale)
    errors: list[float] = []
    gc_meter = GcMeter()
    start = time.perf_counter()
    try:
        await fleet.connect(HOST, port, timeout=120.0)
        connect_s = time.perf_counter() - start
        await asyncio.sleep(warmup)
        pids = [os.getpid()]
        if isinstance(fleet, FleetWorkers):
            pids = [w.process.pid or 0 for w in fleet.workers]
        rss = [process_rss_bytes(p) or 0 for p in pids]  # settled, before any probe
        if isinstance(fleet, CyncFleet):
            loop = asyncio.get_running_loop()
            for dev in fleet.devices:
                conn = dev.connection
                if conn is not None:
                    conn.observer = _HeartbeatProbe(conn.observer, idle, errors, loop)
        cpu0 = [process_cpu_seconds(p) or 0.0 for p in pids]
        steal0 = _steal()
        stop = asyncio.Event()
        monitor = asyncio.ensure_future(lateness_monitor(stop))
        t0 = time.time()
        with gc_meter.active():
            await asyncio.sleep(window)
        t1 = time.time()
        # Heartbeats after the window are left out: the probes stay in while the fleet
        # stops, and a heartbeat due while 10,000 connections are being closed is late
        # because of the shutdown, not because of the running fleet.
        in_window = len(errors)
        stop.set()
        late = await monitor
        cpu1 = [process_cpu_seconds(p) or 0.0 for p in pids]
        steal1 = _steal()
        stats = fleet.stats() if isinstance(fleet, CyncFleet) else await fleet.refresh_stats()
    finally:
        await fleet.stop()
    return {
        "connect_s": connect_s,
        "rss0": rss0,
        "rss": rss,
        "cpu_s": [b - a for a, b in zip(cpu0, cpu1, strict=True)],
        "window": (t0, t1),
        "connected": stats.connected,
        "packets_in": stats.packets_in,
        "packets_out": stats.packets_out,
        "device_errors": errors[:in_window] if isinstance(fleet, CyncFleet) else None,
        "loop_late": late,
        "steal": (steal1[0] - steal0[0]) / (steal1[1] - steal0[1])
        if steal1[1] > steal0[1]
        else math.nan,
        **gc_meter.summary(),
    }


def _steal() -> tuple[int, int]:
    """(CPU time stolen by the hypervisor, all CPU time) so far, in ticks (Linux /proc/stat;
    zeros elsewhere): the machine's share taken away from this VM."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            values = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    return (values[7] if len(values) > 7 else 0), sum(values)


def _run_row(n: int, workers: int, time_scale: float, size: Size, port: int) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=ctx) as pool:
        warmup, window = _timing(time_scale, size)
        future = pool.submit(fleet_row, n, workers, time_scale, port, warmup, window)
        return future.result(timeout=900)


def _expected_idle(time_scale: float) -> tuple[float, bool]:
    """The heartbeat idle time a fleet device waits (s, scaled) and whether it is one value."""
    from cyncsim.replay.engine import ModelView
    from cyncsim.simulator._device_conn import default_model

    dist = ModelView.get(default_model(), "device").heartbeat
    if dist is None or not dist.values:
        return 21.0 * time_scale, True  # the engine's documented default
    return dist.quantile(0.5) * time_scale, len(set(dist.values)) == 1


COLUMNS = [
    Column("name", "fleet"),
    Column("time_scale", "scale", ".1f"),
    Column("devices", "devices", ",d"),
    Column("processes", "procs", ",d"),
    Column("connected", "connected", ",d"),
    Column("connect_per_s", "dials/s", ",.0f"),
    Column("rss_mb", "RSS MB", ",.1f"),
    Column("kib_per_device", "KiB/device", ",.1f"),
    Column("heartbeats", "heartbeats", ",d"),
    Column("hb_err_p50_ms", "hb err p50 ms", ",.2f"),
    Column("hb_err_p99_ms", "hb err p99 ms", ",.2f"),
    Column("hb_err_max_ms", "hb err max ms", ",.1f"),
    Column("ctrl_err_p99_ms", "at ctrl p99 ms", ",.1f"),
    Column("cpu", "CPU", ".1%"),
    Column("cpu_max_process", "busiest proc", ".1%"),
    Column("us_per_heartbeat", "CPU us/hb", ",.0f"),
    Column("controller_cpu", "ctrl CPU", ".1%"),
    Column("loop_late_p99_ms", "loop late p99 ms", ",.1f"),
    Column("controller_late_p99_ms", "ctrl late p99 ms", ",.1f"),
]


def _errors_ms(errors: list[float], prefix: str) -> dict[str, float]:
    ms = [e * 1e3 for e in errors]
    return {
        f"{prefix}_p50_ms": percentile(ms, 0.5),
        f"{prefix}_p99_ms": percentile(ms, 0.99),
        f"{prefix}_max_ms": max(ms, default=math.nan),
        f"{prefix}_min_ms": min(ms, default=math.nan),
    }


def _row(
    name: str, n: int, workers: int, got: dict[str, Any], ctrl: dict[str, Any], idle: float
) -> dict[str, Any]:
    procs = max(workers, 1)
    wall = got["window"][1] - got["window"][0]
    baseline = got["rss0"] * procs
    device = got["device_errors"]
    at_ctrl = [g - idle for g in ctrl["gaps"]]
    heartbeats = len(device) if device is not None else len(at_ctrl)
    return {
        "name": name,
        "devices": n,
        "processes": procs,
        "workers": workers,
        "connected": got["connected"],
        "connect_s": got["connect_s"],
        "connect_per_s": n / got["connect_s"],
        "rss_mb": sum(got["rss"]) / 2**20,
        "baseline_rss_mb": got["rss0"] / 2**20,
        "kib_per_device": (sum(got["rss"]) - baseline) / n / 1024,
        "heartbeats": heartbeats,
        **_errors_ms(device or [], "hb_err"),
        **_errors_ms(at_ctrl, "ctrl_err"),
        "cpu": sum(got["cpu_s"]) / wall,
        "cpu_max_process": max(got["cpu_s"]) / wall,
        "us_per_heartbeat": sum(got["cpu_s"]) / heartbeats * 1e6 if heartbeats else None,
        "us_per_device_s": sum(got["cpu_s"]) / wall / n * 1e6,
        "loop_late_p99_ms": percentile(got["loop_late"], 0.99) * 1e3,
        "loop_late_max_ms": max(got["loop_late"], default=math.nan) * 1e3,
        "steal": got["steal"],
        "controller_cpu": ctrl["cpu"],
        "controller_late_p99_ms": percentile(ctrl["late"], 0.99) * 1e3,
        "controller_late_max_ms": max(ctrl["late"], default=math.nan) * 1e3,
        "packets_in": got["packets_in"],
        "packets_out": got["packets_out"],
        "gc_collections": got["gc_collections"],
        "gc_full_collections": got["gc_full_collections"],
        "gc_longest_ms": got["gc_longest_ms"],
    }


def run(opts: BenchOptions, log: Log) -> SuiteResult:
    size = QUICK if opts.quick else FULL
    idle, constant = _expected_idle(size.time_scale)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    worker_counts = sorted({2, min(4, cores or 1)} - {1}) if (cores or 1) > 1 else []
    ts = size.time_scale
    plan = [(f"{n:,} devices", n, 0, ts) for n in size.devices]
    plan += [
        (f"{size.worker_devices:,}, {w} workers", size.worker_devices, w, ts) for w in worker_counts
    ]
    plan += [(f"{n:,} devices, real cadence", n, 0, 1.0) for n in size.real_cadence]
    controllers: dict[float, _Controller] = {}
    rows: list[dict[str, Any]] = []
    try:
        for name, n, workers, scale in plan:
            if scale not in controllers:
                log(f"fleet: starting a controller (time_scale {scale})")
                controllers[scale] = _Controller(scale)
            controller = controllers[scale]
            log(f"fleet: {name} (time_scale {scale})")
            controller.reset()
            got = _run_row(n, workers, scale, size, controller.port)
            row = _row(
                name, n, workers, got, controller.stats(*got["window"]), _expected_idle(scale)[0]
            )
            row["time_scale"] = scale
            rows.append(row)
    finally:
        for controller in controllers.values():
            controller.stop()
    in_process = [r for r in rows if not r["workers"]]
    biggest = max(in_process, key=lambda r: (r["devices"], -r["time_scale"]))
    checks = [
        Check(
            f"RSS of {biggest['devices']:,} devices in one process",
            biggest["rss_mb"],
            TARGET_RSS_MB,
            "<=",
            " MB",
            ",.0f",
        )
    ]
    checks += [
        Check(
            f"{r['name']} heartbeat error p99"
            + ("" if r["time_scale"] == 1.0 else f" ({1 / r['time_scale']:g}x the real rate)"),
            r["hb_err_p99_ms"],
            TARGET_HEARTBEAT_P99_MS,
            "<=",
            " ms",
            ",.2f",
        )
        for r in in_process
        if r["devices"] == biggest["devices"]
    ]
    checks.append(
        Check(
            "devices connected (all rows)",
            sum(r["devices"] - r["connected"] for r in rows),
            0,
            "<=",
            " missing",
            ",d",
        )
    )
    one = next(
        (r for r in in_process if r["devices"] == size.worker_devices and r["time_scale"] == ts),
        None,
    )
    for r in rows:
        if r["workers"] and one is not None:
            r["connect_speedup"] = r["connect_per_s"] / one["connect_per_s"]
            r["busiest_vs_one"] = r["cpu_max_process"] / one["cpu_max_process"]
            r["ctrl_err_p99_vs_one"] = r["ctrl_err_p99_ms"] / one["ctrl_err_p99_ms"]
    result = SuiteResult(
        suite="fleet",
        title=(
            f"dial-mode fleets against one CyncCloudSimulator (its own process), time_scale "
            f"{size.time_scale} (heartbeat every {idle:.2f} s idle)"
            + (" and 1.0 (real cadence)" if size.real_cadence else "")
        ),
        columns=COLUMNS,
        rows=rows,
        checks=checks,
        quick=opts.quick,
        params={
            "time_scale": size.time_scale,
            "heartbeat_idle_s": idle,
            "heartbeat_constant": constant,
            "warmup_s": size.warmup_s,
            "window_s": size.window_s,
            "seed": SEED,
            "cores": cores,
        },
    )
    result.notes += _notes(rows, size, idle, constant)
    return result


def _notes(rows: list[dict[str, Any]], size: Size, idle: float, constant: bool) -> list[str]:
    notes = [
        f"heartbeats: the learned idle time before a 0xD3 is {idle / size.time_scale:.1f} s; "
        f"at time_scale {size.time_scale} a device pings every {idle:.2f} s without traffic, "
        f"so {max(r['devices'] for r in rows):,} devices carry the heartbeat load of "
        f"{max(r['devices'] for r in rows) / size.time_scale:,.0f} real ones; the rows marked "
        "'real cadence' run at time_scale 1.0 (a ping every 21.5 s idle)",
        "hb err: measured in the fleet process at each device's connection (time from the "
        "last packet it read or wrote to its 0xD3 write, minus the learned idle time); at "
        "ctrl: the same gap as the controller reads it, which adds two loopback hops and the "
        "controller's own delays (its loop lateness: ctrl late); loop late: bare timers in "
        "the fleet process during the window, the lateness every device there shares.  "
        "Worker processes cannot be observed from inside: their rows have the controller's "
        "view only",
        "memory: RSS once the fleet has settled (after the connect sequences, before any "
        "probe) minus RSS before the fleet (after imports and the model), per device; with "
        "workers, every worker's RSS minus one such baseline each",
        "the measuring controller runs with Python's garbage collector paused during a row "
        "(collected between rows), so its collections do not show up as device errors",
    ]
    if constant:
        notes.append(
            "the learned idle time is one value (the real-cloud variant's aggregate rate), so a "
            "heartbeat has no jitter of its own: its error is how late the device's timer and "
            "write ran; only heartbeats written inside the window count (the shutdown after it "
            "is left out)"
        )
    else:
        notes.append("the learned idle time is not one value: errors include its spread")
    for r in rows:
        if r["steal"] > 0.02:
            notes.append(
                f"{r['name']}: the hypervisor took {r['steal']:.1%} of the machine's CPU time "
                "during the window (steal): a shared machine"
            )
        if r["gc_full_collections"]:
            notes.append(
                f"{r['name']}: {r['gc_full_collections']} full garbage collection(s) in the "
                f"fleet process during the window, the longest pause {r['gc_longest_ms']:.0f} ms"
            )
        if "connect_speedup" in r:
            notes.append(
                f"{r['name']}: dials {r['connect_speedup']:.2f}x as fast as one process; its "
                f"busiest process uses {r['busiest_vs_one']:.2f}x the CPU share of the single "
                f"process; heartbeat p99 at the controller {r['ctrl_err_p99_vs_one']:.2f}x "
                "(the controller and every worker share the same cores)"
            )
    return notes
