# CyncFleet: many simulated devices in one process.
#
# Strategy: a fleet is a list of FleetMember identities (fleet/_members.py: who each device
# is, drawn from one seed) plus one FleetDevice (fleet/_device.py) per member; nothing runs
# per device but its connection's own timer, so an idle device costs about 20 KiB and no
# task.  Dial-mode devices each bind their own loopback source address (127.0.0.2, ...,
# 127.0.0.254, 127.0.1.1, ...; Linux routes all of 127.0.0.0/8 to lo).  Starting, dialling
# and stopping run with a concurrency bound; stop() closes everything and is safe twice.
# Devices of one mesh share one Mesh (node table and command relay).  One recorder file
# serves the whole fleet, and one AnswerMeter counts the commands and answers of all its
# devices (stats(): a replay.stats.RunStats, mergeable with other fleets').  FleetWorkers
# (fleet/_workers.py) runs shares of one fleet in spawned processes, each a CyncFleet.
# Private module: import the public names from cyncsim.simulator.fleet.
from __future__ import annotations

import asyncio
import logging
import resource
import ssl
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Self

from cyncsim.replay.capture.model import Sender
from cyncsim.replay.chaos import ChaosConfig
from cyncsim.replay.errors import CyncError
from cyncsim.replay.model import DeviceModel
from cyncsim.replay.seeds import draw_root
from cyncsim.replay.stats import AnswerMeter, RunStats
from cyncsim.simulator._base import default_model
from cyncsim.simulator.device import device_ssl_context
from cyncsim.simulator.fleet._device import RELAY_DELAY_S, FleetDevice, Mesh
from cyncsim.simulator.fleet._members import (
    MESH_NODES,
    FleetMember,
    Identities,
    format_address,
    generate_members,
)
from cyncsim.simulator.ports import check_loopback, default_port
from cyncsim.simulator.record import ConnectionRecord, Recorder

__all__ = ["CyncFleet", "raise_fd_limit"]

logger = logging.getLogger("cyncsim.fleet")
SLOW_LISTENERS = 6000  # port-0 binds on one address get slow beyond about this many


class _FleetRecording(Recorder):
    """The devices' handle on the fleet's recorder: the fleet opens and closes the file."""

    def __init__(self, shared: Recorder) -> None:
        super().__init__(shared.path)
        self.shared = shared

    @property
    def is_open(self) -> bool:
        return self.shared.is_open

    def open(self) -> None:
        """The fleet opens the file."""

    def close(self) -> None:
        """The fleet closes the file when every device is stopped."""

    def connection(
        self,
        *,
        ours: Sender,
        local: tuple[str, int],
        peer: tuple[str, int],
        we_dialled: bool,
        ts: float,
    ) -> ConnectionRecord | None:
        return self.shared.connection(
            ours=ours, local=local, peer=peer, we_dialled=we_dialled, ts=ts
        )


async def _bounded(
    devices: Sequence[FleetDevice], step: Callable[[FleetDevice], Awaitable[None]], limit: int
) -> None:
    """Run ``step`` for every device, at most ``limit`` at a time: ``limit`` runners share
    one iterator (no semaphore: its wake-ups cost O(waiters) each on Python 3.11)."""
    todo = iter(devices)

    async def runner() -> None:
        for dev in todo:
            await step(dev)

    await asyncio.gather(*(runner() for _ in range(min(limit, len(devices)))))


