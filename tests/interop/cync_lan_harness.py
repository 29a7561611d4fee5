# Harness for interop tests against the real cync-lan controller (PyPI ``cync-lan==0.1.2``).
#
# Strategy: cync-lan needs Python >= 3.12, the project runs on 3.11, so the server runs in its
# own virtual environment (.venv-interop, made by tools/interop_env.sh) as a subprocess running
# _cync_lan_runner.py.  The harness makes a self-signed RSA certificate with the openssl CLI,
# writes a minimal cync_mesh.yaml naming the mesh nodes, starts the runner on 127.0.0.1 (TLS,
# port 0), reads its one JSON "ready" line, and then talks to it over its control channel
# (JSON lines on 127.0.0.1): snapshot of what the server registered, the messages it published,
# commands sent through the server's own API.  The server's log goes to a file in the work
# directory.  When Python 3.12, the venv, cync-lan or openssl is missing, ``InteropUnavailable``
# says why (the tests turn it into a skip with that reason).
"""What cync-lan 0.1.2 does, read from its source (site-packages/cync_lan) and checked here.

Import and settings
    * ``devices.py`` reuses the outer quote inside two f-strings (line 510
      ``f"...{full_packet.hex(" ")}"`` and line 1470 in ``handle_entity_update``), a
      SyntaxError before Python 3.12, although the package metadata says
      ``Requires-Python >=3.9``.  Dependencies: pydantic 2, cryptography >= 46,
      aiohttp, pyyaml 6.0.2, tzlocal.
    * ``cync_lan.const`` reads at import: ``CYNC_SRV_HOST`` (default 0.0.0.0), ``CYNC_PORT``
      (default 23779; 0 works and binds a free port), ``CYNC_DEVICE_CERT`` /
      ``CYNC_DEVICE_KEY`` (default /root/cync-lan/certs/...; when either file is missing the
      server generates an RSA-4096 self-signed pair there itself), ``CYNC_MAX_TCP_CONN``
      (default 8), ``CYNC_CMD_BROADCASTS`` (default 2), ``CYNC_TCP_WHITELIST``,
      ``CYNC_RAW_DEBUG`` (packet hex in the log), ``CYNC_BASE_DIR`` / ``CYNC_CONFIG_DIR``
      and the experimental/unsupported log paths (files it may write).
      ``GlobalObject.reload_env()`` (called by ``nCyncServer.__init__``) re-reads host, cert,
      key and ``CYNC_TOPIC``.  The runner sets all of them before importing cync_lan.

Server object
    * ``nCyncServer(node_map)`` is a singleton; ``node_map`` is ``{mesh id: CyncDevice}``.
      ``await server.start()`` builds the SSL context, ``asyncio.start_server`` and then
      ``serve_forever`` (it never returns while serving, so it runs as a task; a bind error
      is logged and ``start()`` returns, hence the runner's "ready" check on
      ``server.running``).  ``await server.stop()`` closes every session and the server.
    * The consumer must set ``GlobalObject().ncync_server = server`` and
      ``GlobalObject().mqtt_client = sink`` itself: devices.py calls both through the
      GlobalObject singleton.
    * The sink is more than ``publish()``: cync_lan/protocols.py ``MqttSink`` lists the calls
      devices.py makes: ``publish(topic, payload)`` (connection counts, "tcp_server/running"),
      ``pub_online``, ``parse_entity_state`` (every parsed status), ``update_entity_power`` /
      ``update_brightness`` / ``update_temperature`` / ``update_rgb`` (the callback run when a
      command's f9 result arrives), ``add_mitm_button``, ``remove_mitm_button``,
      ``mark_app_mesh_active``, ``report_unknown_device_id``, ``get_startup_topic_state_sync``
      and a ``topic`` attribute.  The runner's RecordingSink implements all of them.

Mesh nodes (the config)
    * Status is only published for mesh ids in ``node_map``; a status for any other id is
      dropped as "unknown device [group/room?]".  Mesh ids must fit one byte (the command
      builder packs the target as ``B`` + a ``sub_id`` byte, i.e. LE16 with a zero high byte).
    * The node map comes from an exported cloud config: ``utils.parse_config(cync_mesh.yaml)``
      reads ``account data: {home name: {id, devices: {mesh id: {name, type, enabled, mac,
      wifi_mac, fw}}}}`` (mesh ids as integer keys).  ``write_mesh_config`` writes the minimal
      form; type 137 (Full Color A19 Bulb) is a plain single-entity light.
    * Nothing links a connection's 4-byte device id to a mesh id except the mesh-info reply:
      the first 24-byte record of the first ``f9 52`` table page sets ``session.node``.

TLS
    * ``ssl.create_default_context(Purpose.CLIENT_AUTH)`` with the chain loaded, no client
      verification, and ``set_ciphers`` of ECDHE-RSA AES-GCM/CBC, 3DES and the static-RSA
      suites AES256-GCM-SHA384, AES128-GCM-SHA256, AES256-SHA256, AES128-SHA256, AES256-SHA,
      AES128-SHA, DES-CBC3-SHA: the four static-RSA CBC suites of old firmware (PROTOCOL.md
      section 1) are accepted with an RSA certificate (checked by the minimal-device test).
      TLS 1.3 stays enabled (set_ciphers does not touch 1.3 suites).

Sessions ("registered")
    * ``_register_new_connection`` keys sessions by the peer IP in ``server.tcp_connections``
      and registers the connection as soon as it is accepted, before any packet; a second
      connection from the same IP replaces (closes) the first.  Hence one loopback source
      address per device.
    * ``CYNC_MAX_TCP_CONN`` is checked on the first device packet with
      ``len(tcp_connections) >= CYNC_MAX_TCP_CONN``; the session itself is already counted,
      so at most ``CYNC_MAX_TCP_CONN - 1`` devices are served (the N-th is black-holed for
      ``CYNC_TCP_BLACKHOLE_DELAY`` = 14.75 s and closed).  The harness sets it to fleet + 2.
    * After a 0x23 hello: queue_id = hello bytes 6-9; writes ``28 00 00 00 02 00 00``,
      sleeps 0.5 s, writes 0xA3 ``a3 00 00 00 07 | id | 2 random bytes 00`` and sets
      ``ready_to_control`` (whether or not the device answers 0xAB; the 0xAB is ignored),
      sleeps 1.5 s, writes the mesh-info request ``73 ... 00 00 00 7e 1f 00 00 00 f8 52 06 00
      00 00 ff ff 00 00 56 7e``.  These sleeps run inside the packet parser of that session,
      so the session reads nothing for 2 s after a hello (other sessions are unaffected).
    * Replies: 0x43 -> ``48 00 00 00 03 <bytes 9-10> 00`` (0x43 status entries are extracted
      but never published), 0x83 -> 0x88 echoing bytes 9-11, 0xC3 -> the fixed 2024-03-10
      0xC8, 0xD3 -> 0xD8, every device 0x73 -> ``78 00 00 00 07 | id | bytes 9-11``; after
      each ``f9 52`` table page it sends ``f8 af`` (``... 7e 1e 00 00 00 f8 af 02 00 af 01
      61 7e``).  0x7B, 0x78 and 0xAB are read and ignored.  No heartbeat watchdog for
      devices (connection_watcher_task returns at once unless the peer is the phone app).

Commands (the API the control channel drives)
    * ``CyncDevice.set_power(0|1)``, ``set_brightness(0-100)``, ``set_temperature(0-100)``,
      ``set_rgb(r, g, b)`` -> ``broadcast_control_command``: picks
      ``random.sample(pool, min(CYNC_CMD_BROADCASTS, len(pool)))`` of the open device
      sessions, skips (silently) those not ``ready_to_control``, and writes to each a 0x73
      ``73 00 00 LL LL | that bridge's 4-byte id | 00 00 00 | 7e ctr 00 00 00 f8 <op> <len>
      00 ctr 00 00 00 00 <mesh id> 00 <op> 11 02 ... <checksum> 7e`` with ``ctr`` that
      session's own command counter (1, 2, ...).  Power: op d0, data ``... d0 11 02 <state>
      00 00``; brightness/temperature/rgb: op f0 (PROTOCOL.md section 7.5).  cync-lan relies
      on the mesh to relay, so with several bridges set ``CYNC_CMD_BROADCASTS`` to the
      fleet size so the target's own connection always gets the command.
    * The device's ``f9 <op>`` result is matched on the inner sequence byte (``ctr``) and
      counts as success when its length byte is 1; the callback then calls
      ``update_entity_power`` (etc.) on the sink with the *commanded* value, once per bridge
      that answered (the same callback is stored on every session the command went to).
      The 0x7B is not needed for this.

Status parsing (what it publishes)
    * 0x83 (or 0x73) ``fa db 13``: mesh id = packet byte 26 (the second copy of the id),
      then connected/"recently seen", on, brightness, temperature, R, G, B = packet bytes
      31-37; published with ``parse_entity_state`` (from_pkt "0x83") after ``pub_online``
      when the node was offline.  The checksum is computed but not enforced.
    * ``f9 52`` mesh table (0x73 or 0x83): count = data byte 0, total = data byte 4, records
      of 24 bytes from data byte 6: [0] mesh id, [2] type, [8] on, [12] brightness,
      [16] temperature, [20-22] RGB -> ``parse_entity_state`` (from_pkt "0x73"; brightness
      forced to 0 when the node is off).  The table
      is cut at the first 0x7E after the frame start (no escaping in the protocol), so a
      0x7E inside it truncates the table.
    * 0x83 firmware reports (``00`` instead of the first 0x7E): version found by the
      ``86 01`` signature -> ``session.version_str`` / ``protocol_version_str`` (the raw
      digits, e.g. "10052").
    * Not published at all: 0x43 status entries, 0xC3 time requests, 0xD3 pings.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Self

from cyncsim.replay.errors import CyncError

__all__ = [
    "CYNC_LAN_VERSION",
    "CyncLanServer",
    "InteropError",
    "InteropUnavailable",
    "MeshNode",
    "ServerSnapshot",
    "SessionInfo",
    "SinkMessage",
    "interop_python",
    "make_self_signed_cert",
    "write_mesh_config",
]

CYNC_LAN_VERSION = "0.1.2"
REPO_ROOT = Path(__file__).resolve().parents[2]
RUNNER = Path(__file__).with_name("_cync_lan_runner.py")
VENV_ENV = "CYNCSIM_INTEROP_VENV"  # override of the venv location
STATUS_FILE = ".status"  # written by tools/interop_env.sh: "ok" or "skip: <reason>"
_LOG_TAIL_LINES = 60


class InteropUnavailable(CyncError):
    """The interop environment is missing (no Python 3.12, no venv, no openssl, ...)."""

    reason = "interop_unavailable"


class InteropError(CyncError):
    """The cync-lan server did something unexpected (exited, refused a request, timed out)."""

    reason = "interop"


# ---------------------------------------------------------------------------- environment


def interop_venv() -> Path:
    return Path(os.environ.get(VENV_ENV) or REPO_ROOT / ".venv-interop")


@cache
def interop_python() -> Path:
    """The interop venv's python, checked to import cync_lan at the pinned version.

    Raises InteropUnavailable with the reason (tools/interop_env.sh records why it could not
    build the venv in ``<venv>/.status``).
    """
    venv = interop_venv()
    python = venv / "bin" / "python"
    status_file = venv / STATUS_FILE
    status = status_file.read_text(encoding="utf-8").strip() if status_file.is_file() else ""
    if status.startswith("skip"):
        raise InteropUnavailable(f"interop venv {venv} not usable: {status[4:].lstrip(': ')}")
    if not python.exists():
        raise InteropUnavailable(
            f"no interop venv at {venv} (create it with tools/interop_env.sh or "
            f"`make interop-env`; it needs python3.12 and network access to PyPI)"
        )
    probe = "import sys, cync_lan; print(cync_lan.__version__, '%d.%d' % sys.version_info[:2])"
    try:
        out = subprocess.run(
            [str(python), "-c", probe], capture_output=True, text=True, timeout=120, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise InteropUnavailable(f"cannot run {python}: {exc}") from exc
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["no output"])[-1]
        raise InteropUnavailable(f"{python} cannot import cync_lan: {last}")
    version, _, pyver = out.stdout.strip().partition(" ")
    if version != CYNC_LAN_VERSION:
        raise InteropUnavailable(
            f"{venv} has cync-lan {version}, the tests are written for {CYNC_LAN_VERSION} "
            f"(re-run tools/interop_env.sh)"
        )
    if tuple(int(x) for x in pyver.split(".")) < (3, 12):
        raise InteropUnavailable(f"{python} is Python {pyver}; cync-lan needs >= 3.12")
    return python


def make_self_signed_cert(folder: Path) -> tuple[Path, Path]:
    """An RSA-2048 self-signed certificate and key made with the openssl CLI."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise InteropUnavailable("the openssl command is not installed (needed for the cert)")
    folder.mkdir(parents=True, exist_ok=True)
    cert, key = folder / "cert.pem", folder / "key.pem"
    cmd = [
        openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256",
        "-days", "2", "-subj", "/CN=*.xlink.cn", "-keyout", str(key), "-out", str(cert),
    ]  # fmt: skip
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise InteropError(f"openssl req failed: {exc}", reason="openssl") from exc
    if out.returncode != 0 or not cert.is_file() or not key.is_file():
        raise InteropError(f"openssl req failed: {out.stderr.strip()}", reason="openssl")
    return cert, key


