# FleetWorkers: one fleet split over worker processes (multiprocessing, spawn).
#
# Strategy: the parent draws every identity once (so ids, nodes and source addresses stay
# unique fleet-wide) and gives each worker a contiguous share; each worker runs a CyncFleet
# of its share in its own event loop and talks to the parent over one Pipe: it sends
# ("ready", lines) or ("error", message, reason) after starting, and ("stopped", stats) when
# done; the parent sends "stop" (or "stats": the worker answers ("stats", stats)).  Stats are
# replay.stats.RunStats, merged by the parent (counters and latency histograms add up).
# Workers ignore SIGINT (Ctrl-C reaches the whole process group; the parent decides), stop on
# SIGTERM, and stop when the pipe closes, so a dead parent leaves no orphans.  The parent
# stops workers with "stop", then SIGTERM, then SIGKILL, each after a grace time.  A mesh
# split between two workers does not relay across them.  With ``record``, worker k writes
# FILE.wk.SUFFIX.
# Private module: import FleetWorkers from cyncsim.simulator.fleet.
from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from cyncsim.replay.chaos import ChaosConfig
from cyncsim.replay.errors import CyncError
from cyncsim.replay.model import DeviceModel
from cyncsim.replay.stats import RunStats
from cyncsim.simulator._base import default_model
from cyncsim.simulator.fleet._fleet import CyncFleet
from cyncsim.simulator.fleet._members import (
    MESH_NODES,
    FleetMember,
    Identities,
    generate_members,
)
from cyncsim.simulator.ports import check_loopback

__all__ = ["FleetWorkers", "worker_record_path"]

logger = logging.getLogger("cyncsim.fleet")


@dataclass(frozen=True)
class _Options:
    """Everything a worker needs besides its members (picklable)."""

    model_path: str | None
    seed: int
    time_scale: float
    chaos_config: ChaosConfig | None
    record: str | None
    host: str
    port: int
    spread: bool
    mesh_relay: bool
    firmware_version: str | None
    variant: str | None
    concurrency: int
    log_level: int
    allow_remote: bool = False  # the opt-in to dial a controller beyond loopback


@dataclass(frozen=True)
class _Dial:
    host: str
    port: int
    tls: bool
    verify: bool
    cafile: str | None
    server_hostname: str | None
    timeout: float


def worker_record_path(path: str | Path, number: int) -> Path:
    """Where worker ``number`` records: FILE.w<number>.SUFFIX next to FILE."""
    p = Path(path)
    return p.with_name(f"{p.stem}.w{number}{p.suffix}")


