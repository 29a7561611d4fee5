# CyncCloudSimulator: a controller that simulated (or real) devices dial into, answering as
# the learned model's cloud did.
#
# Strategy: one pure CloudEngine per connection (replay/engine.py) answers device requests
# from the cloud role's learned templates and latencies (0x23->0x28, 0xD3->0xD8, 0x43->0x48,
# 0x83->0x88, 0xC3->0xC8 with the current time, 0x7B->0x78 where the model has it), in
# order; the I/O is the same EngineConnection the device simulator uses, with the chaos
# directions swapped (what the cloud reads is from_device).  Everything seen and sent is
# kept in ``seen`` as (wall time, sender, packet) for tests.
#
# Public API: CyncCloudSimulator, CloudLink.
from __future__ import annotations

import asyncio
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path

from cyncsim.replay.capture.model import CLOUD, DEVICE, Sender
from cyncsim.replay.chaos import ChaosConfig, Direction
from cyncsim.replay.engine import CloudEngine, ModelView, Relay, Send
from cyncsim.replay.errors import CyncError
from cyncsim.replay.model import DeviceModel
from cyncsim.replay.payloads import Command
from cyncsim.replay.protocol import CyncPacket, decode_packet
from cyncsim.replay.seeds import SeedTree, draw_root
from cyncsim.simulator._base import SimulatorBase, default_model
from cyncsim.simulator._connection import EngineConnection
from cyncsim.simulator.ports import check_loopback
from cyncsim.simulator.record import Recorder

__all__ = ["CloudLink", "CyncCloudSimulator"]


@dataclass(eq=False)
class CloudLink:
    """One device connection as the cloud sees it."""

    number: int
    engine: CloudEngine
    conn: EngineConnection
    opened: float
    closed: float | None = None
    packets: list[tuple[float, Sender, CyncPacket]] = field(default_factory=list)

    @property
    def device_id(self) -> bytes | None:
        return self.engine.device_id

    @property
    def open(self) -> bool:
        return self.closed is None


