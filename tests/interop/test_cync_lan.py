# Interop with the real cync-lan controller (PyPI cync-lan 0.1.2, nCyncServer) over TLS on
# loopback: three devices dial it from their own source addresses 127.0.0.2-4, the server must
# register all three, and a command sent through the server's own API must reach the target
# device, change its state and come back as a state update the server publishes.
#
# Strategy: the server runs in its own Python 3.12 venv (tests/interop/cync_lan_harness.py);
# the tests skip with the reason when that venv, python3.12 or openssl is missing.  The first
# test drives the harness with a minimal device written here (asyncio TLS client built on the
# project's packet builders), so the harness is checked on its own; the second does the same
# with a fleet of CyncDeviceSimulator in dial mode and skips while simulator.device is absent.
from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from cyncsim.replay.framer import PacketFramer
from cyncsim.replay.payloads import (
    LightStateCommand,
    PowerCommand,
    StatusReport,
    build_control_answer,
    build_data_ack,
    build_hello,
    build_report,
    build_result,
    decode_command,
)
from cyncsim.replay.protocol import (
    AckPacket,
    CyncPacket,
    FramedPacket,
    FrameKind,
    IdPacket,
    InnerFrame,
    PacketType,
)
from tests.interop.cync_lan_harness import (
    CyncLanServer,
    InteropUnavailable,
    MeshNode,
    ServerSnapshot,
    SinkMessage,
    interop_python,
)

pytestmark = pytest.mark.interop

SOURCES = ("127.0.0.2", "127.0.0.3", "127.0.0.4")
NODE_IDS = (0x21, 0x22, 0x23)
DEVICE_IDS = (bytes.fromhex("3d5466a6"), bytes.fromhex("45880f3a"), bytes.fromhex("60b18e42"))
AUTH_CODES = (b"1e07d8ce0a617a37", b"1e07d8cdf549a466", b"1e07d2ccab5fda9a")
OLD_FIRMWARE_SUITES = ("AES256-SHA256", "AES256-SHA", "AES128-SHA256", "AES128-SHA")
MESH_TYPE = 137  # matches MeshNode's default device type in the cync-lan config
WAIT = 15.0  # generous upper bound for one step; each step takes 0.1-2.5 s


@pytest.fixture(scope="module")
def interop_py() -> Path:
    try:
        return interop_python()
    except InteropUnavailable as exc:
        pytest.skip(str(exc))


@pytest_asyncio.fixture
async def cync_lan(interop_py: Path, tmp_path: Path) -> AsyncIterator[CyncLanServer]:
    nodes = [MeshNode(n, f"interop bulb {n}") for n in NODE_IDS]
    try:
        server = CyncLanServer(tmp_path / "cync_lan", nodes, cmd_broadcasts=len(nodes))
        await server.start()
    except InteropUnavailable as exc:  # e.g. no openssl
        pytest.skip(str(exc))
    try:
        yield server
    finally:
        await server.stop()


# ------------------------------------------------------------------ the minimal test device


def _client_tls(old_firmware: bool) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # devices accept a self-signed server certificate
    if old_firmware:  # PROTOCOL.md section 1: 14 hellos offered only these static-RSA suites
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        ctx.set_ciphers(":".join(OLD_FIRMWARE_SUITES))
    return ctx


def _msg_id(counter: int) -> bytes:
    return counter.to_bytes(2, "big") + b"\0"