# ---------------------------------------------------------------------------- worker side
def worker_main(members: list[FleetMember], opts: _Options, dial: _Dial | None, conn: Any) -> None:
    """Entry point of a worker process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C: the parent tells us to stop
    logging.basicConfig(level=opts.log_level, format="%(processName)s %(name)s: %(message)s")
    sys.exit(asyncio.run(_worker(members, opts, dial, conn)))


async def _worker(
    members: list[FleetMember], opts: _Options, dial: _Dial | None, conn: Connection
) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    fleet: CyncFleet | None = None

    def readable() -> None:
        try:
            while conn.poll():
                msg = conn.recv()
                if msg == "stop":
                    stop.set()
                elif msg == "stats" and fleet is not None:
                    conn.send(("stats", fleet.stats()))
        except (EOFError, OSError):
            stop.set()  # the parent is gone
            loop.remove_reader(conn.fileno())

    loop.add_reader(conn.fileno(), readable)
    stopping = asyncio.ensure_future(stop.wait())
    code = 0
    try:
        model = DeviceModel.load(opts.model_path) if opts.model_path else default_model()
        fleet = CyncFleet(
            members=members,
            model=model,
            seed=opts.seed,
            time_scale=opts.time_scale,
            chaos_config=opts.chaos_config,
            record=opts.record,
            host=opts.host,
            port=opts.port,
            spread=opts.spread,
            mesh_relay=opts.mesh_relay,
            firmware_version=opts.firmware_version,
            variant=opts.variant,
            concurrency=opts.concurrency,
        )
        if dial is None:
            starting = asyncio.ensure_future(fleet.start())
        else:
            starting = asyncio.ensure_future(
                fleet.connect(dial.host, dial.port, dial.tls, verify=dial.verify,
                              cafile=dial.cafile, server_hostname=dial.server_hostname,
                              timeout=dial.timeout)
            )  # fmt: skip
        await asyncio.wait((starting, stopping), return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():
            starting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await starting  # raises a start error
        if not stop.is_set():
            conn.send(("ready", fleet.lines()))
        await stopping
    except CyncError as exc:
        _send(conn, ("error", str(exc), exc.reason))
        code = 2
    except Exception as exc:  # reported to the parent, which shows one line
        _send(conn, ("error", f"{type(exc).__name__}: {exc}", "worker_failed"))
        code = 1
    finally:
        stopping.cancel()
        with contextlib.suppress(ValueError, OSError):
            loop.remove_reader(conn.fileno())
        if fleet is not None:
            await fleet.stop()
            _send(conn, ("stopped", fleet.stats()))
        conn.close()
    return code


def _send(conn: Connection, msg: object) -> None:
    with contextlib.suppress(OSError, ValueError):
        conn.send(msg)


# ---------------------------------------------------------------------------- parent side
class _Worker:
    __slots__ = ("conn", "error", "exitcode", "lines", "number", "process", "stats", "stopped")

    def __init__(self, number: int, process: BaseProcess, conn: Connection) -> None:
        self.number = number
        self.process = process
        self.conn = conn
        self.lines: list[str] | None = None
        self.error: tuple[str, str] | None = None
        self.stats: RunStats | None = None
        self.stopped = False  # "stopped" received or the pipe closed
        self.exitcode: int | None = None


class FleetWorkers:
    """A fleet of ``n`` devices run by ``workers`` processes, each a CyncFleet of its share.

    Same use as CyncFleet: ``await start()`` (listen) or ``await connect(host, port)``,
    ``lines()``, ``stats()`` (final once stopped), ``await stop()``.  The model goes to
    the workers as a path (``model_path``; None: the default model).
    """

    def __init__(
        self,
        n: int,
        workers: int,
        *,
        model_path: str | None = None,
        seed: int = 0,
        time_scale: float = 1.0,
        chaos_config: ChaosConfig | None = None,
        record: str | Path | None = None,
        identities: Identities = "model",
        source_hosts: bool | Sequence[str] = True,
        host: str = "127.0.0.1",
        port: int = 0,
        spread: bool = False,
        mesh_size: int = MESH_NODES,
        mesh_relay: bool = True,
        firmware_version: str | None = None,
        variant: str | None = None,
        concurrency: int = 256,
        log_level: int = logging.WARNING,
        startup_timeout: float = 120.0,
        stop_timeout: float = 15.0,
    ) -> None:
        if not 1 <= workers <= n:
            raise ValueError(f"workers={workers} must be 1..{n} (one device at least each)")
        check_loopback(host)
        model = DeviceModel.load(model_path) if model_path else default_model()
        self.seed = seed
        self.members = generate_members(
            n, model=model, seed=seed, identities=identities,
            source_hosts=source_hosts, mesh_size=mesh_size,
        )  # fmt: skip
        if port and port + n - 1 > 65535:
            raise ValueError(f"ports {port}..{port + n - 1} exceed 65535")
        bounds = [n * k // workers for k in range(workers + 1)]
        self.shares = [self.members[bounds[k] : bounds[k + 1]] for k in range(workers)]
        self._opts = _Options(
            model_path, seed, time_scale, chaos_config, None if record is None else str(record),
            host, port, spread, mesh_relay, firmware_version, variant, concurrency, log_level,
        )  # fmt: skip
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.workers: list[_Worker] = []
        self._changed: asyncio.Event | None = None
        self._stopped = False

    def __len__(self) -> int:
        return len(self.members)

    async def start(self) -> None:
        await self._launch(None)

    async def connect(
        self,
        host: str,
        port: int,
        tls: bool = False,
        *,
        verify: bool = False,
        cafile: str | None = None,
        server_hostname: str | None = None,
        timeout: float = 10.0,  # noqa: ASYNC109
    ) -> None:
        check_loopback(host)
        await self._launch(_Dial(host, port, tls, verify, cafile, server_hostname, timeout))

    async def _launch(self, dial: _Dial | None) -> None:
        if self.workers:
            raise CyncError("fleet workers already started", reason="already_started")
        loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()
        ctx = multiprocessing.get_context("spawn")
        for k, share in enumerate(self.shares):
            opts = self._opts
            if opts.record is not None:
                opts = replace(opts, record=str(worker_record_path(opts.record, k)))
            if opts.port:
                opts = replace(opts, port=opts.port + share[0].index)
            parent, child = ctx.Pipe()
            proc = ctx.Process(
                target=worker_main, args=(share, opts, dial, child),
                name=f"cyncsim-fleet-{k}", daemon=True,
            )  # fmt: skip
            proc.start()
            child.close()
            worker = _Worker(k, proc, parent)
            self.workers.append(worker)
            loop.add_reader(parent.fileno(), self._readable, worker)
        try:
            await asyncio.wait_for(self._wait(self._all_ready), self.startup_timeout)
        except TimeoutError:
            await self.stop()
            raise CyncError(
                f"fleet workers not ready within {self.startup_timeout} s", reason="timeout"
            ) from None
        failed = [w for w in self.workers if w.error is not None or w.lines is None]
        if failed:
            await self.stop()
            w = failed[0]
            message, reason = w.error or (f"exited with code {w.exitcode}", "worker_failed")
            raise CyncError(f"fleet worker {w.number}: {message}", reason=reason)

    def _all_ready(self) -> bool:
        return all(w.lines is not None or w.error is not None or w.stopped for w in self.workers)

    async def _wait(self, predicate: Any) -> None:
        assert self._changed is not None
        while not predicate():
            self._changed.clear()
            await self._changed.wait()

    def _readable(self, worker: _Worker) -> None:
        try:
            while worker.conn.poll():
                msg = worker.conn.recv()
                kind = msg[0]
                if kind == "ready":
                    worker.lines = list(msg[1])
                elif kind == "error":
                    worker.error = (str(msg[1]), str(msg[2]))
                elif kind in ("stats", "stopped"):
                    worker.stats = msg[1]
                    worker.stopped = worker.stopped or kind == "stopped"
        except (EOFError, OSError):
            if not self._stopped and not worker.stopped:
                logger.warning("fleet worker %d ended on its own", worker.number)
            worker.stopped = True
            self._forget(worker)
        if self._changed is not None:
            self._changed.set()

    def _forget(self, worker: _Worker) -> None:
        with contextlib.suppress(ValueError, OSError):
            asyncio.get_running_loop().remove_reader(worker.conn.fileno())
        worker.conn.close()

    async def stop(self) -> None:
        """Ask every worker to stop, wait (then SIGTERM, then SIGKILL); safe twice."""
        if self._stopped:
            return
        self._stopped = True
        live = [w for w in self.workers if not w.conn.closed]
        for w in live:
            with contextlib.suppress(OSError, ValueError):
                w.conn.send("stop")
        for escalate in ("terminate", "kill", None):
            running = await self._join(self.stop_timeout)
            alive = [w for w in self.workers if w.process.sentinel in running]
            if not alive or escalate is None:
                break
            for w in alive:
                logger.warning("fleet worker %d did not stop: %s", w.number, escalate)
                getattr(w.process, escalate)()
        for w in self.workers:
            if not w.conn.closed:
                self._readable(w)  # the last messages, then EOF
                self._forget(w)
            w.process.join(timeout=5.0)
            w.exitcode = w.process.exitcode
            with contextlib.suppress(ValueError):
                w.process.close()

    async def _join(self, timeout: float) -> set[int]:  # noqa: ASYNC109
        """Wait up to ``timeout`` s for every worker process to exit; returns the sentinels
        of those still running.  (A sentinel is readable as the process exits, a moment
        before waitpid reports it, so is_alive() is not asked here.)"""
        loop = asyncio.get_running_loop()
        pending = {w.process.sentinel for w in self.workers if w.process.exitcode is None}
        done = asyncio.Event()

        def gone(fd: int) -> None:
            loop.remove_reader(fd)
            pending.discard(fd)
            if not pending:
                done.set()

        for fd in pending:
            loop.add_reader(fd, gone, fd)
        try:
            if pending:
                await asyncio.wait_for(done.wait(), timeout)
        except TimeoutError:
            pass
        finally:
            for fd in pending:
                loop.remove_reader(fd)
        return pending

    def lines(self) -> list[str]:
        return [line for w in self.workers for line in w.lines or ()]

    def stats(self) -> RunStats:
        out = RunStats()
        for w in self.workers:
            if w.stats is not None:
                out.merge(w.stats)
            elif w.lines is not None:
                out.devices += len(w.lines)
        return out

    async def refresh_stats(self, timeout: float = 2.0) -> RunStats:  # noqa: ASYNC109
        """Ask every running worker for its current counters."""
        for w in self.workers:
            w.stats = None if not w.stopped else w.stats
            if not w.conn.closed:
                with contextlib.suppress(OSError, ValueError):
                    w.conn.send("stats")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                self._wait(lambda: all(w.stats is not None or w.stopped for w in self.workers)),
                timeout,
            )
        return self.stats()
