# Shared asyncio machinery of the simulator suites: lanes, a raw probe, meters, processes.
#
# Strategy: measure from the outside through the public API and its documented seams
# (a connection's ``observer``, an engine's ``receive``), never change the simulator.  A lane
# is a device and a ReliableTransport with one command outstanding; Probe a raw peer stamping
# each packet with the loop clock; Child a spawned process answering a control pipe.
from __future__ import annotations

import asyncio
import collections
import contextlib
import gc
import multiprocessing
import os
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from cyncsim import (
    ChaosConfig,
    CyncDeviceSimulator,
    CyncError,
    DeviceModel,
    PacketType,
    ReliableTransport,
    Result,
)
from cyncsim.replay.framer import PacketFramer
from cyncsim.replay.payloads import LightStateCommand, PowerCommand, build_command
from cyncsim.replay.protocol import CyncPacket, exchange_key
from cyncsim.tools.bench.stats import rate, summary

__all__ = [
    "NODE",
    "Child",
    "CpuMeter",
    "GcMeter",
    "Lane",
    "LockMeter",
    "Probe",
    "TimerAudit",
    "acks",
    "command_packet",
    "command_summary",
    "device_view",
    "is_type",
    "lateness_monitor",
    "loop_lateness",
    "open_lane",
    "process_cpu_seconds",
    "process_rss_bytes",
    "run_commands",
    "serve_control",
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
    """Latency of the acknowledged commands (standard summary), success, retransmissions."""
    ok = [r.latency_s for r in results if r.success]
    reasons = collections.Counter(r.reason for r in results if not r.success)
    return {
        "commands": len(results),
        "acked": len(ok),
        "success": rate(len(ok), len(results)),
        **summary(ok),
        "retransmits": retransmissions,
        "retransmit_rate": rate(retransmissions, len(results)),
        "retried_commands": sum(1 for r in results if r.retry_count),
        "timeouts": reasons.get("timeout", 0),
        "failures": dict(sorted(reasons.items())),
        "samples_ms": [x * 1e3 for x in ok],
    }


def device_view(model: DeviceModel | None = None) -> Any:
    """The model view a device of ``model`` samples its answers from (the device is built,
    never started): ``.split(request key).acks[0]`` is the plan of the answer, ``.heartbeat``
    the idle time before a 0xD3."""
    return CyncDeviceSimulator(0x51000000, model=model, seed=0, mesh_node=NODE).engine.view


def command_packet(device_id: bytes, number: int, *, light: bool = False) -> bytes:
    """Bytes of toggle (f8 d0) or brightness (f8 f0) command ``number`` to node 1, with a
    distinct message id and sequence byte."""
    msg_id = ((number % 0xFFFF) + 1).to_bytes(2, "big") + b"\0"
    seq = number % 255 + 1
    cmd = (
        LightStateCommand(seq, NODE, brightness=10 + number % 90)
        if light
        else PowerCommand(seq, NODE, bool(number % 2))
    )
    return build_command(device_id, msg_id, cmd).encode()


# ---------------------------------------------------------------------------- raw probe
class Probe(asyncio.Protocol):
    """A raw Cync peer stamping each packet read with the loop clock; ``exchange(data, want)``
    returns (seconds to the first packet ``want`` accepts, that packet)."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.framer = PacketFramer(strict=False)
        self.transport: asyncio.Transport | None = None
        self._waiters: list[tuple[Callable[[CyncPacket], bool], asyncio.Future[Any]]] = []
        self.backlog: collections.deque[tuple[float, CyncPacket]] = collections.deque(maxlen=4096)

    @classmethod
    async def open(cls, port: int) -> Probe:
        _, probe = await asyncio.get_running_loop().create_connection(cls, "127.0.0.1", port)
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
                self.backlog.append((now, pkt))

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        for _, fut in self._waiters:
            if not fut.done():
                fut.set_exception(CyncError("probe connection closed", reason="closed"))

    def wait_for(self, want: Callable[[CyncPacket], bool]) -> asyncio.Future[Any]:
        """A future of (read time, packet) for the next packet ``want`` accepts, the backlog
        of packets read before included (and taken from it)."""
        fut: asyncio.Future[Any] = self.loop.create_future()
        for item in self.backlog:
            if want(item[1]):
                self.backlog.remove(item)
                fut.set_result(item)
                return fut
        self._waiters.append((want, fut))
        return fut

    def send(self, data: bytes) -> None:
        if self.transport is None:
            raise CyncError("probe is not connected", reason="closed")
        self.transport.write(data)

    async def exchange(
        self, data: bytes, want: Callable[[CyncPacket], bool]
    ) -> tuple[float, CyncPacket]:
        fut = self.wait_for(want)
        start = self.loop.time()
        self.send(data)
        try:
            at, pkt = await asyncio.wait_for(fut, 30.0)
        except TimeoutError:
            raise CyncError(f"no answer to a 0x{data[0]:02x} in 30 s", reason="timeout") from None
        return at - start, pkt

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def is_type(ptype: int) -> Callable[[CyncPacket], bool]:
    return lambda pkt: pkt.type == ptype


def acks(request: bytes) -> Callable[[CyncPacket], bool]:
    """The 0x7B answering 0x73 ``request`` (echoes its exchange key)."""
    key = exchange_key(request)
    return lambda pkt: pkt.type == PacketType.DATA_ACK and exchange_key(pkt.encode()) == key


# ---------------------------------------------------------------------------- timers
class TimerAudit:
    """When each engine answer was asked to leave, and when it really did."""

    def __init__(self) -> None:
        self._pending: dict[bytes, collections.deque[tuple[float, float, str]]] = {}
        self.asked: dict[str, list[float]] = collections.defaultdict(list)
        self.late: dict[str, list[float]] = collections.defaultdict(list)
        self.loop = asyncio.get_running_loop()

    def watch(self, engine: Any) -> None:
        receive, pending = engine.receive, self._pending

        def audited(data: bytes, now: float) -> list[Any]:
            actions: list[Any] = receive(data, now)
            for a in actions:  # a Send action: data to write at loop time ``at``
                if hasattr(a, "at") and isinstance(getattr(a, "data", None), bytes):
                    pending.setdefault(a.data, collections.deque()).append((now, a.at, a.key))
            return actions

        setattr(engine, "receive", audited)  # noqa: B010 (an instance attribute, on purpose)

    def observe(self, way: str, data: bytes) -> None:
        queue = self._pending.get(data) if way == "out" else None
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
    """Lateness (s) of ``n`` bare timers one after another, each of a delay drawn uniformly
    from [low, high): loop.call_at callbacks, or ``asyncio.sleep`` (one more task wake-up).
    Random delays matter: epoll waits in whole milliseconds, rounded up, so a timer due at a
    fraction of a millisecond after the loop last woke is late by that rounding."""
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


async def lateness_monitor(
    stop: asyncio.Event, low: float = 0.005, high: float = 0.02
) -> list[float]:
    """Bare loop timers (random ``low``-``high`` s) one after another until ``stop``."""
    out: list[float] = []
    seed = 0
    while not stop.is_set():
        seed += 1
        out += await loop_lateness(5, low, high, seed=seed)
    return out


# ---------------------------------------------------------------------------- meters
class LockMeter:
    """Acquisitions of asyncio.Lock and asyncio.Semaphore and the time they are held,
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

            async def timed_acquire(lock: Any, _acq: Any = acquire, _n: str = cls.__name__) -> bool:
                got: bool = await _acq(lock)
                meter.acquisitions += 1
                meter.by_class[_n] += 1
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
    """Pauses of the cyclic garbage collector while ``active()`` is entered (gc.callbacks)."""

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
        return {
            "gc_collections": len(self.pauses),
            "gc_full_collections": sum(1 for g, _ in self.pauses if g == 2),
            "gc_longest_ms": max((p for _, p in self.pauses), default=0.0) * 1e3,
            "gc_total_ms": sum(p for _, p in self.pauses) * 1e3,
        }


class CpuMeter:
    """Process CPU seconds (user + system) and wall seconds between start and ``stop``."""

    def __init__(self) -> None:
        t = os.times()
        self._cpu0, self._wall0 = t.user + t.system, time.perf_counter()
        self.cpu_s = self.wall_s = 0.0

    def stop(self) -> CpuMeter:
        t = os.times()
        self.cpu_s = t.user + t.system - self._cpu0
        self.wall_s = time.perf_counter() - self._wall0
        return self

    @property
    def utilisation(self) -> float:
        """CPU seconds per wall second (1.0 = one core busy)."""
        return self.cpu_s / self.wall_s if self.wall_s > 0 else 0.0


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` so far (Linux /proc), None if unknown."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_rss_bytes(pid: int | None = None) -> int | None:
    """Resident set size of process ``pid`` (default: this one), None if unknown."""
    try:
        with open(f"/proc/{pid if pid is not None else 'self'}/status", encoding="ascii") as f:
            kib = next((int(ln.split()[1]) for ln in f if ln.startswith("VmRSS:")), None)
    except OSError:
        return None
    return kib * 1024 if kib is not None else None


# ---------------------------------------------------------------------------- processes
class Child:
    """A spawned process (a fresh interpreter: no inherited heap) and its control pipe.

    ``target(ctl, *args)`` runs in the child: it sends one "ready" value, then answers every
    message (``serve_control``) until "stop", after which it sends one last value."""

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


async def serve_control(ctl: Connection, handle: Callable[[Any], Any]) -> None:
    """In a Child: answer each message with ``handle(message)`` until "stop"."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def readable() -> None:
        try:
            while ctl.poll():
                msg = ctl.recv()
                if msg == "stop":
                    stop.set()
                    return
                ctl.send(handle(msg))
        except (EOFError, OSError):
            stop.set()

    loop.add_reader(ctl.fileno(), readable)
    try:
        await stop.wait()
    finally:
        loop.remove_reader(ctl.fileno())
