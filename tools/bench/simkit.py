# Shared machinery of the simulator suites: statistics, lanes, timers, meters, processes.
#
# Strategy: measure from the outside through the public API and its seams (a connection's
# ``observer``, an engine's ``receive``), never change the simulator.  Percentiles interpolate
# as replay.model.Distribution does; KS is scipy's ks_2samp against a dense grid of the
# piecewise-linear quantiles the simulator samples.
from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import gc
import math
import multiprocessing
import os
import random
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any
from unittest import mock

from cyncsim import CyncDeviceSimulator, CyncError, DeviceModel, ReliableTransport, Result
from cyncsim.replay.model import Distribution
from cyncsim.replay.model.dist import sorted_quantile
from cyncsim.replay.payloads import LightStateCommand, PowerCommand, build_command

__all__ = [
    "GRID", "NODE", "Child", "CpuMeter", "Lane", "LockMeter", "command_packet", "command_summary",
    "device_view", "idle_delay", "ks", "ks_random", "lanes", "lateness_monitor", "learned_figures",
    "learned_summary",
    "loop_health", "loop_lateness", "percentile", "process_cpu_seconds", "process_rss_bytes",
    "rate", "summary",
]  # fmt: skip

NODE = 1  # mesh node of every lane's device (its own node: commands are applied)
GRID = 20_000
_KEYS = (("p50", 0.50), ("p90", 0.90), ("p95", 0.95), ("p99", 0.99))


def percentile(values: Sequence[float], q: float) -> float:
    """Quantile ``q`` (0-1) of ``values`` by linear interpolation; NaN when empty."""
    return sorted_quantile(sorted(values), min(max(q, 0.0), 1.0)) if values else math.nan


def summary(samples: Iterable[float], unit: str = "ms", prefix: str = "") -> dict[str, float]:
    """p50/p90/p95/p99/max/mean of ``samples`` (seconds) in ms or us (NaN when empty)."""
    scale, vals = {"ms": 1e3, "us": 1e6, "s": 1.0}[unit], sorted(samples)
    figures = {k: sorted_quantile(vals, q) if vals else math.nan for k, q in _KEYS}
    figures["max"] = vals[-1] if vals else math.nan
    figures["mean"] = sum(vals) / len(vals) if vals else math.nan
    return {f"{prefix}{k}_{unit}": v * scale for k, v in figures.items()}


def learned_summary(dist: Distribution) -> dict[str, float]:
    """The same figures (ms) for a learned distribution, keys learned_*."""
    return summary(dist.values, prefix="learned_")


def idle_delay(plan: Any) -> Distribution | None:
    """What an idle device draws for a 0x7B ack plan: its stall process's idle latency (None
    without one: the plan's own delay is drawn)."""
    return plan.stall.idle if plan.stall is not None else None


def learned_figures(plan: Any, idle: Distribution | None = None) -> dict[str, Any]:
    """An answer plan's learned delay (``idle``: its idle latency instead): its summary (ms),
    values, kind, the values (ms)."""
    dist = plan.delay if idle is None else idle
    kind = "idle latency" if idle is not None else "service" if plan.queued else "latency"
    figures = {**learned_summary(dist), "learned_values": dist.count}
    return figures | {"learned_kind": kind, "learned_ms": [v * 1e3 for v in dist.values]}


@functools.cache
def _scipy_stats() -> Any:
    import scipy.stats

    gc.freeze()  # its thousands of objects are never garbage: keep collections short
    return scipy.stats


def ks(samples: Sequence[float], dist: Distribution, scale: float = 1.0) -> float:
    """sup |F_measured - F_learned|, F_learned the piecewise-linear CDF the simulator samples
    (``dist`` times ``scale``); NaN without samples."""
    if not dist.values:
        raise ValueError("empty distribution")
    if not samples:
        return math.nan
    import numpy as np

    at, vals = dist.knots()
    grid = np.interp((np.arange(GRID) + 0.5) / GRID, at, vals) * scale
    return float(_scipy_stats().ks_2samp(samples, grid, method="asymp").statistic)


def ks_random(n: int) -> float:
    """The median KS statistic of ``n`` independent draws from the distribution itself."""
    return float(_scipy_stats().kstwo.ppf(0.5, n)) if n >= 1 else math.nan


def rate(part: int, whole: int) -> float:
    return part / whole if whole else math.nan


@dataclass(slots=True)
class Lane:
    """One simulated device and the transport driving it, one command outstanding."""

    device: CyncDeviceSimulator
    transport: ReliableTransport
    results: list[Result] = field(default_factory=list)

    async def commands(self, n: int, *, light: bool = False, wait_result: bool = False) -> None:
        """``n`` commands, one at a time: toggles (f8 d0) or brightness changes (f8 f0), each
        sent on the previous one's ack, or on its f9 result (``wait_result``)."""
        send = self.transport
        for i in range(n):
            if light:
                res = await send.send_light_state(NODE, 10 + i % 90, wait_result=wait_result)
            else:
                res = await send.send_toggle_command(NODE, bool(i % 2), wait_result=wait_result)
            self.results.append(res)