def raise_fd_limit(needed: int) -> int:
    """Raise the soft RLIMIT_NOFILE towards ``needed``; returns the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        new = needed if hard == resource.RLIM_INFINITY else min(hard, needed)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        soft = new
    return soft


class CyncFleet:
    """``n`` simulated devices in this process, listening (``start()``) or dialling one
    controller (``connect(host, port)``).

    ``identities``, ``source_hosts``, ``mesh_size``: see generate_members (or pass
    ``members``; ``n`` is then ignored).  ``seed`` (None: drawn and logged) gives the
    identities and every device's own seed.  ``port``: listen port of device 0, device i on
    port + i (0: each any free port, or CYNC_SIM_PORT + i).  ``spread``: each device
    listens on its own source address instead of ``host`` (Linux slows down handing out
    free ports on one address beyond about 7,000 listeners).  ``record``: one file (pcapng,
    or MITM text for .txt) for all devices.  ``mesh_relay``: devices of one mesh pass
    commands for other nodes (and groups) to them after ``relay_delay_s``; a node that got
    the same command directly (or by another relay) within RELAY_WINDOW_S does not apply
    it again.  ``concurrency``: how many devices start, dial or stop at once.  When
    ``start()`` or ``connect()`` fails for some devices, the others keep running until
    ``stop()``.
    """

    def __init__(
        self,
        n: int = 1,
        *,
        model: DeviceModel | None = None,
        seed: int | None = None,
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
        relay_delay_s: float = RELAY_DELAY_S,
        firmware_version: str | None = None,
        variant: str | None = None,
        members: Sequence[FleetMember] | None = None,
        concurrency: int = 256,
        allow_remote: bool = False,
    ) -> None:
        check_loopback(host)  # where the devices listen: always loopback
        self.allow_remote = allow_remote  # the opt-in to dial a controller beyond loopback
        if concurrency < 1:
            raise ValueError(f"concurrency={concurrency} must be >= 1")
        if not relay_delay_s >= 0:
            raise ValueError(f"relay_delay_s={relay_delay_s} must be >= 0")
        if seed is None:
            seed = draw_root("fleet")
        self.seed = seed
        self.model = model if model is not None else default_model()
        if members is None:
            members = generate_members(
                n,
                model=self.model,
                seed=seed,
                identities=identities,
                source_hosts=source_hosts,
                mesh_size=mesh_size,
            )
        self.members = list(members)
        if not self.members:
            raise ValueError("a fleet needs at least one device")
        base = port or default_port()
        if base and base + len(self.members) - 1 > 65535:
            raise ValueError(f"ports {base}..{base + len(self.members) - 1} exceed 65535")
        self.host = host
        self.concurrency = concurrency
        self.recorder = Recorder(record) if record is not None else None
        handle = _FleetRecording(self.recorder) if self.recorder is not None else None
        self.meshes: dict[int, Mesh] = {}
        self.meter = AnswerMeter()
        self.devices: list[FleetDevice] = []
        for m in self.members:
            mesh = self.meshes.get(m.mesh) if mesh_relay else None
            if mesh_relay and mesh is None:
                mesh = self.meshes[m.mesh] = Mesh(m.mesh, relay_delay_s)
            self.devices.append(
                FleetDevice(
                    m,
                    mesh,
                    host=m.source_host if spread and m.source_host else host,
                    port=base + m.index - self.members[0].index if base else 0,
                    firmware_version=firmware_version,
                    chaos_config=chaos_config,
                    model=self.model,
                    time_scale=time_scale,
                    variant=variant,
                    record=handle,
                    meter=self.meter,
                    allow_remote=allow_remote,
                )
            )
        self.dial_target: tuple[str, int] | None = None
        self.running = False

    def __len__(self) -> int:
        return len(self.devices)

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Every device listens on its own port (``device.port``)."""
        hosts = {d.host for d in self.devices}
        if len(self.devices) > SLOW_LISTENERS and len(hosts) == 1 and not self.devices[0].port:
            logger.warning(
                "fleet: %d devices listening on %s: Linux finds free ports slowly beyond "
                "about %d on one address; spread=True (--spread) gives each its own address",
                len(self.devices), self.host, SLOW_LISTENERS,
            )  # fmt: skip
        self._begin(2)
        await self._each(lambda d: d.start(), "start")

    async def connect(
        self,
        host: str,
        port: int,
        tls: bool | ssl.SSLContext = False,
        *,
        verify: bool = False,
        cafile: str | None = None,
        server_hostname: str | None = None,
        timeout: float = 10.0,  # noqa: ASYNC109
    ) -> None:
        """Every device dials host:port (each from its source address) and keeps dialling
        when the link drops.  CyncError(reason="connect_failed") names how many devices
        got no connection within ``timeout`` s; the others stay connected."""
        if not self.allow_remote:
            check_loopback(host)
        ctx = device_ssl_context(verify=verify, cafile=cafile) if tls is True else tls
        self._begin(1)
        self.dial_target = (host, port)
        await self._each(
            lambda d: d.connect(host, port, ctx, server_hostname, wait=True, timeout=timeout),
            f"connect to {format_address(host, port)}",
        )

    def _begin(self, fds_per_device: int) -> None:
        raise_fd_limit(len(self.devices) * fds_per_device + 256)
        if self.recorder is not None:
            self.recorder.open()
        self.running = True

    async def _each(self, step: Callable[[FleetDevice], Awaitable[None]], what: str) -> None:
        failed: list[tuple[FleetDevice, BaseException]] = []

        async def one(dev: FleetDevice) -> None:
            try:
                await step(dev)
            except (CyncError, OSError) as exc:
                failed.append((dev, exc))

        await _bounded(self.devices, one, self.concurrency)
        if failed:
            dev, exc = failed[0]
            first = str(exc) if dev.device_id.hex() in str(exc) else f"{dev.name}: {exc}"
            raise CyncError(
                f"fleet: {len(failed)} of {len(self.devices)} devices failed to {what}; "
                f"first: {first}",
                reason="connect_failed" if what.startswith("connect") else "start_failed",
            )

    async def stop(self) -> None:
        """Stop every device (closing listeners and connections), then the recording;
        safe twice; leaves no task or socket behind."""

        async def one(dev: FleetDevice) -> None:
            try:
                await dev.stop()
            except Exception:  # one device's trouble must not keep the others running
                logger.exception("fleet: %s did not stop cleanly", dev.name)

        await _bounded(self.devices, one, max(self.concurrency, 1024))
        for mesh in self.meshes.values():
            mesh.cancel()
        self.running = False
        if self.recorder is not None:
            self.recorder.close()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ------------------------------------------------------------------ views
    def device(self, device_id: bytes) -> FleetDevice | None:
        return next((d for d in self.devices if d.device_id == device_id), None)

    def stats(self) -> RunStats:
        """What the fleet did so far (a snapshot: later traffic does not change it)."""
        out = RunStats(devices=len(self.devices))
        self.meter.add_to(out)
        for d in self.devices:
            out.connected += d.connected
            out.connections += d.connections
            out.connect_failures += d.connect_failures
            out.packets_in += d.packets_in
            out.packets_out += d.packets_out
            if d.chaos_policy is not None:
                for kind, n in d.chaos_policy.fault_counts().items():
                    out.faults[kind] = out.faults.get(kind, 0) + n
        return out

    def lines(self) -> list[str]:
        """One line per device: id, auth code, mesh node, and where it listens or dials."""
        return [self.line(d) for d in self.devices]

    def line(self, dev: FleetDevice) -> str:
        m = dev.member
        head = f"device {m.device_id.hex()} auth {m.auth_code.decode()} node {m.mesh_node}"
        if self.dial_target is None:
            return f"{head} listen {format_address(dev.host, dev.port)}"
        conn = dev.connection
        src = format_address(*conn.local) if conn is not None else m.source_host or "-"
        return f"{head} dial {src} -> {format_address(*self.dial_target)}"
