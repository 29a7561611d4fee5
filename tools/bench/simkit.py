# Shared asyncio machinery of the simulator suites (baseline, acks, chaos, group).
#
# Strategy: measure from the outside and instrument at the documented seams, never change
# the simulator.  ``open_lane`` starts one listening CyncDeviceSimulator and a
# ReliableTransport connected and handshaken to it; ``run_commands`` drives it with one
# command outstanding at a time (a device works through its commands in order, so a second
# outstanding command would measure queueing, not the device).  ``Probe`` is a raw Cync peer
# that stamps each packet with the loop clock the moment it is read, for request -> answer
# latencies without any transport in between.  ``TimerAudit`` wraps an engine's ``receive``
# (instance attribute) to note when each answer was asked to leave, and is the connection's
# ``observer`` to note when it really left: the simulator's timer fidelity.  ``LockMeter``
# wraps asyncio's Lock and Semaphore for the duration of a run and sums the time they are
# held.  ``loop_lateness`` is the reference: how late a bare loop timer fires.
from __future__ import annotations

import asyncio
import collections
import gc
import os
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from cyncsim.replay.chaos import ChaosConfig
from cyncsim.replay.engine import Engine, Send
from cyncsim.replay.errors import CyncError
from cyncsim.replay.framer import PacketFramer
from cyncsim.replay.model import DeviceModel
from cyncsim.replay.payloads import LightStateCommand, PowerCommand, build_command
from cyncsim.replay.protocol import CyncPacket, PacketType
from cyncsim.simulator.device import CyncDeviceSimulator
from cyncsim.simulator.transport import ReliableTransport, Result
from cyncsim.tools.bench.latency import rate, summary_ms

__all__ = [
    "CpuMeter",
    "GcMeter",
    "Lane",
    "LockMeter",
    "Probe",
    "TimerAudit",
    "acks",
    "command_packet",
    "command_summary",
    "is_type",
    "lateness_monitor",
    "light_packet",
    "loop_lateness",
    "open_lane",
    "process_cpu_seconds",
    "process_rss_bytes",
    "run_commands",
]

NODE = 1  # mesh node of every lane's device (its own node: commands are applied)


@dataclass(slots=True)
class Lane:
    """One simulated device and the transport driving it."""

    device: CyncDeviceSimulator
    transport: ReliableTransport
    results: list[Result] = field(default_factory=list)

    async def close(self) -> None:
        await self.transport.close()
        await self.device.stop()


async def open_lane(
    index: int,
    *,
    seed: int,
    model: DeviceModel | None = None,
    time_scale: float = 1.0,
    chaos: ChaosConfig | None = None,
    **transport_kw: Any,
) -> Lane:
    """A listening device (id 0x5100_0000 + index, node 1) and a handshaken transport."""
    device = CyncDeviceSimulator(
        0x51000000 + index,
        model=model,
        seed=seed * 1000 + index,
        time_scale=time_scale,
        chaos_config=chaos,
        mesh_node=NODE,
    )
    await device.start()
    transport = ReliableTransport(
        "127.0.0.1", device.port, seed=seed * 1000 + index + 500, **transport_kw
    )
    try:
        await transport.connect()
        await transport.handshake(timeout=30.0)
    except BaseException:
        await transport.close()
        await device.stop()
        raise
    return Lane(device, transport)


async def run_commands(lane: Lane, n: int, *, light: bool = False) -> list[Result]:
    """``n`` commands, one at a time: toggles (f8 d0) or brightness changes (f8 f0)."""
    for i in range(n):
        if light:
            res = await lane.transport.send_light_state(NODE, brightness=10 + i % 90)
        else:
            res = await lane.transport.send_toggle_command(NODE, bool(i % 2))
        lane.results.append(res)
    return lane.results


def command_summary(results: list[Result], retransmissions: int) -> dict[str, Any]:
    """Latency of the acknowledged commands, success and retransmit rates."""
    ok = [r.latency_s for r in results if r.success]
    n = len(results)
    reasons = collections.Counter(r.reason for r in results if not r.success)
    return {
        "commands": n,
        "acked": len(ok),
        "success": rate(len(ok), n),
        **summary_ms(ok),
        "retransmits": retransmissions,
        "retransmit_rate": rate(retransmissions, n),
        "retried_commands": sum(1 for r in results if r.retry_count),
        "timeouts": reasons.get("timeout", 0),
        "failures": dict(sorted(reasons.items())),
    }


def command_packet(device_id: bytes, number: int, *, node: int = NODE) -> bytes:
    """Bytes of toggle number ``number`` (distinct message id and sequence byte)."""
    msg_id = ((number % 0xFFFF) + 1).to_bytes(2, "big") + b"\0"
    cmd = PowerCommand(number % 255 + 1, node, bool(number % 2))
    return build_command(device_id, msg_id, cmd).encode()