@contextlib.asynccontextmanager
async def lanes(
    count: int, *, seed: int, first: int = 0, chaos: Any = None, **kw: Any
) -> AsyncIterator[list[Lane]]:
    """``count`` lanes numbered from ``first``, opened at once, closed on exit: devices
    (``model``, ``time_scale``, ``chaos(number)``) and handshaken transports (the rest)."""
    dev_kw = {k: kw.pop(k) for k in ("model", "time_scale") if k in kw}
    opened: dict[int, Lane] = {}

    async def open_one(i: int) -> None:
        faults = chaos(i) if chaos is not None else None
        device = CyncDeviceSimulator(
            0x51000000 + i, seed=seed * 1000 + i, chaos_config=faults, mesh_node=NODE, **dev_kw
        )
        await device.start()
        transport = ReliableTransport("127.0.0.1", device.port, seed=seed * 1000 + i + 500, **kw)
        opened[i] = Lane(device, transport)
        await transport.connect()
        await transport.handshake(timeout=30.0)

    try:
        await asyncio.gather(*(open_one(first + i) for i in range(count)))
        yield [opened[first + i] for i in range(count)]
    finally:
        for lane in opened.values():
            await lane.transport.close()
            await lane.device.stop()


def command_summary(lanes: list[Lane], retransmits: int | None = None) -> dict[str, Any]:
    """Latency to the ack of the acknowledged commands, success, retransmissions (default:
    so far)."""
    results = [r for lane in lanes for r in lane.results]
    if retransmits is None:
        retransmits = sum(lane.transport.stats.retransmissions for lane in lanes)
    ok = [r.latency_s if r.ack_latency_s is None else r.ack_latency_s for r in results if r.success]
    reasons = collections.Counter(r.reason for r in results if not r.success)
    figures: dict[str, Any] = {"commands": len(results), "acked": len(ok)}
    figures["success"] = rate(len(ok), len(results))
    figures |= {**summary(ok), "retransmits": retransmits}
    figures["retransmit_rate"] = rate(retransmits, len(results))
    figures["retried_commands"] = sum(1 for r in results if r.retry_count)
    figures |= {"timeouts": reasons.get("timeout", 0), "failures": dict(sorted(reasons.items()))}
    return figures | {"samples_ms": [x * 1e3 for x in ok]}


def device_view(model: DeviceModel | None = None) -> Any:
    """The model view a device of ``model`` samples from (built, never started)."""
    return CyncDeviceSimulator(0x51000000, model=model, seed=0, mesh_node=NODE).engine.view


def command_packet(device_id: bytes, number: int, *, light: bool = False) -> bytes:
    """Toggle (f8 d0) or brightness (f8 f0) command ``number`` to node 1, as bytes."""
    msg_id, seq = ((number % 0xFFFF) + 1).to_bytes(2, "big") + b"\0", number % 255 + 1
    cmd: Any = PowerCommand(seq, NODE, bool(number % 2))
    if light:
        cmd = LightStateCommand(seq, NODE, brightness=10 + number % 90)
    return build_command(device_id, msg_id, cmd).encode()


async def loop_lateness(
    n: int, low: float, high: float, *, seed: int = 0, sleep: bool = False
) -> list[float]:
    """Lateness (s) of ``n`` loop.call_at timers (or ``asyncio.sleep``s) one after another,
    of random delays in [low, high): epoll rounds its waits up to whole milliseconds."""
    loop, rng, out = asyncio.get_running_loop(), random.Random(seed), list[float]()
    for _ in range(n):
        delay, start = rng.uniform(low, high), loop.time()
        if sleep:
            await asyncio.sleep(delay)
            out.append(loop.time() - start - delay)
            continue
        fired: asyncio.Future[float] = loop.create_future()  # lateness when the callback ran
        loop.call_at(start + delay, _fire, fired, start + delay)
        out.append(await fired)
    return out


def _fire(fut: asyncio.Future[float], when: float) -> None:
    fut.set_result(fut.get_loop().time() - when)


async def lateness_monitor(
    stop: asyncio.Event, low: float = 0.005, high: float = 0.02
) -> list[float]:
    """Bare loop timers (random ``low``-``high`` s) one after another until ``stop``."""
    out: list[float] = []
    while not stop.is_set():
        out += await loop_lateness(5, low, high, seed=len(out))
    return out