@dataclass(frozen=True, slots=True)
class MeshNode:
    """One entry of the cync-lan config: a mesh node id (1-255) and how to call it."""

    node_id: int
    name: str
    device_type: int = 137  # Full Color A19 Bulb: one light entity, power/bri/CT/RGB

    def __post_init__(self) -> None:
        if not 1 <= self.node_id <= 255:
            raise ValueError(f"mesh node id {self.node_id} outside 1-255 (cync-lan packs it as B)")


def write_mesh_config(path: Path, nodes: Sequence[MeshNode], home_id: int = 1000) -> Path:
    """The minimal exported-config YAML that ``cync_lan.utils.parse_config`` reads."""
    lines = ["account data:", "  cyncsim interop home:", f"    id: {home_id}", "    devices:"]
    for n in nodes:
        mac = ":".join(f"{b:02X}" for b in (0xC0, 0xFF, 0xEE, 0, 0, n.node_id))
        lines += [
            f"      {n.node_id}:",
            f"        name: {json.dumps(n.name)}",
            f"        type: {n.device_type}",
            "        enabled: true",
            f'        mac: "{mac}"',
            f'        wifi_mac: "{mac}"',
        ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# ------------------------------------------------------------------------- what it reports


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """One connection cync-lan registered (keyed by the peer IP)."""

    ip: str
    device_id: bytes  # the 4-byte id from the hello (cync-lan's "queue_id")
    ready_to_control: bool
    closed: bool
    node_id: int | None  # set by the first record of the device's mesh-info table
    version: str | None  # device firmware parsed from a 0x83 firmware report
    cipher: str | None  # TLS suite negotiated on this connection
    pending_commands: tuple[int, ...]  # command counters still waiting for an f9 result


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """One mesh node from the config, with the state cync-lan holds for it."""

    node_id: int
    name: str
    online: bool
    entities: dict[str, dict[str, Any]]
    relay_source: str | None


@dataclass(frozen=True, slots=True)
class ServerSnapshot:
    sessions: tuple[SessionInfo, ...]
    nodes: tuple[NodeInfo, ...]
    message_count: int

    def session(self, ip: str) -> SessionInfo | None:
        return next((s for s in self.sessions if s.ip == ip), None)

    def open_sessions(self) -> dict[str, SessionInfo]:
        return {s.ip: s for s in self.sessions if not s.closed}


@dataclass(frozen=True, slots=True)
class SinkMessage:
    """One call cync-lan made on its MQTT client (see RecordingSink in the runner)."""

    seq: int
    kind: str  # publish, online, state, command_ack_power, ...
    topic: str
    payload: Any = field(compare=False)


def _snapshot(reply: dict[str, Any]) -> ServerSnapshot:
    sessions = tuple(
        SessionInfo(
            ip=s["ip"],
            device_id=bytes.fromhex(s["queue_id"]),
            ready_to_control=s["ready_to_control"],
            closed=s["closed"],
            node_id=s["node_id"],
            version=s["version"],
            cipher=s["cipher"],
            pending_commands=tuple(s["pending_commands"]),
        )
        for s in reply["sessions"]
    )
    nodes = tuple(
        NodeInfo(n["id"], n["name"], n["online"], n["entities"], n["relay_source"])
        for n in reply["nodes"]
    )
    return ServerSnapshot(sessions, nodes, reply["message_count"])


# --------------------------------------------------------------------------------- server


class CyncLanServer:
    """The real cync-lan nCyncServer in a 3.12 subprocess, on 127.0.0.1 with TLS.

    ``async with CyncLanServer(workdir, nodes, cmd_broadcasts=3) as server:`` then
    ``server.port``, ``await server.snapshot()``, ``await server.messages()``,
    ``await server.command(node_id, "power", 1)``.  ``stop()`` is safe twice.
    """

    def __init__(
        self,
        workdir: Path,
        nodes: Sequence[MeshNode],
        *,
        cmd_broadcasts: int | None = None,
        max_tcp_conn: int | None = None,
        host: str = "127.0.0.1",
        raw_log: bool = True,
        python: Path | None = None,
        start_timeout: float = 30.0,
    ) -> None:
        if not host.startswith("127."):
            raise ValueError(f"interop server host must be loopback, got {host}")
        self.workdir = workdir
        self.nodes = tuple(nodes)
        self.host = host
        self.cmd_broadcasts = cmd_broadcasts or max(len(self.nodes), 1)
        # cync-lan serves at most CYNC_MAX_TCP_CONN - 1 devices (see the module docstring).
        self.max_tcp_conn = max_tcp_conn or len(self.nodes) + 2
        self.raw_log = raw_log
        self.python = python
        self.start_timeout = start_timeout
        self.log_path = workdir / "cync_lan.log"
        self.messages_path = workdir / "messages.jsonl"
        self.config_path = workdir / "cync_mesh.yaml"
        self.port = 0
        self.ready: dict[str, Any] = {}
        self._proc: asyncio.subprocess.Process | None = None
        self._log_fh: Any = None
        self._ctl: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self._ctl_lock = asyncio.Lock()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        python = self.python or interop_python()
        self.workdir.mkdir(parents=True, exist_ok=True)
        cert, key = make_self_signed_cert(self.workdir / "certs")
        write_mesh_config(self.config_path, self.nodes)
        args = [
            str(RUNNER),
            "--workdir", str(self.workdir),
            "--config", str(self.config_path),
            "--messages", str(self.messages_path),
            "--cert", str(cert),
            "--key", str(key),
            "--host", self.host,
            "--port", "0",
            "--max-tcp-conn", str(self.max_tcp_conn),
            "--cmd-broadcasts", str(self.cmd_broadcasts),
        ]  # fmt: skip
        if self.raw_log:
            args.append("--raw")
        self._log_fh = self.log_path.open("ab")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CYNC_", "PYTHON"))}
        self._proc = await asyncio.create_subprocess_exec(
            str(python),
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=self._log_fh,
            env=env,
            cwd=str(self.workdir),
        )
        try:
            self.ready = await self._read_ready()
            self.port = int(self.ready["server_port"])
            self._ctl = await asyncio.open_connection("127.0.0.1", int(self.ready["control_port"]))
        except BaseException:
            await self.stop()
            raise

    async def _read_ready(self) -> dict[str, Any]:
        assert self._proc is not None and self._proc.stdout is not None
        deadline = time.monotonic() + self.start_timeout
        while True:
            left = deadline - time.monotonic()
            try:
                line = await asyncio.wait_for(self._proc.stdout.readline(), max(left, 0.01))
            except TimeoutError:
                raise InteropError(
                    f"cync-lan runner not ready after {self.start_timeout} s\n{self.log_tail()}"
                ) from None
            if not line:
                code = await self._proc.wait()
                raise InteropError(f"cync-lan runner exited with {code}\n{self.log_tail()}")
            with contextlib.suppress(ValueError):
                msg = json.loads(line)
                if isinstance(msg, dict) and msg.get("event") == "ready":
                    return msg
                if isinstance(msg, dict) and msg.get("event") == "error":
                    raise InteropError(f"cync-lan runner: {msg.get('error')}\n{self.log_tail()}")

    async def stop(self) -> None:
        """Ask the runner to stop the server, then make sure the process is gone."""
        proc, self._proc = self._proc, None
        if self._ctl is not None and proc is not None and proc.returncode is None:
            with contextlib.suppress(OSError, InteropError, TimeoutError):
                await asyncio.wait_for(self._request({"cmd": "stop"}), 10)
        if self._ctl is not None:
            writer = self._ctl[1]
            self._ctl = None
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        if proc is not None:
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        if self._log_fh is not None:
            self._log_fh.close()
            self._log_fh = None

    async def _request(self, request: dict[str, Any]) -> dict[str, Any]:
        if self._ctl is None:
            raise InteropError("cync-lan runner is not running", reason="interop_stopped")
        reader, writer = self._ctl
        async with self._ctl_lock:
            writer.write((json.dumps(request) + "\n").encode())
            await writer.drain()
            line = await reader.readline()
        if not line:
            raise InteropError(f"cync-lan runner closed its control channel\n{self.log_tail()}")
        reply: dict[str, Any] = json.loads(line)
        if not reply.get("ok"):
            raise InteropError(f"cync-lan runner refused {request}: {reply.get('error')}")
        return reply

    # ------------------------------------------------------------------------------ queries
    async def snapshot(self) -> ServerSnapshot:
        return _snapshot(await self._request({"cmd": "snapshot"}))

    async def messages(self, since: int = 0) -> list[SinkMessage]:
        reply = await self._request({"cmd": "messages", "since": since})
        return [
            SinkMessage(m["seq"], m["kind"], m["topic"], m["payload"]) for m in reply["messages"]
        ]

    async def command(self, node_id: int, action: str, value: int | Sequence[int]) -> list[str]:
        """Send a command through cync-lan's CyncDevice API; returns the IPs it went to.

        ``action``: "power" (0/1), "brightness" (0-100), "temperature" (0-100) or "rgb".
        """
        val: Any = list(value) if isinstance(value, Sequence) else value
        reply = await self._request({"cmd": "command", "node": node_id, "action": action,
                                     "value": val})  # fmt: skip
        return list(reply["sent_via"])

    async def wait_snapshot(
        self, check: Callable[[ServerSnapshot], bool], what: str, within: float = 10.0
    ) -> ServerSnapshot:
        """Poll snapshots until ``check`` holds; InteropError after ``within`` seconds."""
        deadline = time.monotonic() + within
        while True:
            snap = await self.snapshot()
            if check(snap):
                return snap
            if time.monotonic() > deadline:
                raise InteropError(
                    f"timed out after {within} s waiting for {what}; last snapshot: {snap}\n"
                    f"{self.log_tail()}",
                    reason="interop_timeout",
                )
            await asyncio.sleep(0.05)

    async def wait_message(
        self, check: Callable[[SinkMessage], bool], what: str, *, since: int = 0,
        within: float = 10.0,
    ) -> SinkMessage:  # fmt: skip
        """The first message from ``since`` on that passes ``check`` (polls; hang guard)."""
        deadline = time.monotonic() + within
        while True:
            msgs = await self.messages(since)
            found = next((m for m in msgs if check(m)), None)
            if found is not None:
                return found
            if time.monotonic() > deadline:
                raise InteropError(
                    f"timed out after {within} s waiting for {what}; messages since {since}: "
                    f"{msgs}\n{self.log_tail()}",
                    reason="interop_timeout",
                )
            await asyncio.sleep(0.05)

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return f"(no log at {self.log_path})"
        tail = text.splitlines()[-lines:]
        return f"--- last {len(tail)} lines of {self.log_path}:\n" + "\n".join(tail)
