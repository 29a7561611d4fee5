# RayFleet: one fleet split over Ray actors ("shards"), on one machine or many.
#
# Strategy: the driver draws every identity once (generate_members), cuts the list into
# shards on mesh boundaries (fleet/_placement.py) and starts one Ray actor per shard
# (ShardActor, fleet/_ray_shard.py, num_cpus=1), each a CyncFleet of its members on a loop of
# its own.  Options travel as FleetWorkers' _Options/_Dial; the model object goes along (a
# --model file need not exist on other nodes).  Each shard answers "ready" with its device
# lines; one pending ``wait_stopped`` call per shard is the liveness probe: when it fails
# with a Ray actor error the shard is dead, its devices are reported lost, and with
# ``restart_shards`` a new actor takes the same members.  Source addresses come from pools
# (one CIDR per node: shard k uses pool k % P and asks for the Ray resource
# ``cyncsim_pool_<p>`` when P > 1); the default is loopback_address(i), as in one process.
# Without an address a local Ray runtime with ``shards`` CPUs is started (no dashboard, no
# usage stats), and the driver's SIGTERM handler, which ray.init replaces, is put back.
# Private module: import RayFleet from cyncsim.simulator.fleet.
from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from cyncsim.replay.chaos import ChaosConfig
from cyncsim.replay.errors import CyncError
from cyncsim.replay.model import DeviceModel
from cyncsim.replay.stats import RunStats
from cyncsim.simulator._base import default_model
from cyncsim.simulator.fleet._members import (
    MESH_NODES,
    FleetMember,
    Identities,
    generate_members,
)
from cyncsim.simulator.fleet._placement import (
    assign_source_hosts,
    ephemeral_ports,
    mesh_shards,
    shard_record_path,
)
from cyncsim.simulator.fleet._ray_shard import ShardActor, import_ray
from cyncsim.simulator.fleet._workers import _Dial, _Options
from cyncsim.simulator.ports import check_loopback

__all__ = ["POOL_RESOURCE", "RayFleet", "ray_fleet_row"]

logger = logging.getLogger("cyncsim.fleet")
POOL_RESOURCE = "cyncsim_pool_{}"  # Ray resource a node running pool p's shards advertises


# ---------------------------------------------------------------------------- driver side
@dataclass(slots=True)
class _Shard:
    number: int
    members: list[FleetMember]
    record: str | None
    actor: Any = None
    lines: list[str] | None = None
    stats: RunStats | None = None
    dead: bool = False  # died and not (yet) restarted
    restarts: int = 0
    watcher: asyncio.Task[None] | None = None

    past: RunStats | None = None  # counters of earlier incarnations (died, restarted)
    node: str = ""
    pid: int = 0
    error: tuple[str, str] | None = None


def _history(past: RunStats | None, last: RunStats) -> RunStats:
    """A dead shard's counters kept for the totals: what it did, without its devices."""
    out = RunStats.merged([p for p in (past, last) if p is not None])
    out.devices = out.connected = 0
    return out