def light_packet(device_id: bytes, number: int, *, node: int = NODE) -> bytes:
    """Bytes of brightness command number ``number`` (f8 f0)."""
    msg_id = ((number % 0xFFFF) + 1).to_bytes(2, "big") + b"\0"
    cmd = LightStateCommand(number % 255 + 1, node, brightness=10 + number % 90)
    return build_command(device_id, msg_id, cmd).encode()


# ---------------------------------------------------------------------------- raw probe
class Probe(asyncio.Protocol):
    """A raw Cync peer: writes requests, stamps every packet read with the loop clock.

    ``exchange(data, want)`` writes ``data`` and returns (seconds until the first packet for
    which ``want`` is true, that packet).  Other packets are counted in ``unmatched``.
    """

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.framer = PacketFramer(strict=False)
        self.transport: asyncio.Transport | None = None
        self._waiters: list[tuple[Callable[[CyncPacket], bool], asyncio.Future[Any]]] = []
        self.unmatched: collections.Counter[int] = collections.Counter()
        self.backlog: collections.deque[tuple[float, CyncPacket]] = collections.deque(maxlen=4096)
        self.closed = False

    @classmethod
    async def open(cls, host: str, port: int) -> Probe:
        loop = asyncio.get_running_loop()
        _, probe = await loop.create_connection(cls, host, port)
        return probe

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        now = self.loop.time()
        for pkt in self.framer.feed(data):
            for i, (want, fut) in enumerate(self._waiters):
                if not fut.done() and want(pkt):
                    fut.set_result((now, pkt))
                    del self._waiters[i]
                    break
            else:
                self.unmatched[pkt.type] += 1
                self.backlog.append((now, pkt))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        for _, fut in self._waiters:
            if not fut.done():
                fut.set_exception(CyncError("probe connection closed", reason="closed"))

    def wait_for(
        self, want: Callable[[CyncPacket], bool], *, backlog: bool = False
    ) -> asyncio.Future[Any]:
        """A future of (read time, packet) for the next packet ``want`` accepts; with
        ``backlog`` an unmatched packet already read counts too (and is taken from it)."""
        fut: asyncio.Future[Any] = self.loop.create_future()
        if backlog:
            for item in self.backlog:
                if want(item[1]):
                    self.backlog.remove(item)
                    fut.set_result(item)
                    return fut
        self._waiters.append((want, fut))
        return fut

    def send(self, data: bytes) -> None:
        if self.transport is None or self.closed:
            raise CyncError("probe is not connected", reason="closed")
        self.transport.write(data)

    async def exchange(
        self,
        data: bytes,
        want: Callable[[CyncPacket], bool],
        timeout: float = 30.0,  # noqa: ASYNC109
    ) -> tuple[float, CyncPacket]:
        fut = self.wait_for(want)
        start = self.loop.time()
        self.send(data)
        try:
            at, pkt = await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            raise CyncError(
                f"no answer to a 0x{data[0]:02x} within {timeout} s", reason="timeout"
            ) from None
        return at - start, pkt

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def is_type(ptype: int) -> Callable[[CyncPacket], bool]:
    return lambda pkt: pkt.type == ptype


def acks(request: bytes) -> Callable[[CyncPacket], bool]:
    """The 0x7B answering 0x73 ``request`` (echoes its bytes 5-11)."""
    key = request[5:12]
    return lambda pkt: pkt.type == PacketType.DATA_ACK and pkt.encode()[5:12] == key


# ---------------------------------------------------------------------------- timers
class TimerAudit:
    """When each engine answer was asked to leave, and when it really did.

    ``watch(engine)`` wraps the engine's ``receive``; ``observe`` is the connection's
    observer.  Per answer key: ``asked`` (delay asked, s) and ``late`` (written at minus
    asked-for time, s; negative would mean early).
    """

    def __init__(self) -> None:
        self._pending: dict[bytes, collections.deque[tuple[float, float, str]]] = {}
        self.asked: dict[str, list[float]] = collections.defaultdict(list)
        self.late: dict[str, list[float]] = collections.defaultdict(list)
        self.loop = asyncio.get_running_loop()

    def watch(self, engine: Engine) -> None:
        receive = engine.receive
        pending = self._pending

        def audited(data: bytes, now: float) -> list[Any]:
            actions = receive(data, now)
            for a in actions:
                if type(a) is Send:
                    pending.setdefault(a.data, collections.deque()).append((now, a.at, a.key))
            return actions

        setattr(engine, "receive", audited)  # noqa: B010 (an instance attribute, on purpose)

    def observe(self, way: str, data: bytes) -> None:
        if way != "out":
            return
        queue = self._pending.get(data)
        if not queue:
            return
        now, at, key = queue.popleft()
        if not queue:
            del self._pending[data]
        self.asked[key].append(at - now)
        self.late[key].append(self.loop.time() - at)


