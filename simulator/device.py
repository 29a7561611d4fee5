# CyncDeviceSimulator: one simulated Cync device on real sockets, listening or dialling.
#
# Strategy: all protocol behaviour is the pure DeviceEngine (replay/engine.py) built from a
# learned model; this module only moves bytes and time.  Listen mode: a TCP server, and the
# device speaks first (0x23) to whoever connects.  Dial mode: ``connect()`` dials a
# controller (plain or TLS offering the static-RSA suites of old firmware, PROTOCOL.md
# section 1), runs the connect sequence and dials again whenever the connection drops: about
# 0.25 s after a close, and after a failed dial at a draw from the learned spread of
# connection starts (the reconnect wave; replay/engine/_reconnect.py).  One connection is
# active at a time: a new one replaces the old.
# No task per device: each connection is a BufferedProtocol with one loop timer; a dial
# attempt is a short task that ends when the TCP (and TLS) handshake does.
#
# Public API: CyncDeviceSimulator, DeviceState, device_ssl_context, DEFAULT_FIRMWARE,
# DEVICE_MAX_PACKET.
# Extension points (for fleets): ``sim.engine`` is the DeviceEngine (state, counters,
# groups, ``apply_command`` for a command relayed over the mesh); ``on_relay`` (or a subclass
# overriding ``relay``) receives Relay actions for commands addressed to other nodes or to
# groups; ``connection_ready`` / ``connection_gone`` are the per-connection hooks; and
# ``sim.connection`` (an EngineConnection) takes extra actions with ``apply(actions)`` and
# reports every packet to its ``observer(way, bytes)`` when one is set.  Pass one shared
# ``mesh`` dict of node -> DeviceState to devices of one mesh, and one Recorder to several.
from __future__ import annotations

import asyncio
import hashlib
import logging
import ssl
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from cyncsim.replay.chaos import ChaosConfig, Direction
from cyncsim.replay.engine import DeviceEngine, DeviceState, Relay, Send
from cyncsim.replay.errors import CyncError
from cyncsim.replay.model import DeviceIdentity, DeviceModel
from cyncsim.replay.seeds import SeedTree, draw_root
from cyncsim.simulator._base import SimulatorBase, default_model
from cyncsim.simulator._connection import EngineConnection
from cyncsim.simulator.ports import check_loopback
from cyncsim.simulator.record import Recorder

__all__ = [
    "DEFAULT_FIRMWARE",
    "DEVICE_MAX_PACKET",
    "CyncDeviceSimulator",
    "DeviceState",
    "device_ssl_context",
]

logger = logging.getLogger("cyncsim.device")
DEFAULT_FIRMWARE = "10052"  # device firmware digits reported by real bulbs (PROTOCOL.md 12)
# The longest packet a device takes in: the largest packet in every capture is 1,024 bytes
# (the 0xAB answer; a 1 KiB device buffer, PROTOCOL.md sections 1 and 3), and what a
# controller sends a device is far shorter (0x73 commands: 24-39 bytes).  A header claiming
# more cannot be a packet a device would hold: it is reported in one log line and skipped as
# noise, and framing resumes at the next plausible header, as for the stray bytes real devices
# survived without reconnecting (the MITM's malformed injections, PROTOCOL.md sections 2, 11).
DEVICE_MAX_PACKET = 1024
OLD_FIRMWARE_SUITES = "AES256-SHA256:AES256-SHA:AES128-SHA256:AES128-SHA"
_DEFAULT_CIPHERS = "ECDH+AESGCM:ECDH+CHACHA20:ECDH+AES:DHE+AES:!aNULL:!eNULL:!aDSS:!AESCCM"


