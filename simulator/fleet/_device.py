# A fleet's device and its mesh: commands for other nodes or groups pass between bridges.
#
# Strategy: the devices of one mesh share one node table (a dict of node -> DeviceState, so
# each bridge's mesh-info reply lists the whole mesh) and one Mesh object; a bridge's engine
# turns a command for another node or a group into a Relay action, which the Mesh delivers
# to the nodes it is for after ``delay`` s (the mesh hop), once per node and command within
# RELAY_WINDOW_S (a node that got the same command directly within that time does not apply
# it again).  A FleetDevice also counts the packets it reads and writes, and hands its
# connection the fleet's AnswerMeter (commands, answers, answer latency per request kind).
# Private module: import the public names from cyncsim.simulator.fleet.
from __future__ import annotations

import asyncio

from cyncsim.replay.chaos import ChaosConfig
from cyncsim.replay.engine import DeviceState, Relay
from cyncsim.replay.errors import CyncError
from cyncsim.replay.model import DeviceModel
from cyncsim.replay.payloads import GROUP_BASE, Command, decode_command
from cyncsim.replay.protocol import FramedPacket, decode_packet, exchange_key
from cyncsim.replay.stats import AnswerMeter
from cyncsim.simulator._connection import EngineConnection
from cyncsim.simulator.device import CyncDeviceSimulator
from cyncsim.simulator.fleet._members import FleetMember
from cyncsim.simulator.record import Recorder

__all__ = ["RELAY_DELAY_S", "RELAY_WINDOW_S", "FleetDevice", "Mesh", "command_of"]

RELAY_WINDOW_S = 2.0  # a command reaches each node of a mesh once within this time
RELAY_DELAY_S = 0.03  # default time a relayed command takes over the mesh


class Mesh:
    """One mesh: the node table its bridges share, and command relay between them."""

    __slots__ = ("delay", "devices", "limit", "number", "pending", "recent", "states")

    def __init__(self, number: int, delay: float) -> None:
        self.number = number
        self.delay = delay
        self.states: dict[int, DeviceState] = {}
        self.devices: dict[int, FleetDevice] = {}
        self.recent: dict[tuple[int, Command], float] = {}
        self.limit = 256
        self.pending: set[asyncio.TimerHandle] = set()

    def first_time(self, node: int, command: Command, now: float) -> bool:
        """True unless ``node`` got ``command`` within RELAY_WINDOW_S; notes it."""
        if len(self.recent) > self.limit:  # forget old entries, amortised
            self.recent = {k: t for k, t in self.recent.items() if now - t < RELAY_WINDOW_S}
            self.limit = max(256, 2 * len(self.recent))
        key = (node, command)
        seen = self.recent.get(key)
        self.recent[key] = now
        return seen is None or now - seen >= RELAY_WINDOW_S

    def relay(self, source: FleetDevice, command: Command) -> None:
        """Pass ``command`` on to the nodes it is for, ``delay`` s later (the mesh hop)."""
        loop = asyncio.get_running_loop()
        handle: asyncio.TimerHandle | None = None

        def arrive() -> None:
            assert handle is not None
            self.pending.discard(handle)
            self.deliver(source, command, loop.time())

        handle = loop.call_later(self.delay, arrive)
        self.pending.add(handle)

    def deliver(self, source: FleetDevice, command: Command, now: float) -> None:
        target = command.target
        if target >= GROUP_BASE:
            nodes = [d for d in self.devices.values() if d.handles(target)]
        else:
            dev = self.devices.get(target)
            nodes = [] if dev is None else [dev]
        for dev in nodes:
            if dev is not source and self.first_time(dev.member.mesh_node, command, now):
                dev.relayed(command, now)

    def cancel(self) -> None:
        for handle in self.pending:
            handle.cancel()
        self.pending.clear()


class FleetDevice(CyncDeviceSimulator):
    """A fleet's device: counts the packets it reads and writes and relays mesh commands."""

    def __init__(
        self,
        member: FleetMember,
        mesh: Mesh | None,
        *,
        host: str,
        port: int,
        model: DeviceModel,
        time_scale: float,
        chaos_config: ChaosConfig | None = None,
        firmware_version: str | None = None,
        variant: str | None = None,
        record: Recorder | None = None,
        meter: AnswerMeter | None = None,
        allow_remote: bool = False,
    ) -> None:
        super().__init__(
            member.device_id,
            host,
            port,
            firmware_version,
            chaos_config,
            model,
            member.seed,
            time_scale=time_scale,
            variant=variant,
            auth_code=member.auth_code,
            mesh_node=member.mesh_node,
            record=record,
            source_host=member.source_host,
            mesh=mesh.states if mesh is not None else None,
            allow_remote=allow_remote,
        )
        self.member = member
        self.mesh_group = mesh
        self.meter = meter
        self.packets_in = 0
        self.packets_out = 0
        if mesh is not None:
            mesh.devices[member.mesh_node] = self

    def connection_ready(self, conn: EngineConnection) -> bool:
        conn.observer = self._observe
        if self.meter is not None:
            conn.answered = self.meter.answered
        return super().connection_ready(conn)

    def _observe(self, way: str, data: bytes) -> None:
        if way == "out":
            self.packets_out += 1
            return
        self.packets_in += 1
        mesh = self.mesh_group
        if (
            mesh is not None
            and data[:1] == b"\x73"
            and exchange_key(data).startswith(self.device_id)
        ):
            command = command_of(data)
            if command is not None and self.handles(command.target):
                loop = asyncio.get_running_loop()
                mesh.first_time(self.member.mesh_node, command, loop.time())

    def handles(self, target: int) -> bool:
        """Whether a command for mesh address ``target`` is for this node (or its group)."""
        if target >= GROUP_BASE:
            return target - GROUP_BASE in self.engine.groups
        return target == self.member.mesh_node

    def relay(self, conn: EngineConnection, action: Relay) -> None:
        if self.mesh_group is not None:
            self.mesh_group.relay(self, action.command)
        super().relay(conn, action)

    def relayed(self, command: Command, now: float) -> None:
        """A command reached this node over the mesh: apply it and report, as on a bridge."""
        actions = self.engine.apply_command(command, now)
        conn = self.connection
        if conn is not None and actions:
            conn.apply(actions)


def command_of(data: bytes) -> Command | None:
    try:
        pkt = decode_packet(data, strict=False)
    except CyncError:
        return None
    frame = pkt.frame if isinstance(pkt, FramedPacket) else None
    return decode_command(frame) if frame is not None and frame.checksum_ok else None