class CyncCloudSimulator(SimulatorBase):
    """A listening controller answering devices per the model's cloud role.

    ``tls``: a server SSLContext (devices then dial with TLS).  ``links`` lists every
    connection (open or closed); ``seen`` every packet in either direction as
    (wall time, "device" | "cloud", packet).  ``send_command`` writes an f8 command to a
    connected device.
    """

    _ours = "cloud"

    def __init__(
        self,
        model: DeviceModel | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        seed: int | None = None,
        time_scale: float = 1.0,
        tls: ssl.SSLContext | None = None,
        chaos_config: ChaosConfig | None = None,
        *,
        variant: str | None = None,
        record: str | Path | Recorder | None = None,
    ) -> None:
        if seed is None:
            seed = draw_root("cloud simulator")
        super().__init__(
            host=host,
            port=port,
            seeds=SeedTree(seed),
            chaos_config=chaos_config,
            record=record,
            name="cloud",
        )
        self.seed = seed
        self.model = model if model is not None else default_model()
        self.view = ModelView.get(self.model, "cloud", variant)
        self.time_scale = time_scale
        self.tls = tls
        self.links: list[CloudLink] = []
        self.seen: list[tuple[float, Sender, CyncPacket]] = []
        self.keep = SEEN_LIMIT  # packets kept in ``seen`` (and per link): the most recent
        self._by_conn: dict[EngineConnection, CloudLink] = {}
        self._made = 0

    async def start(self) -> None:
        await self._listen(self._protocol, self.tls)

    async def dial(
        self,
        host: str,
        port: int,
        tls: ssl.SSLContext | None = None,
        *,
        timeout: float = 10.0,  # noqa: ASYNC109
    ) -> None:
        """Dial a listening device (e.g. ``cyncsim serve``) instead of waiting for it: the
        connection is then served like an accepted one (a replay's controller side)."""
        check_loopback(host)
        loop = self._begin()
        coro = loop.create_connection(
            lambda: self._protocol(dialled=True),
            host,
            port,
            ssl=tls,
            server_hostname=host if tls is not None else None,
            ssl_handshake_timeout=timeout if tls is not None else None,
        )
        await asyncio.wait_for(coro, timeout)

    def _protocol(self, dialled: bool = False) -> EngineConnection:
        loop = asyncio.get_running_loop()
        self._made += 1
        n = self._made
        engine = CloudEngine(
            self.view,
            seed=self.seeds,
            name=f"cloud/{n}",
            time_scale=self.time_scale,
            wall_offset=time.time() - loop.time(),
        )
        conn = EngineConnection(
            self,
            engine,
            inbound=Direction.FROM_DEVICE,
            policy=self.chaos_policy,
            record=self._record_for(dialled),
        )
        conn.dialled = dialled
        conn.observer = lambda way, data: self._observe(conn, way, data)
        return conn

    # ------------------------------------------------------------------ owner hooks
    def connection_ready(self, conn: EngineConnection) -> bool:
        if not self.running:
            return False
        assert isinstance(conn.engine, CloudEngine)
        link = CloudLink(len(self.links) + 1, conn.engine, conn, time.time())
        self.links.append(link)
        self._by_conn[conn] = link
        return True

    def connection_gone(self, conn: EngineConnection, exc: Exception | None, active: bool) -> None:
        super().connection_gone(conn, exc, active)
        link = self._by_conn.pop(conn, None)
        if link is not None:
            link.closed = time.time()
            conn.engine.connection_lost(asyncio.get_running_loop().time())

    def relay(self, conn: EngineConnection, action: Relay) -> None:
        """Clouds do not relay."""

    def _observe(self, conn: EngineConnection, way: str, data: bytes) -> None:
        try:
            pkt = decode_packet(data, strict=False)
        except CyncError:
            return
        sender: Sender = DEVICE if way == "in" else CLOUD
        item = (time.time(), sender, pkt)
        _keep(self.seen, item, self.keep)
        link = self._by_conn.get(conn)
        if link is not None:
            _keep(link.packets, item, self.keep)

    # ------------------------------------------------------------------ queries / commands
    def link_for(self, device_id: bytes | None = None) -> CloudLink | None:
        """The newest open link (of ``device_id`` when given)."""
        for link in reversed(self.links):
            if link.open and (device_id is None or link.device_id == device_id):
                return link
        return None

    def received(self, ptype: int) -> list[CyncPacket]:
        """Packets of type ``ptype`` the devices sent, in order."""
        return [p for _, s, p in self.seen if s == DEVICE and p.type == ptype]

    def send_command(self, command: Command, device_id: bytes | None = None) -> bytes:
        """Write a 0x73 f8 command to the device's open link; returns the bytes sent."""
        link = self.link_for(device_id)
        if link is None:
            who = device_id.hex() if device_id else "any device"
            raise CyncError(f"no open connection from {who}", reason="not_connected")
        now = asyncio.get_running_loop().time()
        action = link.engine.command(command, now, device_id)
        link.conn.apply([action])
        return action.data

    def send_raw(self, data: bytes, device_id: bytes | None = None) -> None:
        """Write raw bytes to the device's open link (a 0x73 is remembered for its 0x7B)."""
        link = self.link_for(device_id)
        if link is None:
            raise CyncError("no open device connection", reason="not_connected")
        if data[:1] == b"\x73":
            link.engine.expect_ack(data)
        link.conn.apply([Send(asyncio.get_running_loop().time(), data, "raw")])


SEEN_LIMIT = 100_000


def _keep(items: list[tuple[float, Sender, CyncPacket]], item: tuple[float, Sender, CyncPacket],
          limit: int) -> None:  # fmt: skip
    """Append, dropping the oldest half when over ``limit``: a long run stays bounded."""
    items.append(item)
    if len(items) > limit:
        del items[: len(items) - limit // 2]