def device_ssl_context(*, verify: bool = False, cafile: str | None = None) -> ssl.SSLContext:
    """A TLS 1.2 client context like old device firmware: the modern suites plus the four
    static-RSA AES-CBC suites (AES256-SHA256, AES256-SHA, AES128-SHA256, AES128-SHA);
    certificates are not checked unless ``verify`` (then against ``cafile`` or the system)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(f"{_DEFAULT_CIPHERS}:{OLD_FIRMWARE_SUITES}")
    if verify:
        ctx.check_hostname = True
        ctx.verify_mode = ssl.CERT_REQUIRED
        if cafile is not None:
            ctx.load_verify_locations(cafile)
        else:
            ctx.load_default_certs()
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _as_device_id(value: bytes | str | int) -> bytes:
    if isinstance(value, int):
        return value.to_bytes(4, "big")
    if isinstance(value, str):
        value = bytes.fromhex(value.replace(" ", ""))
    if len(value) != 4:
        raise ValueError(f"device id {value.hex()} is not 4 bytes")
    return bytes(value)


class CyncDeviceSimulator(SimulatorBase):
    """A simulated Cync device whose bytes and delays come from a learned model.

    ``device_id``: 4 bytes (or 8 hex digits, or an int).  ``model``: a DeviceModel (default:
    the shipped one); identity fields left None (auth code, mesh node, state, firmware) come
    from the model's record of this device id, else are derived from the id.  ``seed`` makes
    delays, behaviour and chaos reproducible (None: drawn and logged).  ``time_scale``
    multiplies every learned delay and cadence (0: no delays, no spontaneous traffic).
    ``record``: a file (pcapng, or MITM text for ``.txt``) receiving all traffic.
    ``source_host``: loopback address to dial from (127.0.0.2 ...).  Port 0 means
    CYNC_SIM_PORT if set, else any free port; a restart rebinds the same port.
    ``allow_remote``: the explicit opt-in (``serve --allow-remote-controller``) to dial a
    controller, and from a source address, outside loopback, for fleets over several machines;
    without it both must be loopback.
    """

    _ours = "device"

    def __init__(
        self,
        device_id: bytes | str | int,
        host: str = "127.0.0.1",
        port: int = 0,
        firmware_version: str | None = None,
        chaos_config: ChaosConfig | None = None,
        model: DeviceModel | None = None,
        seed: int | None = None,
        *,
        time_scale: float = 1.0,
        variant: str | None = None,
        auth_code: bytes | str | None = None,
        mesh_node: int | None = None,
        groups: Iterable[int] = (),
        record: str | Path | Recorder | None = None,
        source_host: str | None = None,
        state: DeviceState | None = None,
        mesh: dict[int, DeviceState] | None = None,
        hello_attempts: int | None = None,
        allow_remote: bool = False,
    ) -> None:
        dev = _as_device_id(device_id)
        if seed is None:
            seed = draw_root(f"device {dev.hex()}")
        super().__init__(
            host=host,
            port=port,
            seeds=SeedTree(seed),
            chaos_config=chaos_config,
            record=record,
            name=f"device/{dev.hex()}",
        )
        self.allow_remote = allow_remote
        if source_host is not None and not allow_remote:
            check_loopback(source_host)
        self.seed = seed
        self.model = model if model is not None else default_model()
        known = next((d for d in self.model.devices if d.device_id == dev), None)
        auth = auth_code if auth_code is not None else _auth_for(dev, known)
        auth_b = auth.encode("ascii") if isinstance(auth, str) else bytes(auth)
        firmware = dict(known.firmware) if known is not None and known.firmware else {}
        firmware.setdefault("network", "0")
        firmware["device"] = firmware_version or firmware.get("device", DEFAULT_FIRMWARE)
        self.engine = DeviceEngine(
            self.model,
            dev,
            auth_b,
            mesh_node=mesh_node if mesh_node is not None else _node_for(dev, known),
            state=state if state is not None else _state_for(known),
            groups=groups,
            mesh=mesh,
            firmware=firmware,
            variant=variant,
            seed=self.seeds,
            time_scale=time_scale,
            hello_attempts=hello_attempts,
        )
        self.source_host = source_host
        self.on_relay: Callable[[Relay], None] | None = None  # fleets: mesh relay hook
        self.connections = 0  # connections made over the simulator's life
        self.connect_failures = 0
        self.last_error: BaseException | None = None
        self._conn: EngineConnection | None = None
        self._connected = asyncio.Event()
        self._dial: tuple[str, int, ssl.SSLContext | None, str | None] | None = None
        self._dial_tasks: set[asyncio.Task[Any]] = set()
        self._redial: asyncio.TimerHandle | None = None

    # ------------------------------------------------------------------ properties
    @property
    def device_id(self) -> bytes:
        return self.engine.device_id

    @property
    def auth_code(self) -> bytes:
        return self.engine.auth_code

    @property
    def state(self) -> DeviceState:
        return self.engine.state

    @property
    def stats(self) -> dict[str, int]:
        return self.engine.stats

    @property
    def connected(self) -> bool:
        return self._conn is not None

    @property
    def handshaken(self) -> bool:
        """Connected and the controller answered the 0x23 with 0x28."""
        return self._conn is not None and self.engine.acked

    @property
    def connection(self) -> EngineConnection | None:
        return self._conn

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Listen on host:port; the device sends its 0x23 to every controller that connects."""
        self.engine.wall_offset = time.time() - asyncio.get_running_loop().time()
        await self._listen(lambda: self._protocol(False))

    async def connect(
        self,
        host: str,
        port: int,
        tls: bool | ssl.SSLContext = False,
        server_hostname: str | None = None,
        *,
        verify: bool = False,
        wait: bool = True,
        timeout: float = 10.0,  # noqa: ASYNC109
    ) -> None:
        """Dial a controller and keep dialling (learned back-off) whenever the link drops.

        ``tls``: True for device_ssl_context(verify=verify), or a context of your own.  With
        ``wait`` the call returns once connected; CyncError(reason="connect_failed") after
        ``timeout`` s (dialling then stops).
        """
        if not self.allow_remote:
            check_loopback(host)
        loop = self._begin()
        self.engine.wall_offset = time.time() - loop.time()
        ctx = device_ssl_context(verify=verify) if tls is True else (tls or None)
        self._dial = (host, port, ctx, server_hostname)
        self._dial_now()
        if not wait:
            return
        try:
            await asyncio.wait_for(self._connected.wait(), timeout)
        except TimeoutError:
            self._stop_hook()  # no more dialling, and no late connection either
            why = f" ({self.last_error})" if self.last_error is not None else ""
            raise CyncError(
                f"device {self.device_id.hex()}: no connection to {host}:{port} within "
                f"{timeout} s{why}",
                reason="connect_failed",
            ) from None

    async def wait_connected(self, timeout: float = 5.0) -> None:  # noqa: ASYNC109
        await self.wait_for(lambda: self.connected, timeout)

    async def wait_handshaken(self, timeout: float = 5.0) -> None:  # noqa: ASYNC109
        await self.wait_for(lambda: self.handshaken, timeout)

    def _stop_hook(self) -> None:
        self._dial = None
        if self._redial is not None:
            self._redial.cancel()
            self._redial = None
        for task in self._dial_tasks:
            task.cancel()

    async def _stop_tasks(self) -> None:
        if self._dial_tasks:
            await asyncio.gather(*self._dial_tasks, return_exceptions=True)
        self._dial_tasks.clear()
        self._conn = None
        self._connected.clear()

    # ------------------------------------------------------------------ dialling
    def _protocol(self, dialled: bool) -> EngineConnection:
        conn = EngineConnection(
            self,
            self.engine,
            inbound=Direction.TO_DEVICE,
            policy=self.chaos_policy,
            record=self._record_for(dialled),
            max_packet=DEVICE_MAX_PACKET,
        )
        conn.dialled = dialled
        return conn

    def _dial_now(self) -> None:
        self._redial = None
        if self._dial is None or not self.running or self._conn is not None:
            return
        loop = asyncio.get_running_loop()
        policy = self.chaos_policy
        if policy is not None and not policy.accepts_connection(loop.time()):
            self._schedule_redial(False)  # partitioned: the device cannot reach the controller
            return
        host, port, ctx, hostname = self._dial
        local = (self.source_host, 0) if self.source_host is not None else None
        coro = loop.create_connection(
            lambda: self._protocol(True),
            host,
            port,
            ssl=ctx,
            local_addr=local,
            server_hostname=(hostname or host) if ctx is not None else None,
            ssl_handshake_timeout=10.0 if ctx is not None else None,
        )
        task = loop.create_task(coro)
        self._dial_tasks.add(task)
        task.add_done_callback(self._dial_done)

    def _dial_done(self, task: asyncio.Task[Any]) -> None:
        self._dial_tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self.connect_failures += 1
            self.last_error = exc
            logger.debug("device %s: dial failed: %s", self.device_id.hex(), exc)
            self._schedule_redial(False)

    def _schedule_redial(self, closed: bool) -> None:
        """Dial again: ``closed`` soon after the controller closed a connection, else (the
        dial failed) after a draw from the learned reconnect wave (DeviceEngine)."""
        if self._dial is None or not self.running or self._redial is not None:
            return
        delay = self.engine.reconnect_delay() if closed else self.engine.retry_delay()
        self._redial = asyncio.get_running_loop().call_later(delay, self._dial_now)

    # ------------------------------------------------------------------ owner hooks
    def connection_ready(self, conn: EngineConnection) -> bool:
        if not self.running or (conn.dialled and self._dial is None):
            return False
        old, self._conn = self._conn, conn
        if old is not None:
            old.active = False  # the engine moves to the new connection
            old.close()
        self.connections += 1
        self._connected.set()
        return True

    def connection_gone(self, conn: EngineConnection, exc: Exception | None, active: bool) -> None:
        super().connection_gone(conn, exc, active)
        if conn is not self._conn:
            return
        self._conn = None
        self._connected.clear()
        self.engine.connection_lost(asyncio.get_running_loop().time())
        self._schedule_redial(True)

    def relay(self, conn: EngineConnection, action: Relay) -> None:
        if self.on_relay is not None:
            self.on_relay(action)

    # ------------------------------------------------------------------ state
    def set_state(
        self,
        *,
        on: bool | None = None,
        brightness: int | None = None,
        color_temp: int | None = None,
        rgb: tuple[int, int, int] | None = None,
        online: bool | None = None,
    ) -> bool:
        """Change state as the physical switch would; True when a 0x83 report went out."""
        now = asyncio.get_running_loop().time()
        actions = self.engine.set_state(
            now, on=on, brightness=brightness, color_temp=color_temp, rgb=rgb, online=online
        )
        return self._push(actions)

    def send_status_broadcast(self) -> bool:
        """Push a 0x83 with the current state; False when not connected."""
        return self._push(self.engine.status_broadcast(asyncio.get_running_loop().time()))

    def send_raw(self, data: bytes) -> bool:
        """Write ``data`` as it is, not from a template: for testing how a controller copes
        with malformed or foreign bytes.  Goes through chaos like any packet; False when not
        connected."""
        return self._push([Send(asyncio.get_running_loop().time(), bytes(data), "raw")])

    def _push(self, actions: list[Any]) -> bool:
        conn = self._conn
        if conn is None or not actions:
            return False
        conn.apply(actions)
        return True


def _auth_for(dev: bytes, known: DeviceIdentity | None) -> bytes:
    if known is not None and len(known.auth_code) == 16:
        return known.auth_code
    # The shape of the captured codes: "1e07d" + 11 lower-case hex digits, stable per id.
    return b"1e07d" + hashlib.blake2b(dev, digest_size=8).hexdigest()[:11].encode("ascii")


def _node_for(dev: bytes, known: DeviceIdentity | None) -> int:
    if known is not None and known.mesh_node is not None:
        return known.mesh_node
    return dev[3] or 1


def _state_for(known: DeviceIdentity | None) -> DeviceState:
    s = known.state if known is not None else {}
    if not s:
        return DeviceState()
    rgb = (s.get("r", 255), s.get("g", 255), s.get("b", 255))
    return DeviceState(bool(s.get("on", 0)), s.get("brightness", 100), s.get("color_temp", 50), rgb)