class LockMeter:
    """asyncio.Lock and Semaphore acquisitions and time held while ``active()`` is entered."""

    def __init__(self) -> None:
        self.acquisitions, self.held_s = 0, 0.0
        self.by_class: collections.Counter[str] = collections.Counter()

    @contextlib.contextmanager
    def active(self) -> Iterator[LockMeter]:
        since: dict[int, list[float]] = collections.defaultdict(list)
        with contextlib.ExitStack() as patches:
            for cls in (asyncio.Lock, asyncio.Semaphore):

                async def acquire(
                    lock: Any, _acq: Any = cls.acquire, _n: str = cls.__name__
                ) -> bool:
                    got: bool = await _acq(lock)
                    self.acquisitions += 1
                    self.by_class[_n] += 1
                    since[id(lock)].append(time.perf_counter())
                    return got

                def release(lock: Any, _release: Any = cls.release) -> None:
                    if starts := since.get(id(lock)):
                        self.held_s += time.perf_counter() - starts.pop(0)
                    _release(lock)

                patches.enter_context(mock.patch.object(cls, "acquire", acquire))
                patches.enter_context(mock.patch.object(cls, "release", release))
            yield self


@contextlib.asynccontextmanager
async def loop_health() -> AsyncIterator[dict[str, Any]]:
    """While entered: gc pauses, bare loop timers' lateness, CPU; figures in the dict on exit."""
    figures: dict[str, Any] = {}
    pauses: list[tuple[int, float]] = []  # (generation, seconds)
    started = [0.0]

    def callback(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            pauses.append((int(info["generation"]), time.perf_counter() - started[0]))

    cpu, stop = CpuMeter(), asyncio.Event()
    monitor = asyncio.ensure_future(lateness_monitor(stop))
    gc.callbacks.append(callback)
    try:
        yield figures
    finally:
        gc.callbacks.remove(callback)
        stop.set()
        late = await monitor
        cpu.stop()
        figures["gc_collections"] = len(pauses)
        figures["gc_full_collections"] = sum(1 for g, _ in pauses if g == 2)
        figures["gc_longest_ms"] = max((p for _, p in pauses), default=0.0) * 1e3
        figures["gc_total_ms"] = sum(p for _, p in pauses) * 1e3
        for key, q in (("p50", 0.5), ("p99", 0.99)):
            figures[f"loop_late_{key}_ms"] = percentile(late, q) * 1e3
        figures["loop_late_max_ms"] = max(late, default=0.0) * 1e3
        figures |= {"cpu_utilisation": cpu.utilisation, "wall_s": cpu.wall_s}


class CpuMeter:
    """Process CPU and wall seconds, and their ratio ``utilisation``, from start to ``stop``."""

    def __init__(self) -> None:
        self._start = (time.process_time(), time.perf_counter())
        self.cpu_s = self.wall_s = self.utilisation = 0.0

    def stop(self) -> CpuMeter:
        self.cpu_s = time.process_time() - self._start[0]
        self.wall_s = time.perf_counter() - self._start[1]
        self.utilisation = self.cpu_s / self.wall_s if self.wall_s > 0 else 0.0
        return self


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` so far (Linux), None if unknown."""
    with contextlib.suppress(OSError, IndexError), open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return None


def process_rss_bytes(pid: int | None = None) -> int | None:
    """Resident set size of process ``pid`` (default: this one), None if unknown."""
    path = f"/proc/{pid if pid is not None else 'self'}/status"
    with contextlib.suppress(OSError, StopIteration), open(path, encoding="ascii") as f:
        return next(int(ln.split()[1]) * 1024 for ln in f if ln.startswith("VmRSS:"))
    return None


class Child:
    """A spawned process and its pipe: ``target(ctl, *args)`` sends one "ready" value, answers
    messages (``Child.serve``) until "stop", then sends one last value."""

    def __init__(self, target: Callable[..., None], *args: Any, name: str) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.name = name
        self.ctl, child = ctx.Pipe()
        self.process = ctx.Process(target=target, args=(child, *args), name=name, daemon=True)
        self.process.start()
        child.close()
        self.ready = self.ask(None)

    def ask(self, msg: Any, timeout: float = 60.0) -> Any:
        """Send ``msg`` (None: send nothing) and wait for the answer."""
        try:
            if msg is not None:
                self.ctl.send(msg)
            if self.ctl.poll(timeout):
                return self.ctl.recv()
        except (EOFError, OSError) as exc:
            raise CyncError(f"bench: {self.name} is gone ({exc!r})", reason="bench") from None
        raise CyncError(f"bench: {self.name} did not answer in {timeout:g} s", reason="bench")

    def stop(self) -> Any:
        """Tell the child to stop; its last value (None if it sent none)."""
        last = None
        with contextlib.suppress(OSError, EOFError, CyncError):
            last = self.ask("stop", 30.0)
        self.process.join(10.0)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(5.0)
        self.ctl.close()
        return last

    @staticmethod
    async def serve(ctl: Connection, handle: Callable[[Any], Any]) -> None:
        """In the child: answer each message with ``handle(message)`` until "stop"."""
        loop, stop = asyncio.get_running_loop(), asyncio.Event()

        def readable() -> None:
            try:
                while ctl.poll():
                    if (msg := ctl.recv()) == "stop":
                        return stop.set()
                    ctl.send(handle(msg))
            except (EOFError, OSError):
                stop.set()

        loop.add_reader(ctl.fileno(), readable)
        try:
            await stop.wait()
        finally:
            loop.remove_reader(ctl.fileno())