async def loop_lateness(
    n: int, low: float, high: float, *, seed: int = 0, sleep: bool = False
) -> list[float]:
    """Lateness (s) of ``n`` bare timers, one after another, each of a delay drawn uniformly
    from [low, high) s: loop.call_at callbacks, or ``asyncio.sleep`` (which adds one task
    wake-up) with ``sleep``.  Random delays matter: the selector waits in whole milliseconds,
    rounded up, so a timer due at a fraction of a millisecond after the loop last woke is
    late by that rounding (uniform, 0-1 ms), while whole-millisecond delays scheduled just
    after a wake-up are not."""
    loop = asyncio.get_running_loop()
    rng = random.Random(seed)
    out: list[float] = []
    for _ in range(n):
        delay = rng.uniform(low, high)
        if sleep:
            start = loop.time()
            await asyncio.sleep(delay)
            out.append(loop.time() - start - delay)
            continue
        fut: asyncio.Future[float] = loop.create_future()
        when = loop.time() + delay
        loop.call_at(when, _fire, fut, when)
        out.append(await fut)
    return out


def _fire(fut: asyncio.Future[float], when: float) -> None:
    if not fut.done():
        fut.set_result(asyncio.get_running_loop().time() - when)


# ---------------------------------------------------------------------------- locks, CPU
class LockMeter:
    """Counts acquisitions of asyncio.Lock and asyncio.Semaphore and the time they are held,
    process-wide, while ``active()`` is entered (the classes' methods are wrapped)."""

    def __init__(self) -> None:
        self.acquisitions = 0
        self.held_s = 0.0
        self.by_class: collections.Counter[str] = collections.Counter()

    @contextmanager
    def active(self) -> Iterator[LockMeter]:
        meter = self
        since: dict[int, list[float]] = collections.defaultdict(list)
        saved: list[tuple[Any, str, Any]] = []
        for cls in (asyncio.Lock, asyncio.Semaphore):
            acquire, release = cls.acquire, cls.release

            async def timed_acquire(
                lock: Any, _acquire: Any = acquire, _name: str = cls.__name__
            ) -> bool:
                got: bool = await _acquire(lock)
                meter.acquisitions += 1
                meter.by_class[_name] += 1
                since[id(lock)].append(time.perf_counter())
                return got

            def timed_release(lock: Any, _release: Any = release) -> None:
                starts = since.get(id(lock))
                if starts:
                    meter.held_s += time.perf_counter() - starts.pop(0)
                _release(lock)

            saved += [(cls, "acquire", acquire), (cls, "release", release)]
            setattr(cls, "acquire", timed_acquire)  # noqa: B010
            setattr(cls, "release", timed_release)  # noqa: B010
        try:
            yield self
        finally:
            for owner, name, fn in saved:
                setattr(owner, name, fn)


class GcMeter:
    """Pauses of the cyclic garbage collector while ``active()`` is entered (gc.callbacks):
    how many, the longest, the total, per generation."""

    def __init__(self) -> None:
        self.pauses: list[tuple[int, float]] = []  # (generation, seconds)

    @contextmanager
    def active(self) -> Iterator[GcMeter]:
        started: list[float] = []

        def callback(phase: str, info: dict[str, Any]) -> None:
            if phase == "start":
                started.append(time.perf_counter())
            elif started:
                self.pauses.append((int(info["generation"]), time.perf_counter() - started.pop()))

        gc.callbacks.append(callback)
        try:
            yield self
        finally:
            gc.callbacks.remove(callback)

    def summary(self) -> dict[str, float | int]:
        longest = max((p for _, p in self.pauses), default=0.0)
        return {
            "gc_collections": len(self.pauses),
            "gc_full_collections": sum(1 for g, _ in self.pauses if g == 2),
            "gc_longest_ms": longest * 1e3,
            "gc_total_ms": sum(p for _, p in self.pauses) * 1e3,
        }


async def lateness_monitor(
    stop: asyncio.Event, low: float = 0.005, high: float = 0.02
) -> list[float]:
    """Bare loop timers (``low``-``high`` s, random) one after another until ``stop``: how
    late the loop runs its callbacks while something else is measured."""
    out: list[float] = []
    seed = 0
    while not stop.is_set():
        seed += 1
        out += await loop_lateness(5, low, high, seed=seed)
    return out


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` so far (Linux /proc), None if unknown."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    return (int(fields[11]) + int(fields[12])) / ticks


def process_rss_bytes(pid: int | None = None) -> int | None:
    """Resident set size of process ``pid`` (default: this one), None if unknown."""
    path = f"/proc/{pid if pid is not None else 'self'}/status"
    try:
        with open(path, encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


class CpuMeter:
    """Process CPU seconds (user + system) and wall seconds between start and ``stop``."""

    def __init__(self) -> None:
        t = os.times()
        self._cpu0 = t.user + t.system
        self._wall0 = time.perf_counter()
        self.cpu_s = 0.0
        self.wall_s = 0.0

    def stop(self) -> CpuMeter:
        t = os.times()
        self.cpu_s = t.user + t.system - self._cpu0
        self.wall_s = time.perf_counter() - self._wall0
        return self

    @property
    def utilisation(self) -> float:
        """CPU seconds per wall second (1.0 = one core busy)."""
        return self.cpu_s / self.wall_s if self.wall_s > 0 else 0.0