class RayFleet:
    """A fleet of ``n`` devices run by ``shards`` Ray actors, each a CyncFleet of whole
    meshes.  Same use as CyncFleet and FleetWorkers: ``await start()`` (listen) or
    ``await connect(host, port)``, ``lines()``, ``stats()`` (final once stopped),
    ``await refresh_stats()``, ``await stop()``.

    ``address``: a running Ray cluster (``ray start --head``), else a local runtime with
    ``shards`` CPUs is started and shut down by ``stop()``; an already initialised runtime
    (``ray.init`` by the caller) is used as it is.  ``source_pools``: CIDRs of local source
    addresses, one per node (shard k dials from pool k % len; with several pools shard k
    needs the Ray resource POOL_RESOURCE.format(k % len), which the node owning that pool
    advertises).  ``restart_shards``: a dead shard's members start again in a new actor.
    ``on_event``: called with one line per shard death or restart (default: logged).
    """

    def __init__(
        self,
        n: int,
        shards: int,
        *,
        address: str | None = None,
        model_path: str | None = None,
        model: DeviceModel | None = None,
        seed: int = 0,
        time_scale: float = 1.0,
        chaos_config: ChaosConfig | None = None,
        record: str | Path | None = None,
        identities: Identities = "model",
        source_hosts: bool = True,
        source_pools: Sequence[str] = (),
        allow_remote_controller: bool = False,
        host: str = "127.0.0.1",
        port: int = 0,
        spread: bool = False,
        mesh_size: int = MESH_NODES,
        mesh_relay: bool = True,
        firmware_version: str | None = None,
        variant: str | None = None,
        concurrency: int = 256,
        log_level: int = logging.WARNING,
        restart_shards: bool = False,
        on_event: Callable[[str], None] | None = None,
        startup_timeout: float = 120.0,
        stop_timeout: float = 15.0,
    ) -> None:
        check_loopback(host)
        if model is None and model_path:
            model = DeviceModel.load(model_path)
        self.model = model  # sent to every shard (a --model file need not exist on nodes)
        self.seed = seed
        members = generate_members(
            n, model=model if model is not None else default_model(), seed=seed,
            identities=identities, source_hosts=source_hosts and not source_pools,
            mesh_size=mesh_size,
        )  # fmt: skip
        if port and port + n - 1 > 65535:
            raise ValueError(f"ports {port}..{port + n - 1} exceed 65535")
        shares = mesh_shards(members, shards)
        self.pools = list(source_pools)
        if self.pools:
            shares = assign_source_hosts(shares, self.pools, allow_remote=allow_remote_controller)
        elif not source_hosts and n > ephemeral_ports():
            raise CyncError(
                f"{n} devices dialling from one address exceed its {ephemeral_ports()} "
                "ephemeral ports: keep the source addresses (or give --source-cidr pools)",
                reason="usage",
            )
        self.shares = shares
        self.members = [m for share in shares for m in share]
        self.allow_remote_controller = allow_remote_controller
        self.address = address
        self._opts = _Options(
            None, seed, time_scale, chaos_config, None, host, port, spread, mesh_relay,
            firmware_version, variant, concurrency, log_level, allow_remote_controller,
        )  # fmt: skip
        self.shards = [
            _Shard(k, share, None if record is None else str(shard_record_path(record, k)))
            for k, share in enumerate(shares)
        ]
        self.restart_shards = restart_shards
        self.on_event = on_event
        self.events: list[str] = []
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self._ray: Any = None
        self._remote: Any = None
        self._dial: _Dial | None = None
        self._owns_runtime = False
        self._started = False
        self._stopping = False
        self._stopped = False

    def __len__(self) -> int:
        return len(self.members)

    # ------------------------------------------------------------------ lifecycle
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
        if not self.allow_remote_controller:
            check_loopback(host)
        await self._launch(_Dial(host, port, tls, verify, cafile, server_hostname, timeout))

    async def _launch(self, dial: _Dial | None) -> None:
        if self._started:
            raise CyncError("ray fleet already started", reason="already_started")
        self._started = True
        self._dial = dial
        self._ray = ray = import_ray()
        if not ray.is_initialized():
            self._init_runtime(ray)
        self._remote = ray.remote(ShardActor)
        tasks = [asyncio.ensure_future(self._start_shard(s)) for s in self.shards]
        try:  # (a cancelled start leaves the actors to stop())
            _, pending = await asyncio.wait(tasks, timeout=self.startup_timeout)
        finally:
            for task in tasks:
                task.cancel()
        if pending:
            await self.stop()
            raise CyncError(
                f"ray shards not ready within {self.startup_timeout} s", reason="timeout"
            )
        failed = [s for s in self.shards if s.lines is None]
        if failed:
            await self.stop()
            s = failed[0]
            message, reason = s.error or ("did not start", "shard_failed")
            raise CyncError(f"fleet shard {s.number}: {message}", reason=reason)
        for s in self.shards:
            s.watcher = asyncio.ensure_future(self._watch(s))

    def _init_runtime(self, ray: Any) -> None:
        """Connect to ``address`` or start a local runtime; ray.init replaces the SIGTERM
        handler of the main thread, so the one in force before is put back."""
        previous = signal.getsignal(signal.SIGTERM)
        quiet = {"include_dashboard": False, "logging_level": logging.ERROR,
                 "configure_logging": True, "log_to_driver": True}  # fmt: skip
        if self.address is not None:
            ray.init(address=self.address, **quiet)
        else:
            pools = {POOL_RESOURCE.format(p): len(self.shards) for p in range(len(self.pools))}
            ray.init(num_cpus=len(self.shards), resources=pools, **quiet)
            self._owns_runtime = True
        if threading.current_thread() is threading.main_thread() and previous is not None:
            signal.signal(signal.SIGTERM, previous)

    async def _start_shard(self, shard: _Shard) -> bool:
        opts = replace(self._opts, record=shard.record)
        if opts.port:
            opts = replace(opts, port=opts.port + shard.members[0].index)
        options: dict[str, Any] = {"num_cpus": 1, "max_concurrency": 64}
        if len(self.pools) > 1:
            options["resources"] = {POOL_RESOURCE.format(shard.number % len(self.pools)): 1}
        shard.actor = self._remote.options(**options).remote(
            shard.number, shard.members, opts, self.model
        )
        shard.lines, shard.error = None, None
        try:
            reply: dict[str, Any] = await shard.actor.start.remote(self._dial)
        except Exception as exc:  # the actor died or could not be created
            shard.error = (f"{type(exc).__name__}: {exc}", "shard_failed")
            return False
        if "error" in reply:
            shard.error = (str(reply["error"]), str(reply["reason"]))
            return False
        shard.lines, shard.node, shard.pid = list(reply["lines"]), reply["node"], reply["pid"]
        return True

    async def _watch(self, shard: _Shard) -> None:
        """Wait on the shard's liveness probe; report its death, restart it if asked."""
        while True:
            try:
                await shard.actor.wait_stopped.remote()
                return  # stopped by stop()
            except Exception as exc:  # RayActorError and kin: the actor is gone
                if self._stopping:
                    return
                why = type(exc).__name__
            shard.dead = True
            if shard.stats is not None:
                shard.past = _history(shard.past, shard.stats)
            shard.stats = None
            self._event(f"shard {shard.number} died ({why}): {len(shard.members)} devices lost")
            if not self.restart_shards:
                return
            shard.restarts += 1
            with contextlib.suppress(Exception):
                self._ray.kill(shard.actor)
            if not await self._start_shard(shard):
                message = shard.error[0] if shard.error else "did not start"
                self._event(f"shard {shard.number} did not restart: {message}")
                return
            shard.dead = False
            self._event(f"shard {shard.number} restarted: {len(shard.members)} devices back")

    def _event(self, line: str) -> None:
        self.events.append(line)
        if self.on_event is not None:
            self.on_event(line)
        else:
            logger.warning("%s", line)

    async def stop(self) -> None:
        """Stop every live shard (its final counters), end the actors, and the local runtime
        when this fleet started it; safe twice."""
        if self._stopped:
            return
        self._stopped = self._stopping = True
        live = [s for s in self.shards if s.actor is not None and not s.dead]
        results = await asyncio.gather(
            *(asyncio.wait_for(s.actor.stop.remote(), self.stop_timeout) for s in live),
            return_exceptions=True,
        )
        for s, result in zip(live, results, strict=True):
            if isinstance(result, RunStats):
                s.stats = result
            else:
                logger.warning("shard %d did not stop cleanly: %r", s.number, result)
        for s in self.shards:
            if s.watcher is not None:
                s.watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await s.watcher
            if s.actor is not None:
                with contextlib.suppress(Exception):
                    self._ray.kill(s.actor)
        if self._owns_runtime:
            self._ray.shutdown()
            self._owns_runtime = False

    # ------------------------------------------------------------------ views
    def lines(self) -> list[str]:
        return [line for s in self.shards for line in s.lines or ()]

    def lost_devices(self) -> int:
        """Devices of shards that died and were not brought back."""
        return sum(len(s.members) for s in self.shards if s.dead)

    def record_paths(self) -> list[tuple[str, str]]:
        """(file, node address) per recording shard."""
        return [(s.record, s.node) for s in self.shards if s.record is not None]

    def shard_stats(self) -> list[RunStats]:
        """Each shard's counters as last fetched (earlier incarnations included)."""
        out = []
        for s in self.shards:
            stats = RunStats.merged([p for p in (s.past, s.stats) if p is not None])
            if s.stats is None and s.lines is not None and not s.dead:
                stats.devices = len(s.lines)
            out.append(stats)
        return out

    def stats(self) -> RunStats:
        """The shards' counters and histograms merged (final once stopped)."""
        return RunStats.merged(self.shard_stats())

    async def refresh_stats(self, timeout: float = 2.0) -> RunStats:  # noqa: ASYNC109
        """Ask every live shard for its current counters."""
        live = [s for s in self.shards if s.actor is not None and not s.dead and not self._stopped]
        results = await asyncio.gather(
            *(asyncio.wait_for(s.actor.stats.remote(), timeout) for s in live),
            return_exceptions=True,
        )
        for s, result in zip(live, results, strict=True):
            if isinstance(result, RunStats) and not s.dead:
                s.stats = result
        return self.stats()

    async def usage(self) -> list[dict[str, Any]]:
        """Per live shard: pid, node, resident bytes and fds now and before its fleet."""
        live = [s for s in self.shards if s.actor is not None and not s.dead]
        got = await asyncio.gather(*(s.actor.usage.remote() for s in live))
        return [{"shard": s.number, "node": s.node, **u} for s, u in zip(live, got, strict=True)]

    async def heartbeat_errors(self, idle: float, window: float) -> list[float]:
        """Heartbeat timing errors (s) seen inside every live shard over ``window`` s."""
        live = [s for s in self.shards if s.actor is not None and not s.dead]
        got = await asyncio.gather(*(s.actor.heartbeat_errors.remote(idle, window) for s in live))
        return [e for errors in got for e in errors]