@dataclass
class MinimalDevice:
    """A device reduced to what cync-lan needs: hello, 0xAB, 0x7B + f9 for every 0x73, the
    mesh table for f8 52 (so cync-lan can tie the connection to its mesh id) and a 0x83
    ``fa db 13`` status after a command for its own node."""

    device_id: bytes
    auth_code: bytes
    node_id: int
    source_host: str
    old_firmware_tls: bool = False
    state: StatusReport = field(init=False)
    received: list[CyncPacket] = field(default_factory=list)
    commands: list[PowerCommand | LightStateCommand] = field(default_factory=list)
    reports: list[FramedPacket] = field(default_factory=list)
    cipher: str | None = None
    _data_ctr: int = 0
    _report_ctr: int = 0
    _writer: asyncio.StreamWriter | None = None
    _task: asyncio.Task[None] | None = None

    def __post_init__(self) -> None:
        self.state = StatusReport(self.node_id, False, 50, 20, (0, 0, 0))

    async def connect(self, host: str, port: int) -> None:
        reader, writer = await asyncio.open_connection(
            host, port, ssl=_client_tls(self.old_firmware_tls), local_addr=(self.source_host, 0)
        )
        self._writer = writer
        self.cipher = writer.get_extra_info("cipher")[0]
        writer.write(build_hello(self.device_id, self.auth_code).encode())
        await writer.drain()
        self._task = asyncio.create_task(self._read(reader, writer))

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError, ssl.SSLError):
                await self._writer.wait_closed()

    def of_type(self, ptype: int) -> list[CyncPacket]:
        return [p for p in self.received if p.type == ptype]

    async def _read(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        framer = PacketFramer()
        with contextlib.suppress(OSError, ssl.SSLError):
            while data := await reader.read(4096):
                for pkt in framer.feed(data):
                    self.received.append(pkt)
                    out = self._answer(pkt)
                    if out:
                        writer.write(b"".join(p.encode() for p in out))
                        await writer.drain()

    def _answer(self, pkt: CyncPacket) -> list[CyncPacket]:
        if pkt.type == PacketType.CONTROL and isinstance(pkt, IdPacket):
            return [build_control_answer(pkt)]
        if not (isinstance(pkt, FramedPacket) and pkt.frame is not None):
            return []  # 0x28, 0x78, 0x88, 0x48: nothing to answer
        frame = pkt.frame
        out: list[CyncPacket] = [build_data_ack(pkt)]
        if frame.kind != FrameKind.REQUEST:
            return out
        self._data_ctr += 1
        out.append(build_result(self.device_id, _msg_id(self._data_ctr), frame))
        if frame.opcode == 0x52:  # mesh info: one table page listing this node only
            self._data_ctr += 1
            out.append(self._mesh_table(frame))
        command = decode_command(frame)
        if command is not None and command.target == self.node_id:
            self.commands.append(command)
            self.state = _apply(self.state, command)
            self._report_ctr += 1
            report = build_report(self.device_id, _msg_id(self._report_ctr), self.state)
            self.reports.append(report)
            out.append(report)
        return out

    def _mesh_table(self, request: InnerFrame) -> FramedPacket:
        s = self.state
        record = bytes(
            [s.node_id, 0, MESH_TYPE, 1, 0, 0, MESH_TYPE, 1, int(s.on), 0, 0, 0, s.brightness,
             0, 0, 0, s.color_temp, 0, 0, 0, *s.rgb, 0]
        )  # fmt: skip
        data = bytes([1, 0, 0, 0, 1, 0]) + record  # nodes in this page, total nodes, records
        frame = InnerFrame(request.seq, FrameKind.RESULT, 0x52, data)
        return FramedPacket(
            int(PacketType.DATA), device_id=self.device_id, msg_id=_msg_id(self._data_ctr),
            frame=frame,
        )  # fmt: skip


def _command_of(pkt: CyncPacket) -> PowerCommand | LightStateCommand | None:
    if isinstance(pkt, FramedPacket) and pkt.frame is not None:
        return decode_command(pkt.frame)
    return None


def _apply(old: StatusReport, cmd: PowerCommand | LightStateCommand) -> StatusReport:
    if isinstance(cmd, PowerCommand):
        return StatusReport(old.node_id, cmd.on, old.brightness, old.color_temp, old.rgb)
    bri = old.brightness if cmd.brightness == 0xFF else cmd.brightness
    ct = old.color_temp if cmd.color_temp == 0xFF else cmd.color_temp
    rgb = cmd.rgb if cmd.color_temp == 0xFE else old.rgb
    return StatusReport(old.node_id, old.on, bri, ct, rgb)


# --------------------------------------------------------------------------- shared checks


def _all_registered(snap: ServerSnapshot, identified: bool) -> bool:
    sessions = snap.open_sessions()
    return set(SOURCES) <= set(sessions) and all(
        sessions[ip].ready_to_control and (sessions[ip].node_id is not None or not identified)
        for ip in SOURCES
    )


def _state_update(node: int, **expect: int) -> Any:
    def check(m: SinkMessage) -> bool:
        p = m.payload
        return (
            m.kind == "state"
            and p["dev_id"] == node
            and p["from_pkt"] == "0x83"
            and all(p[k] == v for k, v in expect.items())
        )

    return check


async def _command_round_trip(
    server: CyncLanServer, node: int, action: str, value: int, expect: dict[str, int]
) -> SinkMessage:
    """Send one command through cync-lan; wait for its f9 callback and the parsed status."""
    mark = (await server.snapshot()).message_count
    sent_via = await server.command(node, action, value)
    assert sorted(sent_via) == sorted(SOURCES)  # CYNC_CMD_BROADCASTS = fleet size
    ack_kind = f"command_ack_{action}"
    ack = await server.wait_message(
        lambda m: m.kind == ack_kind and m.payload["dev_id"] == node, ack_kind, since=mark
    )
    assert ack.payload["value"] == value
    return await server.wait_message(
        _state_update(node, **expect), f"state update {expect} for node {node}", since=mark
    )


# ------------------------------------------------------------------------------------ tests


async def test_cync_lan_with_minimal_devices(cync_lan: CyncLanServer) -> None:
    devices = [
        MinimalDevice(dev_id, auth, node, src, old_firmware_tls=(i == 0))
        for i, (dev_id, auth, node, src) in enumerate(
            zip(DEVICE_IDS, AUTH_CODES, NODE_IDS, SOURCES, strict=True)
        )
    ]
    try:
        await asyncio.gather(*(d.connect(cync_lan.host, cync_lan.port) for d in devices))
        snap = await cync_lan.wait_snapshot(
            lambda s: _all_registered(s, identified=True), "three identified sessions", WAIT
        )
        sessions = snap.open_sessions()
        # Registered by source IP, with the 4-byte id of each hello and the mesh id of the
        # first mesh-table record.
        assert {ip: sessions[ip].device_id for ip in SOURCES} == dict(
            zip(SOURCES, DEVICE_IDS, strict=True)
        )
        assert {ip: sessions[ip].node_id for ip in SOURCES} == dict(
            zip(SOURCES, NODE_IDS, strict=True)
        )
        # The old-firmware device could only offer static-RSA CBC suites: cync-lan took one.
        assert devices[0].cipher in OLD_FIRMWARE_SUITES
        assert sessions[SOURCES[0]].cipher == devices[0].cipher
        # The connect sequence cync-lan sent to each device: 0x28, 0xA3 with the device's
        # id, then the mesh-info request f8 52.
        for d in devices:
            first = d.received[:3]
            assert [p.type for p in first] == [0x28, 0xA3, 0x73], d.received
            assert isinstance(first[1], IdPacket) and first[1].device_id == d.device_id
            assert isinstance(first[2], FramedPacket) and first[2].frame is not None
            assert (first[2].frame.kind, first[2].frame.opcode) == (FrameKind.REQUEST, 0x52)

        target, others = devices[1], (devices[0], devices[2])
        node = target.node_id
        on = await _command_round_trip(cync_lan, node, "power", 1, {"power": 1})
        assert target.state.on and target.commands[-1] == PowerCommand(
            target.commands[-1].ctr, node, True
        )
        assert on.payload["recently_seen"] == 1
        dim = await _command_round_trip(
            cync_lan, node, "brightness", 40, {"power": 1, "brightness": 40}
        )
        assert dim.seq > on.seq and target.state.brightness == 40
        off = await _command_round_trip(cync_lan, node, "power", 0, {"power": 0})
        assert off.payload["brightness"] == 40 and not target.state.on
        # cync-lan sent every command to all three bridges (CYNC_CMD_BROADCASTS = 3); the
        # ones for the target's mesh id never changed the other devices.
        for d in (*others, target):
            got = [_command_of(p) for p in d.of_type(PacketType.DATA)]
            assert [c.target for c in got if c is not None] == [node] * 3
        assert all(not d.commands and not d.state.on for d in others)
        # Every status report was acknowledged with a 0x88 echoing its message id.
        acked = {
            p.msg_id for p in target.of_type(PacketType.REPORT_ACK) if isinstance(p, AckPacket)
        }
        assert {r.msg_id for r in target.reports} <= acked
        # cync-lan's own view of the node agrees.
        final = await cync_lan.snapshot()
        (info,) = [n for n in final.nodes if n.node_id == node]
        assert info.online and info.relay_source == target.source_host
        assert (info.entities["0"]["power"], info.entities["0"]["brightness"]) == (0, 40)
    finally:
        await asyncio.gather(*(d.close() for d in devices))


async def test_cync_lan_with_simulated_fleet(cync_lan: CyncLanServer) -> None:
    device_mod = pytest.importorskip(
        "cyncsim.simulator.device",
        reason="simulator.device (CyncDeviceSimulator) is not written yet",
    )
    sims: Sequence[Any] = [
        device_mod.CyncDeviceSimulator(
            dev_id, mesh_node=node, source_host=src, seed=i, time_scale=0.1
        )
        for i, (dev_id, node, src) in enumerate(zip(DEVICE_IDS, NODE_IDS, SOURCES, strict=True))
    ]
    target, node, others = sims[1], NODE_IDS[1], (sims[0], sims[2])
    before = [(s.state.on, s.state.brightness, s.state.color_temp) for s in others]
    try:
        await asyncio.gather(*(s.connect(cync_lan.host, cync_lan.port, tls=True) for s in sims))
        snap = await cync_lan.wait_snapshot(
            lambda s: _all_registered(s, identified=False), "three registered sessions", WAIT
        )
        sessions = snap.open_sessions()
        assert {ip: sessions[ip].device_id for ip in SOURCES} == dict(
            zip(SOURCES, DEVICE_IDS, strict=True)
        )
        await _command_round_trip(cync_lan, node, "power", 1, {"power": 1})
        assert target.state.on is True
        await _command_round_trip(cync_lan, node, "brightness", 40, {"power": 1, "brightness": 40})
        assert target.state.brightness == 40
        await _command_round_trip(cync_lan, node, "power", 0, {"power": 0, "brightness": 40})
        assert target.state.on is False
        assert [(s.state.on, s.state.brightness, s.state.color_temp) for s in others] == before
        # Each simulated bridge's mesh table and firmware reports were understood too.
        snap = await cync_lan.wait_snapshot(
            lambda s: (
                _all_registered(s, identified=True)
                and all(s.open_sessions()[ip].version for ip in SOURCES)
            ),
            "three identified sessions with a firmware version",
            WAIT,
        )
        sessions = snap.open_sessions()
        assert {ip: sessions[ip].node_id for ip in SOURCES} == dict(
            zip(SOURCES, NODE_IDS, strict=True)
        )
    finally:
        await asyncio.gather(*(s.stop() for s in sims), return_exceptions=True)