async def ray_fleet_row(
    devices: int,
    shards: int,
    port: int,
    *,
    idle: float,
    time_scale: float,
    warmup: float,
    window: float,
    host: str = "127.0.0.1",
    seed: int = 41,
    address: str | None = None,
) -> dict[str, Any]:
    """One bench row: a RayFleet of ``devices`` over ``shards`` actors dials host:port,
    settles ``warmup`` s, then for ``window`` s every shard times its heartbeats (the gap
    before each 0xD3 minus ``idle``, the learned idle time at this time scale).  Memory and
    fds per device are the actors' growth since before their fleets were built (driver: this
    process's growth)."""
    import time

    from cyncsim.simulator.fleet._ray_shard import _rss_fds

    import_ray()  # the driver's growth then counts the Ray runtime client and the members
    rss0 = _rss_fds()[0]
    fleet = RayFleet(devices, shards, seed=seed, time_scale=time_scale, address=address)
    began = time.perf_counter()
    try:
        await fleet.connect(host, port, timeout=120.0)
        connect_s = time.perf_counter() - began
        await asyncio.sleep(warmup)
        before = await fleet.usage()
        driver = _rss_fds()[0] - rss0
        t0 = time.perf_counter()
        errors = sorted(await fleet.heartbeat_errors(idle, window))
        t1 = time.perf_counter()
        after = await fleet.usage()
        stats = await fleet.refresh_stats()
    finally:
        await fleet.stop()
    grown = sum(u["rss"] - u["rss0"] for u in before)
    cpu = sum(a["cpu"] - b["cpu"] for a, b in zip(after, before, strict=True)) / (t1 - t0)

    def q(p: float) -> float | None:
        return errors[min(len(errors) - 1, int(p * len(errors)))] * 1e3 if errors else None

    return {
        "name": f"ray {shards} shards",
        "engine": "ray",
        "devices": devices,
        "processes": shards,
        "connected": stats.connected,
        "connect_s": connect_s,
        "rss_mb": sum(u["rss"] for u in before) / 2**20,
        "kib_per_device": grown / devices / 1024,
        "driver_mb": driver / 2**20,
        "driver_kib_per_device": driver / devices / 1024,
        "fds_per_device": sum(u["fds"] - u["fds0"] for u in before) / devices,
        "heartbeats": len(errors),
        "hb_err_p50_ms": q(0.5),
        "hb_err_p99_ms": q(0.99),
        "hb_err_max_ms": errors[-1] * 1e3 if errors else None,
        "hb_err_min_ms": errors[0] * 1e3 if errors else None,
        "cpu": cpu,
        "heartbeats_per_cpu_s": len(errors) / (t1 - t0) / cpu if cpu else None,
        "packets_in": stats.packets_in,
        "packets_out": stats.packets_out,
    }
